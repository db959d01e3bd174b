package main

import (
	"os"
	"os/exec"
	"testing"
)

// TestMain lets the test binary stand in for tunbench's own: measureIdle
// starts os.Executable() as the echo server on C.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == echoServerFlag {
		if err := runEchoServer(os.Args[2]); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the harness end to end on a real lab: every mode comes
// up and every part but recovery yields verified figures. It needs root,
// iperf3 and wireguard-go, and about 40 s, so it runs with USLTUN_LONG=1
// (make test-long).
func TestQuickRun(t *testing.T) {
	if os.Getenv("USLTUN_LONG") != "1" {
		t.Skip("set USLTUN_LONG=1 to build a lab and run tunbench --quick (≈ 40 s)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, bin := range []string{"iperf3", "sockperf", "wireguard-go", "wg", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (make deps)", bin)
		}
	}
	o, err := parseFlags([]string{"--quick", "--only", "throughput,latency,connect,idle,mirror", "--duration", "1s", "--idle-flows", "50,200"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := benchmark(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", renderReport(res))
	seen := map[string]bool{}
	for _, m := range res.Modes {
		seen[m.Mode] = true
		if len(m.Errors) > 0 {
			t.Errorf("%s: %v", m.Mode, m.Errors)
			continue
		}
		for _, tp := range []*Throughput{m.Single, m.Multi} {
			if tp == nil || tp.Gbps <= 0 {
				t.Errorf("%s: no throughput: %+v", m.Mode, tp)
			}
		}
		if m.RR == nil || !m.RR.Verified || m.RR.P50 <= 0 {
			t.Errorf("%s: rr %+v", m.Mode, m.RR)
		}
		if m.Sockperf == nil || m.Sockperf.Count == 0 || m.Sockperf.P99 < m.Sockperf.P50 {
			t.Errorf("%s: sockperf %+v", m.Mode, m.Sockperf)
		}
		if m.Connect == nil || m.Connect.Count != o.connects {
			t.Errorf("%s: connect %+v", m.Mode, m.Connect)
		}
		if m.Mode == modeDirect {
			continue
		}
		if m.Single.DaemonCores <= 0 {
			t.Errorf("%s: daemons used no CPU during iperf3", m.Mode)
		}
		if m.Idle == nil || len(m.Idle.Levels) != 2 || m.Idle.Levels[1].Alive != 200 || m.Idle.Levels[1].RSSTotal <= 0 {
			t.Errorf("%s: idle %+v", m.Mode, m.Idle)
		}
	}
	for _, name := range tableModes {
		if !seen[name] {
			t.Errorf("mode %s missing from the results", name)
		}
	}
	if mr := res.Mirror; mr == nil || len(mr.Errors) > 0 || mr.One.CoresPerGbps <= 0 || mr.Two.CoresPerGbps <= 0 {
		t.Errorf("mirror part: %+v", mr)
	}
}
