package usl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"syscall"
	"time"
)

// Dial returns at once with a session that connects, and reconnects
// forever (or until SessionTimeout), to addr. ctx only bounds Dial itself;
// the session lives until Close. OpenStream waits for the first path.
func Dial(ctx context.Context, addr string, cfg Config) (*Session, error) {
	return DialPaths(ctx, []Endpoint{{Addr: addr}}, cfg)
}

// Endpoint is one path of a dialed session.
type Endpoint struct {
	Addr string // the listener's host:port
	// Bind is what the path leaves from: "" lets routing decide, an IP
	// address binds the local address, anything else is an interface
	// name bound with SO_BINDTODEVICE (two uplinks to one server).
	Bind string
	// Backup makes the path a last resort: schedulers use it only while
	// no other path is up.
	Backup bool
}

func (e Endpoint) String() string {
	if e.Bind == "" {
		return e.Addr
	}
	return e.Addr + "@" + e.Bind
}

// DialPaths is Dial with several paths: each endpoint gets a path of its
// own, dialed, kept up and redialed independently of the others, and
// joined into one session (hello flag JOIN; the path id's high byte is
// the endpoint's index + 1, so a redial replaces only that endpoint's old
// path). Which path carries what is Config.Scheduler's and each stream's
// choice. One endpoint is exactly Dial: no JOIN, path ids 1, 2, 3, ….
func DialPaths(ctx context.Context, eps []Endpoint, cfg Config) (*Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(eps) == 0 || len(eps) > maxPathSlots {
		return nil, fmt.Errorf("usl: %d endpoints; a session has 1 to %d paths", len(eps), maxPathSlots)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(cfg.PeerKeys) == 0 {
		return nil, errors.New("usl: Dial needs Config.PeerKeys[0], the listener's key")
	}
	s := newSession(cfg, true, cfg.PeerKeys[0], newSessionID())
	s.eps = make([]endpointState, len(eps))
	for i, ep := range eps {
		s.eps[i].ep = ep
		s.wg.Add(1)
		go s.dialLoop(i)
	}
	return s, nil
}

// endpointState is the dialer's view of one endpoint, for Stats.
type endpointState struct {
	ep      Endpoint
	lastErr string
}

// dialPath opens a TCP connection with TCP_NODELAY (frames are already
// coalesced into records; Nagle would only add latency to acks and pings),
// bound as the endpoint says.
func dialPath(ctx context.Context, cfg *Config, ep Endpoint) (net.Conn, error) {
	if cfg.Dial != nil {
		return cfg.Dial(ctx, "tcp", ep.Addr)
	}
	d := net.Dialer{Control: cfg.Control}
	switch ip := net.ParseIP(ep.Bind); {
	case ep.Bind == "":
	case ip != nil:
		d.LocalAddr = &net.TCPAddr{IP: ip}
	default:
		dev := ep.Bind
		d.Control = func(network, address string, c syscall.RawConn) error {
			if cfg.Control != nil {
				if err := cfg.Control(network, address, c); err != nil {
					return err
				}
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptString(int(fd), syscall.SOL_SOCKET, syscall.SO_BINDTODEVICE, dev)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("bind to interface %s: %w", dev, serr)
			}
			return nil
		}
	}
	return d.DialContext(ctx, "tcp", ep.Addr)
}

func setNoDelay(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
}

// dialLoop keeps one path up. Redials start at ReconnectMin and double
// with jitter up to ReconnectMax: the low cap keeps recovery quick after a
// long partition, the jitter keeps many clients from redialing in step.
func (s *Session) dialLoop(idx int) {
	defer s.wg.Done()
	ep := s.eps[idx].ep
	addr := ep.String()
	backoff := s.cfg.ReconnectMin
	for {
		s.mu.Lock()
		ended, down := s.err != nil, s.downSince
		s.unlock()
		if ended {
			return
		}
		if to := s.cfg.SessionTimeout; to > 0 && time.Since(down) > to {
			s.end(ErrSessionTimeout, Closed)
			return
		}
		started := time.Now()
		p, err := s.connect(idx)
		if err == nil {
			select {
			case <-p.done:
			case <-s.done:
				return
			}
			if time.Since(p.start) > s.cfg.ReconnectMax {
				backoff = s.cfg.ReconnectMin
			}
		} else {
			s.mu.Lock()
			if s.lastErr != err.Error() {
				s.logLocked(slog.LevelWarn, "connect failed", "addr", addr, "err", err)
			}
			s.lastErr = err.Error()
			s.eps[idx].lastErr = err.Error()
			s.unlock()
			if errors.Is(err, errUnknownSession) {
				backoff = s.cfg.ReconnectMin // fenced: the fresh incarnation connects at once
			}
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, s.cfg.ReconnectMax)
		if errors.Is(err, syscall.EHOSTUNREACH) {
			// The kernel gave up resolving the peer's link-layer address
			// (a blackhole drops ARP and neighbour discovery too). An
			// attempt queued on a resolution whose last probe went out
			// before a heal fails up to a second after it, and the backoff
			// on top made recovery from a 70 s blackhole 1.7 s (partition
			// scenario 3). A new attempt starts a fresh resolution at
			// once, so it goes after ReconnectMin: these failures come at
			// most once per resolution cycle (3 probes 1 s apart, by
			// default), not in a loop.
			d = s.cfg.ReconnectMin
		}
		if err != nil {
			// Attempts start at most every d: time an attempt spent
			// waiting on the network counts toward the pause, so a
			// timed-out connect is followed at once by a fresh one.
			d -= time.Since(started)
		}
		t := time.NewTimer(max(d, 0))
		select {
		case <-t.C:
		case <-s.done:
			t.Stop()
			return
		}
	}
}

// connectTimeout bounds the TCP connect of one attempt. A SYN lost to a
// partition is retransmitted by the kernel only after 1 s, then 2 s, 4 s:
// a heal landing in that wait would delay recovery by up to the next
// retransmission. Once the peer's RTT is known, an attempt is given
// max(ReconnectMax/2, 4×RTT), less than the kernel's first SYN
// retransmission, and then replaced by a fresh one whose SYN goes out at
// once. Before any RTT sample (the first connection), the whole
// handshake timeout applies, so slow paths can still be joined.
func (s *Session) connectTimeout() time.Duration {
	s.mu.Lock()
	rtt := s.rtt
	s.unlock()
	if rtt == 0 {
		return s.cfg.HandshakeTimeout
	}
	return min(s.cfg.HandshakeTimeout, max(s.cfg.ReconnectMax/2, 4*rtt))
}

// connect dials and handshakes one path, and attaches it.
func (s *Session) connect(idx int) (*path, error) {
	ep := s.eps[idx].ep
	addr := ep.String()
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, s.connectTimeout())
	raw, err := dialPath(dctx, &s.cfg, ep)
	dcancel()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	setNoDelay(raw)
	c := newLiveConn(raw)
	// Closing the connection is what unblocks a handshake stuck on a dead
	// peer when the session ends.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)

	s.mu.Lock()
	inc := s.inc
	s.nextPathID++
	h := hello{id: s.id, epoch: s.cfg.epoch, peerEpoch: s.peerEpoch, recvSeq: s.recvSeq,
		timestamp: nextTimestamp(), window: uint32(s.cfg.StreamWindow), maxFrame: uint32(s.cfg.MaxFrame),
		pathID: s.nextPathID}
	if len(s.eps) > 1 {
		// Multipath: the high byte names the endpoint, JOIN keeps the
		// other endpoints' paths.
		h.pathID = uint32(idx+1)<<24 | s.nextPathID&0xffffff
		h.flags = helloJoin
	}
	s.unlock()

	res, rep, err := clientHandshake(c, s.cfg.PrivateKey, s.peer, h)
	if err != nil {
		c.Close()
		if errors.Is(err, errUnknownSession) {
			s.mu.Lock()
			if s.inc == inc {
				s.fenceLocked("peer does not know the session")
			}
			s.unlock()
		}
		return nil, fmt.Errorf("handshake with %s: %w", addr, err)
	}
	if !stop() {
		c.Close()
		return nil, fmt.Errorf("handshake with %s: %w", addr, ctx.Err())
	}
	c.SetDeadline(time.Time{})
	s.mu.Lock()
	if s.inc == inc && s.peerEpoch != 0 && rep.epoch != s.peerEpoch {
		// Only reachable if a restarted peer somehow kept our session id.
		s.fenceLocked("peer epoch changed")
	}
	if s.inc == inc {
		s.peerEpoch = rep.epoch
	}
	s.unlock()
	p, err := s.attach(c, inc, attachInfo{peerRecv: rep.recvSeq, told: h.recvSeq,
		window: rep.window, maxFrame: rep.maxFrame, pathID: h.pathID, join: h.flags&helloJoin != 0,
		maxPaths: maxPathSlots, backup: ep.Backup})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attach path to %s: %w", addr, err)
	}
	rc, err := newRecordConn(c, res)
	if err != nil {
		p.abandon(err)
		return nil, err
	}
	p.rc = rc
	p.rk.chain = res.chain
	// Key confirmation: the listener acts on this path only once a record
	// from us authenticates, so the first write goes out at once.
	s.mu.Lock()
	p.ackDue = true
	s.unlock()
	p.run()
	return p, nil
}
