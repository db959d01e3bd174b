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
		s.kickLocked()
	}
	if s.recvSinceAck >= s.ackThreshold && !s.ackUrgent {
		s.ackUrgent = true
		s.kickLocked()
	}
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
				if s.rtt == 0 {
					s.rtt = rtt
				} else {
					s.rtt = (7*s.rtt + rtt) / 8
				}
			}
		case frameSack:
			// One path delivers in order, so nothing is ever held past a
			// gap here; the ranges are validated for the multipath
			// receiver to come.
			if _, err := parseSack(payload, h.ack); err != nil {
				return fmt.Errorf("protocol: %w", err)
			}
		}
		return nil
	}
	if h.seq <= s.recvSeq {
		return nil // a duplicate from a retransmission or another path
	}
	if h.seq != s.recvSeq+1 {
		// One path at a time delivers in order and resumes at our recvSeq,
		// so a gap is a broken peer. A multipath scheduler adds a reorder
		// buffer here.
		return fmt.Errorf("protocol: frame seq %d, want %d", h.seq, s.recvSeq+1)
	}
	st := s.streams[h.stream]
	if st != nil && h.typ != frameOpen {
		if h.sseq != st.recvSseq {
			return fmt.Errorf("protocol: %s on stream %d with stream seq %d, want %d", h.typ, h.stream, h.sseq, st.recvSseq)
		}
		st.recvSseq++
	}
	s.recvSeq = h.seq
	s.noteRecvLocked(int(h.length))
	if h.typ == frameClose {
		s.peerClosed = true
		s.peerCloseSeq = h.seq
		s.ackUrgent = true
		s.kickLocked()
		return nil
	}
	switch h.typ {
	case frameOpen:
		return s.openedByPeerLocked(h.stream, payload)
	case frameData:
		if st == nil {
			return nil // reset meanwhile; the peer learns from our RESET
		}
		consumed = st.deliverLocked(data)
	case frameAccept:
		if st != nil {
			st.acceptedLocked()
		}
	case frameReset:
		if st != nil {
			st.failLocked(&ResetError{Code: ResetCode(payload[0]), Remote: true})
		}
	case frameFin:
		if st != nil {
			st.finLocked()
		}
	case frameWindow:
		if st != nil {
			st.windowLocked(binary.BigEndian.Uint64(payload))
		}
	}
	return nil
}

var errPathClosed = errors.New("path closed")

// openedByPeerLocked handles OPEN.
func (s *Session) openedByPeerLocked(id uint32, desc []byte) error {
	if (id%2 == 1) != !s.dialer {
		return fmt.Errorf("protocol: peer opened stream %d with our parity", id)
	}
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
