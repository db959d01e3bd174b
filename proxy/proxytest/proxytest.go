// Package proxytest is a flow.Dialer for the proxy front ends' tests: it
// dials destinations on this host for real, as the exporting side would,
// and answers names whose first label is an outcome ("refused.test",
// "forbidden.test", "unreachable.test", "timeout.test", "limit.test") with
// that outcome. Other names are dialed on 127.0.0.1.
package proxytest

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/usltun/usltun/direct"
	"github.com/usltun/usltun/flow"
)

// Dialer records every destination it was asked for.
type Dialer struct {
	mu    sync.Mutex
	dests []flow.Dest
}

var _ flow.Dialer = (*Dialer)(nil)

var outcomes = map[string]error{
	"refused": flow.ErrRefused, "forbidden": flow.ErrForbidden,
	"unreachable": flow.ErrUnreachable, "timeout": flow.ErrTimeout, "limit": flow.ErrLimit,
}

// Dests returns the destinations dialed so far.
func (d *Dialer) Dests() []flow.Dest {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]flow.Dest(nil), d.dests...)
}

func (d *Dialer) DialFlow(ctx context.Context, dst flow.Dest) (flow.Conn, error) {
	d.mu.Lock()
	d.dests = append(d.dests, dst)
	d.mu.Unlock()
	if dst.Name != "" {
		label, _, _ := strings.Cut(dst.Name, ".")
		if err, ok := outcomes[label]; ok {
			return nil, err
		}
		dst = flow.Dest{Proto: dst.Proto, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port())}
	}
	return direct.Dialer{}.DialFlow(ctx, dst)
}

// EchoServer listens on 127.0.0.1 and echoes each connection until the
// client's FIN, then half-closes. It stops when the test ends.
func EchoServer(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.(*net.TCPConn).CloseWrite(); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
