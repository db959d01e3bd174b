package httpproxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/usltun/usltun/proxy/proxytest"
)

func startProxy(t *testing.T, cfg Config) (*Server, *proxytest.Dialer) {
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

// exchange sends raw and returns the response and the connection.
func exchange(t *testing.T, addr, raw string) (*http.Response, *bufio.Reader, net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, raw)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	return resp, br, c
}

func body(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestConnect(t *testing.T) {
	s, d := startProxy(t, Config{})
	_, port, _ := net.SplitHostPort(proxytest.EchoServer(t).String())
	// The first bytes ride right behind the request.
	resp, br, c := exchange(t, s.Addr().String(), "CONNECT echo.test:"+port+" HTTP/1.1\r\nHost: echo.test:"+port+"\r\n\r\nearly")
	defer c.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	msg := bytes.Repeat([]byte("usl"), 50000)
	go func() { c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(br)
	if err != nil || string(got) != "early"+string(msg) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	if ds := d.Dests(); len(ds) != 1 || ds[0].Name != "echo.test" {
		t.Errorf("dialed %v, want the name", ds)
	}
}

func TestStatusCodes(t *testing.T) {
	s, _ := startProxy(t, Config{})
	for target, want := range map[string]int{
		"refused.test:80": 502, "forbidden.test:80": 403, "timeout.test:80": 504,
		"unreachable.test:80": 502, "limit.test:80": 503, "no-port": 400, "bad..name:80": 400,
	} {
		resp, _, c := exchange(t, s.Addr().String(), "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
		b := body(resp)
		c.Close()
		if resp.StatusCode != want || !strings.HasPrefix(b, "usltun: ") || strings.Count(b, "\n") != 1 {
			t.Errorf("%s: %d %q, want %d with a one-line reason", target, resp.StatusCode, b, want)
		}
	}
	resp, _, c := exchange(t, s.Addr().String(), "GET /local HTTP/1.1\r\nHost: x\r\n\r\n")
	c.Close()
	if resp.StatusCode != 405 {
		t.Errorf("origin-form GET: %d", resp.StatusCode)
	}
	resp, _, c = exchange(t, s.Addr().String(), "garbage\r\n\r\n")
	c.Close()
	if resp.StatusCode != 400 {
		t.Errorf("garbage: %d", resp.StatusCode)
	}
	resp, _, c = exchange(t, s.Addr().String(), "GET /"+strings.Repeat("a", MaxHeader)+" HTTP/1.1\r\n\r\n")
	c.Close()
	if resp.StatusCode != 400 {
		t.Errorf("oversized head: %d", resp.StatusCode)
	}
}

func TestForwardAbsoluteGET(t *testing.T) {
	s, _ := startProxy(t, Config{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	var seen *http.Request
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r
		io.WriteString(w, "hello "+r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	resp, _, c := exchange(t, s.Addr().String(), "GET http://web.test:"+port+"/x HTTP/1.1\r\nHost: web.test:"+port+"\r\nProxy-Connection: keep-alive\r\n\r\n")
	defer c.Close()
	if b := body(resp); resp.StatusCode != 200 || b != "hello /x" {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
	if seen.Header.Get("Proxy-Connection") != "" || seen.RequestURI != "/x" {
		t.Errorf("origin saw %q with headers %v", seen.RequestURI, seen.Header)
	}
}

func TestAuth(t *testing.T) {
	s, _ := startProxy(t, Config{Users: map[string]string{"alice": "pw"}})
	_, port, _ := net.SplitHostPort(proxytest.EchoServer(t).String())
	req := "CONNECT 127.0.0.1:" + port + " HTTP/1.1\r\nHost: x\r\n"
	resp, _, c := exchange(t, s.Addr().String(), req+"\r\n")
	c.Close()
	if resp.StatusCode != 407 || resp.Header.Get("Proxy-Authenticate") == "" {
		t.Errorf("no credentials: %d", resp.StatusCode)
	}
	for cred, want := range map[string]int{"alice:pw": 200, "alice:no": 407, "bob:pw": 407} {
		resp, _, c := exchange(t, s.Addr().String(), req+"Proxy-Authorization: Basic "+base64.StdEncoding.EncodeToString([]byte(cred))+"\r\n\r\n")
		c.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", cred, resp.StatusCode, want)
		}
	}
}
