// Package policy is usltun's "Socket Control" rule engine: it decides, once
// per flow, which class a flow belongs to and which multipath scheduler
// carries it.
//
// A rule set is an ordered list of rules, each a name (the class), a match
// and a scheduler name. The match is a CEL expression (cel.dev/cel-go) of
// type bool over the flow's attributes:
//
//	proto     string  "tcp", "udp" or "icmp"
//	dst.addr  string  the destination IP address ("10.0.0.2", "fd00::2"),
//	                  or "" when the flow names a host
//	dst.port  int     the destination port (0 for icmp)
//	dst.name  string  the destination host name, or "" for an address
//
// plus CEL's standard operators, macros and string functions, and one of
// usltun's own:
//
//	in_prefix(addr, "10.0.0.0/8")                    bool
//	in_prefix(addr, ["10.0.0.0/8", "fd00::/8"])      bool, any of them
//
// which is false for an addr that is not an IP address (so for a named
// destination's ""). For example:
//
//	proto == "udp" || dst.port in [22, 3389, 5060]
//	in_prefix(dst.addr, "10.20.0.0/16") && dst.port == 873
//	dst.name.endsWith(".corp.example")
//
// The first rule whose match is true gives the flow's Decision: its class
// is the rule's name and its scheduler the rule's. A flow no rule matches
// gets DefaultClass and the engine's default scheduler.
//
// Contract:
//   - Set compiles the whole rule set before it installs it: each match is
//     parsed and type-checked (unknown variables and functions, a result
//     that is not bool, an in_prefix literal that is not a prefix, a match
//     whose worst-case cost exceeds the cost limit), each scheduler name is
//     checked by the caller's CheckScheduler, and names must be non-empty,
//     unique and not DefaultClass. Any error leaves the installed set as it
//     was; the error says which rule, and where (the CEL position in the
//     match, the rule's line in its file when it came from ParseTOML).
//   - Set and Flush replace the rule set atomically: an Evaluate sees the
//     old set or the new one, never a mix. Each replacement increments the
//     generation and closes the channel Changed returned, so holders of
//     existing flows learn at once that their decision may be stale and
//     call Evaluate again (it is cheap, but meant for flow open and rule
//     changes, never per frame).
//   - Evaluate is safe for concurrent use with itself, Set and Flush, never
//     blocks and never fails: a rule whose evaluation errors (an arithmetic
//     overflow, an in_prefix on a computed string that is not a prefix) does
//     not match, and Decision.Err says why, for the caller to log. Its cost
//     is bounded by the cost limit, which Set holds every match's worst case
//     to.
package policy

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"cel.dev/cel-go/cel"
	"github.com/usltun/usltun/flow"
)

// DefaultClass is the class of flows that no rule matches.
const DefaultClass = "default"

// Limits of a rule set, checked by Set.
const (
	// MaxRules is the most rules a set may have.
	MaxRules = 1024
	// MaxMatchLen is the longest match expression, in code points.
	MaxMatchLen = 4096
	// DefaultCostLimit is a rule's CEL cost limit per evaluation when
	// Config.CostLimit is 0. The example rules cost at most 16 and
	// 2; a regular expression over the longest dst.name 65; four nested
	// comprehensions over ten-element lists 135551 (rejected).
	DefaultCostLimit = 10_000
)

// Rule is one entry of a rule set, as the user wrote it.
type Rule struct {
	Name      string // the class of the flows it matches
	Match     string // a CEL expression of type bool
	Scheduler string // the scheduler of those flows
	// Pos is where the rule was written ("rules.toml:3"), for errors; it
	// may be empty. ParseTOML sets it.
	Pos string
}

// Decision is what the rule set says about one flow.
type Decision struct {
	Class     string // the matching rule's name, or DefaultClass
	Scheduler string // its scheduler, or the default scheduler
	// Rule is the index of the matching rule in the set, -1 for the default.
	Rule int
	// Generation is the rule set's generation; a Decision is current while
	// it equals Engine.Generation.
	Generation uint64
	// Err is why some rule could not be evaluated (and so did not match);
	// nil normally.
	Err error
}

// Config configures an Engine.
type Config struct {
	// DefaultScheduler is the scheduler of flows no rule matches (the
	// daemon's --scheduler). Required, and checked by CheckScheduler.
	DefaultScheduler string
	// CheckScheduler returns an error for a scheduler name that does not
	// exist (e.g. "unknown scheduler; want failover, lowrtt, ..."). nil
	// accepts any non-empty name.
	CheckScheduler func(name string) error
	// CostLimit bounds the CEL cost of evaluating one rule's match; 0 is
	// DefaultCostLimit. Set rejects a match whose worst case (CEL's static
	// estimate, with the flow's strings at their longest: 4 bytes of proto,
	// 39 of dst.addr, 253 of dst.name) exceeds it, so no evaluation can.
	CostLimit uint64
}

// Engine holds the current rule set. Its methods are safe for concurrent
// use.
type Engine struct {
	cfg Config
	env *cel.Env

	mu  sync.Mutex // serialises Set and Flush
	cur atomic.Pointer[ruleSet]
}

// ruleSet is one compiled, immutable generation of rules.
type ruleSet struct {
	gen     uint64
	rules   []Rule
	progs   []cel.Program
	changed chan struct{} // closed when this set is replaced
}

// New returns an engine with an empty rule set (generation 1): every flow
// gets the default.
func New(cfg Config) (*Engine, error) {
	if cfg.CostLimit == 0 {
		cfg.CostLimit = DefaultCostLimit
	}
	if err := cfg.checkScheduler(cfg.DefaultScheduler); err != nil {
		return nil, fmt.Errorf("policy: default scheduler: %w", err)
	}
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("policy: CEL environment: %w", err)
	}
	e := &Engine{cfg: cfg, env: env}
	e.cur.Store(&ruleSet{gen: 1, changed: make(chan struct{})})
	return e, nil
}

func (c *Config) checkScheduler(name string) error {
	if name == "" {
		return errors.New("no scheduler given")
	}
	if c.CheckScheduler == nil {
		return nil
	}
	if err := c.CheckScheduler(name); err != nil {
		return fmt.Errorf("scheduler %q: %w", name, err)
	}
	return nil
}

// Check compiles rules as Set does, without installing them.
func (e *Engine) Check(rules []Rule) error {
	_, err := e.compile(rules)
	return err
}

// Set compiles rules and, if all of them are valid, makes them the rule set
// in one step; otherwise it returns every rule's errors (joined) and changes
// nothing.
func (e *Engine) Set(rules []Rule) error {
	next, err := e.compile(rules)
	if err != nil {
		return err
	}
	e.install(next)
	return nil
}

// Flush goes back to the empty rule set: every flow gets the default.
func (e *Engine) Flush() {
	e.install(&ruleSet{})
}

func (e *Engine) install(next *ruleSet) {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.cur.Load()
	next.gen = old.gen + 1
	next.changed = make(chan struct{})
	// Store before close: whoever wakes up on the old channel finds the new
	// set.
	e.cur.Store(next)
	close(old.changed)
}

// Generation is the current rule set's generation: 1 for the engine's
// initial empty set, one more for every Set and Flush since.
func (e *Engine) Generation() uint64 { return e.cur.Load().gen }

// Changed returns a channel that is closed when the current rule set is
// replaced. Holders of flows wait on it, then re-Evaluate their flows (and
// call Changed again for the next change).
func (e *Engine) Changed() <-chan struct{} { return e.cur.Load().changed }

// Rules returns a copy of the current rules, in order.
func (e *Engine) Rules() []Rule { return slices.Clone(e.cur.Load().rules) }

// DefaultScheduler is the scheduler of flows no rule matches.
func (e *Engine) DefaultScheduler() string { return e.cfg.DefaultScheduler }

// Evaluate decides the class and scheduler of a flow to d, with the current
// rule set. Call it when the flow opens and when Changed fires, not per
// frame.
func (e *Engine) Evaluate(d flow.Dest) Decision {
	rs := e.cur.Load()
	act := newActivation(d)
	var errs []error
	for i, p := range rs.progs {
		out, _, err := p.Eval(act)
		if err != nil {
			errs = append(errs, fmt.Errorf("policy: rule %d %q: %w", i+1, rs.rules[i].Name, err))
			continue
		}
		if out == celTrue {
			r := &rs.rules[i]
			return Decision{Class: r.Name, Scheduler: r.Scheduler, Rule: i, Generation: rs.gen, Err: errors.Join(errs...)}
		}
	}
	return Decision{
		Class: DefaultClass, Scheduler: e.cfg.DefaultScheduler, Rule: -1,
		Generation: rs.gen, Err: errors.Join(errs...),
	}
}

// RuleError is what is wrong with one rule of a set given to Set or Check.
type RuleError struct {
	Index int    // 0-based position in the set
	Name  string // the rule's name as given
	Pos   string // Rule.Pos
	Err   error
}

func (e *RuleError) Error() string {
	s := fmt.Sprintf("rule %d", e.Index+1)
	if e.Name != "" {
		s += fmt.Sprintf(" %q", e.Name)
	}
	if e.Pos != "" {
		s = e.Pos + ": " + s
	}
	return s + ": " + e.Err.Error()
}

func (e *RuleError) Unwrap() error { return e.Err }

// compile checks and compiles every rule, collecting each rule's errors.
func (e *Engine) compile(rules []Rule) (*ruleSet, error) {
	if len(rules) > MaxRules {
		return nil, fmt.Errorf("policy: %d rules, at most %d", len(rules), MaxRules)
	}
	rs := &ruleSet{rules: slices.Clone(rules), progs: make([]cel.Program, len(rules))}
	var errs []error
	seen := make(map[string]int, len(rules))
	for i, r := range rules {
		fail := func(err error) { errs = append(errs, &RuleError{Index: i, Name: r.Name, Pos: r.Pos, Err: err}) }
		switch first, dup := seen[r.Name]; {
		case r.Name == "":
			fail(errors.New("no name"))
		case r.Name == DefaultClass:
			fail(fmt.Errorf("the name %q is the class of flows no rule matches", DefaultClass))
		case dup:
			fail(fmt.Errorf("the name is also rule %d's", first+1))
		default:
			seen[r.Name] = i
		}
		if err := e.cfg.checkScheduler(r.Scheduler); err != nil {
			fail(err)
		}
		p, err := e.compileMatch(r.Match)
		if err != nil {
			fail(err)
			continue
		}
		rs.progs[i] = p
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rs, nil
}
