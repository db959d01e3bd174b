package main

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

// The two parts of the demo: the transfer through usltun with its fault
// schedule, and the same transfer over plain TCP.

// resetBudget is the time planned per injected reset when sizing the
// transfer: the reset itself is immediate, the reconnect waits for usltun's
// redial backoff (at most 1 s by default) plus a handshake.
const resetBudget = 1200 * time.Millisecond

// tunnelPart streams between A and C through usltun across the faults and
// reports whether the transfer verified. Data flows both ways, as in the
// plain part, where it makes sure each end sends and so receives an RST.
func (w *world) tunnelPart(ctx context.Context, o *options, con *console) (bool, error) {
	duration := o.Warmup + o.Blackhole + time.Duration(o.Resets)*resetBudget + o.Tail
	con.say("Streaming verified data between A and C, both ways, through the tunnel for about %s.", span(duration.Round(time.Second)))
	run, err := loadgen.Start(ctx, loadgen.Config{
		Addr: tunnelDst, Dial: w.a.DialContext, Dirs: loadgen.Both, Duration: duration, Seed: 1,
		ReportWait: 15 * time.Second,
	})
	if err != nil {
		return false, err
	}
	// A transfer that outlives its schedule by this much is stuck, and is
	// stopped so the demo still ends with a verdict.
	limit := time.NewTimer(duration + 45*time.Second)
	defer limit.Stop()
	var marking atomic.Bool // heals count for this run only
	marking.Store(true)
	w.ab.OnHeal(func(t time.Time) {
		if marking.Load() {
			run.MarkHeal(t)
		}
	})
	lv := w.startLive(con, run, true)
	stopped := false
	stopLive := func() {
		if !stopped {
			stopped = true
			lv.stop()
		}
	}
	defer stopLive()

	cutHeal, err := w.faults(ctx, o, con)
	if err != nil {
		run.Cancel()
		return false, err
	}
	select {
	case <-run.Done():
	case <-ctx.Done():
		return false, ctx.Err()
	case <-limit.C:
		con.say("The transfer did not end in time; stopping it.")
		run.Cancel()
		<-run.Done()
	}
	stopLive()
	marking.Store(false)
	rep, _ := run.Wait() // an incomplete report shows as not verified
	w.saveReport("tunnel", rep)
	for _, h := range []string{"a", "b"} {
		if !w.usltun[h].Running() {
			return false, fmt.Errorf("usltun on %s exited during the transfer (see usltun-%s.log)", strings.ToUpper(h), h)
		}
	}
	st, err := w.status()
	if err != nil {
		return false, err
	}
	recovery := time.Duration(-1)
	for _, rc := range rep.Recoveries {
		if rc.Heal.Equal(cutHeal) && rc.Delay >= 0 {
			recovery = rc.Delay
		}
	}
	verified := rep.Verified && len(rep.Errors) == 0
	w.onePathStall = rep.LongestStall
	con.say("")
	con.say("Through usltun:")
	con.say("%s", strings.TrimRight(formatTunnelSummary(rep, sessionSummary{Reconnects: st.Reconnects, Retransmitted: st.RetransmittedBytes}, recovery), "\n"))
	return verified, nil
}

// faults runs the schedule on the A—B link: warm-up, cut, resets, heal. It
// returns the time the cut was healed.
func (w *world) faults(ctx context.Context, o *options, con *console) (time.Time, error) {
	if !sleepCtx(ctx, o.Warmup) {
		return time.Time{}, ctx.Err()
	}
	con.say("Cutting the A—B link for %s: every packet, both ways, is dropped.", span(o.Blackhole))
	if err := w.ab.Blackhole(); err != nil {
		return time.Time{}, err
	}
	if !sleepCtx(ctx, o.Blackhole) {
		return time.Time{}, ctx.Err()
	}
	before := w.delivered.Load()
	if err := w.ab.Heal(); err != nil {
		return time.Time{}, err
	}
	cutHeal := w.ab.HealedAt()
	if d, ok := w.waitDelivery(ctx, before, cutHeal, 15*time.Second); ok {
		con.say("The link is back: data reaches C again %s later.", seconds(d))
	} else if ctx.Err() != nil {
		return cutHeal, ctx.Err()
	} else {
		con.say("The link is back, but no data reached C within 15 s.")
	}

	con.say("Resetting the tunnel's TCP connection (port %d) %d times, as a NAT or firewall that drops its state would.", sessionPort, o.Resets)
	for i := 1; i <= o.Resets; i++ {
		msg, err := w.resetOnce(ctx)
		if err != nil {
			return cutHeal, err
		}
		con.say("  reset %d/%d: %s", i, o.Resets, msg)
	}
	con.say("Healing the link: no fault is left. The transfer runs to its end.")
	if err := w.ab.Heal(); err != nil {
		return cutHeal, err
	}
	return cutHeal, nil
}

// resetOnce makes every TCP segment of the tunnel's connection answer with
// an RST until the connection has died, lifts the rule, and waits for usltun
// to reconnect. It describes what happened.
func (w *world) resetOnce(ctx context.Context) (string, error) {
	st, err := w.status()
	if err != nil {
		return "", err
	}
	t0 := time.Now()
	if err := w.ab.ResetTCP(sessionPort); err != nil {
		return "", err
	}
	_, hitErr := w.waitSession(ctx, 3*time.Second, func(s *sessionStatus) bool { return s.State != "up" })
	if err := w.ab.Heal(); err != nil {
		return "", err
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	_, err = w.waitSession(ctx, 10*time.Second, func(s *sessionStatus) bool {
		return s.State == "up" && s.Reconnects > st.Reconnects
	})
	switch {
	case ctx.Err() != nil:
		return "", ctx.Err()
	case hitErr != nil:
		return "the connection was not reset within 3 s (no traffic?)", nil
	case err != nil:
		return "", fmt.Errorf("usltun did not reconnect after a reset: %w", err)
	}
	return fmt.Sprintf("connection reset; usltun reconnected %s later", seconds(time.Since(t0))), nil
}

// waitDelivery waits until C has read more than before, and returns how
// long after since that was (within 5 ms, the polling interval).
func (w *world) waitDelivery(ctx context.Context, before int64, since time.Time, timeout time.Duration) (time.Duration, bool) {
	for time.Since(since) < timeout {
		if w.delivered.Load() > before {
			return time.Since(since), true
		}
		if !sleepCtx(ctx, 5*time.Millisecond) {
			return 0, false
		}
	}
	return 0, false
}

// plainPart streams between A and C over the kernel's routing through B,
// resets the connection on the A—B link, and reports whether it died with
// ECONNRESET, as it must without usltun. The reset rule answers a segment
// with an RST; an end that never sends again (a pure receiver whose sender
// was reset first) would never learn, so data flows both ways.
func (w *world) plainPart(ctx context.Context, o *options, con *console) (bool, error) {
	warm := min(o.Warmup, 2*time.Second)
	con.say("Now the same over plain TCP: A → B → C routed by the kernel, no usltun.")
	run, err := loadgen.Start(ctx, loadgen.Config{
		Addr: plainDst, Dial: w.a.DialContext, Dirs: loadgen.Both, Duration: warm + 10*time.Second, Seed: 2,
		ReportWait: 10 * time.Second,
	})
	if err != nil {
		return false, err
	}
	lv := w.startLive(con, run, false)
	if !sleepCtx(ctx, warm) {
		lv.stop()
		return false, ctx.Err()
	}
	con.say("Injecting the same TCP resets on the A—B link, on the application's port %d.", appPort)
	if err := w.ab.ResetTCP(appPort); err != nil {
		lv.stop()
		return false, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for run.Progress().Errors == 0 && time.Now().Before(deadline) && sleepCtx(ctx, 10*time.Millisecond) {
	}
	// Lifted at once, so the run can fetch C's half of the report.
	if err := w.ab.Heal(); err != nil {
		lv.stop()
		return false, err
	}
	rep, _ := run.Wait()
	lv.stop()
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	w.saveReport("plain", rep)
	died := rep.HasErrno("ECONNRESET")
	if died {
		con.say("The connection died at the first reset.")
	} else {
		con.say("The connection did not fail with ECONNRESET (errors: %v).", rep.Errnos())
	}
	con.say("")
	con.say("Over plain TCP:")
	con.say("%s", strings.TrimRight(formatPlainSummary(rep), "\n"))
	return died, nil
}

// multipathPart is the second act: the same daemons restarted with two
// A—B links as two paths of one session and --scheduler mirror, the same
// streaming, and link 1 cut for as long as in the first act. Every frame
// travels both links, so the cut costs (almost) nothing.
func (w *world) multipathPart(ctx context.Context, o *options, con *console) (bool, error) {
	con.say("Second act: two A—B links (%s and %s), each a path of one usltun session, --scheduler mirror.", ip(addrB), ip(addrB2))
	w.usltun["b"] = w.b.Start(w.lab, "usltun", w.bin, "up", "--key", w.keys.b, "--peer-key", w.keys.pubA,
		"--listen", peerB, "--listen", peerB2, "--export", tunnelNet, "--scheduler", "mirror")
	w.usltun["a"] = w.a.Start(w.lab, "usltun", w.bin, "up", "--key", w.keys.a, "--peer-key", w.keys.pubB,
		"--peer", peerB, "--peer", peerB2, "--route", tunnelNet, "--scheduler", "mirror")
	if _, err := w.waitSession(ctx, 15*time.Second, func(s *sessionStatus) bool { return s.State == "up" && s.Device != "" && s.upPaths() == 2 }); err != nil {
		return false, fmt.Errorf("the two-path tunnel did not come up: %w", err)
	}
	if err := w.a.WaitDial("tcp", tunnelDst, 10*time.Second); err != nil {
		return false, fmt.Errorf("the two-path tunnel does not carry connections: %w", err)
	}
	duration := o.Warmup + o.Blackhole + o.Tail
	run, err := loadgen.Start(ctx, loadgen.Config{
		Addr: tunnelDst, Dial: w.a.DialContext, Dirs: loadgen.Both, Duration: duration, Seed: 3,
		ReportWait: 15 * time.Second,
	})
	if err != nil {
		return false, err
	}
	lv := w.startLive(con, run, true)
	if !sleepCtx(ctx, o.Warmup) {
		lv.stop()
		run.Cancel()
		return false, ctx.Err()
	}
	con.say("Cutting link 1 for %s; link 2 stays up.", span(o.Blackhole))
	if err := w.ab.Blackhole(); err != nil {
		lv.stop()
		return false, err
	}
	if !sleepCtx(ctx, o.Blackhole) {
		lv.stop()
		run.Cancel()
		return false, ctx.Err()
	}
	if err := w.ab.Heal(); err != nil {
		lv.stop()
		return false, err
	}
	limit := time.NewTimer(duration + 45*time.Second)
	defer limit.Stop()
	select {
	case <-run.Done():
	case <-ctx.Done():
		lv.stop()
		return false, ctx.Err()
	case <-limit.C:
		con.say("The transfer did not end in time; stopping it.")
		run.Cancel()
		<-run.Done()
	}
	lv.stop()
	rep, _ := run.Wait()
	w.saveReport("multipath", rep)
	if err := w.stopTunnel(); err != nil {
		con.say("Note: %v", err)
	}
	verified := rep.Verified && len(rep.Errors) == 0
	con.say("")
	con.say("Through usltun with two links, mirror:")
	con.say("%s", strings.TrimRight(formatMultipathSummary(rep, w.onePathStall), "\n"))
	return verified, nil
}
