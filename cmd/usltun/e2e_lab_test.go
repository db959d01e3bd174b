package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
)

// The lab's addresses. A—B carries the session (IPv4 and IPv6); C sits
// behind B on its own subnet, which B exports and A routes through usl0.
// unexportedNet is routed by A but not exported by B, to provoke
// "forbidden".
const (
	addrA4, addrB4  = "10.99.0.1", "10.99.0.2"
	addrA6, addrB6  = "fd99::1", "fd99::2"
	addrBC4, addrC4 = "10.98.0.1", "10.98.0.2"
	addrBC6, addrC6 = "fd98::1", "fd98::2"
	netC4, netC6    = "10.98.0.0/24", "fd98::/64"
	unexportedNet   = "10.97.0.0/24"
	sessionPort     = 7400 // the documented default port
	upTimeout       = 15 * time.Second
)

// e2eLab is hosts A, B, C with a usltun daemon on A (dialing, routing C's
// subnets) and one on B (listening, exporting them).
type e2eLab struct {
	t       *testing.T
	dir     string
	A, B, C *testenv.Host
	AB, BC  *testenv.LinkPair
	aKey    string // private key files
	bKey    string
	aPub    string // public keys, base64
	bPub    string
	DA, DB  *testenv.Proc // the daemons on A and B (nil until started)
	peer    string        // B's session address as A dials it
	noIPv6  bool          // the hosts have IPv6 disabled: IPv4 only
}

// labOpts adds daemon flags; the product's defaults apply otherwise.
type labOpts struct {
	aFlags, bFlags []string
	ipv6Path       bool // the session itself runs over IPv6 between A and B
	// noIPv6 disables IPv6 on all three hosts before their links exist
	// (net.ipv6.conf.{all,default}.disable_ipv6=1), as on many servers
	// and containers; addresses, routes and daemon flags are IPv4 only.
	noIPv6 bool
	aEnv   []string // extra environment of A's daemon
	noWait bool     // return once the daemons are started, before A's session is up
}

// newLab builds A—B—C, starts both daemons and waits until A's session is
// up. On failure the tails of both daemon logs and their status are printed.
func newLab(t *testing.T, opts labOpts) *e2eLab {
	t.Helper()
	requireE2E(t)
	l := newHosts(t, opts.noIPv6)
	exports := []string{"--export", netC4, "--export", netC6}
	if opts.noIPv6 {
		exports = []string{"--export", netC4}
	}

	l.peer = addrB4
	if opts.ipv6Path {
		l.peer = "[" + addrB6 + "]"
	}
	l.DB = l.B.Start(t, "usltun", append([]string{e2eBinary, "up",
		"--listen", l.peer, "--key", l.bKey, "--peer-key", l.aPub}, append(exports, opts.bFlags...)...)...)
	l.DA = l.A.StartEnv(t, "usltun", opts.aEnv, l.aArgs(opts.aFlags...)...)
	// Registered after the daemons, so it runs before their cleanup kills
	// them and can still ask for their status.
	t.Cleanup(l.dumpOnFailure)
	if opts.noWait {
		return l
	}
	l.waitUp(l.A, upTimeout)
	return l
}

// newHosts builds A—B—C and the two key pairs, with no daemon yet; with
// noIPv6 the hosts have IPv6 disabled and the links carry IPv4 only.
func newHosts(t *testing.T, noIPv6 bool) *e2eLab {
	t.Helper()
	l := &e2eLab{t: t, dir: t.TempDir(), noIPv6: noIPv6}
	l.A, l.B, l.C = testenv.NewHost(t, "a"), testenv.NewHost(t, "b"), testenv.NewHost(t, "c")
	if noIPv6 {
		for _, h := range []*testenv.Host{l.A, l.B, l.C} {
			for _, conf := range []string{"all", "default"} {
				if err := h.Sysctl("net.ipv6.conf."+conf+".disable_ipv6", "1"); err != nil {
					t.Fatal(err)
				}
			}
		}
		l.AB = testenv.Link(t, l.A, l.B, addrA4+"/24", addrB4+"/24")
		l.BC = testenv.Link(t, l.B, l.C, addrBC4+"/24", addrC4+"/24")
		l.C.AddRoute("default", addrBC4)
	} else {
		l.AB = testenv.Link(t, l.A, l.B, addrA4+"/24,"+addrA6+"/64", addrB4+"/24,"+addrB6+"/64")
		l.BC = testenv.Link(t, l.B, l.C, addrBC4+"/24,"+addrBC6+"/64", addrC4+"/24,"+addrC6+"/64")
		l.C.AddRoute("default", addrBC4)
		l.C.AddRoute("default", addrBC6)
	}
	l.aKey, l.aPub = l.genKey("a")
	l.bKey, l.bPub = l.genKey("b")
	return l
}

// aArgs is A's command line: dial B, route C's subnets and the unexported
// one.
func (l *e2eLab) aArgs(extra ...string) []string {
	routes := []string{"--route", netC4, "--route", netC6, "--route", unexportedNet}
	if l.noIPv6 {
		routes = []string{"--route", netC4, "--route", unexportedNet}
	}
	return append(append([]string{e2eBinary, "up",
		"--peer", l.peer, "--key", l.aKey, "--peer-key", l.bPub}, routes...), extra...)
}

// genKey makes a key pair with the binary's own genkey and pubkey.
func (l *e2eLab) genKey(name string) (keyFile, pub string) {
	l.t.Helper()
	keyFile = filepath.Join(l.dir, name+".key")
	f, err := os.OpenFile(keyFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		l.t.Fatal(err)
	}
	gen := exec.Command(e2eBinary, "genkey")
	gen.Stdout = f
	err = gen.Run()
	f.Close()
	if err != nil {
		l.t.Fatalf("usltun genkey: %v", err)
	}
	in, err := os.Open(keyFile)
	if err != nil {
		l.t.Fatal(err)
	}
	defer in.Close()
	pk := exec.Command(e2eBinary, "pubkey")
	pk.Stdin = in
	out, err := pk.Output()
	if err != nil {
		l.t.Fatalf("usltun pubkey: %v", err)
	}
	return keyFile, strings.TrimSpace(string(out))
}

// status asks the daemon in h for `usltun status --json`.
func (l *e2eLab) status(h *testenv.Host) (*statusReport, error) {
	out, err := h.Run(e2eBinary, "status", "--json")
	if err != nil {
		return nil, fmt.Errorf("usltun status on %s: %w: %s", h, err, strings.TrimSpace(out))
	}
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("usltun status on %s: %w: %q", h, err, out)
	}
	return &r, nil
}

// eventually polls cond every 100 ms until it holds or timeout passes, and
// returns its last value: for log lines a daemon writes a moment later
// (aggregated lines come at the end of their interval).
func eventually(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); !cond() && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	return cond()
}

// waitUp waits until h's daemon reports its session "up".
func (l *e2eLab) waitUp(h *testenv.Host, timeout time.Duration) {
	l.t.Helper()
	if err := l.pollUp(h, timeout); err != nil {
		l.t.Fatal(err)
	}
}

func (l *e2eLab) pollUp(h *testenv.Host, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		r, err := l.status(h)
		switch {
		case err != nil:
			last = err.Error()
		case r.Session == nil:
			last = "no session yet"
		case r.Session.State == "up":
			return nil
		default:
			last = "state " + r.Session.State
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("session on %s not up within %v: %s", h, timeout, last)
}

// dumpOnFailure prints what both daemons said and their last status, so a
// failing test shows the product's side of the story in one place.
func (l *e2eLab) dumpOnFailure() {
	if !l.t.Failed() {
		return
	}
	for _, d := range []struct {
		h *testenv.Host
		p *testenv.Proc
	}{{l.A, l.DA}, {l.B, l.DB}} {
		if d.p == nil {
			continue
		}
		l.logStatus(d.h)
		l.t.Logf("=== daemon log of %s (tail) ===\n%s", d.h, tail(d.p.Output(), 80))
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// daemonFDs counts the open file descriptors of a daemon.
func daemonFDs(p *testenv.Proc) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
	if err != nil {
		return 0, fmt.Errorf("fds of pid %d: %w", p.Pid(), err)
	}
	return len(ents), nil
}

// logStatus logs the status document of h's daemon, or why there is none.
func (l *e2eLab) logStatus(h *testenv.Host) {
	r, err := l.status(h)
	if err != nil {
		l.t.Logf("status of %s: %v", h, err)
		return
	}
	b, _ := json.Marshal(r)
	l.t.Logf("status of %s: %s", h, b)
}
