package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// Why not gVisor's link/fdbased: at the pinned gVisor version fdbased only
// enables the virtio-net header and host GSO when the fd is a socket
// (isSocketFD), and it places csum_start behind an Ethernet header. On a TUN
// fd it can therefore only run without offloads, and its writes drop packets
// on EAGAIN. sing-tun gets around this with a patched gVisor fork. This
// endpoint does the same job on the TUN fd with gVisor's own GRO.

var (
	_ stack.LinkEndpoint = (*endpoint)(nil)
	_ stack.GSOEndpoint  = (*endpoint)(nil)
)

const (
	// vnetHdrLen is sizeof(struct virtio_net_hdr), the TUN default.
	vnetHdrLen = 10
	// gsoMaxSize bounds the TCP segments gVisor hands us (an IPv4 total
	// length must fit 16 bits, gVisor subtracts the headers).
	gsoMaxSize = 65536
	// readBatch packets are read before GRO is flushed: enough to coalesce
	// a burst, small enough that ACKs are not held back noticeably.
	readBatch = 64
	// maxPacket is the largest packet the kernel sends us: a 64 KiB GSO
	// super-segment plus the vnet header.
	maxPacket = vnetHdrLen + 65535

	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID
	vnetGSONone       = 0
	vnetGSOTCPv4      = 1
	vnetGSOTCPv6      = 4
	vnetGSOUDPL4      = 5
	vnetGSOECN        = 0x80
)

// endpoint is a stack.LinkEndpoint on a TUN file descriptor.
type endpoint struct {
	file    *os.File
	rc      syscall.RawConn
	vnet    bool
	uso     bool // the kernel may send UDP super-datagrams
	caps    stack.LinkEndpointCapabilities
	mtu     atomic.Uint32
	writers sync.Pool // *writer; WritePackets runs on many goroutines at once

	mu         sync.Mutex
	dispatcher stack.NetworkDispatcher
	stopping   bool
	wg         sync.WaitGroup
	dropped    atomic.Uint64 // malformed or unsupported inbound packets
	rxPackets  atomic.Uint64 // packets (GSO super-segments count once) read
	txPackets  atomic.Uint64 // packets written
}

func newEndpoint(file *os.File, mtu uint32, offload Offload) (*endpoint, error) {
	rc, err := file.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tun: raw conn: %w", err)
	}
	e := &endpoint{file: file, rc: rc, vnet: offload != OffloadNone, uso: offload == OffloadUSO}
	e.mtu.Store(mtu)
	// RXChecksumOffload makes the NIC trust pkt.RXChecksumValidated as set
	// by deliver and by gVisor's GRO, which verifies the TCP checksums of
	// packets not yet validated before it merges them (merged packets no
	// longer carry a checksum gVisor could verify). Without it GRO output is
	// dropped as malformed. UDP and ICMP from the kernel are then not
	// re-verified: they were built by this host's own stack.
	e.caps = stack.CapabilityRXChecksumOffload
	e.writers.New = func() any {
		w := &writer{e: e, iov: make([]unix.Iovec, 0, 8)}
		w.fn = w.writev // bound once, so rc.Write does not allocate per packet
		return w
	}
	return e, nil
}

// MTU is exactly the kernel device's MTU: the NIC must never emit a non-GSO
// packet the device would reject.
func (e *endpoint) MTU() uint32             { return e.mtu.Load() }
func (e *endpoint) SetMTU(mtu uint32)       { e.mtu.Store(mtu) }
func (e *endpoint) MaxHeaderLength() uint16 { return 0 }

func (e *endpoint) LinkAddress() tcpip.LinkAddress               { return "" }
func (e *endpoint) SetLinkAddress(tcpip.LinkAddress)             {}
func (e *endpoint) Capabilities() stack.LinkEndpointCapabilities { return e.caps }
func (e *endpoint) ARPHardwareType() header.ARPHardwareType      { return header.ARPHardwareNone }
func (e *endpoint) AddHeader(*stack.PacketBuffer)                {}
func (e *endpoint) ParseHeader(*stack.PacketBuffer) bool         { return true }
func (e *endpoint) Close()                                       {}
func (e *endpoint) SetOnCloseAction(func())                      {}

// GSOMaxSize lets gVisor build 64 KiB TCP segments; the kernel segments
// them (or takes them whole for local delivery, which is the common case).
func (e *endpoint) GSOMaxSize() uint32 {
	if e.vnet {
		return gsoMaxSize
	}
	return 0
}

func (e *endpoint) SupportedGSO() stack.SupportedGSO {
	if e.vnet {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// Attach starts the reader with d, or stops it when d is nil (NIC removal).
func (e *endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	if d == nil {
		running := e.dispatcher != nil
		e.dispatcher = nil
		e.mu.Unlock()
		if running {
			e.stopReader()
		}
		return
	}
	defer e.mu.Unlock()
	if e.dispatcher != nil || e.stopping {
		return
	}
	e.dispatcher = d
	e.wg.Add(1)
	go e.readLoop(d)
}

func (e *endpoint) IsAttached() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dispatcher != nil
}

// Wait waits for the reader to exit after Attach(nil) or shutdown.
func (e *endpoint) Wait() { e.wg.Wait() }

// stopReader wakes the reader through a past read deadline (the fd stays
// open, so the stack may be re-attached) and waits for it.
func (e *endpoint) stopReader() {
	_ = e.file.SetReadDeadline(time.Unix(1, 0))
	e.wg.Wait()
	_ = e.file.SetReadDeadline(time.Time{})
}

// shutdown is called by Device.Close before the fd is closed.
func (e *endpoint) shutdown() {
	e.mu.Lock()
	e.stopping = true
	e.dispatcher = nil
	e.mu.Unlock()
	e.stopReader()
}

func (e *endpoint) readLoop(d stack.NetworkDispatcher) {
	defer e.wg.Done()
	r := reader{e: e, buf: make([]byte, maxPacket+1), seg: make([]byte, maxPacket)}
	r.gro.Init(true)
	r.gro.Dispatcher = d
	fn := r.readBatch
	for {
		err := e.rc.Read(fn)
		r.gro.Flush()
		if err != nil || r.err != nil {
			// Deadline (detach), closed file, or the device went away.
			return
		}
	}
}

type reader struct {
	e   *endpoint
	buf []byte
	seg []byte // scratch for one datagram split from a USO packet
	gro gro.GRO
	err error
}

// readBatch reads up to readBatch packets without blocking. Returning false
// parks the goroutine in the poller until the fd is readable. At EAGAIN it
// hands what GRO holds to the stack and parks at once: returning true there
// would cost one more read, which could only see EAGAIN again.
func (r *reader) readBatch(fd uintptr) bool {
	for i := 0; i < readBatch; i++ {
		n, err := unix.Read(int(fd), r.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if i > 0 {
				r.gro.Flush()
			}
			return false
		case err != nil:
			r.err = err
			return true
		}
		r.e.rxPackets.Add(1)
		r.deliver(r.buf[:n])
	}
	return true
}

func (r *reader) deliver(b []byte) {
	if len(b) > maxPacket {
		r.e.dropped.Add(1) // truncated: larger than any GSO segment we allow
		return
	}
	if !r.e.vnet {
		r.enqueue(b, false)
		return
	}
	if len(b) < vnetHdrLen {
		r.e.dropped.Add(1)
		return
	}
	// The header is in the kernel's native (little-endian here) order.
	// NEEDS_CSUM: the checksum field holds only the pseudo-header sum
	// (CHECKSUM_PARTIAL), so it cannot be verified, and needs no
	// verification: the packet never left this host. DATA_VALID: the kernel
	// verified it.
	validated := b[0]&(vnetFlagNeedsCsum|vnetFlagDataValid) != 0
	gsoType, gsoSize := b[1]&^vnetGSOECN, int(b[4])|int(b[5])<<8
	b = b[vnetHdrLen:]
	switch {
	case gsoType == vnetGSONone || gsoType == vnetGSOTCPv4 || gsoType == vnetGSOTCPv6:
		// A TCP super-segment goes to gVisor whole, like a GRO packet: its
		// IP length covers all of it and gVisor's TCP takes segments larger
		// than the MSS.
		r.enqueue(b, validated)
	case gsoType == vnetGSOUDPL4 && r.e.uso:
		r.splitUDP(b, gsoSize)
	default:
		r.e.dropped.Add(1) // a GSO type we did not negotiate
	}
}

func (r *reader) enqueue(b []byte, validated bool) {
	if len(b) == 0 {
		r.e.dropped.Add(1)
		return
	}
	var proto tcpip.NetworkProtocolNumber
	switch header.IPVersion(b) {
	case header.IPv4Version:
		proto = header.IPv4ProtocolNumber
	case header.IPv6Version:
		proto = header.IPv6ProtocolNumber
	default:
		r.e.dropped.Add(1)
		return
	}
	// MakeWithData copies into gVisor's pooled chunks, so the read buffer
	// is reused and nothing is allocated per packet on the Go heap.
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = validated
	r.gro.Enqueue(pkt)
	pkt.DecRef()
}

// splitUDP delivers a UDP super-datagram (USO, an application's UDP_SEGMENT
// send) as the gso_size datagrams it stands for, each with its own lengths
// and full checksums, as the kernel's own segmentation would produce them:
// gVisor would otherwise take it for a single datagram.
func (r *reader) splitUDP(b []byte, mss int) {
	var hlen int
	var src, dst tcpip.Address
	switch header.IPVersion(b) {
	case header.IPv4Version:
		ip := header.IPv4(b)
		if len(b) < header.IPv4MinimumSize || !ip.IsValid(len(b)) || ip.TransportProtocol() != header.UDPProtocolNumber {
			r.e.dropped.Add(1)
			return
		}
		hlen, src, dst = int(ip.HeaderLength()), ip.SourceAddress(), ip.DestinationAddress()
	case header.IPv6Version:
		ip := header.IPv6(b)
		// Extension headers never precede the UDP header of a USO packet
		// built by the local stack.
		if !ip.IsValid(len(b)) || ip.TransportProtocol() != header.UDPProtocolNumber {
			r.e.dropped.Add(1)
			return
		}
		hlen, src, dst = header.IPv6MinimumSize, ip.SourceAddress(), ip.DestinationAddress()
	default:
		r.e.dropped.Add(1)
		return
	}
	hdrs := hlen + header.UDPMinimumSize
	if len(b) < hdrs || mss <= 0 {
		r.e.dropped.Add(1)
		return
	}
	payload := b[hdrs:]
	for i, off := 0, 0; off < len(payload); i, off = i+1, off+mss {
		seg := payload[off:min(off+mss, len(payload))]
		p := r.seg[:hdrs+len(seg)]
		copy(p, b[:hdrs])
		copy(p[hdrs:], seg)
		if hlen == header.IPv6MinimumSize && header.IPVersion(p) == header.IPv6Version {
			header.IPv6(p).SetPayloadLength(uint16(len(p) - header.IPv6MinimumSize))
		} else {
			ip := header.IPv4(p)
			ip.SetTotalLength(uint16(len(p)))
			ip.SetID(ip.ID() + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		}
		u := header.UDP(p[hlen:])
		u.SetLength(uint16(len(u)))
		u.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(u)))
		c := ^u.CalculateChecksum(checksum.Checksum(seg, xsum))
		if c == 0 {
			c = 0xffff // zero means "no checksum" (RFC 768)
		}
		u.SetChecksum(c)
		r.enqueue(p, true)
	}
}

// WritePackets writes each packet with one writev. The fd is non-blocking
// and polled: on EAGAIN the caller (a gVisor TCP sender) parks until the
// device is writable again instead of the packet being dropped, which is
// the backpressure TCP needs. (Linux TUN rarely returns EAGAIN on write; if
// its backlog overflows the kernel drops silently and TCP recovers.)
func (e *endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	w := e.writers.Get().(*writer)
	defer e.writers.Put(w)
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if err := w.write(pkt); err != nil {
			return n, err
		}
		n++
	}
	e.txPackets.Add(uint64(n))
	return n, nil
}

type writer struct {
	e     *endpoint
	hdr   [vnetHdrLen]byte
	iov   []unix.Iovec
	errno unix.Errno
	fn    func(fd uintptr) bool
}

func (w *writer) write(pkt *stack.PacketBuffer) tcpip.Error {
	w.iov = w.iov[:0]
	if w.e.vnet {
		w.fillHeader(pkt)
		w.iov = append(w.iov, unix.Iovec{Base: &w.hdr[0], Len: vnetHdrLen})
	}
	views, off := pkt.AsViewList()
	for v := views.Front(); v != nil; v = v.Next() {
		s := v.AsSlice()
		if off >= len(s) {
			off -= len(s)
			continue
		}
		s = s[off:]
		off = 0
		w.iov = append(w.iov, unix.Iovec{Base: &s[0], Len: uint64(len(s))})
	}
	w.errno = 0
	err := w.e.rc.Write(w.fn)
	clear(w.iov) // do not pin packet memory in the pool
	switch {
	case errors.Is(err, os.ErrClosed):
		return &tcpip.ErrClosedForSend{}
	case err != nil:
		return &tcpip.ErrAborted{}
	case w.errno != 0:
		return tcpip.TranslateErrno(w.errno)
	}
	return nil
}

func (w *writer) writev(fd uintptr) bool {
	for {
		_, _, errno := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		w.errno = errno
		return true
	}
}

// fillHeader encodes struct virtio_net_hdr for pkt. A TCP packet from a
// GSO-enabled gVisor endpoint carries only the pseudo-header checksum
// (CHECKSUM_PARTIAL): csum_start/offset tell the kernel where to finish it.
func (w *writer) fillHeader(pkt *stack.PacketBuffer) {
	w.hdr = [vnetHdrLen]byte{}
	g := pkt.GSOOptions
	if g.Type == stack.GSONone {
		return
	}
	put16 := func(i int, v uint16) { w.hdr[i], w.hdr[i+1] = byte(v), byte(v>>8) }
	if g.NeedsCsum {
		w.hdr[0] = vnetFlagNeedsCsum
		put16(6, g.L3HdrLen)   // csum_start: no link header on a TUN
		put16(8, g.CsumOffset) // csum_offset within the TCP header
	}
	if pkt.Data().Size() > int(g.MSS) {
		switch g.Type {
		case stack.GSOTCPv4:
			w.hdr[1] = vnetGSOTCPv4
		case stack.GSOTCPv6:
			w.hdr[1] = vnetGSOTCPv6
		default:
			return // gVisor-internal GSO never reaches a host-GSO endpoint
		}
		put16(2, uint16(pkt.HeaderSize())) // hdr_len
		put16(4, g.MSS)                    // gso_size
	}
}
