package usl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"
)

// Dial returns at once with a session that connects, and reconnects
// forever (or until SessionTimeout), to addr. ctx only bounds Dial itself;
// the session lives until Close. OpenStream waits for the first path.
func Dial(ctx context.Context, addr string, cfg Config) (*Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := newSession(cfg, true, cfg.PeerKeys[0], newSessionID())
	s.wg.Add(1)
	go s.dialLoop(addr)
	return s, nil
}

// dialPath opens a TCP connection with TCP_NODELAY (frames are already
// coalesced into records; Nagle would only add latency to acks and pings).
func dialPath(ctx context.Context, cfg *Config, addr string) (net.Conn, error) {
	if cfg.Dial != nil {
		return cfg.Dial(ctx, "tcp", addr)
	}
	d := net.Dialer{Control: cfg.Control}
	return d.DialContext(ctx, "tcp", addr)
}

func setNoDelay(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
}

// dialLoop keeps one path up. Redials start at ReconnectMin and double
// with jitter up to ReconnectMax: the low cap keeps recovery quick after a
// long partition, the jitter keeps many clients from redialing in step.
func (s *Session) dialLoop(addr string) {
	defer s.wg.Done()
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
		p, err := s.connect(addr)
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
			s.unlock()
			if errors.Is(err, errUnknownSession) {
				backoff = s.cfg.ReconnectMin // fenced: the fresh incarnation connects at once
			}
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, s.cfg.ReconnectMax)
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
func (s *Session) connect(addr string) (*path, error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, s.connectTimeout())
	raw, err := dialPath(dctx, &s.cfg, addr)
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
		window: rep.window, maxFrame: rep.maxFrame, pathID: h.pathID})
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
