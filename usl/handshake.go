package usl

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/flynn/noise"
)

// readBufSize is the path reader's buffer. Small, on purpose: bufio reads
// at least this much straight into the caller's buffer, so large records
// skip a copy, while runs of small records still cost one syscall.
const readBufSize = 4 << 10

// ProtocolVersion is the USL wire version this build speaks.
const ProtocolVersion = 1

// The initiator opens with a cleartext preamble "USL" + version byte, so a
// version mismatch is reported on both sides instead of surfacing as an
// opaque decryption failure. The responder answers with its own preamble.
var preambleMagic = [3]byte{'U', 'S', 'L'}

const preambleLen = 4

func preamble() [preambleLen]byte {
	return [preambleLen]byte{preambleMagic[0], preambleMagic[1], preambleMagic[2], ProtocolVersion}
}

var cipherSuite = noise.NewCipherSuite(noise.DH25519, noise.CipherAESGCM, noise.HashBLAKE2s)

// sessionID names one incarnation of a session.
type sessionID [16]byte

func (id sessionID) String() string { return fmt.Sprintf("%x", id[:4]) }

func newSessionID() sessionID {
	var id sessionID
	rand.Read(id[:])
	return id
}

// hello is the payload of the initiator's Noise message.
//
//	0  session id     [16]
//	16 initiator epoch u64
//	24 responder epoch u64 (as the initiator knows it; 0 = first contact)
//	32 recv seq       u64 (last in-order seq the initiator received)
//	40 stream window  u32
//	44 max frame      u32
type hello struct {
	id        sessionID
	epoch     uint64
	peerEpoch uint64
	recvSeq   uint64
	window    uint32
	maxFrame  uint32
}

const helloLen = 48

func (h *hello) marshal() []byte {
	b := make([]byte, helloLen)
	copy(b, h.id[:])
	binary.BigEndian.PutUint64(b[16:], h.epoch)
	binary.BigEndian.PutUint64(b[24:], h.peerEpoch)
	binary.BigEndian.PutUint64(b[32:], h.recvSeq)
	binary.BigEndian.PutUint32(b[40:], h.window)
	binary.BigEndian.PutUint32(b[44:], h.maxFrame)
	return b
}

func parseHello(b []byte) (hello, error) {
	var h hello
	if len(b) != helloLen {
		return h, fmt.Errorf("hello: %d bytes, want %d", len(b), helloLen)
	}
	copy(h.id[:], b)
	h.epoch = binary.BigEndian.Uint64(b[16:])
	h.peerEpoch = binary.BigEndian.Uint64(b[24:])
	h.recvSeq = binary.BigEndian.Uint64(b[32:])
	h.window = binary.BigEndian.Uint32(b[40:])
	h.maxFrame = binary.BigEndian.Uint32(b[44:])
	switch {
	case h.id == sessionID{}:
		return h, errors.New("hello: zero session id")
	case h.epoch == 0:
		return h, errors.New("hello: zero epoch")
	case h.window == 0 || h.maxFrame == 0 || h.maxFrame > maxFrameLimit:
		return h, fmt.Errorf("hello: bad window %d or max frame %d", h.window, h.maxFrame)
	}
	return h, nil
}

// Response status codes.
const (
	statusOK             = 0
	statusKeyNotAllowed  = 1 // the initiator's static key is not in the allowlist
	statusNotOwner       = 2 // the session exists but belongs to another key
	statusUnknownSession = 3 // the responder has no such session: fence
)

// reply is the payload of the responder's Noise message.
//
//	0  status        u8
//	1  epoch         u64 (responder's)
//	9  recv seq      u64
//	17 stream window u32
//	21 max frame     u32
type reply struct {
	status   uint8
	epoch    uint64
	recvSeq  uint64
	window   uint32
	maxFrame uint32
}

const replyLen = 25

func (r *reply) marshal() []byte {
	b := make([]byte, replyLen)
	b[0] = r.status
	binary.BigEndian.PutUint64(b[1:], r.epoch)
	binary.BigEndian.PutUint64(b[9:], r.recvSeq)
	binary.BigEndian.PutUint32(b[17:], r.window)
	binary.BigEndian.PutUint32(b[21:], r.maxFrame)
	return b
}

func parseReply(b []byte) (reply, error) {
	var r reply
	if len(b) != replyLen {
		return r, fmt.Errorf("reply: %d bytes, want %d", len(b), replyLen)
	}
	r.status = b[0]
	r.epoch = binary.BigEndian.Uint64(b[1:])
	r.recvSeq = binary.BigEndian.Uint64(b[9:])
	r.window = binary.BigEndian.Uint32(b[17:])
	r.maxFrame = binary.BigEndian.Uint32(b[21:])
	if r.status > statusUnknownSession {
		return r, fmt.Errorf("reply: unknown status %d", r.status)
	}
	if r.status == statusOK && (r.epoch == 0 || r.window == 0 || r.maxFrame == 0 || r.maxFrame > maxFrameLimit) {
		return r, errors.New("reply: bad epoch, window or max frame")
	}
	return r, nil
}

// Handshake errors the initiator reports.
var (
	ErrKeyNotAllowed  = errors.New("usl: peer rejected our public key: not in its allowlist")
	ErrNotOwner       = errors.New("usl: peer refused resume: the session belongs to another key")
	errUnknownSession = errors.New("usl: peer does not know the session (it restarted or timed out)")
	ErrHandshake      = errors.New("usl: peer could not decrypt our handshake (is its public key right?)")
)

// VersionError reports a peer that speaks another protocol version.
type VersionError struct{ Peer, Local int }

func (e *VersionError) Error() string {
	return fmt.Sprintf("usl: peer speaks USL v%d, this build speaks v%d", e.Peer, e.Local)
}

func noiseConfig(priv PrivateKey, initiator bool, peer *PublicKey) noise.Config {
	pub := priv.Public()
	pre := preamble()
	c := noise.Config{
		CipherSuite:   cipherSuite,
		Random:        rand.Reader,
		Pattern:       noise.HandshakeIK,
		Initiator:     initiator,
		Prologue:      pre[:],
		StaticKeypair: noise.DHKey{Private: append([]byte(nil), priv[:]...), Public: pub[:]},
	}
	if peer != nil {
		c.PeerStatic = peer[:]
	}
	return c
}

// handshakeResult is a completed handshake: the keys for the record layer
// and what the peer said.
type handshakeResult struct {
	send, recv [32]byte
	peer       PublicKey
	br         *bufio.Reader
}

func readMsg(r io.Reader) ([]byte, error) {
	var lb [2]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint16(lb[:])
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func appendMsg(dst, msg []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(msg)))
	return append(dst, msg...)
}

// checkPreamble reads the peer's preamble.
func checkPreamble(r io.Reader) error {
	var p [preambleLen]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return err
	}
	if [3]byte(p[:3]) != preambleMagic {
		return errors.New("not a USL peer (bad magic)")
	}
	if p[3] != ProtocolVersion {
		return &VersionError{Peer: int(p[3]), Local: ProtocolVersion}
	}
	return nil
}

// clientHandshake runs the initiator side on c, whose deadline the caller
// set. rep is the responder's reply; a non-OK status is also an error.
func newNoiseInitiator(priv PrivateKey, peer PublicKey) (*noise.HandshakeState, error) {
	return noise.NewHandshakeState(noiseConfig(priv, true, &peer))
}

func clientHandshake(c net.Conn, priv PrivateKey, peer PublicKey, h hello) (*handshakeResult, reply, error) {
	var rep reply
	hs, err := newNoiseInitiator(priv, peer)
	if err != nil {
		return nil, rep, fmt.Errorf("noise: %w", err)
	}
	msg1, _, _, err := hs.WriteMessage(nil, h.marshal())
	if err != nil {
		return nil, rep, fmt.Errorf("noise write: %w", err)
	}
	pre := preamble()
	if _, err := c.Write(appendMsg(pre[:], msg1)); err != nil {
		return nil, rep, fmt.Errorf("send handshake: %w", err)
	}
	br := bufio.NewReaderSize(c, readBufSize)
	if err := checkPreamble(br); err != nil {
		return nil, rep, fmt.Errorf("handshake: %w", err)
	}
	msg2, err := readMsg(br)
	if err != nil {
		return nil, rep, fmt.Errorf("read handshake reply: %w", err)
	}
	if len(msg2) == 0 {
		return nil, rep, ErrHandshake
	}
	payload, cs1, cs2, err := hs.ReadMessage(nil, msg2)
	if err != nil {
		return nil, rep, fmt.Errorf("handshake reply: %w", err)
	}
	if rep, err = parseReply(payload); err != nil {
		return nil, rep, err
	}
	switch rep.status {
	case statusKeyNotAllowed:
		return nil, rep, ErrKeyNotAllowed
	case statusNotOwner:
		return nil, rep, ErrNotOwner
	case statusUnknownSession:
		return nil, rep, errUnknownSession
	}
	return &handshakeResult{send: cs1.UnsafeKey(), recv: cs2.UnsafeKey(), peer: peer, br: br}, rep, nil
}

// serverHello is the responder's state between reading the initiator's
// message and answering it. It holds no session state: the caller decides,
// from peer and hello, whether to answer with finish or reject.
type serverHello struct {
	hs    *noise.HandshakeState
	peer  PublicKey
	hello hello
	br    *bufio.Reader
}

// rejectError is a handshake the responder refused. Its text is the log line.
type rejectError struct{ reason string }

func (e *rejectError) Error() string { return e.reason }

// readClientHello reads and authenticates the initiator's message. On
// failure it has already written whatever the initiator should see.
func readClientHello(c net.Conn, priv PrivateKey) (*serverHello, error) {
	br := bufio.NewReaderSize(c, readBufSize)
	if err := checkPreamble(br); err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			pre := preamble()
			c.Write(pre[:]) // so the initiator can report the mismatch too
		}
		return nil, &rejectError{err.Error()}
	}
	msg1, err := readMsg(br)
	if err != nil {
		return nil, &rejectError{fmt.Sprintf("reading handshake: %v", err)}
	}
	hs, err := noise.NewHandshakeState(noiseConfig(priv, false, nil))
	if err != nil {
		return nil, fmt.Errorf("noise: %w", err)
	}
	payload, _, _, err := hs.ReadMessage(nil, msg1)
	if err != nil {
		pre := preamble()
		c.Write(appendMsg(pre[:], nil)) // empty reply: "could not decrypt"
		return nil, &rejectError{"bad handshake: not encrypted to this server's key, or garbage"}
	}
	var peer PublicKey
	copy(peer[:], hs.PeerStatic())
	h, err := parseHello(payload)
	if err != nil {
		return nil, &rejectError{fmt.Sprintf("bad handshake payload: %v", err)}
	}
	return &serverHello{hs: hs, peer: peer, hello: h, br: br}, nil
}

// answer writes the responder's message. With status OK it returns the
// record keys.
func (sh *serverHello) answer(c net.Conn, rep reply) (*handshakeResult, error) {
	msg2, cs1, cs2, err := sh.hs.WriteMessage(nil, rep.marshal())
	if err != nil {
		return nil, fmt.Errorf("noise write: %w", err)
	}
	pre := preamble()
	if _, err := c.Write(appendMsg(pre[:], msg2)); err != nil {
		return nil, fmt.Errorf("send handshake reply: %w", err)
	}
	if rep.status != statusOK {
		return nil, nil
	}
	return &handshakeResult{send: cs2.UnsafeKey(), recv: cs1.UnsafeKey(), peer: sh.peer, br: sh.br}, nil
}
