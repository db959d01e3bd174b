// Command demo shows usltun's claim with real kernels: three hosts A—B—C,
// each a network namespace; a verified transfer between A and C, both ways,
// through the tunnel, across a 10 s cut of the A—B link and a series of TCP
// resets on the tunnel's connection; nc inside `usltun exec` talking to a
// line server on C across resets, next to a plain nc that dies; then the
// same transfer over plain TCP, which dies with ECONNRESET at the first
// reset.
//
//	go run ./tools/demo [--usltun bin/usltun]
//
// It needs root (`make demo` runs it). Without --usltun it builds the binary
// from ./cmd/usltun into its log directory. Daemon and lab logs go to that
// directory, which is removed after a successful run and kept otherwise.
//
// The exit status is 0 only when the usltun transfer verified (identical
// SHA-256 at both ends, no application error) and the plain TCP transfer
// failed with ECONNRESET; 1 otherwise, 2 on usage errors, 130 on interrupt.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
)

// options are the demo's flags; the defaults are the documented demo, the
// end-to-end test shortens the schedule.
type options struct {
	Usltun    string        `placeholder:"PATH" help:"usltun binary to run (make demo passes bin/usltun); built from ./cmd/usltun when empty."`
	Warmup    time.Duration `default:"4s" help:"Streaming before the first fault."`
	Blackhole time.Duration `default:"10s" help:"How long the A—B link is cut."`
	Resets    int           `default:"5" help:"TCP resets injected on the tunnel's connection."`
	Tail      time.Duration `default:"3s" help:"Streaming after the last fault."`
	KeepLogs  bool          `help:"Keep the log directory also after a successful run."`
}

func (o *options) Validate() error {
	return o.validate()
}

func main() {
	var o options
	kong.Parse(&o,
		kong.Name("demo"),
		kong.Description("usltun in one command: a transfer that survives a cut link and TCP resets, next to plain TCP that does not."),
		kong.UsageOnError(),
		// kong exits with 80 on a usage error; the documented status is 2.
		kong.Exit(func(code int) {
			if code == 80 {
				code = 2
			}
			os.Exit(code)
		}),
	)
	// The first Ctrl-C cancels the context: every step returns, and the lab
	// (namespaces, daemons) is torn down before main exits.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &o, os.Stdout)
	stop()
	os.Exit(code)
}
