package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"

	"github.com/usltun/usltun/control"
	"github.com/usltun/usltun/direct"
	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/netstack"
	"github.com/usltun/usltun/route"
	"github.com/usltun/usltun/tun"
)

// The addresses inside an exec namespace: the TUN device's own, and the DNS
// server that /etc/resolv.conf names there, which the daemon answers by
// carrying the query to the peer's resolver (flow.Resolver).
var (
	execAddrs = []netip.Prefix{netip.MustParsePrefix("169.254.117.2/32"), netip.MustParsePrefix("fd75:736c::2/128")}
	execDNS   = netip.MustParseAddr("169.254.117.53")
	execMTU   = 1500
)

// execs are the namespaces of `usltun exec` the daemon serves.
type execs struct {
	mu sync.Mutex
	m  map[*execNS]struct{}
}

type execNS struct {
	name  string
	dev   *tun.Device
	stack *netstack.Stack
	once  sync.Once
	log   *slog.Logger
}

func (e *execNS) close() {
	e.once.Do(func() {
		e.stack.Close()
		e.dev.Close()
		e.log.Info("exec namespace detached")
	})
}

// attachTUN serves the TUN device of an exec namespace, passed over the
// control socket, with a netstack of its own, until the client hangs up.
func (d *daemon) attachTUN(a *control.Attach, files []*os.File) (any, func(), error) {
	if a == nil || len(files) != 1 {
		closeAll(files)
		return nil, nil, errors.New("attach-tun needs a device description and one descriptor")
	}
	var table *route.Table[bool]
	for _, r := range a.Routes {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			closeAll(files)
			return nil, nil, fmt.Errorf("attach-tun: route %q: %w", r, err)
		}
		if table == nil {
			table = &route.Table[bool]{}
		}
		table.Insert(p, true)
	}
	log := d.log.With("component", "exec", "name", a.Name)
	dev, err := tun.FromFile(files[0], "exec:"+a.Name, a.MTU, tun.Offload(a.Offload))
	if err != nil {
		return nil, nil, fmt.Errorf("attach-tun: %w", err)
	}
	st, err := netstack.New(dev.Endpoint(), netstack.Config{
		MTU:      a.MTU,
		MaxFlows: d.cmd.MaxFlows,
		Dialer:   &execDialer{tunnel: d.tunnelDialer(), routes: table, log: log},
		Logger:   log,
	})
	if err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("attach-tun: %w", err)
	}
	e := &execNS{name: a.Name, dev: dev, stack: st, log: log}
	d.execs.mu.Lock()
	if d.execs.m == nil {
		d.execs.m = map[*execNS]struct{}{}
	}
	d.execs.m[e] = struct{}{}
	d.execs.mu.Unlock()
	log.Info("exec namespace attached", "routes", a.Routes, "offloads", dev.Offloads())
	return map[string]string{"device": dev.Name()}, func() {
		d.execs.mu.Lock()
		delete(d.execs.m, e)
		d.execs.mu.Unlock()
		e.close()
	}, nil
}

// closeExecs detaches every exec namespace (daemon shutdown).
func (d *daemon) closeExecs() {
	d.execs.mu.Lock()
	all := make([]*execNS, 0, len(d.execs.m))
	for e := range d.execs.m {
		all = append(all, e)
	}
	d.execs.mu.Unlock()
	for _, e := range all {
		e.close()
	}
}

// execDialer splits an exec namespace's flows: DNS to execDNS goes to the
// peer's resolver, destinations inside routes (all, when routes is nil)
// through the session, the rest directly from this host's network.
type execDialer struct {
	tunnel flow.Dialer
	direct direct.Dialer
	routes *route.Table[bool]
	log    *slog.Logger
}

func (x *execDialer) DialFlow(ctx context.Context, dst flow.Dest) (flow.Conn, error) {
	a := dst.Addr.Addr()
	if a == execDNS && dst.Port() == 53 && dst.Proto != flow.ICMP {
		return x.tunnel.DialFlow(ctx, flow.Resolver(dst.Proto))
	}
	if x.routes == nil {
		return x.tunnel.DialFlow(ctx, dst)
	}
	if _, ok := x.routes.Lookup(a); ok {
		return x.tunnel.DialFlow(ctx, dst)
	}
	x.log.Debug("exec: direct", "dst", dst.String())
	return x.direct.DialFlow(ctx, dst)
}
