package netstack

// A gVisor link endpoint over golang.zx2c4.com/wireguard/tun, only so that
// BenchmarkTCPThroughput can measure usltun's own vnet-header device against
// the library on the same path (docs/design.md, "TUN device"). It uses the
// library the way wireguard-go does:
//
//   - Read: the library asks the kernel for TSO super-segments and splits
//     them itself into MTU-sized packets with full checksums, up to
//     BatchSize() packets per read; gVisor's GRO merges them again.
//   - Write: gVisor hands over MTU-sized packets with full checksums (the
//     library takes no GSO from its caller); the library coalesces a batch
//     of them into super-segments for the kernel, so a whole WritePackets
//     list goes to one Write call.

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/usltun/usltun/tun"
)

var (
	_ stack.LinkEndpoint = (*wgEndpoint)(nil)
	_ harnessDevice      = (*wgDevice)(nil)
)

const (
	// wgHeadroom is the offset of every packet in the buffers passed to the
	// library: its Write puts a virtio-net header in front (it needs at
	// least 10 bytes there), its Read leaves the same room.
	wgHeadroom = 16
	// wgBufSize holds a whole coalesced super-segment: Write merges later
	// packets of a batch into the first one's buffer, and only as far as
	// that buffer's capacity allows.
	wgBufSize = wgHeadroom + 65535
	// wgQueueLen packets wait for the writer at most, like the 1000 of a
	// kernel qdisc but bounded in memory (each buffer is wgBufSize).
	wgQueueLen = 256
)

// wgDevice is a wireguard-go TUN device configured like harnessConfig.
type wgDevice struct {
	dev wgtun.Device
	ep  *wgEndpoint
}

// newWGDevice creates harnessConfig's interface with wgtun.CreateTUN in the
// calling thread's namespace (the harness's, which is deleted afterwards
// with everything in it) and assigns its addresses and routes.
func newWGDevice() (harnessDevice, error) {
	cfg := harnessConfig
	dev, err := wgtun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("wireguard tun: %w", err)
	}
	if err := configureLink(cfg); err != nil {
		dev.Close()
		return nil, err
	}
	return &wgDevice{dev: dev, ep: newWGEndpoint(dev, uint32(cfg.MTU))}, nil
}

func configureLink(cfg tun.Config) error {
	link, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return err
	}
	for _, p := range cfg.Addrs {
		ipnet, err := netlink.ParseIPNet(p.String())
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: ipnet}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add %v: %w", p, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	for _, p := range cfg.Routes {
		dst, err := netlink.ParseIPNet(p.Masked().String())
		if err != nil {
			return err
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("route %v: %w", p, err)
		}
	}
	return nil
}

func (d *wgDevice) Endpoint() stack.LinkEndpoint { return d.ep }
func (d *wgDevice) Offloads() string             { return "wireguard-go tun (tso split on read, gro on write)" }
func (d *wgDevice) Stats() tun.Stats {
	return tun.Stats{RxPackets: d.ep.rxPackets.Load(), TxPackets: d.ep.txPackets.Load(), Dropped: d.ep.dropped.Load()}
}

// Close closes the device, which wakes and ends the reader.
func (d *wgDevice) Close() error {
	close(d.ep.done)
	err := d.dev.Close()
	d.ep.wg.Wait()
	return err
}

type wgEndpoint struct {
	dev       wgtun.Device
	mtu       atomic.Uint32
	batch     int
	queue     chan []byte    // packets for writeLoop, headroom included
	free      sync.Pool      // *[]byte of capacity wgBufSize
	done      chan struct{}  // closed by wgDevice.Close
	wg        sync.WaitGroup // reader and writer, ended by closing the device
	mu        sync.RWMutex   // held for reading while a batch is delivered
	started   bool
	d         stack.NetworkDispatcher // nil once detached
	rxPackets atomic.Uint64           // packets after the library's split
	txPackets atomic.Uint64           // packets handed to Write, before coalescing
	dropped   atomic.Uint64
}

func newWGEndpoint(dev wgtun.Device, mtu uint32) *wgEndpoint {
	e := &wgEndpoint{dev: dev, batch: dev.BatchSize()}
	e.mtu.Store(mtu)
	e.queue = make(chan []byte, wgQueueLen)
	e.done = make(chan struct{})
	e.free.New = func() any { b := make([]byte, 0, wgBufSize); return &b }
	e.wg.Add(1)
	go e.writeLoop()
	return e
}

func (e *wgEndpoint) MTU() uint32                             { return e.mtu.Load() }
func (e *wgEndpoint) SetMTU(mtu uint32)                       { e.mtu.Store(mtu) }
func (e *wgEndpoint) MaxHeaderLength() uint16                 { return 0 }
func (e *wgEndpoint) LinkAddress() tcpip.LinkAddress          { return "" }
func (e *wgEndpoint) SetLinkAddress(tcpip.LinkAddress)        {}
func (e *wgEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (e *wgEndpoint) AddHeader(*stack.PacketBuffer)           {}
func (e *wgEndpoint) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (e *wgEndpoint) Close()                                  {}
func (e *wgEndpoint) SetOnCloseAction(func())                 {}
func (e *wgEndpoint) Wait()                                   {}
func (e *wgEndpoint) IsAttached() bool                        { e.mu.RLock(); defer e.mu.RUnlock(); return e.d != nil }
func (e *wgEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	// The library's split writes full checksums, and a packet that was not
	// split came from this host's stack; gVisor's GRO verifies what it
	// merges. Without the capability merged packets count as malformed.
	return stack.CapabilityRXChecksumOffload
}

// Attach starts the reader once; it runs until the device is closed.
// Attach(nil) (the stack closing) only stops delivery: once it returns no
// packet reaches the old dispatcher.
func (e *wgEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.d = d
	if d == nil || e.started {
		return
	}
	e.started = true
	e.wg.Add(1)
	go e.readLoop()
}

type wgBufs struct {
	bufs  [][]byte
	back  [][]byte // full-capacity buffers; Write reslices bufs
	sizes []int
}

func newWGBufs(n int) *wgBufs {
	b := &wgBufs{bufs: make([][]byte, n), back: make([][]byte, n), sizes: make([]int, n)}
	for i := range b.back {
		b.back[i] = make([]byte, wgBufSize)
	}
	return b
}

func (e *wgEndpoint) readLoop() {
	defer e.wg.Done()
	b := newWGBufs(e.batch)
	copy(b.bufs, b.back)
	var g gro.GRO
	g.Init(true)
	for {
		n, err := e.dev.Read(b.bufs, b.sizes, wgHeadroom)
		e.mu.RLock()
		if g.Dispatcher = e.d; g.Dispatcher != nil {
			for i := range n {
				e.enqueue(&g, b.bufs[i][wgHeadroom:wgHeadroom+b.sizes[i]])
			}
			g.Flush()
		}
		e.mu.RUnlock()
		switch {
		case err == nil:
		case errors.Is(err, os.ErrClosed):
			return
		case errors.Is(err, wgtun.ErrTooManySegments):
			e.dropped.Add(1) // the first n were delivered
		default:
			// A packet the library could not parse or split; wireguard-go
			// also reads on. A closed device ends in os.ErrClosed.
			e.dropped.Add(1)
		}
	}
}

func (e *wgEndpoint) enqueue(g *gro.GRO, b []byte) {
	v := header.IPVersion(b)
	if v != header.IPv4Version && v != header.IPv6Version {
		e.dropped.Add(1)
		return
	}
	e.rxPackets.Add(1)
	// MakeWithData copies: the read buffers are reused at once.
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	if v == header.IPv6Version {
		pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
	}
	g.Enqueue(pkt)
	pkt.DecRef()
}

// WritePackets copies each packet behind wgHeadroom bytes into the write
// queue and returns; it blocks while the queue is full, which is the
// backpressure gVisor's TCP needs. gVisor's TCP hands over one segment per
// call, so a Write per call would never give the library a batch to
// coalesce: the writer goroutine takes whatever has queued up since its last
// Write (up to BatchSize) into the next one, as wireguard-go's own device
// does with the packets it decrypted.
func (e *wgEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		buf := (*e.free.Get().(*[]byte))[:wgHeadroom]
		for _, v := range pkt.AsSlices() {
			buf = append(buf, v...)
		}
		select {
		case e.queue <- buf:
			n++
		case <-e.done:
			return n, &tcpip.ErrClosedForSend{}
		}
	}
	return n, nil
}

// writeLoop writes batches from the queue until the device closes.
func (e *wgEndpoint) writeLoop() {
	defer e.wg.Done()
	bufs := make([][]byte, 0, e.batch)
	for {
		bufs = bufs[:0]
		select {
		case b := <-e.queue:
			bufs = append(bufs, b)
		case <-e.done:
			return
		}
	drain:
		for len(bufs) < e.batch {
			select {
			case b := <-e.queue:
				bufs = append(bufs, b)
			default:
				break drain
			}
		}
		if _, err := e.dev.Write(bufs, wgHeadroom); err != nil && !errors.Is(err, os.ErrClosed) {
			// Some packets of the batch were refused; TCP retransmits.
			e.dropped.Add(1)
		}
		e.txPackets.Add(uint64(len(bufs)))
		for i, b := range bufs {
			b = b[:0]
			e.free.Put(&b)
			bufs[i] = nil
		}
	}
}
