package main

import (
	"math"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseProcStatCPU(t *testing.T) {
	// A real line shape; the command name contains a space and a ')', which
	// naive splitting would miscount.
	line := "4242 (usl tun) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 731 269 0 0 20 0 9 0 123456 1234567 890 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0\n"
	got, err := parseProcStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if got != 731+269 {
		t.Fatalf("utime+stime = %d, want %d", got, 731+269)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 5 0"} {
		if _, err := parseProcStatCPU(bad); err == nil {
			t.Errorf("parseProcStatCPU(%q): no error", bad)
		}
	}
}

// TestCPUTimeSelf checks the /proc reading end to end: burning CPU in this
// process must show up in its own utime+stime. It spins until getrusage
// (the kernel's own count, read another way) has seen 150 ms, so a loaded
// machine that gives the test little CPU makes it slower, not wrong.
func TestCPUTimeSelf(t *testing.T) {
	before, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r0 := rusageCPU(t)
	x := 1.0
	for deadline := time.Now().Add(20 * time.Second); rusageCPU(t)-r0 < 150*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatal("the process got less than 150 ms of CPU in 20 s")
		}
		for range 1000 {
			x = math.Sqrt(x + 1)
		}
	}
	after, err := cpuTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < 100*time.Millisecond || d > 2*time.Second {
		t.Fatalf("150 ms of CPU by getrusage counted as %v in /proc (x=%v)", d, x)
	}
}

func rusageCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const iperfJSON = `{
  "start": {"connected": [{"socket": 5}]},
  "intervals": [],
  "end": {
    "sum_sent": {"start": 0, "end": 5.0, "seconds": 5.0, "bytes": 7500000000, "bits_per_second": 12000000000, "retransmits": 17, "sender": true},
    "sum_received": {"start": 0, "end": 5.0, "seconds": 5.0, "bytes": 7490000000, "bits_per_second": 11984000000, "sender": true}
  }
}`

func TestParseIperf(t *testing.T) {
	s, err := parseIperf([]byte(iperfJSON))
	if err != nil {
		t.Fatal(err)
	}
	if s.BitsPerSecond != 11984000000 || s.Bytes != 7490000000 || s.Retransmits != 17 {
		t.Fatalf("got %+v", s)
	}
	if _, err := parseIperf([]byte(`{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`)); err == nil ||
		!strings.Contains(err.Error(), "Connection refused") {
		t.Fatalf("iperf3 error not reported: %v", err)
	}
	if _, err := parseIperf([]byte(`{"end":{}}`)); err == nil {
		t.Fatal("empty result accepted")
	}
	if _, err := parseIperf([]byte(`iperf3: error`)); err == nil {
		t.Fatal("non-JSON accepted")
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	in := ms(9, 1, 8, 2, 7, 3, 6, 4, 5, 10) // 1..10 shuffled
	for _, c := range []struct {
		q    float64
		want int
	}{{0, 1}, {0.1, 1}, {0.5, 5}, {0.51, 6}, {0.9, 9}, {0.99, 10}, {1, 10}} {
		if got := percentile(in, c.q); got != time.Duration(c.want)*time.Millisecond {
			t.Errorf("p%v = %v, want %dms", c.q*100, got, c.want)
		}
	}
	if in[0] != 9*time.Millisecond {
		t.Error("percentile sorted its input in place")
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty input")
	}
}

func TestRenderTable(t *testing.T) {
	res := &Results{
		ABConnect: &Connect{P50: 40 * time.Microsecond},
		Modes: []*ModeResult{
			{Mode: modeDirect, Single: &Throughput{Gbps: 12}, Multi: &Throughput{Gbps: 32},
				RR:       &RR{P50: 29 * time.Microsecond, P99: 75 * time.Microsecond},
				Sockperf: &Sockperf{P50: 50 * time.Microsecond, P99: 100 * time.Microsecond},
				Connect:  &Connect{P50: 100 * time.Microsecond, P99: 300 * time.Microsecond}},
			{Mode: modeWGOld, Single: &Throughput{Gbps: 0.4, DaemonCores: 1, CoresPerGbps: 2.5},
				Recovery: &Recovery{Blackhole: 20 * time.Second, Delay: 25 * time.Second}},
			{Mode: modeWG, Single: &Throughput{Gbps: 2, DaemonCores: 1, CoresPerGbps: 0.5}, Multi: &Throughput{Gbps: 2.5}},
			{Mode: modeUSL, Single: &Throughput{Gbps: 3, DaemonCores: 0.6, CoresPerGbps: 0.2}, Multi: &Throughput{Gbps: 6},
				RR:       &RR{P50: 200 * time.Microsecond, P99: 400 * time.Microsecond},
				Sockperf: &Sockperf{P50: 90 * time.Microsecond, P99: 300 * time.Microsecond},
				Connect:  &Connect{P50: 150 * time.Microsecond, P99: 1200 * time.Microsecond},
				Idle:     &Idle{Levels: []IdleLevel{{Flows: 10000, RSSTotal: 300 << 20}, {Flows: 1000, RSSTotal: 70 << 20}}},
				Recovery: &Recovery{Blackhole: 20 * time.Second, Delay: 300 * time.Millisecond}},
		},
		Mirror: &Mirror{One: Throughput{Gbps: 3, CoresPerGbps: 0.3}, Two: Throughput{Gbps: 2, CoresPerGbps: 0.45}},
	}
	table := renderTable(res.rows())
	lines := strings.Split(strings.TrimSpace(table), "\n")
	find := func(prefix string) []string {
		t.Helper()
		for _, l := range lines {
			if strings.HasPrefix(l, "| "+prefix) {
				cells := splitRow(l)
				if len(cells) != 9 {
					t.Fatalf("%d cells in %q", len(cells), l)
				}
				return cells
			}
		}
		t.Fatalf("no row %q in\n%s", prefix, table)
		return nil
	}
	want := map[string][]string{
		// figure prefix: direct, wg 2022, wg current, usltun, ÷direct, ÷wg current, met
		"TCP throughput A→C, 1 stream":       {"12.00", "0.40", "2.00", "3.00", "0.25×", "1.50×", "yes"},
		"TCP throughput A→C, 4 streams":      {"32.00", "–", "2.50", "6.00", "0.19×", "2.40×", "no"},
		"daemon CPU per Gbit/s, 1":           {"–", "2.500", "0.500", "0.200", "–", "0.40×", "yes"},
		"sockperf TCP 64 B round trip, p50":  {"50", "–", "–", "90", "1.80×", "–", "yes"},
		"sockperf TCP 64 B round trip, p99":  {"100", "–", "–", "300", "3.00×", "–", "no"},
		"loadgen request/response 64 B, p50": {"29", "–", "–", "200", "6.90×", "–", "yes"},
		"loadgen request/response 64 B, p99": {"75", "–", "–", "400", "5.33×", "–", ""},
		"connect() p50":                      {"100", "–", "–", "150", "1.50×", "–", "yes"},
		"connect() p99":                      {"300", "–", "–", "1200", "4.00×", "–", "no"},
		"RSS with 1000 idle flows":           {"–", "–", "–", "70", "", "", "no"},
		"RSS with 10000 idle flows":          {"–", "–", "–", "300", "", "", "yes"},
		"mirror over 2 paths":                {"–", "–", "–", "1.50×", "", "", "yes"},
		"heal of a 20s blackhole → first":    {"–", "25.00", "–", "0.30", "–", "–", "yes"},
	}
	for prefix, w := range want {
		c := find(prefix)
		got := []string{c[1], c[2], c[3], c[4], c[5], c[6], c[8]}
		if strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("%s: got %q, want %q", prefix, got, w)
		}
	}
	res.mode(modeUSL).Idle.Levels = append(res.mode(modeUSL).Idle.Levels, IdleLevel{Flows: 2000, RSSTotal: 100 << 20})
	if c := find2(t, renderTable(res.rows()), "RSS with 2000"); c[8] != "" || !strings.Contains(c[7], "targets at") {
		t.Errorf("a level without a target got a verdict: %q", c)
	}
	if c := find("connect() p50"); !strings.Contains(c[7], "(160 µs)") {
		t.Errorf("connect target %q does not name direct + 1.5 A—B round trips = 160 µs", c[7])
	}
	if strings.Contains(table, "RSS with 100 idle") || len(lines) != 2+13 {
		t.Errorf("%d lines; want the 13 rows with figures only (no 4-stream CPU):\n%s", len(lines), table)
	}
	if lines[1] != "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |" {
		t.Errorf("separator %q", lines[1])
	}
	// Idle levels come out ascending even if a mode listed them otherwise.
	if i, j := strings.Index(table, "1000 idle"), strings.Index(table, "10000 idle"); i < 0 || j < i {
		t.Error("idle rows not ascending")
	}
}

func TestRecoveryNotRecoveredRendersNone(t *testing.T) {
	res := &Results{Modes: []*ModeResult{{Mode: modeUSL, Recovery: &Recovery{Blackhole: time.Second, Delay: -1}}}}
	table := renderTable(res.rows())
	if !strings.Contains(table, "| – | – | – | none | – | – | ≤ 1.2 s (wireguard-go: 16–38 s) | no |") {
		t.Fatalf("unrecovered run not shown as failed:\n%s", table)
	}
}

func TestParseSockperf(t *testing.T) {
	out := `sockperf: Summary: Round trip is 10.786 usec
sockperf: \x1b[2;35mTotal 143023 observations\x1b[0m; each percentile contains 1430.23 observations
sockperf: ---> <MAX> observation = 6028.486
sockperf: ---> percentile 99.999 = 3899.748
sockperf: ---> percentile 99.000 =   26.196
sockperf: ---> percentile 90.000 =   13.074
sockperf: ---> percentile 50.000 =    9.464
sockperf: ---> <MIN> observation =    7.556
`
	r, err := parseSockperf(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Count != 143023 || r.P50 != 9464*time.Nanosecond || r.P99 != 26196*time.Nanosecond {
		t.Fatalf("got %+v", r)
	}
	if _, err := parseSockperf("sockperf: ERROR: connection refused\n"); err == nil {
		t.Fatal("output without percentiles accepted")
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--quick", "--only", "latency,connect", "--duration", "7s"})
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 7*time.Second || o.blackhole != 5*time.Second || len(o.idleFlows) != 2 || o.idleFlows[1] != 1000 {
		t.Fatalf("quick defaults wrong or explicit flag overridden: %+v", o)
	}
	if !o.part("latency") || o.part("throughput") {
		t.Fatal("--only not applied")
	}
	for _, bad := range [][]string{{"--only", "speed"}, {"--modes", "openvpn"}, {"--idle-flows", "100,10"}, {"--idle-flows", "x"}, {"--usltun-env", "GOGC"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestParseProcStatTotal(t *testing.T) {
	data := "cpu  100 5 50 800 20 3 7 1 9 0\ncpu0 50 2 25 400 10 1 3 0 0 0\nintr 1\n"
	s, err := parseProcStatTotal(data)
	if err != nil {
		t.Fatal(err)
	}
	// busy = user+nice+system+irq+softirq+steal; guest (9) is inside user.
	if s.busy != 100+5+50+3+7+1 || s.total != 100+5+50+800+20+3+7+1 {
		t.Fatalf("got %+v", s)
	}
	if f := busyFraction(cpuSample{busy: 100, total: 1000}, cpuSample{busy: 400, total: 2000}); f != 0.3 {
		t.Fatalf("busyFraction = %v, want 0.3", f)
	}
	if _, err := parseProcStatTotal("cpu0 1 2 3 4\n"); err == nil {
		t.Fatal("per-cpu line accepted as the total")
	}
	if _, err := machineCPU(); err != nil {
		t.Fatal(err)
	}
}

func TestMedianRun(t *testing.T) {
	runs := []Throughput{{Gbps: 3, DaemonCores: 1.5}, {Gbps: 1, DaemonCores: 0.5}, {Gbps: 2, DaemonCores: 0.9}}
	m := medianRun(runs)
	if m.Gbps != 2 || m.DaemonCores != 0.9 {
		t.Fatalf("median run %+v, want the 2 Gbit/s run with its own CPU", m)
	}
	if len(m.AllGbps) != 3 || m.AllGbps[0] != 3 || m.AllGbps[2] != 2 {
		t.Fatalf("AllGbps %v, want run order 3,1,2", m.AllGbps)
	}
	if m := medianRun([]Throughput{{Gbps: 5}, {Gbps: 4}}); m.Gbps != 4 {
		t.Fatalf("even count: %v, want the lower middle 4", m.Gbps)
	}
}

// find2 returns the cells of the row starting with prefix.
func find2(t *testing.T, table, prefix string) []string {
	t.Helper()
	for _, l := range strings.Split(table, "\n") {
		if strings.HasPrefix(l, "| "+prefix) {
			return splitRow(l)
		}
	}
	t.Fatalf("no row %q in\n%s", prefix, table)
	return nil
}

// splitRow splits a markdown table row into its cells, keeping empty ones.
func splitRow(line string) []string {
	line = strings.TrimSuffix(strings.TrimPrefix(line, "| "), " |")
	return strings.Split(line, " | ")
}
