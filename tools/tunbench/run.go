package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// runner runs the benchmark's parts over the modes that came up. Parts run
// one after the other; inside a part the modes take turns, and the
// throughput repetitions alternate between modes (A, B, C, A, B, C, …), so
// a burst of unrelated work on the machine lands on every mode alike.
type runner struct {
	ctx    context.Context
	o      *options
	l      *lab
	modes  []mode
	res    map[mode]*ModeResult
	all    *Results
	uslBin string // the usltun binary, for the mirror part; "" without usltun
}

// runModes brings every mode up (all at once: each has its own address on
// C), runs the selected parts and records the results in res.
func runModes(ctx context.Context, o *options, l *lab, modes []mode, uslBin string, res *Results) {
	r := &runner{ctx: ctx, o: o, l: l, res: map[mode]*ModeResult{}, all: res, uslBin: uslBin}
	// Stop the daemons here, gracefully, rather than in the lab's cleanups:
	// those run newest first, so the SIGKILL registered for each process
	// would come before its SIGTERM, and wireguard-go would leave its
	// control socket behind. Runs on panics (Lab.Fatalf) and Ctrl-C too.
	var started []mode
	defer func() {
		for _, m := range started {
			m.Down()
		}
	}()
	for _, m := range modes {
		mr := &ModeResult{Mode: m.Name()}
		res.Modes = append(res.Modes, mr)
		if ctx.Err() != nil {
			return
		}
		progress("%s: setting up", m.Name())
		started = append(started, m)
		if err := m.Up(ctx); err != nil {
			r.fail(mr, "up", err)
			m.Down()
			continue
		}
		// One untimed connect: wireguard-go handshakes on the first
		// packet, and that belongs to no figure.
		if _, err := measureConnect(ctx, l.a, l.c, fmt.Sprintf("%s:%d", m.Target(), connectPort), 3); err != nil {
			r.fail(mr, "warm-up", err)
			m.Down()
			continue
		}
		r.res[m] = mr
		r.modes = append(r.modes, m)
	}
	if r.want("throughput") {
		r.throughput()
	}
	if r.want("mirror") {
		r.mirror()
	}
	if r.want("latency") {
		r.latency()
	}
	if r.want("connect") {
		r.connect()
	}
	if r.want("idle") {
		r.idle()
	}
	if r.want("recovery") {
		r.recovery()
	}
}

func (r *runner) want(part string) bool { return r.ctx.Err() == nil && r.o.part(part) }

// fail records a part's error; after an interrupt the parts' errors are
// only echoes of it and are dropped.
func (r *runner) fail(mr *ModeResult, part string, err error) {
	if r.ctx.Err() != nil {
		return
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, part) {
		msg = part + ": " + msg
	}
	mr.Errors = append(mr.Errors, msg)
	progress("%s: %s", mr.Mode, msg)
}

func (r *runner) perfOut(m mode, what string) string {
	if r.o.perfDir == "" {
		return ""
	}
	return filepath.Join(r.o.perfDir, fmt.Sprintf("perf-%s-%s.data", m.Name(), what))
}

func (r *runner) throughput() {
	for _, n := range []int{1, 4} {
		progress("throughput, %d stream(s): %d × %v per mode, alternating", n, r.o.repeat, r.o.duration)
		runs := map[mode][]Throughput{}
		failed := map[mode]bool{}
		for i := range r.o.repeat {
			for _, m := range r.modes {
				if failed[m] || r.ctx.Err() != nil {
					continue
				}
				perf := ""
				if i == 0 {
					perf = r.perfOut(m, fmt.Sprint(n))
				}
				t, err := measureThroughput(r.ctx, r.l, m.Daemons(), m.Target(), n, r.o.duration, perf)
				if err != nil {
					r.fail(r.res[m], fmt.Sprintf("throughput -P %d", n), err)
					failed[m] = true
					continue
				}
				runs[m] = append(runs[m], t)
			}
		}
		for m, rs := range runs {
			t := medianRun(rs)
			if n == 1 {
				r.res[m].Single = &t
			} else {
				r.res[m].Multi = &t
			}
		}
	}
}

func (r *runner) latency() {
	for _, m := range r.modes {
		progress("%s: request/response latency, %v", m.Name(), r.o.rrTime)
		rr, err := measureRR(r.ctx, r.l, m.Daemons(), m.Target(), r.o.rrTime, r.perfOut(m, "rr"))
		if err != nil {
			r.fail(r.res[m], "latency", err)
			continue
		}
		r.res[m].RR = &rr
		progress("%s: sockperf ping-pong, %v", m.Name(), r.o.rrTime)
		sp, err := measureSockperf(r.ctx, r.l, m.Target(), r.o.rrTime)
		if err != nil {
			r.fail(r.res[m], "sockperf", err)
			continue
		}
		r.res[m].Sockperf = &sp
	}
}

// mirror compares usltun's CPU per Gbit/s over one path with the mirror
// scheduler over two A—B paths: a second pair of daemons (their own C
// address, port and keys) runs next to the one-path pair, and 1-stream
// runs alternate between them.
func (r *runner) mirror() {
	var one mode
	for _, m := range r.modes {
		if m.Name() == modeUSL {
			one = m
		}
	}
	if one == nil || r.uslBin == "" {
		return // the mirror figure is a ratio against usltun's one path
	}
	mr := &Mirror{}
	r.all.Mirror = mr
	fail := func(what string, err error) {
		if r.ctx.Err() == nil {
			mr.Errors = append(mr.Errors, what+": "+err.Error())
			progress("mirror: %s: %v", what, err)
		}
	}
	two := newUsltunMirror(r.l, r.uslBin, r.o.uslEnv)
	defer two.Down()
	progress("%s: setting up", two.Name())
	if err := two.Up(r.ctx); err != nil {
		fail("up", err)
		return
	}
	if _, err := measureConnect(r.ctx, r.l.a, r.l.c, fmt.Sprintf("%s:%d", two.Target(), connectPort), 3); err != nil {
		fail("warm-up", err)
		return
	}
	progress("mirror: 1 stream, %d × %v per mode, alternating", r.o.repeat, r.o.duration)
	var ones, twos []Throughput
	for i := range r.o.repeat {
		for _, m := range []mode{one, two} {
			perf := ""
			if i == 0 {
				perf = r.perfOut(m, "mirror-part")
			}
			t, err := measureThroughput(r.ctx, r.l, m.Daemons(), m.Target(), 1, r.o.duration, perf)
			if err != nil {
				fail(m.Name(), err)
				return
			}
			if m == one {
				ones = append(ones, t)
			} else {
				twos = append(twos, t)
			}
		}
	}
	mr.One, mr.Two = medianRun(ones), medianRun(twos)
}

func (r *runner) connect() {
	for _, m := range r.modes {
		progress("%s: %d connects", m.Name(), r.o.connects)
		c, err := measureConnect(r.ctx, r.l.a, r.l.c, fmt.Sprintf("%s:%d", m.Target(), connectPort), r.o.connects)
		if err != nil {
			r.fail(r.res[m], "connect", err)
			continue
		}
		r.res[m].Connect = &c
	}
}

func (r *runner) idle() {
	levels := r.o.idleFlows
	for _, m := range r.modes {
		if len(m.Daemons()) == 0 || len(levels) == 0 || r.ctx.Err() != nil {
			continue // direct routing has no daemon to weigh
		}
		// Fresh daemons, so the baseline is not the heap left over from
		// the throughput runs.
		if u, ok := m.(*usltunMode); ok {
			// Room for the largest level: the default --max-flows and
			// --max-streams are below 10,000.
			room := fmt.Sprint(levels[len(levels)-1] + 1000)
			u.extra = []string{"--max-flows", room, "--max-streams", room}
		}
		m.Down()
		if err := m.Up(r.ctx); err != nil {
			r.fail(r.res[m], "idle: restart", err)
			continue
		}
		progress("%s: idle flows %v", m.Name(), levels)
		idle, err := measureIdle(r.ctx, r.l, m.Daemons(), m.Target(), idlePortC, levels)
		if err != nil {
			r.fail(r.res[m], "idle", err)
		}
		if len(idle.Levels) > 0 {
			r.res[m].Idle = &idle
		}
	}
}

func (r *runner) recovery() {
	for _, m := range r.modes {
		if m.Name() == modeDirect || r.ctx.Err() != nil {
			continue // the issue compares usltun with TCP through wireguard-go
		}
		progress("%s: recovery after a %v blackhole", m.Name(), r.o.blackhole)
		rec, err := measureRecovery(r.ctx, r.l, m.Target(), r.o.blackhole, r.o.recCap)
		if err != nil {
			r.fail(r.res[m], "recovery", err)
		}
		if err == nil || rec.Delay >= 0 {
			r.res[m].Recovery = &rec
		}
	}
}
