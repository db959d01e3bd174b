package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NamePrefix starts the name of every namespace this package creates. The
// full name is NamePrefix + pid + "-" + sequence + "-" + label, so the stale
// sweep can tell which process owned a namespace.
const NamePrefix = "tenv"

// netnsDir is where named namespaces live (the `ip netns` convention).
const netnsDir = "/run/netns"

// Process-wide state, deliberately global: namespace names must be unique
// across every test of the process, and the stale sweep must run once.
var (
	hostSeq   atomic.Uint64
	sweepOnce sync.Once
)

// Host is one network namespace: its own interfaces, routes, sockets and
// nftables ruleset.
type Host struct {
	t     TB
	label string
	name  string
	ns    netns.NsHandle
	nl    *netlink.Handle

	mu     sync.Mutex
	routes []netlink.Route // added with AddRoute; re-applied after Up/ChangeAddress
	nifs   int             // interfaces created so far, for eth<N> names
	closed bool
}

// NewHost creates a namespace with loopback up. label is a short readable
// name ("a", "gw") used in interface, log and namespace names. The
// namespace and everything in it is removed through t.Cleanup.
func NewHost(t TB, label string) *Host {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("testenv: creating network namespaces needs root (euid %d)", os.Geteuid())
	}
	sweepOnce.Do(func() { SweepStale(t.Logf) })

	name := fmt.Sprintf("%s%d-%d-%s", NamePrefix, os.Getpid(), hostSeq.Add(1), sanitize(label))
	ns, err := createNamed(name)
	if err != nil {
		t.Fatalf("testenv: create namespace %s: %v", name, err)
	}
	h := &Host{t: t, label: label, name: name, ns: ns}
	t.Cleanup(h.close)

	h.nl, err = netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("testenv: netlink handle in %s: %v", name, err)
	}
	lo, err := h.nl.LinkByName("lo")
	if err != nil {
		t.Fatalf("testenv: %s: find lo: %v", name, err)
	}
	if err := h.nl.LinkSetUp(lo); err != nil {
		t.Fatalf("testenv: %s: lo up: %v", name, err)
	}
	// promote_secondaries: ChangeAddress adds the new address before removing
	// the old one; without it, deleting a primary address also deletes the
	// secondaries of its subnet. keep_addr_on_down: Down/Up must not lose IPv6
	// addresses. accept_dad=0: addresses are usable at once.
	err = h.Do(func() error {
		for _, kv := range [][2]string{
			{"net/ipv4/conf/all/promote_secondaries", "1"},
			{"net/ipv4/conf/default/promote_secondaries", "1"},
			{"net/ipv6/conf/all/keep_addr_on_down", "1"},
			{"net/ipv6/conf/default/keep_addr_on_down", "1"},
			{"net/ipv6/conf/all/accept_dad", "0"},
			{"net/ipv6/conf/default/accept_dad", "0"},
		} {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testenv: %s: %v", name, err)
	}
	return h
}

// createNamed makes a new namespace bound at /run/netns/name. It runs on a
// throw-away locked thread: NewNamed moves the calling thread into the new
// namespace, and that thread must never run other goroutines afterwards, so
// the goroutine exits still locked and the runtime discards the thread.
func createNamed(name string) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		ch <- result{ns, err}
	}()
	r := <-ch
	return r.ns, r.err
}

// SweepStale removes namespaces of this package's family whose owning
// process is gone (a crashed test run). logf may be nil. NewHost calls it
// once per process.
func SweepStale(logf func(string, ...any)) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := ownerPID(e.Name())
		if !ok || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if err := netns.DeleteNamed(e.Name()); err == nil && logf != nil {
			logf("testenv: removed stale namespace %s", e.Name())
		}
	}
}

// ownerPID parses the pid out of a NamePrefix<pid>-... name.
func ownerPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, NamePrefix)
	if !ok {
		return 0, false
	}
	digits, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	return unix.Kill(pid, 0) != unix.ESRCH
}

func sanitize(label string) string {
	var b strings.Builder
	for _, r := range label {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
		if b.Len() == 8 {
			break
		}
	}
	if b.Len() == 0 {
		return "h"
	}
	return b.String()
}

// close tears the host down: netlink handle, namespace handle, name. The
// kernel frees the namespace, and with it the veth ends and nftables
// tables inside, once no process or socket holds it any more.
func (h *Host) close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.mu.Unlock()
	if h.nl != nil {
		h.nl.Close()
	}
	h.ns.Close()
	if err := netns.DeleteNamed(h.name); err != nil && !os.IsNotExist(err) {
		h.t.Errorf("testenv: delete namespace %s: %v", h.name, err)
	}
}

// Label is the short name given to NewHost.
func (h *Host) Label() string { return h.label }

// Name is the namespace name, usable with `ip netns exec`.
func (h *Host) Name() string { return h.name }

// Path is the namespace's bind-mount path (for setns or nsenter --net=).
func (h *Host) Path() string { return filepath.Join(netnsDir, h.name) }

func (h *Host) String() string { return h.label }

// Sysctl writes a sysctl inside the host; key uses dots or slashes
// ("net.ipv4.ip_forward").
func (h *Host) Sysctl(key, value string) error {
	return h.Do(func() error { return writeSysctl(key, value) })
}

func writeSysctl(key, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// EnableForwarding makes the host a router for IPv4 and IPv6.
func (h *Host) EnableForwarding() {
	h.t.Helper()
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := h.Sysctl(k, "1"); err != nil {
			h.t.Fatalf("testenv: %s: %v", h.label, err)
		}
	}
}

// AddRoute routes dst ("10.20.0.0/16", "fd00:20::/64" or "default") via the
// gateway address via. The route is remembered and re-applied after the
// kernel flushes it (Down/Up, ChangeAddress).
func (h *Host) AddRoute(dst, via string) {
	h.t.Helper()
	gw, err := netip.ParseAddr(via)
	if err != nil {
		h.t.Fatalf("testenv: %s: route via %q: %v", h.label, via, err)
	}
	var pfx netip.Prefix
	if dst == "default" {
		pfx = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if gw.Is6() {
			pfx = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
	} else if pfx, err = netip.ParsePrefix(dst); err != nil {
		h.t.Fatalf("testenv: %s: route to %q: %v", h.label, dst, err)
	}
	r := netlink.Route{Dst: prefixNet(pfx.Masked()), Gw: gw.AsSlice()}
	if err := h.nl.RouteReplace(&r); err != nil {
		h.t.Fatalf("testenv: %s: route %s via %s: %v", h.label, dst, via, err)
	}
	h.mu.Lock()
	h.routes = append(h.routes, r)
	h.mu.Unlock()
}

// reapplyRoutes puts back the routes of AddRoute that the kernel flushed.
// A route whose gateway is (still) unreachable is skipped silently: it
// comes back on the next reapply.
func (h *Host) reapplyRoutes() {
	h.mu.Lock()
	routes := append([]netlink.Route(nil), h.routes...)
	h.mu.Unlock()
	for i := range routes {
		_ = h.nl.RouteReplace(&routes[i])
	}
}

// Run is a shorthand for running a short command inside the host and
// returning its combined output; for daemons use Start.
func (h *Host) Run(argv ...string) (string, error) {
	return runIn(context.Background(), h, argv...)
}

// RunContext is Run, with the command killed when ctx ends.
func (h *Host) RunContext(ctx context.Context, argv ...string) (string, error) {
	return runIn(ctx, h, argv...)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
