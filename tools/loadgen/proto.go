package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const headerLen = 80

var magic = [4]byte{'U', 'L', 'G', '1'}

const (
	kindFlow   = 1
	kindReport = 2
)

// Mode selects the traffic pattern of a flow.
type Mode uint8

const (
	Bulk      Mode = 1 // both directions stream concurrently
	HalfClose Mode = 2 // client sends, shuts down writing, then reads the full reply
	RR        Mode = 3 // request/response, for latency
)

func (m Mode) String() string {
	switch m {
	case Bulk:
		return "bulk"
	case HalfClose:
		return "halfclose"
	case RR:
		return "rr"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// ParseMode accepts the String forms.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Bulk, HalfClose, RR} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (bulk, halfclose, rr)", s)
}

// Dir is a set of directions.
type Dir uint8

const (
	Up   Dir = 1 << 0 // client → server
	Down Dir = 1 << 1 // server → client
	Both     = Up | Down
)

func (d Dir) String() string {
	switch d {
	case Up:
		return "up"
	case Down:
		return "down"
	case Both:
		return "both"
	}
	return "none"
}

// ParseDir accepts "up", "down" and "both".
func ParseDir(s string) (Dir, error) {
	for _, d := range []Dir{Up, Down, Both} {
		if d.String() == s {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unknown direction %q (up, down, both)", s)
}

type header struct {
	kind       uint8
	mode       Mode
	dirs       Dir
	verify     bool
	run        [16]byte
	flow       uint32
	seed       uint64
	upBytes    uint64
	downBytes  uint64
	durationMs uint32
	idleMs     uint32
	reqSize    uint32
	respSize   uint32
	rateKbps   uint32 // bulk: pace each direction to this (0: as fast as it goes)
}

func (h *header) marshal() []byte {
	b := make([]byte, headerLen)
	copy(b, magic[:])
	b[4], b[5], b[6] = h.kind, byte(h.mode), byte(h.dirs)
	if h.verify {
		b[7] = 1
	}
	copy(b[8:24], h.run[:])
	be := binary.BigEndian
	be.PutUint32(b[24:], h.flow)
	be.PutUint64(b[28:], h.seed)
	be.PutUint64(b[36:], h.upBytes)
	be.PutUint64(b[44:], h.downBytes)
	be.PutUint32(b[52:], h.durationMs)
	be.PutUint32(b[56:], h.idleMs)
	be.PutUint32(b[60:], h.reqSize)
	be.PutUint32(b[64:], h.respSize)
	be.PutUint32(b[68:], h.rateKbps)
	return b
}

var errBadHeader = errors.New("not a loadgen header")

func readHeader(r io.Reader) (header, error) {
	var b [headerLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return header{}, err
	}
	if [4]byte(b[:4]) != magic {
		return header{}, errBadHeader
	}
	be := binary.BigEndian
	h := header{
		kind:       b[4],
		mode:       Mode(b[5]),
		dirs:       Dir(b[6]),
		verify:     b[7]&1 != 0,
		run:        [16]byte(b[8:24]),
		flow:       be.Uint32(b[24:]),
		seed:       be.Uint64(b[28:]),
		upBytes:    be.Uint64(b[36:]),
		downBytes:  be.Uint64(b[44:]),
		durationMs: be.Uint32(b[52:]),
		idleMs:     be.Uint32(b[56:]),
		reqSize:    be.Uint32(b[60:]),
		respSize:   be.Uint32(b[64:]),
		rateKbps:   be.Uint32(b[68:]),
	}
	switch {
	case h.kind != kindFlow && h.kind != kindReport:
		return h, fmt.Errorf("%w: kind %d", errBadHeader, h.kind)
	case h.kind == kindFlow && (h.mode < Bulk || h.mode > RR):
		return h, fmt.Errorf("%w: mode %d", errBadHeader, h.mode)
	case h.kind == kindFlow && h.mode == RR && (h.reqSize == 0 || h.respSize == 0 || h.reqSize > maxMsg || h.respSize > maxMsg):
		return h, fmt.Errorf("%w: rr sizes %d/%d", errBadHeader, h.reqSize, h.respSize)
	}
	return h, nil
}

// maxMsg bounds request/response sizes so a peer cannot make us allocate
// arbitrarily.
const maxMsg = 16 << 20

// maxReportFlows bounds the flow list of a report request.
const maxReportFlows = 1 << 20
