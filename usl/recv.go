package usl

// The receive side: ordering by session seq, ack scheduling, and applying
// frames to streams.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// noteRecvLocked schedules the ack for a received sequenced frame: at once
// past the byte threshold, else within AckDelay, unless a frame going out
// anyway carries it first.
func (s *Session) noteRecvLocked(n int) {
	s.recvSinceAck += headerLen + n
	if s.ackDeadline.IsZero() {
		s.ackDeadline = time.Now().Add(s.cfg.AckDelay)
		// A timer rather than a kick: a writer woken now would find the
		// ack not yet due and go back to sleep, a wake-up per message
		// for nothing. The reply, if any, carries the ack before then.
		s.ackTimer.Reset(s.cfg.AckDelay)
	}
	if s.recvSinceAck >= s.ackThreshold && !s.ackUrgent {
		s.ackUrgent = true
		s.kickLocked()
	}
}

// ackDeadlinePassed runs on the ack timer: the writers send the delayed
// ack, unless a frame carried it since.
func (s *Session) ackDeadlinePassed() {
	s.mu.Lock()
	if s.err == nil && !s.ackDeadline.IsZero() {
		s.kickLocked()
	}
	s.unlock()
}

// handleFrame applies one received frame. data is the pooled buffer of a
// DATA payload, which the session now owns. An error kills the path.
func (s *Session) handleFrame(p *path, h frameHeader, payload []byte, data *[]byte) error {
	s.mu.Lock()
	defer s.unlock()
	consumed := false
	defer func() {
		if data != nil && !consumed {
			s.pool.put(data)
		}
	}()
	if p.closed {
		return errPathClosed
	}
	if err := s.ackLocked(h.ack); err != nil {
		return err
	}
	if s.ctlBytes > s.cfg.ControlBuffer {
		// Our control frames answer the peer's input (credit for its
		// data, resets of its opens); a peer that makes them and never
		// acks them would grow them without bound.
		return fmt.Errorf("protocol: peer withholds acks: %d bytes of control frames unacked (limit %d)", s.ctlBytes, s.cfg.ControlBuffer)
	}
	if !h.typ.sequenced() {
		switch h.typ {
		case framePing:
			p.pongVal = binary.BigEndian.Uint64(payload)
			p.pongPending = true
			p.poke()
		case framePong:
			sent := time.Duration(binary.BigEndian.Uint64(payload))
			if rtt := time.Since(p.start) - sent; rtt >= 0 && sent > 0 {
				s.rttSampleLocked(p, rtt)
			}
			p.mp.pingSent = time.Time{}
			if p.mp.state == PathProbing {
				// The PONG came after everything we sent before its PING.
				s.pathRecoveredLocked(p)
			}
		case frameSack:
			rs, err := parseSack(payload, h.ack)
			if err != nil {
				return fmt.Errorf("protocol: %w", err)
			}
			if err := s.sackLocked(rs, time.Now()); err != nil {
				return err
			}
		}
		return nil
	}
	if h.seq <= s.recvSeq || rangesHave(s.recvRanges, h.seq) {
		return nil // a duplicate from a retransmission or another path
	}
	if h.seq-s.recvSeq > maxReorderSeqs {
		return fmt.Errorf("protocol: frame seq %d is more than %d past the last in-order seq %d", h.seq, maxReorderSeqs, s.recvSeq)
	}
	if h.seq == s.recvSeq+1 {
		s.recvSeq = h.seq
		if len(s.recvRanges) > 0 && s.recvRanges[0].first == s.recvSeq+1 {
			s.recvSeq = s.recvRanges[0].last
			s.recvRanges = append(s.recvRanges[:0], s.recvRanges[1:]...)
			s.sackGen++
		}
	} else {
		// Past a gap: another path is slower, or lost what it carried.
		// The gap goes into the SACK at once, so the sender does not
		// resend what arrived here.
		if err := s.insertRangeLocked(h.seq); err != nil {
			return err
		}
		s.sackGen++
		s.ackUrgent = true
	}
	s.noteRecvLocked(int(h.length))
	c, err := s.dispatchLocked(h, payload, data)
	consumed = c
	if err != nil {
		return err
	}
	return s.drainOrderedLocked()
}

// Receive-side reordering (multipath). docs/protocol.md §4.3.
//
// A frame past the in-order seq is a frame the sender still holds in its
// replay buffer (the seq before it is unacked), so what we hold past a
// gap is bounded by the sender's replay bound: Config.ReorderBuffer
// (default twice DefaultReplayBuffer, since allocations round up to less
// than twice the payload) and maxReorderSeqs frames. Past either the path
// fails with a protocol error.
//
// Stream frames are ordered per stream by sseq, so a stream never waits
// for another stream's frame on a slow path. Session-ordered frames, OPEN
// and CLOSE and frames of a peer stream whose OPEN has not been applied,
// wait for the session order.
const (
	maxReorderSeqs  = 1 << 20
	maxRecvRanges   = 4096
	heldCtlOverhead = 64 // bookkeeping charged per held control frame
)

// heldFrame is a frame received ahead of its turn.
type heldFrame struct {
	h       frameHeader
	payload []byte
	data    *[]byte // pooled DATA payload, or nil
	mem     int
}

// rangesHave reports whether seq lies in one of the sorted ranges.
func rangesHave(rs []seqRange, seq uint64) bool {
	for _, r := range rs {
		if seq < r.first {
			return false
		}
		if seq <= r.last {
			return true
		}
	}
	return false
}

// insertRangeLocked adds seq (above recvSeq+1, not yet held) to the
// received ranges, merging neighbours.
func (s *Session) insertRangeLocked(seq uint64) error {
	rs := s.recvRanges
	i := 0
	for i < len(rs) && rs[i].last < seq {
		i++
	}
	joinPrev := i > 0 && rs[i-1].last+1 == seq
	joinNext := i < len(rs) && rs[i].first == seq+1
	switch {
	case joinPrev && joinNext:
		rs[i-1].last = rs[i].last
		rs = append(rs[:i], rs[i+1:]...)
	case joinPrev:
		rs[i-1].last = seq
	case joinNext:
		rs[i].first = seq
	default:
		if len(rs) >= maxRecvRanges {
			return fmt.Errorf("protocol: more than %d gaps in the received seqs", maxRecvRanges)
		}
		rs = append(rs, seqRange{})
		copy(rs[i+1:], rs[i:])
		rs[i] = seqRange{seq, seq}
	}
	s.recvRanges = rs
	return nil
}

// holdLocked charges a frame held ahead of its turn and returns it, with
// its control payload copied (the reader reuses its buffer).
func (s *Session) holdLocked(h frameHeader, payload []byte, data *[]byte) (heldFrame, error) {
	hf := heldFrame{h: h, payload: payload, data: data}
	if data != nil {
		hf.mem = cap(*data)
	} else {
		if h.typ != frameOpen {
			hf.payload = append([]byte(nil), payload...)
		}
		hf.mem = headerLen + len(payload) + heldCtlOverhead
	}
	if s.reorderMem+hf.mem > s.cfg.ReorderBuffer {
		return hf, fmt.Errorf("protocol: frames held past a gap exceed ReorderBuffer (%d bytes): the peer sends beyond its replay bound", s.cfg.ReorderBuffer)
	}
	s.reorderMem += hf.mem
	return hf, nil
}

func (s *Session) releaseHeldLocked(hf heldFrame) {
	s.reorderMem -= hf.mem
	if hf.data != nil {
		s.pool.put(hf.data)
	}
}

// holdOrderedLocked keeps a session-ordered frame until recvSeq reaches it.
func (s *Session) holdOrderedLocked(h frameHeader, payload []byte, data *[]byte) (bool, error) {
	hf, err := s.holdLocked(h, payload, data)
	if err != nil {
		return false, err
	}
	i := len(s.heldOrdered)
	for i > 0 && s.heldOrdered[i-1].h.seq > h.seq {
		i--
	}
	s.heldOrdered = append(s.heldOrdered, heldFrame{})
	copy(s.heldOrdered[i+1:], s.heldOrdered[i:])
	s.heldOrdered[i] = hf
	return data != nil, nil
}

// drainOrderedLocked applies the session-ordered frames recvSeq reached.
func (s *Session) drainOrderedLocked() error {
	for len(s.heldOrdered) > 0 && s.heldOrdered[0].h.seq <= s.recvSeq {
		hf := s.heldOrdered[0]
		s.heldOrdered = append(s.heldOrdered[:0], s.heldOrdered[1:]...)
		s.reorderMem -= hf.mem
		c, err := s.dispatchLocked(hf.h, hf.payload, hf.data)
		if hf.data != nil && !c {
			s.pool.put(hf.data)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// dropHeldLocked forgets every frame held ahead of its turn (session end,
// fence).
func (s *Session) dropHeldLocked() {
	for _, hf := range s.heldOrdered {
		s.releaseHeldLocked(hf)
	}
	s.heldOrdered = nil
	for _, st := range s.streams {
		st.dropPendingLocked()
	}
	s.recvRanges = nil
	s.reorderMem = 0
}

// peerStream reports whether id has the peer's parity.
func (s *Session) peerStream(id uint32) bool { return (id%2 == 1) == !s.dialer }

// dispatchLocked routes a new sequenced frame: session-ordered frames wait
// for recvSeq, stream frames for their stream's sseq. It reports whether
// it kept data.
func (s *Session) dispatchLocked(h frameHeader, payload []byte, data *[]byte) (bool, error) {
	inOrder := h.seq <= s.recvSeq
	switch h.typ {
	case frameClose:
		if !inOrder {
			return s.holdOrderedLocked(h, payload, data)
		}
		s.peerClosed = true
		s.peerCloseSeq = h.seq
		s.ackUrgent = true
		s.kickLocked()
		return false, nil
	case frameOpen:
		if !inOrder {
			return s.holdOrderedLocked(h, payload, data)
		}
		return false, s.openedByPeerLocked(h.stream, payload)
	}
	st := s.streams[h.stream]
	if st == nil {
		if !inOrder && s.peerStream(h.stream) && h.stream > s.peerMaxOpened {
			return s.holdOrderedLocked(h, payload, data) // its OPEN is still on the way
		}
		return false, nil // reset meanwhile; the peer learns from our RESET
	}
	d := int32(h.sseq - st.recvSseq)
	switch {
	case d < 0 || d > 0 && inOrder:
		// Behind: a replayed stream frame under a new seq. Ahead while
		// everything before it in session order has arrived: a frame of
		// the stream is missing for good.
		return false, fmt.Errorf("protocol: %s on stream %d with stream seq %d, want %d", h.typ, h.stream, h.sseq, st.recvSseq)
	case d > 0:
		if _, dup := st.pending[h.sseq]; dup {
			return false, fmt.Errorf("protocol: two frames on stream %d with stream seq %d", h.stream, h.sseq)
		}
		hf, err := s.holdLocked(h, payload, data)
		if err != nil {
			return false, err
		}
		if st.pending == nil {
			st.pending = make(map[uint32]heldFrame)
		}
		st.pending[h.sseq] = hf
		return data != nil, nil
	}
	st.recvSseq++
	consumed := s.applyLocked(st, h, payload, data)
	for len(st.pending) > 0 {
		hf, ok := st.pending[st.recvSseq]
		if !ok {
			break
		}
		delete(st.pending, st.recvSseq)
		s.reorderMem -= hf.mem
		st.recvSseq++
		if c := s.applyLocked(st, hf.h, hf.payload, hf.data); !c && hf.data != nil {
			s.pool.put(hf.data)
		}
	}
	return consumed, nil
}

// applyLocked applies a stream frame in its stream's order.
func (s *Session) applyLocked(st *Stream, h frameHeader, payload []byte, data *[]byte) bool {
	switch h.typ {
	case frameData:
		return st.deliverLocked(data)
	case frameAccept:
		st.acceptedLocked()
	case frameReset:
		st.failLocked(&ResetError{Code: ResetCode(payload[0]), Remote: true})
	case frameFin:
		st.finLocked()
	case frameWindow:
		st.windowLocked(binary.BigEndian.Uint64(payload))
	}
	return false
}

var errPathClosed = errors.New("path closed")

// openedByPeerLocked handles OPEN.
func (s *Session) openedByPeerLocked(id uint32, desc []byte) error {
	if !s.peerStream(id) {
		return fmt.Errorf("protocol: peer opened stream %d with our parity", id)
	}
	s.peerMaxOpened = max(s.peerMaxOpened, id)
	if s.streams[id] != nil {
		return fmt.Errorf("protocol: peer opened stream %d twice", id)
	}
	if len(s.streams) >= s.cfg.MaxStreams || s.closing || s.peerClosed {
		s.rejectedOpens++
		// Logged at the first refusal and at each power of two from 1,024:
		// a flood of OPENs makes a handful of lines, not one each.
		if n := s.rejectedOpens; n == 1 || n >= 1024 && n&(n-1) == 0 {
			s.logLocked(slog.LevelWarn, "refused streams the peer opened past the limit", "max_streams", s.cfg.MaxStreams, "refused", s.rejectedOpens)
		}
		s.pushCtlLocked(frameReset, id, 1)[0] = byte(ResetLimit)
		return nil
	}
	st := newStream(s, id, desc)
	st.recvSseq = 1 // the OPEN was 0
	st.sendLimit = s.peerWindow
	s.streams[id] = st
	s.acceptQ.pushLocked(st)
	return nil
}
