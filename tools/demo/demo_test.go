package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
)

// syncBuffer is the demo's output, read by the test while the demo writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the demo builds hosts out of network namespaces: needs root")
	}
}

// shortOptions is the demo with a schedule short enough for `make test`.
func shortOptions(bin string) *options {
	return &options{Usltun: bin, Warmup: time.Second, Blackhole: 2 * time.Second, Resets: 2, Tail: time.Second}
}

// testBin is one usltun build shared by the tests of this package;
// TestMain removes it.
var testBin struct {
	once      sync.Once
	dir, path string
	err       error
}

func buildForTest(t *testing.T) string {
	t.Helper()
	testBin.once.Do(func() {
		if testBin.dir, testBin.err = os.MkdirTemp("", "usltun-demo-test-"); testBin.err == nil {
			testBin.path, testBin.err = buildUsltun(context.Background(), testBin.dir)
		}
	})
	if testBin.err != nil {
		t.Fatal(testBin.err)
	}
	return testBin.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testBin.dir != "" {
		os.RemoveAll(testBin.dir)
	}
	os.Exit(code)
}

// TestDemoMissingBinary fails early, with the fix, before building a lab.
func TestDemoMissingBinary(t *testing.T) {
	needRoot(t)
	var out syncBuffer
	o := shortOptions(filepath.Join(t.TempDir(), "no-such-usltun"))
	if code := run(context.Background(), o, &out); code != 1 {
		t.Fatalf("exit status %d, want 1; output:\n%s", code, out.String())
	}
	text := out.String()
	if !strings.Contains(text, "usltun binary:") || !strings.Contains(text, "make build") {
		t.Errorf("output does not explain the missing binary:\n%s", text)
	}
	if m := regexp.MustCompile(`Logs are kept in (\S+)`).FindStringSubmatch(text); m != nil {
		os.RemoveAll(m[1])
	}
	assertTornDown(t, o.Usltun)
}

// TestDemoEndToEnd runs the whole demo with a short schedule and checks
// both verdicts in its output, and that nothing is left behind.
func TestDemoEndToEnd(t *testing.T) {
	needRoot(t)
	bin := buildForTest(t)
	var out syncBuffer
	t0 := time.Now()
	code := run(context.Background(), shortOptions(bin), &out)
	text := out.String()
	t.Logf("demo output (%v):\n%s", time.Since(t0).Round(time.Millisecond), text)
	if code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	for _, want := range []string{
		"Cutting the A—B link for 2 s",
		"reset 1/2: connection reset; usltun reconnected",
		"reset 2/2: connection reset; usltun reconnected",
		"  application errors   0\n",
		"The connection died at the first reset.",
		"ECONNRESET on ",
		"Result: through usltun every byte arrived unchanged",
		"nc inside usltun exec got every line while the plain nc next to it died.",
		"Second act: two A—B links",
		"Cutting link 1 for 2 s; link 2 stays up.",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`usltun exec -- nc +(\d+) of (\d+) lines, in order, nc exited 0`).FindStringSubmatch(text); m == nil || m[1] != m[2] {
		t.Errorf("exec scene: %v, want every line in order and exit 0", m)
	}
	// Both directions print the same hash at sender and receiver.
	hashes := regexp.MustCompile(`([0-9a-f]{16})… / ([0-9a-f]{16})…  identical`).FindAllStringSubmatch(text, -1)
	if len(hashes) != 2 {
		t.Errorf("hash rows in the summary: %v", hashes)
	}
	for _, h := range hashes {
		if h[1] != h[2] {
			t.Errorf("row says identical for different hashes: %s", h[0])
		}
	}
	// The second act's stall is far below the first's (the cut's length).
	if m := regexp.MustCompile(`longest stall +([0-9.]+) s \(one path, the same cut: ([0-9.]+) s\)`).FindStringSubmatch(text); m == nil {
		t.Error("no two-link stall in the summary")
	} else if two, _ := strconv.ParseFloat(m[1], 64); two > 0.5 {
		t.Errorf("two links with mirror stalled %s s across the cut of one", m[1])
	}
	// At least the cut and the two resets were reconnects.
	m := regexp.MustCompile(`tunnel +(\d+) reconnects`).FindStringSubmatch(text)
	if m == nil {
		t.Error("no reconnect count in the summary")
	} else if n, _ := strconv.Atoi(m[1]); n < 2 {
		t.Errorf("%d reconnects, want at least one per reset", n)
	}
	if m := regexp.MustCompile(`Logs go to (\S+) `).FindStringSubmatch(text); m == nil {
		t.Error("log directory not printed")
	} else if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("log directory %s not removed after success: %v", m[1], err)
	}
	assertTornDown(t, bin)
}

// TestDemoInterrupted cancels the demo during the cut, as Ctrl-C does, and
// checks that it exits with 130 and leaves no namespace or daemon behind.
func TestDemoInterrupted(t *testing.T) {
	needRoot(t)
	bin := buildForTest(t)
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(out.String(), "Cutting the A—B link") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
	}()
	code := run(ctx, shortOptions(bin), &out)
	text := out.String()
	t.Logf("demo output:\n%s", text)
	if code != 130 {
		t.Fatalf("exit status %d, want 130", code)
	}
	m := regexp.MustCompile(`Logs are kept in (\S+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("the kept log directory is not printed")
	}
	defer os.RemoveAll(m[1])
	for _, f := range []string{"lab.log", "usltun-a.log", "usltun-b.log"} {
		if fi, err := os.Stat(filepath.Join(m[1], f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	assertTornDown(t, bin)
}

// assertTornDown checks that no namespace of this process and no process of
// the test's usltun binary survived the run.
func assertTornDown(t *testing.T, bin string) {
	t.Helper()
	prefix := fmt.Sprintf("%s%d-", testenv.NamePrefix, os.Getpid())
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.HasPrefix(b, []byte(bin+"\x00")) {
			t.Errorf("usltun still running: %s", p)
		}
	}
}
