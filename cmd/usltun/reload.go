package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/usltun/usltun/control"
	"github.com/usltun/usltun/hub"
)

// reload re-reads the hub's --config and applies its peer table. The file
// is checked whole first: an error (with its line for a syntax error)
// leaves the running table as it was. Peers the change leaves alone keep
// their sessions and flows (hub.Reload). The device's routes follow the
// peers': a new peer route outside them is added to the device before the
// new table applies (so its first flows find it), and a route no peer
// needs any more is removed after.
func (d *daemon) reload(why string) (hub.Change, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if !d.cmd.hubMode {
		return hub.Change{}, errors.New("this daemon's peers come from the command line: there is nothing to re-read (write [[peer]] sections in a --config file)")
	}
	f, err := d.cmd.readHubFile(d.self)
	var add, del []netip.Prefix
	if err == nil {
		add, del, err = d.routeChange(f.Table)
	}
	if err == nil {
		err = d.addRoutes(add)
	}
	if err != nil {
		d.log.Warn(why+": configuration rejected; the running one stays", "err", err)
		return hub.Change{}, err
	}
	ch, err := d.hub.Reload(f.Table)
	if err != nil {
		d.removeRoutes(add)
		return ch, err
	}
	d.removeRoutes(del)
	d.log.Info(why+": configuration reloaded", "peers", f.Table.Len(), "added", ch.Added, "removed", ch.Removed, "changed", ch.Changed,
		"routes_added", orDash(prefixes(add)), "routes_removed", orDash(prefixes(del)))
	return ch, nil
}

// routeChange is what t changes in the device's routes: the prefixes to
// add and to remove. A new route must not carry a peer's own endpoint
// into the tunnel, and a daemon without a device (started with no route)
// cannot grow one.
func (d *daemon) routeChange(t *hub.Table) (add, del []netip.Prefix, err error) {
	want, have := d.cmd.tunRoutes(t), d.deviceRoutes()
	for _, r := range want {
		if !slices.Contains(have, r) {
			add = append(add, r)
		}
	}
	for _, r := range have {
		if !slices.Contains(want, r) {
			del = append(del, r)
		}
	}
	if len(add) > 0 && d.dev == nil {
		return nil, nil, fmt.Errorf("route %s is new, and this daemon has no device (it started with no route): restart it to create one", add[0])
	}
	if len(add) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, p := range t.Peers() {
			for _, ep := range p.Endpoints {
				if err := checkRouteLoop(ctx, ep.Addr, want); err != nil {
					return nil, nil, fmt.Errorf("peer %s: %w", p.Name, err)
				}
			}
		}
	}
	return add, del, nil
}

// addRoutes adds ps to the device, all or none.
func (d *daemon) addRoutes(ps []netip.Prefix) error {
	for i, p := range ps {
		if err := d.dev.AddRoute(p); err != nil {
			d.removeRoutes(ps[:i])
			return err
		}
		d.routesMu.Lock()
		d.routes = append(d.routes, p)
		d.routesMu.Unlock()
	}
	return nil
}

// removeRoutes removes ps from the device; a failure is logged (the
// prefix no longer routes to any peer: its flows are unreachable either
// way).
func (d *daemon) removeRoutes(ps []netip.Prefix) {
	for _, p := range ps {
		if err := d.dev.RemoveRoute(p); err != nil {
			d.log.Warn("route not removed", "route", p.String(), "err", err)
		}
		d.routesMu.Lock()
		d.routes = slices.DeleteFunc(d.routes, func(r netip.Prefix) bool { return r == p })
		d.routesMu.Unlock()
	}
}

// deviceRoutes are the device's routes now.
func (d *daemon) deviceRoutes() []netip.Prefix {
	d.routesMu.Lock()
	defer d.routesMu.Unlock()
	return slices.Clone(d.routes)
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
