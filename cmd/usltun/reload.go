package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/usltun/usltun/control"
	"github.com/usltun/usltun/hub"
)

// reload re-reads the hub's --config and applies its peer table. The file
// is checked whole first: an error (with its line for a syntax error)
// leaves the running table as it was. Peers the change leaves alone keep
// their sessions and flows (hub.Reload).
func (d *daemon) reload(why string) (hub.Change, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if !d.cmd.hubMode {
		return hub.Change{}, errors.New("this daemon's peers come from the command line: there is nothing to re-read (write [[peer]] sections in a --config file)")
	}
	f, err := d.cmd.readHubFile(d.self)
	if err == nil {
		err = d.checkRoutes(f.Table)
	}
	if err != nil {
		d.log.Warn(why+": configuration rejected; the running one stays", "err", err)
		return hub.Change{}, err
	}
	ch, err := d.hub.Reload(f.Table)
	if err != nil {
		return ch, err
	}
	d.log.Info(why+": configuration reloaded", "peers", f.Table.Len(), "added", ch.Added, "removed", ch.Removed, "changed", ch.Changed)
	return ch, nil
}

// checkRoutes refuses a table with a peer route the device does not
// carry: the kernel would never hand its flows to this daemon.
func (d *daemon) checkRoutes(t *hub.Table) error {
	for _, p := range t.Peers() {
		for _, r := range p.Routes {
			if !covered(r, d.routes) {
				return fmt.Errorf("peer %s: route %s is new to the device, whose routes are %s: restart the daemon to add it", p.Name, r, orDash(prefixes(d.routes)))
			}
		}
	}
	return nil
}

func covered(r netip.Prefix, by []netip.Prefix) bool {
	for _, o := range by {
		if o.Bits() <= r.Bits() && o.Contains(r.Addr()) {
			return true
		}
	}
	return false
}

type reloadCmd struct {
	Tun     string `default:"usl0" help:"Device name of the daemon to reload."`
	Control string `placeholder:"PATH" help:"Control socket (default: @usltun/<tun> for root, $XDG_RUNTIME_DIR/usltun/<tun>.sock for a user)."`
}

func (c *reloadCmd) Run(o cmdIO) error {
	path, err := controlPath(c.Control, c.Tun)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ch hub.Change
	if err := control.Call(ctx, path, control.Request{Op: control.OpReload}, &ch); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	list := func(s []string) string {
		if len(s) == 0 {
			return "none"
		}
		return strings.Join(s, ", ")
	}
	fmt.Fprintf(o.stdout, "reloaded: added %s; removed %s; changed %s\n", list(ch.Added), list(ch.Removed), list(ch.Changed))
	return nil
}
