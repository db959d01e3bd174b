package socks

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// ReplyError is a server's refusal of a CONNECT, with its reply code.
type ReplyError struct{ Code byte }

func (e *ReplyError) Error() string { return fmt.Sprintf("socks5: server replied %#x", e.Code) }

// Connect is the client side of a CONNECT without authentication on c, a
// connection to a SOCKS5 server: on success c carries the flow to target
// (host:port; a host name is sent as a domain). For tools and tests.
func Connect(c net.Conn, target string) error {
	host, portStr, err := net.SplitHostPort(target)
	if err != nil {
		return err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return fmt.Errorf("socks5: port %q: %w", portStr, err)
	}
	var addr netip.Addr
	name := host
	if ip, err := netip.ParseAddr(host); err == nil {
		addr, name = ip.Unmap(), ""
	}
	req := appendAddr([]byte{version5, 1, methodNone, version5, cmdConnect, 0}, addr, name, uint16(port))
	if _, err := c.Write(req); err != nil {
		return err
	}
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil {
		return fmt.Errorf("socks5: method selection: %w", err)
	}
	if sel != [2]byte{version5, methodNone} {
		return fmt.Errorf("socks5: server wants method %#x", sel[1])
	}
	var hdr [3]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("socks5: reply: %w", err)
	}
	if _, err := readAddr(c); err != nil {
		return fmt.Errorf("socks5: reply address: %w", err)
	}
	if hdr[1] != repSuccess {
		return &ReplyError{Code: hdr[1]}
	}
	return nil
}
