package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"

	"github.com/usltun/usltun/control"
)

// controlPath is the control socket of the daemon for device tun: explicit
// wins, else control.DefaultPath (abstract for root, under
// $XDG_RUNTIME_DIR for an ordinary user).
func controlPath(explicit, tun string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	return control.DefaultPath(tun)
}

// listenControl serves the daemon's control requests on path.
func (d *daemon) listenControl(path string, log *slog.Logger) (*control.Server, error) {
	return control.Listen(path, func(_ context.Context, req control.Request, files []*os.File) (any, func(), error) {
		switch req.Op {
		case control.OpStatus:
			closeAll(files)
			return d.status(), nil, nil
		case control.OpAttachTUN:
			return d.attachTUN(req.Attach, files)
		case control.OpPolicyShow, control.OpPolicySet, control.OpPolicyFlush:
			closeAll(files)
			return d.policyRequest(req)
		case control.OpReload:
			closeAll(files)
			ch, err := d.reload("usltun reload")
			return ch, nil, err
		}
		closeAll(files)
		return nil, nil, fmt.Errorf("unknown request %q (a newer usltun client than this daemon?)", req.Op)
	}, log)
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// queryControl fetches the status document from a running daemon.
func queryControl(ctx context.Context, path string) ([]byte, error) {
	var body json.RawMessage
	if err := control.Call(ctx, path, control.Request{Op: control.OpStatus}, &body); err != nil {
		return nil, err
	}
	return body, nil
}

// policyRequest serves the policy ops (`usltun policy`): set checks the
// whole file before it replaces anything, so a bad rule leaves the running
// rules in force and comes back as one error line with its position.
func (d *daemon) policyRequest(req control.Request) (any, func(), error) {
	switch req.Op {
	case control.OpPolicySet:
		if req.Policy == nil {
			return nil, nil, fmt.Errorf("%s without a rule file", req.Op)
		}
		if err := d.policy.set([]byte(req.Policy.TOML), req.Policy.File); err != nil {
			return nil, nil, fmt.Errorf("rules not replaced, the running ones stay: %w", err)
		}
		d.policy.log.Info("policy replaced over the control socket", "file", req.Policy.File, "rules", len(d.policy.eng.Rules()), "generation", d.policy.eng.Generation())
	case control.OpPolicyFlush:
		d.policy.flush()
		d.policy.log.Info("policy flushed over the control socket", "generation", d.policy.eng.Generation())
	}
	return d.policy.state(), nil, nil
}
