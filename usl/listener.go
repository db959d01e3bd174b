package usl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Listener accepts paths. A new session (or a session whose peer
// restarted, which fences the old one) is returned by Accept; a resumed
// path silently re-attaches to its existing session.
type Listener struct {
	ln   net.Listener
	cfg  Config
	log  *slog.Logger
	done chan struct{}
	wg   sync.WaitGroup // accept loop and handshakes
	// hsSlots bounds concurrent handshakes, so a flood of half-open
	// connections costs a fixed number of goroutines.
	hsSlots chan struct{}

	mu         sync.Mutex
	closed     bool
	sessions   map[sessionID]*Session
	acceptQ    []*Session
	acceptWake chan struct{}
	limiters   map[netip.Addr]*rate.Limiter
}

const (
	maxConcurrentHandshakes = 128
	maxLimiters             = 4096
)

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
	l := &Listener{
		ln:         ln,
		cfg:        cfg,
		log:        cfg.Logger.With("listener", ln.Addr().String()),
		done:       make(chan struct{}),
		hsSlots:    make(chan struct{}, maxConcurrentHandshakes),
		sessions:   make(map[sessionID]*Session),
		acceptWake: make(chan struct{}, 1),
		limiters:   make(map[netip.Addr]*rate.Limiter),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Accept returns the next new session.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	for {
		l.mu.Lock()
		if len(l.acceptQ) > 0 {
			s := l.acceptQ[0]
			l.acceptQ[0] = nil
			l.acceptQ = l.acceptQ[1:]
			if len(l.acceptQ) > 0 {
				// Pass the wake-up on to a concurrent Accept.
				select {
				case l.acceptWake <- struct{}{}:
				default:
				}
			}
			l.mu.Unlock()
			return s, nil
		}
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return nil, net.ErrClosed
		}
		select {
		case <-l.acceptWake:
		case <-l.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
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
	err := l.ln.Close()
	l.wg.Wait()
	l.mu.Lock()
	var all []*Session
	for _, s := range l.sessions {
		all = append(all, s)
	}
	l.acceptQ = nil
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
	return err
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	delay := 5 * time.Millisecond
	for {
		c, err := l.ln.Accept()
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
		if !l.allow(c.RemoteAddr()) {
			l.reject(c.RemoteAddr(), "handshake rate limit exceeded")
			c.Close()
			continue
		}
		select {
		case l.hsSlots <- struct{}{}:
		default:
			l.reject(c.RemoteAddr(), "too many concurrent handshakes")
			c.Close()
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-l.hsSlots }()
			l.serve(c)
		}()
	}
}

// allow applies the per-source-IP handshake rate limit.
func (l *Listener) allow(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return true // not an IP transport (tests): nothing to key on
	}
	ip := ap.Addr().Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.limiters[ip]
	if lim == nil {
		if len(l.limiters) >= maxLimiters {
			// Forget sources whose bucket refilled: they are idle, and a
			// fresh bucket for them is the same as the old one.
			for k, v := range l.limiters {
				if v.Tokens() >= float64(v.Burst()) {
					delete(l.limiters, k)
				}
			}
			if len(l.limiters) >= maxLimiters {
				return false
			}
		}
		lim = rate.NewLimiter(rate.Limit(l.cfg.HandshakeRate), max(2*int(l.cfg.HandshakeRate), 1))
		l.limiters[ip] = lim
	}
	return lim.Allow()
}

func (l *Listener) reject(a net.Addr, reason string) {
	l.log.Warn(fmt.Sprintf("rejected peer %s: %s", a, reason))
}

// serve runs the responder handshake on c and attaches the path. Nothing
// per-session exists until the peer proved an allowed key.
func (l *Listener) serve(raw net.Conn) {
	remote := raw.RemoteAddr()
	setNoDelay(raw)
	c := newLiveConn(raw)
	c.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	sh, err := readClientHello(c, l.cfg.PrivateKey)
	if err != nil {
		l.reject(remote, err.Error())
		c.Close()
		return
	}
	if !l.cfg.allowed(sh.peer) {
		sh.answer(c, reply{status: statusKeyNotAllowed, epoch: l.cfg.epoch})
		l.reject(remote, fmt.Sprintf("public key %s not allowed", sh.peer))
		c.Close()
		return
	}
	s, status, fenced := l.lookup(sh)
	for _, f := range fenced {
		f.end(ErrPeerRestarted, Fenced)
	}
	if status != statusOK {
		sh.answer(c, reply{status: status, epoch: l.cfg.epoch})
		switch status {
		case statusNotOwner:
			l.reject(remote, fmt.Sprintf("resume of session %s refused: it belongs to another key than %s", sh.hello.id, sh.peer))
		case statusUnknownSession:
			l.log.Info("peer resumed an unknown session; told it to start afresh", "remote", remote.String(), "session", sh.hello.id.String())
		}
		c.Close()
		return
	}
	p, ourRecv, err := s.attach(c, 0, sh.hello.recvSeq, sh.hello.window, sh.hello.maxFrame)
	if err != nil {
		sh.answer(c, reply{status: statusUnknownSession, epoch: l.cfg.epoch})
		l.reject(remote, fmt.Sprintf("attach to session %s: %v", sh.hello.id, err))
		c.Close()
		return
	}
	res, err := sh.answer(c, reply{status: statusOK, epoch: l.cfg.epoch, recvSeq: ourRecv,
		window: uint32(l.cfg.StreamWindow), maxFrame: uint32(l.cfg.MaxFrame)})
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	var rc *recordConn
	if err == nil {
		rc, err = newRecordConn(c, res.br, res.send, res.recv)
	}
	if err != nil {
		err = fmt.Errorf("handshake with %s: %w", remote, err)
		p.abandon(err)
		s.mu.Lock()
		orphan := !s.announced && len(s.paths) == 0
		s.unlock()
		if orphan {
			// Nobody ever saw this session and its only path failed
			// before the reply: drop it rather than keep it forever.
			// The dialer never learnt our epoch, so it simply retries
			// as a new session.
			s.end(err, Closed)
		}
		return
	}
	p.rc = rc
	p.run()
	s.mu.Lock()
	announce := !s.announced
	s.announced = true
	s.unlock()
	if announce {
		l.mu.Lock()
		if !l.closed {
			l.acceptQ = append(l.acceptQ, s)
		}
		l.mu.Unlock()
		select {
		case l.acceptWake <- struct{}{}:
		default:
		}
	}
}

// lookup finds or creates the session a hello names. A new session from a
// key whose other sessions carry another epoch means that peer restarted:
// those are returned to be fenced.
func (l *Listener) lookup(sh *serverHello) (*Session, uint8, []*Session) {
	h := sh.hello
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, statusUnknownSession, nil
	}
	if s := l.sessions[h.id]; s != nil {
		switch {
		case s.peer != sh.peer:
			return nil, statusNotOwner, nil
		case s.peerEpoch != h.epoch:
			return nil, statusUnknownSession, nil
		}
		return s, statusOK, nil
	}
	if h.peerEpoch != 0 {
		// The initiator had this session with us, but we do not know it:
		// we restarted, or it timed out. Its streams must fail.
		return nil, statusUnknownSession, nil
	}
	var fenced []*Session
	for _, o := range l.sessions {
		if o.peer == sh.peer && o.peerEpoch != h.epoch {
			fenced = append(fenced, o)
		}
	}
	s := newSession(l.cfg, false, sh.peer, h.id)
	s.peerEpoch = h.epoch
	s.onEnd = l.forget
	l.sessions[h.id] = s
	return s, statusOK, fenced
}

func (l *Listener) forget(s *Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[s.id] == s {
		delete(l.sessions, s.id)
	}
	for i, q := range l.acceptQ {
		if q == s {
			l.acceptQ = append(l.acceptQ[:i], l.acceptQ[i+1:]...)
			break
		}
	}
}
