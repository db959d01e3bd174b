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
	"time"

	"github.com/usltun/usltun/testenv"
)

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

// outcome is what the three parts showed.
type outcome struct {
	tunnelVerified bool // every byte arrived, identical, no application error
	plainReset     bool // plain TCP failed with ECONNRESET
	execShown      bool // nc in usltun exec got every line; plain nc died
	mirrorVerified bool // the two-link act's transfer verified too
}

func (o outcome) ok() bool {
	return o.tunnelVerified && o.plainReset && o.execShown && o.mirrorVerified
}

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
	con.say("  C %-10s runs the server that checks every byte", ip(addrsC))
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
	con.say("")
	if res.execShown, err = w.execPart(ctx, o, con); err != nil {
		return res, err
	}
	if err := w.stopTunnel(); err != nil {
		con.say("Note: %v", err)
	}
	con.say("")
	if res.plainReset, err = w.plainPart(ctx, o, con); err != nil {
		return res, err
	}
	con.say("")
	if res.mirrorVerified, err = w.multipathPart(ctx, o, con); err != nil {
		return res, err
	}
	if lab.Failed() {
		return res, errors.New("the lab reported an error (see lab.log)")
	}
	con.say("")
	switch {
	case res.ok():
		con.say("Result: through usltun every byte arrived unchanged, with no application error;")
		con.say("over plain TCP the same resets killed the connection with ECONNRESET;")
		con.say("nc inside usltun exec got every line while the plain nc next to it died.")
		con.say("with two links and mirror, the same cut cost no stall.")
	case !res.mirrorVerified:
		con.say("Result: FAILED: the two-link transfer did not verify (see above and the logs).")
	case !res.tunnelVerified:
		con.say("Result: FAILED: the transfer through usltun did not verify (see above and the logs).")
	case !res.execShown:
		con.say("Result: FAILED: nc in usltun exec lost lines, or the plain nc did not die (see above).")
	default:
		con.say("Result: FAILED: plain TCP did not end with ECONNRESET, so the comparison shows nothing.")
	}
	return res, nil
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
