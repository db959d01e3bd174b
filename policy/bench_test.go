package policy

import (
	"fmt"
	"testing"

	"github.com/usltun/usltun/flow"
)

// benchMatches returns n matches in the style of the issue's: port lists,
// prefixes and names. None matches the benchmark's flow (tcp to
// 10.1.2.3:443), so an Evaluate runs all n: a flow open's worst case.
func benchMatches(n int) []string {
	shapes := []string{
		`proto == "udp" || dst.port in [22, 3389, 5060]`,
		`dst.port == %d`,
		`in_prefix(dst.addr, ["192.168.%d.0/24", "fd00:%d::/64"])`,
		`dst.name.endsWith(".host%d.example")`,
		`proto == "tcp" && dst.port >= %d000 && dst.port < %d999`,
	}
	out := make([]string, n)
	for i := range out {
		m := shapes[i%len(shapes)]
		switch i % len(shapes) {
		case 1:
			m = fmt.Sprintf(m, 800+i)
		case 2, 4:
			m = fmt.Sprintf(m, 10+i, 10+i)
		case 3:
			m = fmt.Sprintf(m, i)
		}
		out[i] = m
	}
	return out
}

func benchRules(n int) []Rule {
	rules := make([]Rule, n)
	for i, m := range benchMatches(n) {
		rules[i] = Rule{Name: fmt.Sprint("class", i), Match: m, Scheduler: schedulers[i%len(schedulers)]}
	}
	return rules
}

// BenchmarkFlowOpen is the policy's part of a flow open: one Evaluate.
func BenchmarkFlowOpen(b *testing.B) {
	d := dest(flow.TCP, "10.1.2.3:443")
	for _, n := range []int{1, 20} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			e := newEngine(b)
			if err := e.Set(benchRules(n)); err != nil {
				b.Fatal(err)
			}
			if got := e.Evaluate(d); got.Class != DefaultClass || got.Err != nil {
				b.Fatalf("decision %+v, want the default after all %d rules", got, n)
			}
			b.ReportAllocs()
			for b.Loop() {
				e.Evaluate(d)
			}
		})
	}
	// The first rule matches: the common cheap case.
	b.Run("rules=20/first-matches", func(b *testing.B) {
		e := newEngine(b)
		if err := e.Set(benchRules(20)); err != nil {
			b.Fatal(err)
		}
		ssh := dest(flow.TCP, "10.1.2.3:22")
		if got := e.Evaluate(ssh); got.Rule != 0 {
			b.Fatalf("decision %+v", got)
		}
		b.ReportAllocs()
		for b.Loop() {
			e.Evaluate(ssh)
		}
	})
}

// BenchmarkSet is the cost of `policy set` with 20 rules (compile and
// install), for comparison.
func BenchmarkSet(b *testing.B) {
	e := newEngine(b)
	rules := benchRules(20)
	b.ReportAllocs()
	for b.Loop() {
		if err := e.Set(rules); err != nil {
			b.Fatal(err)
		}
	}
}
