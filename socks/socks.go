// Package socks is a SOCKS5 server (RFC 1928) whose connections are flows of
// a flow.Dialer: in usltun, streams of the session, dialed by the exporting
// side.
//
// Contract:
//   - Methods: "no authentication" when Config.Users is empty, else only
//     username/password (RFC 1929), checked in constant time; a client that
//     offers neither gets method 0xFF and is closed.
//   - CONNECT with an IPv4, IPv6 or domain address. A domain is not resolved
//     here: it becomes flow.Named, resolved by the exporting side (as
//     `ssh -D` and socks5h do), unless it is an IP literal. The reply is sent
//     only after the far side's dial finished, with the outcome's code:
//     refused 0x05, forbidden 0x02, unreachable 0x04, timeout (also no
//     session within ConnectTimeout) 0x06, anything else 0x01. BND is
//     0.0.0.0:0: the address the exporting side dialed from is not known here.
//   - UDP ASSOCIATE (udp.go): a relay socket on the address the client
//     reached the server on; each destination is one UDP flow; the
//     association ends with its TCP connection.
//   - BIND gets 0x07 (command not supported), an unknown address type 0x08.
//   - The greeting, authentication and request must arrive within
//     HandshakeTimeout, and each is bounded in size by the protocol (a
//     255-byte field at most): an unauthenticated client costs one goroutine
//     and a few hundred bytes for a bounded time.
//
// After a successful CONNECT the bytes are spliced with proxy.Splice.
package socks

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/proxy"
)

// Config of a SOCKS5 server.
type Config struct {
	Dialer flow.Dialer
	// Users may authenticate. Empty: no authentication.
	Users proxy.Users
	// HandshakeTimeout bounds the greeting, authentication and request
	// (default 10 s).
	HandshakeTimeout time.Duration
	// ConnectTimeout bounds a CONNECT's dial, including waiting for the
	// session while the peer is unreachable (default 60 s).
	ConnectTimeout time.Duration
	// MaxClients bounds concurrent client connections (default 1024).
	MaxClients int
	// MaxUDPDests bounds the destinations of one UDP association
	// (default 64); datagrams to more are dropped.
	MaxUDPDests int
	// UDPIdleTimeout ends a UDP destination's flow after no datagram
	// either way (default flow.DefaultUDPIdleTimeout).
	UDPIdleTimeout time.Duration
	Logger         *slog.Logger
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
	if c.MaxUDPDests == 0 {
		c.MaxUDPDests = 64
	}
	if c.UDPIdleTimeout == 0 {
		c.UDPIdleTimeout = flow.DefaultUDPIdleTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Protocol constants of RFC 1928 and RFC 1929.
const (
	version5      = 5
	methodNone    = 0x00
	methodUserPwd = 0x02
	methodNoneOK  = 0xff
	authVersion   = 1

	cmdConnect   = 1
	cmdBind      = 2
	cmdAssociate = 3

	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4
)

// Reply codes.
const (
	repSuccess             = 0x00
	repGeneralFailure      = 0x01
	repNotAllowed          = 0x02
	repNetworkUnreachable  = 0x03
	repHostUnreachable     = 0x04
	repRefused             = 0x05
	repTTLExpired          = 0x06
	repCmdNotSupported     = 0x07
	repAddrTypeUnsupported = 0x08
)

// Server is a running SOCKS5 listener. Close stops it and ends every
// client connection and association.
type Server struct {
	*proxy.Server
	cfg Config
}

// Serve answers SOCKS5 clients on ln until Close.
func Serve(ln net.Listener, cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{cfg: cfg}
	s.Server = proxy.Serve(ln, cfg.MaxClients, cfg.Logger, s.handle)
	return s
}

// request is a parsed SOCKS5 request.
type request struct {
	cmd  byte
	addr netip.Addr // set for IPv4 and IPv6 (and a domain that is a literal)
	name string     // set for a domain
	port uint16
}

// dest is the flow destination of r for proto.
func (r request) dest(proto flow.Proto) flow.Dest {
	if r.name != "" {
		return flow.Named(proto, r.name, r.port)
	}
	return flow.Dest{Proto: proto, Addr: netip.AddrPortFrom(r.addr, r.port)}
}

// replyError is a request the server answers with a reply code.
type replyError struct {
	code byte
	err  error
}

func (e *replyError) Error() string { return e.err.Error() }

// readGreeting reads the method selection message and returns the methods.
func readGreeting(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0] != version5 {
		return nil, fmt.Errorf("not SOCKS5: version byte %#x", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, err
	}
	return methods, nil
}

// readUserPass reads an RFC 1929 authentication request.
func readUserPass(r io.Reader) (user, pass string, err error) {
	var ver [1]byte
	if _, err := io.ReadFull(r, ver[:]); err != nil {
		return "", "", err
	}
	if ver[0] != authVersion {
		return "", "", fmt.Errorf("username/password version %#x, want 1", ver[0])
	}
	if user, err = readString(r); err != nil {
		return "", "", err
	}
	if pass, err = readString(r); err != nil {
		return "", "", err
	}
	return user, pass, nil
}

// readString reads a length byte and that many bytes.
func readString(r io.Reader) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, n[0])
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// readRequest reads a request (VER CMD RSV ATYP DST.ADDR DST.PORT). An
// error that deserves a reply is a *replyError.
func readRequest(r io.Reader) (request, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return request{}, err
	}
	if hdr[0] != version5 {
		return request{}, fmt.Errorf("request version byte %#x, want 5", hdr[0])
	}
	req, err := readAddr(r)
	if err != nil {
		return request{}, err
	}
	req.cmd = hdr[1]
	switch req.cmd {
	case cmdConnect, cmdAssociate:
	default:
		return request{}, &replyError{repCmdNotSupported, fmt.Errorf("command %d not supported (BIND is not offered)", req.cmd)}
	}
	return req, nil
}

// readAddr reads ATYP DST.ADDR DST.PORT, as in requests and UDP headers.
func readAddr(r io.Reader) (request, error) {
	var atyp [1]byte
	if _, err := io.ReadFull(r, atyp[:]); err != nil {
		return request{}, err
	}
	var req request
	switch atyp[0] {
	case atypIPv4, atypIPv6:
		n := 4
		if atyp[0] == atypIPv6 {
			n = 16
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return request{}, err
		}
		req.addr, _ = netip.AddrFromSlice(b)
		req.addr = req.addr.Unmap()
	case atypDomain:
		name, err := readString(r)
		if err != nil {
			return request{}, err
		}
		if ip, err := netip.ParseAddr(name); err == nil && ip.Zone() == "" {
			req.addr = ip.Unmap()
		} else if err := flow.CheckName(name); err != nil {
			return request{}, &replyError{repHostUnreachable, err}
		} else {
			req.name = name
		}
	default:
		return request{}, &replyError{repAddrTypeUnsupported, fmt.Errorf("address type %d not supported", atyp[0])}
	}
	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return request{}, err
	}
	req.port = binary.BigEndian.Uint16(port[:])
	return req, nil
}

// appendAddr appends ATYP ADDR PORT for a reply or a UDP header: the
// domain form when name is set.
func appendAddr(b []byte, addr netip.Addr, name string, port uint16) []byte {
	switch {
	case name != "":
		b = append(b, atypDomain, byte(len(name)))
		b = append(b, name...)
	case addr.Is6():
		b = append(b, atypIPv6)
		b = append(b, addr.AsSlice()...)
	default:
		if !addr.IsValid() {
			addr = netip.IPv4Unspecified()
		}
		b = append(b, atypIPv4)
		b = append(b, addr.AsSlice()...)
	}
	return binary.BigEndian.AppendUint16(b, port)
}

func writeReply(w io.Writer, code byte, bnd netip.AddrPort) error {
	b := appendAddr([]byte{version5, code, 0}, bnd.Addr(), "", bnd.Port())
	_, err := w.Write(b)
	return err
}

// replyCode maps a dial outcome to the reply the client sees, so it gets
// the connect semantics it would have without the tunnel.
func replyCode(err error) byte {
	switch {
	case errors.Is(err, flow.ErrRefused):
		return repRefused
	case errors.Is(err, flow.ErrForbidden):
		return repNotAllowed
	case errors.Is(err, flow.ErrUnreachable):
		return repHostUnreachable
	case errors.Is(err, flow.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return repTTLExpired
	}
	return repGeneralFailure
}

// handle serves one client connection.
func (s *Server) handle(ctx context.Context, nc net.Conn) {
	defer nc.Close()
	c, ok := nc.(*net.TCPConn)
	if !ok {
		return
	}
	log := s.cfg.Logger.With("client", c.RemoteAddr().String())
	c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	req, err := s.handshake(c)
	if err != nil {
		var re *replyError
		if errors.As(err, &re) {
			writeReply(c, re.code, netip.AddrPort{})
		}
		log.Info("socks: bad request", "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	switch req.cmd {
	case cmdConnect:
		s.connect(ctx, c, req, log)
	case cmdAssociate:
		s.associate(ctx, c, log)
	}
}

// handshake runs method selection, authentication and reads the request.
func (s *Server) handshake(c net.Conn) (request, error) {
	methods, err := readGreeting(c)
	if err != nil {
		return request{}, err
	}
	want := byte(methodNone)
	if len(s.cfg.Users) > 0 {
		want = methodUserPwd
	}
	offered := false
	for _, m := range methods {
		offered = offered || m == want
	}
	if !offered {
		c.Write([]byte{version5, methodNoneOK})
		if want == methodUserPwd {
			return request{}, errors.New("client does not offer username/password authentication, which this server requires")
		}
		return request{}, errors.New("client does not offer \"no authentication\"")
	}
	if _, err := c.Write([]byte{version5, want}); err != nil {
		return request{}, err
	}
	if want == methodUserPwd {
		user, pass, err := readUserPass(c)
		if err != nil {
			return request{}, err
		}
		if !s.cfg.Users.Check(user, pass) {
			c.Write([]byte{authVersion, 1})
			return request{}, fmt.Errorf("wrong username or password for %q", user)
		}
		if _, err := c.Write([]byte{authVersion, 0}); err != nil {
			return request{}, err
		}
	}
	return readRequest(c)
}

func (s *Server) connect(ctx context.Context, c *net.TCPConn, req request, log *slog.Logger) {
	dst := req.dest(flow.TCP)
	// The dial is bounded by ConnectTimeout, not by the client: a client
	// may send its first bytes before the reply (optimistic data), so the
	// connection is not read until the reply is out.
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	f, err := s.cfg.Dialer.DialFlow(ctx, dst)
	cancel()
	if err != nil {
		code := replyCode(err)
		log.Info("socks: connect failed", "dst", dst.String(), "reply", code, "err", err)
		writeReply(c, code, netip.AddrPort{})
		return
	}
	if err := writeReply(c, repSuccess, netip.AddrPortFrom(netip.IPv4Unspecified(), 0)); err != nil {
		f.Abort()
		return
	}
	log.Debug("socks: connected", "dst", dst.String())
	s.Splice(c, f)
}
