// Command usltun is the Unstoppable Session Layer tunnel: a TUN device whose
// TCP and UDP flows are terminated in a local gVisor netstack and carried as
// streams of one resumable, encrypted session to a peer, which dials the real
// destinations. A dying link shows up to applications as a pause, never as an
// error.
package main

import (
	"fmt"
	"os"

	"github.com/alecthomas/kong"
	"github.com/usltun/usltun/usl"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// defaultPort is where `up --listen` listens and where `--peer` without a port
// dials. It is part of the documented interface.
const defaultPort = 7400

type cli struct {
	Genkey  genkeyCmd  `cmd:"" help:"Print a new private key (base64) to stdout."`
	Pubkey  pubkeyCmd  `cmd:"" help:"Read a private key on stdin and print its public key."`
	Up      upCmd      `cmd:"" help:"Run the tunnel in the foreground until SIGINT or SIGTERM."`
	Status  statusCmd  `cmd:"" help:"Show the state of the running daemon."`
	Version versionCmd `cmd:"" help:"Print the version."`
}

func main() {
	var c cli
	ctx := kong.Parse(&c,
		kong.Name("usltun"),
		kong.Description("Unstoppable Session Layer tunnel: TCP and UDP flows that survive link failures."),
		kong.UsageOnError(),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Configuration(loadConfig),
		kong.Vars{"default_port": fmt.Sprint(defaultPort)},
	)
	if err := ctx.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "usltun: %v\n", err)
		os.Exit(1)
	}
}

type versionCmd struct{}

func (versionCmd) Run() error {
	fmt.Printf("usltun %s (USL protocol v%d)\n", version, usl.ProtocolVersion)
	return nil
}
