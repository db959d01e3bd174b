package gateway

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Export policy.
//
// A destination is allowed when an exported prefix contains it, except for
// destinations that reach the gateway host itself or that are not unicast
// routing targets at all. Those special destinations are allowed only when
// an export names them explicitly, which is defined precisely here:
//
//   - loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0, ::, which the
//     kernel delivers to the host itself), link-local (169.254.0.0/16,
//     fe80::/10), multicast (224.0.0.0/4, ff00::/8) and limited broadcast
//     (255.255.255.255): an export names such an address when it contains
//     it and lies entirely inside that address's own class range. So
//     127.0.0.1/32 and 127.0.0.0/8 name 127.0.0.1; 0.0.0.0/0 and
//     0.0.0.0/1 do not.
//   - an address of one of the gateway host's own interfaces: only the host
//     prefix of that address (/32, /128) names it. So with
//     --export 10.98.0.0/24 a peer reaches the hosts on that subnet but not
//     the gateway's own 10.98.0.1 on it, and --export 10.98.0.1/32 allows it.
//
// IPv4-mapped IPv6 addresses are checked as the IPv4 address they carry.

// specialClasses are the address ranges an export must lie inside to name
// one of their addresses.
var specialClasses = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("0.0.0.0/32"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// specialClass returns the class range dst belongs to, if any.
func specialClass(dst netip.Addr) (netip.Prefix, bool) {
	for _, c := range specialClasses {
		if c.Contains(dst) {
			return c, true
		}
	}
	return netip.Prefix{}, false
}

// allowed applies the export policy to dst, given whether it is one of the
// gateway host's own addresses.
func allowed(exports []netip.Prefix, dst netip.Addr, own bool) bool {
	dst = dst.Unmap()
	class, special := specialClass(dst)
	for _, p := range exports {
		if !p.Contains(dst) {
			continue
		}
		switch {
		case special:
			if p.Bits() >= class.Bits() && class.Contains(p.Addr()) {
				return true
			}
		case own:
			if p.IsSingleIP() {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// localAddrsTTL is how long the gateway trusts its list of its own
// addresses. A per-flow netlink dump would cost more than the flow setup;
// an address added in the last second is covered by the class rules for
// everything but a new global address, which is the gap this bounds.
const localAddrsTTL = time.Second

// localAddrs caches the host's interface addresses.
type localAddrs struct {
	list func() ([]netip.Addr, error)

	mu    sync.Mutex
	at    time.Time
	addrs map[netip.Addr]bool
}

func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// has reports whether dst is one of the host's addresses. If the list
// cannot be read, every address counts as local: the gateway then allows
// only what is named by a host prefix, failing closed.
func (l *localAddrs) has(dst netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs == nil || time.Since(l.at) > localAddrsTTL {
		as, err := l.list()
		if err != nil {
			l.addrs = nil
			return true
		}
		l.addrs = make(map[netip.Addr]bool, len(as))
		for _, a := range as {
			l.addrs[a.Unmap()] = true
		}
		l.at = time.Now()
	}
	return l.addrs[dst.Unmap()]
}
