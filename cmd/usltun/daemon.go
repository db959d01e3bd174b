package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/usltun/usltun/control"
	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/gateway"
	"github.com/usltun/usltun/httpproxy"
	"github.com/usltun/usltun/hub"
	"github.com/usltun/usltun/netstack"
	"github.com/usltun/usltun/proxy"
	"github.com/usltun/usltun/socks"
	"github.com/usltun/usltun/tun"
	"github.com/usltun/usltun/usl"
)

// daemon is one running `usltun up`: a session (dialed or accepted), the
// gateway that serves the peer's streams, and, when something is routed, the
// TUN device with its netstack.
type daemon struct {
	cmd      *upCmd
	log      *slog.Logger
	started  time.Time
	hub      *hub.Hub       // the peers: their sessions and gateways
	self     usl.PublicKey  // this host's key
	routes   []netip.Prefix // the device's: --route and the peers' routes (routesMu)
	routesMu sync.Mutex     // guards routes, which a reload changes
	reloadMu sync.Mutex
	ln       *usl.Listener
	dev      *tun.Device
	stack    *netstack.Stack
	ctl      *control.Server
	metrics  *metricsServer
	socks    *socks.Server     // --socks
	http     *httpproxy.Server // --http-proxy
	execs    execs             // usltun exec namespaces attached over ctl
	policy   *flowPolicy

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (c *upCmd) start(parent context.Context, key usl.PrivateKey, table *hub.Table, log *slog.Logger) (_ *daemon, err error) {
	ctx, cancel := context.WithCancel(parent)
	d := &daemon{cmd: c, log: log, started: time.Now(), cancel: cancel, routes: c.tunRoutes(table), self: key.Public()}
	defer func() {
		if err != nil {
			d.shutdown()
		}
	}()
	if d.policy, err = newFlowPolicy(c.Policy, c.Scheduler, log.With("component", "policy")); err != nil {
		return d, err
	}
	for _, p := range table.Peers() {
		for _, ep := range p.Endpoints {
			if err := checkRouteLoop(ctx, ep.Addr, d.routes); err != nil {
				return d, err
			}
		}
	}
	scfg := c.sessionConfig(key, log)
	d.hub, err = hub.New(ctx, hub.Config{
		Session: scfg,
		Gateway: gateway.Config{OnFlow: d.policy.assign},
		Relay:   c.hubMode,
		Logger:  log,
	}, table)
	if err != nil {
		return d, err
	}
	lcfg := scfg
	lcfg.Allow, lcfg.PeerLimits = d.hub.Allow, d.hub.PeerLimits

	ctlPath, err := controlPath(c.Control, c.Tun)
	if err != nil {
		return d, err
	}
	if d.ctl, err = d.listenControl(ctlPath, log.With("component", "control")); err != nil {
		return d, err
	}
	if c.Metrics != "" {
		if d.metrics, err = listenMetrics(c.Metrics, d, log); err != nil {
			return d, err
		}
	}
	// The proxies listen before the session exists: their flows wait for it,
	// as the TUN device's do.
	if err := d.startProxies(log); err != nil {
		return d, err
	}

	if len(c.Listen) > 0 {
		for i, l := range c.Listen {
			addr := withDefaultPort(l)
			if i == 0 {
				d.ln, err = usl.Listen("tcp", addr, lcfg)
			} else {
				_, err = d.ln.ListenAlso("tcp", addr)
			}
			if err != nil {
				if errors.Is(err, syscall.EADDRINUSE) {
					return d, fmt.Errorf("listen %s: the port is in use (another usltun?); pick a free one with --listen ADDR:PORT", addr)
				}
				if hint := loopbackDown(addr); hint != "" {
					return d, fmt.Errorf("listen %s: %w: %s", addr, err, hint)
				}
				return d, fmt.Errorf("listen %s: %w", addr, err)
			}
			log.Info("listening for peers", "addr", addr, "peers", table.Len())
		}
		d.wg.Add(1)
		go d.acceptLoop(ctx)
	}

	if len(d.routes) == 0 {
		return d, nil
	}
	d.dev, err = tun.Create(tun.Config{Name: c.Tun, MTU: c.MTU, Addrs: c.devAddrs, Routes: d.routes})
	if err != nil {
		return d, err
	}
	d.stack, err = netstack.New(d.dev.Endpoint(), netstack.Config{
		MTU:      c.MTU,
		MaxFlows: c.MaxFlows,
		Dialer:   d.tunnelDialer(),
		Logger:   log.With("component", "netstack"),
	})
	if err != nil {
		return d, err
	}
	log.Info("routing through tunnel", "dev", c.Tun, "mtu", c.MTU, "routes", prefixes(d.routes), "offloads", d.dev.Offloads())
	return d, nil
}

// readyStatus is the one-line STATUS= the service manager shows.
func (d *daemon) readyStatus() string {
	c := d.cmd
	var s string
	if len(c.Listen) > 0 {
		s = "listening on " + c.address()
	} else {
		s = "dialing " + c.address()
	}
	if d.dev != nil {
		s += fmt.Sprintf("; %s routes %s", d.dev.Name(), prefixes(d.routes))
	}
	return s
}

// startProxies starts the SOCKS5 and HTTP proxy listeners asked for. Their
// flows go through the session like the TUN device's.
func (d *daemon) startProxies(log *slog.Logger) error {
	c := d.cmd
	var users proxy.Users
	if c.ProxyAuth != "" {
		var err error
		if users, err = proxy.LoadUsers(c.ProxyAuth); err != nil {
			return fmt.Errorf("--proxy-auth: %w", err)
		}
	}
	dialer := d.tunnelDialer()
	if c.Socks != "" {
		ln, err := listenProxy("--socks", c.Socks)
		if err != nil {
			return err
		}
		d.socks = socks.Serve(ln, socks.Config{Dialer: dialer, Users: users, Logger: log.With("component", "socks")})
		log.Info("serving SOCKS5", "addr", ln.Addr().String(), "auth", users != nil)
	}
	if c.HTTPProxy != "" {
		ln, err := listenProxy("--http-proxy", c.HTTPProxy)
		if err != nil {
			return err
		}
		d.http = httpproxy.Serve(ln, httpproxy.Config{Dialer: dialer, Users: users, Logger: log.With("component", "http-proxy")})
		log.Info("serving HTTP proxy", "addr", ln.Addr().String(), "auth", users != nil)
	}
	return nil
}

func listenProxy(flag, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s %s: the port is in use; pick a free one", flag, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	return ln, nil
}

// acceptLoop takes each session the listener hands out. A second session from
// the peer means it restarted: the listener has fenced the old one already.
func (d *daemon) acceptLoop(ctx context.Context) {
	defer d.wg.Done()
	for {
		s, err := d.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("accept session", "err", err)
			}
			return
		}
		d.hub.Adopt(s)
	}
}

// shutdown closes flows cleanly (FIN, not RST), then the session, so that
// data already written reaches the peer, then removes the device and routes.
func (d *daemon) shutdown() error {
	var errs []error
	d.closeExecs()
	if d.socks != nil {
		d.socks.Close()
	}
	if d.http != nil {
		d.http.Close()
	}
	if d.stack != nil {
		errs = append(errs, d.stack.Close())
	}
	if d.hub != nil {
		d.hub.Close()
	}
	d.cancel()
	if d.ln != nil {
		d.ln.Close()
	}
	d.wg.Wait()
	if d.dev != nil {
		errs = append(errs, d.dev.Close())
	}
	if d.ctl != nil {
		d.ctl.Close()
	}
	if d.metrics != nil {
		d.metrics.Close()
	}
	d.log.Info("stopped")
	return errors.Join(errs...)
}

// checkRouteLoop refuses a --route that would carry the tunnel's own packets
// to the peer into the tunnel itself.
func checkRouteLoop(ctx context.Context, peer string, routes []netip.Prefix) error {
	if len(routes) == 0 {
		return nil
	}
	host, _, _ := net.SplitHostPort(peer)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return fmt.Errorf("--peer %s: cannot resolve %s: %w", peer, host, err)
	}
	for _, a := range addrs {
		a = a.Unmap()
		for _, r := range routes {
			if r.Contains(a) {
				return fmt.Errorf("--route %s covers the peer's own address %s: the tunnel would carry its own packets into itself; route a narrower prefix that leaves out %s", r, a, a)
			}
		}
	}
	return nil
}

func prefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// hasCapNetAdmin reads CapEff from /proc/self/status.
func hasCapNetAdmin(status string) bool {
	const capNetAdmin = 12
	for _, line := range strings.Split(status, "\n") {
		v, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		bits, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		return err == nil && bits&(1<<capNetAdmin) != 0
	}
	return false
}

// streamDialer opens the remote half of a front end's flow as a USL stream.
type streamDialer struct {
	hub    *hub.Hub
	policy *flowPolicy
}

var _ flow.Dialer = streamDialer{}

// tunnelDialer is what every front end (usl0's netstack, the proxies, exec
// namespaces) dials through: the session, with the flow policy applied.
func (d *daemon) tunnelDialer() streamDialer { return streamDialer{d.hub, d.policy} }

// DialFlow opens the flow on the session of the peer that routes dst
// (the one peer of a command-line daemon).
func (d streamDialer) DialFlow(ctx context.Context, dst flow.Dest) (flow.Conn, error) {
	st, hubEnded, err := d.hub.OpenStream(ctx, dst)
	if err != nil {
		return nil, flowError(err)
	}
	policyEnded := d.policy.assign(st, dst)
	return streamConn{st, func() { policyEnded(); hubEnded() }}, nil
}

// streamConn is a USL stream as a flow.Conn: its resets surface as the
// flow.Error with the same reason. ended tells the policy the flow is
// gone.
type streamConn struct {
	*usl.Stream
	ended func()
}

func (c streamConn) Close() error {
	c.ended()
	return c.Stream.Close()
}

var _ flow.Conn = streamConn{}

func (c streamConn) Read(b []byte) (int, error) {
	n, err := c.Stream.Read(b)
	return n, flowError(err)
}

// WriteTo is the stream's (usl.Stream.WriteTo, which splice.Copy uses to
// spare a copy), with its errors translated as Read's are (a reset into a
// flow.Error; other errors, w's among them, pass unchanged).
func (c streamConn) WriteTo(w io.Writer) (int64, error) {
	n, err := c.Stream.WriteTo(w)
	return n, flowError(err)
}

func (c streamConn) Write(b []byte) (int, error) {
	n, err := c.Stream.Write(b)
	return n, flowError(err)
}

func (c streamConn) Abort() error {
	c.ended()
	return c.Reset(usl.ResetAborted)
}

// resetReasons maps USL reset codes, which travel on the wire, to the flow
// outcomes front ends act on.
var resetReasons = map[usl.ResetCode]flow.Reason{
	usl.ResetAborted:        flow.Aborted,
	usl.ResetRefused:        flow.Refused,
	usl.ResetUnreachable:    flow.Unreachable,
	usl.ResetForbidden:      flow.Forbidden,
	usl.ResetTimeout:        flow.Timeout,
	usl.ResetPeerRestarted:  flow.PeerRestarted,
	usl.ResetLimit:          flow.Limit,
	usl.ResetSessionTimeout: flow.SessionTimeout,
}

// flowError turns a stream reset into a *flow.Error; other errors (EOF,
// deadlines, a closed session) pass unchanged.
func flowError(err error) error {
	var re *usl.ResetError
	if err == nil || !errors.As(err, &re) {
		return err
	}
	r, ok := resetReasons[re.Code]
	if !ok {
		r = flow.Aborted
	}
	return &flow.Error{Reason: r, Err: err}
}
