package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

const tunPath = "/dev/net/tun"

// Device is a configured TUN interface. It is safe for concurrent use.
type Device struct {
	name    string
	file    *os.File
	nl      *netlink.Handle // bound to the namespace the device was created in
	index   int
	addrs   []netip.Prefix // the device's addresses, the routes' preferred sources
	offload Offload

	mu     sync.Mutex      // guards routes (AddRoute, RemoveRoute, Close)
	routes []netlink.Route // the routes Create and AddRoute added, Close removes
	ep     *endpoint

	closeOnce sync.Once
	closeErr  error
}

// Create opens /dev/net/tun, creates the interface cfg.Name in the calling
// thread's network namespace, probes offloads and configures MTU, addresses,
// link state and routes through netlink. On error nothing is left behind.
func Create(cfg Config) (*Device, error) {
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	// The handle's sockets live in the current namespace, so Close works even
	// when called from a thread in another namespace.
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("tun: open netlink: %w", err)
	}
	if _, err := nl.LinkByName(cfg.Name); err == nil {
		nl.Close()
		return nil, fmt.Errorf("tun: interface %q already exists: choose another name with --tun or remove it", cfg.Name)
	}
	file, offload, err := openTUN(cfg.Name, !cfg.DisableOffload)
	if err != nil {
		nl.Close()
		return nil, err
	}
	d := &Device{name: cfg.Name, file: file, nl: nl, offload: offload}
	if err := d.configure(cfg); err != nil {
		d.Close()
		return nil, err
	}
	ep, err := newEndpoint(file, uint32(cfg.MTU), offload)
	if err != nil {
		d.Close()
		return nil, err
	}
	d.ep = ep
	return d, nil
}

// FromFile serves a TUN device that was created and configured elsewhere,
// typically in another network namespace by `usltun exec`, whose descriptor
// was passed over a Unix socket. offload must be what that side's Create
// ended up with (Device.Offload), since the virtio-net header is a property
// of the descriptor. name is only a label. Close closes the descriptor; the
// device disappears with the last descriptor of it, routes with it.
func FromFile(file *os.File, name string, mtu int, offload Offload) (*Device, error) {
	if mtu < 1280 || mtu > 65535 {
		file.Close()
		return nil, fmt.Errorf("tun: MTU %d out of range 1280..65535", mtu)
	}
	if offload < OffloadNone || offload > OffloadUSO {
		file.Close()
		return nil, fmt.Errorf("tun: unknown offload mode %d", offload)
	}
	ep, err := newEndpoint(file, uint32(mtu), offload)
	if err != nil {
		file.Close()
		return nil, err
	}
	return &Device{name: name, file: file, offload: offload, ep: ep}, nil
}

// File is the device's descriptor, for handing it to another process
// (SCM_RIGHTS). The Device still owns it.
func (d *Device) File() *os.File { return d.file }

func validate(cfg *Config) error {
	if cfg.Name == "" {
		return errors.New("tun: empty interface name")
	}
	if len(cfg.Name) >= unix.IFNAMSIZ {
		return fmt.Errorf("tun: interface name %q is longer than %d bytes", cfg.Name, unix.IFNAMSIZ-1)
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < 576 || cfg.MTU > 65535 {
		return fmt.Errorf("tun: MTU %d out of range 576..65535", cfg.MTU)
	}
	v6 := false
	for _, p := range append(append([]netip.Prefix(nil), cfg.Addrs...), cfg.Routes...) {
		if !p.IsValid() {
			return fmt.Errorf("tun: invalid prefix %v", p)
		}
		v6 = v6 || p.Addr().Is6()
	}
	if v6 && cfg.MTU < 1280 {
		return fmt.Errorf("tun: MTU %d is below the IPv6 minimum of 1280", cfg.MTU)
	}
	return nil
}

// openTUN creates the interface and returns its file, registered with the Go
// poller (non-blocking fd), so reads park instead of holding a thread and
// Close wakes a blocked reader.
func openTUN(name string, wantVnet bool) (*os.File, Offload, error) {
	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, openErr(err)
	}
	vnet := wantVnet
	err = setIff(fd, name, vnet)
	if err != nil && vnet && errors.Is(err, unix.EINVAL) {
		// A kernel without IFF_VNET_HDR support: plain packets still work.
		vnet = false
		err = setIff(fd, name, false)
	}
	if err != nil {
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
			return nil, 0, fmt.Errorf("tun: create %q: %w (run as root or grant CAP_NET_ADMIN)", name, err)
		case errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST):
			return nil, 0, fmt.Errorf("tun: create %q: %w (the name is in use)", name, err)
		}
		return nil, 0, fmt.Errorf("tun: create %q: %w", name, err)
	}
	offload := OffloadNone
	if vnet {
		offload = probeOffload(fd)
	}
	return os.NewFile(uintptr(fd), tunPath), offload, nil
}

// miscDevicePresent reports whether the kernel has the tun misc device
// (built in or loaded), whatever /dev holds.
func miscDevicePresent() bool {
	_, err := os.Stat("/sys/class/misc/tun")
	return err == nil
}

// openErr explains a failed open of /dev/net/tun.
func openErr(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT) && miscDevicePresent():
		// The driver is there but the node is not: a container without
		// the device, or a minimal /dev.
		return fmt.Errorf("tun: open %s: %w (the tun driver is loaded but the device node is missing: mkdir -p /dev/net && mknod /dev/net/tun c 10 200; in a container pass --device /dev/net/tun)", tunPath, err)
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO):
		return fmt.Errorf("tun: open %s: %w (load the tun module: modprobe tun)", tunPath, err)
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
		return fmt.Errorf("tun: open %s: %w (run as root or grant CAP_NET_ADMIN)", tunPath, err)
	}
	return fmt.Errorf("tun: open %s: %w", tunPath, err)
}

func setIff(fd int, name string, vnet bool) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if vnet {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	return unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
}

// probeOffload asks the kernel to send us TSO super-segments with partial
// checksums, and UDP super-datagrams where it supports USO (Linux 6.2+).
// Without any of it the vnet header still lets us send large segments.
func probeOffload(fd int) Offload {
	const tso = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tso|unix.TUN_F_USO4|unix.TUN_F_USO6) == nil {
		return OffloadUSO
	}
	if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tso) == nil {
		return OffloadTSO
	}
	_ = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0)
	return OffloadVnet
}

func (d *Device) configure(cfg Config) error {
	link, err := d.nl.LinkByName(cfg.Name)
	if err != nil {
		return fmt.Errorf("tun: find %q: %w", cfg.Name, err)
	}
	d.index = link.Attrs().Index
	d.addrs = cfg.Addrs
	if err := d.nl.LinkSetMTU(link, cfg.MTU); err != nil {
		return fmt.Errorf("tun: set MTU %d on %s: %w", cfg.MTU, cfg.Name, err)
	}
	for _, p := range cfg.Addrs {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			// Duplicate address detection on a point-to-point TUN only delays
			// the address becoming usable by a second or more.
			a.Flags = unix.IFA_F_NODAD
		}
		if err := d.nl.AddrAdd(link, a); err != nil {
			return fmt.Errorf("tun: add address %v to %s: %w", p, cfg.Name, err)
		}
	}
	if err := d.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("tun: set %s up: %w", cfg.Name, err)
	}
	for _, p := range cfg.Routes {
		if err := d.AddRoute(p); err != nil {
			return err
		}
	}
	return d.waitLocal(cfg.Addrs)
}

// AddRoute routes p into the device, as Create does with Config.Routes;
// Close removes it with the others. A device from FromFile has no routes
// of its own to change.
func (d *Device) AddRoute(p netip.Prefix) error {
	if d.nl == nil {
		return fmt.Errorf("tun: %s was configured elsewhere: its routes are not this process's to change", d.name)
	}
	r := netlink.Route{LinkIndex: d.index, Dst: ipNet(p.Masked()), Scope: netlink.SCOPE_LINK}
	// The device's own address as the preferred source: flows then
	// keep their source when the host's physical address changes
	// (roaming), since netstack's replies go to an address that stays.
	if src, ok := sourceFor(p, d.addrs); ok {
		r.Src = src.AsSlice()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.nl.RouteAdd(&r); err != nil {
		return fmt.Errorf("tun: add route %v via %s: %w", p, d.name, err)
	}
	d.routes = append(d.routes, r)
	return nil
}

// RemoveRoute removes a route that Create or AddRoute added (one already
// gone from the kernel's table is no error); a prefix the device was not
// given is an error.
func (d *Device) RemoveRoute(p netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	dst := ipNet(p.Masked()).String()
	for i := range d.routes {
		if d.routes[i].Dst.String() != dst {
			continue
		}
		if err := d.nl.RouteDel(&d.routes[i]); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("tun: remove route %v from %s: %w", p, d.name, err)
		}
		d.routes = slices.Delete(d.routes, i, i+1)
		return nil
	}
	return fmt.Errorf("tun: %s has no route %v of its own", d.name, p)
}

// waitLocal waits until the kernel treats each IPv6 address as local. The
// kernel installs the local route of an IPv6 address from a work queue even
// with IFA_F_NODAD; until then packets to it are dropped (Ip6InAddrErrors),
// so the first reply of a flow could vanish.
func (d *Device) waitLocal(addrs []netip.Prefix) error {
	const limit = 3 * time.Second
	deadline := time.Now().Add(limit)
	for _, p := range addrs {
		if !p.Addr().Is6() {
			continue // IPv4 local routes are installed synchronously
		}
		for {
			routes, err := d.nl.RouteGet(p.Addr().AsSlice())
			if err == nil && len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("tun: address %v on %s not usable after %v", p, d.name, limit)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return nil
}

// sourceFor picks the first of addrs in the same family as route.
func sourceFor(route netip.Prefix, addrs []netip.Prefix) (netip.Addr, bool) {
	for _, a := range addrs {
		if a.Addr().Is4() == route.Addr().Is4() {
			return a.Addr(), true
		}
	}
	return netip.Addr{}, false
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// Name returns the interface name.
func (d *Device) Name() string { return d.name }

// Endpoint returns the gVisor link endpoint reading and writing this device.
// It is the same value on every call; attach it to exactly one stack.
func (d *Device) Endpoint() stack.LinkEndpoint { return d.ep }

// Offloads describes the offload mode in effect, e.g. for status and logs.
func (d *Device) Offloads() string { return d.offload.String() }

// Offload returns the offload mode in effect.
func (d *Device) Offload() Offload { return d.offload }

// Stats counts the packets that crossed the device. With offloads one TCP
// super-segment of up to 64 KiB counts as one packet.
type Stats struct {
	RxPackets uint64 // read from the device (kernel to netstack)
	TxPackets uint64 // written to the device (netstack to kernel)
	Dropped   uint64 // read but malformed or of an unsupported GSO type
}

// Stats returns the device's packet counters.
func (d *Device) Stats() Stats {
	return Stats{RxPackets: d.ep.rxPackets.Load(), TxPackets: d.ep.txPackets.Load(), Dropped: d.ep.dropped.Load()}
}

// Close removes the routes and the interface. Detach the endpoint from its
// stack first (stack Close); Close also wakes a reader still blocked on it.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { d.closeErr = d.close() })
	return d.closeErr
}

func (d *Device) close() error {
	var errs []error
	if d.nl == nil { // FromFile: nothing of ours to remove but the descriptor
		if d.ep != nil {
			d.ep.shutdown()
		}
		if err := d.file.Close(); err != nil {
			errs = append(errs, fmt.Errorf("tun: close %s: %w", d.name, err))
		}
		return errors.Join(errs...)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.routes {
		err := d.nl.RouteDel(&d.routes[i])
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("tun: remove route %v: %w", d.routes[i].Dst, err))
		}
	}
	if d.ep != nil {
		d.ep.shutdown()
	}
	// The device is not persistent: closing the last fd unregisters it.
	if err := d.file.Close(); err != nil {
		errs = append(errs, fmt.Errorf("tun: close %s: %w", d.name, err))
	}
	if link, err := d.nl.LinkByIndex(d.index); err == nil && link.Attrs().Name == d.name {
		if err := d.nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("tun: delete %s: %w", d.name, err))
		}
	}
	d.nl.Close()
	return errors.Join(errs...)
}
