package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Checks of the host usltun starts on, each turning a condition newcomers
// meet into one line that says what to do.

// Default addresses of the TUN device. Tunnelled flows use them as their
// source; both are link-local or ULA, so they collide with nothing routed.
var (
	defaultAddress4 = netip.MustParsePrefix("169.254.117.1/32")
	defaultAddress6 = netip.MustParsePrefix("fd75:736c::1/128")
)

// procSys is where the kernel's sysctls are; tests point it elsewhere.
const procSys = "/proc/sys"

// ipv6Off names what disables IPv6 for a new device in this network
// namespace ("net.ipv6.conf.all.disable_ipv6=1", ...), or returns "" when
// IPv6 can be used. A device created now inherits conf/default, and
// conf/all=1 switches every device off, so both count.
func ipv6Off(root string) string {
	if _, err := os.Stat(filepath.Join(root, "net/ipv6")); errors.Is(err, os.ErrNotExist) {
		return "ipv6.disable=1 on the kernel command line"
	}
	for _, conf := range []string{"all", "default"} {
		b, err := os.ReadFile(filepath.Join(root, "net/ipv6/conf", conf, "disable_ipv6"))
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			return "net.ipv6.conf." + conf + ".disable_ipv6=1"
		}
	}
	return ""
}

// deviceAddrs returns the TUN device's addresses. Where IPv6 is disabled the
// defaults shrink to the IPv4 one, with one log line, and IPv6 flows are
// simply absent; an IPv6 address or route the user asked for fails,
// naming the sysctl.
func (c *upCmd) deviceAddrs(sysRoot string, log *slog.Logger) ([]netip.Prefix, error) {
	off := ipv6Off(sysRoot)
	if off == "" {
		return c.Address, nil
	}
	fix := "enable it with sysctl -w " + strings.TrimSuffix(off, "=1") + "=0"
	if strings.HasPrefix(off, "ipv6.disable") {
		fix = "remove ipv6.disable=1 from the kernel command line"
	}
	for _, r := range c.Route {
		if r.Addr().Is6() {
			return nil, fmt.Errorf("--route %s is IPv6, but IPv6 is disabled on this host (%s): %s, or route IPv4 only", r, off, fix)
		}
	}
	if !c.addressDefaulted {
		for _, a := range c.Address {
			if a.Addr().Is6() {
				return nil, fmt.Errorf("--address %s is IPv6, but IPv6 is disabled on this host (%s): %s, or give IPv4 addresses only", a, off, fix)
			}
		}
		return c.Address, nil
	}
	var v4 []netip.Prefix
	var names []string
	for _, a := range c.Address {
		if a.Addr().Is4() {
			v4 = append(v4, a)
			names = append(names, a.String())
		}
	}
	log.Info(fmt.Sprintf("IPv6 is disabled on this host: %s gets %s only", c.Tun, strings.Join(names, ", ")), "sysctl", off)
	return v4, nil
}

// loopbackDown explains an error on a loopback address in a network
// namespace whose lo is down (a fresh `ip netns add` has it down), or
// returns "".
func loopbackDown(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil || !ip.IsLoopback() {
		return ""
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil || lo.Flags&net.FlagUp != 0 {
		return ""
	}
	return "the loopback interface is down in this network namespace: ip link set lo up"
}
