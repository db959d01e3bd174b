package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/usltun/usltun/proxy"
	"github.com/usltun/usltun/usl"
)

type upCmd struct {
	Config         kong.ConfigFlag `placeholder:"FILE" help:"Read options from a TOML file (or JSON); flags on the command line win."`
	Key            string          `required:"" placeholder:"FILE" help:"This host's private key file, written by 'usltun genkey'."`
	PeerKey        []string        `sep:"none" placeholder:"BASE64" help:"The peer's public key, printed by 'usltun pubkey'. Only the keys given are admitted. Repeatable: each key is a peer of its own, with its own session, that may reach --export; for per-peer routes, exports and endpoints write [[peer]] sections in --config instead (README: a hub)."`
	Peer           []string        `sep:"none" placeholder:"HOST[:PORT][@IFACE|@LOCALADDR]" help:"Dial the peer here (default port ${default_port}). Repeatable: each --peer is one path of the same session; @IFACE binds the path to an interface (SO_BINDTODEVICE), @LOCALADDR to a local address, so two uplinks reach one server."`
	Listen         []string        `sep:"none" placeholder:"ADDR[:PORT]" help:"Listen for the peer here (default port ${default_port}). Repeatable: a dialer's paths may arrive on any of them, into one session."`
	Scheduler      string          `enum:"failover,lowrtt,balance,mirror,hedge" default:"${default_scheduler}" help:"Which paths carry the frames of flows no policy rule matches: failover (first --peer that is up), lowrtt (lowest RTT with room, as MPTCP), balance (by measured delivery rate: one flow gets about the sum of the links), mirror (every frame on every path: a dead link costs nothing, at twice the traffic), hedge (lowrtt, plus a copy on the next path when a frame is not acked within srtt + 2 rttvar). Default ${default_scheduler}: with healthy links it costs nothing over one path and takes the fastest one, and a stalled link is left within max(3 srtt, 200 ms) by reinjection (longest stall 205-243 ms measured with real daemons; docs/design.md has the measurements of all five). With one path they are all the same."`
	Policy         string          `placeholder:"FILE" help:"Socket Control rules: [[policy]] tables (name, match: a CEL expression over proto, dst.addr, dst.port, dst.name; scheduler), evaluated once per flow, the first match wins, flows no rule matches get --scheduler. SIGHUP re-reads the file, and usltun policy set or flush replaces the rules over the control socket; either moves open flows to their new scheduler at once (docs/design.md)."`
	Route          []netip.Prefix  `placeholder:"PREFIX" help:"Route this subnet through the tunnel device (repeatable)."`
	Export         []netip.Prefix  `placeholder:"PREFIX" help:"Let the peer reach this subnet through this host (repeatable; default: nothing)."`
	ExportDNS      bool            `name:"export-dns" help:"Let the peer use this host's DNS resolver (the first nameserver of /etc/resolv.conf), as usltun exec on the peer does."`
	Tun            string          `default:"usl0" help:"Name of the TUN device, created only when there is something to --route."`
	Address        []netip.Prefix  `placeholder:"PREFIX" help:"Addresses of the TUN device (default ${default_address4} and ${default_address6}; the IPv4 one only where IPv6 is disabled). Tunnelled flows use them as their source, so they survive a change of this host's own address."`
	MTU            int             `name:"mtu" default:"1500" help:"MTU of the TUN device and of the netstack NIC."`
	PeerName       string          `placeholder:"NAME" help:"A name for the peer: the name label of its metrics."`
	Metrics        string          `placeholder:"ADDR:PORT" help:"Serve Prometheus metrics at http://ADDR:PORT/metrics (default: off). Use a loopback address unless the network is trusted."`
	Control        string          `placeholder:"PATH" help:"Control socket (default: for root the abstract socket @usltun/<tun>, private to this network namespace; for a user $XDG_RUNTIME_DIR/usltun/<tun>.sock)."`
	LogLevel       string          `enum:"debug,info,warn,error" default:"info" help:"Log level: ${enum}."`
	SessionTimeout time.Duration   `default:"0s" help:"Give up and fail every flow after the peer is gone this long (0: never)."`
	DeadInterval   time.Duration   `default:"${default_dead_interval}" help:"A path that hears nothing from the peer for this long is declared dead and reconnected."`
	MaxFlows       int             `default:"${default_max_flows}" help:"Most concurrent flows; beyond it new connections are refused with a reset."`
	MaxStreams     int             `default:"${default_max_streams}" help:"Most open streams per session, both directions together."`
	ReplayBuffer   byteSize        `default:"${default_replay_buffer}" help:"Unacknowledged bytes kept per session for retransmission; writers block when it is full."`
	HandshakeRate  float64         `default:"${default_handshake_rate}" help:"Handshakes per second accepted from one source network (an IPv4 address, or an IPv6 /64), burst twice that."`
	Socks          string          `placeholder:"ADDR:PORT" help:"Serve SOCKS5 here (CONNECT, UDP ASSOCIATE); host names are resolved by the peer. Needs no root."`
	HTTPProxy      string          `name:"http-proxy" placeholder:"ADDR:PORT" help:"Serve an HTTP proxy (CONNECT, http:// requests) here, for https_proxy. Needs no root."`
	ProxyAuth      string          `placeholder:"FILE" help:"Require these users (lines user:password, file mode 0600) on --socks and --http-proxy; needed to listen beyond loopback."`
	Procs          int             `default:"0" placeholder:"N" help:"Run the daemon's Go code on at most N CPUs at once (GOMAXPROCS; 0: the Go runtime's choice, all CPUs). On a two-core client with a few busy flows, 1 halves connect() and round-trip latency and saves CPU; with many flows or peers it slows recovery and a hub's connect rate (docs/performance.md, GOMAXPROCS)."`

	hubMode          bool           // --config has [[peer]] sections (peers.go)
	addressDefaulted bool           // no --address was given: Address holds the defaults
	devAddrs         []netip.Prefix // what the device gets on this host (see deviceAddrs)
}

// AfterApply checks the command line once kong has parsed it and found every
// required flag (kong's Validate hooks would run before that check). Its
// errors are usage errors.
func (c *upCmd) AfterApply() error {
	if c.Procs < 0 {
		return fmt.Errorf("--procs %d: give a number of CPUs, or 0 for the Go runtime's choice (all of them)", c.Procs)
	}
	if len(c.Address) == 0 {
		c.Address, c.addressDefaulted = []netip.Prefix{defaultAddress4, defaultAddress6}, true
	}
	if err := c.checkPeers(); err != nil {
		return err
	}
	if len(c.Peer) > usl.DefaultMaxPathsPerSession {
		return fmt.Errorf("%d --peer paths: a session has at most %d", len(c.Peer), usl.DefaultMaxPathsPerSession)
	}
	for _, p := range c.Peer {
		if _, err := parsePeer(p); err != nil {
			return err
		}
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("--mtu %d is out of range: use 1280 to 65535", c.MTU)
	}
	if c.MaxFlows < 1 {
		return fmt.Errorf("--max-flows %d: must be at least 1", c.MaxFlows)
	}
	if c.ReplayBuffer < 1<<20 {
		return fmt.Errorf("--replay-buffer %s is too small: use at least 1MiB", c.ReplayBuffer)
	}
	for _, p := range append(append([]netip.Prefix{}, c.Route...), c.Export...) {
		if p != p.Masked() {
			return fmt.Errorf("prefix %s has host bits set: did you mean %s?", p, p.Masked())
		}
	}
	for _, l := range []struct{ flag, addr string }{{"--socks", c.Socks}, {"--http-proxy", c.HTTPProxy}} {
		if l.addr == "" {
			continue
		}
		if err := proxy.CheckListen(l.flag, l.addr, c.ProxyAuth != ""); err != nil {
			return fmt.Errorf("%w (--proxy-auth FILE)", err)
		}
	}
	if c.ProxyAuth != "" && c.Socks == "" && c.HTTPProxy == "" {
		return errors.New("--proxy-auth is for --socks and --http-proxy: give one of them")
	}
	for _, e := range c.Export {
		for _, r := range c.Route {
			if e.Overlaps(r) {
				return fmt.Errorf("--export %s overlaps --route %s: this host would dial the peer's flows there back into its own tunnel, a loop; make the exported and routed prefixes disjoint", e, r)
			}
		}
	}
	for _, p := range c.Address {
		for _, r := range c.Route {
			if r.Contains(p.Addr()) {
				return fmt.Errorf("--address %s is inside --route %s: pick a device address outside the routed subnets", p, r)
			}
		}
	}
	return nil
}

// parsePeer reads HOST[:PORT][@IFACE|@LOCALADDR].
func parsePeer(s string) (usl.Endpoint, error) {
	host, bind := s, ""
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		host, bind = s[:i], s[i+1:]
		if bind == "" {
			return usl.Endpoint{}, fmt.Errorf("--peer %s: nothing after @: write HOST@eth0 or HOST@192.0.2.7", s)
		}
	}
	if host == "" {
		return usl.Endpoint{}, fmt.Errorf("--peer %s: no host: write HOST[:PORT][@IFACE|@LOCALADDR]", s)
	}
	return usl.Endpoint{Addr: withDefaultPort(host), Bind: bind}, nil
}

// endpoints are the --peer paths, checked by AfterApply.
func (c *upCmd) endpoints() []usl.Endpoint {
	eps := make([]usl.Endpoint, 0, len(c.Peer))
	for _, p := range c.Peer {
		ep, _ := parsePeer(p)
		eps = append(eps, ep)
	}
	return eps
}

// address is what status and the service manager show: the --peer
// paths or the --listen addresses.
func (c *upCmd) address() string {
	var out []string
	for _, ep := range c.endpoints() {
		out = append(out, ep.String())
	}
	for _, l := range c.Listen {
		out = append(out, withDefaultPort(l))
	}
	return strings.Join(out, ", ")
}

// withDefaultPort adds the documented default port to HOST when it has none.
func withDefaultPort(hostport string) string {
	if _, _, err := net.SplitHostPort(hostport); err == nil {
		return hostport
	}
	host := hostport
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	return net.JoinHostPort(host, strconv.Itoa(defaultPort))
}

func (c *upCmd) logger(w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.LogLevel)) // kong's enum already checked it
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// sessionConfig is every peer's session template; the peer table sets
// the key and the per-peer limits.
func (c *upCmd) sessionConfig(key usl.PrivateKey, log *slog.Logger) usl.Config {
	sched, _ := usl.NewScheduler(c.Scheduler) // kong's enum checked the name
	return usl.Config{
		Scheduler:      sched,
		PrivateKey:     key,
		ReplayBuffer:   int(c.ReplayBuffer),
		MaxStreams:     c.MaxStreams,
		DeadInterval:   c.DeadInterval,
		SessionTimeout: c.SessionTimeout,
		HandshakeRate:  c.HandshakeRate,
		Logger:         log.With("component", "usl"),
	}
}

func (c *upCmd) Run(o cmdIO) error {
	log := c.logger(o.stderr)
	log.Debug("Go scheduler", "gomaxprocs", setProcs(c.Procs))
	key, err := readPrivateKey(c.Key, log)
	if err != nil {
		return err
	}
	table, err := c.peerTable(key.Public())
	if err != nil {
		return err
	}
	if len(c.tunRoutes(table)) > 0 {
		if err := checkNetAdmin(); err != nil {
			return err
		}
		if c.devAddrs, err = c.deviceAddrs(procSys, log); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	d, err := c.start(ctx, key, table, log)
	if err != nil {
		return err
	}
	// start returns once the device has its addresses and routes: now the
	// service manager may start what depends on the tunnel.
	if err := sdNotify("READY=1\nSTATUS=" + d.readyStatus()); err != nil {
		log.Warn(err.Error())
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-hup:
			if c.Policy == "" {
				log.Info("SIGHUP: no --policy file to re-read")
			} else if err := d.policy.load(c.Policy); err != nil {
				log.Warn("SIGHUP: policy not replaced, the old rules stay", "err", err)
			} else {
				log.Info("SIGHUP: policy replaced; open flows moved", "file", c.Policy, "rules", len(d.policy.eng.Rules()))
			}
			if c.hubMode {
				d.reload("SIGHUP")
			}
		}
	}
	if err := sdNotify("STOPPING=1"); err != nil {
		log.Warn(err.Error())
	}
	log.Info("shutting down: closing flows, then the session, then the device")
	return d.shutdown()
}

// checkNetAdmin fails early, with the fix, when the process cannot create a
// TUN device or change routes.
func checkNetAdmin() error {
	if os.Geteuid() == 0 {
		return nil
	}
	caps, err := os.ReadFile("/proc/self/status")
	if err == nil && hasCapNetAdmin(string(caps)) {
		return nil
	}
	return errors.New("--route needs root or CAP_NET_ADMIN to create the TUN device and its routes: run it with sudo")
}
