// Package gateway is the exporting side of usltun: it accepts the streams a
// peer opens on a USL session, checks each destination against the prefixes
// this host exports, dials it with an ordinary kernel socket and relays bytes
// until both directions are finished.
//
// What a peer may reach is the export policy in policy.go: the exported
// prefixes, with destinations on the gateway host itself, link-local and
// multicast addresses allowed only when an export names them explicitly. A
// destination given as a host name (flow.Dest.Name) is resolved here, with
// this host's resolver; the policy applies to each resolved address, and the
// allowed ones are dialed in the resolver's order until one answers. A name
// that resolves only to addresses outside the policy is forbidden; one that
// does not resolve is unreachable.
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usltun/usltun/direct"
	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/internal/ratelog"
	"github.com/usltun/usltun/usl"
	"golang.org/x/time/rate"
)

// Config says what a peer may reach and how to reach it.
type Config struct {
	// Exports lists the destinations a peer may reach. Empty means none:
	// exporting is opt-in, like a firewall that starts closed. See
	// policy.go for the gateway's own and other special addresses.
	Exports []netip.Prefix
	// Resolver resolves named destinations (default net.DefaultResolver:
	// this host's /etc/hosts and resolv.conf).
	Resolver *net.Resolver
	// ExportDNS lets the peer use this host's resolver: a flow to
	// flow.Resolver is connected to the first nameserver of ResolvConf.
	ExportDNS bool
	// ResolvConf is read for ExportDNS (default /etc/resolv.conf).
	ResolvConf string
	// DNSServer, when set, is used for ExportDNS instead of ResolvConf's
	// first nameserver on port 53.
	DNSServer netip.AddrPort
	// LocalAddrs lists this host's own addresses (default: every
	// interface's). Tests replace it.
	LocalAddrs func() ([]netip.Addr, error)
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
	// Forward, when set, may take an exported destination's stream before
	// the gateway dials it: a hub relays a flow addressed to another
	// peer's route to that peer. It returns false to let the gateway dial;
	// once it returns true the stream is its own to answer. Optional.
	Forward func(ctx context.Context, st *usl.Stream, dst flow.Dest) bool
	// MaxFlows bounds the flows relaying at once, MaxDials the dials in
	// flight; a stream beyond either is rejected with ResetLimit. 0: no
	// bound. A hub gives each peer its own gateway with its own bounds.
	MaxFlows int
	MaxDials int
	// MaxOpens bounds the streams the peer may open per second, with a
	// burst of as many: a token bucket taken as each stream arrives,
	// before any work for it (no goroutine, no socket, no dial). A stream
	// beyond it is rejected with ResetLimit at once. A connect flood costs
	// the gateway's host a kernel socket, a connect and its packets per
	// stream, CPU that other peers' flows need; the bucket keeps one
	// peer's share of it bounded. 0: no bound.
	MaxOpens int
	Logger   *slog.Logger
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
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	if c.LocalAddrs == nil {
		c.LocalAddrs = interfaceAddrs
	}
}

// Gateway serves the streams of sessions. One Gateway may serve several
// sessions (a listener accepts a fresh one after a peer restart).
type Gateway struct {
	cfg     Config
	exports atomic.Pointer[[]netip.Prefix] // cfg.Exports, replaced by SetExports
	local   localAddrs
	wg      sync.WaitGroup
	bufs    bufpool.Pool  // relay buffers, borrowed only while data moves
	flows   atomic.Int64  // relaying (MaxFlows)
	dials   atomic.Int64  // in flight (MaxDials)
	refused *ratelog.Log  // what MaxFlows, MaxDials, MaxOpens and the export policy turned away
	opens   *rate.Limiter // MaxOpens, or nil
}

// New returns a gateway with cfg's defaults filled in.
func New(cfg Config) *Gateway {
	cfg.setDefaults()
	g := &Gateway{cfg: cfg, local: localAddrs{list: cfg.LocalAddrs}, refused: ratelog.New(cfg.Logger, slog.LevelWarn, time.Second)}
	g.SetExports(cfg.Exports)
	if cfg.MaxOpens > 0 {
		g.opens = rate.NewLimiter(rate.Limit(cfg.MaxOpens), cfg.MaxOpens)
	}
	return g
}

// SetExports replaces the exported prefixes for flows that start from now
// on; flows already open keep running.
func (g *Gateway) SetExports(ps []netip.Prefix) {
	ps = slices.Clone(ps)
	g.exports.Store(&ps)
}

// Allowed reports whether the export policy lets a peer reach dst.
func (g *Gateway) Allowed(dst netip.Addr) bool {
	return allowed(*g.exports.Load(), dst, g.local.has(dst))
}

// Flows is the number of flows relaying now.
func (g *Gateway) Flows() int { return int(g.flows.Load()) }

// take reserves one unit of a bounded counter; false when it is at max.
func take(c *atomic.Int64, max int) bool {
	if c.Add(1) > int64(max) && max > 0 {
		c.Add(-1)
		return false
	}
	return true
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
		if g.opens != nil && !g.opens.Allow() {
			g.refused.Add("flows refused: the peer opens flows faster than its limit", "max_opens", g.cfg.MaxOpens)
			st.Reject(usl.ResetLimit)
			continue
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
	if dst.Proto == flow.ICMP {
		if !g.Allowed(dst.Addr.Addr()) {
			g.refused.Add(msgForbidden, "peer", peer, "last_dst", dst.String())
			st.Reject(usl.ResetForbidden)
			return
		}
		g.handleEcho(peer, st, dst)
		return
	}
	if !take(&g.flows, g.cfg.MaxFlows) {
		g.refused.Add("flows refused: the peer is at its flow limit", "max_flows", g.cfg.MaxFlows)
		st.Reject(usl.ResetLimit)
		return
	}
	handedOff := false // once the relay runs in its own goroutine, it gives the flow back
	defer func() {
		if !handedOff {
			g.flows.Add(-1)
		}
	}()
	if g.cfg.Forward != nil && dst.Name == "" && g.Allowed(dst.Addr.Addr()) && g.cfg.Forward(ctx, st, dst) {
		return
	}
	if !take(&g.dials, g.cfg.MaxDials) {
		g.refused.Add("flows refused: the peer's dials in flight are at their limit", "max_dials", g.cfg.MaxDials)
		st.Reject(usl.ResetLimit)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, g.cfg.DialTimeout)
	c, code, err := g.dial(dctx, dst)
	cancel()
	g.dials.Add(-1)
	if err != nil {
		if code == usl.ResetForbidden {
			g.refused.Add(msgForbidden, "peer", peer, "last_dst", dst.String(), "why", err.Error())
		} else {
			log.Info("dial failed", "peer", peer, "dst", dst.String(), "reason", code.String(), "err", err)
		}
		st.Reject(code)
		return
	}
	if err := st.Accept(); err != nil {
		c.Close()
		return
	}
	log.Debug("flow open", "peer", peer, "dst", dst.String())
	ended := func() {}
	if g.cfg.OnFlow != nil {
		ended = g.cfg.OnFlow(st, dst)
	}
	// The relay runs in a fresh goroutine and this one ends: the dial grew
	// this goroutine's stack, and a goroutine keeps its stack while its
	// flow idles, so an idle flow would keep that stack for its life.
	handedOff = true
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer g.flows.Add(-1)
		defer ended()
		switch dst.Proto {
		case flow.TCP:
			relayTCP(&g.bufs, st, c.(*net.TCPConn), g.cfg.HalfCloseTimeout)
		case flow.UDP:
			relayUDP(&g.bufs, st, c.(*net.UDPConn), g.cfg.UDPIdleTimeout)
		}
		log.Debug("flow closed", "peer", peer, "dst", dst.String())
	}()
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

// msgForbidden is the (aggregated) line of flows the export policy refused.
const msgForbidden = "forbidden: destination is not exported"

// errNotExported is why a destination is forbidden.
var errNotExported = errors.New("outside this host's exports")

// dial connects to dst after the export check, resolving a name first, and
// returns the reset code to send the peer when it fails.
func (g *Gateway) dial(ctx context.Context, dst flow.Dest) (net.Conn, usl.ResetCode, error) {
	if dst.IsResolver() && g.cfg.ExportDNS {
		server := g.cfg.DNSServer
		if !server.IsValid() {
			ns, err := nameserver(g.cfg.ResolvConf)
			if err != nil {
				return nil, usl.ResetUnreachable, err
			}
			server = netip.AddrPortFrom(ns, 53)
		}
		d := net.Dialer{Control: g.cfg.Control}
		c, err := d.DialContext(ctx, dst.Proto.String(), server.String())
		if err != nil {
			return nil, resetCodeFor(err), err
		}
		return c, 0, nil
	}
	targets := []netip.Addr{dst.Addr.Addr()}
	if dst.Name != "" {
		addrs, err := g.cfg.Resolver.LookupNetIP(ctx, "ip", dst.Name)
		if err != nil {
			return nil, resetCodeFor(err), err
		}
		targets = addrs
	}
	var allowed []netip.Addr
	for _, a := range targets {
		if g.Allowed(a) {
			allowed = append(allowed, a.Unmap())
		}
	}
	if len(allowed) == 0 {
		if dst.Name != "" {
			return nil, usl.ResetForbidden, fmt.Errorf("%s resolves to %v, all %w", dst.Name, targets, errNotExported)
		}
		return nil, usl.ResetForbidden, errNotExported
	}
	d := net.Dialer{Control: g.cfg.Control}
	var err error
	for _, a := range allowed {
		var c net.Conn
		c, err = d.DialContext(ctx, dst.Proto.String(), netip.AddrPortFrom(a, dst.Port()).String())
		if err == nil {
			return c, 0, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, resetCodeFor(err), err
}

// nameserver is the first nameserver of a resolv.conf, or 127.0.0.1 when
// it names none (as resolv.conf(5) specifies).
func nameserver(path string) (netip.Addr, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("exported DNS: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Zone() == "" {
				return a.Unmap(), nil
			}
		}
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
}

// resetCodes are the USL reset codes for the dial outcomes.
var resetCodes = map[flow.Reason]usl.ResetCode{
	flow.Refused:     usl.ResetRefused,
	flow.Timeout:     usl.ResetTimeout,
	flow.Unreachable: usl.ResetUnreachable,
}

// resetCodeFor maps a dial or lookup error to the reason the client side
// turns into ECONNREFUSED, an ICMP unreachable or a timeout.
func resetCodeFor(err error) usl.ResetCode {
	if c, ok := resetCodes[direct.ReasonFor(err)]; ok {
		return c
	}
	return usl.ResetUnreachable
}
