package tun

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usltun/usltun/tun/tuntest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func mustCreate(t *testing.T, ns *tuntest.NS, cfg Config) *Device {
	t.Helper()
	var d *Device
	if err := ns.Do(func() (err error) { d, err = Create(cfg); return err }); err != nil {
		t.Fatalf("Create(%+v): %v", cfg, err)
	}
	return d
}

func TestCreateConfiguresAndCloseRemoves(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"offload", Config{Name: "tnt0", MTU: 1400,
			Addrs:  []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("fd77::1/64")},
			Routes: []netip.Prefix{netip.MustParsePrefix("10.78.0.0/16"), netip.MustParsePrefix("fd78::/48")}}},
		{"plain", Config{Name: "tnt1", MTU: 1280, DisableOffload: true,
			Addrs:  []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")},
			Routes: []netip.Prefix{netip.MustParsePrefix("10.78.1.0/24")}}},
		{"default mtu, no addrs", Config{Name: "tnt2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := tuntest.NewNS(t)
			d := mustCreate(t, ns, tc.cfg)
			if tc.cfg.DisableOffload && d.Offload() != OffloadNone {
				t.Errorf("offload %v with DisableOffload", d.Offloads())
			}
			if !tc.cfg.DisableOffload && d.Offload() == OffloadNone {
				t.Errorf("offload probe fell back to none on this kernel")
			}
			wantMTU := tc.cfg.MTU
			if wantMTU == 0 {
				wantMTU = DefaultMTU
			}
			if got := d.Endpoint().MTU(); got != uint32(wantMTU) {
				t.Errorf("endpoint MTU %d, want %d", got, wantMTU)
			}
			err := ns.Do(func() error {
				l, err := netlink.LinkByName(tc.cfg.Name)
				if err != nil {
					return err
				}
				if l.Attrs().MTU != wantMTU {
					t.Errorf("kernel MTU %d, want %d", l.Attrs().MTU, wantMTU)
				}
				if l.Attrs().Flags&net.FlagUp == 0 {
					t.Errorf("link not up")
				}
				addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
				if err != nil {
					return err
				}
				for _, p := range tc.cfg.Addrs {
					if !hasAddr(addrs, p) {
						t.Errorf("address %v missing: %v", p, addrs)
					}
				}
				for _, p := range tc.cfg.Routes {
					if !hasRoute(t, l, p) {
						t.Errorf("route %v missing", p)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			err = ns.Do(func() error {
				if _, err := netlink.LinkByName(tc.cfg.Name); err == nil {
					t.Errorf("%s still exists after Close", tc.cfg.Name)
				}
				routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
				if err != nil {
					return err
				}
				for _, r := range routes {
					for _, p := range tc.cfg.Routes {
						if r.Dst != nil && r.Dst.String() == p.String() {
							t.Errorf("route %v left behind", p)
						}
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// AddRoute and RemoveRoute change a running device's routes (a hub's
// reload); Close removes the added ones with the others.
func TestAddRemoveRoute(t *testing.T) {
	ns := tuntest.NewNS(t)
	first, added := netip.MustParsePrefix("10.78.0.0/16"), netip.MustParsePrefix("10.79.5.0/24")
	d := mustCreate(t, ns, Config{Name: "tnt3", Addrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}, Routes: []netip.Prefix{first}})
	routes := func() (has map[netip.Prefix]bool) {
		has = map[netip.Prefix]bool{}
		if err := ns.Do(func() error {
			l, err := netlink.LinkByName("tnt3")
			if err != nil {
				return err
			}
			for _, p := range []netip.Prefix{first, added} {
				has[p] = hasRoute(t, l, p)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return has
	}
	if err := d.AddRoute(added); err != nil {
		t.Fatal(err)
	}
	if r := routes(); !r[first] || !r[added] {
		t.Fatalf("after AddRoute(%v): %v, want both", added, r)
	}
	if err := d.RemoveRoute(first); err != nil {
		t.Fatal(err)
	}
	if r := routes(); r[first] || !r[added] {
		t.Fatalf("after RemoveRoute(%v): %v, want only %v", first, r, added)
	}
	if err := d.RemoveRoute(first); err == nil || !strings.Contains(err.Error(), "no route") {
		t.Errorf("removing it again: %v, want an error saying the device has no such route", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error {
		all, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		for _, r := range all {
			if r.Dst != nil && r.Dst.String() == added.String() {
				t.Errorf("added route %v left behind after Close", added)
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func hasAddr(addrs []netlink.Addr, p netip.Prefix) bool {
	for _, a := range addrs {
		if a.IPNet.String() == p.String() {
			return true
		}
	}
	return false
}

func hasRoute(t *testing.T, l netlink.Link, p netip.Prefix) bool {
	routes, err := netlink.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == p.Masked().String() {
			return true
		}
	}
	return false
}

func TestCreateErrors(t *testing.T) {
	ns := tuntest.NewNS(t)
	d := mustCreate(t, ns, Config{Name: "tnbusy"})
	defer d.Close()
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Name: "tnbusy"}, "already exists"},
		{Config{Name: "lo"}, "already exists"},
		{Config{Name: "averyveryverylongname"}, "longer than"},
		{Config{Name: ""}, "empty"},
		{Config{Name: "tnx", MTU: 100}, "out of range"},
		{Config{Name: "tnx", MTU: 1000, Routes: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}}, "IPv6 minimum"},
	} {
		err := ns.Do(func() error {
			d, err := Create(tc.cfg)
			if err == nil {
				d.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Create(%+v) = %v, want error containing %q", tc.cfg, err, tc.want)
		}
	}
}

// capture is a stack.NetworkDispatcher that records delivered packets.
type capture struct {
	mu   sync.Mutex
	pkts [][]byte
	ch   chan struct{}
}

func (c *capture) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	b := pkt.ToView().AsSlice()
	c.mu.Lock()
	c.pkts = append(c.pkts, bytes.Clone(b))
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}
func (c *capture) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// udp4 builds an IPv4/UDP packet with valid checksums.
func udp4(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(b[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(u)))
	x = checksum.Checksum(payload, x)
	u.SetChecksum(^u.CalculateChecksum(x))
	return b
}

// TestEndpointThroughDevice sends a datagram from a kernel socket into the
// device and checks the endpoint delivers the exact packet, then writes a
// reply through the endpoint and checks the kernel socket receives it.
//
// The "passed" cases serve the device through FromFile on a duplicate of
// its descriptor, as the daemon serves one that usltun exec passed it.
func TestEndpointThroughDevice(t *testing.T) {
	for _, tc := range []struct {
		name      string
		off, pass bool
	}{{"offload", false, false}, {"plain", true, false}, {"passed offload", false, true}, {"passed plain", true, true}} {
		off := tc.off
		t.Run(tc.name, func(t *testing.T) {
			ns := tuntest.NewNS(t)
			d := mustCreate(t, ns, Config{Name: "tne0", DisableOffload: off,
				Addrs:  []netip.Prefix{netip.MustParsePrefix("10.79.0.1/24")},
				Routes: []netip.Prefix{netip.MustParsePrefix("10.79.1.0/24")}})
			defer d.Close()
			c := &capture{ch: make(chan struct{}, 1)}
			ep := d.Endpoint()
			if tc.pass {
				fd, err := unix.Dup(int(d.File().Fd()))
				if err != nil {
					t.Fatal(err)
				}
				unix.SetNonblock(fd, true)
				pd, err := FromFile(os.NewFile(uintptr(fd), "passed"), "passed", int(ep.MTU()), d.Offload())
				if err != nil {
					t.Fatal(err)
				}
				defer pd.Close()
				ep = pd.Endpoint()
			}
			ep.Attach(c)
			defer ep.Attach(nil)

			var conn *net.UDPConn
			if err := ns.Do(func() (err error) {
				conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 79, 0, 1)})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
			remote := netip.MustParseAddrPort("10.79.1.5:5353")
			msg := []byte("hello from the kernel")
			if _, err := conn.WriteToUDPAddrPort(msg, remote); err != nil {
				t.Fatal(err)
			}
			var got []byte
			deadline := time.After(5 * time.Second)
			for got == nil {
				select {
				case <-c.ch:
				case <-deadline:
					t.Fatal("no packet delivered from the device")
				}
				c.mu.Lock()
				for _, p := range c.pkts {
					if header.IPVersion(p) == 4 && header.IPv4(p).Protocol() == uint8(header.UDPProtocolNumber) {
						got = p
					}
				}
				c.mu.Unlock()
			}
			ip := header.IPv4(got)
			u := header.UDP(ip.Payload())
			if ip.DestinationAddress() != tcpip.AddrFrom4(remote.Addr().As4()) || u.DestinationPort() != remote.Port() ||
				u.SourcePort() != local.Port() || !bytes.Equal(u.Payload(), msg) {
				t.Fatalf("delivered packet %x does not match the datagram sent", got)
			}

			reply := []byte("hello from the endpoint")
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(udp4(remote, local, reply))})
			var l stack.PacketBufferList
			l.PushBack(pkt)
			if n, err := ep.WritePackets(l); n != 1 || err != nil {
				t.Fatalf("WritePackets = %d, %v", n, err)
			}
			l.Reset()
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("kernel socket: %v", err)
			}
			if from != remote || !bytes.Equal(buf[:n], reply) {
				t.Fatalf("kernel got %q from %v, want %q from %v", buf[:n], from, reply, remote)
			}
		})
	}
}

// TestVnetHeader checks the virtio-net header for the packets gVisor hands
// a host-GSO endpoint.
func TestVnetHeader(t *testing.T) {
	tcp4 := func(payload int, gso stack.GSO) *stack.PacketBuffer {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			ReserveHeaderBytes: header.IPv4MinimumSize + header.TCPMinimumSize + 12,
			Payload:            buffer.MakeWithData(make([]byte, payload)),
		})
		pkt.TransportHeader().Push(header.TCPMinimumSize + 12)
		pkt.NetworkHeader().Push(header.IPv4MinimumSize)
		pkt.GSOOptions = gso
		return pkt
	}
	v4 := stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1348, L3HdrLen: 20}
	v6 := stack.GSO{Type: stack.GSOTCPv6, NeedsCsum: true, CsumOffset: 16, MSS: 1328, L3HdrLen: 40}
	for _, tc := range []struct {
		name string
		pkt  *stack.PacketBuffer
		want [vnetHdrLen]byte
	}{
		{"no gso", tcp4(100, stack.GSO{}), [vnetHdrLen]byte{}},
		{"small, csum only", tcp4(100, v4), [vnetHdrLen]byte{1, 0, 0, 0, 0, 0, 20, 0, 16, 0}},
		{"tso4", tcp4(60000, v4), [vnetHdrLen]byte{1, 1, 52, 0, 0x44, 0x05, 20, 0, 16, 0}},
		{"tso6", tcp4(60000, v6), [vnetHdrLen]byte{1, 4, 52, 0, 0x30, 0x05, 40, 0, 16, 0}},
	} {
		w := &writer{e: &endpoint{vnet: true}}
		w.fillHeader(tc.pkt)
		if w.hdr != tc.want {
			t.Errorf("%s: header %x, want %x", tc.name, w.hdr, tc.want)
		}
		tc.pkt.DecRef()
	}
}

// TestReaderDeliver feeds the reader raw reads as the kernel returns them.
func TestReaderDeliver(t *testing.T) {
	ip4 := udp4(netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), []byte("x"))
	hdr := func(gsoType byte) []byte { return []byte{0, gsoType, 0, 0, 0, 0, 0, 0, 0, 0} }
	for _, tc := range []struct {
		name    string
		vnet    bool
		in      []byte
		deliver bool
	}{
		{"plain ipv4", false, ip4, true},
		{"vnet ipv4", true, append(hdr(vnetGSONone), ip4...), true},
		{"vnet tso4 ecn", true, append(hdr(vnetGSOTCPv4|vnetGSOECN), ip4...), true},
		{"vnet uso dropped", true, append(hdr(5), ip4...), false},
		{"short vnet", true, []byte{0, 0, 0}, false},
		{"empty", false, nil, false},
		{"not ip", false, []byte{0x20, 1, 2, 3}, false},
		{"oversized", false, make([]byte, maxPacket+1), false},
	} {
		c := &capture{ch: make(chan struct{}, 1)}
		e := &endpoint{vnet: tc.vnet}
		r := reader{e: e}
		r.gro.Init(true)
		r.gro.Dispatcher = c
		r.deliver(tc.in)
		r.gro.Flush()
		if got := len(c.pkts) == 1; got != tc.deliver {
			t.Errorf("%s: delivered %v, want %v", tc.name, got, tc.deliver)
		}
		if tc.deliver && !bytes.Equal(c.pkts[0], ip4) {
			t.Errorf("%s: delivered %x, want %x", tc.name, c.pkts[0], ip4)
		}
		if !tc.deliver && e.dropped.Load() != 1 {
			t.Errorf("%s: dropped counter %d, want 1", tc.name, e.dropped.Load())
		}
	}
}

func TestOpenErrorMessages(t *testing.T) {
	// The messages users see must say what to do. A missing node is a
	// missing driver unless the misc device is registered (a container
	// without /dev/net/tun): then the fix is the node, not the module.
	missing := "modprobe tun"
	if miscDevicePresent() {
		missing = "mknod /dev/net/tun c 10 200"
	}
	for errno, want := range map[unix.Errno]string{unix.ENOENT: missing, unix.ENODEV: "modprobe tun", unix.EPERM: "CAP_NET_ADMIN"} {
		err := openErr(errno)
		if !errors.Is(err, errno) || !strings.Contains(err.Error(), want) {
			t.Errorf("openErr(%v) = %v, want %q", errno, err, want)
		}
	}
}

// TestCreateWithoutCapability drops CAP_NET_ADMIN on one thread (Linux
// capabilities are per thread) and checks the error says what to do.
func TestCreateWithoutCapability(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to drop a capability")
	}
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked: it exits with this goroutine instead of
		// running other goroutines without the capability.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		d, err := Create(Config{Name: fmt.Sprintf("tnperm%d", os.Getpid())})
		if err == nil {
			d.Close()
			err = errors.New("Create succeeded without CAP_NET_ADMIN")
		}
		errc <- err
	}()
	err := <-errc
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("Create without CAP_NET_ADMIN: %v", err)
	}
}

// udp6 builds an IPv6/UDP packet with a valid checksum.
func udp6(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+header.UDPMinimumSize+len(payload))
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(b) - header.IPv6MinimumSize), TransportProtocol: header.UDPProtocolNumber, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(src.Addr().As16()), DstAddr: tcpip.AddrFrom16(dst.Addr().As16()),
	})
	u := header.UDP(ip.Payload())
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u.Payload(), payload)
	x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(u)))
	u.SetChecksum(^u.CalculateChecksum(checksum.Checksum(payload, x)))
	return b
}

// TestSplitUDP feeds UDP super-datagrams (USO) to the reader and checks the
// datagrams it delivers: sizes, bytes, lengths and checksums.
func TestSplitUDP(t *testing.T) {
	payload := make([]byte, 250)
	for i := range payload {
		payload[i] = byte(i)
	}
	src4, dst4 := netip.MustParseAddrPort("10.0.0.1:4000"), netip.MustParseAddrPort("10.0.1.9:443")
	src6, dst6 := netip.MustParseAddrPort("[fd00::1]:4000"), netip.MustParseAddrPort("[fd01::9]:443")
	vnet := func(mss int, pkt []byte) []byte {
		return append([]byte{vnetFlagNeedsCsum, vnetGSOUDPL4, 0, 0, byte(mss), byte(mss >> 8), 0, 0, 6, 0}, pkt...)
	}
	for _, tc := range []struct {
		name  string
		in    []byte
		sizes []int
	}{
		{"v4 3 segments", vnet(100, udp4(src4, dst4, payload)), []int{100, 100, 50}},
		{"v6 3 segments", vnet(100, udp6(src6, dst6, payload)), []int{100, 100, 50}},
		{"v4 exact", vnet(125, udp4(src4, dst4, payload)), []int{125, 125}},
		{"v6 one", vnet(1000, udp6(src6, dst6, payload)), []int{250}},
		{"zero mss", vnet(0, udp4(src4, dst4, payload)), nil},
		{"not udp", vnet(100, append([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6}, make([]byte, 10)...)), nil},
	} {
		c := &capture{ch: make(chan struct{}, 1)}
		e := &endpoint{vnet: true, uso: true}
		r := reader{e: e, seg: make([]byte, maxPacket)}
		r.gro.Init(true)
		r.gro.Dispatcher = c
		r.deliver(tc.in)
		r.gro.Flush()
		if len(c.pkts) != len(tc.sizes) {
			t.Errorf("%s: %d datagrams, want %d", tc.name, len(c.pkts), len(tc.sizes))
			continue
		}
		var got []byte
		for i, p := range c.pkts {
			var u header.UDP
			var src, dst tcpip.Address
			if header.IPVersion(p) == 4 {
				ip := header.IPv4(p)
				if !ip.IsValid(len(p)) || !ip.IsChecksumValid() {
					t.Errorf("%s: datagram %d: bad IPv4 header", tc.name, i)
				}
				u, src, dst = header.UDP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
			} else {
				ip := header.IPv6(p)
				if !ip.IsValid(len(p)) {
					t.Errorf("%s: datagram %d: bad IPv6 header", tc.name, i)
				}
				u, src, dst = header.UDP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
			}
			if int(u.Length()) != header.UDPMinimumSize+tc.sizes[i] || len(u.Payload()) != tc.sizes[i] {
				t.Errorf("%s: datagram %d: UDP length %d, payload %d, want %d", tc.name, i, u.Length(), len(u.Payload()), tc.sizes[i])
			}
			if !u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0)) {
				t.Errorf("%s: datagram %d: bad UDP checksum", tc.name, i)
			}
			got = append(got, u.Payload()...)
		}
		if tc.sizes != nil && !bytes.Equal(got, payload) {
			t.Errorf("%s: reassembled payload differs", tc.name)
		}
	}
}

// TestUDPSegmentThroughDevice sends one UDP_SEGMENT write from a kernel
// socket: with USO the device hands over one super-datagram, without it the
// kernel splits; either way the endpoint must deliver the datagrams.
func TestUDPSegmentThroughDevice(t *testing.T) {
	ns := tuntest.NewNS(t)
	d := mustCreate(t, ns, Config{Name: "tnu0",
		Addrs:  []netip.Prefix{netip.MustParsePrefix("10.79.0.1/24")},
		Routes: []netip.Prefix{netip.MustParsePrefix("10.79.1.0/24")}})
	defer d.Close()
	t.Logf("offloads: %s", d.Offloads())
	c := &capture{ch: make(chan struct{}, 1)}
	d.Endpoint().Attach(c)
	defer d.Endpoint().Attach(nil)
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 79, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc, _ := conn.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, 100) })
	if serr != nil {
		t.Skipf("UDP_SEGMENT: %v", serr)
	}
	payload := bytes.Repeat([]byte("0123456789"), 25)
	if _, err := conn.WriteToUDPAddrPort(payload, netip.MustParseAddrPort("10.79.1.5:443")); err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end) && len(sizes) < 3; time.Sleep(10 * time.Millisecond) {
		sizes = sizes[:0]
		c.mu.Lock()
		for _, p := range c.pkts {
			if header.IPVersion(p) == 4 && header.IPv4(p).TransportProtocol() == header.UDPProtocolNumber {
				sizes = append(sizes, len(header.UDP(header.IPv4(p).Payload()).Payload()))
			}
		}
		c.mu.Unlock()
	}
	if len(sizes) != 3 || sizes[0] != 100 || sizes[1] != 100 || sizes[2] != 50 {
		t.Fatalf("datagram payload sizes %v, want [100 100 50]", sizes)
	}
}

// FuzzDeliver: whatever the device hands us, the reader must not panic.
func FuzzDeliver(f *testing.F) {
	ip4 := udp4(netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), make([]byte, 300))
	f.Add(append([]byte{1, vnetGSOUDPL4, 0, 0, 100, 0, 0, 0, 0, 0}, ip4...))
	f.Add(append([]byte{1, vnetGSOTCPv4, 0, 0, 100, 0, 0, 0, 0, 0}, ip4...))
	f.Add([]byte{0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0x60})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := reader{e: &endpoint{vnet: true, uso: true}, seg: make([]byte, maxPacket)}
		r.gro.Init(true)
		r.gro.Dispatcher = &capture{ch: make(chan struct{}, 1)}
		r.deliver(b)
		r.gro.Flush()
	})
}
