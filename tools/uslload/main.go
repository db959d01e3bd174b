// Command uslload generates verified TCP traffic and reports what the
// application saw: bytes, rate, the longest stall, every error with its
// errno, and the recovery delay after a fault was healed.
//
//	uslload server --listen :9000
//	uslload client --connect 10.20.0.3:9000 --flows 4 --bytes 64MiB [--json]
//
// The exit status of the client is 0 when every flow verified (identical
// SHA-256 at both ends, no error), 1 otherwise, 2 on usage errors.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/usltun/usltun/tools/loadgen"
)

type serverCmd struct {
	Listen string `default:":9000" help:"Address to listen on."`
}

func (c *serverCmd) Run(log *slog.Logger) error {
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", c.Listen, err)
	}
	srv := loadgen.NewServer(ln, log)
	log.Info("uslload server listening", "addr", ln.Addr().String())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return srv.Close()
}

type clientCmd struct {
	Connect    string        `required:"" help:"Server address host:port."`
	Flows      int           `default:"1" help:"Concurrent flows."`
	Seed       uint64        `default:"1" help:"Seed of the byte streams."`
	Mode       string        `default:"bulk" enum:"bulk,halfclose,rr" help:"bulk, halfclose (write, shutdown, read reply) or rr (request/response latency)."`
	Dir        string        `default:"both" enum:"up,down,both" help:"Directions for bulk/halfclose: up (client to server), down, both."`
	Bytes      string        `default:"" help:"Bytes per flow and direction (e.g. 64MiB); empty: until --duration."`
	UpBytes    string        `help:"Override --bytes for the up direction."`
	DownBytes  string        `help:"Override --bytes for the down direction."`
	Duration   time.Duration `default:"0s" help:"Send for this long (bulk, rr)."`
	Idle       time.Duration `default:"0s" help:"Stay silent this long after connecting."`
	ReqSize    int           `default:"64" help:"rr request size."`
	RespSize   int           `default:"64" help:"rr response size."`
	Requests   int           `default:"0" help:"rr round trips per flow (0: until --duration)."`
	NoVerify   bool          `help:"Skip SHA-256 and byte comparison (pure throughput)."`
	HealFile   string        `help:"File of heal times (one Unix-ns timestamp per line) written by a fault injector; recovery delays are computed for each."`
	Timeout    time.Duration `default:"10m" help:"Abort the run after this long."`
	JSON       bool          `help:"Print the report as JSON."`
	Output     string        `help:"Write the report to this file instead of standard output."`
	Progress   time.Duration `default:"0s" help:"Print a progress line to stderr this often (0: never)."`
	ReportWait time.Duration `default:"10s" help:"How long to wait for the server's half of the report."`
}

// errNotVerified makes the exit status 1 without an extra message.
type errNotVerified struct{}

func (errNotVerified) Error() string { return "not verified" }

func (c *clientCmd) Run(log *slog.Logger) error {
	cfg := loadgen.Config{
		Addr: c.Connect, Flows: c.Flows, Seed: c.Seed, Duration: c.Duration, Idle: c.Idle,
		ReqSize: c.ReqSize, RespSize: c.RespSize, Requests: c.Requests, NoVerify: c.NoVerify,
		ReportWait: c.ReportWait,
	}
	var err error
	if cfg.Mode, err = loadgen.ParseMode(c.Mode); err != nil {
		return err
	}
	if cfg.Dirs, err = loadgen.ParseDir(c.Dir); err != nil {
		return err
	}
	for _, b := range []struct {
		flag string
		dst  *int64
	}{{c.Bytes, &cfg.Bytes}, {c.UpBytes, &cfg.UpBytes}, {c.DownBytes, &cfg.DownBytes}} {
		if b.flag == "" {
			continue
		}
		if *b.dst, err = parseBytes(b.flag); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	run, err := loadgen.Start(ctx, cfg)
	if err != nil {
		return err
	}
	if c.Progress > 0 {
		go printProgress(run, c.Progress)
	}
	rep, rerr := run.Wait()
	if c.HealFile != "" {
		heals, err := loadgen.ReadHealMarks(c.HealFile)
		if err != nil {
			return err
		}
		for _, h := range heals {
			run.MarkHeal(h)
		}
		rep, _ = run.Wait()
	}
	if rerr != nil {
		log.Warn("incomplete report", "err", rerr)
	}
	if err := c.write(rep); err != nil {
		return err
	}
	if !rep.Verified {
		return errNotVerified{}
	}
	return nil
}

func (c *clientCmd) write(rep *loadgen.Report) error {
	out := os.Stdout
	if c.Output != "" {
		f, err := os.Create(c.Output)
		if err != nil {
			return fmt.Errorf("report file: %w", err)
		}
		defer f.Close()
		out = f
	}
	var err error
	if c.JSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		_, err = fmt.Fprint(out, rep.String())
	}
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

func printProgress(run *loadgen.Run, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var last loadgen.Progress
	for {
		select {
		case <-run.Done():
			return
		case <-t.C:
		}
		p := run.Progress()
		dt := (p.Elapsed - last.Elapsed).Seconds()
		rate := float64(p.Sent-last.Sent+p.Received-last.Received) * 8 / dt / 1e6
		fmt.Fprintf(os.Stderr, "%6.1fs  sent %d  received %d  %.1f Mbit/s  errors %d\n",
			p.Elapsed.Seconds(), p.Sent, p.Received, rate, p.Errors)
		last = p
	}
}

// parseBytes accepts plain numbers and the suffixes K, M, G (powers of 10)
// and KiB, MiB, GiB (powers of 2).
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = rest, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad byte count %q", s)
	}
	return n * mult, nil
}

type cli struct {
	LogLevel slog.Level `default:"info" help:"Log level: debug, info, warn, error."`
	Server   serverCmd  `cmd:"" help:"Answer loadgen clients."`
	Client   clientCmd  `cmd:"" help:"Run flows against a server and report."`
}

func main() {
	var c cli
	kctx := kong.Parse(&c, kong.Name("uslload"), kong.Description("Verified TCP traffic generator."), kong.UsageOnError())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: c.LogLevel}))
	err := kctx.Run(log)
	if _, ok := err.(errNotVerified); ok {
		os.Exit(1)
	}
	if err != nil {
		log.Error(err.Error())
		os.Exit(1)
	}
}
