// Command tunbench measures usltun side by side with direct routing and
// two wireguard-go builds (Debian's of 2022, kept as a historical row, and
// the current one, built from the Go module proxy: wgbuild.go) on one
// A—B—C lab of network namespaces (A client, B gateway, C server; A—B and
// B—C veth links, and a second A—B link for the mirror part), in one run:
//
//   - TCP throughput A→C with 1 and 4 streams (iperf3, median of --repeat
//     runs), and the CPU the tunnel daemons use per Gbit/s (utime+stime
//     from /proc/<pid>/stat);
//   - request/response latency of 64-byte messages, p50 and p99: sockperf
//     TCP ping-pong (round trips) and loadgen (every byte checked);
//   - connect() latency, p50 and p99, against one A—B round trip;
//   - RSS of the daemons with 1,000 and 10,000 idle flows open;
//   - mirror: usltun's CPU per Gbit/s mirroring over two A—B paths
//     against one path (1 stream, runs alternating);
//   - recovery: heal of a 20 s blackhole of A—B during a slow steady
//     transfer → first new byte at C (usltun and wireguard-go).
//
// All three paths are up at once (each mode reaches its own address on C),
// and the throughput runs alternate between the modes, so other work on
// the machine weighs on every mode alike.
//
// It prints a markdown table with ratios against direct routing and
// wireguard-go and the targets of the issue; --json prints the raw
// figures. It needs root, iperf3, sockperf, wireguard-go, wg and go. Everything it
// creates (namespaces, processes, keys) is removed on exit, also on
// failure and Ctrl-C.
//
//	go run ./tools/tunbench [--quick] [--only throughput,latency,connect,idle,mirror,recovery] [--modes direct,wireguard-go-2022,wireguard-go-current,usltun] [--json]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/usltun/usltun/testenv"
)

// Parts of the benchmark, selectable with --only.
var allParts = []string{"throughput", "latency", "connect", "idle", "mirror", "recovery"}

type options struct {
	only      []string
	modes     []string
	quick     bool
	json      bool
	out       string
	usltun    string
	wgCurrent string        // current wireguard-go binary; "" builds it
	wgOld     string        // Debian's wireguard-go
	uslEnv    []string      // extra environment of the usltun daemons
	duration  time.Duration // per iperf3 run
	repeat    int           // iperf3 runs per figure; the median counts
	rrTime    time.Duration
	connects  int
	idleFlows []int
	blackhole time.Duration
	recCap    time.Duration
	verbose   bool
	perfDir   string
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("tunbench", flag.ContinueOnError)
	o := &options{}
	only := fs.String("only", strings.Join(allParts, ","), "parts to run: "+strings.Join(allParts, ","))
	modes := fs.String("modes", strings.Join(tableModes[:], ","), "modes to compare")
	fs.BoolVar(&o.quick, "quick", false, "short runs (2 s throughput, 100/1000 idle flows, 5 s blackhole): a smoke test of the harness, not figures to publish")
	fs.BoolVar(&o.json, "json", false, "print the results as JSON instead of the table")
	fs.StringVar(&o.out, "out", "", "also write the JSON results to this file")
	fs.StringVar(&o.usltun, "usltun", "", "usltun binary (default: go build ./cmd/usltun into a temporary directory)")
	fs.StringVar(&o.wgCurrent, "wireguard-go", "", "current wireguard-go binary (default: go install "+wgModule+"@"+wgVersion+" into the user's cache directory, once)")
	uslEnv := fs.String("usltun-env", "", "extra environment of the usltun daemons, K=V,K=V (e.g. GOGC=200,GOMAXPROCS=1): to measure runtime settings")
	fs.StringVar(&o.wgOld, "wireguard-go-2022", "wireguard-go", "Debian's wireguard-go (0.0.20220316), the historical row")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "length of each iperf3 run")
	fs.IntVar(&o.repeat, "repeat", 3, "iperf3 runs per throughput figure; the table shows the median run")
	fs.DurationVar(&o.rrTime, "rr-time", 3*time.Second, "length of the request/response run")
	fs.IntVar(&o.connects, "connects", 200, "connects per mode for connect() latency")
	idle := fs.String("idle-flows", "1000,10000", "idle-flow levels for the memory test, ascending")
	fs.DurationVar(&o.blackhole, "blackhole", 20*time.Second, "blackhole length for the recovery test")
	fs.DurationVar(&o.recCap, "recovery-cap", 60*time.Second, "longest wait for the first byte after the heal")
	fs.BoolVar(&o.verbose, "v", false, "log the lab's and daemons' output")
	fs.StringVar(&o.perfDir, "perf", "", "record a `perf` profile of the daemons during each throughput and latency run into this directory (perf-<mode>-<streams|rr>.data)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.repeat < 1 {
		return nil, errors.New("--repeat must be at least 1")
	}
	o.only = splitList(*only)
	for _, p := range o.only {
		if !slices.Contains(allParts, p) {
			return nil, fmt.Errorf("--only: unknown part %q (parts: %s)", p, strings.Join(allParts, ","))
		}
	}
	o.uslEnv = splitList(*uslEnv)
	for _, kv := range o.uslEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("--usltun-env: %q is not K=V", kv)
		}
	}
	o.modes = splitList(*modes)
	for _, m := range o.modes {
		if !slices.Contains(tableModes[:], m) {
			return nil, fmt.Errorf("--modes: unknown mode %q", m)
		}
	}
	for _, f := range splitList(*idle) {
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n <= 0 {
			return nil, fmt.Errorf("--idle-flows: %q is not a positive count", f)
		}
		if len(o.idleFlows) > 0 && n <= o.idleFlows[len(o.idleFlows)-1] {
			return nil, errors.New("--idle-flows: levels must be ascending")
		}
		o.idleFlows = append(o.idleFlows, n)
	}
	if o.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["duration"] {
			o.duration = 2 * time.Second
		}
		if !set["repeat"] {
			o.repeat = 1
		}
		if !set["rr-time"] {
			o.rrTime = time.Second
		}
		if !set["connects"] {
			o.connects = 50
		}
		if !set["idle-flows"] {
			o.idleFlows = []int{100, 1000}
		}
		if !set["blackhole"] {
			o.blackhole = 5 * time.Second
		}
		if !set["recovery-cap"] {
			o.recCap = 45 * time.Second
		}
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (o *options) part(name string) bool { return slices.Contains(o.only, name) }

func main() {
	if len(os.Args) == 3 && os.Args[1] == echoServerFlag {
		if err := runEchoServer(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "tunbench:", err)
		os.Exit(2)
	}
	res, err := benchmark(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tunbench:", err)
		os.Exit(1)
	}
	if err := report(o, res); err != nil {
		fmt.Fprintln(os.Stderr, "tunbench:", err)
		os.Exit(1)
	}
}

// benchmark builds the lab, runs the selected parts and returns the
// results; a part that fails is recorded in its mode's Errors, while lab
// set-up failures and interrupts are returned.
func benchmark(o *options) (res *Results, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root: it builds network namespaces (sudo go run ./tools/tunbench)")
	}
	need := []string{"iperf3", "wg", "ip", "go"}
	if o.part("latency") {
		need = append(need, "sockperf")
	}
	if slices.Contains(o.modes, modeWGOld) {
		need = append(need, o.wgOld)
	}
	for _, bin := range need {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found: run `make deps` (apt-get install iperf3 sockperf wireguard-go wireguard-tools iproute2)", bin)
		}
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tb := testenv.NewLab(log)
	// Close removes namespaces and kills processes; it runs on every exit
	// path, including a Fatalf panic (recovered into err below) and Ctrl-C.
	defer tb.Close()
	defer tb.Recover(&err)

	res = &Results{
		Command: "go run ./tools/tunbench " + strings.Join(os.Args[1:], " "),
		Start:   time.Now(), CPUs: runtime.NumCPU(), Kernel: kernelRelease(),
	}
	res.LoadAvg[0] = loadAvg()
	var load float64
	if _, err := fmt.Sscan(res.LoadAvg[0], &load); err == nil && load > float64(res.CPUs) {
		progress("warning: load average %.1f on %d CPUs: other work shares the cores, so the figures will be low and noisy", load, res.CPUs)
	}
	var modes []mode
	l, err := newLab(tb)
	if err != nil {
		return nil, err
	}
	res.WGVersions = map[string]string{}
	var uslBin string
	for _, name := range o.modes {
		switch name {
		case modeDirect:
			modes = append(modes, &direct{l: l})
		case modeWGOld, modeWG:
			bin, flavor := o.wgOld, wgOld
			if name == modeWG {
				flavor = wgCur
				if bin, err = wireguardGoCurrent(ctx, o.wgCurrent); err != nil {
					fmt.Fprintf(os.Stderr, "tunbench: %s skipped: %v\n", name, err)
					res.Modes = append(res.Modes, &ModeResult{Mode: name, Errors: []string{err.Error()}})
					continue
				}
			}
			res.WGVersions[name] = wgVersionLine(ctx, bin)
			modes = append(modes, newWireguardGo(l, flavor, bin))
		case modeUSL:
			bin, version, err := usltunBinary(ctx, o.usltun, l.dir)
			if err != nil {
				fmt.Fprintf(os.Stderr, "tunbench: usltun skipped: %v\n", err)
				res.Modes = append(res.Modes, &ModeResult{Mode: modeUSL, Errors: []string{err.Error()}})
				continue
			}
			res.Usltun = version
			if o.usltun == "" {
				res.Commit = gitDescribe(ctx)
			}
			uslBin = bin
			modes = append(modes, newUsltun(l, bin, o.uslEnv))
		}
	}
	iperf := l.c.Start(tb, "iperf3", "iperf3", "--server", "--port", fmt.Sprint(bulkPort))
	defer iperf.Kill()
	if o.part("connect") {
		c, err := measureConnect(ctx, l.a, l.b, fmt.Sprintf("%s:%d", addrB, connectPort), o.connects)
		if err != nil {
			return nil, fmt.Errorf("A—B connect baseline: %w", err)
		}
		res.ABConnect = &c
	}
	runModes(ctx, o, l, modes, uslBin, res)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("interrupted: %w", err)
	}
	res.Elapsed = time.Since(res.Start).Round(time.Second).String()
	res.LoadAvg[1] = loadAvg()
	return res, nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func report(o *options, res *Results) error {
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("json: %w", err)
	}
	if o.out != "" {
		if err := os.WriteFile(o.out, append(js, '\n'), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", o.out, err)
		}
	}
	if o.json {
		fmt.Println(string(js))
		return nil
	}
	fmt.Print(renderReport(res))
	return nil
}

// renderReport is the table plus the context a reader needs to trust it.
func renderReport(res *Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "`%s` — %s, kernel %s, %d CPUs, usltun %s (tree %s), wireguard-go 2022 %s, current %s, took %s, load average %s → %s\n\n",
		res.Command, res.Start.UTC().Format("2006-01-02 15:04 MST"), res.Kernel, res.CPUs, orDash(res.Usltun), orDash(res.Commit),
		orDash(res.WGVersions[modeWGOld]), orDash(res.WGVersions[modeWG]), res.Elapsed, orDash(res.LoadAvg[0]), orDash(res.LoadAvg[1]))
	b.WriteString(renderTable(res.rows()))
	if res.ABConnect != nil {
		fmt.Fprintf(&b, "\nA—B round trip (connect() A→B, p50): %.0f µs.\n", us(res.ABConnect.P50))
	}
	if mr := res.Mirror; mr != nil {
		for _, t := range []struct {
			name string
			t    Throughput
		}{{"usltun, 1 path", mr.One}, {"usltun mirror, 2 paths", mr.Two}} {
			fmt.Fprintf(&b, "mirror part, %s: runs %s Gbit/s; median run: daemons %.2f cores, %.3f cores per Gbit/s.\n",
				t.name, floats(t.t.AllGbps), t.t.DaemonCores, t.t.CoresPerGbps)
		}
		for _, e := range mr.Errors {
			fmt.Fprintf(&b, "mirror error: %s\n", e)
		}
	}
	for _, m := range res.Modes {
		if s := m.Sockperf; s != nil {
			fmt.Fprintf(&b, "%s sockperf: %d round trips.\n", m.Mode, s.Count)
		}
		for _, t := range []*Throughput{m.Single, m.Multi} {
			if t != nil {
				fmt.Fprintf(&b, "%s, %d stream%s: runs %s Gbit/s; median run: machine CPU busy %.0f%% (all cores), daemons %.2f cores, %d retransmits.\n",
					m.Mode, t.Streams, plural(t.Streams), floats(t.AllGbps), 100*t.MachineBusy, t.DaemonCores, t.Retransmits)
			}
		}
		if m.Idle != nil {
			fmt.Fprintf(&b, "%s idle flows: baseline %.0f MiB; %s; ≈ %.1f KiB per flow.\n", m.Mode,
				float64(m.Idle.Baseline)/(1<<20), idleText(m.Idle), m.Idle.BytesPerFlow/1024)
		}
		if m.Recovery != nil {
			fmt.Fprintf(&b, "%s recovery transfer: %d bytes at C, verified (count and SHA-256): %v.\n", m.Mode, m.Recovery.Bytes, m.Recovery.Verified)
		}
		for _, e := range m.Errors {
			fmt.Fprintf(&b, "%s error: %s\n", m.Mode, e)
		}
	}
	return b.String()
}

func idleText(i *Idle) string {
	var parts []string
	for _, l := range i.Levels {
		parts = append(parts, fmt.Sprintf("%d flows: %.0f MiB (per daemon %s), %d alive after sampling, opened in %v",
			l.Flows, float64(l.RSSTotal)/(1<<20), mibList(l.RSS), l.Alive, l.OpenTime.Round(10*time.Millisecond)))
	}
	return strings.Join(parts, "; ")
}

func mibList(v []int64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.0f", float64(x)/(1<<20)))
	}
	return strings.Join(s, "+")
}

func floats(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// loadAvg is the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func gitDescribe(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// wgVersionLine is the first line of `bin --version`.
func wgVersionLine(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}

// usltunBinary returns the binary to benchmark and its version line: the
// given path, or a fresh build of ./cmd/usltun.
func usltunBinary(ctx context.Context, path, dir string) (string, string, error) {
	if path == "" {
		path = filepath.Join(dir, "usltun")
		// From the module root, so tunbench (and its test) may run from any
		// directory of the repository.
		gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
		if err != nil || len(strings.TrimSpace(string(gomod))) == 0 || strings.TrimSpace(string(gomod)) == os.DevNull {
			return "", "", fmt.Errorf("not inside the usltun module (run tunbench from the repository, or pass --usltun): %v", err)
		}
		cmd := exec.CommandContext(ctx, "go", "build", "-o", path, "./cmd/usltun")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build ./cmd/usltun in %s (or pass --usltun): %w\n%s", cmd.Dir, err, out)
		}
	}
	out, err := exec.CommandContext(ctx, path, "version").Output()
	if err != nil {
		return "", "", fmt.Errorf("%s version: %w", path, err)
	}
	return path, strings.TrimSpace(string(out)), nil
}
