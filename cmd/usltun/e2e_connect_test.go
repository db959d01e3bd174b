package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/tools/loadgen"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	echoPort   = 7000 // half-close echo on C
	udpPort    = 5353 // UDP echo on C
	closedPort = 9    // nothing listens there on C
)

// startEcho runs a half-close echo server on C at addr: it reads until the
// client's FIN, then sends everything back and closes. A connection that is
// reset is dropped silently.
func startEcho(t *testing.T, c *testenv.Host, addr string) {
	t.Helper()
	ln, err := c.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(60 * time.Second))
				data, err := io.ReadAll(conn)
				if err != nil {
					return
				}
				conn.Write(data)
			}()
		}
	}()
}

// startUDPEcho answers each datagram on C with "echo:" + the datagram.
func startUDPEcho(t *testing.T, c *testenv.Host, addr string) {
	t.Helper()
	pc, err := c.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
}

// halfCloseEcho writes payload, shuts down writing, and reads the whole
// reply, which must be the payload.
func halfCloseEcho(ctx context.Context, h *testenv.Host, addr string, payload []byte) error {
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("shutdown(SHUT_WR): %w", err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read reply after %d bytes: %w", len(reply), err)
	}
	if !bytes.Equal(reply, payload) {
		return fmt.Errorf("reply of %d bytes differs from the %d bytes sent", len(reply), len(payload))
	}
	return nil
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestE2EConnect checks connect outcomes and the other protocols on one lab.
// The blackhole subtest runs last: it is the only one that touches the link.
func TestE2EConnect(t *testing.T) {
	l := newLab(t, labOpts{})
	echo4 := net.JoinHostPort(addrC4, strconv.Itoa(echoPort))
	echo6 := net.JoinHostPort(addrC6, strconv.Itoa(echoPort))
	startEcho(t, l.C, echo4)
	startEcho(t, l.C, echo6)
	startUDPEcho(t, l.C, net.JoinHostPort(addrC4, strconv.Itoa(udpPort)))
	startUDPEcho(t, l.C, net.JoinHostPort(addrC6, strconv.Itoa(udpPort)))

	t.Run("refused", func(t *testing.T) {
		for _, host := range []string{addrC4, addrC6} {
			addr := net.JoinHostPort(host, strconv.Itoa(closedPort))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := l.A.DialContext(ctx, "tcp", addr)
			cancel()
			if err == nil {
				c.Close()
				t.Fatalf("connect to closed port %s succeeded", addr)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect to closed port %s: %v (%s), want ECONNREFUSED", addr, err, loadgen.Errno(err))
			}
		}
	})

	t.Run("forbidden", func(t *testing.T) {
		addr := "10.97.0.5:80" // routed by A, not exported by B
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := l.A.DialContext(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("connect to unexported %s succeeded", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connect to unexported %s: %v (%s), want ECONNREFUSED", addr, err, loadgen.Errno(err))
		}
		var line string
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end) && line == ""; time.Sleep(20 * time.Millisecond) {
			for _, ln := range strings.Split(l.DB.Output(), "\n") {
				if strings.Contains(ln, "forbidden") && strings.Contains(ln, addr) {
					line = ln
				}
			}
		}
		if line == "" {
			t.Fatalf("B logged no line with \"forbidden\" and %s", addr)
		}
		t.Logf("B: %s", line)
	})

	t.Run("half_close", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := halfCloseEcho(ctx, l.A, echo4, randomBytes(t, 4<<20)); err != nil {
			t.Fatal(err)
		}
		// The same with loadgen's half-close mode: SHA-256 at both ends.
		ln, err := l.C.Listen("tcp", net.JoinHostPort(addrC4, "9001"))
		if err != nil {
			t.Fatal(err)
		}
		srv := loadgen.NewServer(ln, nil)
		defer srv.Close()
		rep, err := loadgen.RunFor(ctx, loadgen.Config{Addr: ln.Addr().String(), Dial: l.A.DialContext, Mode: loadgen.HalfClose, Flows: 2, Bytes: 8 << 20})
		if err != nil || !rep.Verified {
			t.Fatalf("loadgen half-close: %v\n%s", err, rep)
		}
	})

	t.Run("udp", func(t *testing.T) {
		for _, host := range []string{addrC4, addrC6} {
			addr := net.JoinHostPort(host, strconv.Itoa(udpPort))
			c, err := l.A.Dial("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, size := range []int{1, 512, 1400} {
				msg := randomBytes(t, size)
				if err := udpExchange(c, msg); err != nil {
					t.Fatalf("udp %s, %d bytes: %v", addr, size, err)
				}
			}
		}
	})

	t.Run("ipv6", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := halfCloseEcho(ctx, l.A, echo6, randomBytes(t, 1<<20)); err != nil {
			t.Fatal(err)
		}
		ln, err := l.C.Listen("tcp", net.JoinHostPort(addrC6, "9001"))
		if err != nil {
			t.Fatal(err)
		}
		srv := loadgen.NewServer(ln, nil)
		defer srv.Close()
		rep, err := loadgen.RunFor(ctx, loadgen.Config{Addr: ln.Addr().String(), Dial: l.A.DialContext, Flows: 2, Bytes: 32 << 20})
		if err != nil || !rep.Verified {
			t.Fatalf("loadgen over IPv6: %v\n%s", err, rep)
		}
		t.Logf("IPv6: 2 flows × 32 MiB each way verified, %.2f Gbit/s", rep.BitsPerSec/1e9)
	})

	t.Run("connect_during_blackhole", func(t *testing.T) {
		l.AB.Blackhole()
		start := time.Now()
		healed := make(chan time.Time, 1)
		go func() {
			time.Sleep(3 * time.Second)
			healed <- time.Now()
			l.AB.Heal()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := l.A.DialContext(ctx, "tcp", echo4)
		connected := time.Now()
		heal := <-healed
		if err != nil {
			t.Fatalf("connect during a 3 s blackhole: %v (%s)", err, loadgen.Errno(err))
		}
		c.Close()
		if connected.Before(heal) {
			t.Fatalf("connect completed %v after the start, before the heal: the SYN-ACK did not wait for the peer", connected.Sub(start))
		}
		t.Logf("connect completed %v after the heal", connected.Sub(heal).Round(time.Millisecond))
		if err := halfCloseEcho(ctx, l.A, echo4, randomBytes(t, 64<<10)); err != nil {
			t.Fatal(err)
		}
	})
}

// udpExchange sends msg and waits for its echo. The tunnel carries
// datagrams reliably, but a datagram is still allowed to be lost once, so
// it is retried a few times.
func udpExchange(c net.Conn, msg []byte) error {
	want := append([]byte("echo:"), msg...)
	buf := make([]byte, 65536)
	var last error
	for range 3 {
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			last = err
			continue
		}
		if !bytes.Equal(buf[:n], want) {
			return fmt.Errorf("reply of %d bytes differs from the expected %d", n, len(want))
		}
		return nil
	}
	return fmt.Errorf("no reply: %w", last)
}

// TestE2ERestartB kills B's daemon with SIGKILL and starts it again. The
// connections open on A must get an RST (ECONNRESET) within the dead
// interval + 1 s, and new connections must work.
func TestE2ERestartB(t *testing.T) {
	l := newLab(t, labOpts{})
	echo := net.JoinHostPort(addrC4, strconv.Itoa(echoPort))
	startEcho(t, l.C, echo)
	var conns []net.Conn
	for range 3 {
		c, err := l.A.Dial("tcp", echo)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The echo server waits for the FIN: the flow stays open.
		if _, err := c.Write([]byte("open flow")); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	killed := time.Now()
	l.DB.Kill()
	if err := l.DB.Restart(); err != nil {
		t.Fatal(err)
	}
	bound := deadInterval + time.Second
	for i, c := range conns {
		c.SetReadDeadline(killed.Add(bound + 5*time.Second))
		n, err := c.Read(make([]byte, 64))
		after := time.Since(killed)
		switch {
		case err == nil:
			t.Errorf("conn %d: read %d stale bytes after B's restart", i, n)
		case !errors.Is(err, syscall.ECONNRESET):
			t.Errorf("conn %d: %v (%s) %v after the kill, want ECONNRESET", i, err, loadgen.Errno(err), after.Round(time.Millisecond))
		case after > bound:
			t.Errorf("conn %d: RST %v after the kill, want ≤ %v", i, after.Round(time.Millisecond), bound)
		default:
			t.Logf("conn %d: ECONNRESET %v after the kill", i, after.Round(time.Millisecond))
		}
	}
	l.waitUp(l.A, upTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := halfCloseEcho(ctx, l.A, echo, randomBytes(t, 1<<20)); err != nil {
		t.Fatalf("new connection after B's restart: %v", err)
	}
}

// TestE2EStopRemovesDevice sends SIGTERM to A's daemon: it must exit 0 and
// take usl0 and its routes with it.
func TestE2EStopRemovesDevice(t *testing.T) {
	l := newLab(t, labOpts{})
	nl := netlinkIn(t, l.A)
	link, err := nl.LinkByName("usl0")
	if err != nil {
		t.Fatalf("usl0 on A while the daemon runs: %v", err)
	}
	routes := tunnelRoutes(t, nl, link.Attrs().Index)
	for _, want := range []string{netC4, netC6, unexportedNet} {
		if !routes[want] {
			t.Fatalf("route %s via usl0 missing while the daemon runs; have %v", want, routes)
		}
	}
	if err := l.DA.Stop(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if _, err := nl.LinkByName("usl0"); err == nil {
		t.Fatal("usl0 still exists after SIGTERM")
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Fatalf("look up usl0: %v", err)
	}
	all, err := nl.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r.Dst == nil {
			continue
		}
		for _, gone := range []string{netC4, netC6, unexportedNet} {
			if r.Dst.String() == gone {
				t.Errorf("route %s still present after SIGTERM: %v", gone, r)
			}
		}
	}
	if !strings.Contains(l.DA.Output(), "stopped") {
		t.Errorf("A's daemon did not log its orderly stop")
	}
}

// netlinkIn opens a netlink handle inside h's namespace.
func netlinkIn(t *testing.T, h *testenv.Host) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(h.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// tunnelRoutes lists the destinations routed through the link with index.
func tunnelRoutes(t *testing.T, nl *netlink.Handle, index int) map[string]bool {
	t.Helper()
	rs, err := nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: index}, netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, r := range rs {
		if r.Dst != nil {
			out[r.Dst.String()] = true
		}
	}
	return out
}

// TestE2ERouteLoop: a --route that covers the peer's own address would send
// the tunnel into itself; the daemon must refuse it with a message that
// names the peer, and exit non-zero.
func TestE2ERouteLoop(t *testing.T) {
	requireE2E(t)
	a, b := testenv.NewHost(t, "a"), testenv.NewHost(t, "b")
	testenv.Link(t, a, b, addrA4+"/24", addrB4+"/24")
	dir := t.TempDir()
	key := filepath.Join(dir, "a.key")
	gen, err := a.Run(e2eBinary, "genkey")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte(gen), 0o600); err != nil {
		t.Fatal(err)
	}
	// Any valid public key of another host will do: nothing connects.
	other, err := a.Run("sh", "-c", e2eBinary+" genkey | "+e2eBinary+" pubkey")
	if err != nil {
		t.Fatal(err)
	}
	p := a.Start(t, "usltun", e2eBinary, "up", "--peer", addrB4, "--key", key,
		"--peer-key", strings.TrimSpace(other), "--route", "10.99.0.0/16")
	err = p.Wait(15 * time.Second)
	if p.Running() {
		t.Fatal("usltun up with a --route covering the peer is still running after 15 s; want a refusal")
	}
	if err == nil {
		t.Fatal("usltun up with a --route covering the peer exited 0")
	}
	out := p.Output()
	// The peer as the user wrote it: "10.99.0.2", not "::ffff:10.99.0.2".
	named := regexp.MustCompile(`(^|[^:0-9a-fA-F.])` + regexp.QuoteMeta(addrB4) + `([^0-9]|$)`)
	if !named.MatchString(out) || !strings.Contains(out, "peer") {
		t.Fatalf("refusal does not name the peer as %s:\n%s", addrB4, out)
	}
	if _, err := netlinkIn(t, a).LinkByName("usl0"); err == nil {
		t.Error("usl0 exists after the refusal")
	}
	t.Logf("refused: %s", strings.TrimSpace(tail(out, 1)))
}

// TestE2EIPv6Path runs the session itself over IPv6 between A and B, and
// carries IPv4 and IPv6 flows through it across a reset of the path.
func TestE2EIPv6Path(t *testing.T) {
	l := newLab(t, labOpts{ipv6Path: true})
	st, err := l.status(l.A)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[" + addrB6 + "]:7400"; st.Session == nil || st.Session.Path != want {
		t.Fatalf("session path = %+v, want %s", st.Session, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, host := range []string{addrC4, addrC6} {
		ln, err := l.C.Listen("tcp", net.JoinHostPort(host, "9002"))
		if err != nil {
			t.Fatal(err)
		}
		srv := loadgen.NewServer(ln, nil)
		defer srv.Close()
		run, err := loadgen.Start(ctx, loadgen.Config{Addr: ln.Addr().String(), Dial: l.A.DialContext, Flows: 2, Duration: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		l.AB.ResetTCP(sessionPort)
		time.Sleep(300 * time.Millisecond)
		l.AB.Heal()
		rep, err := run.Wait()
		if err != nil || !rep.Verified {
			t.Fatalf("flows to %s over an IPv6 session: %v\n%s", host, err, rep)
		}
	}
	st, err = l.status(l.A)
	if err != nil {
		t.Fatal(err)
	}
	if st.Session.Reconnects < 1 {
		t.Fatalf("reconnects = %d after resets of the IPv6 path, want > 0", st.Session.Reconnects)
	}
}
