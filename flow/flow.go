// Package flow names the destination of one tunnelled flow. The client side
// of usltun encodes a Dest into the opaque descriptor of a USL stream; the
// gateway side decodes it, checks it against its exports and dials it.
//
// Encoding (big endian, 8 or 20 bytes):
//
//	0      1      2       3 .. 3+n   3+n .. 5+n
//	+------+------+-------+----------+----------+
//	| ver  |proto | n=4|16| address  |   port   |
//	+------+------+-------+----------+----------+
//
// ver is 1. proto is the IP protocol number (6 TCP, 17 UDP).
package flow

import (
	"errors"
	"fmt"
	"net/netip"
)

// Proto is an IP protocol number.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

const version = 1

// Dest is where a flow goes: a protocol and an address with port.
type Dest struct {
	Proto Proto
	Addr  netip.AddrPort
}

func (d Dest) String() string { return d.Proto.String() + "/" + d.Addr.String() }

// Marshal encodes d. An IPv4-mapped IPv6 address is sent as IPv4.
func (d Dest) Marshal() []byte {
	ip := d.Addr.Addr().Unmap()
	a := ip.AsSlice()
	b := make([]byte, 0, 5+len(a))
	b = append(b, version, byte(d.Proto), byte(len(a)))
	b = append(b, a...)
	return append(b, byte(d.Addr.Port()>>8), byte(d.Addr.Port()))
}

var errShort = errors.New("flow: descriptor truncated")

// Parse decodes a descriptor made by Marshal. It never panics, whatever b is.
func Parse(b []byte) (Dest, error) {
	if len(b) < 3 {
		return Dest{}, errShort
	}
	if b[0] != version {
		return Dest{}, fmt.Errorf("flow: descriptor version %d, this build speaks %d", b[0], version)
	}
	proto := Proto(b[1])
	if proto != TCP && proto != UDP {
		return Dest{}, fmt.Errorf("flow: unsupported protocol %d", b[1])
	}
	n := int(b[2])
	if n != 4 && n != 16 {
		return Dest{}, fmt.Errorf("flow: address length %d, want 4 or 16", n)
	}
	if len(b) != 3+n+2 {
		return Dest{}, fmt.Errorf("flow: descriptor is %d bytes, want %d", len(b), 3+n+2)
	}
	ip, _ := netip.AddrFromSlice(b[3 : 3+n])
	if ip.Is4In6() {
		return Dest{}, errors.New("flow: IPv4-mapped address must be encoded as IPv4")
	}
	port := uint16(b[3+n])<<8 | uint16(b[4+n])
	return Dest{Proto: proto, Addr: netip.AddrPortFrom(ip, port)}, nil
}
