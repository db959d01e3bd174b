package netstack

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/flow"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Echo (ping) travels end to end, as it does through WireGuard: the stack
// never answers an echo request itself. The requests of one (source,
// destination, identifier) become one ICMP flow, whose far side sends real
// echo requests from its host and returns the replies it gets, or nothing.
// So the round trip ping shows includes the session and the far host, an
// unreachable or unexported destination shows as loss, and so does a
// partition.
const (
	// echoQueue requests wait for the flow's writer; beyond it they are
	// dropped, as a full router queue drops them. It covers a burst (ping
	// -f) while the flow dials.
	echoQueue = 16
	// echoTimeout: a reply that comes back later than this after its
	// request is dropped. Requests written during a partition are
	// delivered after the heal (the session loses nothing); without the
	// bound ping would show the partition as a burst of replies seconds
	// late, not as the loss a real network gives. One second is far above
	// any terrestrial or satellite RTT and ping's default interval.
	echoTimeout = time.Second
	// echoTrack bounds the requests remembered per flow for echoTimeout.
	echoTrack = 1024
	// echoIdleTimeout closes an ICMP flow with no request; ping sends one
	// a second.
	echoIdleTimeout = 30 * time.Second
)

// echoKey names an ICMP flow: who pings whom with which identifier.
type echoKey struct {
	src, dst netip.Addr
	id       uint16
}

// echoFlow carries one echoKey's requests and replies.
type echoFlow struct {
	st   *Stack
	key  echoKey
	dest flow.Dest
	reqs chan []byte // echo request messages (ICMP header and data)

	mu     sync.Mutex
	remote flow.Conn
	sent   map[uint16]time.Time // sequence number → when it was written

	last      atomic.Int64 // unix nanos of the last request
	done      chan struct{}
	closeOnce sync.Once
}

// handleEcho is called by the link filter, in the packet path, with an
// echo request message (ICMP or ICMPv6 header and data) from src to dst.
// It never blocks: the flow's own goroutine dials and writes.
func (st *Stack) handleEcho(src, dst netip.Addr, msg []byte) {
	k := echoKey{src: src, dst: dst, id: binary.BigEndian.Uint16(msg[4:6])}
	st.echoMu.Lock()
	f := st.echoes[k]
	if f == nil {
		dest := flow.Dest{Proto: flow.ICMP, Addr: netip.AddrPortFrom(dst, 0)}
		if !st.acquireFlow(dest) {
			st.echoMu.Unlock()
			return
		}
		f = &echoFlow{st: st, key: k, dest: dest, reqs: make(chan []byte, echoQueue),
			sent: make(map[uint16]time.Time), done: make(chan struct{})}
		if !st.track(f) {
			st.echoMu.Unlock()
			st.releaseFlow()
			return
		}
		st.echoes[k] = f
		st.icmpFlows.Add(1)
		f.last.Store(time.Now().UnixNano())
		go f.run()
	}
	st.echoMu.Unlock()
	select {
	case f.reqs <- msg:
	default: // full: dropped
	}
}

func (f *echoFlow) shutdown() {
	f.closeOnce.Do(func() {
		close(f.done)
		f.mu.Lock()
		if f.remote != nil {
			_ = f.remote.Close() // wakes the reader and a blocked write
		}
		f.mu.Unlock()
	})
}

func (f *echoFlow) run() {
	st := f.st
	defer func() {
		st.echoMu.Lock()
		if st.echoes[f.key] == f {
			delete(st.echoes, f.key)
		}
		st.echoMu.Unlock()
		f.shutdown()
		st.icmpFlows.Add(-1)
		st.releaseFlow()
		st.untrack(f)
	}()
	remote, err := st.dialDatagram(f.dest)
	if err != nil {
		// Unexported or unreachable: no reply, for a while, without an
		// OPEN per request.
		f.discardFor(udpDialFailHold)
		return
	}
	if !publishRemote(&f.mu, &f.remote, f.done, remote) {
		return
	}
	replies := make(chan struct{})
	go func() {
		defer close(replies)
		f.readReplies(remote)
		f.shutdown()
	}()
	f.writeRequests(remote)
	f.shutdown()
	<-replies
}

// discardFor drops requests until d passed or shutdown.
func (f *echoFlow) discardFor(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-f.reqs:
		case <-t.C:
			return
		case <-f.done:
			return
		}
	}
}

// writeRequests sends each queued request as one datagram until the flow
// is idle for echoIdleTimeout, shut down, or the stream fails.
func (f *echoFlow) writeRequests(remote flow.Conn) {
	idle := time.NewTimer(echoIdleTimeout)
	defer idle.Stop()
	buf := make([]byte, flow.DatagramBuf)
	for {
		select {
		case msg := <-f.reqs:
			f.last.Store(time.Now().UnixNano())
			seq := binary.BigEndian.Uint16(msg[6:8])
			f.mu.Lock()
			if len(f.sent) >= echoTrack {
				f.expireLocked(time.Now())
			}
			if len(f.sent) < echoTrack {
				f.sent[seq] = time.Now()
			}
			f.mu.Unlock()
			n := copy(buf[flow.DatagramHeader:], msg)
			if err := flow.WriteDatagram(remote, buf[:flow.DatagramHeader+n]); err != nil {
				return
			}
		case <-idle.C:
			since := time.Since(time.Unix(0, f.last.Load()))
			if since >= echoIdleTimeout {
				return
			}
			idle.Reset(echoIdleTimeout - since)
		case <-f.done:
			return
		}
	}
}

func (f *echoFlow) expireLocked(now time.Time) {
	for seq, at := range f.sent {
		if now.Sub(at) > echoTimeout {
			delete(f.sent, seq)
		}
	}
}

// readReplies turns each echo reply from the far side into a packet to the
// application, from the pinged address, with the application's identifier.
func (f *echoFlow) readReplies(remote flow.Conn) {
	buf := make([]byte, flow.MaxDatagram)
	v4 := f.key.dst.Is4()
	for {
		msg, err := flow.ReadDatagram(remote, buf)
		if err != nil {
			return
		}
		if len(msg) < header.ICMPv4MinimumSize {
			continue
		}
		if (v4 && header.ICMPv4(msg).Type() != header.ICMPv4EchoReply) ||
			(!v4 && header.ICMPv6(msg).Type() != header.ICMPv6EchoReply) {
			continue
		}
		seq := binary.BigEndian.Uint16(msg[6:8])
		f.mu.Lock()
		at, ok := f.sent[seq]
		delete(f.sent, seq)
		f.mu.Unlock()
		if !ok || time.Since(at) > echoTimeout {
			continue // unasked, or too late: lost, as on a real network
		}
		f.st.link.sendEchoReply(f.key, msg)
	}
}

// sendEchoReply builds the IP packet of an echo reply to key.src from
// key.dst and writes it to the link.
func (f *linkFilter) sendEchoReply(key echoKey, msg []byte) bool {
	src := tcpip.AddrFromSlice(key.dst.AsSlice())
	dst := tcpip.AddrFromSlice(key.src.AsSlice())
	if key.dst.Is4() {
		b := make([]byte, header.IPv4MinimumSize+len(msg))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
			SrcAddr: src, DstAddr: dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(ip.Payload())
		copy(icmp, msg)
		icmp.SetIdent(key.id)
		icmp.SetChecksum(0)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		return f.send(header.IPv4ProtocolNumber, buffer.NewViewWithData(b))
	}
	b := make([]byte, header.IPv6MinimumSize+len(msg))
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(msg)), TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit: 64, SrcAddr: src, DstAddr: dst,
	})
	icmp := header.ICMPv6(ip.Payload())
	copy(icmp, msg)
	icmp.SetIdent(key.id)
	icmp.SetChecksum(0)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: src, Dst: dst}))
	return f.send(header.IPv6ProtocolNumber, buffer.NewViewWithData(b))
}
