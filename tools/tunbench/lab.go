package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/usltun/usltun/testenv"
)

// Address plan of the A—B—C lab. A is the client, B the gateway, C the
// server behind B on one /16. Each mode has its own /24 of C's addresses,
// routed from A its own way, so all paths exist at once and the benchmark
// can alternate between them: a burst of other work on the machine then
// hits every mode alike instead of one. A second A—B link carries the
// second path of usltun's mirror measurement.
const (
	addrA    = "10.0.0.1"
	addrB    = "10.0.0.2"
	addrA2   = "10.0.1.1" // the second A—B link
	addrB2   = "10.0.1.2"
	addrBC   = "10.20.0.1" // B's address on the B—C link
	netBC    = "/16"
	netC     = "10.20.0.0/16" // what B exports to usltun
	cDirect  = "10.20.1.2"    // C's address reached by direct routing
	cWGOld   = "10.20.2.2"    // … through Debian's wireguard-go (2022)
	cUSL     = "10.20.3.2"    // … through usltun
	cWG      = "10.20.4.2"    // … through the current wireguard-go
	cMirror  = "10.20.5.2"    // … through usltun mirroring over both A—B links
	uslPort  = "7400"
	mirPort  = "7401"
	wgMTU    = "1420" // wg-quick's default for an IPv4 underlay of 1500
	uslMTU   = "1500" // usltun's default: its stream framing is not per packet
	bulkPort = 5201   // iperf3 on C
)

// subnet24 is the /24 around a C address, the prefix A routes for a mode.
func subnet24(addr string) string {
	return addr[:strings.LastIndexByte(addr, '.')] + ".0/24"
}

// lab is the A—B—C topology plus a scratch directory for keys.
type lab struct {
	tb      *testenv.Lab
	a, b, c *testenv.Host
	ab, bc  *testenv.LinkPair
	ab2     *testenv.LinkPair
	dir     string
	tag     string // the harness's pid: unique names outside the namespaces
}

func newLab(tb *testenv.Lab) (*lab, error) {
	sweepScratch()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", scratchPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("scratch dir: %w", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	l := &lab{tb: tb, dir: dir, tag: strconv.Itoa(os.Getpid())}
	l.a = testenv.NewHost(tb, "a")
	l.b = testenv.NewHost(tb, "b")
	l.c = testenv.NewHost(tb, "c")
	l.ab = testenv.Link(tb, l.a, l.b, addrA+"/24", addrB+"/24")
	l.ab2 = testenv.Link(tb, l.a, l.b, addrA2+"/24", addrB2+"/24")
	l.bc = testenv.Link(tb, l.b, l.c, addrBC+netBC, strings.Join([]string{
		cDirect + netBC, cWGOld + netBC, cUSL + netBC, cWG + netBC, cMirror + netBC}, ","))
	l.b.EnableForwarding()
	l.c.AddRoute("default", addrBC)
	// The idle-flow test holds thousands of connections from one address to
	// one port: widen the ephemeral range (per namespace) so neither A nor
	// B's gateway sockets run out, and let TIME_WAIT ports of earlier modes
	// be reused.
	for _, h := range []*testenv.Host{l.a, l.b, l.c} {
		for k, v := range map[string]string{
			"net.ipv4.ip_local_port_range": "1024 65000",
			"net.ipv4.tcp_tw_reuse":        "1",
			"net.core.somaxconn":           "16384",
			"net.ipv4.tcp_max_syn_backlog": "16384",
		} {
			if err := h.Sysctl(k, v); err != nil {
				return nil, fmt.Errorf("%s: %w", h, err)
			}
		}
	}
	return l, nil
}

// scratchPrefix names the scratch directories (keys, the usltun build) in
// the temporary directory: scratchPrefix<pid>-<random>.
const scratchPrefix = "tunbench-"

// sweepScratch removes scratch directories of harness processes that died
// without cleaning up (SIGKILL, a killed test binary).
func sweepScratch() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), scratchPrefix+"*-*"))
	for _, d := range dirs {
		rest := strings.TrimPrefix(filepath.Base(d), scratchPrefix)
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// run executes a short command inside h, bounded by ctx, and returns its
// standard output; standard error is folded into the error.
func run(ctx context.Context, h *testenv.Host, argv ...string) (string, error) {
	return runStdin(ctx, h, "", argv...)
}

// mode is one way of getting A's packets to C.
type mode interface {
	Name() string
	// Target is C's address that A reaches through this mode.
	Target() string
	// Up builds the path; Down removes it again (routes, daemons stopped
	// with SIGTERM). Down is also called after a failed or partial Up and
	// more than once, so it must be idempotent.
	Up(ctx context.Context) error
	Down()
	// Daemons are the processes whose CPU and memory the benchmark charges
	// to the mode (none for direct routing).
	Daemons() []*testenv.Proc
}

// direct routing: B forwards in the kernel. The physical limit of the lab.
type direct struct{ l *lab }

func (m *direct) Name() string             { return modeDirect }
func (m *direct) Target() string           { return cDirect }
func (m *direct) Daemons() []*testenv.Proc { return nil }
func (m *direct) Up(ctx context.Context) error {
	_, err := run(ctx, m.l.a, "ip", "route", "replace", subnet24(cDirect), "via", addrB)
	return err
}
func (m *direct) Down() {
	_, _ = run(context.Background(), m.l.a, "ip", "route", "del", subnet24(cDirect))
}

// wireguardGo: a wg interface on A and B over the A—B link, run by a
// userspace wireguard-go binary, C's address of the mode routed into it on
// A. Two of them run side by side: Debian's build of 2022 (the historical
// row) and the current one, built from the module proxy (wgbuild.go).
type wireguardGo struct {
	l      *lab
	name   string
	bin    string
	target string
	// Tunnel addresses of A and B, and the UDP port.
	addrA, addrB, port string
	procs              []*testenv.Proc
	ifA                string
	ifB                string
}

// wgFlavor is what tells the two wireguard-go modes apart.
type wgFlavor struct {
	name, target, prefix, addrA, addrB, port string
}

var (
	wgOld = wgFlavor{name: modeWGOld, target: cWGOld, prefix: "tbwg", addrA: "10.99.0.1", addrB: "10.99.0.2", port: "51820"}
	wgCur = wgFlavor{name: modeWG, target: cWG, prefix: "tbwc", addrA: "10.98.0.1", addrB: "10.98.0.2", port: "51821"}
)

func newWireguardGo(l *lab, f wgFlavor, bin string) *wireguardGo {
	// wireguard-go's control socket is /var/run/wireguard/<ifname>.sock,
	// outside the namespaces, so the names must be unique on the machine:
	// they carry the harness's pid.
	sweepWGSockets(f.prefix)
	return &wireguardGo{l: l, name: f.name, bin: bin, target: f.target, addrA: f.addrA, addrB: f.addrB, port: f.port,
		ifA: f.prefix + "a" + l.tag, ifB: f.prefix + "b" + l.tag}
}

// sweepWGSockets removes control sockets left by a harness that was killed
// before it could stop its wireguard-go (their namespaces, and with them
// the interfaces, are gone already).
func sweepWGSockets(prefix string) {
	paths, _ := filepath.Glob("/var/run/wireguard/" + prefix + "*.sock")
	for _, p := range paths {
		name := strings.TrimSuffix(filepath.Base(p), ".sock")
		pid, err := strconv.Atoi(name[len(prefix)+1:])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.Remove(p)
		}
	}
}

func (m *wireguardGo) Name() string             { return m.name }
func (m *wireguardGo) Target() string           { return m.target }
func (m *wireguardGo) Daemons() []*testenv.Proc { return m.procs }

func (m *wireguardGo) Up(ctx context.Context) error {
	l := m.l
	keys := map[string]string{}
	for _, side := range []string{"a", "b"} {
		priv, err := run(ctx, l.a, "wg", "genkey")
		if err != nil {
			return err
		}
		pub, err := runStdin(ctx, l.a, priv, "wg", "pubkey")
		if err != nil {
			return err
		}
		path := filepath.Join(l.dir, m.name+"-"+side+".key")
		if err := os.WriteFile(path, []byte(priv), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		keys[side+".key"], keys[side+".pub"] = path, strings.TrimSpace(pub)
	}
	type side struct {
		h                 *testenv.Host
		ifname, addr, key string
		peerArgs          []string
	}
	sides := []side{
		{l.a, m.ifA, m.addrA, keys["a.key"], []string{"peer", keys["b.pub"], "allowed-ips", subnet24(m.target) + "," + m.addrB + "/32", "endpoint", addrB + ":" + m.port}},
		{l.b, m.ifB, m.addrB, keys["b.key"], []string{"peer", keys["a.pub"], "allowed-ips", m.addrA + "/32"}},
	}
	for _, s := range sides {
		p := s.h.Start(l.tb, m.name, m.bin, "-f", s.ifname)
		m.procs = append(m.procs, p)
		if err := waitFile(ctx, "/var/run/wireguard/"+s.ifname+".sock", 5*time.Second); err != nil {
			return fmt.Errorf("wireguard-go on %s: %w", s.h, err)
		}
		cmds := [][]string{
			append([]string{"wg", "set", s.ifname, "private-key", s.key, "listen-port", m.port}, s.peerArgs...),
			{"ip", "address", "add", s.addr + "/24", "dev", s.ifname},
			{"ip", "link", "set", s.ifname, "mtu", wgMTU, "up"},
		}
		for _, c := range cmds {
			if _, err := run(ctx, s.h, c...); err != nil {
				return err
			}
		}
	}
	if _, err := run(ctx, l.a, "ip", "route", "replace", subnet24(m.target), "dev", m.ifA); err != nil {
		return err
	}
	return nil
}

func (m *wireguardGo) Down() {
	_, _ = run(context.Background(), m.l.a, "ip", "route", "del", subnet24(m.target))
	for _, p := range m.procs {
		_ = p.Stop() // wireguard-go removes its interface and socket on SIGTERM
	}
	m.procs = nil
}

// usltunMode: usltun on A routes C's usltun /24 through its TUN device;
// usltun on B exports C's whole subnet. The mirror variant dials B over
// both A—B links, one path each, and sends every frame on both.
type usltunMode struct {
	l      *lab
	bin    string
	name   string
	target string
	mirror bool
	extra  []string // extra flags for both daemons (the idle test raises --max-flows)
	env    []string // extra environment of both daemons (--usltun-env)

	procs    []*testenv.Proc
	tun      string // A's TUN device
	tunB     string // names B's control socket (B routes nothing, so has no device)
	keyFiles [2]string
}

func newUsltun(l *lab, bin string, env []string) *usltunMode {
	return &usltunMode{l: l, bin: bin, env: env, name: modeUSL, target: cUSL, tun: "tbusl" + l.tag, tunB: "usl0"}
}

func newUsltunMirror(l *lab, bin string, env []string) *usltunMode {
	return &usltunMode{l: l, bin: bin, env: env, name: modeMirror, target: cMirror, mirror: true, tun: "tbmir" + l.tag, tunB: "tbmirb"}
}

func (m *usltunMode) Name() string             { return m.name }
func (m *usltunMode) Target() string           { return m.target }
func (m *usltunMode) Daemons() []*testenv.Proc { return m.procs }

func (m *usltunMode) Up(ctx context.Context) error {
	l := m.l
	var pubs [2]string
	for i, side := range []string{"a", "b"} {
		priv, err := run(ctx, l.a, m.bin, "genkey")
		if err != nil {
			return err
		}
		pub, err := runStdin(ctx, l.a, priv, m.bin, "pubkey")
		if err != nil {
			return err
		}
		m.keyFiles[i] = filepath.Join(l.dir, m.name+"-"+side+".key")
		if err := os.WriteFile(m.keyFiles[i], []byte(priv), 0o600); err != nil {
			return fmt.Errorf("write key: %w", err)
		}
		pubs[i] = strings.TrimSpace(pub)
	}
	return m.start(ctx, pubs)
}

func (m *usltunMode) start(ctx context.Context, pubs [2]string) error {
	l := m.l
	argsB := []string{m.bin, "up", "--key", m.keyFiles[1], "--peer-key", pubs[0], "--export", netC,
		"--tun", m.tunB, "--log-level", "warn"}
	argsA := []string{m.bin, "up", "--key", m.keyFiles[0], "--peer-key", pubs[1], "--route", subnet24(m.target),
		"--tun", m.tun, "--mtu", uslMTU, "--log-level", "warn"}
	if m.mirror {
		argsB = append(argsB, "--listen", addrB+":"+mirPort, "--listen", addrB2+":"+mirPort, "--scheduler", "mirror")
		argsA = append(argsA, "--peer", addrB+":"+mirPort, "--peer", addrB2+":"+mirPort, "--scheduler", "mirror")
	} else {
		argsB = append(argsB, "--listen", addrB+":"+uslPort)
		argsA = append(argsA, "--peer", addrB+":"+uslPort)
	}
	argsB, argsA = append(argsB, m.extra...), append(argsA, m.extra...)
	pb := l.b.StartEnv(l.tb, m.name+"-b", m.env, argsB...)
	m.procs = []*testenv.Proc{pb}
	// Ask B's control socket rather than probing its port: a bare TCP
	// probe would count against B's per-address handshake rate limit.
	if err := waitStatus(ctx, l.b, m.bin, m.tunB, false, 10*time.Second); err != nil {
		return fmt.Errorf("%s on B: %w", m.name, err)
	}
	// A's daemon first: Daemons lists A, then B, as for wireguard-go.
	m.procs = []*testenv.Proc{l.a.StartEnv(l.tb, m.name+"-a", m.env, argsA...), pb}
	// Up means: a TCP connection to C through the tunnel completes (the
	// SYN-ACK comes only after B dialed C).
	if err := waitStatus(ctx, l.a, m.bin, m.tun, true, 15*time.Second); err != nil {
		return err
	}
	if m.mirror {
		return waitPaths(ctx, l.a, m.bin, m.tun, 2, 10*time.Second)
	}
	return nil
}

func (m *usltunMode) Down() {
	// A first: its SIGTERM removes the TUN device and the routes.
	for _, p := range m.procs {
		_ = p.Stop()
	}
	m.procs = nil
}

// waitStatus polls `usltun status --json` on h until the daemon answers
// and, with needUp, its session is up.
func waitStatus(ctx context.Context, h *testenv.Host, bin, tun string, needUp bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		out, err := run(ctx, h, bin, "status", "--json", "--tun", tun)
		var st struct {
			Session *struct {
				State string `json:"state"`
			} `json:"session"`
		}
		switch {
		case err != nil:
			last = err.Error()
		case json.Unmarshal([]byte(out), &st) != nil:
			last = "unparsable status: " + out
		case !needUp || st.Session != nil && st.Session.State == "up":
			return nil
		default:
			last = strings.TrimSpace(out)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("usltun status on %s: not ready within %v: %s", h, timeout, last)
}

// waitPaths polls `usltun status --json` on h until the session has n
// paths up: a mirror run with one path still connecting would measure one.
func waitPaths(ctx context.Context, h *testenv.Host, bin, tun string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	up := 0
	for time.Now().Before(deadline) {
		out, err := run(ctx, h, bin, "status", "--json", "--tun", tun)
		var st struct {
			Session *struct {
				Paths []struct {
					State string `json:"state"`
				} `json:"paths"`
			} `json:"session"`
		}
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Session != nil {
			up = 0
			for _, p := range st.Session.Paths {
				if p.State == "up" {
					up++
				}
			}
			if up >= n {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("usltun on %s: %d of %d paths up after %v", h, up, n, timeout)
}

// runStdin is run with stdin as the command's standard input.
func runStdin(ctx context.Context, h *testenv.Host, stdin string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, errb strings.Builder
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// fork inherits the namespace of the thread Do switched into h.
	if err := h.Do(cmd.Start); err != nil {
		return "", fmt.Errorf("%s: start %v: %w", h, argv, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("%s: %v: %w: %s", h, argv, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func waitFile(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
