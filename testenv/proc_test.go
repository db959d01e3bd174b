package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestProcRunsInsideHost(t *testing.T) {
	requireRoot(t)
	a, _, _ := pair(t)
	p := a.Start(t, "probe", "sh", "-c", "echo hello from $0; ip -br addr show eth0", "probe")
	if err := p.Wait(5 * time.Second); err != nil {
		t.Fatalf("probe: %v\n%s", err, p.Output())
	}
	out := p.Output()
	if !strings.Contains(out, "hello from probe") || !strings.Contains(out, "10.0.0.1/24") {
		t.Fatalf("output does not show the host's interface:\n%s", out)
	}
	// Host.Run is the one-shot form.
	out, err := a.Run("ip", "-br", "addr", "show", "eth0")
	if err != nil || !strings.Contains(out, "fd10::1/64") {
		t.Fatalf("run: %v\n%s", err, out)
	}
}

func TestProcStopKillRestart(t *testing.T) {
	requireRoot(t)
	a := NewHost(t, "a")
	// The shell announces each start and exits cleanly on SIGTERM.
	p := a.Start(t, "daemon", "sh", "-c", `trap 'echo got TERM; exit 0' TERM; echo up $$; while :; do sleep 0.05; done`)
	waitOutput(t, p, "up ", 1)
	if err := p.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if p.Running() || !strings.Contains(p.Output(), "got TERM") {
		t.Fatalf("after Stop: running=%v\n%s", p.Running(), p.Output())
	}
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, p, "up ", 2)
	pid := p.Pid()
	p.Kill()
	if p.Running() {
		t.Fatal("still running after Kill")
	}
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Fatalf("pid %d still exists after Kill: %v", pid, err)
	}
	if strings.Count(p.Output(), "got TERM") != 1 {
		t.Fatalf("SIGKILL must not run the TERM trap:\n%s", p.Output())
	}
	p.Stop() // stopping a dead process is a no-op
}

func waitOutput(t *testing.T, p *Proc, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(p.Output(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no %q (x%d) in output:\n%s", s, n, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDoSocketsStayInHost(t *testing.T) {
	requireRoot(t)
	a, b, _ := pair(t)
	ln, err := b.Listen("tcp", "127.0.0.1:7200")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	// b's loopback is b's alone: a cannot reach it.
	if c, err := a.Dial("tcp", "127.0.0.1:7200"); err == nil {
		c.Close()
		t.Fatal("a reached b's loopback listener")
	}
	c, err := b.Dial("tcp", "127.0.0.1:7200")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("x"), time.Second); err != nil {
		t.Fatal(err)
	}
	// Do propagates errors and panics.
	if err := a.Do(func() error { return os.ErrExist }); err != os.ErrExist {
		t.Fatalf("Do error: %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v", r)
			}
		}()
		_ = a.Do(func() error { panic("boom") })
	}()
}

// TestCleanupLeavesNothing runs a full lab in a sub-test and checks that
// nothing of it survives the sub-test: namespaces, veths, nftables tables,
// processes.
func TestCleanupLeavesNothing(t *testing.T) {
	requireRoot(t)
	rootVeths := func() int {
		links, err := netlink.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range links {
			if l.Type() == "veth" {
				n++
			}
		}
		return n
	}
	vethsBefore := rootVeths()
	var names []string
	var pid int
	var nsIno []uint64
	t.Run("lab", func(t *testing.T) {
		a, gw, b := NewHost(t, "a"), NewHost(t, "gw"), NewHost(t, "b")
		l := Link(t, a, gw, "10.1.0.1/24", "10.1.0.254/24")
		Link(t, gw, b, "10.2.0.254/24", "10.2.0.1/24")
		if err := l.Blackhole(); err != nil {
			t.Fatal(err)
		}
		if err := l.ResetTCP(80); err != nil {
			t.Fatal(err)
		}
		if err := l.RateLimit(1e6); err != nil {
			t.Fatal(err)
		}
		p := b.Start(t, "sleeper", "sleep", "600")
		pid = p.Pid()
		for _, h := range []*Host{a, gw, b} {
			names = append(names, h.Name())
			var st syscall.Stat_t
			if err := syscall.Stat(h.Path(), &st); err != nil {
				t.Fatal(err)
			}
			nsIno = append(nsIno, st.Ino)
		}
		out, err := a.Run("ls", netnsDir)
		if err != nil || !strings.Contains(out, a.Name()) {
			t.Fatalf("namespace not listed: %v %s", err, out)
		}
	})
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(netnsDir, n)); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists (%v)", n, err)
		}
	}
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Errorf("process %d survived the test: %v", pid, err)
	}
	if after := rootVeths(); after != vethsBefore {
		t.Errorf("root namespace veths: %d before, %d after", vethsBefore, after)
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, NamePrefix) {
			t.Errorf("nftables table %s left in the root namespace", tb.Name)
		}
	}
	// The kernel namespaces themselves are gone once nothing refers to them:
	// no process on the machine may still be in one of them.
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range procs {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil {
			continue
		}
		for _, ino := range nsIno {
			if st.Ino == ino {
				t.Errorf("%s is still in a lab namespace", p)
			}
		}
	}
}

func TestSweepStaleRemovesDeadOwners(t *testing.T) {
	requireRoot(t)
	// A pid that surely is dead: a child that has exited and been reaped.
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	dead := p.Pid
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	stale := NamePrefix + strconv.Itoa(dead) + "-1-stale"
	live := NamePrefix + strconv.Itoa(os.Getpid()) + "-999999-live"
	for _, n := range []string{stale, live} {
		ns, err := createNamed(n)
		if err != nil {
			t.Fatal(err)
		}
		ns.Close()
	}
	t.Cleanup(func() {
		for _, n := range []string{stale, live} {
			_ = netns.DeleteNamed(n)
		}
	})
	SweepStale(t.Logf)
	if _, err := os.Stat(filepath.Join(netnsDir, stale)); !os.IsNotExist(err) {
		t.Fatalf("stale namespace of dead pid %d not swept", dead)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, live)); err != nil {
		t.Fatalf("namespace of a live pid swept: %v", err)
	}
}

func TestRunContextBounded(t *testing.T) {
	requireRoot(t)
	a := NewHost(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := a.RunContext(ctx, "sleep", "10"); err == nil {
		t.Fatal("RunContext outlived its context without an error")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("RunContext took %v after a 200 ms context", d)
	}
}
