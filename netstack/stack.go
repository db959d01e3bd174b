package netstack

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

func newGVisorStack() *stack.Stack {
	return stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
}

// timeWait is zero: both ends of a terminated flow are on this host, so no
// old duplicate can arrive late, and a lost last ACK only earns the
// application's socket, already closed, an RST. Any TIME_WAIT here is
// harmful: when the destination closes first, the netstack's endpoint ends
// in TIME_WAIT while the application's socket closes passively and frees
// its port, and gVisor hands a SYN that meets a TIME_WAIT endpoint only to
// a listening endpoint, never to the forwarder, so a new connection from
// that port had its SYNs dropped for as long as TIME_WAIT lasted
// (TestPortReuseAfterRemoteClosedFirst; with 5 s it timed out).
const timeWait = 0

func tune(s *stack.Stack) error {
	sack := tcpip.TCPSACKEnabled(true) // an order of magnitude better under loss
	// RACK off: gVisor's RACK mis-detected losses and stalled flows
	// (Tailscale #9707); classic fast retransmit with SACK is robust.
	recovery := tcpip.TCPRecovery(0)
	// Reno: gVisor's cubic had an overflow bug (gvisor#11632), and the
	// in-host path is short and clean, so cubic's growth buys nothing.
	cc := tcpip.CongestionControlOption("reno")
	moderate := tcpip.TCPModerateReceiveBufferOption(true) // grow rcv buf with the app's reads
	tw := tcpip.TCPTimeWaitTimeoutOption(timeWait)
	// TCP buffer sizes (min, default, max), like Tailscale's: the default
	// lets a flow reach ~1 Gbit/s at 8 ms RTT before auto-tuning; the maxima
	// cover a few Gbit/s over a long path. Memory is only committed while
	// data is queued, so idle flows cost far less: TestIdleFlowMemory
	// measured about 16 KB per idle flow including both pump goroutines.
	// The cap per busy flow is rcv 8 + snd 6 MiB.
	rcvBuf := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	sndBuf := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 6 << 20}
	opts := []struct {
		name string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"SACK", &sack}, {"recovery", &recovery}, {"congestion control", &cc},
		{"receive buffer", &rcvBuf}, {"send buffer", &sndBuf},
		{"moderate receive buffer", &moderate}, {"TIME_WAIT", &tw},
	}
	for _, o := range opts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); err != nil {
			return fmt.Errorf("netstack: set TCP %s: %s", o.name, err)
		}
	}
	return nil
}

func (st *Stack) installHandlers() {
	// rcvWnd 0: the SYN-ACK advertises the stack's default receive buffer.
	fwd := tcp.NewForwarder(st.s, 0, st.cfg.MaxPendingConnects, st.handleTCP)
	st.s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	ufwd := udp.NewForwarder(st.s, st.handleUDP)
	st.s.SetTransportProtocolHandler(udp.ProtocolNumber, ufwd.HandlePacket)
}

func (st *Stack) createNIC() error {
	if err := st.s.CreateNIC(st.nicID, st.link); err != nil {
		return fmt.Errorf("netstack: create NIC: %s", err)
	}
	// Promiscuous: accept packets for any destination address (every routed
	// address is "ours"). Spoofing: reply from those addresses.
	if err := st.s.SetPromiscuousMode(st.nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %s", err)
	}
	if err := st.s.SetSpoofing(st.nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %s", err)
	}
	st.s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: st.nicID},
		{Destination: header.IPv6EmptySubnet, NIC: st.nicID},
	})
	return nil
}
