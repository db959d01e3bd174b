package usl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Session is one authenticated, resumable session with a peer. It carries
// any number of streams and survives the death of its paths.
type Session struct {
	cfg    Config
	log    *slog.Logger
	dialer bool
	peer   PublicKey // the owner: only this key may resume the session
	pool   bufPool
	sched  Scheduler      // the default for streams without their own
	wg     sync.WaitGroup // paths and the dial loop
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	onEnd  func(*Session) // the listener forgets the session

	// ackThreshold is how many received bytes make an ack urgent. A bounded
	// replay buffer on the peer depends on timely acks; a quarter window
	// keeps a single stream's sender from waiting on the ack delay.
	ackThreshold int

	mu           sync.Mutex
	id           sessionID
	inc          uint64 // incarnation; the dialer starts a new one when fenced
	peerEpoch    uint64 // 0 until the first handshake (dialer)
	peerWindow   uint64
	windowGrowth uint64 // sum over streams of window - StreamWindow (Stream.tuneLocked)
	maxSendFrame int
	state        SessionState
	everUp       bool
	announced    bool            // listener: handed out by Accept
	created      uint64          // listener: creation order, for MaxSessionsPerKey
	nextPathID   uint32          // dialer: the id of the next path it dials
	eps          []endpointState // dialer: one per path it keeps up
	paths        []*path
	remote       string
	downSince    time.Time
	timeout      *time.Timer // listener: session timeout while no path

	lastHandshake time.Time // set by attach, reported by Stats

	// Send side.
	nextSeq      uint64 // next seq to assign
	acked        uint64 // the peer's cumulative ack
	replay       replayQueue
	replayBytes  int
	ctlBytes     int  // allocation of unacked control frames made for the peer's input
	deferredPick bool // a scheduler deferred a frame: acks kick the writers
	slots        [maxPathSlots]*path
	infoBuf      []PathInfo
	infoSlot     []int
	lastLate     time.Time
	pins         int           // writers sealing straight from replay buffers
	deferred     []*[]byte     // acked buffers waiting for pins to drop to 0
	spaceWait    chan struct{} // closed when replay space frees; nil if none waits

	// Receive side.
	recvSeq     uint64 // last in-order seq received
	ackDeadline time.Time
	ackTimer    *time.Timer // wakes the writers at ackDeadline (noteRecvLocked)
	ackUrgent   bool
	// kickHold makes kickLocked note a kick in kickHeld instead of waking
	// the writers, while a caller queues a frame it may write inline
	// (holdKickLocked, inlinePathLocked).
	kickHold, kickHeld bool
	recvSinceAck       int
	recvMem            int // receive buffers of all streams, as allocated, against Config.RecvBuffer

	// Multipath receive side (recv.go).
	recvRanges    []seqRange  // seqs received past recvSeq: sorted, disjoint, above recvSeq+1
	sackGen       uint64      // changes of recvRanges
	heldOrdered   []heldFrame // session-ordered frames past recvSeq, by seq
	reorderMem    int         // held frames, against Config.ReorderBuffer
	peerMaxOpened uint32      // highest stream id the peer opened

	streams       map[uint32]*Stream
	nextStream    uint32
	acceptQ       acceptQueue[*Stream]
	rejectedOpens uint64

	closing      bool
	closeSeq     uint64
	closeAcked   chan struct{}
	peerClosed   bool
	peerCloseSeq uint64
	err          error

	// logq holds log records made under mu; unlock emits them, so a slow
	// log sink never stalls the session while it holds its lock.
	logq []logRecord

	bytesIn, bytesOut, retrans, reconnects, fences, rekeys uint64
	rtt                                                    time.Duration
	lastErr                                                string
}

func newSession(cfg Config, dialer bool, peer PublicKey, id sessionID) *Session {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		cfg:          cfg,
		dialer:       dialer,
		peer:         peer,
		sched:        cfg.Scheduler,
		ctx:          ctx,
		cancel:       cancel,
		done:         make(chan struct{}),
		ackThreshold: min(64<<10, max(cfg.StreamWindow/4, 1)),
		id:           id,
		peerWindow:   uint64(cfg.StreamWindow),
		maxSendFrame: cfg.MaxFrame,
		nextSeq:      1,
		streams:      make(map[uint32]*Stream),
		acceptQ:      newAcceptQueue[*Stream](),
		closeAcked:   make(chan struct{}),
		downSince:    time.Now(),
	}
	s.ackTimer = time.AfterFunc(time.Hour, s.ackDeadlinePassed)
	s.ackTimer.Stop()
	s.nextStream = 2
	role := "listener"
	if dialer {
		s.nextStream = 1
		role = "dialer"
	}
	s.log = cfg.Logger.With("session", id.String(), "role", role)
	return s
}

type logRecord struct {
	level slog.Level
	msg   string
	args  []any
}

func (s *Session) logLocked(level slog.Level, msg string, args ...any) {
	s.logq = append(s.logq, logRecord{level, msg, args})
}

// unlock releases mu, then writes the log records made while it was held.
func (s *Session) unlock() {
	if len(s.logq) == 0 {
		s.mu.Unlock()
		return
	}
	q := s.logq
	s.logq = nil
	s.mu.Unlock()
	for _, r := range q {
		s.log.Log(context.Background(), r.level, r.msg, r.args...)
	}
}

// PeerKey is the authenticated static key of the peer that owns the session.
func (s *Session) PeerKey() PublicKey { return s.peer }

// Done is closed when the session ends for good.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended; nil while it lives.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.unlock()
	return s.err
}

// Stats returns a snapshot.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	defer s.unlock()
	st := Stats{
		State:         s.state,
		SessionID:     fmt.Sprintf("%x", s.id[:8]),
		RTT:           s.rtt,
		BytesIn:       s.bytesIn,
		BytesOut:      s.bytesOut,
		Unacked:       s.replayBytes,
		Retransmitted: s.retrans,
		Reconnects:    s.reconnects,
		Fences:        s.fences,
		Rekeys:        s.rekeys,
		LastError:     s.lastErr,
		Streams:       len(s.streams),
		PeerKey:       s.peer,
	}
	st.LastHandshake = s.lastHandshake
	if len(s.paths) > 0 {
		st.Remote = s.remote
	}
	st.Paths = s.pathStatsLocked()
	return st
}

// attachInfo is what the handshake says about a new path.
type attachInfo struct {
	peerRecv uint64 // the last seq the peer received
	told     uint64 // the recv seq our side of the handshake told the peer
	window   uint32 // the peer's stream window
	maxFrame uint32 // the peer's max frame
	pathID   uint32
	join     bool // keep the session's other paths (at most maxPaths in all)
	backup   bool // the dialer's endpoint is a backup
	maxPaths int
}

// attach registers a path after the handshake (on the listener, after key
// confirmation). Everything up to a.peerRecv is acked, and p will send
// from the seq after it.
func (s *Session) attach(c *liveConn, inc uint64, a attachInfo) (*path, error) {
	s.mu.Lock()
	defer s.unlock()
	if s.err != nil {
		return nil, s.err
	}
	if inc != s.inc {
		return nil, errors.New("session was fenced during the handshake")
	}
	if a.join && len(s.paths) >= a.maxPaths {
		return nil, fmt.Errorf("session already has %d paths", len(s.paths))
	}
	if err := s.ackLocked(a.peerRecv); err != nil {
		return nil, err
	}
	p := newPath(s, c)
	p.id = a.pathID
	p.pref = int(a.pathID>>24) - 1
	if p.pref < 0 {
		p.pref = 0
	}
	p.next = a.peerRecv + 1
	// Counted here, under the lock and before the session can end, so that
	// Close's wg.Wait never races with this Add. run or abandon settles it.
	s.wg.Add(2)
	if !a.join {
		// Failover: the new path replaces the old ones.
		for _, old := range s.paths {
			old.closed = true
			old.close()
			s.detachLocked(old)
		}
		s.paths = s.paths[:0]
	} else if g := a.pathID >> 24; g != 0 {
		// A multipath dialer's redial of one endpoint (the path id's
		// high byte) replaces that endpoint's old path, not the others.
		for i := 0; i < len(s.paths); i++ {
			if old := s.paths[i]; old.id>>24 == g {
				old.closed = true
				old.close()
				s.detachLocked(old)
				s.paths = append(s.paths[:i], s.paths[i+1:]...)
				i--
			}
		}
	}
	if !s.takeSlotLocked(p) {
		s.wg.Add(-2)
		return nil, fmt.Errorf("session already has %d paths", maxPathSlots)
	}
	p.mp.ackSent = min(s.recvSeq, a.told)
	if a.backup {
		p.mp.state = PathBackup
	}
	s.paths = append(s.paths, p)
	if s.everUp {
		s.reconnects++
	}
	s.everUp = true
	s.lastHandshake = time.Now()
	s.state = Up
	s.remote = p.remote
	s.peerWindow = uint64(a.window)
	s.maxSendFrame = min(s.cfg.MaxFrame, int(a.maxFrame))
	if s.timeout != nil {
		s.timeout.Stop()
		s.timeout = nil
	}
	// The handshake carried our recv seq: it is an ack.
	s.recvSinceAck = 0
	s.ackDeadline = time.Time{}
	s.ackUrgent = false
	s.logLocked(slog.LevelInfo, "path up", "remote", p.remote, "path", p.id, "resume_from", a.peerRecv+1, "reconnects", s.reconnects)
	return p, nil
}

// pathFailed closes p for err; the reader then reports it down.
func (s *Session) pathFailed(p *path, err error) {
	s.mu.Lock()
	if !p.closed {
		p.closed = true
		s.lastErr = err.Error()
	}
	s.unlock()
	p.close()
}

// pathDown is the reader's last word on its path.
func (s *Session) pathDown(p *path, err error) {
	// The reader's error is recorded before the connection is closed, so
	// the writer's error about the closed connection cannot replace it.
	s.mu.Lock()
	if !p.closed {
		p.closed = true
		if err != nil {
			s.lastErr = err.Error()
		}
	}
	s.unlock()
	p.close()
	s.mu.Lock()
	defer s.unlock()
	for i, q := range s.paths {
		if q == p {
			s.paths = append(s.paths[:i], s.paths[i+1:]...)
			break
		}
	}
	s.detachLocked(p)
	if len(s.paths) > 0 || s.err != nil {
		return
	}
	if s.state == Up {
		s.state = Reconnecting
		s.downSince = time.Now()
		s.logLocked(slog.LevelInfo, "path down", "remote", p.remote, "err", s.lastErr)
	}
	if !s.dialer && s.cfg.SessionTimeout > 0 && s.timeout == nil {
		s.timeout = time.AfterFunc(s.cfg.SessionTimeout, s.expire)
	}
}

// expire ends a listener-side session nobody resumed in time.
func (s *Session) expire() {
	s.mu.Lock()
	expired := len(s.paths) == 0 && s.timeout != nil
	s.unlock()
	if expired {
		s.end(ErrSessionTimeout, Closed)
	}
}

// end finishes the session for good. Streams fail with err, except after
// the peer's CLOSE, which ends them gracefully (buffered data, then EOF).
func (s *Session) end(err error, state SessionState) {
	s.mu.Lock()
	first := s.endLocked(err, state)
	cb := s.onEnd
	s.unlock()
	if first && cb != nil {
		cb(s)
	}
}

func (s *Session) endLocked(err error, state SessionState) bool {
	if s.err != nil {
		return false
	}
	s.err = err
	s.state = state
	s.cancel()
	s.dropPathsLocked()
	s.endStreamsLocked(err, s.peerClosed && errors.Is(err, ErrSessionClosed))
	s.dropReplayLocked()
	if s.timeout != nil {
		s.timeout.Stop()
		s.timeout = nil
	}
	s.ackTimer.Stop()
	close(s.done)
	if err != nil && !errors.Is(err, ErrSessionClosed) {
		s.logLocked(slog.LevelWarn, "session ended", "err", err)
	} else {
		s.logLocked(slog.LevelInfo, "session closed")
	}
	return true
}

// endStreamsLocked ends every open stream and every stream still waiting
// in AcceptStream: with err, or, when graceful (the peer closed the
// session cleanly), open streams see the peer's close instead of an error.
func (s *Session) endStreamsLocked(err error, graceful bool) {
	for _, st := range s.streams {
		if graceful {
			st.peerClosedLocked()
		} else {
			st.failLocked(err)
		}
	}
	s.dropHeldLocked()
	clear(s.streams)
	for _, st := range s.acceptQ.drainLocked() {
		st.failLocked(err)
	}
	// recvMem is not zeroed: what is still charged is still allocated
	// (buffers a graceful end leaves to be read, a buffer a WriteTo is
	// writing), and each gives its charge back when released; a session
	// that lives on after a fence must not start below zero.
}

func (s *Session) dropPathsLocked() {
	for _, p := range s.paths {
		p.closed = true
		p.close()
		s.detachLocked(p)
	}
	s.paths = nil
}

func (s *Session) dropReplayLocked() {
	for s.replay.len() > 0 {
		e := s.replay.pop()
		s.releaseLocked(e.buf)
	}
	s.replayBytes, s.ctlBytes = 0, 0
	s.acked = s.nextSeq - 1
	if s.spaceWait != nil {
		close(s.spaceWait)
		s.spaceWait = nil
	}
}

// fenceLocked handles a restarted peer on the dialing side: every stream
// of the old incarnation fails with ErrPeerRestarted, nothing of it is
// delivered or retransmitted, and a fresh incarnation begins.
func (s *Session) fenceLocked(why string) {
	s.fences++
	s.logLocked(slog.LevelWarn, "peer restarted: session fenced", "why", why, "fences", s.fences)
	if s.closing {
		s.endLocked(ErrPeerRestarted, Fenced)
		return
	}
	s.dropPathsLocked()
	s.endStreamsLocked(ErrPeerRestarted, false)
	s.dropReplayLocked()
	s.inc++
	s.id = newSessionID()
	s.nextSeq, s.acked = 1, 0
	s.recvSeq, s.recvSinceAck, s.peerMaxOpened = 0, 0, 0
	s.ackDeadline, s.ackUrgent = time.Time{}, false
	s.peerEpoch = 0
	s.state = Fenced
	s.lastErr = "peer restarted: " + why
}

// OpenStream sends OPEN with the descriptor and waits until the peer
// accepts (nil) or rejects (a *ResetError). During a partition it keeps
// waiting; ctx bounds the wait.
func (s *Session) OpenStream(ctx context.Context, desc []byte) (*Stream, error) {
	if len(desc) > maxDescriptor {
		return nil, fmt.Errorf("usl: descriptor of %d bytes exceeds %d", len(desc), maxDescriptor)
	}
	s.mu.Lock()
	if s.err != nil {
		s.unlock()
		return nil, s.err
	}
	if s.closing || s.peerClosed {
		s.unlock()
		return nil, ErrSessionClosed
	}
	if len(s.streams) >= s.cfg.MaxStreams {
		s.unlock()
		return nil, ErrLimit
	}
	id := s.nextStream
	if id > 1<<32-3 {
		s.unlock()
		return nil, errors.New("usl: stream ids exhausted; open a new session")
	}
	s.nextStream += 2
	st := newStream(s, id, append([]byte(nil), desc...))
	st.opener = true
	s.streams[id] = st
	s.holdKickLocked()
	copy(s.pushLocked(frameOpen, st, len(desc)), desc)
	p := s.inlinePathLocked()
	s.unlock()
	if p != nil {
		p.writeInline()
	}

	select {
	case <-st.openDone:
	case <-ctx.Done():
		st.Reset(ResetAborted)
		return nil, fmt.Errorf("open stream: %w", ctx.Err())
	}
	s.mu.Lock()
	defer s.unlock()
	if st.err != nil {
		return nil, st.err
	}
	return st, nil
}

// AcceptStream returns the next stream the peer opened. The caller must
// answer it with Accept or Reject.
func (s *Session) AcceptStream(ctx context.Context) (*Stream, error) {
	return s.acceptQ.next(ctx, sessionLocker{s}, s.done, func() error { return s.err })
}

// sessionLocker locks the session the way its methods do: unlocking
// writes the log records made under the lock.
type sessionLocker struct{ s *Session }

func (l sessionLocker) Lock()   { l.s.mu.Lock() }
func (l sessionLocker) Unlock() { l.s.unlock() }

// Close ends the session reliably: a CLOSE frame follows everything
// written before, and Close returns once the peer acked it, or after a
// bounded wait when the peer is unreachable.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.err == nil && !s.closing {
		s.closing = true
		if s.everUp && !s.peerClosed {
			s.closeSeq = s.nextSeq
			s.pushLocked(frameClose, nil, 0)
		}
	}
	wait := s.closeSeq != 0
	s.unlock()
	if wait {
		d := closeWait
		if to := s.cfg.SessionTimeout; to > 0 && to < d {
			d = to
		}
		t := time.NewTimer(d)
		select {
		case <-s.closeAcked:
		case <-s.done:
		case <-t.C:
		}
		t.Stop()
	}
	s.end(ErrSessionClosed, Closed)
	s.wg.Wait()
	return nil
}

// pathStatsLocked reports the live paths in preference order, then the
// dialer's endpoints that have none.
func (s *Session) pathStatsLocked() []PathStats {
	var out []PathStats
	s.infosLocked()
	for _, slot := range s.infoSlot {
		p := s.slots[slot]
		out = append(out, PathStats{ID: p.id, Local: p.local, Remote: p.remote, State: p.mp.state,
			SRTT: p.mp.srtt, RTTVar: p.mp.rttvar, Rate: p.mp.rate, InFlight: p.mp.inflight, Queued: p.mp.queued, Window: s.pathWindowLocked(p),
			BytesSent: p.mp.bytesSent, BytesReceived: p.recvBytes.Load(), Reinjected: p.mp.reinjected,
			Stalls: p.mp.stalls})
	}
	for i, ep := range s.eps {
		live := false
		for _, p := range s.paths {
			if len(s.eps) == 1 || int(p.id>>24) == i+1 {
				live = true
			}
		}
		if !live {
			out = append(out, PathStats{Local: ep.ep.Bind, Remote: ep.ep.Addr, State: PathDead, LastError: ep.lastErr})
		}
	}
	return out
}
