package netstack

import (
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// linkFilter sits between the link endpoint and the stack. It takes ICMP
// echo requests out of the packet path and hands them to onEcho, which
// carries them to the far side (see icmp.go): gVisor would not answer echo
// for addresses it only accepts promiscuously (gvisor#8657), and answering
// here would tell the application that a destination is up without asking
// it. It also remembers the start
// of each pending SYN so that a failed dial can be answered with an ICMP
// destination-unreachable that quotes it (the forwarder does not expose
// the SYN's sequence number, which the kernel checks).
type linkFilter struct {
	nested.Endpoint
	child stack.LinkEndpoint

	mu      sync.Mutex
	syns    map[synKey]pendingSYN
	maxSyns int
	maxAge  time.Duration // older entries belong to SYNs no handler will take

	// onEcho receives each valid unicast echo request: source, destination
	// and the ICMP message (a copy). Set before the NIC exists.
	onEcho func(src, dst netip.Addr, msg []byte)
}

var _ stack.LinkEndpoint = (*linkFilter)(nil)
var _ stack.NetworkDispatcher = (*linkFilter)(nil)

// synKey is a SYN's 4-tuple as the application sent it.
type synKey struct{ src, dst netip.AddrPort }

// pendingSYN is the IP header and first 8 TCP bytes of a SYN: what an ICMP
// error must quote.
type pendingSYN struct {
	head []byte
	at   time.Time
}

func newLinkFilter(child stack.LinkEndpoint, maxSyns int, maxAge time.Duration) *linkFilter {
	f := &linkFilter{child: child, syns: make(map[synKey]pendingSYN), maxSyns: maxSyns, maxAge: maxAge}
	f.Endpoint.Init(child, f)
	return f
}

// GSOMaxSize and SupportedGSO pass the child's GSO ability through;
// nested.Endpoint does this too, but only via an interface check we make
// explicit here because TSO is most of the throughput.
func (f *linkFilter) GSOMaxSize() uint32 {
	if g, ok := f.child.(stack.GSOEndpoint); ok {
		return g.GSOMaxSize()
	}
	return 0
}

func (f *linkFilter) SupportedGSO() stack.SupportedGSO {
	if g, ok := f.child.(stack.GSOEndpoint); ok {
		return g.SupportedGSO()
	}
	return stack.GSONotSupported
}

// detach stops the child's reader and waits for it, with no stack lock
// held. The later Attach(nil) from NIC removal then finds it stopped.
func (f *linkFilter) detach() {
	f.child.Attach(nil)
	f.child.Wait()
}

// DeliverNetworkPacket inspects a few header bytes of each inbound packet;
// everything but echo requests continues into the stack.
func (f *linkFilter) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if f.inspect(proto, pkt) {
		return
	}
	f.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// inspect returns true if it consumed pkt.
func (f *linkFilter) inspect(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) bool {
	size := pkt.Data().Size()
	switch proto {
	case header.IPv4ProtocolNumber:
		h, ok := pkt.Data().PullUp(min(size, header.IPv4MinimumSize+header.TCPMinimumSize))
		if !ok || len(h) < header.IPv4MinimumSize {
			return false
		}
		ip := header.IPv4(h)
		ihl := int(ip.HeaderLength())
		if ihl < header.IPv4MinimumSize || ip.FragmentOffset() != 0 || ip.More() {
			return false
		}
		switch ip.TransportProtocol() {
		case header.ICMPv4ProtocolNumber:
			if len(h) > ihl && header.ICMPv4(h[ihl:]).Type() == header.ICMPv4Echo {
				return f.echo4(pkt)
			}
		case header.TCPProtocolNumber:
			f.noteSYN(pkt, ihl)
		}
	case header.IPv6ProtocolNumber:
		h, ok := pkt.Data().PullUp(min(size, header.IPv6MinimumSize+header.TCPMinimumSize))
		if !ok || len(h) < header.IPv6MinimumSize+header.ICMPv6MinimumSize {
			return false
		}
		switch header.IPv6(h).TransportProtocol() {
		case header.ICMPv6ProtocolNumber:
			if header.ICMPv6(h[header.IPv6MinimumSize:]).Type() == header.ICMPv6EchoRequest {
				return f.echo6(pkt)
			}
		case header.TCPProtocolNumber:
			f.noteSYN(pkt, header.IPv6MinimumSize)
		}
	}
	return false
}

// noteSYN records a SYN (not SYN-ACK) starting at transport offset off.
func (f *linkFilter) noteSYN(pkt *stack.PacketBuffer, off int) {
	h, ok := pkt.Data().PullUp(min(pkt.Data().Size(), off+header.TCPMinimumSize))
	if !ok || len(h) < off+header.TCPMinimumSize {
		return
	}
	flags := header.TCP(h[off:]).Flags()
	if !flags.Contains(header.TCPFlagSyn) || flags.Contains(header.TCPFlagAck) {
		return
	}
	k := keyOf(h, off)
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, dup := f.syns[k]; dup {
		return // a retransmitted SYN
	}
	if len(f.syns) >= f.maxSyns {
		// SYNs the forwarder dropped (over its in-flight limit) or that hit
		// an existing connection are never taken: expire them.
		for k, p := range f.syns {
			if now.Sub(p.at) > f.maxAge {
				delete(f.syns, k)
			}
		}
		if len(f.syns) >= f.maxSyns {
			return // failures of this SYN are answered with an RST
		}
	}
	f.syns[k] = pendingSYN{head: append([]byte(nil), h[:off+8]...), at: now}
}

func keyOf(h []byte, off int) synKey {
	t := header.TCP(h[off:])
	var src, dst netip.Addr
	if header.IPVersion(h) == header.IPv4Version {
		ip := header.IPv4(h)
		src, dst = netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
	} else {
		ip := header.IPv6(h)
		src, dst = netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16())
	}
	return synKey{netip.AddrPortFrom(src, t.SourcePort()), netip.AddrPortFrom(dst, t.DestinationPort())}
}

// takeSYN removes and returns the recorded SYN of a forwarder request.
func (f *linkFilter) takeSYN(id stack.TransportEndpointID) []byte {
	k := synKey{
		netip.AddrPortFrom(addrOf(id.RemoteAddress), id.RemotePort),
		netip.AddrPortFrom(addrOf(id.LocalAddress), id.LocalPort),
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.syns[k]
	delete(f.syns, k)
	return p.head
}

func addrOf(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// echo4 passes an IPv4 echo request to a unicast address to onEcho. It
// returns false for packets the stack should see (multicast, broadcast,
// not valid IP) and consumes the rest; a corrupt request is dropped, as a
// host would drop it.
func (f *linkFilter) echo4(pkt *stack.PacketBuffer) bool {
	v := pkt.ToView()
	defer v.Release()
	b := v.AsSlice()
	ip := header.IPv4(b)
	if !ip.IsValid(len(b)) || !ip.IsChecksumValid() {
		return false
	}
	ip = header.IPv4(b[:ip.TotalLength()])
	dst := addrOf(ip.DestinationAddress())
	if dst.IsMulticast() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return false
	}
	icmp := header.ICMPv4(ip.Payload())
	if len(icmp) < header.ICMPv4MinimumSize || icmp.Code() != 0 || checksum.Checksum(icmp, 0) != 0xffff {
		return true
	}
	f.onEcho(addrOf(ip.SourceAddress()), dst, append([]byte(nil), icmp...))
	return true
}

// echo6 is echo4 for ICMPv6.
func (f *linkFilter) echo6(pkt *stack.PacketBuffer) bool {
	v := pkt.ToView()
	defer v.Release()
	b := v.AsSlice()
	ip := header.IPv6(b)
	if !ip.IsValid(len(b)) {
		return false
	}
	ip = header.IPv6(b[:header.IPv6MinimumSize+int(ip.PayloadLength())])
	dst := addrOf(ip.DestinationAddress())
	if dst.IsMulticast() {
		return false // let the stack ignore echo to multicast
	}
	icmp := header.ICMPv6(ip.Payload())
	if len(icmp) < header.ICMPv6EchoMinimumSize || icmp.Code() != 0 ||
		icmp.Checksum() != header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: icmp, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()}) {
		return true
	}
	f.onEcho(addrOf(ip.SourceAddress()), dst, append([]byte(nil), icmp...))
	return true
}

// unreachable sends an ICMP host/address unreachable for a recorded SYN,
// from the SYN's destination, the way a router on the path would. It
// returns false if syn is unusable, and the caller sends an RST instead.
func (f *linkFilter) unreachable(syn []byte) bool {
	if len(syn) == 0 {
		return false
	}
	var b []byte
	var proto tcpip.NetworkProtocolNumber
	if header.IPVersion(syn) == header.IPv4Version {
		orig := header.IPv4(syn)
		b = make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(syn))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
			SrcAddr: orig.DestinationAddress(), DstAddr: orig.SourceAddress(),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(ip.Payload())
		icmp.SetType(header.ICMPv4DstUnreachable)
		icmp.SetCode(header.ICMPv4HostUnreachable)
		copy(icmp[header.ICMPv4MinimumSize:], syn)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		proto = header.IPv4ProtocolNumber
	} else {
		orig := header.IPv6(syn)
		b = make([]byte, header.IPv6MinimumSize+header.ICMPv6MinimumSize+len(syn))
		ip := header.IPv6(b)
		ip.Encode(&header.IPv6Fields{
			PayloadLength: uint16(len(b) - header.IPv6MinimumSize), TransportProtocol: header.ICMPv6ProtocolNumber,
			HopLimit: 64, SrcAddr: orig.DestinationAddress(), DstAddr: orig.SourceAddress(),
		})
		icmp := header.ICMPv6(ip.Payload())
		icmp.SetType(header.ICMPv6DstUnreachable)
		icmp.SetCode(header.ICMPv6AddressUnreachable)
		copy(icmp[header.ICMPv6MinimumSize:], syn)
		icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: icmp, Src: ip.SourceAddress(), Dst: ip.DestinationAddress()}))
		proto = header.IPv6ProtocolNumber
	}
	return f.send(proto, buffer.NewViewWithData(b))
}

// send writes one prepared IP packet to the link.
func (f *linkFilter) send(proto tcpip.NetworkProtocolNumber, v *buffer.View) bool {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	pkt.NetworkProtocolNumber = proto
	var l stack.PacketBufferList
	l.PushBack(pkt)
	n, err := f.child.WritePackets(l)
	l.Reset()
	return err == nil && n == 1
}
