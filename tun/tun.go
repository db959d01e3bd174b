// Package tun creates the kernel TUN device that feeds usltun's netstack and
// exposes it to gVisor as a stack.LinkEndpoint.
//
// The device is configured entirely through netlink (address, MTU, up,
// routes) and torn down again by Close. When the kernel allows it, the device
// carries a virtio-net header (IFF_VNET_HDR) so that both directions move
// 64 KiB TCP super-segments instead of MTU-sized packets: per-packet cost is
// what limits a userspace TCP terminator, not bytes.
package tun

import (
	"net/netip"
)

// Config describes the device to create.
type Config struct {
	// Name of the interface, e.g. "usl0". Creating fails if it exists.
	Name string
	// MTU of the interface; the gVisor NIC uses exactly this value.
	MTU int
	// Addrs are assigned to the interface (the kernel's side of the link).
	Addrs []netip.Prefix
	// Routes are sent into the interface; they are removed again by Close.
	Routes []netip.Prefix
	// DisableOffload opens the device without a virtio-net header, so every
	// packet crosses the device at MTU size. Only benchmarks and debugging
	// want this; by default offloads are probed and used when available.
	DisableOffload bool
}

// DefaultMTU is used when Config.MTU is zero. It leaves room for the outer
// IP/TCP/USL headers on a 1500-byte path.
const DefaultMTU = 1400

// Offload names the offload mode a device ended up with.
type Offload int

const (
	// OffloadNone: no virtio-net header; plain IP packets of at most MTU bytes.
	OffloadNone Offload = iota
	// OffloadVnet: virtio-net header, so gVisor may hand the kernel 64 KiB
	// TCP segments (TSO from netstack to kernel), but the kernel refused
	// TUNSETOFFLOAD and sends us MTU-sized packets with full checksums.
	OffloadVnet
	// OffloadTSO: virtio-net header with TSO4/TSO6 and checksum offload in
	// both directions.
	OffloadTSO
	// OffloadUSO: as OffloadTSO, and the kernel also sends UDP
	// super-datagrams (UDP_SEGMENT sends), which the endpoint splits.
	OffloadUSO
)

// String lists what is in effect. GSO is netstack to kernel, TSO/csum
// kernel to netstack; GRO (gVisor's, in userspace) is on in every mode.
func (o Offload) String() string {
	switch o {
	case OffloadNone:
		return "gro"
	case OffloadVnet:
		return "vnet-hdr,gso,gro"
	case OffloadTSO:
		return "vnet-hdr,gso,tso4,tso6,csum,gro"
	case OffloadUSO:
		return "vnet-hdr,gso,tso4,tso6,uso4,uso6,csum,gro"
	}
	return "unknown"
}
