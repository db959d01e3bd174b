// Package direct is a flow.Dialer that opens flows from this host's own
// network with ordinary kernel sockets: what `usltun exec --route` uses for
// destinations outside its routes, and what tests use as a far side.
//
// TCP flows are the socket itself (Abort closes it with an RST). UDP flows
// are a connected UDP socket behind flow's datagram records: each Write
// takes one whole record (as flow.WriteDatagram writes it) and sends its
// payload as one datagram; Read returns the received datagrams as records.
// ICMP is not offered (unprivileged ICMP sockets are a host setting) and
// fails as unreachable. Dial errors map to flow outcomes with ReasonFor.
package direct

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/usltun/usltun/flow"
)

// Dialer dials from this host. The zero value is ready to use.
type Dialer struct {
	// Control is applied to every socket, as net.Dialer's is. Optional.
	Control func(network, address string, c syscall.RawConn) error
}

var _ flow.Dialer = Dialer{}

// DialFlow dials dst; a name is resolved with this host's resolver.
func (d Dialer) DialFlow(ctx context.Context, dst flow.Dest) (flow.Conn, error) {
	if dst.Proto != flow.TCP && dst.Proto != flow.UDP {
		return nil, &flow.Error{Reason: flow.Unreachable, Err: fmt.Errorf("%s flows are not dialed directly", dst.Proto)}
	}
	nd := net.Dialer{Control: d.Control}
	c, err := nd.DialContext(ctx, dst.Proto.String(), dst.HostPort())
	if err != nil {
		return nil, &flow.Error{Reason: ReasonFor(err), Err: err}
	}
	if dst.Proto == flow.UDP {
		return &udpConn{UDPConn: c.(*net.UDPConn)}, nil
	}
	return tcpConn{c.(*net.TCPConn)}, nil
}

// ReasonFor maps a dial error to the flow outcome an application should
// see: ECONNREFUSED is refused, a deadline or ETIMEDOUT a timeout, a name
// that does not resolve and every other failure (EHOSTUNREACH, ENETUNREACH,
// EADDRNOTAVAIL, ...) unreachable.
func ReasonFor(err error) flow.Reason {
	var de *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return flow.Refused
	case errors.As(err, &de) && de.IsTimeout:
		return flow.Timeout
	case errors.As(err, &de):
		return flow.Unreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return flow.Timeout
	}
	return flow.Unreachable
}

type tcpConn struct{ *net.TCPConn }

func (c tcpConn) Abort() error {
	c.SetLinger(0)
	return c.Close()
}

// udpConn carries datagram records over a connected UDP socket.
type udpConn struct {
	*net.UDPConn
	pending []byte // the unread rest of the current record
	buf     []byte
}

func (c *udpConn) Write(b []byte) (int, error) {
	if len(b) < flow.DatagramHeader || int(binary.BigEndian.Uint16(b)) != len(b)-flow.DatagramHeader {
		return 0, fmt.Errorf("direct: a udp flow write must be one whole datagram record (%d bytes)", len(b))
	}
	if _, err := c.UDPConn.Write(b[flow.DatagramHeader:]); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
		return 0, err
	}
	// ECONNREFUSED reports an earlier datagram's ICMP port unreachable:
	// that datagram is lost, as UDP loses it; the flow goes on.
	return len(b), nil
}

func (c *udpConn) Read(b []byte) (int, error) {
	for len(c.pending) == 0 {
		if c.buf == nil {
			c.buf = make([]byte, flow.DatagramBuf)
		}
		n, err := c.UDPConn.Read(c.buf[flow.DatagramHeader:])
		if errors.Is(err, syscall.ECONNREFUSED) {
			continue
		}
		if err != nil {
			return 0, err
		}
		binary.BigEndian.PutUint16(c.buf, uint16(n))
		c.pending = c.buf[:flow.DatagramHeader+n]
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// CloseWrite has no meaning for UDP; the flow ends with Close.
func (c *udpConn) CloseWrite() error { return nil }

func (c *udpConn) Abort() error { return c.Close() }
