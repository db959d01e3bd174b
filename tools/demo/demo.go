package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/tools/loadgen"
)

// resetBudget is the time planned per injected reset when sizing the
// transfer: the reset itself is immediate, the reconnect waits for usltun's
// redial backoff (at most 1 s by default) plus a handshake.
const resetBudget = 1200 * time.Millisecond

// hardLimit bounds a whole run whatever the flags say, so a hung step can
// never keep the namespaces alive forever.
const hardLimit = 5 * time.Minute

func (o *options) validate() error {
	switch {
	case o.Warmup < 500*time.Millisecond:
		return errors.New("--warmup must be at least 500ms")
	case o.Blackhole < time.Second:
		return errors.New("--blackhole must be at least 1s")
	case o.Resets < 1 || o.Resets > 20:
		return errors.New("--resets must be 1 to 20")
	case o.Tail < 0:
		return errors.New("--tail must not be negative")
	}
	return nil
}

// outcome is what the two parts showed.
type outcome struct {
	tunnelVerified bool // every byte arrived, identical, no application error
	plainReset     bool // plain TCP failed with ECONNRESET
}

func (o outcome) ok() bool { return o.tunnelVerified && o.plainReset }

// run is the whole demo; it returns the exit status.
func run(ctx context.Context, o *options, out io.Writer) int {
	con := newConsole(out)
	if err := o.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: it builds hosts out of network namespaces, which needs root: run it with sudo (or `sudo make demo`)")
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, hardLimit)
	defer cancel()
	dir, err := os.MkdirTemp("", "usltun-demo-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	res, err := demo(ctx, o, dir, con)
	code := 0
	switch {
	case ctx.Err() != nil && errors.Is(context.Cause(ctx), context.Canceled):
		con.say("\nInterrupted. Hosts, links and daemons are removed.")
		code = 130
	case err != nil:
		con.say("\nThe demo failed: %v", err)
		code = 1
	case !res.ok():
		code = 1
	}
	if code == 0 && !o.KeepLogs {
		os.RemoveAll(dir)
	} else {
		con.say("Logs are kept in %s", dir)
	}
	return code
}

// demo sets up the lab, runs both parts and tears everything down, also on
// a failure or an interrupt.
func demo(ctx context.Context, o *options, dir string, con *console) (res outcome, err error) {
	logFile, err := os.Create(filepath.Join(dir, "lab.log"))
	if err != nil {
		return res, err
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, nil))
	lab := testenv.NewLab(log)
	var w *world
	// Deferred in this order, they run as: recover a lab failure, tear the
	// lab down, then save the daemons' final output.
	defer func() {
		if w != nil {
			w.saveDaemonLogs()
		}
	}()
	defer lab.Close()
	defer lab.Recover(&err)

	con.say("usltun demo: three hosts A — B — C, each a Linux network namespace.")
	con.say("  A %-10s runs usltun, which routes C's subnet %s into the tunnel", ip(addrA), tunnelNet)
	con.say("  B %-10s runs usltun, which listens on port %d and exports %s", ip(addrB), sessionPort, tunnelNet)
	con.say("  C %-10s runs the server that checks every byte", strings.Split(ip(addrsC), ",")[0])
	con.say("Logs go to %s (removed after a successful run).", dir)
	con.say("")

	bin := o.Usltun
	if bin == "" {
		con.say("Building usltun...")
		if bin, err = buildUsltun(ctx, dir); err != nil {
			return res, err
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return res, err
	}
	if _, err := os.Stat(bin); err != nil {
		return res, fmt.Errorf("usltun binary: %w (build it with `make build`, or leave out --usltun)", err)
	}
	t0 := time.Now()
	w, err = buildWorld(lab, bin, dir, log)
	if err != nil {
		return res, err
	}
	if err := w.startTunnel(ctx); err != nil {
		return res, err
	}
	con.say("Keys generated with usltun genkey, both daemons started: the tunnel is up after %s.", seconds(time.Since(t0)))

	if res.tunnelVerified, err = w.tunnelPart(ctx, o, con); err != nil {
		return res, err
	}
	if err := w.stopTunnel(); err != nil {
		con.say("Note: %v", err)
	}
	con.say("")
	if res.plainReset, err = w.plainPart(ctx, o, con); err != nil {
		return res, err
	}
	if lab.Failed() {
		return res, errors.New("the lab reported an error (see lab.log)")
	}
	con.say("")
	switch {
	case res.ok():
		con.say("Result: through usltun every byte arrived unchanged, with no application error;")
		con.say("over plain TCP the same resets killed the connection with ECONNRESET.")
	case !res.tunnelVerified:
		con.say("Result: FAILED: the transfer through usltun did not verify (see above and the logs).")
	default:
		con.say("Result: FAILED: plain TCP did not end with ECONNRESET, so the comparison shows nothing.")
	}
	return res, nil
}

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
	if d, ok := w.waitDelivery(ctx, before, 15*time.Second); ok {
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
// long that took.
func (w *world) waitDelivery(ctx context.Context, before int64, timeout time.Duration) (time.Duration, bool) {
	t0 := time.Now()
	for time.Since(t0) < timeout {
		if w.delivered.Load() > before {
			return time.Since(t0), true
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

// buildUsltun builds ./cmd/usltun into dir; the package path works from
// anywhere inside the module.
func buildUsltun(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "usltun")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/usltun/usltun/cmd/usltun")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build usltun (or pass --usltun PATH): %w\n%s", err, out)
	}
	return bin, nil
}

// ip strips the prefix length off "10.61.1.1/24".
func ip(cidr string) string {
	s, _, _ := strings.Cut(cidr, "/")
	return s
}
