package usl

// The send side: the replay buffer, which is also the send queue, and
// what each path writer takes from it.

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"
)

// kickLocked wakes the paths' writers.
func (s *Session) kickLocked() {
	if s.kickHold {
		s.kickHeld = true
		return
	}
	for _, p := range s.paths {
		p.poke()
	}
}

// inlineWriteMax is the largest write that goes out in its caller's
// goroutine (path.writeInline) when the writer is idle: a request, a
// keystroke, an OPEN or ACCEPT is latency-bound, and the hand-off to the
// writer goroutine is a thread wake-up on each side. A larger write is
// bulk, and the writer goroutine sealing one chunk while the caller reads
// the next is the better use of two cores.
const inlineWriteMax = 4 << 10

// holdKickLocked makes kickLocked note its kicks instead of waking the
// writers, until inlinePathLocked: the caller is about to queue frames it
// may write inline.
func (s *Session) holdKickLocked() { s.kickHold = true }

// inlinePathLocked ends holdKickLocked. When a kick was held and the
// session has a single live path, it returns that path, for the caller to
// write on with writeInline once it has unlocked; otherwise it wakes the
// writers as the held kick would have (with several paths each writer's
// round consults the schedulers) and returns nil.
func (s *Session) inlinePathLocked() *path {
	s.kickHold = false
	if !s.kickHeld {
		return nil
	}
	s.kickHeld = false
	if len(s.paths) == 1 {
		if p := s.paths[0]; p.running && !p.closed && p.mp.slot >= 0 {
			return p
		}
	}
	s.kickLocked()
	return nil
}

// pushLocked appends a sequenced frame of n payload bytes to the replay
// buffer and returns the payload to fill in. st is the stream the frame
// belongs to, whose next stream seq it takes; nil for session frames and
// for a RESET of a stream we hold no state for, which carry sseq 0.
func (s *Session) pushLocked(t frameType, st *Stream, n int) []byte {
	return s.pushEntryLocked(t, st, 0, n, false)
}

// pushCtlLocked queues a stateless control frame that answers the peer's
// input (a RESET of an OPEN past the limit). Its allocation counts
// against Config.ControlBuffer until acked.
func (s *Session) pushCtlLocked(t frameType, stream uint32, n int) []byte {
	return s.pushEntryLocked(t, nil, stream, n, true)
}

func (s *Session) pushEntryLocked(t frameType, st *Stream, stream uint32, n int, ctl bool) []byte {
	b := s.pool.get(headerLen + n)
	h := frameHeader{typ: t, stream: stream, seq: s.nextSeq, length: uint32(n)}
	if st != nil {
		h.stream, h.sseq = st.id, st.sendSseq
		st.sendSseq++
	}
	h.put(*b)
	e := entry{buf: b, st: st}
	switch {
	case t == frameData:
		e.data = n
	case ctl:
		e.ctl = cap(*b)
	}
	s.replay.push(e)
	s.replayBytes += e.data
	s.ctlBytes += e.ctl
	s.nextSeq++
	s.kickLocked()
	return (*b)[headerLen:]
}

func (s *Session) pushU64Locked(t frameType, st *Stream, v uint64, ctl bool) {
	b := s.pushEntryLocked(t, st, 0, 8, ctl)
	binary.BigEndian.PutUint64(b, v)
}

// ackLocked frees everything the peer acknowledged. This is the only place
// replay memory is released while the session lives: TCP's own acks mean
// nothing, the bytes may still sit unread in a socket buffer that a reset
// throws away.
func (s *Session) ackLocked(a uint64) error {
	if a <= s.acked {
		return nil
	}
	if a >= s.nextSeq {
		return fmt.Errorf("protocol: peer acks seq %d, only %d were sent", a, s.nextSeq-1)
	}
	now := time.Now()
	for s.acked < a {
		e := s.replay.pop()
		if !e.sacked {
			s.creditLocked(&e, now)
		}
		s.replayBytes -= e.data
		s.ctlBytes -= e.ctl
		s.releaseLocked(e.buf)
		s.acked++
	}
	if s.closeSeq != 0 && a >= s.closeSeq {
		close(s.closeAcked)
		s.closeSeq = 0
	}
	if s.spaceWait != nil {
		close(s.spaceWait)
		s.spaceWait = nil
	}
	if s.deferredPick {
		// A scheduler deferred a frame for want of room: the ack made some.
		s.deferredPick = false
		s.kickLocked()
	}
	return nil
}

func appendCtl(buf []byte, t frameType, ack uint64, v uint64, withPayload bool) []byte {
	h := frameHeader{typ: t, ack: ack}
	if withPayload {
		h.length = 8
	}
	var hb [headerLen]byte
	h.put(hb[:])
	buf = append(buf, hb[:]...)
	if withPayload {
		buf = binary.BigEndian.AppendUint64(buf, v)
	}
	return buf
}

// fillLocked gathers what path p should send now: pong, ping, the
// sequenced frames past p's cursor, and a bare ACK when one is due. Small
// frames and all headers are copied into p.stage; large DATA payloads are
// referenced where they sit in the replay buffer and sealed from there,
// which saves a copy of every bulk byte. Such references pin the replay
// buffers (see releaseLocked) until the writer calls unpinLocked; pinned
// says whether it must. wait>0 asks the writer to come back then for a
// delayed ack. endAfter says the write carries the ack of the peer's
// CLOSE, after which the session ends.
func (s *Session) fillLocked(p *path, now time.Time) (pinned bool, wait time.Duration, endAfter bool) {
	stage := p.stage[:0]
	p.segs = p.segs[:0]
	if p.closed || p.mp.slot < 0 {
		return false, 0, false
	}
	if p.pongPending {
		stage = appendCtl(stage, framePong, s.recvSeq, p.pongVal, true)
		p.pongPending = false
	}
	if p.pingDue {
		stage = appendCtl(stage, framePing, s.recvSeq, uint64(time.Since(p.start)), true)
		p.pingDue = false
		p.mp.lastPing = now
		if p.mp.pingSent.IsZero() {
			p.mp.pingSent = now
		}
	}
	if p.next <= s.acked {
		p.next = s.acked + 1
	}
	bit := uint8(1) << p.mp.slot
	// The stage keeps room for a SACK at the end.
	limit := cap(stage) - headerLen - maxSackRanges*sackRangeLen
	segStart, total := 0, len(stage)
	emit := func(e *entry) bool {
		b := *e.buf
		inline := e.data <= inlineMax
		need := len(b)
		if !inline {
			need = headerLen
		}
		if len(stage)+need > limit {
			return false
		}
		off := len(stage)
		stage = append(stage, b[:need]...)
		putAck(stage[off:], s.recvSeq)
		if !inline {
			p.segs = append(p.segs, stage[segStart:], b[headerLen:])
			segStart = len(stage)
			pinned = true
		}
		total += len(b)
		s.sentLocked(p, e, now)
		return true
	}
	// Frames rescheduled onto this path (reinjection, hedging) first:
	// they are the late ones.
	for len(p.mp.resend) > 0 && total < batchLimit {
		seq := p.mp.resend[0]
		if seq > s.acked && seq < s.nextSeq {
			e := s.replay.at(int(seq - s.acked - 1))
			if !e.sacked && e.sent&bit == 0 && e.mask&bit != 0 && !emit(e) {
				break
			}
		}
		p.mp.resend = p.mp.resend[1:]
	}
	if len(p.mp.resend) == 0 {
		p.mp.resend = p.mp.resend[:0:0]
	}
	// A frame its scheduler defers (no path it would take has room) must
	// not hold back other streams' frames behind it: a mirrored rr flow
	// would wait for a bulk flow's window, head-of-line blocking across
	// streams at the sender. The cursor stays at the first deferred
	// frame, and up to deferScan frames behind it are still scheduled,
	// except those of a stream with a deferred frame (so a stream's own
	// frames keep their order) and session frames (CLOSE), which wait.
	// Each run of frames passed over is a gap at the receiver, and what
	// lies past a gap is released from the room checks only by SACK,
	// which names the lowest maxSackRanges ranges: so at most
	// maxDeferGaps runs are passed over, or frames the peer holds beyond
	// the SACK's reach would keep the room that the deferred ones wait
	// for (a deadlock, measured with 200 flows on one flapping path).
	resume, scanned, gaps, inGap := uint64(0), 0, 0, false
	held := p.held[:0]
	for p.next < s.nextSeq && total < batchLimit {
		if resume != 0 {
			if scanned++; scanned > deferScan {
				break
			}
		}
		e := s.replay.at(int(p.next - s.acked - 1))
		if !e.sacked && e.sent&bit == 0 && e.mask == 0 {
			skip := resume != 0 && (e.st == nil || slices.Contains(held, e.st))
			if !skip {
				m := s.pickLocked(e, p.next, now, false)
				if m == 0 {
					s.deferredPick = true
					if e.st == nil {
						break
					}
					if resume == 0 {
						resume = p.next
					}
					held = append(held, e.st)
					skip = true
				} else {
					s.assignLocked(e, p.next, m, bit)
				}
			}
			if skip {
				if !inGap {
					if gaps++; gaps > maxDeferGaps {
						break
					}
					inGap = true
				}
				p.next++
				continue
			}
		}
		inGap = false
		if !e.sacked && e.sent&bit == 0 && e.mask&bit != 0 && !emit(e) {
			// The stage is full: first in the next round.
			s.resendOnLocked(p, p.next)
			break
		}
		p.next++
	}
	clear(held)
	p.held = held[:0]
	if resume != 0 {
		p.next = resume
	}
	sackDue := len(s.recvRanges) > 0 && p.mp.sackGen != s.sackGen
	if total == 0 && (s.recvSeq > p.mp.ackSent || sackDue || p.ackDue) {
		if !p.ackDue && !s.ackUrgent && now.Before(s.ackDeadline) {
			return false, s.ackDeadline.Sub(now), false
		}
		stage = appendCtl(stage, frameAck, s.recvSeq, 0, false)
		total = len(stage)
	}
	if total > 0 && len(s.recvRanges) > 0 {
		stage = s.appendSackLocked(stage)
		p.mp.sackGen = s.sackGen
	}
	if segStart < len(stage) {
		p.segs = append(p.segs, stage[segStart:])
	}
	if total > 0 {
		p.ackDue = false
		p.mp.ackSent = s.recvSeq
		s.recvSinceAck = 0
		s.ackDeadline = time.Time{}
		s.ackUrgent = false
		endAfter = s.peerClosed && s.recvSeq >= s.peerCloseSeq
	}
	if pinned {
		s.pins++
	}
	return pinned, 0, endAfter
}

// appendSackLocked appends a SACK of the lowest maxSackRanges ranges held
// past the cumulative ack.
func (s *Session) appendSackLocked(buf []byte) []byte {
	rs := s.recvRanges[:min(len(s.recvRanges), maxSackRanges)]
	h := frameHeader{typ: frameSack, ack: s.recvSeq, length: uint32(len(rs) * sackRangeLen)}
	var hb [headerLen]byte
	h.put(hb[:])
	buf = append(buf, hb[:]...)
	for _, r := range rs {
		buf = binary.BigEndian.AppendUint64(buf, r.first)
		buf = binary.BigEndian.AppendUint64(buf, r.last)
	}
	return buf
}

// Batching: a writer takes up to batchLimit bytes of frames per round (one
// Write call), and copies DATA payloads of up to inlineMax bytes into its
// stage instead of sealing them separately, since a separate record costs
// more than copying a small payload.
const (
	batchLimit = 256 << 10
	inlineMax  = 2 << 10
	// deferScan bounds the frames a writer looks at past a deferred one
	// per round, so that a long queue of deferred bulk frames costs each
	// round a bounded scan.
	deferScan = 512
	// maxDeferGaps bounds the runs of deferred frames a writer passes
	// over (see fillLocked): half the SACK's ranges, the rest for the
	// gaps of frames still on slower paths.
	maxDeferGaps = maxSackRanges / 2
)

// releaseLocked returns an acked replay buffer to the pool, unless a writer
// is sealing from the replay buffer right now: then it waits for unpin.
func (s *Session) releaseLocked(b *[]byte) {
	if s.pins > 0 {
		s.deferred = append(s.deferred, b)
		return
	}
	s.pool.put(b)
}

func (s *Session) unpinLocked() {
	s.pins--
	if s.pins > 0 {
		return
	}
	for i, b := range s.deferred {
		s.pool.put(b)
		s.deferred[i] = nil
	}
	s.deferred = s.deferred[:0]
}
