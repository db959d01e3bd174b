package netstack

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/tun"
	"github.com/usltun/usltun/tun/tuntest"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The routed subnets the tests connect to; nothing listens there: every
// flow is terminated in the netstack and handed to the test's Dialer.
var (
	routed4 = netip.MustParsePrefix("10.66.1.0/24")
	routed6 = netip.MustParsePrefix("fd66:1::/64")
)

// harness is a netns with a real TUN device feeding a Stack.
type harness struct {
	t      testing.TB
	ns     *tuntest.NS
	dev    harnessDevice
	st     *Stack
	dialer atomic.Pointer[flow.Dialer] // the stack dials through it: tests swap it
}

// DialFlow makes the harness the stack's Dialer, delegating to setDialer's.
func (h *harness) DialFlow(ctx context.Context, dest flow.Dest) (flow.Conn, error) {
	return (*h.dialer.Load()).DialFlow(ctx, dest)
}

func (h *harness) setDialer(d flow.Dialer) { h.dialer.Store(&d) }

type dialFunc func(ctx context.Context, dest flow.Dest) (flow.Conn, error)

func (f dialFunc) DialFlow(ctx context.Context, dest flow.Dest) (flow.Conn, error) {
	return f(ctx, dest)
}

// harnessDevice is the TUN device under the stack: usltun's own *tun.Device,
// or in benchmarks another implementation to compare it with.
type harnessDevice interface {
	Endpoint() stack.LinkEndpoint
	Stats() tun.Stats
	Offloads() string
	Close() error
}

// harnessConfig is the device every harness creates; only the benchmarks'
// other device implementations look at it themselves.
var harnessConfig = tun.Config{
	Name: "tns0", MTU: 1400,
	Addrs:  []netip.Prefix{netip.MustParsePrefix("10.66.0.1/24"), netip.MustParsePrefix("fd66::1/64")},
	Routes: []netip.Prefix{routed4, routed6},
}

func newHarness(t testing.TB, cfg Config, noOffload bool) *harness {
	t.Helper()
	return newHarnessOn(t, cfg, func() (harnessDevice, error) {
		c := harnessConfig
		c.DisableOffload = noOffload
		return tun.Create(c)
	})
}

// newHarnessOn runs create inside a fresh namespace and a Stack on the
// device it returns.
func newHarnessOn(t testing.TB, cfg Config, create func() (harnessDevice, error)) *harness {
	t.Helper()
	h := &harness{t: t, ns: tuntest.NewNS(t)}
	err := h.ns.Do(func() (err error) {
		h.dev, err = create()
		return err
	})
	if err != nil {
		t.Fatalf("tun: %v", err)
	}
	if cfg.Logger == nil && testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	h.setDialer(cfg.Dialer)
	cfg.Dialer = h
	h.st, err = New(h.dev.Endpoint(), cfg)
	if err != nil {
		h.dev.Close()
		t.Fatalf("netstack: %v", err)
	}
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	if err := h.st.Close(); err != nil {
		h.t.Errorf("stack close: %v", err)
	}
	if err := h.dev.Close(); err != nil {
		h.t.Errorf("device close: %v", err)
	}
}

// dial connects from a kernel socket inside the namespace.
func (h *harness) dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.ns.Do(func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// listen opens a kernel listener on loopback inside the namespace: the
// "real destination" the test Dialer connects to.
func (h *harness) listen(network string) net.Listener {
	h.t.Helper()
	var l net.Listener
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	if err := h.ns.Do(func() (err error) { l, err = net.Listen(network, addr); return err }); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { l.Close() })
	return l
}

// kernelDialer dials l for every flow and records the destinations asked for.
type kernelDialer struct {
	h       *harness
	addr    string
	delay   time.Duration
	mu      sync.Mutex
	dests   []flow.Dest
	aborted atomic.Int32
}

func (d *kernelDialer) DialFlow(ctx context.Context, dest flow.Dest) (flow.Conn, error) {
	d.mu.Lock()
	d.dests = append(d.dests, dest)
	d.mu.Unlock()
	if d.delay > 0 {
		select {
		case <-time.After(d.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var c net.Conn
	err := d.h.ns.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", d.addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &abortConn{TCPConn: c.(*net.TCPConn), aborted: &d.aborted}, nil
}

func (d *kernelDialer) lastDest() flow.Dest {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.dests) == 0 {
		return flow.Dest{}
	}
	return d.dests[len(d.dests)-1]
}

// abortConn is a kernel TCP connection whose Abort sends an RST, as a
// flow.Conn's Abort must.
var _ flow.Conn = (*abortConn)(nil)

type abortConn struct {
	*net.TCPConn
	aborted *atomic.Int32
}

func (c *abortConn) Abort() error {
	c.aborted.Add(1)
	_ = c.SetLinger(0)
	return c.Close()
}

// serve runs fn for each accepted connection until l closes.
func serve(l net.Listener, fn func(c *net.TCPConn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go fn(c.(*net.TCPConn))
		}
	}()
}

// sinkConn is an in-process remote half that discards what it gets and
// sends nothing until closed: the benchmark's destination.
type sinkConn struct {
	n      atomic.Int64
	closed chan struct{}
	once   sync.Once
}

func newSink() *sinkConn { return &sinkConn{closed: make(chan struct{})} }

func (s *sinkConn) Read([]byte) (int, error) { <-s.closed; return 0, io.EOF }
func (s *sinkConn) Write(b []byte) (int, error) {
	select {
	case <-s.closed:
		return 0, net.ErrClosed
	default:
	}
	s.n.Add(int64(len(b)))
	return len(b), nil
}
func (s *sinkConn) Close() error                     { s.once.Do(func() { close(s.closed) }); return nil }
func (s *sinkConn) CloseWrite() error                { return s.Close() }
func (s *sinkConn) Abort() error                     { return s.Close() }
func (s *sinkConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (s *sinkConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (s *sinkConn) SetDeadline(time.Time) error      { return nil }
func (s *sinkConn) SetReadDeadline(time.Time) error  { return nil }
func (s *sinkConn) SetWriteDeadline(time.Time) error { return nil }

var errUnexpectedDial = errors.New("unexpected dial")
