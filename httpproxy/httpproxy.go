// Package httpproxy is an HTTP proxy whose connections are flows of a
// flow.Dialer, for the many tools that only read https_proxy / http_proxy.
//
// Contract:
//   - CONNECT host:port opens a TCP flow: a host name becomes flow.Named and
//     is resolved by the exporting side, an IP literal goes as an address.
//     "200 Connection established" is sent only after the far side's dial
//     finished; then bytes are spliced (proxy.Splice), including any the
//     client sent right behind its request.
//   - An absolute-form request (GET http://host/path, as http_proxy clients
//     send) is forwarded once: the request goes to host (port 80 by
//     default) in origin form with Connection: close and without the
//     Proxy-* headers, and the response is relayed until the server closes.
//   - A failed dial is answered with one status and a one-line text body
//     naming the reason: forbidden 403, timeout 504, a limit 503, refused,
//     unreachable and anything else 502. A malformed request gets 400, a
//     method other than these 405.
//   - With Config.Users set, Proxy-Authorization: Basic is required (407
//     otherwise), compared in constant time.
//   - The request head must arrive within HandshakeTimeout and fit in
//     MaxHeader bytes.
package httpproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/proxy"
)

// MaxHeader bounds a request's head (request line and headers).
const MaxHeader = 16 << 10

// Config of an HTTP proxy.
type Config struct {
	Dialer flow.Dialer
	// Users may authenticate. Empty: no authentication.
	Users proxy.Users
	// HandshakeTimeout bounds reading the request head (default 10 s).
	HandshakeTimeout time.Duration
	// ConnectTimeout bounds a dial, including waiting for the session while
	// the peer is unreachable (default 60 s).
	ConnectTimeout time.Duration
	// MaxClients bounds concurrent client connections (default 1024).
	MaxClients int
	Logger     *slog.Logger
}

func (c *Config) setDefaults() {
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 60 * time.Second
	}
	if c.MaxClients == 0 {
		c.MaxClients = 1024
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server is a running HTTP proxy listener. Close stops it and ends every
// client connection.
type Server struct {
	*proxy.Server
	cfg Config
}

// Serve answers proxy clients on ln until Close.
func Serve(ln net.Listener, cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{cfg: cfg}
	s.Server = proxy.Serve(ln, cfg.MaxClients, cfg.Logger, s.handle)
	return s
}

// headLimit is a reader whose limit applies only while the head is read.
type headLimit struct {
	r io.Reader
	n int64 // < 0: unlimited
}

func (l *headLimit) Read(b []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(b)
	}
	if l.n == 0 {
		return 0, fmt.Errorf("request head exceeds %d bytes", MaxHeader)
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	l.n -= int64(n)
	return n, err
}

func (s *Server) handle(ctx context.Context, nc net.Conn) {
	defer nc.Close()
	c, ok := nc.(*net.TCPConn)
	if !ok {
		return
	}
	log := s.cfg.Logger.With("client", c.RemoteAddr().String())
	c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	lim := &headLimit{r: c, n: MaxHeader}
	br := bufio.NewReaderSize(lim, 4096)
	req, err := http.ReadRequest(br)
	if err != nil {
		log.Info("http proxy: bad request", "err", err)
		writeStatus(c, http.StatusBadRequest, "malformed request: "+oneLine(err.Error()))
		return
	}
	lim.n = -1
	c.SetDeadline(time.Time{})
	if len(s.cfg.Users) > 0 && !s.authorized(req) {
		writeStatus(c, http.StatusProxyAuthRequired, "proxy authentication required", "Proxy-Authenticate: Basic realm=\"usltun\"")
		return
	}
	switch {
	case req.Method == http.MethodConnect:
		s.connect(ctx, c, br, req, log)
	case req.URL.IsAbs() && req.URL.Scheme == "http":
		s.forward(ctx, c, req, log)
	default:
		writeStatus(c, http.StatusMethodNotAllowed, "this proxy takes CONNECT host:port and absolute http:// requests")
	}
}

func (s *Server) authorized(req *http.Request) bool {
	auth, ok := strings.CutPrefix(req.Header.Get("Proxy-Authorization"), "Basic ")
	if !ok {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(auth))
	if err != nil {
		return false
	}
	user, pass, _ := strings.Cut(string(raw), ":")
	return s.cfg.Users.Check(user, pass)
}

// destFor parses host:port (default port def) into a flow destination.
func destFor(hostport string, def int) (flow.Dest, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if def == 0 {
			return flow.Dest{}, fmt.Errorf("%q is not host:port", hostport)
		}
		host, portStr = strings.Trim(hostport, "[]"), strconv.Itoa(def)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return flow.Dest{}, fmt.Errorf("bad port %q", portStr)
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Zone() == "" {
		return flow.Dest{Proto: flow.TCP, Addr: netip.AddrPortFrom(ip.Unmap(), uint16(port))}, nil
	}
	if err := flow.CheckName(host); err != nil {
		return flow.Dest{}, err
	}
	return flow.Named(flow.TCP, host, uint16(port)), nil
}

// dial opens dst, answering the client itself when that fails.
func (s *Server) dial(ctx context.Context, c net.Conn, dst flow.Dest, log *slog.Logger) (flow.Conn, bool) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	f, err := s.cfg.Dialer.DialFlow(ctx, dst)
	cancel()
	if err != nil {
		code, why := statusFor(err)
		log.Info("http proxy: dial failed", "dst", dst.String(), "status", code, "err", err)
		writeStatus(c, code, why+": "+dst.HostPort())
		return nil, false
	}
	return f, true
}

func (s *Server) connect(ctx context.Context, c *net.TCPConn, br *bufio.Reader, req *http.Request, log *slog.Logger) {
	dst, err := destFor(req.Host, 0)
	if err != nil {
		writeStatus(c, http.StatusBadRequest, "CONNECT target: "+oneLine(err.Error()))
		return
	}
	f, ok := s.dial(ctx, c, dst, log)
	if !ok {
		return
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		f.Abort()
		return
	}
	// Bytes the client sent right behind its request are already buffered.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := f.Write(b); err != nil {
			f.Abort()
			return
		}
	}
	log.Debug("http proxy: connected", "dst", dst.String())
	s.Splice(c, f)
}

func (s *Server) forward(ctx context.Context, c *net.TCPConn, req *http.Request, log *slog.Logger) {
	dst, err := destFor(req.URL.Host, 80)
	if err != nil {
		writeStatus(c, http.StatusBadRequest, "request target: "+oneLine(err.Error()))
		return
	}
	f, ok := s.dial(ctx, c, dst, log)
	if !ok {
		return
	}
	defer f.Close()
	req.Header.Del("Proxy-Authorization")
	req.Header.Del("Proxy-Connection")
	req.Close = true
	req.RequestURI = ""
	if err := req.Write(f); err != nil {
		f.Abort()
		return
	}
	if _, err := io.Copy(c, f); err != nil {
		f.Abort()
		c.SetLinger(0)
	}
}

// statusFor maps a dial outcome to the status and the reason line.
func statusFor(err error) (int, string) {
	switch {
	case errors.Is(err, flow.ErrForbidden):
		return http.StatusForbidden, "destination is not exported by the far side"
	case errors.Is(err, flow.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "destination did not answer in time"
	case errors.Is(err, flow.ErrLimit):
		return http.StatusServiceUnavailable, "a flow limit of the tunnel was reached"
	case errors.Is(err, flow.ErrRefused):
		return http.StatusBadGateway, "connection refused by the destination"
	case errors.Is(err, flow.ErrUnreachable):
		return http.StatusBadGateway, "destination unreachable (or its name does not resolve)"
	}
	return http.StatusBadGateway, "connection failed (" + oneLine(err.Error()) + ")"
}

func oneLine(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "\r", " "), "\n", " ") }

// writeStatus sends a complete response with a one-line text body and
// closes nothing: the caller closes the connection.
func writeStatus(w io.Writer, code int, why string, extra ...string) {
	body := "usltun: " + why + "\n"
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	io.WriteString(w, b.String())
}
