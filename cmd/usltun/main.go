// Command usltun is the Unstoppable Session Layer tunnel: a TUN device whose
// TCP and UDP flows are terminated in a local gVisor netstack and carried as
// streams of one resumable, encrypted session to a peer, which dials the real
// destinations. A dying link shows up to applications as a pause, never as an
// error.
//
// Exit status: 0 on success, 2 for a usage or validation error (one line on
// stderr saying what is wrong, then a line naming the --help to read), 1 for
// an error at run time.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/alecthomas/kong"
	"github.com/usltun/usltun/netstack"
	"github.com/usltun/usltun/usl"
)

// version is set at build time with -ldflags "-X main.version=..." (make
// build stamps the output of git describe).
var version = "dev"

// defaultPort is where `up --listen` listens and where `--peer` without a port
// dials. It is part of the documented interface.
const defaultPort = 7400

// defaultScheduler is --scheduler's default (why: its help and docs/design.md).
const defaultScheduler = "lowrtt"

// Exit statuses.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

type cli struct {
	Genkey     genkeyCmd     `cmd:"" help:"Print a new private key (base64) to stdout."`
	Pubkey     pubkeyCmd     `cmd:"" help:"Read a private key on stdin and print its public key."`
	Up         upCmd         `cmd:"" help:"Run the tunnel in the foreground until SIGINT or SIGTERM."`
	Status     statusCmd     `cmd:"" help:"Show the state of the running daemon."`
	Policy     policyCmd     `cmd:"" help:"Show, replace or flush the running daemon's Socket Control rules (which scheduler carries which flows)."`
	Reload     reloadCmd     `cmd:"" help:"Make the running daemon re-read the [[peer]] sections of its --config (as SIGHUP does)."`
	Exec       execCmd       `cmd:"" help:"Run a command, without root, in a network namespace whose flows go through the running daemon."`
	Version    versionCmd    `cmd:"" help:"Print the version."`
	Completion completionCmd `cmd:"" help:"Print a shell completion script: bash, zsh or fish."`
	Man        manCmd        `cmd:"" hidden:"" help:"Print the manual page (roff)."`
}

func main() {
	// usltun exec re-executes itself as its namespace helper; see exec.go.
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(runExecHelper())
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// defaultVars fills the flags' ${...} defaults from the constants of the
// packages that apply them, so `usltun up --help` and the library agree.
func defaultVars() kong.Vars {
	return kong.Vars{
		"default_port":           fmt.Sprint(defaultPort),
		"default_scheduler":      defaultScheduler,
		"default_max_streams":    fmt.Sprint(usl.DefaultMaxStreams),
		"default_replay_buffer":  byteSize(usl.DefaultReplayBuffer).String(),
		"default_dead_interval":  usl.DefaultDeadInterval.String(),
		"default_handshake_rate": fmt.Sprint(usl.DefaultHandshakeRate),
		"default_max_flows":      fmt.Sprint(netstack.DefaultMaxFlows),
		"default_address4":       defaultAddress4.String(),
		"default_address6":       defaultAddress6.String(),
	}
}

// kongExit is what kong's Exit panics with (after --help, for instance), so
// that run returns instead of the process exiting under a test.
type kongExit struct{ code int }

// newParser builds the CLI's kong model around c.
func newParser(c *cli, stdout, stderr io.Writer) (*kong.Kong, error) {
	return kong.New(c,
		kong.Name("usltun"),
		kong.Description("Unstoppable Session Layer tunnel: TCP and UDP flows that survive link failures."),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Configuration(loadConfig),
		defaultVars(),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(kongExit{code}) }),
	)
}

// run parses args, runs the selected command and returns the exit status.
func run(args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(kongExit)
			if !ok {
				panic(r)
			}
			code = e.code
		}
	}()
	var c cli
	p, err := newParser(&c, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "usltun: %v\n", err)
		return exitRuntime
	}
	ctx, err := p.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "usltun: %s\n", oneLine(err))
		fmt.Fprintf(stderr, "run '%s --help' for usage\n", helpPath(err, p))
		return exitUsage
	}
	ctx.Bind(cmdIO{stdout: stdout, stderr: stderr})
	if err := ctx.Run(); err != nil {
		fmt.Fprintf(stderr, "usltun: %s\n", oneLine(err))
		return exitRuntime
	}
	return exitOK
}

// cmdIO is where commands write; tests pass buffers.
type cmdIO struct{ stdout, stderr io.Writer }

// oneLine keeps an error message on one line, whatever it wraps.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// helpPath names the command whose --help explains a parse error: the one
// selected so far, else the program.
func helpPath(err error, p *kong.Kong) string {
	var pe *kong.ParseError
	if errors.As(err, &pe) && pe.Context != nil {
		if n := pe.Context.Selected(); n != nil {
			return n.FullPath()
		}
	}
	return p.Model.Name
}

type versionCmd struct{}

func (versionCmd) Run(o cmdIO) error {
	_, err := fmt.Fprintf(o.stdout, "usltun %s (USL protocol v%d)\n", version, usl.ProtocolVersion)
	return err
}
