package usl

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"
)

// Stream is one bidirectional byte stream of a session. It implements
// net.Conn. Write never fails because a path died: the bytes wait in the
// replay buffer until a path carries them. Only a reset, Close, a deadline
// or the end of the session produce errors.
type Stream struct {
	s      *Session
	id     uint32
	desc   []byte
	opener bool

	openDone chan struct{} // closed on ACCEPT, RESET or session end
	rwake    chan struct{} // cap 1: readable, or state changed
	wwake    chan struct{} // cap 1: credit, or state changed
	rdl, wdl deadline

	// Guarded by s.mu.
	opened     bool // ACCEPT sent or received
	answered   bool // acceptor: Accept or Reject was called
	sendLimit  uint64
	sent       uint64
	wfin       bool // we sent FIN
	rfin       bool // the peer's FIN arrived
	rclosed    bool // CloseRead or Close: discard what arrives
	closed     bool // Close was called
	writeShut  bool // the peer closed the session: no more writes
	err        error
	sendSseq   uint32  // stream seq of the next sequenced frame we send
	recvSseq   uint32  // stream seq the peer's next sequenced frame must carry
	rq         []chunk // received bytes; rq[rqHead:] are unread
	rqHead     int
	rbuffered  int    // unread payload bytes
	rheld      int    // bytes WriteTo took out of rq and is writing: not consumed yet
	rmem       int    // allocation of rq's buffers, charged to the session's RecvBuffer
	consumed   uint64 // bytes read by the application (or discarded)
	advertised uint64 // the credit limit we granted the peer
	window     uint64 // our receive window: credit runs to consumed+window
	tuneAt     time.Time
	tuneFrom   uint64 // consumed at tuneAt, the start of the tuning epoch
	removed    bool

	sched   Scheduler            // nil: the session's
	class   string               // policy class, for schedulers and status
	pending map[uint32]heldFrame // frames received ahead of recvSseq (multipath), by sseq
}

var _ net.Conn = (*Stream)(nil)

func newStream(s *Session, id uint32, desc []byte) *Stream {
	return &Stream{
		s:          s,
		id:         id,
		desc:       desc,
		openDone:   make(chan struct{}),
		rwake:      make(chan struct{}, 1),
		wwake:      make(chan struct{}, 1),
		rdl:        newDeadline(),
		wdl:        newDeadline(),
		advertised: uint64(s.cfg.StreamWindow),
		window:     uint64(s.cfg.StreamWindow),
	}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Errors of stream calls in the wrong state.
var (
	ErrStreamClosed    = fmt.Errorf("usl: stream closed: %w", net.ErrClosed)
	ErrWriteClosed     = errors.New("usl: write after CloseWrite")
	ErrNotAccepted     = errors.New("usl: stream not accepted yet")
	ErrAlreadyAnswered = errors.New("usl: stream already accepted or rejected")
)

// Descriptor is the opaque destination the opener sent.
func (st *Stream) Descriptor() []byte { return st.desc }

// Accept answers an OPEN positively; the opener's OpenStream returns.
func (st *Stream) Accept() error {
	s := st.s
	s.mu.Lock()
	if st.opener || st.answered {
		s.unlock()
		return ErrAlreadyAnswered
	}
	if st.err != nil {
		err := st.err
		s.unlock()
		return err
	}
	st.answered, st.opened = true, true
	s.holdKickLocked()
	s.pushLocked(frameAccept, st, 0)
	p := s.inlinePathLocked()
	s.unlock()
	if p != nil {
		// The opener's connect waits for this frame.
		p.writeInline()
	}
	return nil
}

// Reject answers an OPEN with a reset reason; the opener's OpenStream
// returns a *ResetError with that code.
func (st *Stream) Reject(code ResetCode) error {
	s := st.s
	s.mu.Lock()
	defer s.unlock()
	if st.opener || st.answered {
		return ErrAlreadyAnswered
	}
	st.answered = true
	if st.err != nil {
		return st.err
	}
	st.sendResetLocked(code, false)
	return nil
}

// sendResetLocked resets the stream and tells the peer. peerCaused marks a
// reset that answers the peer's own misbehaviour: its frame counts
// against the control budget.
func (st *Stream) sendResetLocked(code ResetCode, peerCaused bool) {
	s := st.s
	if s.err == nil {
		s.pushEntryLocked(frameReset, st, 0, 1, peerCaused)[0] = byte(code)
	}
	st.failLocked(&ResetError{Code: code})
}

// Reset aborts both directions with a reason the peer's Read and Write
// then return.
func (st *Stream) Reset(code ResetCode) error {
	s := st.s
	s.mu.Lock()
	defer s.unlock()
	if st.err != nil {
		return nil
	}
	st.answered = true
	st.sendResetLocked(code, false)
	return nil
}

// CloseWrite sends FIN: the peer reads EOF after the data written before.
func (st *Stream) CloseWrite() error {
	s := st.s
	s.mu.Lock()
	defer s.unlock()
	if st.err != nil {
		return st.err
	}
	if st.wfin {
		return nil
	}
	if !st.opened {
		return ErrNotAccepted
	}
	if s.err != nil || st.writeShut {
		return ErrSessionClosed
	}
	st.wfin = true
	s.pushLocked(frameFin, st, 0)
	st.maybeRemoveLocked()
	wake(st.wwake)
	return nil
}

// CloseRead discards what is buffered and what still arrives. The peer is
// not told, as with shutdown(SHUT_RD); its credit keeps flowing so it can
// reach its FIN.
func (st *Stream) CloseRead() error {
	s := st.s
	s.mu.Lock()
	defer s.unlock()
	st.rclosed = true
	st.discardLocked(true)
	wake(st.rwake)
	return nil
}

// Close half-closes the write side (FIN) and stops reading. A stream never
// accepted is rejected as aborted.
func (st *Stream) Close() error {
	s := st.s
	s.mu.Lock()
	defer s.unlock()
	if st.closed {
		return nil
	}
	st.closed = true
	if st.err == nil {
		switch {
		case !st.opener && !st.answered:
			st.answered = true
			st.sendResetLocked(ResetAborted, false)
		case !st.wfin && st.opened && s.err == nil && !st.writeShut:
			st.wfin = true
			s.pushLocked(frameFin, st, 0)
		}
	}
	st.rclosed = true
	st.discardLocked(st.err == nil)
	st.maybeRemoveLocked()
	wake(st.rwake)
	wake(st.wwake)
	return nil
}

// Read returns io.EOF after the peer's FIN, a *ResetError after a reset,
// os.ErrDeadlineExceeded after the read deadline.
func (st *Stream) Read(b []byte) (int, error) {
	s := st.s
	for {
		// As with net.Conn, a passed deadline fails the call even when
		// data is waiting.
		if isClosed(st.rdl.wait()) {
			return 0, os.ErrDeadlineExceeded
		}
		s.mu.Lock()
		n, done, err := st.tryReadLocked(b)
		if done && (err != nil || st.rbuffered > 0) {
			// net.Conn allows concurrent Reads: pass the wake-up on, so a
			// second reader sees the data left or the end too.
			wake(st.rwake)
		}
		s.unlock()
		if done {
			return n, err
		}
		select {
		case <-st.rwake:
		case <-st.rdl.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// WriteTo writes what the stream receives to w until the peer's FIN, and
// then returns nil (io.WriterTo, as io.Copy expects). It returns a
// *ResetError after a reset, ErrStreamClosed after Close,
// os.ErrDeadlineExceeded after the read deadline, and w's error if w
// failed. Each received buffer goes to w as it is, outside the session's
// lock: there is no copy into a buffer of the caller's, and while nothing
// arrives the caller blocks holding no buffer at all. A buffer counts as
// consumed, and its credit is granted to the peer, once w has taken it; if
// w fails, the bytes of that buffer it did not take are lost, as with a Read
// whose bytes the caller could not write.
func (st *Stream) WriteTo(w io.Writer) (int64, error) {
	s := st.s
	var total int64
	for {
		if isClosed(st.rdl.wait()) {
			return total, os.ErrDeadlineExceeded
		}
		s.mu.Lock()
		if st.gatherLocked() {
			// Small buffers queued behind each other (a peer's small
			// writes while w was slow) go out in one write, as Read
			// would return them, not a write each.
			b := s.pool.get(min(st.rbuffered, 1<<16))
			n := st.readLocked(*b)
			s.unlock()
			m, werr := writeFull(w, (*b)[:n])
			s.pool.put(b)
			total += int64(m)
			if werr != nil {
				return total, werr
			}
			continue
		}
		c, done, err := st.takeLocked()
		if done {
			wake(st.rwake) // as in Read: another reader sees the end too
		}
		s.unlock()
		switch {
		case c.buf != nil:
			n, werr := writeFull(w, (*c.buf)[c.off:c.end])
			total += int64(n)
			s.mu.Lock()
			st.rheld -= c.end - c.off
			st.consumed += uint64(c.end - c.off)
			st.releaseLocked(c.buf)
			st.creditLocked()
			s.unlock()
			if werr != nil {
				return total, werr
			}
			continue
		case done && err == io.EOF:
			return total, nil
		case done:
			return total, err
		}
		select {
		case <-st.rwake:
		case <-st.rdl.wait():
			return total, os.ErrDeadlineExceeded
		}
	}
}

// writeFull is w.Write with io.Copy's rule for a writer that took less
// than all of b without saying why: io.ErrShortWrite.
func writeFull(w io.Writer, b []byte) (int, error) {
	n, err := w.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	return n, err
}

// gatherLocked reports whether WriteTo should copy what is queued into one
// buffer rather than hand over the head buffer: when that is a small one
// (at most a coalescing buffer) and more is queued behind it.
func (st *Stream) gatherLocked() bool {
	if st.closed || st.rbuffered == 0 {
		return false
	}
	c := st.rq[st.rqHead]
	return cap(*c.buf) <= coalesceBuf && st.rbuffered > c.end-c.off
}

// takeLocked is one attempt of WriteTo: the next unread buffer, taken out
// of rq and counted in rheld, or the stream's end (done), or nothing yet.
func (st *Stream) takeLocked() (c chunk, done bool, err error) {
	if st.rbuffered == 0 || st.closed {
		_, done, err = st.tryReadLocked(nil)
		return chunk{}, done, err
	}
	c = st.rq[st.rqHead]
	st.rq[st.rqHead] = chunk{}
	st.rqHead++
	if st.rqHead == len(st.rq) {
		st.rq, st.rqHead = st.rq[:0], 0
	}
	st.rbuffered -= c.end - c.off
	st.rheld += c.end - c.off
	return c, false, nil
}

// tryReadLocked is one attempt of Read; done=false means wait.
func (st *Stream) tryReadLocked(b []byte) (n int, done bool, err error) {
	switch {
	case st.closed:
		return 0, true, ErrStreamClosed
	case st.rbuffered > 0:
		if len(b) == 0 {
			return 0, true, nil
		}
		return st.readLocked(b), true, nil
	case st.err != nil:
		return 0, true, st.err
	case st.rfin, st.rclosed:
		return 0, true, io.EOF
	}
	return 0, false, nil
}

func (st *Stream) readLocked(b []byte) int {
	n := 0
	for n < len(b) && st.rqHead < len(st.rq) {
		c := &st.rq[st.rqHead]
		m := copy(b[n:], (*c.buf)[c.off:c.end])
		n += m
		c.off += m
		if c.off == c.end {
			st.releaseLocked(c.buf)
			*c = chunk{}
			st.rqHead++
		}
	}
	if st.rqHead == len(st.rq) {
		// Drained: reuse the array from the start, so that a stream in
		// steady state queues payloads without allocating.
		st.rq, st.rqHead = st.rq[:0], 0
	}
	st.rbuffered -= n
	st.consumed += uint64(n)
	st.creditLocked()
	return n
}

// chunk is one receive buffer: (*buf)[off:end] is unread.
type chunk struct {
	buf      *[]byte
	off, end int
}

// releaseLocked returns a drained receive buffer and its charge.
func (st *Stream) releaseLocked(b *[]byte) {
	st.rmem -= cap(*b)
	st.s.recvMem -= cap(*b)
	st.s.pool.put(b)
}

// creditLocked grants the peer more window once a quarter of it was
// consumed, so WINDOW frames stay rare on a busy stream.
func (st *Stream) creditLocked() {
	s := st.s
	if st.rfin || st.err != nil || s.err != nil {
		return
	}
	if st.consumed+st.window-st.advertised < max(st.window/4, 1) {
		return
	}
	st.tuneLocked(time.Now())
	st.advertised = st.consumed + st.window
	// Credit answers the peer's data: it counts against the control
	// budget, so a peer that never acks cannot grow these forever.
	s.pushU64Locked(frameWindow, st, st.advertised, true)
}

// tuneLocked doubles the window when the reader consumed half of it or
// more in less than 4×fraction×RTT since the epoch began: then the sender
// was most likely waiting for credit, not for the network. The RTT is the
// slowest live path's, since frames reordered over it hold up delivery.
// Growth stops at MaxStreamWindow, and a session's streams together grow
// by at most RecvBuffer/4 over their initial windows, so the memory an
// honest peer can make us hold stays near the untuned bound. A window
// never shrinks: credit granted cannot be taken back.
func (st *Stream) tuneLocked(now time.Time) {
	s := st.s
	if st.tuneAt.IsZero() {
		st.tuneAt, st.tuneFrom = now, st.consumed
		return
	}
	used := st.consumed - st.tuneFrom
	if used < st.window/2 {
		return
	}
	rtt := s.slowestRTTLocked()
	limit := uint64(s.cfg.MaxStreamWindow)
	if rtt > 0 && st.window < limit && now.Sub(st.tuneAt) < time.Duration(4*float64(used)/float64(st.window)*float64(rtt)) {
		grow := min(st.window, limit-st.window)
		if s.windowGrowth+grow <= uint64(s.cfg.RecvBuffer/4) {
			st.window += grow
			s.windowGrowth += grow
		}
	}
	st.tuneAt, st.tuneFrom = now, st.consumed
}

// discardLocked drops buffered data, optionally granting its credit back.
func (st *Stream) discardLocked(credit bool) {
	for _, c := range st.rq[st.rqHead:] {
		st.releaseLocked(c.buf)
	}
	st.consumed += uint64(st.rbuffered)
	st.rq, st.rqHead, st.rbuffered = nil, 0, 0
	if credit {
		st.creditLocked()
	}
}

// Write blocks while the stream has no credit or the replay buffer is
// full. A dead path never makes it fail.
func (st *Stream) Write(b []byte) (int, error) {
	s := st.s
	total := 0
	small := len(b) <= inlineWriteMax
	for len(b) > 0 {
		s.mu.Lock()
		if err := st.writeErrLocked(); err != nil {
			wake(st.wwake) // other writers blocked on this stream end too
			s.unlock()
			return total, err
		}
		credit := int(min(st.sendLimit-st.sent, 1<<30))
		space := s.cfg.ReplayBuffer - s.replayBytes
		n := min(len(b), credit, space, s.maxSendFrame)
		if n > 0 {
			if small {
				s.holdKickLocked()
			}
			copy(s.pushLocked(frameData, st, n), b[:n])
			st.sent += uint64(n)
			s.bytesOut += uint64(n)
			if n == len(b) && n < credit && n < space {
				// Done, with credit left: net.Conn allows concurrent
				// Writes, so pass the wake-up on to another writer.
				wake(st.wwake)
			}
			var p *path
			if small {
				p = s.inlinePathLocked()
			}
			s.unlock()
			if p != nil {
				p.writeInline()
			}
			b = b[n:]
			total += n
			continue
		}
		var spaceCh chan struct{}
		if space <= 0 {
			if s.spaceWait == nil {
				s.spaceWait = make(chan struct{})
			}
			spaceCh = s.spaceWait
		}
		s.unlock()
		select {
		case <-st.wwake:
		case <-spaceCh:
		case <-st.wdl.wait():
			return total, os.ErrDeadlineExceeded
		}
	}
	return total, nil
}

func (st *Stream) writeErrLocked() error {
	s := st.s
	switch {
	case st.closed:
		return ErrStreamClosed
	case st.err != nil:
		return st.err
	case st.wfin:
		return ErrWriteClosed
	case !st.opened:
		return ErrNotAccepted
	case s.err != nil:
		return s.err
	case s.closing || st.writeShut:
		return ErrSessionClosed
	case isClosed(st.wdl.wait()):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Receive buffers are charged by what they allocate, not by payload: a
// small payload (up to coalesceMax) is copied into the free space of the
// stream's last buffer, or into a fresh coalesceBuf one, so a peer sending
// 1-byte frames costs about one byte per byte, not a pool buffer each.
// A larger payload keeps its pooled buffer, which is less than twice its
// size. One stream's receive memory is thus at most twice its window plus
// one coalescing buffer, and all streams' together at most RecvBuffer.
const (
	coalesceMax = 2 << 10
	coalesceBuf = 4 << 10
)

// deliverLocked queues a DATA payload; it reports whether it kept data.
func (st *Stream) deliverLocked(data *[]byte) bool {
	s := st.s
	n := len(*data)
	if st.err != nil || st.rfin {
		return false
	}
	if !st.opener && !st.opened {
		// Data before our ACCEPT: an honest opener waits for it. Holding
		// such data while the acceptor dials would be memory the peer
		// gets for free.
		s.logLocked(slog.LevelWarn, "peer sent data before the stream was accepted", "stream", st.id)
		st.sendResetLocked(ResetAborted, true)
		return false
	}
	if st.consumed+uint64(st.rbuffered+st.rheld+n) > st.advertised {
		// The peer overran the credit we granted: abort the stream, not
		// the session, which is healthy.
		s.logLocked(slog.LevelWarn, "peer overran stream credit", "stream", st.id)
		st.sendResetLocked(ResetAborted, true)
		return false
	}
	s.bytesIn += uint64(n)
	if st.rclosed {
		st.consumed += uint64(n)
		st.creditLocked()
		return false
	}
	if k := len(st.rq); k > st.rqHead && n <= coalesceMax {
		if t := &st.rq[k-1]; cap(*t.buf)-t.end >= n {
			copy((*t.buf)[t.end:cap(*t.buf)], *data)
			t.end += n
			st.rbuffered += n
			wake(st.rwake)
			return false
		}
	}
	buf, kept := data, true
	if n <= coalesceMax {
		buf, kept = s.pool.get(coalesceBuf), false
		copy(*buf, *data)
	}
	if s.recvMem+cap(*buf) > s.cfg.RecvBuffer {
		if !kept {
			s.pool.put(buf)
		}
		s.logLocked(slog.LevelWarn, "session receive buffers full: stream reset", "stream", st.id, "limit", s.cfg.RecvBuffer)
		st.sendResetLocked(ResetLimit, true)
		return false
	}
	st.rmem += cap(*buf)
	s.recvMem += cap(*buf)
	if st.rqHead > 0 && len(st.rq) == cap(st.rq) {
		m := copy(st.rq, st.rq[st.rqHead:])
		clear(st.rq[m:])
		st.rq, st.rqHead = st.rq[:m], 0
	}
	st.rq = append(st.rq, chunk{buf: buf, end: n})
	st.rbuffered += n
	wake(st.rwake)
	return kept
}

func (st *Stream) acceptedLocked() {
	if !st.opener || st.opened || st.err != nil {
		return
	}
	st.opened = true
	st.sendLimit = max(st.sendLimit, st.s.peerWindow)
	close(st.openDone)
}

func (st *Stream) finLocked() {
	st.rfin = true
	st.maybeRemoveLocked()
	wake(st.rwake)
}

func (st *Stream) windowLocked(limit uint64) {
	if limit > st.sendLimit {
		st.sendLimit = limit
		wake(st.wwake)
	}
}

// failLocked ends the stream with err in both directions. Buffered data is
// dropped: after a reset or a fence nothing more is delivered.
func (st *Stream) failLocked(err error) {
	if st.err != nil {
		return
	}
	st.err = err
	st.discardLocked(false)
	if !st.opened && st.opener {
		close(st.openDone)
		st.opened = true
	}
	st.maybeRemoveLocked()
	wake(st.rwake)
	wake(st.wwake)
}

// peerClosedLocked ends a stream because the peer closed the session after
// sending everything: buffered data stays readable, then EOF.
func (st *Stream) peerClosedLocked() {
	st.rfin = true
	st.writeShut = true
	if st.opener && !st.opened {
		st.err = ErrSessionClosed
		st.opened = true
		close(st.openDone)
	}
	wake(st.rwake)
	wake(st.wwake)
}

func (st *Stream) maybeRemoveLocked() {
	if st.removed {
		return
	}
	if st.err != nil || (st.wfin && st.rfin) {
		st.removed = true
		st.s.windowGrowth -= st.window - uint64(st.s.cfg.StreamWindow)
		st.dropPendingLocked()
		if st.s.streams[st.id] == st {
			delete(st.s.streams, st.id)
		}
	}
}

func (st *Stream) LocalAddr() net.Addr  { return streamAddr{st.id, "local"} }
func (st *Stream) RemoteAddr() net.Addr { return streamAddr{st.id, "remote"} }

func (st *Stream) SetDeadline(t time.Time) error {
	st.rdl.set(t)
	st.wdl.set(t)
	return nil
}
func (st *Stream) SetReadDeadline(t time.Time) error  { st.rdl.set(t); return nil }
func (st *Stream) SetWriteDeadline(t time.Time) error { st.wdl.set(t); return nil }

// streamAddr names a stream end; USL streams have no IP addresses of their
// own, the destination lives in the descriptor.
type streamAddr struct {
	id   uint32
	side string
}

func (a streamAddr) Network() string { return "usl" }
func (a streamAddr) String() string  { return fmt.Sprintf("usl-stream-%d-%s", a.id, a.side) }

// dropPendingLocked releases the frames held for this stream.
func (st *Stream) dropPendingLocked() {
	for _, hf := range st.pending {
		st.s.releaseHeldLocked(hf)
	}
	st.pending = nil
}

// SetScheduler makes sched decide for this stream's frames from now on,
// with class as its label (Frame.Class, status); nil goes back to the
// session's scheduler. Frames already scheduled stay where they are, so
// moving a flow between schedulers loses and resets nothing.
func (st *Stream) SetScheduler(sched Scheduler, class string) {
	s := st.s
	s.mu.Lock()
	st.sched, st.class = sched, class
	s.kickLocked()
	s.unlock()
}

// Scheduler returns the stream's scheduler name and class.
func (st *Stream) Scheduler() (name, class string) {
	s := st.s
	s.mu.Lock()
	defer s.unlock()
	sc := st.sched
	if sc == nil {
		sc = s.sched
	}
	return sc.Name(), st.class
}
