package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
	"go.uber.org/goleak"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// exchange sends n random bytes each way at the same time, with a
// half-close after sending, and checks both sides got exactly the other's
// bytes by SHA-256.
func exchange(t *testing.T, h *harness, target string, n int) {
	t.Helper()
	l := h.listen("tcp4")
	d := &kernelDialer{h: h, addr: l.Addr().String()}
	h.setDialer(d)
	type result struct {
		sent, got [32]byte
		err       error
	}
	srv := make(chan result, 1)
	serve(l, func(c *net.TCPConn) {
		defer c.Close()
		var r result
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.sent, r.err = sendRandom(c, n)
			if r.err == nil {
				r.err = c.CloseWrite()
			}
		}()
		hs := sha256.New()
		if _, err := io.Copy(hs, c); err != nil && r.err == nil {
			r.err = err
		}
		wg.Wait()
		copy(r.got[:], hs.Sum(nil))
		srv <- r
	})
	c, err := h.dial("tcp", target, 5*time.Second)
	if err != nil {
		t.Fatalf("connect %s: %v", target, err)
	}
	defer c.Close()
	var sent [32]byte
	var serr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sent, serr = sendRandom(c, n)
		if serr == nil {
			serr = c.(*net.TCPConn).CloseWrite()
		}
	}()
	hs := sha256.New()
	got, err := io.Copy(hs, c)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	wg.Wait()
	if serr != nil {
		t.Fatalf("client send: %v", serr)
	}
	var r result
	select {
	case r = <-srv:
	case <-time.After(30 * time.Second):
		t.Fatal("server did not finish")
	}
	if r.err != nil {
		t.Fatalf("server: %v", r.err)
	}
	if got != int64(n) || !bytes.Equal(hs.Sum(nil), r.sent[:]) {
		t.Fatalf("client got %d bytes, sha mismatch %x vs %x", got, hs.Sum(nil), r.sent)
	}
	if r.got != sent {
		t.Fatalf("server sha %x, client sent %x", r.got, sent)
	}
	l.Close() // stops serve's accept loop before the leak check
	want := netip.MustParseAddrPort(target)
	if dest := d.lastDest(); dest.Proto != flow.TCP || dest.Addr != want {
		t.Fatalf("dialer asked for %v, want tcp/%v", dest, want)
	}
}

func sendRandom(w io.Writer, n int) (sum [32]byte, err error) {
	hs := sha256.New()
	buf := make([]byte, 256<<10)
	for left := n; left > 0; {
		b := buf[:min(left, len(buf))]
		rand.Read(b)
		hs.Write(b)
		if _, err := w.Write(b); err != nil {
			return sum, err
		}
		left -= len(b)
	}
	copy(sum[:], hs.Sum(nil))
	return sum, nil
}

func TestTransfer16MiB(t *testing.T) {
	for _, tc := range []struct {
		name      string
		target    string
		noOffload bool
	}{
		{"v4 offload", "10.66.1.10:8080", false},
		{"v4 plain", "10.66.1.10:8080", true},
		{"v6 offload", "[fd66:1::10]:443", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			h := newHarness(t, Config{Dialer: dialFunc(nil)}, tc.noOffload)
			exchange(t, h, tc.target, 16<<20)
			// 2 × 16 MiB at MTU 1400 is over 24,000 data packets; with TSO/GSO
			// both ways it is a few hundred super-segments (and their ACKs).
			pkts := h.dev.Stats().RxPackets + h.dev.Stats().TxPackets
			t.Logf("%d packets crossed the TUN (offloads %s)", pkts, h.dev.Offloads())
			if !tc.noOffload && pkts > 8000 {
				t.Errorf("%d packets with offloads: TSO/GSO is not in effect", pkts)
			}
			h.close()
			// The netns helpers' threads and the test's own listener are gone
			// by now; gVisor's and the splice goroutines must be too.
			goleak.VerifyNone(t, leaks)
		})
	}
}

func TestConnectErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		target string
		want   syscall.Errno
	}{
		{"refused", flow.ErrRefused, "10.66.1.20:81", syscall.ECONNREFUSED},
		{"forbidden", &flow.Error{Reason: flow.Forbidden, Err: errors.New("reset by peer")}, "10.66.1.20:82", syscall.ECONNREFUSED},
		{"peer restarted", flow.ErrPeerRestarted, "10.66.1.20:83", syscall.ECONNREFUSED},
		{"limit", flow.ErrLimit, "10.66.1.20:84", syscall.ECONNREFUSED},
		{"unreachable v4", &flow.Error{Reason: flow.Unreachable}, "10.66.1.20:85", syscall.EHOSTUNREACH},
		{"unreachable v6", flow.ErrUnreachable, "[fd66:1::20]:85", syscall.EHOSTUNREACH},
		{"timeout", flow.ErrTimeout, "10.66.1.20:86", syscall.EHOSTUNREACH},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) {
				return nil, tc.err
			})}, false)
			c, err := h.dial("tcp", tc.target, 5*time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("connect succeeded, want %v", tc.want)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("connect: %v, want %v", err, tc.want)
			}
			// An ICMP error that arrives while connect() still holds the socket
			// lock is only a soft error in Linux; the retransmitted SYN then
			// gets a second one. So one or two dials.
			if s := h.st.Stats(); s.DialErrors < 1 || s.DialErrors > 2 || s.PendingConnects != 0 || s.TCPFlows != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// TestConnectTimeout: a dial that never returns is bounded by
// ConnectTimeout and reported as unreachable, not as a connect that works.
func TestConnectTimeout(t *testing.T) {
	h := newHarness(t, Config{ConnectTimeout: 300 * time.Millisecond, Dialer: dialFunc(func(ctx context.Context, _ flow.Dest) (flow.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})}, false)
	start := time.Now()
	_, err := h.dial("tcp", "10.66.1.21:80", 5*time.Second)
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("connect: %v, want EHOSTUNREACH", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond || el > 3*time.Second {
		t.Fatalf("failed after %v, want about 300ms", el)
	}
}

// TestSlowDial: the SYN waits while the Dialer takes 2 s (a partition),
// the app's SYN retransmissions are absorbed, and the connect succeeds.
func TestSlowDial(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	d := &kernelDialer{h: h, addr: l.Addr().String(), delay: 2 * time.Second}
	h.setDialer(d)
	serve(l, func(c *net.TCPConn) { io.Copy(c, c); c.Close() })
	start := time.Now()
	c, err := h.dial("tcp", "10.66.1.22:22", 10*time.Second)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close()
	if el := time.Since(start); el < 2*time.Second {
		t.Fatalf("connected after %v, before the dial finished", el)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	d.mu.Lock()
	n := len(d.dests)
	d.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d dials for one connect: retransmitted SYNs were not absorbed", n)
	}
}

// TestHalfClose: the client sends a request and shuts down its write side;
// the server answers only after EOF, and the client reads all of it.
func TestHalfClose(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	h.setDialer(&kernelDialer{h: h, addr: l.Addr().String()})
	reply := make([]byte, 3<<20)
	rand.Read(reply)
	serve(l, func(c *net.TCPConn) {
		defer c.Close()
		req, err := io.ReadAll(c) // until the client's FIN
		if err != nil || string(req) != "GET /" {
			return
		}
		time.Sleep(200 * time.Millisecond) // the flow stays half-closed for a while
		c.Write(reply)
	})
	c, err := h.dial("tcp", "10.66.1.23:80", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(reply) {
		t.Fatalf("reply: got %d bytes, want %d, sha differs", len(got), len(reply))
	}
}

// TestHalfCloseTimeout: a flow that stays half-closed longer than
// HalfCloseTimeout is reset.
func TestHalfCloseTimeout(t *testing.T) {
	h := newHarness(t, Config{HalfCloseTimeout: 300 * time.Millisecond, Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	h.setDialer(&kernelDialer{h: h, addr: l.Addr().String()})
	hold := make(chan struct{})
	defer close(hold)
	serve(l, func(c *net.TCPConn) { <-hold; c.Close() }) // never answers, never closes
	c, err := h.dial("tcp", "10.66.1.24:80", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after half-close timeout: %v, want ECONNRESET", err)
	}
}

// TestResets: an RST from the app aborts the remote half; a reset of the
// remote half reaches the app as an RST.
func TestResets(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	d := &kernelDialer{h: h, addr: l.Addr().String()}
	h.setDialer(d)
	conns := make(chan *net.TCPConn, 2)
	serve(l, func(c *net.TCPConn) { conns <- c })

	// App RST → remote Abort.
	c, err := h.dial("tcp", "10.66.1.25:80", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv := <-conns
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := srv.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("remote after app RST: %v, want ECONNRESET", err)
	}
	if d.aborted.Load() != 1 {
		t.Fatalf("Abort called %d times, want 1", d.aborted.Load())
	}
	srv.Close()

	// Remote reset → app RST.
	c, err = h.dial("tcp", "10.66.1.25:81", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv = <-conns
	srv.SetLinger(0)
	srv.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app after remote reset: %v, want ECONNRESET", err)
	}
}

// TestMaxFlows: beyond MaxFlows a SYN is refused with an RST, and the
// refusals are logged once, not once per SYN.
func TestMaxFlows(t *testing.T) {
	logs := &recordHandler{}
	h := newHarness(t, Config{MaxFlows: 2, Logger: slog.New(logs), Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	h.setDialer(&kernelDialer{h: h, addr: l.Addr().String()})
	hold := make(chan struct{})
	defer close(hold)
	serve(l, func(c *net.TCPConn) { <-hold; c.Close() })
	for i := range 2 {
		c, err := h.dial("tcp", fmt.Sprintf("10.66.1.26:%d", 80+i), 5*time.Second)
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		defer c.Close()
	}
	for i := range 3 {
		_, err := h.dial("tcp", fmt.Sprintf("10.66.1.26:%d", 90+i), 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("flow beyond the limit: %v, want ECONNREFUSED", err)
		}
	}
	waitFor(t, 2*time.Second, func() bool { return h.st.Stats().TCPFlows == 2 })
	if s := h.st.Stats(); s.RefusedByLimit != 3 || s.TCPFlows != 2 {
		t.Fatalf("stats %+v, want 3 refused and 2 flows", s)
	}
	if n := logs.count("flow limit reached, refusing new flows"); n != 1 {
		t.Fatalf("%d limit log lines for 3 refusals, want 1", n)
	}
}

// recordHandler is a slog.Handler that keeps the messages it sees.
type recordHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }
func (h *recordHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// TestRemoteResetError: when the remote half fails with a *flow.Error
// (here: the session was fenced), the app gets an RST, not a FIN.
func TestRemoteResetError(t *testing.T) {
	fence := make(chan struct{})
	remote := &resetConn{sinkConn: newSink(), fence: fence}
	h := newHarness(t, Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) { return remote, nil })}, false)
	c, err := h.dial("tcp", "10.66.1.28:80", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	close(fence)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app read after fence: %v, want ECONNRESET", err)
	}
}

// resetConn fails its Read with ErrPeerRestarted once fence is closed.
type resetConn struct {
	*sinkConn
	fence chan struct{}
}

func (c *resetConn) Read([]byte) (int, error) {
	select {
	case <-c.fence:
		return 0, &flow.Error{Reason: flow.PeerRestarted}
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

// TestUDP: a datagram to a routed address travels as a length-prefixed
// record, and the reply comes back from the original destination.
func TestUDP(t *testing.T) {
	for _, tc := range []struct{ network, target string }{
		{"udp4", "10.66.1.53:53"},
		{"udp6", "[fd66:1::53]:53"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			h := newHarness(t, Config{Dialer: dialFunc(nil)}, false)
			l := h.listen("tcp4")
			d := &kernelDialer{h: h, addr: l.Addr().String()}
			h.setDialer(d)
			// The far side: answer each record with its upper-cased payload.
			serve(l, func(c *net.TCPConn) {
				defer c.Close()
				var hdr [2]byte
				for {
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					p := make([]byte, binary.BigEndian.Uint16(hdr[:]))
					if _, err := io.ReadFull(c, p); err != nil {
						return
					}
					c.Write(append(hdr[:], bytes.ToUpper(p)...))
				}
			})
			var pc net.PacketConn
			if err := h.ns.Do(func() (err error) { pc, err = net.ListenPacket(tc.network, ":0"); return err }); err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tc.target))
			buf := make([]byte, 2000)
			for i, msg := range []string{"query one", "query two", string(bytes.Repeat([]byte("x"), 1200))} {
				if _, err := pc.WriteTo([]byte(msg), dst); err != nil {
					t.Fatal(err)
				}
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					h.ns.Do(func() error {
						b, _ := os.ReadFile("/proc/thread-self/net/snmp6")
						for _, l := range strings.Split(string(b), "\n") {
							if f := strings.Fields(l); len(f) == 2 && f[1] != "0" && (strings.HasPrefix(f[0], "Ip6") || strings.HasPrefix(f[0], "Udp6")) {
								t.Log(l)
							}
						}
						return nil
					})
					gs := h.st.s.Stats()
					t.Fatalf("reply %d: %v (dials %v; ip rx %d, udp rx %d unknown port %d, sent %d; dropped %d)", i, err, d.dests,
						gs.IP.PacketsReceived.Value(), gs.UDP.PacketsReceived.Value(), gs.UDP.UnknownPortErrors.Value(), gs.UDP.PacketsSent.Value(),
						h.dev.Stats().Dropped)
				}
				if from.(*net.UDPAddr).AddrPort() != dst.AddrPort() || string(buf[:n]) != string(bytes.ToUpper([]byte(msg))) {
					t.Fatalf("reply %d: %q from %v", i, buf[:n], from)
				}
			}
			if s := h.st.Stats(); s.UDPFlows != 1 {
				t.Fatalf("stats %+v, want one UDP flow", s)
			}
			if dest := d.lastDest(); dest.Proto != flow.UDP || dest.Addr != dst.AddrPort() {
				t.Fatalf("dialer asked for %v", dest)
			}
		})
	}
}

// TestUDPIdle: an idle UDP flow is closed after UDPIdleTimeout.
func TestUDPIdle(t *testing.T) {
	h := newHarness(t, Config{UDPIdleTimeout: 300 * time.Millisecond, Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	h.setDialer(&kernelDialer{h: h, addr: l.Addr().String()})
	serve(l, func(c *net.TCPConn) { io.Copy(io.Discard, c); c.Close() })
	var pc net.PacketConn
	if err := h.ns.Do(func() (err error) { pc, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.66.1.54:9")))
	waitFor(t, 2*time.Second, func() bool { return h.st.Stats().UDPFlows == 1 })
	waitFor(t, 3*time.Second, func() bool { return h.st.Stats().UDPFlows == 0 })
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("condition not met within %v", d)
}

// pipeConn is one end of an in-memory flow.Conn pair.
type pipeConn struct{ net.Conn }

func (c pipeConn) CloseWrite() error { return c.Close() }
func (c pipeConn) Abort() error      { return c.Close() }

// echoFarSide is a Dialer whose ICMP flows are answered in memory, as the
// gateway answers them: each echo request datagram gets a reply datagram
// with the far side's own identifier (the stack must put the app's back),
// after delay. Destinations in forbidden are refused.
type echoFarSide struct {
	delay     atomic.Int64 // time.Duration
	forbidden netip.Addr
	mu        sync.Mutex
	dests     []flow.Dest
}

func (e *echoFarSide) DialFlow(ctx context.Context, dest flow.Dest) (flow.Conn, error) {
	e.mu.Lock()
	e.dests = append(e.dests, dest)
	e.mu.Unlock()
	if dest.Proto != flow.ICMP {
		return nil, errUnexpectedDial
	}
	if dest.Addr.Addr() == e.forbidden {
		return nil, flow.ErrForbidden
	}
	near, far := net.Pipe()
	go func() {
		defer far.Close()
		buf := make([]byte, flow.MaxDatagram)
		for {
			msg, err := flow.ReadDatagram(far, buf)
			if err != nil {
				return
			}
			reply := make([]byte, flow.DatagramHeader+len(msg))
			copy(reply[flow.DatagramHeader:], msg)
			m := reply[flow.DatagramHeader:]
			if dest.Addr.Addr().Is4() {
				m[0] = byte(ipv4.ICMPTypeEchoReply)
			} else {
				m[0] = byte(ipv6.ICMPTypeEchoReply)
			}
			m[4], m[5] = 0x03, 0xe7 // identifier 999
			time.Sleep(time.Duration(e.delay.Load()))
			if flow.WriteDatagram(far, reply) != nil {
				return
			}
		}
	}()
	return pipeConn{near}, nil
}

// ping sends one echo request from a raw socket in the namespace and
// returns the matching reply's body, or an error after wait.
func (h *harness) ping(target string, seq int, wait time.Duration) (*icmp.Echo, error) {
	network, listen, typ, reply, proto := "ip4:icmp", "0.0.0.0", icmp.Type(ipv4.ICMPTypeEcho), icmp.Type(ipv4.ICMPTypeEchoReply), 1
	if strings.Contains(target, ":") {
		network, listen, typ, reply, proto = "ip6:ipv6-icmp", "::", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	var pc *icmp.PacketConn
	if err := h.ns.Do(func() (err error) { pc, err = icmp.ListenPacket(network, listen); return err }); err != nil {
		return nil, err
	}
	defer pc.Close()
	body := &icmp.Echo{ID: 4242, Seq: seq, Data: []byte("usltun echo payload")}
	wb, err := (&icmp.Message{Type: typ, Body: body}).Marshal(nil)
	if err != nil {
		return nil, err
	}
	dst := &net.IPAddr{IP: net.ParseIP(target)}
	if _, err := pc.WriteTo(wb, dst); err != nil {
		return nil, err
	}
	rb := make([]byte, 1500)
	deadline := time.Now().Add(wait)
	for {
		pc.SetReadDeadline(deadline)
		n, from, err := pc.ReadFrom(rb)
		if err != nil {
			return nil, err
		}
		m, err := icmp.ParseMessage(proto, rb[:n])
		if err != nil || m.Type != reply {
			continue // our own request, or neighbour discovery
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || from.String() != dst.String() {
			return nil, fmt.Errorf("reply %+v from %v", m.Body, from)
		}
		return e, nil
	}
}

// TestICMPEcho: the stack does not answer echo itself; each request goes to
// the Dialer as an ICMP flow, and the far side's reply reaches the app with
// its own identifier, sequence and data; a refused (unexported) destination
// and a reply later than echoTimeout give no reply.
func TestICMPEcho(t *testing.T) {
	far := &echoFarSide{forbidden: netip.MustParseAddr("10.66.1.99")}
	h := newHarness(t, Config{Dialer: far}, false)
	for _, target := range []string{"10.66.1.77", "fd66:1::77"} {
		e, err := h.ping(target, 7, 3*time.Second)
		if err != nil {
			t.Fatalf("%s: no echo reply: %v", target, err)
		}
		if e.ID != 4242 || e.Seq != 7 || string(e.Data) != "usltun echo payload" {
			t.Fatalf("%s: reply %+v", target, e)
		}
	}
	far.mu.Lock()
	if len(far.dests) != 2 || far.dests[0].String() != (flow.Dest{Proto: flow.ICMP, Addr: netip.MustParseAddrPort("10.66.1.77:0")}).String() {
		t.Errorf("dials: %v, want one ICMP flow per destination", far.dests)
	}
	far.mu.Unlock()
	if n := h.st.Stats().ICMPFlows; n != 2 {
		t.Errorf("ICMPFlows = %d, want 2", n)
	}
	if _, err := h.ping("10.66.1.99", 1, time.Second); err == nil {
		t.Errorf("a forbidden destination replied")
	}
	far.delay.Store(int64(echoTimeout + 500*time.Millisecond))
	if e, err := h.ping("10.66.1.78", 1, echoTimeout+2*time.Second); err == nil {
		t.Errorf("a reply later than echoTimeout reached the app: %+v", e)
	}
}

// TestCloseSendsFIN: closing the stack ends a live flow with a FIN to the
// app, not an RST, and returns.
func TestCloseSendsFIN(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	h.setDialer(&kernelDialer{h: h, addr: l.Addr().String()})
	serve(l, func(c *net.TCPConn) { io.Copy(io.Discard, c); c.Close() })
	c, err := h.dial("tcp", "10.66.1.27:80", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 2*time.Second, func() bool { return h.st.Stats().TCPFlows == 1 })
	done := make(chan error, 1)
	go func() { done <- h.st.Close() }()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("read after stack Close: %d, %v, want EOF", n, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}

// TestClosePendingConnect: Close answers a SYN still waiting for its dial
// with an RST, and does not wait for ConnectTimeout.
func TestClosePendingConnect(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(func(ctx context.Context, _ flow.Dest) (flow.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})}, false)
	errc := make(chan error, 1)
	go func() {
		c, err := h.dial("tcp", "10.66.1.29:80", 10*time.Second)
		if err == nil {
			c.Close()
		}
		errc <- err
	}()
	waitFor(t, 3*time.Second, func() bool { return h.st.Stats().PendingConnects == 1 })
	start := time.Now()
	if err := h.st.Close(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Close took %v with a pending connect", el)
	}
	if err := <-errc; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("pending connect after Close: %v, want ECONNREFUSED", err)
	}
}

// TestResetAfterHalfClose: an RST from an app that already sent its FIN
// aborts the remote half at once, not when the half-close timer fires.
func TestResetAfterHalfClose(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	d := &kernelDialer{h: h, addr: l.Addr().String()}
	h.setDialer(d)
	conns := make(chan *net.TCPConn, 1)
	serve(l, func(c *net.TCPConn) { conns <- c })
	c, err := h.dial("tcp", "10.66.1.30:80", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv := <-conns
	defer srv.Close()
	c.(*net.TCPConn).CloseWrite()
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := srv.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("remote after app FIN: %d, %v, want EOF", n, err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	// The remote already read EOF, so the reset shows as Abort being
	// called (the test Conn's Abort sends an RST to srv).
	waitFor(t, 3*time.Second, func() bool { return d.aborted.Load() == 1 })
	srv.SetWriteDeadline(time.Now().Add(5 * time.Second))
	var werr error
	for i := 0; i < 100 && werr == nil; i++ {
		_, werr = srv.Write([]byte("late reply"))
		time.Sleep(5 * time.Millisecond)
	}
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
		t.Fatalf("remote write after app RST: %v, want ECONNRESET or EPIPE", werr)
	}
}

// TestManyFlows runs concurrent echo flows of different sizes and checks
// every byte of each by SHA-256: pooled buffers must never mix flows.
func TestManyFlows(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(nil)}, false)
	l := h.listen("tcp4")
	h.setDialer(&kernelDialer{h: h, addr: l.Addr().String()})
	serve(l, func(c *net.TCPConn) {
		defer c.Close()
		io.Copy(c, c)
		c.CloseWrite()
	})
	const flows = 48
	errc := make(chan error, flows)
	for i := range flows {
		go func() {
			n := (i%6 + 1) * 300 << 10 // 300 KiB .. 1.8 MiB, not multiples of any buffer
			c, err := h.dial("tcp", fmt.Sprintf("10.66.%d.%d:%d", 1, 40+i, 7000+i), 10*time.Second)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			var sent [32]byte
			var serr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				sent, serr = sendRandom(c, n)
				c.(*net.TCPConn).CloseWrite()
			}()
			hs := sha256.New()
			got, err := io.Copy(hs, c)
			<-done
			switch {
			case err != nil:
				errc <- fmt.Errorf("flow %d: read: %w", i, err)
			case serr != nil:
				errc <- fmt.Errorf("flow %d: send: %w", i, serr)
			case got != int64(n) || !bytes.Equal(hs.Sum(nil), sent[:]):
				errc <- fmt.Errorf("flow %d: echoed %d of %d bytes, sha mismatch", i, got, n)
			default:
				errc <- nil
			}
		}()
	}
	for range flows {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	waitFor(t, 5*time.Second, func() bool { return h.st.Stats().TCPFlows == 0 })
}

// TestUDPDialFailure: a refused UDP flow drops its datagrams, and holds its
// 4-tuple for a while so a retrying client does not cause a dial each time.
func TestUDPDialFailure(t *testing.T) {
	var dials atomic.Int32
	h := newHarness(t, Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) {
		dials.Add(1)
		return nil, flow.ErrForbidden
	})}, false)
	var pc net.PacketConn
	if err := h.ns.Do(func() (err error) { pc, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.66.1.55:53"))
	for range 5 {
		if _, err := pc.WriteTo([]byte("query"), dst); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials for 5 datagrams on one tuple, want 1", n)
	}
	pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, _, err := pc.ReadFrom(make([]byte, 100)); !isTimeout(err) {
		t.Fatalf("read on a refused flow: %v, want nothing", err)
	}
}

// TestPortReuseAfterRemoteClosedFirst: when the destination closes first,
// the netstack sends the first FIN and its endpoint ends in TIME_WAIT,
// while the application's kernel socket closes passively and frees its
// port at once. A new connection from that port must be accepted at once:
// gVisor hands a SYN that meets a TIME_WAIT endpoint only to a listening
// endpoint, never to the forwarder, so while the netstack held TIME_WAIT
// the SYN and its retransmissions were dropped.
func TestPortReuseAfterRemoteClosedFirst(t *testing.T) {
	h := newHarness(t, Config{Dialer: dialFunc(func(context.Context, flow.Dest) (flow.Conn, error) {
		s := newSink()
		s.Close() // the destination closes at once: EOF, then our FIN
		return s, nil
	})}, false)
	const addr = "10.66.1.77:80"
	local := &net.TCPAddr{IP: net.ParseIP("10.66.0.1")}
	for i := range 3 {
		var c net.Conn
		start := time.Now()
		err := h.ns.Do(func() (err error) {
			d := net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}
			c, err = d.Dial("tcp", addr)
			return err
		})
		if err != nil {
			t.Fatalf("connect %d from %v: %v after %v", i, local, err, time.Since(start))
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("connect %d from %v took %v: the SYN was dropped at least once", i, local, d)
		}
		local = c.LocalAddr().(*net.TCPAddr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("connect %d: read %d, %v; want the destination's EOF", i, n, err)
		}
		c.Close()
		// The netstack's side reaches TIME_WAIT once our FIN is acked.
		time.Sleep(100 * time.Millisecond)
	}
}
