package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"cel.dev/cel-go/cel"
	"github.com/usltun/usltun/flow"
)

// schedulers are the issue's five; checkScheduler plays the caller's
// validator.
var schedulers = []string{"failover", "lowrtt", "balance", "mirror", "hedge"}

func checkScheduler(name string) error {
	for _, s := range schedulers {
		if s == name {
			return nil
		}
	}
	return fmt.Errorf("unknown scheduler; want one of %s", strings.Join(schedulers, ", "))
}

func newEngine(t testing.TB) *Engine {
	t.Helper()
	e, err := New(Config{DefaultScheduler: "lowrtt", CheckScheduler: checkScheduler})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// issueRules are the two example rules of issue 9.
var issueRules = []Rule{
	{Name: "interactive", Match: `proto == "udp" || dst.port in [22, 3389, 5060]`, Scheduler: "mirror"},
	{Name: "bulk", Match: `dst.port == 873`, Scheduler: "balance"},
}

func dest(proto flow.Proto, addrPort string) flow.Dest {
	return flow.Dest{Proto: proto, Addr: netip.MustParseAddrPort(addrPort)}
}

func TestEvaluateIssueRules(t *testing.T) {
	e := newEngine(t)
	if err := e.Set(issueRules); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		d         flow.Dest
		class     string
		scheduler string
	}{
		{dest(flow.TCP, "10.0.0.2:22"), "interactive", "mirror"},
		{dest(flow.TCP, "10.0.0.2:3389"), "interactive", "mirror"},
		{dest(flow.TCP, "[fd00::2]:5060"), "interactive", "mirror"},
		{dest(flow.UDP, "10.0.0.2:873"), "interactive", "mirror"}, // first match wins
		{dest(flow.UDP, "10.0.0.2:53"), "interactive", "mirror"},
		{dest(flow.TCP, "10.0.0.2:873"), "bulk", "balance"},
		{flow.Named(flow.TCP, "backup.example", 873), "bulk", "balance"},
		{dest(flow.TCP, "10.0.0.2:443"), DefaultClass, "lowrtt"},
		{dest(flow.ICMP, "10.0.0.2:0"), DefaultClass, "lowrtt"},
	} {
		got := e.Evaluate(c.d)
		if got.Class != c.class || got.Scheduler != c.scheduler || got.Err != nil {
			t.Errorf("%v: got %+v, want class %s, scheduler %s", c.d, got, c.class, c.scheduler)
		}
		if got.Generation != e.Generation() {
			t.Errorf("%v: generation %d, engine at %d", c.d, got.Generation, e.Generation())
		}
	}
}

func TestEvaluateMatches(t *testing.T) {
	for _, c := range []struct {
		match string
		d     flow.Dest
		want  bool
	}{
		{`proto == "tcp"`, dest(flow.TCP, "1.2.3.4:80"), true},
		{`proto == "icmp"`, dest(flow.ICMP, "1.2.3.4:0"), true},
		{`proto == "icmp"`, dest(flow.UDP, "1.2.3.4:0"), false},
		{`dst.port == 0`, dest(flow.ICMP, "1.2.3.4:0"), true},
		{`dst.port >= 8000 && dst.port < 9000`, dest(flow.TCP, "1.2.3.4:8443"), true},
		{`dst.addr == "10.0.0.2"`, dest(flow.TCP, "10.0.0.2:1"), true},
		{`dst.addr == "fd00::2"`, dest(flow.TCP, "[fd00::2]:1"), true},
		{`dst.addr == "10.0.0.2"`, dest(flow.TCP, "[::ffff:10.0.0.2]:1"), true}, // mapped: as IPv4
		{`in_prefix(dst.addr, "10.0.0.0/8")`, dest(flow.TCP, "10.200.3.4:1"), true},
		{`in_prefix(dst.addr, "10.0.0.0/8")`, dest(flow.TCP, "11.0.0.1:1"), false},
		{`in_prefix(dst.addr, "10.0.0.0/8")`, dest(flow.TCP, "[::ffff:10.1.1.1]:1"), true},
		{`in_prefix(dst.addr, "fd00::/8")`, dest(flow.TCP, "[fd12::1]:1"), true},
		{`in_prefix(dst.addr, "fd00::/8")`, dest(flow.TCP, "10.0.0.1:1"), false},
		{`in_prefix(dst.addr, ["192.168.0.0/16", "10.0.0.0/8"])`, dest(flow.TCP, "10.9.9.9:1"), true},
		{`in_prefix(dst.addr, ["192.168.0.0/16", "172.16.0.0/12"])`, dest(flow.TCP, "10.9.9.9:1"), false},
		{`in_prefix(dst.addr, "10.0.0.0/8")`, flow.Named(flow.TCP, "ten.example", 1), false},
		{`dst.addr == ""`, flow.Named(flow.TCP, "ten.example", 1), true},
		{`dst.name == ""`, dest(flow.TCP, "10.0.0.1:1"), true},
		{`dst.name.endsWith(".corp.example")`, flow.Named(flow.TCP, "git.corp.example", 22), true},
		{`dst.name.matches("^(git|ssh)[.]")`, flow.Named(flow.TCP, "ssh.example", 22), true},
		{`dst.name.matches("^(git|ssh)[.]")`, flow.Named(flow.TCP, "www.example", 22), false},
		{`[22, 80].exists(p, p == dst.port)`, dest(flow.TCP, "1.2.3.4:80"), true},
		{`true`, dest(flow.UDP, "1.2.3.4:9"), true},
		{`false`, dest(flow.UDP, "1.2.3.4:9"), false},
	} {
		e := newEngine(t)
		if err := e.Set([]Rule{{Name: "r", Match: c.match, Scheduler: "mirror"}}); err != nil {
			t.Errorf("%s: %v", c.match, err)
			continue
		}
		got := e.Evaluate(c.d)
		if got.Err != nil {
			t.Errorf("%s on %v: %v", c.match, c.d, got.Err)
		}
		if (got.Class == "r") != c.want {
			t.Errorf("%s on %v: matched %v, want %v", c.match, c.d, got.Class == "r", c.want)
		}
	}
}

// TestSetErrors: every class of compile error names the rule, and the place
// in its match, and leaves the installed set alone.
func TestSetErrors(t *testing.T) {
	ok := Rule{Name: "ok", Match: "true", Scheduler: "mirror"}
	for _, c := range []struct {
		name  string
		rules []Rule
		want  []string // substrings of the error, in order
	}{
		{"unknown variable", []Rule{ok, {Name: "x", Match: `src.port == 22`, Scheduler: "mirror"}},
			[]string{`rule 2 "x": match:1:1: undeclared reference to 'src'`}},
		{"unknown field", []Rule{{Name: "x", Match: `proto == "tcp" && dst.host == "a"`, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match:1:22: undeclared reference to 'dst.host' (did you mean 'dst.port'?)`}},
		{"unknown function", []Rule{{Name: "x", Match: `is_lan(dst.addr)`, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match:1:7: undeclared reference to 'is_lan'`}},
		{"syntax", []Rule{{Name: "x", Match: `dst.port == `, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match:1:`}},
		{"type mismatch", []Rule{{Name: "x", Match: `dst.port == "22"`, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match:1:10: found no matching overload for '_==_'`}},
		{"not bool", []Rule{{Name: "x", Match: `dst.port + 1`, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match: is of type int, want bool`}},
		{"empty match", []Rule{{Name: "x", Match: ` `, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match: empty`}},
		{"bad prefix literal", []Rule{{Name: "x", Match: `in_prefix(dst.addr, "10.0.0.0/33")`, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match:1:21: in_prefix: netip.ParsePrefix("10.0.0.0/33")`}},
		{"bad prefix in list", []Rule{{Name: "x", Match: `in_prefix(dst.addr, ["10.0.0.0/8", "lan"])`, Scheduler: "mirror"}},
			[]string{`rule 1 "x": match:1:36: in_prefix: netip.ParsePrefix("lan")`}},
		{"unknown scheduler", []Rule{ok, {Name: "x", Match: "true", Scheduler: "fastest"}},
			[]string{`rule 2 "x": scheduler "fastest": unknown scheduler; want one of failover, lowrtt`}},
		{"no scheduler", []Rule{{Name: "x", Match: "true"}},
			[]string{`rule 1 "x": no scheduler given`}},
		{"duplicate name", []Rule{ok, {Name: "ok", Match: "false", Scheduler: "hedge"}},
			[]string{`rule 2 "ok": the name is also rule 1's`}},
		{"no name", []Rule{{Match: "true", Scheduler: "hedge"}},
			[]string{`rule 1: no name`}},
		{"reserved name", []Rule{{Name: "default", Match: "true", Scheduler: "hedge"}},
			[]string{`rule 1 "default": the name "default" is the class`}},
		{"too costly", []Rule{{Name: "x", Match: `[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, a+b+c+d != dst.port))))`, Scheduler: "hedge"}},
			[]string{`rule 1 "x": match: may cost up to`, `over the limit of 10000 per flow`}},
		{"with position", []Rule{{Name: "x", Match: "true", Scheduler: "nope", Pos: "rules.toml:7"}},
			[]string{`rules.toml:7: rule 1 "x": scheduler "nope"`}},
		{"all errors at once", []Rule{{Name: "a", Match: "1", Scheduler: "mirror"}, {Name: "b", Match: "true", Scheduler: "x"}},
			[]string{`rule 1 "a": match: is of type int`, "\n", `rule 2 "b": scheduler "x"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEngine(t)
			if err := e.Set(issueRules); err != nil {
				t.Fatal(err)
			}
			gen := e.Generation()
			err := e.Set(c.rules)
			if err == nil {
				t.Fatalf("Set(%v) succeeded", c.rules)
			}
			t.Logf("%v", err)
			msg := err.Error()
			at := 0
			for _, w := range c.want {
				i := strings.Index(msg[at:], w)
				if i < 0 {
					t.Fatalf("error %q lacks %q (after offset %d)", msg, w, at)
				}
				at += i + len(w)
			}
			var re *RuleError
			if !errors.As(err, &re) {
				t.Fatalf("error %T is not a *RuleError", err)
			}
			if e.Generation() != gen || len(e.Rules()) != len(issueRules) {
				t.Fatal("a failed Set changed the rule set")
			}
			if err := e.Check(c.rules); err == nil || err.Error() != msg {
				t.Fatalf("Check disagrees with Set: %v", err)
			}
		})
	}
}

func TestSetLimits(t *testing.T) {
	e := newEngine(t)
	many := make([]Rule, MaxRules+1)
	for i := range many {
		many[i] = Rule{Name: fmt.Sprint("r", i), Match: "false", Scheduler: "mirror"}
	}
	if err := e.Set(many); err == nil || !strings.Contains(err.Error(), "at most 1024") {
		t.Fatalf("%d rules: %v", len(many), err)
	}
	long := strings.Repeat("dst.port == 1 || ", MaxMatchLen/16) + "false"
	if err := e.Set([]Rule{{Name: "long", Match: long, Scheduler: "mirror"}}); err == nil || !strings.Contains(err.Error(), `rule 1 "long": match: expression code point size exceeds limit`) {
		t.Fatalf("a %d-character match: %v", len(long), err)
	}
	if _, err := New(Config{DefaultScheduler: "bogus", CheckScheduler: checkScheduler}); err == nil {
		t.Fatal("New accepted an unknown default scheduler")
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("New accepted no default scheduler")
	}
}

// TestEvaluateRuntimeError: a rule that fails at run time does not match,
// the next rule still decides, and Decision.Err says which rule failed.
func TestEvaluateRuntimeError(t *testing.T) {
	e, err := New(Config{DefaultScheduler: "lowrtt", CostLimit: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	err = e.Set([]Rule{
		{Name: "overflow", Match: `dst.port * 9223372036854775807 > 0`, Scheduler: "mirror"},
		{Name: "dynamic", Match: `in_prefix(dst.addr, dst.name)`, Scheduler: "mirror"},
		{Name: "all", Match: `true`, Scheduler: "balance"},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := e.Evaluate(flow.Dest{Proto: flow.TCP, Addr: netip.MustParseAddrPort("10.0.0.1:2")})
	if d.Class != "all" || d.Scheduler != "balance" || d.Rule != 2 {
		t.Fatalf("decision %+v, want rule 3", d)
	}
	if d.Err == nil || !strings.Contains(d.Err.Error(), `rule 1 "overflow": integer overflow`) || !strings.Contains(d.Err.Error(), `rule 2 "dynamic": in_prefix:`) {
		t.Fatalf("Err %v, want both failed rules named", d.Err)
	}
	t.Log(d.Err)
}

func TestFlushAndGeneration(t *testing.T) {
	e := newEngine(t)
	if g := e.Generation(); g != 1 {
		t.Fatalf("initial generation %d", g)
	}
	ssh := dest(flow.TCP, "10.0.0.2:22")
	d := e.Evaluate(ssh)
	if d.Class != DefaultClass || d.Scheduler != "lowrtt" || d.Rule != -1 || d.Generation != 1 {
		t.Fatalf("empty set: %+v", d)
	}
	changed := e.Changed()
	if err := e.Set(issueRules); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Set did not close the Changed channel")
	}
	if d = e.Evaluate(ssh); d.Class != "interactive" || d.Generation != 2 {
		t.Fatalf("after Set: %+v", d)
	}
	if got := e.Rules(); len(got) != 2 || got[0] != issueRules[0] {
		t.Fatalf("Rules() = %v", got)
	}
	changed = e.Changed()
	select {
	case <-changed:
		t.Fatal("the new Changed channel is already closed")
	default:
	}
	e.Flush()
	<-changed
	if d = e.Evaluate(ssh); d.Class != DefaultClass || d.Scheduler != "lowrtt" || d.Generation != 3 {
		t.Fatalf("after Flush: %+v", d)
	}
	if len(e.Rules()) != 0 {
		t.Fatal("Flush left rules")
	}
}

// TestSwapMovesExistingFlows is the issue's row 7 at the policy level: an
// ssh flow mirrored and a bulk flow balanced, then `policy set` swaps them
// and `policy flush` returns both to the default; a flow holder learns each
// change from Changed and re-evaluates.
func TestSwapMovesExistingFlows(t *testing.T) {
	e := newEngine(t)
	if err := e.Set(issueRules); err != nil {
		t.Fatal(err)
	}
	flows := map[string]flow.Dest{"ssh": dest(flow.TCP, "10.0.0.2:22"), "rsync": dest(flow.TCP, "10.0.0.2:873")}
	type change struct{ ssh, rsync string }
	seen := make(chan change, 10)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the holder of the two flows
		defer wg.Done()
		for {
			ch := e.Changed()
			seen <- change{e.Evaluate(flows["ssh"]).Scheduler, e.Evaluate(flows["rsync"]).Scheduler}
			select {
			case <-ch:
			case <-stop:
				return
			}
		}
	}()
	next := func() change {
		t.Helper()
		select {
		case c := <-seen:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("the flow holder saw no change within 5 s")
		}
		return change{}
	}
	if c := next(); c != (change{"mirror", "balance"}) {
		t.Fatalf("initial: %+v", c)
	}
	swapped := []Rule{
		{Name: "interactive", Match: issueRules[0].Match, Scheduler: "balance"},
		{Name: "bulk", Match: issueRules[1].Match, Scheduler: "mirror"},
	}
	if err := e.Set(swapped); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != (change{"balance", "mirror"}) {
		t.Fatalf("after the swap: %+v", c)
	}
	e.Flush()
	if c := next(); c != (change{"lowrtt", "lowrtt"}) {
		t.Fatalf("after flush: %+v", c)
	}
	close(stop)
	wg.Wait()
}

// TestConcurrentSetEvaluate: under -race, Set and Flush against many
// evaluators; every decision comes from one whole rule set (the class and
// scheduler of one generation, never a mix).
func TestConcurrentSetEvaluate(t *testing.T) {
	e := newEngine(t)
	// Generation parity tells which set decided: A sets "a"→mirror, B sets
	// "b"→hedge; both match every flow.
	setA := []Rule{{Name: "a", Match: "true", Scheduler: "mirror"}}
	setB := []Rule{{Name: "b", Match: `dst.port > 0 || true`, Scheduler: "hedge"}}
	valid := map[[2]string]bool{
		{"a", "mirror"}: true, {"b", "hedge"}: true, {DefaultClass, "lowrtt"}: true,
	}
	const writers, readers, rounds = 2, 4, 300
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	stop := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				switch (i + w) % 3 {
				case 0:
					_ = e.Set(setA)
				case 1:
					_ = e.Set(setB)
				default:
					e.Flush()
				}
			}
		}()
	}
	var rwg sync.WaitGroup
	for range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			d := dest(flow.TCP, "10.0.0.2:22")
			var last uint64
			for n := 0; n < 100_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				got := e.Evaluate(d)
				if !valid[[2]string{got.Class, got.Scheduler}] {
					errs <- fmt.Errorf("decision %+v mixes rule sets", got)
					return
				}
				if got.Generation < last {
					errs <- fmt.Errorf("generation went back from %d to %d", last, got.Generation)
					return
				}
				last = got.Generation
			}
		}()
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if g := e.Generation(); g != 1+writers*rounds {
		t.Fatalf("generation %d after %d replacements, want %d", g, writers*rounds, 1+writers*rounds)
	}
}

// TestCostEstimateBoundsEvaluation: the static worst case that Set holds
// against the cost limit is at least what an evaluation really costs, on
// flows with the longest strings, so the limit needs no run-time tracking.
func TestCostEstimateBoundsEvaluation(t *testing.T) {
	e := newEngine(t)
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	flows := []flow.Dest{
		flow.Named(flow.TCP, long, 22),
		dest(flow.ICMP, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:0"),
		dest(flow.UDP, "10.0.0.2:5060"),
	}
	matches := []string{
		issueRules[0].Match,
		issueRules[1].Match,
		`dst.name.matches("^(a+)+[.]b")`,
		`dst.name.contains("ccc") && dst.name.endsWith("d") || dst.addr.startsWith("ffff:")`,
		`in_prefix(dst.addr, ["10.0.0.0/8", "fd00::/8", "ffff::/16"]) || in_prefix(dst.addr, "192.168.0.0/16")`,
		`[1, 2, 3, 4, 5, 6, 7, 8].exists(x, x * 100 == dst.port) || dst.name.size() > 200`,
		`proto + dst.addr + dst.name == "x"`,
	}
	for _, c := range append(matches, benchMatches(20)...) {
		a, iss := e.env.Compile(c)
		if iss.Err() != nil {
			t.Fatalf("%s: %v", c, iss.Err())
		}
		est, err := e.env.EstimateCost(a, sizes{})
		if err != nil {
			t.Fatal(err)
		}
		// The estimate must also be finite and usable: each of these is a
		// match Set accepts.
		if est.Max > DefaultCostLimit {
			t.Errorf("%s: estimated worst case %d, over the default limit", c, est.Max)
		}
		p, err := e.env.Program(a, cel.CostTracking(nil))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range flows {
			_, det, err := p.Eval(newActivation(d))
			if err != nil {
				t.Fatalf("%s on %v: %v", c, d, err)
			}
			got := *det.ActualCost()
			if got > est.Max {
				t.Errorf("%s on %v: cost %d, over the estimate's worst case %d", c, d, got, est.Max)
			}
			if d == flows[0] {
				t.Logf("cost %4d, estimate ≤ %4d: %s", got, est.Max, c)
			}
		}
	}
}
