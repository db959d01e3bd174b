package socks

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/proxy/proxytest"
)

func startServer(t *testing.T, cfg Config) (*Server, *proxytest.Dialer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &proxytest.Dialer{}
	cfg.Dialer = d
	s := Serve(ln, cfg)
	t.Cleanup(func() { s.Close() })
	return s, d
}

// socksDial performs the client side of a CONNECT or ASSOCIATE and returns
// the reply code, the bound address and the connection.
func socksDial(t *testing.T, srv string, auth []string, cmd byte, addr []byte) (byte, netip.AddrPort, net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", srv, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	method := byte(methodNone)
	if auth != nil {
		method = methodUserPwd
	}
	c.Write([]byte{5, 1, method})
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil || sel[1] != method {
		t.Fatalf("method selection %x, %v", sel, err)
	}
	if auth != nil {
		msg := []byte{1, byte(len(auth[0]))}
		msg = append(append(msg, auth[0]...), byte(len(auth[1])))
		c.Write(append(msg, auth[1]...))
		var st [2]byte
		if _, err := io.ReadFull(c, st[:]); err != nil {
			t.Fatal(err)
		}
		if st[1] != 0 {
			return 0xff, netip.AddrPort{}, c
		}
	}
	c.Write(append([]byte{5, cmd, 0}, addr...))
	rep, err := readReply(c)
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	c.SetDeadline(time.Time{})
	return rep.code, rep.bnd, c
}

type reply struct {
	code byte
	bnd  netip.AddrPort
}

func readReply(r io.Reader) (reply, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return reply{}, err
	}
	req, err := readAddr(r)
	if err != nil {
		return reply{}, err
	}
	return reply{hdr[1], netip.AddrPortFrom(req.addr, req.port)}, nil
}

func ipv4Addr(ap netip.AddrPort) []byte { return appendAddr(nil, ap.Addr(), "", ap.Port()) }
func nameAddr(name string, port uint16) []byte {
	return appendAddr(nil, netip.Addr{}, name, port)
}

func TestConnectHalfClose(t *testing.T) {
	s, d := startServer(t, Config{})
	echo := proxytest.EchoServer(t)
	for _, addr := range [][]byte{ipv4Addr(echo), nameAddr("echo.test", echo.Port()), nameAddr("127.0.0.1", echo.Port())} {
		code, _, c := socksDial(t, s.Addr().String(), nil, cmdConnect, addr)
		if code != repSuccess {
			t.Fatalf("connect %x: reply %#x", addr, code)
		}
		msg := bytes.Repeat([]byte("usl"), 100000)
		go func() { c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo: %d bytes, %v", len(got), err)
		}
		c.Close()
	}
	dests := d.Dests()
	if dests[1].Name != "echo.test" || dests[2].Name != "" || dests[2].Addr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("destinations %v: a domain goes as a name, a literal as an address", dests)
	}
}

func TestReplyCodes(t *testing.T) {
	s, _ := startServer(t, Config{})
	for name, want := range map[string]byte{
		"refused.test": repRefused, "forbidden.test": repNotAllowed, "unreachable.test": repHostUnreachable,
		"timeout.test": repTTLExpired, "limit.test": repGeneralFailure,
	} {
		code, _, c := socksDial(t, s.Addr().String(), nil, cmdConnect, nameAddr(name, 80))
		c.Close()
		if code != want {
			t.Errorf("%s: reply %#x, want %#x", name, code, want)
		}
	}
	code, _, c := socksDial(t, s.Addr().String(), nil, cmdBind, ipv4Addr(netip.MustParseAddrPort("127.0.0.1:80")))
	c.Close()
	if code != repCmdNotSupported {
		t.Errorf("BIND: reply %#x, want %#x", code, repCmdNotSupported)
	}
	code, _, c = socksDial(t, s.Addr().String(), nil, cmdConnect, []byte{9, 1, 2, 3, 4, 0, 80})
	c.Close()
	if code != repAddrTypeUnsupported {
		t.Errorf("address type 9: reply %#x", code)
	}
}

func TestUserPassword(t *testing.T) {
	s, _ := startServer(t, Config{Users: map[string]string{"alice": "s3cret"}})
	echo := proxytest.EchoServer(t)
	if code, _, c := socksDial(t, s.Addr().String(), []string{"alice", "s3cret"}, cmdConnect, ipv4Addr(echo)); code != repSuccess {
		t.Errorf("right password: reply %#x", code)
	} else {
		c.Close()
	}
	for _, up := range [][]string{{"alice", "wrong"}, {"bob", "s3cret"}} {
		code, _, c := socksDial(t, s.Addr().String(), up, cmdConnect, ipv4Addr(echo))
		c.Close()
		if code != 0xff {
			t.Errorf("%v accepted", up)
		}
	}
	// A client offering only "no authentication" is turned away.
	c, _ := net.Dial("tcp", s.Addr().String())
	defer c.Close()
	c.Write([]byte{5, 1, methodNone})
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil || sel[1] != methodNoneOK {
		t.Errorf("no-auth client got method %#x, %v", sel[1], err)
	}
}

// A client that sends garbage, or nothing, is closed without effect.
func TestGarbageAndSilence(t *testing.T) {
	s, d := startServer(t, Config{HandshakeTimeout: 300 * time.Millisecond})
	for _, junk := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), {5, 0}, {4, 1, 0, 80, 127, 0, 0, 1, 0}, {}} {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		start := time.Now()
		io.Copy(io.Discard, c) // the server closes it
		if time.Since(start) > 2*time.Second {
			t.Errorf("%q: connection held for %v", junk, time.Since(start))
		}
		c.Close()
	}
	if dests := d.Dests(); len(dests) != 0 {
		t.Errorf("garbage dialed %v", dests)
	}
}

func TestUDPAssociate(t *testing.T) {
	s, _ := startServer(t, Config{})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	echo := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	code, relay, ctl := socksDial(t, s.Addr().String(), nil, cmdAssociate, ipv4Addr(netip.MustParseAddrPort("0.0.0.0:0")))
	defer ctl.Close()
	if code != repSuccess || !relay.IsValid() || relay.Port() == 0 {
		t.Fatalf("associate: reply %#x, relay %v", code, relay)
	}
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for _, hdr := range [][]byte{ipv4Addr(echo), nameAddr("echo.test", echo.Port())} {
		want := append(append([]byte{0, 0, 0}, hdr...), "echo:ping"...)
		buf := make([]byte, 2048)
		got := false
		for try := 0; try < 20 && !got; try++ {
			uc.Write(append(append([]byte{0, 0, 0}, hdr...), "ping"...))
			uc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := uc.Read(buf)
			if err == nil {
				if !bytes.Equal(buf[:n], want) {
					t.Fatalf("reply %q, want %q", buf[:n], want)
				}
				got = true
			}
		}
		if !got {
			t.Fatalf("no echo through the association for %x", hdr)
		}
	}
}

func TestReplyCodeMapping(t *testing.T) {
	for err, want := range map[error]byte{
		flow.ErrRefused: 5, flow.ErrForbidden: 2, flow.ErrUnreachable: 4, flow.ErrTimeout: 6,
		context.DeadlineExceeded: 6, errors.New("x"): 1, &flow.Error{Reason: flow.Refused, Err: io.EOF}: 5,
	} {
		if got := replyCode(err); got != want {
			t.Errorf("%v: %#x, want %#x", err, got, want)
		}
	}
}

// FuzzReadRequest drives the request and UDP header parsers: they never
// panic, and what they accept is re-encoded to the same bytes.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 1, 10, 98, 0, 2, 0, 80})
	f.Add(append([]byte{5, 1, 0}, nameAddr("db.internal", 5432)...))
	f.Add(append([]byte{5, 3, 0}, ipv4Addr(netip.MustParseAddrPort("[fd98::2]:53"))...))
	f.Add([]byte{5, 2, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{5, 1, 0, 3, 0, 0, 80})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		req, err := readRequest(r)
		if err == nil {
			used := b[3 : len(b)-r.Len()]
			again := appendAddr(nil, req.addr, req.name, req.port)
			if b[3] != atypDomain && !bytes.Equal(used, again) {
				t.Fatalf("%x re-encoded as %x", used, again)
			}
			if req.name != "" {
				if err := flow.CheckName(req.name); err != nil {
					t.Fatalf("accepted name %q: %v", req.name, err)
				}
			}
		}
		parseUDPHeader(b)
	})
}

func TestClientConnect(t *testing.T) {
	s, _ := startServer(t, Config{})
	echo := proxytest.EchoServer(t)
	for target, want := range map[string]error{echo.String(): nil, "refused.test:1": &ReplyError{Code: repRefused}} {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		err = Connect(c, target)
		c.Close()
		var re *ReplyError
		if want == nil && err != nil || want != nil && (!errors.As(err, &re) || re.Code != repRefused) {
			t.Errorf("%s: %v, want %v", target, err, want)
		}
	}
}
