// Package gateway is the exporting side of usltun: it accepts the streams a
// peer opens on a USL session, checks each destination against the prefixes
// this host exports, dials it with an ordinary kernel socket and relays bytes
// until both directions are finished.
//
// The connect outcome is reported to the peer before any byte flows: Accept
// after a successful dial, Reject with a reason (refused, unreachable,
// forbidden, timeout) otherwise. That is what lets the client side keep TCP's
// connect semantics: the application's SYN is answered only after this dial.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/usl"
)

// Config says what a peer may reach and how to reach it.
type Config struct {
	// Exports lists the destinations a peer may reach. Empty means none:
	// exporting is opt-in, like a firewall that starts closed.
	Exports []netip.Prefix
	// DialTimeout bounds one dial of a destination (default 10 s).
	DialTimeout time.Duration
	// UDPIdleTimeout closes a UDP flow with no traffic either way (default 60 s).
	UDPIdleTimeout time.Duration
	// HalfCloseTimeout bounds how long a flow stays half-closed before it is
	// torn down (default 2 min).
	HalfCloseTimeout time.Duration
	// Control is applied to every socket the gateway dials, for example to
	// set SO_MARK. Optional.
	Control func(network, address string, c syscall.RawConn) error
	// OnFlow, when set, is called for each accepted flow before it
	// relays (the daemon applies its policy: the stream's scheduler), and
	// the function it returns when the flow has ended. Optional.
	OnFlow func(st *usl.Stream, dst flow.Dest) (ended func())
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.UDPIdleTimeout == 0 {
		c.UDPIdleTimeout = flow.DefaultUDPIdleTimeout
	}
	if c.HalfCloseTimeout == 0 {
		c.HalfCloseTimeout = flow.DefaultHalfCloseTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Gateway serves the streams of sessions. One Gateway may serve several
// sessions (a listener accepts a fresh one after a peer restart).
type Gateway struct {
	cfg  Config
	wg   sync.WaitGroup
	bufs bufpool.Pool // relay buffers, borrowed only while data moves
}

// New returns a gateway with cfg's defaults filled in.
func New(cfg Config) *Gateway {
	cfg.setDefaults()
	return &Gateway{cfg: cfg}
}

// Exported reports whether dst is inside one of the exported prefixes.
func (g *Gateway) Exported(dst netip.Addr) bool {
	dst = dst.Unmap()
	for _, p := range g.cfg.Exports {
		if p.Contains(dst) {
			return true
		}
	}
	return false
}

// Serve accepts streams on s until ctx ends or the session ends for good.
// Flows already relaying keep running until they finish; Wait waits for them.
func (g *Gateway) Serve(ctx context.Context, s *usl.Session) error {
	peer := s.PeerKey().String()
	for {
		st, err := s.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept stream from %s: %w", peer, err)
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.handle(ctx, peer, st)
		}()
	}
}

// Wait blocks until every flow started by Serve has ended.
func (g *Gateway) Wait() { g.wg.Wait() }

func (g *Gateway) handle(ctx context.Context, peer string, st *usl.Stream) {
	log := g.cfg.Logger
	dst, err := flow.Parse(st.Descriptor())
	if err != nil {
		log.Warn("rejected stream: bad destination", "peer", peer, "err", err)
		st.Reject(usl.ResetAborted)
		return
	}
	if !g.Exported(dst.Addr.Addr()) {
		log.Warn("forbidden: destination is not exported", "peer", peer, "dst", dst.String())
		st.Reject(usl.ResetForbidden)
		return
	}
	if dst.Proto == flow.ICMP {
		g.handleEcho(peer, st, dst)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, g.cfg.DialTimeout)
	d := net.Dialer{Control: g.cfg.Control}
	c, err := d.DialContext(dctx, dst.Proto.String(), dst.Addr.String())
	cancel()
	if err != nil {
		code := resetCodeFor(err)
		log.Info("dial failed", "peer", peer, "dst", dst.String(), "reason", code.String(), "err", err)
		st.Reject(code)
		return
	}
	if err := st.Accept(); err != nil {
		c.Close()
		return
	}
	log.Debug("flow open", "peer", peer, "dst", dst.String())
	if g.cfg.OnFlow != nil {
		defer g.cfg.OnFlow(st, dst)()
	}
	switch dst.Proto {
	case flow.TCP:
		relayTCP(&g.bufs, st, c.(*net.TCPConn), g.cfg.HalfCloseTimeout)
	case flow.UDP:
		relayUDP(&g.bufs, st, c.(*net.UDPConn), g.cfg.UDPIdleTimeout)
	}
	log.Debug("flow closed", "peer", peer, "dst", dst.String())
}

// handleEcho serves an ICMP flow (ping) to an exported address.
func (g *Gateway) handleEcho(peer string, st *usl.Stream, dst flow.Dest) {
	log := g.cfg.Logger
	addr := dst.Addr.Addr().Unmap()
	if dst.Name != "" || !addr.IsValid() {
		st.Reject(usl.ResetUnreachable)
		return
	}
	e, err := openEcho(addr)
	if err != nil {
		log.Warn("echo flow refused", "peer", peer, "dst", dst.String(), "err", err)
		st.Reject(usl.ResetUnreachable)
		return
	}
	if err := st.Accept(); err != nil {
		e.c.Close()
		return
	}
	log.Debug("echo flow open", "peer", peer, "dst", dst.String(), "raw_socket", e.raw)
	relayEcho(&g.bufs, st, e, addr.Is4(), g.cfg.UDPIdleTimeout)
	log.Debug("echo flow closed", "peer", peer, "dst", dst.String())
}

// resetCodeFor maps a dial error to the reason the client side turns into
// ECONNREFUSED, an ICMP unreachable or a timeout.
func resetCodeFor(err error) usl.ResetCode {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return usl.ResetRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return usl.ResetTimeout
	default:
		// EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL and friends.
		return usl.ResetUnreachable
	}
}
