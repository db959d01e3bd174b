package usl

import (
	"bufio"
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
)

// Listener accepts paths. A new session (or a session whose peer
// restarted, which fences the old one) is returned by Accept; a resumed
// path silently re-attaches to its existing session.
//
// What an unauthenticated connection can cost, in order (docs/protocol.md
// §8): a token of its source prefix's rate limit; a place in the pool of
// pending connections, where the newest evicts the oldest and none waits
// longer than FirstMessageTimeout; reading at most 179 bytes and one
// BLAKE2s. Only a message 1 with a valid mac1 takes one of the handshake
// slots and costs Diffie-Hellman operations; only a fresh timestamp from
// an allowed key gets an answer; only a key-confirming first record
// changes a session.
type Listener struct {
	ln      net.Listener
	lns     []net.Listener // ln and those given to Also; guarded by mu after creation
	cfg     Config
	log     *slog.Logger
	macKey  [32]byte
	done    chan struct{}
	wg      sync.WaitGroup // accept loop and handshakes
	hsSlots chan struct{}  // handshakes past mac1
	rate    *prefixLimiter
	rejects *rejectLog
	pending pendingPool

	mu         sync.Mutex
	closed     bool
	sessions   map[sessionID]*Session
	created    uint64               // sessions created so far: their age order
	timestamps map[PublicKey]uint64 // greatest hello timestamp accepted per key
	acceptQ    acceptQueue[*Session]
}

// Listen accepts paths on a TCP address.
func Listen(network, addr string, cfg Config) (*Listener, error) {
	lc := net.ListenConfig{Control: cfg.Control}
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, fmt.Errorf("usl listen %s: %w", addr, err)
	}
	l, err := NewListener(ln, cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return l, nil
}

// NewListener serves USL on an existing listener, which it then owns. Tests
// and embedders use it for transports other than a TCP socket.
func NewListener(ln net.Listener, cfg Config) (*Listener, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("listener", ln.Addr().String())
	l := &Listener{
		ln:         ln,
		cfg:        cfg,
		log:        log,
		macKey:     mac1Key(cfg.PrivateKey.Public()),
		done:       make(chan struct{}),
		hsSlots:    make(chan struct{}, maxConcurrentHandshakes),
		rate:       newPrefixLimiter(cfg.HandshakeRate, max(2*int(cfg.HandshakeRate), 1), maxSources),
		rejects:    newRejectLog(log, cfg.RejectLogInterval),
		pending:    pendingPool{max: cfg.PendingHandshakes},
		sessions:   make(map[sessionID]*Session),
		timestamps: make(map[PublicKey]uint64),
		acceptQ:    newAcceptQueue[*Session](),
	}
	l.lns = []net.Listener{ln}
	l.wg.Add(1)
	go l.acceptLoop(ln)
	return l, nil
}

// Also accepts paths on one more listener, into the same
// sessions: a dialer's paths may arrive on any of them (several --listen
// addresses, one per uplink). The Listener owns ln from then on and
// closes it with Close.
func (l *Listener) Also(ln net.Listener) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		ln.Close()
		return net.ErrClosed
	}
	l.lns = append(l.lns, ln)
	l.wg.Add(1)
	go l.acceptLoop(ln)
	return nil
}

// ListenAlso is Also on a new TCP listener at addr.
func (l *Listener) ListenAlso(network, addr string) (net.Addr, error) {
	lc := net.ListenConfig{Control: l.cfg.Control}
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, fmt.Errorf("usl listen %s: %w", addr, err)
	}
	if err := l.Also(ln); err != nil {
		return nil, err
	}
	return ln.Addr(), nil
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Accept returns the next new session. After Close it returns
// net.ErrClosed.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	return l.acceptQ.next(ctx, &l.mu, l.done, func() error {
		if l.closed {
			return net.ErrClosed
		}
		return nil
	})
}

// Close stops listening and ends every session of the listener: sessions
// with a live path close reliably (bounded), the others at once, since no
// peer can resume them any more.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()
	var err error
	for _, ln := range l.lns {
		if e := ln.Close(); err == nil {
			err = e
		}
	}
	l.pending.closeAll()
	l.wg.Wait()
	l.mu.Lock()
	var all []*Session
	for _, s := range l.sessions {
		all = append(all, s)
	}
	l.acceptQ.drainLocked()
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.mu.Lock()
			live := len(s.paths) > 0
			s.unlock()
			if !live {
				s.end(ErrSessionClosed, Closed)
			}
			s.Close()
		}()
	}
	wg.Wait()
	l.rejects.close()
	return err
}

func (l *Listener) acceptLoop(ln net.Listener) {
	defer l.wg.Done()
	delay := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off rather than spin.
			l.log.Warn("accept failed", "err", err)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		if key, ok := sourcePrefix(c.RemoteAddr()); ok && !l.rate.allow(key, time.Now()) {
			l.rejects.add(c.RemoteAddr(), rejRate, "")
			c.Close()
			continue
		}
		pc := &pendingConn{Conn: c}
		if old := l.pending.admit(pc); old != nil {
			l.rejects.add(old.RemoteAddr(), rejEvicted, "")
			old.Close()
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.serve(pc)
		}()
	}
}

// serve runs the responder handshake on c and, once the dialer confirmed
// its key, attaches the path.
func (l *Listener) serve(pc *pendingConn) {
	start := time.Now()
	remote := pc.RemoteAddr()
	reject := func(err error) {
		pc.Close()
		var re *rejectError
		if errors.As(err, &re) {
			l.rejects.add(remote, re.reason, re.detail)
		} else {
			l.log.Warn("handshake failed", "remote", remote.String(), "err", err)
		}
	}
	pc.SetDeadline(start.Add(l.cfg.FirstMessageTimeout))
	msg1, err := readFirstMessage(pc.Conn, &l.macKey)
	if !l.pending.leave(pc) {
		return // evicted, and counted as such, while it read
	}
	if err != nil {
		reject(err)
		return
	}
	select {
	case l.hsSlots <- struct{}{}:
		defer func() { <-l.hsSlots }()
	default:
		reject(&rejectError{rejBusy, ""})
		return
	}
	setNoDelay(pc.Conn)
	c := newLiveConn(pc.Conn)
	c.SetDeadline(start.Add(l.cfg.HandshakeTimeout))
	sh, err := openFirstMessage(msg1, l.cfg.PrivateKey, l.cfg.allowed)
	if err != nil {
		reject(err)
		return
	}
	if !l.fresh(sh) {
		reject(&rejectError{rejReplay, "key " + sh.peer.String()})
		return
	}
	status, told := l.preview(sh)
	br := bufio.NewReaderSize(c, readBufSize)
	rep := reply{status: status, epoch: l.cfg.epoch}
	if status != statusOK {
		sh.answer(c, br, rep)
		if status == statusNotOwner {
			reject(&rejectError{rejNotOwner, fmt.Sprintf("session %s, key %s", sh.hello.id, sh.peer)})
		} else {
			reject(&rejectError{rejUnknownSess, "session " + sh.hello.id.String()})
		}
		return
	}
	rep.recvSeq, rep.window, rep.maxFrame = told, uint32(l.cfg.StreamWindow), uint32(l.cfg.MaxFrame)
	res, err := sh.answer(c, br, rep)
	if err != nil {
		reject(err)
		return
	}
	rc, err := newRecordConn(c, res)
	if err != nil {
		reject(err)
		return
	}
	// Key confirmation: nothing below happens for a replayed message 1,
	// whose sender cannot make this record.
	if err := rc.fill(); err != nil {
		reject(&rejectError{rejUnconfirmed, err.Error()})
		return
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		reject(err)
		return
	}
	s, fenced, replaced, err := l.commit(sh)
	for _, f := range fenced {
		f.end(ErrPeerRestarted, Fenced)
	}
	for _, o := range replaced {
		o.end(errReplaced, Closed)
	}
	if err != nil {
		// The session changed between the reply and the confirmation
		// (fenced or ended meanwhile): the dialer retries and learns.
		c.Close()
		return
	}
	h := sh.hello
	p, err := s.attach(c, 0, attachInfo{peerRecv: h.recvSeq, told: told, window: h.window, maxFrame: h.maxFrame,
		pathID: h.pathID, join: h.flags&helloJoin != 0, maxPaths: l.cfg.MaxPathsPerSession})
	if err != nil {
		c.Close()
		s.mu.Lock()
		orphan := !s.announced && len(s.paths) == 0
		s.unlock()
		if orphan {
			s.end(err, Closed)
		}
		return
	}
	p.rc = rc
	p.rk.chain = res.chain
	p.run()
	s.mu.Lock()
	announce := !s.announced
	s.announced = true
	s.unlock()
	if announce {
		l.mu.Lock()
		if !l.closed {
			l.acceptQ.pushLocked(s)
		}
		l.mu.Unlock()
	}
}

// errReplaced ends the oldest session of a key that opened more than
// MaxSessionsPerKey.
var errReplaced = fmt.Errorf("usl: session replaced by a newer one of the same key (%w)", ErrLimit)

// fresh records h's timestamp if it is newer than every one accepted from
// that key before, and reports whether it was. The map is bounded by the
// allowlist. Message 1 authenticates the static key, so only its owner can
// make a newer timestamp; a replay of any recorded message 1 fails here.
func (l *Listener) fresh(sh *serverHello) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sh.hello.timestamp <= l.timestamps[sh.peer] {
		return false
	}
	l.timestamps[sh.peer] = sh.hello.timestamp
	return true
}

// preview says how the listener would answer a hello, without changing
// anything: the status, and the recv seq to tell the dialer.
func (l *Listener) preview(sh *serverHello) (status uint8, recvSeq uint64) {
	h := sh.hello
	l.mu.Lock()
	s, closed := l.sessions[h.id], l.closed
	l.mu.Unlock()
	switch {
	case closed:
		return statusUnknownSession, 0
	case s == nil && h.peerEpoch != 0:
		// The initiator had this session with us, but we do not know it:
		// we restarted, or it timed out. Its streams must fail.
		return statusUnknownSession, 0
	case s == nil:
		return statusOK, 0
	case s.peer != sh.peer:
		return statusNotOwner, 0
	case s.peerEpoch != h.epoch:
		return statusUnknownSession, 0
	}
	s.mu.Lock()
	defer s.unlock()
	return statusOK, s.recvSeq
}

// commit finds or creates the session of a key-confirmed hello. A new
// session from a key whose other sessions carry another epoch means that
// peer restarted: those are returned to be fenced. Past MaxSessionsPerKey
// the oldest sessions of the key are returned to be replaced.
func (l *Listener) commit(sh *serverHello) (s *Session, fenced, replaced []*Session, err error) {
	h := sh.hello
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, nil, nil, net.ErrClosed
	}
	if s := l.sessions[h.id]; s != nil {
		if s.peer != sh.peer || s.peerEpoch != h.epoch {
			return nil, nil, nil, errors.New("session changed during the handshake")
		}
		return s, nil, nil, nil
	}
	if h.peerEpoch != 0 {
		return nil, nil, nil, errors.New("session ended during the handshake")
	}
	var same []*Session
	for _, o := range l.sessions {
		switch {
		case o.peer != sh.peer:
		case o.peerEpoch != h.epoch:
			fenced = append(fenced, o)
		default:
			same = append(same, o)
		}
	}
	if n := len(same) + 1 - l.cfg.MaxSessionsPerKey; n > 0 {
		slices.SortFunc(same, func(a, b *Session) int { return cmp.Compare(a.created, b.created) })
		replaced = same[:n]
	}
	// Out of the table at once, so the bound holds at every moment; the
	// caller ends them.
	for _, o := range append(fenced, replaced...) {
		delete(l.sessions, o.id)
		l.acceptQ.removeLocked(o)
	}
	s = newSession(l.sessionConfig(sh.peer), false, sh.peer, h.id)
	s.peerEpoch = h.epoch
	s.onEnd = l.forget
	l.created++
	s.created = l.created
	l.sessions[h.id] = s
	return s, fenced, replaced, nil
}

// sessionConfig is the listener's Config with key's own limits applied.
func (l *Listener) sessionConfig(key PublicKey) Config {
	cfg := l.cfg
	if cfg.PeerLimits == nil {
		return cfg
	}
	streams, replay := cfg.PeerLimits(key)
	if streams > 0 {
		cfg.MaxStreams = streams
	}
	if replay > 0 {
		cfg.ReplayBuffer = min(replay, 1<<40)
	}
	return cfg
}

func (l *Listener) forget(s *Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[s.id] == s {
		delete(l.sessions, s.id)
	}
	l.acceptQ.removeLocked(s)
}

// pendingPool holds connections that have not yet sent a first message.
// It is bounded, and the newest connection evicts the oldest: a flood of
// silent connections only shortens how long each of them may stay silent,
// and a real dialer, which speaks at once, still gets through.
type pendingPool struct {
	max int

	mu     sync.Mutex
	conns  list.List // of *pendingConn, oldest first
	closed bool
}

type pendingConn struct {
	net.Conn
	elem    *list.Element // nil once it left or was evicted
	evicted bool
}

// admit adds pc and returns the connection it evicts, if any.
func (pp *pendingPool) admit(pc *pendingConn) *pendingConn {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.closed {
		pc.evicted = true
		return pc
	}
	var old *pendingConn
	if pp.conns.Len() >= pp.max {
		old = pp.conns.Remove(pp.conns.Front()).(*pendingConn)
		old.elem, old.evicted = nil, true
	}
	pc.elem = pp.conns.PushBack(pc)
	return old
}

// leave takes pc out of the pool; false means it was evicted meanwhile.
func (pp *pendingPool) leave(pc *pendingConn) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pc.evicted {
		return false
	}
	pp.conns.Remove(pc.elem)
	pc.elem = nil
	return true
}

// closeAll closes every pending connection (Listener.Close).
func (pp *pendingPool) closeAll() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.closed = true
	for e := pp.conns.Front(); e != nil; e = e.Next() {
		e.Value.(*pendingConn).Close()
	}
}
