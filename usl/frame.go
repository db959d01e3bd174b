package usl

import (
	"encoding/binary"
	"fmt"
)

// Frame header layout, v2 (all integers big-endian), see docs/protocol.md:
//
//	0  type    u8
//	1  flags   u8   (zero)
//	2  rsv     u16  (zero)
//	4  stream  u32
//	8  seq     u64  (0 for unsequenced frames)
//	16 ack     u64  (cumulative: last in-order seq received)
//	24 sseq    u32  (per-stream, per-direction number of the stream's sequenced frames)
//	28 length  u32  (payload bytes that follow)
const headerLen = 32

type frameType uint8

const (
	frameData   frameType = 1  // sequenced: stream bytes
	frameOpen   frameType = 2  // sequenced: open stream, payload = descriptor
	frameAccept frameType = 3  // sequenced: the peer accepted an OPEN
	frameReset  frameType = 4  // sequenced: abort a stream, payload = ResetCode
	frameFin    frameType = 5  // sequenced: sender will write no more on the stream
	frameWindow frameType = 6  // sequenced: credit, payload = u64 absolute byte limit
	frameClose  frameType = 7  // sequenced: session closes after everything before it
	frameAck    frameType = 8  // unsequenced: carries only the ack field
	framePing   frameType = 9  // unsequenced: payload = u64 opaque, echoed in PONG
	framePong   frameType = 10 // unsequenced
	frameSack   frameType = 11 // unsequenced: payload = ranges of seqs received above ack
	frameRekey  frameType = 12 // unsequenced: in-band rekey of the path, see rekey.go
)

var frameNames = [...]string{"?", "DATA", "OPEN", "ACCEPT", "RESET", "FIN", "WINDOW", "CLOSE", "ACK", "PING", "PONG", "SACK", "REKEY"}

func (t frameType) String() string {
	if int(t) < len(frameNames) && t != 0 {
		return frameNames[t]
	}
	return fmt.Sprintf("frame-%d", uint8(t))
}

// sequenced frames carry data or change stream state: they take a session
// sequence number, sit in the replay buffer until acked, and are
// retransmitted after a reconnect.
func (t frameType) sequenced() bool { return t >= frameData && t <= frameClose }

// streamFrame types name a stream, and only they carry an sseq.
func (t frameType) streamFrame() bool { return t >= frameData && t <= frameWindow }

type frameHeader struct {
	typ    frameType
	stream uint32
	seq    uint64
	ack    uint64
	sseq   uint32
	length uint32
}

func (h *frameHeader) put(b []byte) {
	_ = b[headerLen-1]
	b[0] = byte(h.typ)
	b[1], b[2], b[3] = 0, 0, 0
	binary.BigEndian.PutUint32(b[4:], h.stream)
	binary.BigEndian.PutUint64(b[8:], h.seq)
	binary.BigEndian.PutUint64(b[16:], h.ack)
	binary.BigEndian.PutUint32(b[24:], h.sseq)
	binary.BigEndian.PutUint32(b[28:], h.length)
}

// putAck rewrites the ack field of an encoded header: a retransmitted frame
// carries the ack of the moment it is sent, not of when it was queued.
func putAck(b []byte, ack uint64) { binary.BigEndian.PutUint64(b[16:], ack) }

// Payload bounds of the control frames.
const (
	maxSackRanges = 32
	sackRangeLen  = 16
	rekeyLen      = 1 + 32
	maxCtlPayload = maxSackRanges * sackRangeLen
)

// parseHeader decodes and validates a header. maxData is the largest DATA
// payload this side accepts. Everything a frame's type implies about its
// fields is checked here, so that handlers see only well-formed frames.
func parseHeader(b []byte, maxData int) (frameHeader, error) {
	var h frameHeader
	if len(b) < headerLen {
		return h, fmt.Errorf("frame header: %d bytes, want %d", len(b), headerLen)
	}
	h.typ = frameType(b[0])
	if b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return h, fmt.Errorf("frame %s: reserved bits set", h.typ)
	}
	h.stream = binary.BigEndian.Uint32(b[4:])
	h.seq = binary.BigEndian.Uint64(b[8:])
	h.ack = binary.BigEndian.Uint64(b[16:])
	h.sseq = binary.BigEndian.Uint32(b[24:])
	h.length = binary.BigEndian.Uint32(b[28:])
	if h.typ == 0 || h.typ > frameRekey {
		return h, fmt.Errorf("unknown frame type %d", uint8(h.typ))
	}
	if h.typ.sequenced() != (h.seq != 0) {
		return h, fmt.Errorf("frame %s: bad seq %d", h.typ, h.seq)
	}
	if h.typ.streamFrame() != (h.stream != 0) {
		return h, fmt.Errorf("frame %s: bad stream id %d", h.typ, h.stream)
	}
	if !h.typ.streamFrame() && h.sseq != 0 {
		return h, fmt.Errorf("frame %s: stream seq %d on a session frame", h.typ, h.sseq)
	}
	if h.typ == frameOpen && h.sseq != 0 {
		return h, fmt.Errorf("frame OPEN: stream seq %d, want 0", h.sseq)
	}
	var lo, hi uint32
	switch h.typ {
	case frameData:
		lo, hi = 1, uint32(maxData)
	case frameOpen:
		lo, hi = 0, maxDescriptor
	case frameReset:
		lo, hi = 1, 1
	case frameWindow, framePing, framePong:
		lo, hi = 8, 8
	case frameSack:
		lo, hi = sackRangeLen, maxCtlPayload
	case frameRekey:
		lo, hi = rekeyLen, rekeyLen
	}
	if h.length < lo || h.length > hi {
		return h, fmt.Errorf("frame %s: payload length %d outside [%d, %d]", h.typ, h.length, lo, hi)
	}
	if h.typ == frameSack && h.length%sackRangeLen != 0 {
		return h, fmt.Errorf("frame SACK: payload length %d not a multiple of %d", h.length, sackRangeLen)
	}
	return h, nil
}

// seqRange is an inclusive range of session seqs.
type seqRange struct{ first, last uint64 }

// parseSack validates a SACK payload against the frame's cumulative ack:
// 1 to 32 ranges, each first ≤ last, sorted, disjoint, all above ack. Single-path sessions never send SACK; a multipath
// receiver reports what it holds past a gap with it.
func parseSack(b []byte, ack uint64) ([]seqRange, error) {
	n := len(b) / sackRangeLen
	if n == 0 || n > maxSackRanges || len(b)%sackRangeLen != 0 {
		return nil, fmt.Errorf("SACK: %d bytes", len(b))
	}
	rs := make([]seqRange, n)
	prev := ack
	for i := range rs {
		r := seqRange{binary.BigEndian.Uint64(b[i*16:]), binary.BigEndian.Uint64(b[i*16+8:])}
		if r.first > r.last || r.first <= prev {
			return nil, fmt.Errorf("SACK: range %d [%d, %d] not above %d", i, r.first, r.last, prev)
		}
		rs[i], prev = r, r.last
	}
	return rs, nil
}
