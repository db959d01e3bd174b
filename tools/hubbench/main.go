// Command hubbench measures one usltun hub with many peers: a real
// `usltun up --config` hub on host H of a testenv lab, server C behind it,
// and this process on host L playing the peers with the usl library, each
// with its own key, its own source address and its own session. It reports
// what issue 11 asks of the hub on two cores:
//
//   - hub RSS per idle peer: (RSS with every peer connected − RSS with the
//     same table and none connected) / peers;
//   - hub RSS per idle flow: (RSS with peers × flows open and idle − RSS
//     with the peers connected) / flows, every flow verified end to end
//     first (256 random bytes echoed by C, SHA-256 compared);
//   - connect p50/p99 under that load: with every flow open and idle, 1,000
//     more connects, one at a time, round robin over the peers (each
//     verified and closed): OPEN sent → the hub dialed C and the stream is
//     accepted. The latencies of the opening burst itself (all peers at
//     once, each one flow after the other: 100 opens always outstanding,
//     so they measure the hub's connect rate by Little's law) are
//     reported beside them;
//   - the hub's CPU with every peer connected and idle (keepalives only),
//     as a share of one core, over 10 s;
//   - throughput fairness across the first --bulk peers downloading from C
//     at once for 5 s: Jain's index (Σx)² / (n Σx²), 1 when equal.
//
// It needs root (network namespaces) and a usltun binary:
//
//	go run ./tools/hubbench --usltun bin/usltun [--peers 100] [--flows 100] [--bulk 10] [--json] [--usltun-env K=V,...]
//
// Everything it creates is removed on exit, also on failure and Ctrl-C.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/usl"
)

const (
	hubAddr    = "10.50.0.1"
	serverAddr = "10.98.0.2"
	echoPort   = 9000
	sourcePort = 9001
	hubPort    = 7400
	idleWindow = 10 * time.Second
	bulkWindow = 5 * time.Second
)

// Targets of the issue.
const (
	targetPeerBytes = 1 << 20
	targetFlowBytes = 60 << 10
	targetConnect   = 5 * time.Millisecond
	targetIdleCPU   = 2.0 // % of one core
	targetJain      = 0.9
)

// Results are the figures, as --json prints them.
type Results struct {
	Command        string        `json:"command"`
	Start          time.Time     `json:"start"`
	CPUs           int           `json:"cpus"`
	LoadAvg        [2]string     `json:"load_avg"` // before, after
	Peers          int           `json:"peers"`
	FlowsPerPeer   int           `json:"flows_per_peer"`
	RSSBase        int64         `json:"rss_base_bytes"`  // table loaded, no peer connected
	RSSPeers       int64         `json:"rss_peers_bytes"` // every peer connected, idle
	RSSFlows       int64         `json:"rss_flows_bytes"` // and every flow open, idle
	PerPeer        int64         `json:"rss_per_idle_peer_bytes"`
	PerFlow        int64         `json:"rss_per_idle_flow_bytes"`
	ConnectP50     time.Duration `json:"connect_p50"` // one at a time, beside the idle flows
	ConnectP99     time.Duration `json:"connect_p99"`
	ConnectMax     time.Duration `json:"connect_max"`
	Probes         int           `json:"connect_probes"`
	BurstP50       time.Duration `json:"burst_connect_p50"` // while every peer opens its flows at once
	BurstP99       time.Duration `json:"burst_connect_p99"`
	BurstRate      float64       `json:"burst_connects_per_s"`
	FlowsVerified  int           `json:"flows_verified"`
	IdleCPUPercent float64       `json:"idle_cpu_percent_of_one_core"`
	BulkPeers      int           `json:"bulk_peers"`
	BulkBytes      []int64       `json:"bulk_bytes"`
	Jain           float64       `json:"jain_index"`
	Elapsed        string        `json:"elapsed"`
}

func main() {
	usltun := flag.String("usltun", "", "the usltun binary to run as the hub (make build: bin/usltun)")
	peers := flag.Int("peers", 100, "peers to play, each with its own key, address and session")
	flows := flag.Int("flows", 100, "flows each peer opens and keeps idle")
	bulk := flag.Int("bulk", 10, "peers downloading at once for the fairness figure")
	asJSON := flag.Bool("json", false, "print the figures as JSON")
	verbose := flag.Bool("v", false, "log the lab's steps")
	hubEnv := flag.String("usltun-env", "", "extra environment of the hub daemon, K=V,K=V (e.g. GOMAXPROCS=2): to measure runtime settings")
	flag.Parse()
	if *usltun == "" || *peers < 1 || *flows < 1 || *bulk < 1 || *bulk > *peers || *peers > 250 {
		fmt.Fprintln(os.Stderr, "hubbench: give --usltun PATH (make build), --peers 1..250, --flows ≥ 1 and --bulk 1..peers")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "hubbench: needs root for network namespaces: run it with sudo")
		os.Exit(2)
	}
	env := strings.FieldsFunc(*hubEnv, func(r rune) bool { return r == ',' })
	res, err := run(*usltun, env, *peers, *flows, *bulk, *verbose)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hubbench: %v\n", err)
		os.Exit(1)
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(res)
		return
	}
	printTable(os.Stdout, res)
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "hubbench: "+format+"\n", args...)
}

// peer is one played peer.
type peer struct {
	key   usl.PrivateKey
	addr  netip.Addr // its source address on L
	s     *usl.Session
	flows []*usl.Stream
}

func run(bin string, env []string, npeers, nflows, nbulk int, verbose bool) (res *Results, err error) {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tb := testenv.NewLab(log)
	defer tb.Close()
	defer tb.Recover(&err)

	res = &Results{Command: "go run ./tools/hubbench " + strings.Join(os.Args[1:], " "), Start: time.Now(),
		CPUs: runtime.NumCPU(), Peers: npeers, FlowsPerPeer: nflows, BulkPeers: nbulk}
	res.LoadAvg[0] = loadAvg()
	dir, err := os.MkdirTemp("", "hubbench-")
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })

	H, C, L := testenv.NewHost(tb, "hub"), testenv.NewHost(tb, "c"), testenv.NewHost(tb, "peers")
	testenv.Link(tb, H, C, "10.98.0.1/24", serverAddr+"/24")
	C.AddRoute("default", "10.98.0.1")
	ps := make([]*peer, npeers)
	var addrs []string
	for i := range ps {
		k, err := usl.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		a := netip.AddrFrom4([4]byte{10, 50, byte(1 + i/250), byte(1 + i%250)})
		ps[i] = &peer{key: k, addr: a}
		addrs = append(addrs, a.String()+"/16")
	}
	testenv.Link(tb, L, H, strings.Join(addrs, ","), hubAddr+"/16")
	// A plain copy loop: io.Copy between TCP sockets would splice(2)
	// through a pipe pair held for each idle connection, 2 descriptors per
	// flow in this process.
	if err := serve(tb, C, echoPort, func(c net.Conn) {
		buf := make([]byte, 512)
		io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
	}); err != nil {
		return nil, err
	}
	chunk := make([]byte, 64<<10)
	if err := serve(tb, C, sourcePort, func(c net.Conn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	}); err != nil {
		return nil, err
	}

	hubKey, err := usl.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	keyFile, conf := filepath.Join(dir, "hub.key"), filepath.Join(dir, "hub.toml")
	if err := os.WriteFile(keyFile, []byte(hubKey.String()+"\n"), 0o600); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "key = %q\nlisten = [\"%s:%d\"]\nexport = [\"10.98.0.0/24\"]\nlog_level = \"warn\"\n", keyFile, hubAddr, hubPort)
	for i, p := range ps {
		fmt.Fprintf(&b, "\n[[peer]]\nname = \"peer-%03d\"\npublic_key = %q\n", i+1, p.key.Public())
	}
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	hub := H.StartEnv(tb, "hub", env, bin, "up", "--config", conf, "--control", filepath.Join(dir, "hub.sock"))
	if err := H.WaitDial("tcp", fmt.Sprintf("%s:%d", hubAddr, hubPort), 15*time.Second); err != nil {
		return nil, fmt.Errorf("hub not listening: %w\n%s", err, hub.Output())
	}
	time.Sleep(2 * time.Second) // let the runtime settle before the baseline
	if res.RSSBase, err = hub.RSS(); err != nil {
		return nil, err
	}

	progress("connecting %d peers", npeers)
	for _, p := range ps {
		cfg := usl.Config{PrivateKey: p.key, PeerKeys: []usl.PublicKey{hubKey.Public()}, Dial: dialFrom(L, p.addr)}
		if p.s, err = usl.Dial(ctx, fmt.Sprintf("%s:%d", hubAddr, hubPort), cfg); err != nil {
			return nil, err
		}
		tb.Cleanup(func() { p.s.Close() })
	}
	if err := waitUp(ctx, ps, 30*time.Second); err != nil {
		return nil, err
	}
	time.Sleep(3 * time.Second)
	if res.RSSPeers, err = hub.RSS(); err != nil {
		return nil, err
	}
	res.PerPeer = (res.RSSPeers - res.RSSBase) / int64(npeers)

	progress("measuring the hub's CPU with %d idle peers for %v", npeers, idleWindow)
	cpu0, err := hub.CPUTime()
	if err != nil {
		return nil, err
	}
	time.Sleep(idleWindow)
	cpu1, err := hub.CPUTime()
	if err != nil {
		return nil, err
	}
	res.IdleCPUPercent = 100 * float64(cpu1-cpu0) / float64(idleWindow)

	progress("opening %d × %d flows", npeers, nflows)
	t0 := time.Now()
	lat, err := openFlows(ctx, ps, nflows)
	if err != nil {
		return nil, fmt.Errorf("%w\nhub log (tail):\n%s", err, tail(hub.Output(), 30))
	}
	res.BurstRate = float64(len(lat)) / time.Since(t0).Seconds()
	res.FlowsVerified = len(lat)
	slices.Sort(lat)
	res.BurstP50, res.BurstP99 = lat[len(lat)/2], lat[len(lat)*99/100]
	time.Sleep(3 * time.Second)
	if res.RSSFlows, err = hub.RSS(); err != nil {
		return nil, err
	}
	res.PerFlow = (res.RSSFlows - res.RSSPeers) / int64(npeers*nflows)
	progress("1000 connects one at a time beside the %d idle flows", npeers*nflows)
	probe, err := probeConnects(ctx, ps, 1000)
	if err != nil {
		return nil, err
	}
	res.Probes = len(probe)
	slices.Sort(probe)
	res.ConnectP50, res.ConnectP99, res.ConnectMax = probe[len(probe)/2], probe[len(probe)*99/100], probe[len(probe)-1]
	for _, p := range ps {
		for _, st := range p.flows {
			st.Close()
		}
	}

	progress("%d peers downloading at once for %v", nbulk, bulkWindow)
	if res.BulkBytes, err = bulkFairness(ctx, ps[:nbulk]); err != nil {
		return nil, err
	}
	res.Jain = jain(res.BulkBytes)
	res.LoadAvg[1] = loadAvg()
	res.Elapsed = time.Since(res.Start).Round(time.Second).String()
	if hub.Running() {
		return res, nil
	}
	return nil, fmt.Errorf("the hub exited during the run:\n%s", hub.Output())
}

// serve accepts on C's port and runs handle for each connection.
func serve(tb testenv.TB, h *testenv.Host, port int, handle func(net.Conn)) error {
	ln, err := h.Listen("tcp", fmt.Sprintf("%s:%d", serverAddr, port))
	if err != nil {
		return err
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return nil
}

// dialFrom dials from src inside h: each peer has its own address, as
// real peers do, so the hub's per-source handshake limit sees 100 sources.
func dialFrom(h *testenv.Host, src netip.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.Do(func() error {
			var err error
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func waitUp(ctx context.Context, ps []*peer, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, p := range ps {
		for p.s.Stats().State != usl.Up {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("peer %s not up within %v: %v", p.addr, limit, p.s.Stats().State)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// openFlows opens nflows echo flows per peer, all peers at once, and
// verifies each: 256 random bytes out, the same bytes back (SHA-256). It
// returns the connect latencies.
func openFlows(ctx context.Context, ps []*peer, nflows int) ([]time.Duration, error) {
	desc := flow.Dest{Proto: flow.TCP, Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", serverAddr, echoPort))}.Marshal()
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, back := make([]byte, 256), make([]byte, 256)
			for i := 0; i < nflows; i++ {
				st, d, err := openVerified(ctx, p.s, desc, out, back)
				if err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("peer %s flow %d: %w", p.addr, i, err))
					return
				}
				p.flows = append(p.flows, st)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, err
	}
	return lat, nil
}

// probeConnects opens n flows one after the other, round robin over the
// peers, verifies and closes each, and returns their connect latencies.
func probeConnects(ctx context.Context, ps []*peer, n int) ([]time.Duration, error) {
	desc := flow.Dest{Proto: flow.TCP, Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", serverAddr, echoPort))}.Marshal()
	out, back := make([]byte, 256), make([]byte, 256)
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		p := ps[i%len(ps)]
		st, d, err := openVerified(ctx, p.s, desc, out, back)
		if err != nil {
			return nil, fmt.Errorf("probe %d from peer %s: %w", i, p.addr, err)
		}
		st.Close()
		lat = append(lat, d)
	}
	return lat, nil
}

// openVerified opens a flow to desc, timing the connect, and checks it
// with one echo.
func openVerified(ctx context.Context, s *usl.Session, desc, out, back []byte) (*usl.Stream, time.Duration, error) {
	octx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t0 := time.Now()
	st, err := s.OpenStream(octx, desc)
	d := time.Since(t0)
	if err != nil {
		return nil, d, err
	}
	if err := echo(st, out, back); err != nil {
		st.Reset(usl.ResetAborted)
		return nil, d, err
	}
	return st, d, nil
}

func echo(st *usl.Stream, out, back []byte) error {
	rand.Read(out)
	if _, err := st.Write(out); err != nil {
		return err
	}
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st, back); err != nil {
		return err
	}
	st.SetReadDeadline(time.Time{})
	if sha256.Sum256(out) != sha256.Sum256(back) {
		return errors.New("echo differs (SHA-256)")
	}
	return nil
}

// bulkFairness has each peer download from C's source at once and counts
// the bytes each got in bulkWindow, after a second of warm-up.
func bulkFairness(ctx context.Context, ps []*peer) ([]int64, error) {
	desc := flow.Dest{Proto: flow.TCP, Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", serverAddr, sourcePort))}.Marshal()
	counts := make([]atomic.Int64, len(ps))
	var counting atomic.Bool
	var wg sync.WaitGroup
	errs := make([]error, len(ps))
	stop := make(chan struct{})
	for i, p := range ps {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := p.s.OpenStream(octx, desc)
		cancel()
		if err != nil {
			close(stop)
			return nil, fmt.Errorf("bulk flow of peer %s: %w", p.addr, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			buf := make([]byte, 64<<10)
			for {
				select {
				case <-stop:
					st.Reset(usl.ResetAborted)
					return
				default:
				}
				n, err := st.Read(buf)
				if counting.Load() {
					counts[i].Add(int64(n))
				}
				if err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	time.Sleep(time.Second)
	counting.Store(true)
	time.Sleep(bulkWindow)
	counting.Store(false)
	close(stop)
	wg.Wait()
	out := make([]int64, len(ps))
	for i := range out {
		out[i] = counts[i].Load()
		if errs[i] != nil && out[i] == 0 {
			return nil, fmt.Errorf("bulk flow of peer %s: %w", ps[i].addr, errs[i])
		}
	}
	return out, nil
}

// jain is Jain's fairness index of xs.
func jain(xs []int64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += float64(x)
		sq += float64(x) * float64(x)
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(xs)) * sq)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func printTable(w io.Writer, r *Results) {
	var total int64
	for _, x := range r.BulkBytes {
		total += x
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "hub with %d peers × %d flows, %d CPUs, load average %s → %s, %s\n\n", r.Peers, r.FlowsPerPeer, r.CPUs, r.LoadAvg[0], r.LoadAvg[1], r.Elapsed)
	fmt.Fprintf(&b, "| figure | measured | target | met |\n|---|---|---|---|\n")
	fmt.Fprintf(&b, "| hub RSS per idle peer | %.1f KiB | ≤ 1 MiB | %s |\n", float64(r.PerPeer)/1024, verdict(r.PerPeer <= targetPeerBytes))
	fmt.Fprintf(&b, "| hub RSS per idle flow | %.1f KiB | ≤ 60 KiB | %s |\n", float64(r.PerFlow)/1024, verdict(r.PerFlow <= targetFlowBytes))
	fmt.Fprintf(&b, "| connect p50 / p99 (max), %d one at a time beside %d idle flows | %v / %v (%v) | p99 ≤ 5 ms | %s |\n", r.Probes, r.FlowsVerified,
		r.ConnectP50.Round(time.Microsecond), r.ConnectP99.Round(time.Microsecond), r.ConnectMax.Round(time.Microsecond), verdict(r.ConnectP99 <= targetConnect))
	fmt.Fprintf(&b, "| connect p50 / p99 while all %d peers open their %d flows at once | %v / %v, %.0f connects/s | (none) | |\n", r.Peers, r.FlowsVerified,
		r.BurstP50.Round(time.Microsecond), r.BurstP99.Round(time.Microsecond), r.BurstRate)
	fmt.Fprintf(&b, "| hub CPU, %d idle peers | %.2f %% of one core | ≤ 2 %% | %s |\n", r.Peers, r.IdleCPUPercent, verdict(r.IdleCPUPercent <= targetIdleCPU))
	fmt.Fprintf(&b, "| Jain's index, %d bulk peers (%.0f Mbit/s in all) | %.3f | ≥ 0.9 | %s |\n", r.BulkPeers, float64(total)*8/bulkWindow.Seconds()/1e6, r.Jain, verdict(r.Jain >= targetJain))
	fmt.Fprintf(&b, "\nRSS: %.1f MiB with the table and no peer, %.1f MiB with the peers connected, %.1f MiB with the flows open.\n",
		float64(r.RSSBase)/(1<<20), float64(r.RSSPeers)/(1<<20), float64(r.RSSFlows)/(1<<20))
	fmt.Fprintf(&b, "Command: %s\n", r.Command)
	w.Write(b.Bytes())
}
