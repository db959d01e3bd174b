package testenv

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// End is one side of a LinkPair: an interface inside a host.
type End struct {
	Host *Host
	Name string // interface name inside Host, eth<N>
	link *LinkPair

	delay *delayLine // packets arriving here wait in it; nil: none. Guarded by link.mu.
}

// LinkPair is a veth pair joining two hosts. Its fault methods are safe to
// call from any goroutine.
type LinkPair struct {
	t    TB
	A, B *End

	mu       sync.Mutex
	faults   faultSet
	rate     uint64 // bits/s of the tbf on both ends; 0: none
	down     bool
	lastHeal time.Time
	onHeal   []func(time.Time)
}

// Link joins a and b with a veth pair, assigns the addresses and sets both
// ends up. addrA and addrB are prefixes in CIDR form ("10.0.0.1/24"); use a
// comma-separated list for several ("10.0.0.1/24,fd00::1/64"), or "" for
// none. IPv6 addresses skip duplicate address detection, so they work at
// once.
func Link(t TB, a, b *Host, addrA, addrB string) *LinkPair {
	t.Helper()
	pa, err := parsePrefixes(addrA)
	if err != nil {
		t.Fatalf("testenv: link %s-%s: %v", a, b, err)
	}
	pb, err := parsePrefixes(addrB)
	if err != nil {
		t.Fatalf("testenv: link %s-%s: %v", a, b, err)
	}
	l := &LinkPair{t: t}
	l.A = &End{Host: a, Name: a.nextIfName(), link: l}
	l.B = &End{Host: b, Name: b.nextIfName(), link: l}

	// Created inside a's namespace with the peer placed directly into b's, so
	// nothing ever appears in the root namespace and names only need to be
	// unique per host.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: l.A.Name, MTU: 1500},
		PeerName:      l.B.Name,
		PeerNamespace: netlink.NsFd(int(b.ns)),
	}
	if err := a.nl.LinkAdd(veth); err != nil {
		t.Fatalf("testenv: veth %s(%s)-%s(%s): %v", a, l.A.Name, b, l.B.Name, err)
	}
	for _, side := range []struct {
		e   *End
		pfx []netip.Prefix
	}{{l.A, pa}, {l.B, pb}} {
		for _, p := range side.pfx {
			if err := side.e.addAddr(p); err != nil {
				t.Fatalf("testenv: %v", err)
			}
		}
		if err := side.e.setUp(true); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	if err := l.waitOperUp(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	// Before the hosts' own cleanups (registered earlier, run later): a
	// delay line's socket would keep a deleted namespace alive.
	t.Cleanup(l.stopDelays)
	return l
}

// waitOperUp waits until the kernel reports both ends operationally up and
// none of their IPv6 addresses tentative. Both happen asynchronously:
//   - the carrier change is applied by the kernel's linkwatch work up to a
//     second later, and until then the device has no working qdisc, so
//     packets are silently dropped;
//   - even without DAD an IPv6 address stays tentative until the addrconf
//     work runs (late when the machine is busy, e.g. tearing down another
//     test's namespaces), and a tentative address answers no neighbour
//     solicitation.
//
// Either would make a test's first SYN take a retransmission timeout.
func (l *LinkPair) waitOperUp() error {
	deadline := time.Now().Add(5 * time.Second)
	for _, e := range []*End{l.A, l.B} {
		for {
			ready, state, err := e.ready()
			if err != nil {
				return err
			}
			if ready {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: not ready after 5s (%s)", e, state)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return nil
}

// ready reports whether the end is operationally up with no tentative
// address, and otherwise what it is waiting for.
func (e *End) ready() (bool, string, error) {
	nl, err := e.netlink()
	if err != nil {
		return false, "", err
	}
	if st := nl.Attrs().OperState; st != netlink.OperUp {
		return false, "state " + st.String(), nil
	}
	addrs, err := e.Host.nl.AddrList(nl, netlink.FAMILY_V6)
	if err != nil {
		return false, "", fmt.Errorf("%s: list addresses: %w", e, err)
	}
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return false, "tentative " + a.IP.String(), nil
		}
	}
	return true, "", nil
}

func (h *Host) nextIfName() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.nifs
	h.nifs++
	return fmt.Sprintf("eth%d", n)
}

func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", f, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func (e *End) String() string { return e.Host.label + ":" + e.Name }

func (e *End) netlink() (netlink.Link, error) {
	l, err := e.Host.nl.LinkByName(e.Name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", e, err)
	}
	return l, nil
}

func (e *End) addAddr(p netip.Prefix) error {
	l, err := e.netlink()
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: prefixNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := e.Host.nl.AddrReplace(l, a); err != nil {
		return fmt.Errorf("%s: add address %s: %w", e, p, err)
	}
	return nil
}

func (e *End) setUp(up bool) error {
	l, err := e.netlink()
	if err != nil {
		return err
	}
	if up {
		err = e.Host.nl.LinkSetUp(l)
	} else {
		err = e.Host.nl.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("%s: set up=%v: %w", e, up, err)
	}
	return nil
}

// Addrs lists the end's global addresses (no link-local ones).
func (e *End) Addrs() []netip.Prefix {
	l, err := e.netlink()
	if err != nil {
		return nil
	}
	list, err := e.Host.nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out
}

// IP returns the end's first IPv4 address, or its first IPv6 address when
// it has no IPv4 one; the zero Addr when it has none.
func (e *End) IP() netip.Addr {
	var v6 netip.Addr
	for _, p := range e.Addrs() {
		if p.Addr().Is4() {
			return p.Addr()
		}
		if !v6.IsValid() {
			v6 = p.Addr()
		}
	}
	return v6
}

// IP6 returns the end's first global IPv6 address, or the zero Addr.
func (e *End) IP6() netip.Addr {
	for _, p := range e.Addrs() {
		if p.Addr().Is6() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// ChangeAddress moves the end to newPrefix, as a roaming client does: the
// new address is added first, then every old address of the same family is
// removed, and the host's routes are put back. Connections bound to the old
// address stop working (their packets can no longer be sent or received).
func (e *End) ChangeAddress(newPrefix string) error {
	p, err := netip.ParsePrefix(newPrefix)
	if err != nil {
		return e.link.fail(fmt.Errorf("change address of %s: %w", e, err))
	}
	if err := e.addAddr(p); err != nil {
		return e.link.fail(err)
	}
	l, err := e.netlink()
	if err != nil {
		return e.link.fail(err)
	}
	for _, old := range e.Addrs() {
		if old.Addr() == p.Addr() || old.Addr().Is4() != p.Addr().Is4() {
			continue
		}
		if err := e.Host.nl.AddrDel(l, &netlink.Addr{IPNet: prefixNet(old)}); err != nil {
			return e.link.fail(fmt.Errorf("%s: remove %s: %w", e, old, err))
		}
	}
	if err := e.link.waitOperUp(); err != nil {
		return e.link.fail(err)
	}
	e.Host.reapplyRoutes()
	e.link.t.Logf("testenv: %s moved to %s", e, p)
	return nil
}

// ChangeAddress moves h's end of l to newPrefix; see End.ChangeAddress.
func ChangeAddress(h *Host, l *LinkPair, newPrefix string) error {
	switch h {
	case l.A.Host:
		return l.A.ChangeAddress(newPrefix)
	case l.B.Host:
		return l.B.ChangeAddress(newPrefix)
	}
	return l.fail(fmt.Errorf("change address: host %s is not on link %s-%s", h, l.A, l.B))
}

func (l *LinkPair) String() string { return l.A.String() + "<->" + l.B.String() }

// fail reports a fault error through the TB (goroutine-safe Errorf) and
// returns it, so callers may also stop early.
func (l *LinkPair) fail(err error) error {
	err = fmt.Errorf("testenv: %w", err)
	l.t.Errorf("%v", err)
	return err
}
