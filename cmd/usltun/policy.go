package main

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/usltun/usltun/control"
	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/policy"
	"github.com/usltun/usltun/usl"
)

// flowPolicy applies the Socket Control rules (--policy FILE, [[policy]]
// tables) to flows: each flow's stream is evaluated once when it opens
// and gets its rule's scheduler and class (usl.Stream.SetScheduler). When
// the rules are replaced (reload), every open flow is evaluated again and
// moves to its new scheduler at once; frames already scheduled stay where
// they are, so nothing is lost or reset. Both daemons apply their own
// rules to what they send.
type flowPolicy struct {
	eng *policy.Engine
	log *slog.Logger

	mu    sync.Mutex
	flows map[*usl.Stream]flow.Dest
}

func checkScheduler(name string) error {
	_, err := usl.NewScheduler(name)
	return err
}

// newFlowPolicy starts with the rules in file ("" for none).
func newFlowPolicy(file, defaultSched string, log *slog.Logger) (*flowPolicy, error) {
	eng, err := policy.New(policy.Config{DefaultScheduler: defaultSched, CheckScheduler: checkScheduler})
	if err != nil {
		return nil, err
	}
	p := &flowPolicy{eng: eng, log: log, flows: make(map[*usl.Stream]flow.Dest)}
	if file != "" {
		if err := p.load(file); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// load replaces the rules with file's, atomically, and moves the open
// flows. On error the old rules stay.
func (p *flowPolicy) load(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	if err := p.set(data, file); err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	return nil
}

// set replaces the rules with those of a TOML document (file names it in
// errors), all or nothing, and moves the open flows. The whole document is
// checked before anything changes: on error the running rules stay.
func (p *flowPolicy) set(data []byte, file string) error {
	rules, err := policy.ParseTOML(data, file)
	if err != nil {
		return err
	}
	if err := p.eng.Set(rules); err != nil {
		return err
	}
	p.reassign()
	return nil
}

// flush empties the rules: every open flow moves to the default scheduler.
func (p *flowPolicy) flush() {
	p.eng.Flush()
	p.reassign()
}

// state is what `usltun policy show` prints: the rules, their generation,
// and each open flow's class and scheduler (at most control.MaxPolicyFlows
// of them, sorted by destination).
func (p *flowPolicy) state() control.PolicyState {
	s := control.PolicyState{Generation: p.eng.Generation(), Default: p.eng.DefaultScheduler(),
		Rules: []control.PolicyRule{}, Flows: []control.PolicyFlow{}}
	for _, r := range p.eng.Rules() {
		s.Rules = append(s.Rules, control.PolicyRule{Name: r.Name, Match: r.Match, Scheduler: r.Scheduler, Pos: r.Pos})
	}
	p.mu.Lock()
	for st, dst := range p.flows {
		name, class := st.Scheduler()
		s.Flows = append(s.Flows, control.PolicyFlow{Dest: dst.String(), Class: class, Scheduler: name})
	}
	p.mu.Unlock()
	s.FlowsTotal = len(s.Flows)
	slices.SortFunc(s.Flows, func(a, b control.PolicyFlow) int { return cmp.Compare(a.Dest, b.Dest) })
	if len(s.Flows) > control.MaxPolicyFlows {
		s.Flows = s.Flows[:control.MaxPolicyFlows]
	}
	return s
}

// reassign evaluates every open flow again.
func (p *flowPolicy) reassign() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for st, dst := range p.flows {
		p.applyLocked(st, dst)
	}
}

func (p *flowPolicy) applyLocked(st *usl.Stream, dst flow.Dest) {
	d := p.eng.Evaluate(dst)
	if d.Err != nil {
		p.log.Warn("policy rule failed to evaluate", "dst", dst.String(), "err", d.Err)
	}
	sc, err := usl.NewScheduler(d.Scheduler) // Set checked the name
	if err != nil {
		return
	}
	st.SetScheduler(sc, d.Class)
}

// assign applies the rules to a new flow and keeps it for reassignment
// until the returned function says it ended.
func (p *flowPolicy) assign(st *usl.Stream, dst flow.Dest) (ended func()) {
	p.mu.Lock()
	p.flows[st] = dst
	p.applyLocked(st, dst)
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(p.flows, st)
		p.mu.Unlock()
	}
}

// classReport is one line of status: how many open flows a class has and
// which scheduler carries them.
type classReport struct {
	Class     string `json:"class"`
	Scheduler string `json:"scheduler"`
	Flows     int    `json:"flows"`
}

func (p *flowPolicy) report() []classReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	count := map[[2]string]int{}
	for st := range p.flows {
		name, class := st.Scheduler()
		count[[2]string{class, name}]++
	}
	out := []classReport{}
	for k, n := range count {
		out = append(out, classReport{Class: k[0], Scheduler: k[1], Flows: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Class != out[j].Class {
			return out[i].Class < out[j].Class
		}
		return out[i].Scheduler < out[j].Scheduler
	})
	return out
}
