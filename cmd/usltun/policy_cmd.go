package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/usltun/usltun/control"
)

// policyCmd is `usltun policy show|set FILE|flush`: the running daemon's
// Socket Control rules over its control socket. Each daemon schedules what
// it sends, so both ends of a session take their own rules. A later SIGHUP
// re-reads the daemon's --policy file, which replaces what set installed.
type policyCmd struct {
	Show  policyShowCmd  `cmd:"" help:"Print the rules in force, their generation, and each open flow's class and scheduler."`
	Set   policySetCmd   `cmd:"" help:"Replace the rules with a file's [[policy]] tables, all or nothing: a bad rule is reported with its line and the running rules stay. Open flows move to their new scheduler at once, without loss or reset."`
	Flush policyFlushCmd `cmd:"" help:"Remove every rule: all flows, open ones at once, go to the daemon's --scheduler."`
}

// daemonRef names the daemon a command talks to, as for `usltun status`.
type daemonRef struct {
	Tun     string `default:"usl0" help:"Device name of the daemon to ask."`
	Control string `placeholder:"PATH" help:"Control socket (default: @usltun/<tun> for root, $XDG_RUNTIME_DIR/usltun/<tun>.sock for a user)."`
}

// callPolicy sends one policy request to the daemon r names.
func (r daemonRef) callPolicy(req control.Request) (*control.PolicyState, error) {
	path, err := controlPath(r.Control, r.Tun)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var st control.PolicyState
	if err := control.Call(ctx, path, req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

type policyShowCmd struct {
	daemonRef `embed:""`
	JSON      bool `help:"Print the rules and flows as JSON."`
}

func (c *policyShowCmd) Run(o cmdIO) error {
	st, err := c.callPolicy(control.Request{Op: control.OpPolicyShow})
	if err != nil {
		return err
	}
	if c.JSON {
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return err
		}
		_, err = o.stdout.Write(append(b, '\n'))
		return err
	}
	renderPolicy(o.stdout, st)
	return nil
}

type policySetCmd struct {
	daemonRef `embed:""`
	File      string `arg:"" type:"existingfile" help:"TOML file with [[policy]] tables (name, match, scheduler), as for up --policy."`
}

func (c *policySetCmd) Run(o cmdIO) error {
	f, err := os.Open(c.File)
	if err != nil {
		return err
	}
	defer f.Close()
	// The request is one control message: a file that cannot fit is
	// refused here rather than cut short.
	data, err := io.ReadAll(io.LimitReader(f, control.MaxMessage))
	if err != nil {
		return fmt.Errorf("%s: %w", c.File, err)
	}
	if len(data) >= control.MaxMessage/2 {
		return fmt.Errorf("%s: %d bytes or more; a rule file sent to the daemon is at most %d bytes", c.File, len(data), control.MaxMessage/2)
	}
	st, err := c.callPolicy(control.Request{Op: control.OpPolicySet, Policy: &control.PolicyFile{File: filepath.Base(c.File), TOML: string(data)}})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.stdout, "policy replaced: %d rules; %d open flows re-evaluated\n", len(st.Rules), st.FlowsTotal)
	renderPolicy(o.stdout, st)
	return nil
}

type policyFlushCmd struct {
	daemonRef `embed:""`
}

func (c *policyFlushCmd) Run(o cmdIO) error {
	st, err := c.callPolicy(control.Request{Op: control.OpPolicyFlush})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.stdout, "policy flushed; %d open flows moved to %s\n", st.FlowsTotal, st.Default)
	renderPolicy(o.stdout, st)
	return nil
}

// renderPolicy prints st for people: the rules in order, then the flows.
func renderPolicy(w io.Writer, st *control.PolicyState) {
	fmt.Fprintf(w, "generation %d, default scheduler %s\n", st.Generation, st.Default)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	if len(st.Rules) == 0 {
		fmt.Fprintln(tw, "rules:\tnone (every flow gets the default)")
	} else {
		fmt.Fprintln(tw, "rules:\t#\tname\tscheduler\tmatch\tfrom")
		for i, r := range st.Rules {
			fmt.Fprintf(tw, "\t%d\t%s\t%s\t%s\t%s\n", i+1, r.Name, r.Scheduler, r.Match, r.Pos)
		}
	}
	if st.FlowsTotal == 0 {
		fmt.Fprintln(tw, "flows:\tnone open")
	} else {
		fmt.Fprintln(tw, "flows:\tdestination\tclass\tscheduler")
		for _, f := range st.Flows {
			fmt.Fprintf(tw, "\t%s\t%s\t%s\n", f.Dest, f.Class, f.Scheduler)
		}
		if n := st.FlowsTotal - len(st.Flows); n > 0 {
			fmt.Fprintf(tw, "\t... and %d more\n", n)
		}
	}
	tw.Flush()
}
