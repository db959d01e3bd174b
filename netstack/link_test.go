package netstack

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

type countDispatcher struct{ n int }

func (d *countDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	d.n++
}
func (d *countDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// FuzzLinkFilter feeds arbitrary bytes to the inbound inspection: it must
// never panic, whatever arrives on the TUN device.
func FuzzLinkFilter(f *testing.F) {
	syn := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(syn)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(syn)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 0, 1}), DstAddr: tcpip.AddrFrom4([4]byte{10, 0, 0, 2})})
	header.TCP(ip.Payload()).Encode(&header.TCPFields{SrcPort: 1, DstPort: 2, Flags: header.TCPFlagSyn, DataOffset: 20})
	f.Add(syn)
	f.Add([]byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 8, 0, 0, 0, 0, 1, 0, 1})
	f.Add(append([]byte{0x60, 0, 0, 0, 0, 8, 58, 64}, make([]byte, 40)...))
	f.Add([]byte{0x41})
	f.Fuzz(func(t *testing.T, b []byte) {
		child := channel.New(4, 1400, "")
		lf := newLinkFilter(child, 4, time.Minute)
		d := &countDispatcher{}
		lf.Attach(d)
		for _, proto := range []tcpip.NetworkProtocolNumber{header.IPv4ProtocolNumber, header.IPv6ProtocolNumber} {
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
			lf.DeliverNetworkPacket(proto, pkt)
			pkt.DecRef()
		}
		if len(b) >= header.IPv4MinimumSize+8 {
			lf.unreachable(b[:header.IPv4MinimumSize+8])
		}
		child.Drain()
	})
}

// TestUnreachableQuotesSYN checks the ICMP error built for a failed dial.
func TestUnreachableQuotesSYN(t *testing.T) {
	child := channel.New(4, 1400, "")
	lf := newLinkFilter(child, 4, time.Minute)
	lf.Attach(&countDispatcher{})
	syn := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(syn)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(syn)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 0, 1}), DstAddr: tcpip.AddrFrom4([4]byte{10, 66, 1, 2})})
	ip.SetChecksum(^ip.CalculateChecksum())
	header.TCP(ip.Payload()).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: 12345, Flags: header.TCPFlagSyn, DataOffset: 20})
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(syn)})
	lf.DeliverNetworkPacket(header.IPv4ProtocolNumber, pkt)
	pkt.DecRef()

	id := stack.TransportEndpointID{LocalPort: 80, LocalAddress: tcpip.AddrFrom4([4]byte{10, 66, 1, 2}),
		RemotePort: 40000, RemoteAddress: tcpip.AddrFrom4([4]byte{10, 0, 0, 1})}
	head := lf.takeSYN(id)
	if len(head) != header.IPv4MinimumSize+8 {
		t.Fatalf("recorded SYN head %x", head)
	}
	if lf.takeSYN(id) != nil {
		t.Fatal("SYN taken twice")
	}
	if !lf.unreachable(head) {
		t.Fatal("unreachable not sent")
	}
	out := child.Read()
	if out == nil {
		t.Fatal("nothing written")
	}
	b := out.ToView().AsSlice()
	out.DecRef()
	reply := header.IPv4(b)
	if !reply.IsValid(len(b)) || !reply.IsChecksumValid() {
		t.Fatalf("invalid IPv4 %x", b)
	}
	if netip.AddrFrom4(reply.SourceAddress().As4()) != netip.MustParseAddr("10.66.1.2") ||
		netip.AddrFrom4(reply.DestinationAddress().As4()) != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("ICMP %v -> %v", reply.SourceAddress(), reply.DestinationAddress())
	}
	icmp := header.ICMPv4(reply.Payload())
	if icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4HostUnreachable {
		t.Fatalf("ICMP type %d code %d", icmp.Type(), icmp.Code())
	}
	quoted := header.TCP(icmp[header.ICMPv4MinimumSize+header.IPv4MinimumSize:])
	if quoted.SequenceNumber() != 12345 || quoted.SourcePort() != 40000 {
		t.Fatalf("quoted TCP seq %d port %d", quoted.SequenceNumber(), quoted.SourcePort())
	}
}
