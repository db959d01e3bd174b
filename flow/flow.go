// Package flow is the leaf contract between usltun's front ends (the netstack
// behind a TUN device, the SOCKS5 and HTTP CONNECT listeners, `usltun exec`)
// and whatever carries their flows to the far side (a USL stream in usltun,
// an in-memory pipe in tests). It names a flow's destination (Dest, and its
// wire encoding, the descriptor), the half of a flow that goes to the far
// side (Conn), how a front end asks for one (Dialer), and the outcomes a dial
// can have (the Err* sentinels). It imports nothing of usltun's.
//
// Descriptor encoding (big endian), carried opaquely in a stream's OPEN:
//
//	0     1       2      3     4 .. 4+n          4+n .. 6+n
//	+-----+-------+------+-----+-----------------+----------+
//	| ver | proto | kind |  n  | address or name |   port   |
//	+-----+-------+------+-----+-----------------+----------+
//
// ver is 2. proto is the IP protocol number (1 ICMP echo, 6 TCP, 17 UDP).
// kind is 4 (IPv4, n = 4), 6 (IPv6, n = 16) or 'N' (a DNS name of n = 1..253
// bytes, resolved by the exporting side). A descriptor is therefore 10
// bytes for IPv4, 22 for IPv6 and 6+n for a name. ICMP flows have port 0.
package flow

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Proto is an IP protocol number.
type Proto uint8

const (
	// ICMP is an echo flow: ping. For an IPv6 destination it means ICMPv6.
	ICMP Proto = 1
	TCP  Proto = 6
	UDP  Proto = 17
)

func (p Proto) String() string {
	switch p {
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Datagram reports whether the flow's bytes are length-prefixed datagrams
// (see WriteDatagram) rather than a byte stream.
func (p Proto) Datagram() bool { return p == UDP || p == ICMP }

const (
	version  = 2
	kindIPv4 = 4
	kindIPv6 = 6
	kindName = 'N'
	// MaxName is the longest DNS name a descriptor carries (RFC 1035's 253
	// characters of presentation format, without the trailing dot).
	MaxName = 253
)

// Dest is where a flow goes. Exactly one of Addr's address and Name is set:
// a front end that learnt an IP address (from a packet, or from a SOCKS
// client that sent one) sets Addr; one that was given a host name (SOCKS5
// with a domain, HTTP CONNECT) sets Name and Port, so that the name is
// resolved where the flow leaves the tunnel, as `ssh -D` and socks5h do.
type Dest struct {
	Proto Proto
	Addr  netip.AddrPort // when Name is set, only Addr.Port() is used
	Name  string
}

// Named returns the destination name:port, resolved by the exporting side.
func Named(proto Proto, name string, port uint16) Dest {
	return Dest{Proto: proto, Name: name, Addr: netip.AddrPortFrom(netip.Addr{}, port)}
}

// Resolver is the destination "the exporting side's own DNS resolver": port
// 53 of the unspecified IPv4 address. A gateway that allows it (usltun up
// --export-dns) connects such a flow to the first nameserver of its own
// resolv.conf; any other refuses it as forbidden, as it refuses every
// unspecified address.
func Resolver(proto Proto) Dest {
	return Dest{Proto: proto, Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 53)}
}

// IsResolver reports whether d is Resolver(d.Proto).
func (d Dest) IsResolver() bool {
	return d.Name == "" && d.Addr == netip.AddrPortFrom(netip.IPv4Unspecified(), 53)
}

// Port is the destination port (0 for ICMP).
func (d Dest) Port() uint16 { return d.Addr.Port() }

// HostPort is the destination as net.Dial wants it.
func (d Dest) HostPort() string {
	if d.Name != "" {
		return net.JoinHostPort(d.Name, strconv.Itoa(int(d.Port())))
	}
	return d.Addr.String()
}

func (d Dest) String() string { return d.Proto.String() + "/" + d.HostPort() }

// Marshal encodes d. An IPv4-mapped IPv6 address is sent as IPv4.
func (d Dest) Marshal() []byte {
	var kind byte
	var a []byte
	if d.Name != "" {
		kind, a = kindName, []byte(d.Name)
	} else {
		ip := d.Addr.Addr().Unmap()
		a = ip.AsSlice()
		kind = kindIPv6
		if ip.Is4() {
			kind = kindIPv4
		}
	}
	b := make([]byte, 0, 6+len(a))
	b = append(b, version, byte(d.Proto), kind, byte(len(a)))
	b = append(b, a...)
	return append(b, byte(d.Port()>>8), byte(d.Port()))
}

var errShort = errors.New("flow: descriptor truncated")

// Parse decodes a descriptor made by Marshal. It never panics, whatever b
// is, and accepts only the canonical encoding, so Parse(b).Marshal() == b.
func Parse(b []byte) (Dest, error) {
	if len(b) < 4 {
		return Dest{}, errShort
	}
	if b[0] != version {
		return Dest{}, fmt.Errorf("flow: descriptor version %d, this build speaks %d", b[0], version)
	}
	proto := Proto(b[1])
	if proto != TCP && proto != UDP && proto != ICMP {
		return Dest{}, fmt.Errorf("flow: unsupported protocol %d", b[1])
	}
	kind, n := b[2], int(b[3])
	if len(b) != 4+n+2 {
		return Dest{}, fmt.Errorf("flow: descriptor is %d bytes, want %d", len(b), 4+n+2)
	}
	port := uint16(b[4+n])<<8 | uint16(b[5+n])
	if proto == ICMP && port != 0 {
		return Dest{}, fmt.Errorf("flow: icmp destination with port %d", port)
	}
	raw := b[4 : 4+n]
	switch kind {
	case kindIPv4, kindIPv6:
		if (kind == kindIPv4) != (n == 4) || (kind == kindIPv6) != (n == 16) {
			return Dest{}, fmt.Errorf("flow: address kind %d with %d bytes", kind, n)
		}
		ip, _ := netip.AddrFromSlice(raw)
		if ip.Is4In6() {
			return Dest{}, errors.New("flow: IPv4-mapped address must be encoded as IPv4")
		}
		return Dest{Proto: proto, Addr: netip.AddrPortFrom(ip, port)}, nil
	case kindName:
		name := string(raw)
		if err := CheckName(name); err != nil {
			return Dest{}, err
		}
		return Named(proto, name, port), nil
	}
	return Dest{}, fmt.Errorf("flow: unknown address kind %d", kind)
}

// CheckName accepts a host name a descriptor may carry: 1..MaxName bytes of
// letters, digits, '-', '_' and '.', no empty label, and not an IP address
// literal (those travel as addresses, so each destination has one encoding).
func CheckName(name string) error {
	if len(name) == 0 || len(name) > MaxName {
		return fmt.Errorf("flow: host name of %d bytes: want 1 to %d", len(name), MaxName)
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 {
				return fmt.Errorf("flow: host name %q has an empty label", name)
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return fmt.Errorf("flow: host name %q contains %q", name, c)
		}
		if label++; label > 63 {
			return fmt.Errorf("flow: host name %q has a label over 63 bytes", name)
		}
	}
	if label == 0 {
		return fmt.Errorf("flow: host name %q ends with a dot", name)
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("flow: %q is an address, not a name", name)
	}
	return nil
}
