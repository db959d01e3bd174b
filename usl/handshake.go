package usl

// The path handshake, v2 (docs/protocol.md §2 is the byte-level statement):
//
//	initiator → responder: "USL" 2 | u16 n | Noise IK message 1 (n bytes) | mac1 [16]
//	responder → initiator: "USL" 2 | u16 n | Noise IK message 2 (n bytes)
//	initiator → responder: its first record (key confirmation)
//
// The responder answers only a message 1 whose mac1 is valid, that
// authenticates an allowed static key, and whose timestamp is newer than
// the last one it accepted from that key. Everything else gets silence:
// the connection is closed without a byte. The one exception is a
// well-formed preamble of another version: that peer already spoke USL,
// so it gets the responder's preamble back and both sides can say which
// versions met. Nothing the responder keeps per session changes until the
// initiator's first record authenticates (key confirmation), so a replayed
// message 1 can cost a reply at most, never a path, a session or a fence.

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/flynn/noise"
	"golang.org/x/crypto/blake2s"
)

// readBufSize is the path reader's buffer. Small, on purpose: bufio reads
// at least this much straight into the caller's buffer, so large records
// skip a copy, while runs of small records still cost one syscall.
const readBufSize = 4 << 10

// ProtocolVersion is the USL wire version this build speaks.
const ProtocolVersion = 2

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

// helloJoin is hello flag bit 0: add this path to the session and keep its
// other paths. Without it, attaching a path closes the older ones.
const helloJoin = 1

// hello is the payload of the initiator's Noise message.
//
//	0  session id      [16]
//	16 initiator epoch u64
//	24 responder epoch u64 (as the initiator knows it; 0 = first contact)
//	32 recv seq        u64 (last in-order seq the initiator received)
//	40 timestamp       u64 (ns since the Unix epoch, strictly increasing per process)
//	48 stream window   u32
//	52 max frame       u32
//	56 path id         u32
//	60 flags           u8  (bit 0 JOIN; the others zero)
type hello struct {
	id        sessionID
	epoch     uint64
	peerEpoch uint64
	recvSeq   uint64
	timestamp uint64
	window    uint32
	maxFrame  uint32
	pathID    uint32
	flags     uint8
}

const helloLen = 61

func (h *hello) marshal() []byte {
	b := make([]byte, helloLen)
	copy(b, h.id[:])
	binary.BigEndian.PutUint64(b[16:], h.epoch)
	binary.BigEndian.PutUint64(b[24:], h.peerEpoch)
	binary.BigEndian.PutUint64(b[32:], h.recvSeq)
	binary.BigEndian.PutUint64(b[40:], h.timestamp)
	binary.BigEndian.PutUint32(b[48:], h.window)
	binary.BigEndian.PutUint32(b[52:], h.maxFrame)
	binary.BigEndian.PutUint32(b[56:], h.pathID)
	b[60] = h.flags
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
	h.timestamp = binary.BigEndian.Uint64(b[40:])
	h.window = binary.BigEndian.Uint32(b[48:])
	h.maxFrame = binary.BigEndian.Uint32(b[52:])
	h.pathID = binary.BigEndian.Uint32(b[56:])
	h.flags = b[60]
	switch {
	case h.id == sessionID{}:
		return h, errors.New("hello: zero session id")
	case h.epoch == 0:
		return h, errors.New("hello: zero epoch")
	case h.timestamp == 0:
		return h, errors.New("hello: zero timestamp")
	case h.flags&^helloJoin != 0:
		return h, fmt.Errorf("hello: unknown flags %#x", h.flags)
	case h.window == 0 || h.maxFrame < MinMaxFrame || h.maxFrame > maxFrameLimit:
		return h, fmt.Errorf("hello: bad window %d or max frame %d (allowed %d..%d)", h.window, h.maxFrame, MinMaxFrame, maxFrameLimit)
	}
	return h, nil
}

// Response status codes.
const (
	statusOK             = 0
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
	if r.status != statusOK && r.status != statusNotOwner && r.status != statusUnknownSession {
		return r, fmt.Errorf("reply: unknown status %d", r.status)
	}
	if r.status == statusOK && (r.epoch == 0 || r.window == 0 || r.maxFrame < MinMaxFrame || r.maxFrame > maxFrameLimit) {
		return r, errors.New("reply: bad epoch, window or max frame")
	}
	return r, nil
}

// Handshake errors the initiator reports.
var (
	ErrNotOwner       = errors.New("usl: peer refused resume: the session belongs to another key")
	errUnknownSession = errors.New("usl: peer does not know the session (it restarted or timed out)")
	// ErrHandshake is a responder that hung up without answering. A v2
	// responder answers nobody it cannot authenticate, so this is what a
	// wrong peer public key, our key missing from its allowlist, and a
	// clock far behind our last handshake all look like.
	ErrHandshake = errors.New("usl: peer closed the connection without answering the handshake " +
		"(is its public key right, and is ours in its allowlist?)")
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

// mac1 binds a message 1 to the responder's public key, as WireGuard's
// mac1 does: only a party that knows the key can make the responder spend
// a Diffie-Hellman operation or a handshake slot.
const mac1Len = 16

// mac1Key is BLAKE2s-256("usl-mac1" || responder's static public key).
func mac1Key(responder PublicKey) [32]byte {
	return blake2s.Sum256(append([]byte("usl-mac1"), responder[:]...))
}

// mac1 is keyed BLAKE2s-128 over everything of message 1 before it.
func mac1(key *[32]byte, msg []byte) [mac1Len]byte {
	h, err := blake2s.New128(key[:])
	if err != nil {
		panic("usl: blake2s-128 with a 32-byte key: " + err.Error()) // cannot happen
	}
	h.Write(msg)
	var m [mac1Len]byte
	copy(m[:], h.Sum(nil))
	return m
}

// Noise IK message 1 is e (32) + encrypted s (48) + encrypted hello.
const msg1Len = 32 + 48 + helloLen + 16

// handshakeResult is a completed handshake: the keys for the record layer,
// the channel binding they are rooted in, and what the peer said.
type handshakeResult struct {
	send, recv [32]byte
	chain      [32]byte // the first chaining secret of the path's rekeys
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

var errBadMagic = errors.New("not a USL peer (bad magic)")

// checkPreamble validates a peer's preamble.
func checkPreamble(p [preambleLen]byte) error {
	if [3]byte(p[:3]) != preambleMagic {
		return errBadMagic
	}
	if p[3] != ProtocolVersion {
		return &VersionError{Peer: int(p[3]), Local: ProtocolVersion}
	}
	return nil
}

func newNoiseInitiator(priv PrivateKey, peer PublicKey) (*noise.HandshakeState, error) {
	return noise.NewHandshakeState(noiseConfig(priv, true, &peer))
}

// firstMessage builds the initiator's first flight for h.
func firstMessage(hs *noise.HandshakeState, peer PublicKey, h hello) ([]byte, error) {
	msg1, _, _, err := hs.WriteMessage(nil, h.marshal())
	if err != nil {
		return nil, fmt.Errorf("noise write: %w", err)
	}
	pre := preamble()
	out := appendMsg(pre[:], msg1)
	key := mac1Key(peer)
	m := mac1(&key, out)
	return append(out, m[:]...), nil
}

// clientHandshake runs the initiator side on c, whose deadline the caller
// set. rep is the responder's reply; a non-OK status is also an error. On
// success the caller must send a record at once: the responder acts on
// the handshake only once one authenticates.
func clientHandshake(c net.Conn, priv PrivateKey, peer PublicKey, h hello) (*handshakeResult, reply, error) {
	var rep reply
	hs, err := newNoiseInitiator(priv, peer)
	if err != nil {
		return nil, rep, fmt.Errorf("noise: %w", err)
	}
	first, err := firstMessage(hs, peer, h)
	if err != nil {
		return nil, rep, err
	}
	if _, err := c.Write(first); err != nil {
		return nil, rep, fmt.Errorf("send handshake: %w", err)
	}
	br := bufio.NewReaderSize(c, readBufSize)
	var p [preambleLen]byte
	if _, err := io.ReadFull(br, p[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
			return nil, rep, ErrHandshake
		}
		return nil, rep, fmt.Errorf("read handshake reply: %w", err)
	}
	if err := checkPreamble(p); err != nil {
		return nil, rep, fmt.Errorf("handshake: %w", err)
	}
	msg2, err := readMsg(br)
	if err != nil {
		return nil, rep, fmt.Errorf("read handshake reply: %w", err)
	}
	payload, cs1, cs2, err := hs.ReadMessage(nil, msg2)
	if err != nil {
		return nil, rep, fmt.Errorf("handshake reply: %w", err)
	}
	if rep, err = parseReply(payload); err != nil {
		return nil, rep, err
	}
	switch rep.status {
	case statusNotOwner:
		return nil, rep, ErrNotOwner
	case statusUnknownSession:
		return nil, rep, errUnknownSession
	}
	i2r, r2i := cs1.UnsafeKey(), cs2.UnsafeKey()
	return &handshakeResult{send: i2r, recv: r2i, chain: chainStart(hs.ChannelBinding(), i2r, r2i), peer: peer, br: br}, rep, nil
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// Why a responder refused a connection. Each is one counter of the
// aggregated rejection log line, so the set is small and fixed.
const (
	rejGarbage     = "garbage"
	rejMac1        = "bad mac1"
	rejUnknownKey  = "unknown key"
	rejReplay      = "replayed first message"
	rejBadHello    = "bad hello"
	rejSilent      = "no first message in time"
	rejEvicted     = "evicted while silent"
	rejRate        = "rate limit"
	rejBusy        = "handshake slots busy"
	rejUnconfirmed = "no key confirmation"
	rejNotOwner    = "resume by another key"
	rejUnknownSess = "unknown session (told to start afresh)"
	rejLimit       = "session limit"
)

// rejectError is a handshake the responder refused: reason is its counter,
// detail the specifics for the log line.
type rejectError struct{ reason, detail string }

func (e *rejectError) Error() string {
	if e.detail == "" {
		return e.reason
	}
	return e.reason + ": " + e.detail
}

// readFirstMessage reads message 1 and checks its mac1. It allocates
// nothing but the message and does no public-key operation: this is all a
// party that does not know our public key can make the responder do. The
// caller set the connection's first-message deadline.
func readFirstMessage(c net.Conn, macKey *[32]byte) ([]byte, error) {
	var buf [preambleLen + 2 + msg1Len + mac1Len]byte
	pre := buf[:preambleLen]
	if _, err := io.ReadFull(c, pre); err != nil {
		if isTimeout(err) {
			return nil, &rejectError{rejSilent, ""}
		}
		return nil, &rejectError{rejGarbage, "closed before a preamble"}
	}
	if err := checkPreamble([preambleLen]byte(pre)); err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			p := preamble()
			c.Write(p[:]) // so the initiator can report the mismatch too
			// Closing with its message unread would reset the connection
			// and could discard our preamble at the peer: send FIN, then
			// drain a bounded amount until the peer closes or the
			// deadline passes.
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
				io.CopyN(io.Discard, c, 4<<10)
			}
			return nil, &rejectError{strings.TrimPrefix(ve.Error(), "usl: "), ""}
		}
		return nil, &rejectError{rejGarbage, ""}
	}
	if _, err := io.ReadFull(c, buf[preambleLen:preambleLen+2]); err != nil {
		return nil, &rejectError{rejGarbage, "truncated"}
	}
	if n := binary.BigEndian.Uint16(buf[preambleLen:]); n != msg1Len {
		return nil, &rejectError{rejGarbage, fmt.Sprintf("message 1 of %d bytes, want %d", n, msg1Len)}
	}
	if _, err := io.ReadFull(c, buf[preambleLen+2:]); err != nil {
		if isTimeout(err) {
			return nil, &rejectError{rejSilent, "truncated"}
		}
		return nil, &rejectError{rejGarbage, "truncated"}
	}
	body := buf[:len(buf)-mac1Len]
	want := mac1(macKey, body)
	if !hmac.Equal(want[:], buf[len(body):]) {
		return nil, &rejectError{rejMac1, ""}
	}
	return append([]byte(nil), buf[preambleLen+2:len(body)]...), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serverHello is the responder's state between reading the initiator's
// message and answering it. It holds no session state: the caller decides,
// from peer and hello, whether to answer.
type serverHello struct {
	hs    *noise.HandshakeState
	peer  PublicKey
	hello hello
}

// openFirstMessage runs the Noise responder over a mac1-checked message 1.
// allowed is the allowlist.
func openFirstMessage(msg1 []byte, priv PrivateKey, allowed func(PublicKey) bool) (*serverHello, error) {
	hs, err := noise.NewHandshakeState(noiseConfig(priv, false, nil))
	if err != nil {
		return nil, fmt.Errorf("noise: %w", err)
	}
	payload, _, _, err := hs.ReadMessage(nil, msg1)
	if err != nil {
		// mac1 was right, so the sender knows our public key, yet the
		// message does not decrypt: garbage made by someone who knows it.
		return nil, &rejectError{rejGarbage, "message 1 does not decrypt"}
	}
	var peer PublicKey
	copy(peer[:], hs.PeerStatic())
	if !allowed(peer) {
		return nil, &rejectError{rejUnknownKey, peer.String()}
	}
	h, err := parseHello(payload)
	if err != nil {
		return nil, &rejectError{rejBadHello, fmt.Sprintf("%v (key %s)", err, peer)}
	}
	return &serverHello{hs: hs, peer: peer, hello: h}, nil
}

// answer writes the responder's message. With status OK it returns the
// record keys; br is the reader for the records that follow.
func (sh *serverHello) answer(c net.Conn, br *bufio.Reader, rep reply) (*handshakeResult, error) {
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
	i2r, r2i := cs1.UnsafeKey(), cs2.UnsafeKey()
	return &handshakeResult{send: r2i, recv: i2r, chain: chainStart(sh.hs.ChannelBinding(), i2r, r2i), peer: sh.peer, br: br}, nil
}
