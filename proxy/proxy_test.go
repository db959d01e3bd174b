package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/proxy/proxytest"
)

func TestCheckListen(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:1080": true, "[::1]:1080": true, "localhost:1080": true, "127.1.2.3:1": true,
		"0.0.0.0:1080": false, "[::]:1080": false, ":1080": false, "10.0.0.1:1080": false, "host.example:1080": false,
	} {
		err := CheckListen("--socks", addr, false)
		if (err == nil) != ok {
			t.Errorf("%s: %v", addr, err)
		}
		if err != nil && !strings.Contains(err.Error(), "without authentication") {
			t.Errorf("%s: %v does not say why", addr, err)
		}
		if err := CheckListen("--socks", addr, true); err != nil {
			t.Errorf("%s with auth: %v", addr, err)
		}
	}
}

// spliced returns a client connection spliced through Splice to a flow
// whose far end is srv, the server's side of the destination connection.
func spliced(t *testing.T) (client *net.TCPConn, srv net.Conn) {
	t.Helper()
	dst, _ := net.Listen("tcp", "127.0.0.1:0")
	front, _ := net.Listen("tcp", "127.0.0.1:0")
	t.Cleanup(func() { dst.Close(); front.Close() })
	var d proxytest.Dialer
	go func() {
		c, err := front.Accept()
		if err != nil {
			return
		}
		f, err := d.DialFlow(context.Background(), flow.Dest{Proto: flow.TCP, Addr: dst.Addr().(*net.TCPAddr).AddrPort()})
		if err != nil {
			c.Close()
			return
		}
		var pool bufpool.Pool
		splicePair(c.(*net.TCPConn), f, &pool)
	}()
	c, err := net.Dial("tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := dst.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	s.SetDeadline(time.Now().Add(5 * time.Second))
	return c.(*net.TCPConn), s
}

func TestSpliceHalfClose(t *testing.T) {
	c, s := spliced(t)
	c.Write([]byte("ping"))
	c.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "ping" {
		t.Fatalf("server read %q, %v", got, err)
	}
	s.Write([]byte("pong")) // the other direction still works
	s.(*net.TCPConn).CloseWrite()
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "pong" {
		t.Fatalf("client read %q, %v", got, err)
	}
}

func TestSpliceResetReachesClient(t *testing.T) {
	c, s := spliced(t)
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	io.ReadFull(s, buf)
	s.(*net.TCPConn).SetLinger(0)
	s.Close() // RST from the destination
	_, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client saw %v, want ECONNRESET", err)
	}
}

func TestLoadUsers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), mode)
		os.Chmod(p, mode)
		return p
	}
	u, err := LoadUsers(write("ok", "# users\nalice:s3:cret\n\nbob:pw\r\n", 0o600))
	if err != nil || len(u) != 2 || !u.Check("alice", "s3:cret") || u.Check("alice", "s3") || u.Check("carol", "") {
		t.Fatalf("users %v, %v", u, err)
	}
	for name, c := range map[string]struct {
		body string
		mode os.FileMode
		want string
	}{
		"open":  {"a:b\n", 0o644, "chmod 600"},
		"bad":   {"alice\n", 0o600, "line 1: want user:password"},
		"empty": {"# nobody\n", 0o600, "no user:password line"},
	} {
		if _, err := LoadUsers(write(name, c.body, c.mode)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// Beyond max clients, new connections are closed at once; Close ends the
// ones being served.
func TestServeLimitAndClose(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	held := make(chan struct{})
	s := Serve(ln, 1, slog.New(slog.DiscardHandler), func(ctx context.Context, c net.Conn) {
		defer c.Close()
		close(held)
		<-ctx.Done()
	})
	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	<-held
	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("second client beyond max 1: %v, want EOF", err)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not end the served client")
	}
}
