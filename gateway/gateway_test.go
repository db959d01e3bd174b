package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/usl"
	"go.uber.org/goleak"
)

// sessionPair returns a client session whose peer's streams are served by a
// gateway exporting exports, over loopback TCP.
func sessionPair(t *testing.T, exports ...string) *usl.Session {
	t.Helper()
	var ps []netip.Prefix
	for _, e := range exports {
		ps = append(ps, netip.MustParsePrefix(e))
	}
	return sessionPairWith(t, Config{Exports: ps, DialTimeout: 2 * time.Second, UDPIdleTimeout: time.Second})
}

// sessionPairWith is sessionPair with a whole gateway configuration.
func sessionPairWith(t *testing.T, cfg Config) *usl.Session {
	t.Helper()
	ck, _ := usl.GeneratePrivateKey()
	sk, _ := usl.GeneratePrivateKey()
	l, err := usl.Listen("tcp", "127.0.0.1:0", usl.Config{PrivateKey: sk, PeerKeys: []usl.PublicKey{ck.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := usl.Dial(ctx, l.Addr().String(), usl.Config{PrivateKey: ck, PeerKeys: []usl.PublicKey{sk.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	s, err := l.Accept(actx)
	if err != nil {
		t.Fatal(err)
	}
	g := New(cfg)
	served := make(chan struct{})
	go func() { g.Serve(ctx, s); close(served) }()
	t.Cleanup(func() {
		c.Close()
		s.Close()
		l.Close()
		cancel()
		<-served
		g.Wait()
	})
	return c
}

func open(t *testing.T, s *usl.Session, proto flow.Proto, addr string) (*usl.Stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := flow.Dest{Proto: proto, Addr: netip.MustParseAddrPort(addr)}
	return s.OpenStream(ctx, d.Marshal())
}

// TestMain checks, after every test's cleanups ran, that no session, relay
// or dial goroutine outlived its test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConnectOutcomes(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	s := sessionPair(t, "127.0.0.0/8")
	cases := []struct {
		addr string
		want error
	}{
		{closedAddr, usl.ErrRefused},
		{"10.255.255.1:80", usl.ErrForbidden}, // outside the exports
		{"[::1]:80", usl.ErrForbidden},
	}
	for _, c := range cases {
		st, err := open(t, s, flow.TCP, c.addr)
		if !errors.Is(err, c.want) {
			t.Errorf("open %s: err = %v, want %v", c.addr, err, c.want)
		}
		if st != nil {
			st.Close()
		}
	}
	st, err := open(t, s, flow.TCP, ln.Addr().String())
	if err != nil {
		t.Fatalf("open exported listener: %v", err)
	}
	st.Close()
}

// TestHalfCloseBothWays sends a request, half-closes, and reads a reply that
// the server writes only after it saw EOF: FIN must cross in both
// directions, and the bytes must match exactly.
func TestHalfCloseBothWays(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	req := make([]byte, 3<<20)
	rand.Read(req)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		got, _ := io.ReadAll(c) // until the client's FIN
		sum := sha256.Sum256(got)
		c.Write(bytes.Repeat(sum[:], 1<<14)) // 512 KiB reply, after EOF
		c.(*net.TCPConn).CloseWrite()
	}()
	s := sessionPair(t, "127.0.0.1/32")
	st, err := open(t, s, flow.TCP, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write(req); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	sum := sha256.Sum256(req)
	if want := bytes.Repeat(sum[:], 1<<14); !bytes.Equal(reply, want) {
		t.Fatalf("reply of %d bytes does not carry the request's SHA-256", len(reply))
	}
}

// TestResetsBothWays checks that aborting the stream makes the
// destination see ECONNRESET, and that a destination RST resets the stream.
func TestResetsBothWays(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.(*net.TCPConn)
		}
	}()
	s := sessionPair(t, "127.0.0.1/32")

	st, err := open(t, s, flow.TCP, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dst := <-accepted
	st.Reset(usl.ResetAborted)
	dst.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(dst); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("destination read after stream reset: %v, want ECONNRESET", err)
	}
	dst.Close()

	st, err = open(t, s, flow.TCP, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dst = <-accepted
	dst.SetLinger(0)
	dst.Close()
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(st); !errors.Is(err, usl.ErrAborted) {
		t.Fatalf("stream read after destination RST: %v, want %v", err, usl.ErrAborted)
	}
	st.Close()
}

func TestUDPDatagrams(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer pc.Close()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(bytes.ToUpper(buf[:n]), from)
		}
	}()
	s := sessionPair(t, "127.0.0.1/32")
	st, err := open(t, s, flow.UDP, pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, msg := range []string{"hello", "", string(bytes.Repeat([]byte("x"), 60000))} {
		rec := binary.BigEndian.AppendUint16(nil, uint16(len(msg)))
		if _, err := st.Write(append(rec, msg...)); err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		var hdr [2]byte
		if _, err := io.ReadFull(st, hdr[:]); err != nil {
			t.Fatalf("reply header: %v", err)
		}
		got := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatalf("reply: %v", err)
		}
		if want := bytes.ToUpper([]byte(msg)); !bytes.Equal(got, want) {
			t.Fatalf("datagram of %d bytes came back as %d bytes", len(want), len(got))
		}
	}
}

// TestEmptyReadWaits pins the usl.Stream behaviour the relay's idle-memory
// saving depends on: Read(nil) blocks until data is pending and consumes
// nothing.
func TestEmptyReadWaits(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		time.Sleep(200 * time.Millisecond)
		c.Write([]byte("late"))
	}()
	s := sessionPair(t, "127.0.0.1/32")
	st, err := open(t, s, flow.TCP, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	if n, err := st.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("Read(nil) returned after %v, before any data was sent", waited)
	}
	buf := make([]byte, 16)
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.ReadAtLeast(st, buf, 4)
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("read after wait: %q, %v", buf[:n], err)
	}
}

// TestEcho: an ICMP flow to an exported address sends real echo requests
// from this host and returns the replies with their sequence and data; an
// unexported address is forbidden like any flow.
func TestEcho(t *testing.T) {
	if e, err := openEcho(netip.MustParseAddr("127.0.0.1")); err != nil {
		t.Skipf("no ICMP socket here: %v", err)
	} else {
		e.c.Close()
	}
	s := sessionPair(t, "127.0.0.1/32", "::1/128")
	if _, err := open(t, s, flow.ICMP, "127.0.0.2:0"); !errors.Is(err, usl.ErrForbidden) {
		t.Fatalf("echo to an unexported address: %v, want forbidden", err)
	}
	for _, c := range []struct {
		addr     string
		req, rep byte
	}{{"127.0.0.1:0", echoRequest4, echoReply4}, {"[::1]:0", echoRequest6, echoReply6}} {
		st, err := open(t, s, flow.ICMP, c.addr)
		if err != nil {
			t.Fatalf("%s: %v", c.addr, err)
		}
		for seq := 1; seq <= 3; seq++ {
			payload := []byte("usltun gateway echo")
			buf := make([]byte, flow.DatagramHeader+8+len(payload))
			m := buf[flow.DatagramHeader:]
			m[0] = c.req
			binary.BigEndian.PutUint16(m[4:], 4242)
			binary.BigEndian.PutUint16(m[6:], uint16(seq))
			copy(m[8:], payload)
			if c.req == echoRequest4 {
				binary.BigEndian.PutUint16(m[2:], ^onesSum(m))
			}
			if err := flow.WriteDatagram(st, buf); err != nil {
				t.Fatal(err)
			}
			st.SetReadDeadline(time.Now().Add(3 * time.Second))
			reply, err := flow.ReadDatagram(st, make([]byte, flow.MaxDatagram))
			if err != nil {
				t.Fatalf("%s seq %d: no reply: %v", c.addr, seq, err)
			}
			if reply[0] != c.rep || binary.BigEndian.Uint16(reply[6:]) != uint16(seq) || !bytes.Equal(reply[8:], payload) {
				t.Fatalf("%s seq %d: reply % x", c.addr, seq, reply)
			}
		}
		st.Close()
	}
}
