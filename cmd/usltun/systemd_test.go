package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	unitFile     = "../../contrib/systemd/usltun@.service"
	userUnitFile = "../../contrib/systemd/user/usltun@.service"
)

// systemd-analyze verify accepts the unit with no warning at all (unknown
// keys and bad values are only warnings to it). Its ExecStart must name an
// existing executable, so the copy under test points it at this test's
// binary; everything else is the file as shipped.
func TestSystemdUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not installed (Debian package systemd; make deps installs it)")
	}
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStart=/usr/bin/usltun up --config /etc/usltun/%i.toml", "Restart=on-failure",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"ProtectHome=yes", "PrivateTmp=yes", "RuntimeDirectory=usltun", "StateDirectory=usltun"} {
		if !strings.Contains(string(unit), "\n"+want+"\n") {
			t.Errorf("unit lacks %q", want)
		}
	}
	verifyUnit(t, sa, unit)
}

// TestSystemdUserUnitVerifies: the user unit for the no-root mode (SOCKS,
// HTTP proxy, exec) reads the user's config and asks for no privilege.
func TestSystemdUserUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not installed (Debian package systemd; make deps installs it)")
	}
	unit, err := os.ReadFile(userUnitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "ExecStart=/usr/bin/usltun up --config %E/usltun/%i.toml", "Restart=on-failure",
		"NoNewPrivileges=yes", "WantedBy=default.target"} {
		if !strings.Contains(string(unit), "\n"+want+"\n") {
			t.Errorf("user unit lacks %q", want)
		}
	}
	if strings.Contains(string(unit), "CAP_") {
		t.Error("user unit names a capability: the no-root mode needs none")
	}
	verifyUnit(t, sa, unit)
}

// verifyUnit runs systemd-analyze verify on a copy of unit whose ExecStart
// names this test's binary (verify wants an existing executable).
func verifyUnit(t *testing.T, sa string, unit []byte) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "usltun@test.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/bin/usltun ", self+" ")), 0o644)
	out, err := exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestE2ESystemdNotify: with a fake NOTIFY_SOCKET, A's daemon sends READY=1
// only once usl0 exists with its routes, and STOPPING=1 at SIGTERM.
//
// The order is made deterministic with the socket's own backpressure: the
// fake manager's receive queue is filled before the daemon starts, so the
// daemon's READY=1 blocks in its send until the test drains the queue.
// While it is blocked, usl0 and every route must already be there; a daemon
// that sent READY=1 before creating them would be stuck before creating
// them, and they would never appear.
func TestE2ESystemdNotify(t *testing.T) {
	requireE2E(t)
	path := filepath.Join(t.TempDir(), "notify")
	addr := &net.UnixAddr{Name: path, Net: "unixgram"}
	mgr, err := net.ListenUnixgram("unixgram", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	filler, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	fills := 0
	for ; fills < 100000; fills++ {
		filler.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := filler.Write([]byte("FILL")); err != nil {
			break
		}
	}
	filler.Close()
	t.Logf("manager's queue full after %d datagrams", fills)

	l := newLab(t, labOpts{aEnv: []string{"NOTIFY_SOCKET=" + path}, noWait: true})
	var routes map[string]bool
	deadline := time.Now().Add(upTimeout)
	for {
		routes, err = deviceRoutes(l.A, "usl0")
		if err == nil && routes[netC4] && routes[netC6] && routes[unexportedNet] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usl0 with its routes never appeared while the daemon's notification was pending (%v, routes %v): READY=1 sent too early?", err, routes)
		}
		time.Sleep(20 * time.Millisecond)
	}
	read := func(limit time.Duration) string {
		t.Helper()
		buf := make([]byte, 4096)
		mgr.SetReadDeadline(time.Now().Add(limit))
		n, err := mgr.Read(buf)
		if err != nil {
			t.Fatalf("fake service manager: %v", err)
		}
		return string(buf[:n])
	}
	for range fills {
		if m := read(time.Second); m != "FILL" {
			t.Fatalf("%q arrived inside the filled queue", m)
		}
	}
	ready := read(5 * time.Second)
	if !strings.HasPrefix(ready, "READY=1\n") {
		t.Fatalf("first notification %q, want READY=1", ready)
	}
	t.Logf("READY message: %q", ready)
	if err := l.DA.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if m := read(5 * time.Second); m != "STOPPING=1" {
		t.Fatalf("after SIGTERM: %q, want STOPPING=1", m)
	}
}

// deviceRoutes lists the destinations routed through device dev in h; it
// fails if dev does not exist. It reports errors rather than failing t, so
// that it can run in any goroutine.
func deviceRoutes(h *testenv.Host, dev string) (map[string]bool, error) {
	ns, err := netns.GetFromPath(h.Path())
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	link, err := nl.LinkByName(dev)
	if err != nil {
		return nil, err
	}
	rs, err := nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, r := range rs {
		if r.Dst != nil {
			out[r.Dst.String()] = true
		}
	}
	return out, nil
}

// The example configuration parses as the options of up, apart from the
// placeholder peer key it tells the user to replace.
func TestExampleConfigParses(t *testing.T) {
	b, err := os.ReadFile("../../contrib/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "example.toml")
	os.WriteFile(cfg, []byte(strings.Replace(string(b), "REPLACE-WITH-THE-PEER-PUBLIC-KEY-44-CHARACTERS", testPeerKey, 1)), 0o600)
	up, err := parseUp(t, "--config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(up.Peer) == 0 || len(up.Route) != 1 || up.Key != "/etc/usltun/NAME.key" {
		t.Fatalf("example not applied: %+v", up)
	}
}
