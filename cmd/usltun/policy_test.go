package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/control"
	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/usl"
)

// TestFlowPolicy: a flow gets its rule's scheduler and class when it
// opens, a reload moves open flows at once, status counts them by class,
// and an ended flow is forgotten.
func TestFlowPolicy(t *testing.T) {
	dir := t.TempDir()
	write := func(name, rules string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	first := write("a.toml", "[[policy]]\nname = \"interactive\"\nmatch = 'dst.port == 22'\nscheduler = \"mirror\"\n"+
		"[[policy]]\nname = \"bulk\"\nmatch = 'dst.port == 873'\nscheduler = \"balance\"\n")
	swapped := write("b.toml", "[[policy]]\nname = \"interactive\"\nmatch = 'dst.port == 22'\nscheduler = \"balance\"\n"+
		"[[policy]]\nname = \"bulk\"\nmatch = 'dst.port == 873'\nscheduler = \"mirror\"\n")
	p, err := newFlowPolicy(first, "lowrtt", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newFlowPolicy(write("bad.toml", "[[policy]]\nname = \"x\"\nmatch = 'dst.prt == 1'\nscheduler = \"mirror\"\n"), "lowrtt", slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a rule with a typo was accepted")
	}

	ssh, rsync, web := streamsForPolicy(t)
	dst := func(port uint16) flow.Dest {
		return flow.Dest{Proto: flow.TCP, Addr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port)}
	}
	endSSH := p.assign(ssh, dst(22))
	p.assign(rsync, dst(873))
	p.assign(web, dst(443))
	check := func(st *usl.Stream, wantSched, wantClass string) {
		t.Helper()
		if s, c := st.Scheduler(); s != wantSched || c != wantClass {
			t.Errorf("scheduler %s class %s, want %s %s", s, c, wantSched, wantClass)
		}
	}
	check(ssh, "mirror", "interactive")
	check(rsync, "balance", "bulk")
	check(web, "lowrtt", "default")
	if err := p.load(swapped); err != nil {
		t.Fatal(err)
	}
	check(ssh, "balance", "interactive")
	check(rsync, "mirror", "bulk")
	if err := p.load(write("typo.toml", "[[policy]]\nname = \"y\"\nmatch = 'proto =='\nscheduler = \"mirror\"\n")); err == nil {
		t.Fatal("a broken file replaced the rules")
	}
	check(ssh, "balance", "interactive")
	endSSH()
	got := p.report()
	if len(got) != 2 || got[0] != (classReport{"bulk", "mirror", 1}) || got[1] != (classReport{"default", "lowrtt", 1}) {
		t.Errorf("report %+v", got)
	}
}

// streamsForPolicy opens three streams of a loopback session.
func streamsForPolicy(t *testing.T) (a, b, c *usl.Stream) {
	t.Helper()
	ck, _ := usl.GeneratePrivateKey()
	sk, _ := usl.GeneratePrivateKey()
	l, err := usl.Listen("tcp", "127.0.0.1:0", usl.Config{PrivateKey: sk, PeerKeys: []usl.PublicKey{ck.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := usl.Dial(ctx, l.Addr().String(), usl.Config{PrivateKey: ck, PeerKeys: []usl.PublicKey{sk.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	go func() {
		srv, err := l.Accept(ctx)
		if err != nil {
			return
		}
		for {
			st, err := srv.AcceptStream(ctx)
			if err != nil {
				return
			}
			st.Accept()
		}
	}()
	var sts []*usl.Stream
	for range 3 {
		st, err := s.OpenStream(ctx, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		sts = append(sts, st)
	}
	return sts[0], sts[1], sts[2]
}

// TestPolicyCommands: `usltun policy show|set|flush` against a daemon's
// control socket. set installs a whole file and moves the open flows at
// once; a file with one bad rule is refused with one line naming its
// position, and the running rules stay; flush sends every flow to the
// default scheduler; show lists rules, generation and flows.
func TestPolicyCommands(t *testing.T) {
	dir := t.TempDir()
	p, err := newFlowPolicy("", "lowrtt", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{policy: p}
	sock := filepath.Join(dir, "ctl", "usl0.sock")
	srv, err := d.listenControl(sock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ssh, rsync, _ := streamsForPolicy(t)
	dst := func(port uint16) flow.Dest {
		return flow.Dest{Proto: flow.TCP, Addr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port)}
	}
	p.assign(ssh, dst(22))
	p.assign(rsync, dst(873))
	cmd := func(args ...string) (string, string, int) {
		var out, errb strings.Builder
		code := run(append(args, "--control", sock), &out, &errb)
		return out.String(), errb.String(), code
	}
	write := func(name, rules string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	check := func(st *usl.Stream, wantSched, wantClass string) {
		t.Helper()
		if s, c := st.Scheduler(); s != wantSched || c != wantClass {
			t.Errorf("scheduler %s class %s, want %s %s", s, c, wantSched, wantClass)
		}
	}

	good := write("rules.toml", "[[policy]]\nname = \"interactive\"\nmatch = 'dst.port == 22'\nscheduler = \"mirror\"\n"+
		"[[policy]]\nname = \"bulk\"\nmatch = 'dst.port == 873'\nscheduler = \"balance\"\n")
	out, errOut, code := cmd("policy", "set", good)
	if code != exitOK || !strings.Contains(out, "policy replaced: 2 rules; 2 open flows re-evaluated") {
		t.Fatalf("policy set: exit %d\n%s%s", code, out, errOut)
	}
	check(ssh, "mirror", "interactive")
	check(rsync, "balance", "bulk")

	// The second rule is broken: nothing of the file is installed.
	bad := write("bad.toml", "[[policy]]\nname = \"interactive\"\nmatch = 'dst.port == 22'\nscheduler = \"balance\"\n"+
		"[[policy]]\nname = \"bulk\"\nmatch = 'dst.prot == 873'\nscheduler = \"mirror\"\n")
	out, errOut, code = cmd("policy", "set", bad)
	if code != exitRuntime || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "bad.toml:5: rule 2 \"bulk\"") ||
		!strings.Contains(errOut, "the running ones stay") {
		t.Errorf("a bad rule: exit %d, stdout %q, stderr %q; want one line naming bad.toml:5, rule 2", code, out, errOut)
	}
	check(ssh, "mirror", "interactive")
	check(rsync, "balance", "bulk")

	out, _, code = cmd("policy", "show", "--json")
	var st control.PolicyState
	if err := json.Unmarshal([]byte(out), &st); code != exitOK || err != nil {
		t.Fatalf("policy show --json: exit %d, %v: %q", code, err, out)
	}
	if st.Generation != 2 || len(st.Rules) != 2 || st.Rules[0].Pos != "rules.toml:1" || st.FlowsTotal != 2 ||
		st.Flows[0] != (control.PolicyFlow{Dest: "tcp/10.0.0.2:22", Class: "interactive", Scheduler: "mirror"}) ||
		st.Flows[1] != (control.PolicyFlow{Dest: "tcp/10.0.0.2:873", Class: "bulk", Scheduler: "balance"}) {
		t.Errorf("policy show: %+v", st)
	}
	out, _, _ = cmd("policy", "show")
	for _, want := range []string{"generation 2, default scheduler lowrtt", "interactive", "dst.port == 873", "tcp/10.0.0.2:22"} {
		if !strings.Contains(out, want) {
			t.Errorf("policy show lacks %q:\n%s", want, out)
		}
	}

	out, errOut, code = cmd("policy", "flush")
	if code != exitOK || !strings.Contains(out, "2 open flows moved to lowrtt") || !strings.Contains(out, "rules:  none") {
		t.Errorf("policy flush: exit %d\n%s%s", code, out, errOut)
	}
	check(ssh, "lowrtt", "default")
	check(rsync, "lowrtt", "default")
	if g := p.eng.Generation(); g != 3 {
		t.Errorf("generation %d after set and flush, want 3", g)
	}
}
