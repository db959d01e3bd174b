package usl

// Multipath send side: path slots, per-path measurements, the scheduler
// calls, SACK, stall detection and reinjection. docs/protocol.md §8 is
// the protocol; this file is the bookkeeping behind it.
//
// Every replay entry carries two slot masks: mask, the paths the
// scheduler chose for it, and sent, the paths that carried it. A path's
// writer sends the entries whose mask holds its slot and whose sent does
// not. An entry with an empty mask is not scheduled yet: the first writer
// to reach it asks the scheduler. When a path dies its bits are cleared;
// an entry left with no path is scheduled afresh. When a path stalls (no
// ack progress for max(3×srtt, ReinjectFloor)), what sits only on it is
// scheduled again on the others: the reinjection.

import (
	"fmt"
	"iter"
	"log/slog"
	"math/bits"
	"time"
)

const (
	// maxPathSlots bounds the paths of one session: the slot masks are
	// bytes. MaxPathsPerSession is capped to it.
	maxPathSlots = 8
	// minPathWindow is the in-flight floor of a path: enough for one
	// stream window, so a path not yet measured is not starved.
	minPathWindow = 256 << 10
	// reinjectTick is how often a multipath writer checks its path for a
	// stall and hedged frames for lateness: small against the 200 ms
	// floor, and only running while a session has several paths.
	reinjectTick = 10 * time.Millisecond
	// multipathPing is the PING period while a session has several
	// paths: schedulers compare srtts, which must be fresh, and an idle
	// standby path must show a blackhole within the stall interval, not
	// the keepalive interval.
	multipathPing = 100 * time.Millisecond
	// lateScan bounds the frames Late looks at per tick: the oldest
	// unacked ones, which are the ones that can be late.
	lateScan = 64
	// minRTTWindow is how long a path's lowest RTT sample stands before
	// a higher one replaces it (BBR keeps its min_rtt for 10 s too): long
	// against the loss bursts it must see through, short enough to follow
	// a route that really got longer.
	minRTTWindow = 10 * time.Second
)

// pathStats is the multipath state of one path, guarded by s.mu.
type pathStats struct {
	slot         int // -1 when not attached
	state        PathState
	srtt, rttvar time.Duration
	minRTT       time.Duration // lowest RTT sample within minRTTWindow
	minRTTAt     time.Time     // when minRTT was sampled
	rate         float64       // bytes/s
	delivered    int           // bytes acked in the current rate sample
	busyStart    time.Time     // when the path last went from empty to busy
	busyTime     time.Duration // busy time of the current rate sample before busyStart
	inflight     int
	queued       int       // bytes of frames scheduled onto the path and not yet sent on it
	lastProgress time.Time // last ack progress of a frame sent here, or when the path went from idle to busy
	pingSent     time.Time // an unanswered PING; zero if none
	lastPing     time.Time
	stalls       uint64
	bytesSent    uint64   // frame bytes (header and payload)
	reinjected   uint64   // bytes sent as reinjections or hedged copies
	resend       []uint64 // seqs scheduled onto this path after they first went elsewhere
	ackSent      uint64   // last cumulative ack sent on this path
	sackGen      uint64   // s.sackGen when this path last sent a SACK
}

// takeSlotLocked gives p a free slot.
func (s *Session) takeSlotLocked(p *path) bool {
	for i := range s.slots {
		if s.slots[i] == nil {
			s.slots[i] = p
			p.mp.slot = i
			return true
		}
	}
	return false
}

func (s *Session) multiLocked() bool { return len(s.paths) > 1 }

// detachLocked takes p out of the scheduling: its bits leave every entry,
// and entries it alone carried are scheduled afresh. Idempotent.
func (s *Session) detachLocked(p *path) {
	if p.mp.slot < 0 {
		return
	}
	bit := uint8(1) << p.mp.slot
	s.slots[p.mp.slot] = nil
	p.mp.slot = -1
	p.mp.state = PathDead
	p.mp.queued = 0
	var rewind uint64
	for i := 0; i < s.replay.len(); i++ {
		e := s.replay.at(i)
		if (e.mask|e.sent)&bit == 0 {
			continue
		}
		wasOn := e.sent&bit != 0
		e.mask &^= bit
		e.sent &^= bit
		if e.sacked {
			continue
		}
		if wasOn && e.sent == 0 {
			e.again = true
		}
		if e.mask == 0 && rewind == 0 {
			rewind = s.acked + 1 + uint64(i)
		}
	}
	if rewind != 0 {
		for _, q := range s.paths {
			if q != p && q.next > rewind {
				q.next = rewind
			}
		}
		s.kickLocked()
	}
}

// pathWindow bounds what a scheduler that checks room may have queued and
// in flight on p: 2 × delivery rate × min RTT (a BDP with BBR's gain),
// and at least minPathWindow. The min RTT rather than the srtt: a
// saturated path's PONGs wait behind its own queue, so an srtt window
// grew with the queue it built (a 200 Mbit/s path held 787 KB, 30 ms,
// in TestE2EMultipath/row3) and the other path's frames waited for it.
// A session's only path has no other path to share with: its window is
// everything the replay buffer holds, so that the path's TCP connection
// alone paces it (a 256 KiB floor there held four streams to 2.2–2.7
// Gbit/s in tunbench, against 3.4–4.3 without it).
func (s *Session) pathWindowLocked(p *path) int {
	if !s.multiLocked() {
		return s.cfg.ReplayBuffer + s.cfg.ControlBuffer
	}
	w := minPathWindow
	if bdp := int(2 * p.mp.rate * p.mp.minRTT.Seconds()); bdp > w {
		w = bdp
	}
	return w
}

// infosLocked is the scheduler's view of the live paths, in preference
// order; s.infoSlot maps its indices to slots.
func (s *Session) infosLocked() []PathInfo {
	s.infoBuf = s.infoBuf[:0]
	s.infoSlot = s.infoSlot[:0]
	for _, p := range s.paths {
		if p.closed || p.mp.slot < 0 {
			continue
		}
		w := s.pathWindowLocked(p)
		s.infoBuf = append(s.infoBuf, PathInfo{ID: p.id, Preference: p.pref, State: p.mp.state,
			SRTT: p.mp.srtt, RTTVar: p.mp.rttvar, MinRTT: p.mp.minRTT, Rate: p.mp.rate, InFlight: p.mp.inflight + p.mp.queued, Window: w})
		s.infoSlot = append(s.infoSlot, p.mp.slot)
	}
	// Insertion sort by preference: at most 8 paths.
	for i := 1; i < len(s.infoBuf); i++ {
		for j := i; j > 0 && s.infoBuf[j].Preference < s.infoBuf[j-1].Preference; j-- {
			s.infoBuf[j], s.infoBuf[j-1] = s.infoBuf[j-1], s.infoBuf[j]
			s.infoSlot[j], s.infoSlot[j-1] = s.infoSlot[j-1], s.infoSlot[j]
		}
	}
	return s.infoBuf
}

// schedulerOf is the scheduler deciding for e: its stream's, else the
// session's.
func (s *Session) schedulerOf(e *entry) Scheduler {
	if e.st != nil && e.st.sched != nil {
		return e.st.sched
	}
	return s.sched
}

// pickLocked asks the scheduler about e (Late instead of Pick when late)
// and returns the chosen slots.
func (s *Session) pickLocked(e *entry, seq uint64, now time.Time, late bool) uint8 {
	infos := s.infosLocked()
	if len(infos) == 0 {
		return 0
	}
	f := Frame{Seq: seq, Len: len(*e.buf)}
	if e.st != nil {
		f.Stream, f.Class = e.st.id, e.st.class
	}
	if !e.firstSent.IsZero() {
		f.Age = now.Sub(e.firstSent)
	}
	for i, slot := range s.infoSlot {
		if e.sent&(1<<slot) != 0 {
			f.SentOn = f.SentOn.With(i)
		}
	}
	sc := s.schedulerOf(e)
	var set PathSet
	if late {
		ls, ok := sc.(LateScheduler)
		if !ok {
			return 0
		}
		set = ls.Late(&f, infos)
	} else {
		set = sc.Pick(&f, infos)
	}
	var m uint8
	for i, slot := range s.infoSlot {
		if set.Has(i) {
			m |= 1 << slot
		}
	}
	return m
}

// queueLocked adds slots m to e's mask and counts e as queued on the
// paths that have not carried it yet: a scheduler asked about the next
// frame must see the bytes already given to a path whose writer has not
// sent them (else one writer's round could hand a path far more than its
// window).
func (s *Session) queueLocked(e *entry, m uint8) {
	n := len(*e.buf)
	for p := range s.slotPaths(m &^ e.mask &^ e.sent) {
		p.mp.queued += n
	}
	e.mask |= m
}

// assignLocked queues e (seq) on the paths of slots m and puts it on the
// resend lists of those not in self, whose writers send it first: their
// own scans may not reach it soon (they stop short past a deferred
// frame), and what is queued on a path counts against its room until it
// is sent.
func (s *Session) assignLocked(e *entry, seq uint64, m, self uint8) {
	s.queueLocked(e, m)
	for q := range s.slotPaths(m &^ self) {
		s.resendOnLocked(q, seq)
	}
}

// slotPaths yields the attached paths of the slots in m.
func (s *Session) slotPaths(m uint8) iter.Seq[*path] {
	return func(yield func(*path) bool) {
		for m != 0 {
			i := bits.TrailingZeros8(m)
			m &^= 1 << i
			if p := s.slots[i]; p != nil && !yield(p) {
				return
			}
		}
	}
}

// sentLocked records that p carried e.
func (s *Session) sentLocked(p *path, e *entry, now time.Time) {
	n := len(*e.buf)
	if e.mask&^e.sent&(1<<p.mp.slot) != 0 {
		p.mp.queued = max(p.mp.queued-n, 0)
	}
	e.sent |= 1 << p.mp.slot
	if e.firstSent.IsZero() {
		e.firstSent = now
	}
	if p.mp.inflight == 0 {
		// From idle to busy: the stall clock and a busy period of the
		// delivery-rate sample start now.
		p.mp.lastProgress = now
		p.mp.busyStart = now
	}
	p.mp.inflight += n
	p.mp.bytesSent += uint64(n)
	if e.again {
		s.retrans += uint64(n)
		p.mp.reinjected += uint64(n)
	}
}

// creditLocked: the peer has e (acked or selectively acked); the paths
// that carried it made progress.
func (s *Session) creditLocked(e *entry, now time.Time) {
	n := len(*e.buf)
	for p := range s.slotPaths(e.mask &^ e.sent) {
		p.mp.queued = max(p.mp.queued-n, 0)
	}
	// A frame that went on one path proves that path delivers. A copy on
	// several proves only that one of them does: it keeps the healthy
	// ones' clocks going but does not bring a probing path back (its
	// PONG, or a frame it alone carried, does).
	single := bits.OnesCount8(e.sent) == 1
	for p := range s.slotPaths(e.sent) {
		p.mp.inflight = max(p.mp.inflight-n, 0)
		if !single && p.mp.state == PathProbing {
			continue
		}
		p.mp.delivered += n
		p.mp.lastProgress = now
		if p.mp.state == PathProbing {
			s.pathRecoveredLocked(p)
		}
		// Delivery rate: bytes acked per busy time (time with frames in
		// flight) of at least one srtt (20 ms floor), smoothed 1/4. Idle
		// time is left out: counted, it made a path used now and then
		// measure a few KB/s, and Balance starve it; and a sample that
		// waited for a busy interval of that length never came on a
		// path that often runs empty.
		busy := p.mp.busyTime + now.Sub(p.mp.busyStart)
		switch {
		case busy >= max(p.mp.srtt, 20*time.Millisecond):
			sample := float64(p.mp.delivered) / busy.Seconds()
			if p.mp.rate == 0 {
				p.mp.rate = sample
			} else {
				p.mp.rate = 0.75*p.mp.rate + 0.25*sample
			}
			p.mp.delivered, p.mp.busyTime, p.mp.busyStart = 0, 0, now
		case p.mp.inflight == 0:
			p.mp.busyTime = busy // the busy period ends; sentLocked starts the next
		}
	}
}

func (s *Session) pathRecoveredLocked(p *path) {
	p.mp.state = PathUp
	s.logLocked(slog.LevelInfo, "path recovered", "path", p.id, "remote", p.remote)
	s.kickLocked()
}

// sackLocked marks what the peer holds past its cumulative ack: never
// sent again, no longer in flight.
func (s *Session) sackLocked(rs []seqRange, now time.Time) error {
	for _, r := range rs {
		if r.last >= s.nextSeq {
			return errSackBeyond(r.last, s.nextSeq-1)
		}
		for seq := max(r.first, s.acked+1); seq <= r.last; seq++ {
			e := s.replay.at(int(seq - s.acked - 1))
			if !e.sacked {
				e.sacked = true
				s.creditLocked(e, now)
			}
		}
	}
	return nil
}

// rttSampleLocked folds one PONG's RTT into p's srtt and rttvar (RFC 6298
// gains) and the session's RTT (the lowest srtt of its paths).
func (s *Session) rttSampleLocked(p *path, rtt time.Duration) {
	if now := time.Now(); p.mp.minRTT == 0 || rtt <= p.mp.minRTT || now.Sub(p.mp.minRTTAt) > minRTTWindow {
		p.mp.minRTT, p.mp.minRTTAt = rtt, now
	}
	if p.mp.srtt == 0 {
		p.mp.srtt, p.mp.rttvar = rtt, rtt/2
	} else {
		d := p.mp.srtt - rtt
		if d < 0 {
			d = -d
		}
		p.mp.rttvar = (3*p.mp.rttvar + d) / 4
		p.mp.srtt = (7*p.mp.srtt + rtt) / 8
	}
	best := time.Duration(0)
	for _, q := range s.paths {
		if q.mp.srtt > 0 && (best == 0 || q.mp.srtt < best) {
			best = q.mp.srtt
		}
	}
	s.rtt = best
}

// slowestRTTLocked is the highest srtt of the paths that carry frames
// (up or backup); 0 before the first sample.
func (s *Session) slowestRTTLocked() time.Duration {
	var worst time.Duration
	for _, p := range s.paths {
		if !p.closed && p.mp.slot >= 0 && (p.mp.state == PathUp || p.mp.state == PathBackup) {
			worst = max(worst, p.mp.srtt)
		}
	}
	return worst
}

// stallAfter is how long a path may go without ack progress while it has
// frames (or a PING) in flight before it counts as stalled.
func (s *Session) stallAfter(p *path) time.Duration {
	return max(3*p.mp.srtt, s.cfg.ReinjectFloor)
}

// tickLocked runs every reinjectTick on each writer of a multipath
// session. It checks every path for a stall, not just p: a stalled path's
// own writer is typically stuck in a Write on the dead connection.
func (s *Session) tickLocked(p *path, now time.Time) {
	if now.Sub(p.mp.lastPing) >= multipathPing && p.mp.pingSent.IsZero() {
		p.pingDue = true
	}
	for _, q := range s.paths {
		if q.closed || q.mp.slot < 0 || q.mp.state != PathUp && q.mp.state != PathBackup {
			continue
		}
		after := s.stallAfter(q)
		w := q.writing.Load()
		if q.mp.inflight > 0 && now.Sub(q.mp.lastProgress) > after ||
			!q.mp.pingSent.IsZero() && now.Sub(q.mp.pingSent) > after ||
			w != 0 && now.Sub(time.Unix(0, w)) > after {
			s.stalledLocked(q, now)
		}
	}
	if now.Sub(s.lastLate) >= reinjectTick {
		s.lastLate = now
		s.lateLocked(now)
	}
}

// stalledLocked marks p probing and reinjects what only it carries.
func (s *Session) stalledLocked(p *path, now time.Time) {
	p.mp.state = PathProbing
	p.mp.stalls++
	s.logLocked(slog.LevelInfo, "path stalled: reinjecting its frames on the others", "path", p.id, "remote", p.remote,
		"in_flight", p.mp.inflight, "after", s.stallAfter(p).String())
	bit := uint8(1) << p.mp.slot
	healthy := s.healthySlotsLocked()
	for i := 0; i < s.replay.len(); i++ {
		e := s.replay.at(i)
		if e.sacked || e.mask&bit == 0 || e.sent&^bit&healthy != 0 {
			continue
		}
		seq := s.acked + 1 + uint64(i)
		if !s.rescheduleLocked(e, seq, now, false) {
			// The scheduler wants room that the healthy paths do not
			// have now. A frame held back on a stalled path is late
			// already, and waiting for room here would make it wait for
			// the dead interval instead: it goes on the healthy path
			// with the lowest srtt, room or not (bounded, as any frame,
			// by the replay buffer).
			s.forceLocked(e, seq, healthy)
		}
	}
}

// forceLocked queues e on the healthy path of the lowest srtt that has not
// carried it.
func (s *Session) forceLocked(e *entry, seq uint64, healthy uint8) {
	var best *path
	for q := range s.slotPaths(healthy &^ (e.sent | e.mask)) {
		if best == nil || q.mp.srtt < best.mp.srtt {
			best = q
		}
	}
	if best == nil {
		return
	}
	s.assignLocked(e, seq, 1<<best.mp.slot, 0)
	e.again = true
}

// rescheduleLocked offers e to its scheduler again and queues it on the
// newly chosen paths; false if the scheduler chose none.
func (s *Session) rescheduleLocked(e *entry, seq uint64, now time.Time, late bool) bool {
	m := s.pickLocked(e, seq, now, late) &^ (e.sent | e.mask)
	if m == 0 {
		return false
	}
	s.assignLocked(e, seq, m, 0)
	e.again = true
	return true
}

// resendOnLocked puts seq on q's resend list and wakes its writer.
func (s *Session) resendOnLocked(q *path, seq uint64) {
	if len(q.mp.resend) > 2*s.replay.len()+64 {
		q.compactResendLocked()
	}
	q.mp.resend = append(q.mp.resend, seq)
	q.poke()
}

// compactResendLocked drops resend entries that no longer need sending.
func (p *path) compactResendLocked() {
	s := p.s
	bit := uint8(1) << p.mp.slot
	out := p.mp.resend[:0]
	for _, seq := range p.mp.resend {
		if seq <= s.acked || seq >= s.nextSeq {
			continue
		}
		e := s.replay.at(int(seq - s.acked - 1))
		if !e.sacked && e.sent&bit == 0 {
			out = append(out, seq)
		}
	}
	p.mp.resend = out
}

func (s *Session) healthySlotsLocked() uint8 {
	var m uint8
	for _, q := range s.paths {
		if q.mp.slot >= 0 && !q.closed && q.mp.state != PathProbing {
			m |= 1 << q.mp.slot
		}
	}
	return m
}

// lateLocked asks LateSchedulers about the oldest unacked frames.
func (s *Session) lateLocked(now time.Time) {
	for i := 0; i < s.replay.len() && i < lateScan; i++ {
		e := s.replay.at(i)
		if e.sacked || e.sent == 0 || e.firstSent.IsZero() {
			continue
		}
		if _, ok := s.schedulerOf(e).(LateScheduler); !ok {
			continue
		}
		s.rescheduleLocked(e, s.acked+1+uint64(i), now, true)
	}
}

func errSackBeyond(last, sent uint64) error {
	return fmt.Errorf("protocol: peer selectively acks seq %d, only %d were sent", last, sent)
}
