package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/tools/loadgen"
)

// buildTool compiles uslload once per test.
func buildTool(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "uslload")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build uslload: %v\n%s", err, out)
	}
	return bin
}

// lab starts a uslload server on b and returns the hosts, the link and the
// path of the tool.
func lab(t *testing.T) (a, b *testenv.Host, l *testenv.LinkPair, bin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the tests run uslload in network namespaces")
	}
	bin = buildTool(t)
	a, b = testenv.NewHost(t, "a"), testenv.NewHost(t, "b")
	l = testenv.Link(t, a, b, "10.0.0.1/24", "10.0.0.2/24")
	b.Start(t, "server", bin, "server", "--listen", "10.0.0.2:9000")
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := a.Dial("tcp", "10.0.0.2:9000")
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not listening: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return a, b, l, bin
}

func readReport(t *testing.T, path string) *loadgen.Report {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep loadgen.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, data)
	}
	return &rep
}

func TestCleanRunVerifies(t *testing.T) {
	a, _, _, bin := lab(t)
	out := filepath.Join(t.TempDir(), "report.json")
	p := a.Start(t, "client", bin, "client", "--connect", "10.0.0.2:9000", "--flows", "3", "--bytes", "16MiB", "--json", "--output", out)
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("client: %v\n%s", err, p.Output())
	}
	rep := readReport(t, out)
	if !rep.Verified || rep.BytesUp != 3*16<<20 || rep.BytesDown != 3*16<<20 || len(rep.Errors) != 0 {
		t.Fatalf("report: verified %v, up %d, down %d, errors %v", rep.Verified, rep.BytesUp, rep.BytesDown, rep.Errnos())
	}
	p = a.Start(t, "rr", bin, "client", "--connect", "10.0.0.2:9000", "--mode", "rr", "--requests", "500", "--json", "--output", out)
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("rr client: %v\n%s", err, p.Output())
	}
	if rep := readReport(t, out); !rep.Verified || rep.Latency == nil || rep.Latency.Count != 500 {
		t.Fatalf("rr report: %+v", rep)
	}
}

// TestResetFaultGivesECONNRESET is the baseline usltun must beat: plain TCP
// across a TCP reset fault dies with ECONNRESET and never recovers.
func TestResetFaultGivesECONNRESET(t *testing.T) {
	a, _, l, bin := lab(t)
	dir := t.TempDir()
	out, heal := filepath.Join(dir, "report.json"), filepath.Join(dir, "heal")
	l.HealFile(heal)
	p := a.Start(t, "client", bin, "client", "--connect", "10.0.0.2:9000", "--flows", "2",
		"--duration", "3s", "--json", "--output", out, "--heal-file", heal, "--report-wait", "5s")
	time.Sleep(time.Second)
	if err := l.ResetTCP(9000); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	err := p.Wait(30 * time.Second)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("client exit: %v, want status 1 (not verified)\n%s", err, p.Output())
	}
	rep := readReport(t, out)
	if rep.Verified {
		t.Fatal("a reset run reported as verified")
	}
	resetAt := map[string]int{}
	for _, e := range rep.Errors {
		if e.Errno == "ECONNRESET" {
			resetAt[e.Side]++
		}
	}
	if resetAt["client"] == 0 {
		t.Fatalf("client saw no ECONNRESET; errors %v", rep.Errnos())
	}
	if len(rep.Recoveries) != 1 || rep.Recoveries[0].Delay != -1 {
		t.Fatalf("recoveries %+v: plain TCP must never recover from a reset", rep.Recoveries)
	}
	t.Logf("errors: %v (client %d, server %d ECONNRESET)", rep.Errnos(), resetAt["client"], resetAt["server"])
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"10": 10, "64MiB": 64 << 20, "2G": 2e9, "1KiB": 1024, "5B": 5} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "1TiB"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) accepted", bad)
		}
	}
}

// TestBlackholeRecoveryFromHealFile: the fault injector (this test) and the
// client (another process) share the heal time through a heal file.
func TestBlackholeRecoveryFromHealFile(t *testing.T) {
	a, _, l, bin := lab(t)
	dir := t.TempDir()
	out, heal := filepath.Join(dir, "report.json"), filepath.Join(dir, "heal")
	l.HealFile(heal)
	p := a.Start(t, "client", bin, "client", "--connect", "10.0.0.2:9000", "--flows", "2",
		"--duration", "4s", "--json", "--output", out, "--heal-file", heal)
	time.Sleep(500 * time.Millisecond)
	if err := l.Blackhole(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("client: %v\n%s", err, p.Output())
	}
	rep := readReport(t, out)
	if !rep.Verified || len(rep.Recoveries) != 1 {
		t.Fatalf("verified %v, recoveries %+v, errors %v", rep.Verified, rep.Recoveries, rep.Errnos())
	}
	rc := rep.Recoveries[0]
	if rc.Delay <= 0 || rc.Delay > 5*time.Second || rep.LongestStall < 1400*time.Millisecond {
		t.Fatalf("recovery %v, longest stall %v", rc.Delay, rep.LongestStall)
	}
	t.Logf("plain TCP after a 1.5 s blackhole: stall %v, recovery %v (flow %d %s)", rep.LongestStall, rc.Delay, rc.Flow, rc.Direction)
}
