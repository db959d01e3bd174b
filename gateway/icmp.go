package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/usl"
	"golang.org/x/net/icmp"
)

// An ICMP flow is ping through the tunnel: each datagram from the peer is
// an echo request message (type, code, checksum, identifier, sequence,
// data) for the flow's destination. The gateway sends it from this host
// and returns each echo reply it gets, or nothing: an unreachable
// destination is silence, as it is for ping on this host.

// ICMP types of echo.
const (
	echoRequest4, echoReply4 = 8, 0
	echoRequest6, echoReply6 = 128, 129
)

// echoSocket sends echo requests to one destination and reads its replies.
type echoSocket struct {
	c   *icmp.PacketConn
	dst net.Addr
	raw bool   // a raw socket: sees every echo reply, and ours carry id
	id  uint16 // the identifier of a raw socket's requests
}

// openEcho opens an unprivileged ICMP datagram socket ("ping socket")
// where net.ipv4.ping_group_range admits this process's group; the kernel
// then picks the identifier and hands us only our replies. Otherwise, as
// root or with CAP_NET_RAW, it opens a raw socket.
func openEcho(dst netip.Addr) (*echoSocket, error) {
	network, raw, laddr := "udp4", "ip4:icmp", "0.0.0.0"
	if dst.Is6() {
		network, raw, laddr = "udp6", "ip6:ipv6-icmp", "::"
	}
	c, err := icmp.ListenPacket(network, laddr)
	if err == nil {
		return &echoSocket{c: c, dst: &net.UDPAddr{IP: dst.AsSlice()}}, nil
	}
	c, rerr := icmp.ListenPacket(raw, laddr)
	if rerr != nil {
		return nil, fmt.Errorf("icmp: ping socket: %v; raw socket: %v (allow unprivileged ping with sysctl net.ipv4.ping_group_range, or run as root)", err, rerr)
	}
	return &echoSocket{c: c, dst: &net.IPAddr{IP: dst.AsSlice()}, raw: true, id: uint16(rand.Uint32())}, nil
}

// send writes one echo request. A raw socket's requests carry the socket's
// identifier, and an IPv4 raw socket leaves the checksum to us (the kernel
// computes ICMPv6's, and a ping socket's).
func (e *echoSocket) send(msg []byte, v4 bool) error {
	if e.raw {
		binary.BigEndian.PutUint16(msg[4:6], e.id)
		if v4 {
			msg[2], msg[3] = 0, 0
			binary.BigEndian.PutUint16(msg[2:4], ^onesSum(msg))
		}
	}
	_, err := e.c.WriteTo(msg, e.dst)
	return err
}

// isReply reports whether msg, from from, answers one of our requests.
func (e *echoSocket) isReply(msg []byte, from net.Addr, v4 bool) bool {
	want := byte(echoReply6)
	if v4 {
		want = echoReply4
	}
	if len(msg) < 8 || msg[0] != want || from.String() != e.dst.String() {
		return false
	}
	return !e.raw || binary.BigEndian.Uint16(msg[4:6]) == e.id
}

// onesSum is the 16-bit one's complement sum of b (RFC 1071).
func onesSum(b []byte) uint16 {
	var s uint32
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// relayEcho carries one ICMP flow until it is idle (no request and no
// reply) for idle, or the stream ends.
func relayEcho(pool *bufpool.Pool, st *usl.Stream, e *echoSocket, v4 bool, idle time.Duration) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	touch := func() { last.Store(time.Now().UnixNano()) }
	request := byte(echoRequest6)
	if v4 {
		request = echoRequest4
	}
	done := make(chan struct{}, 2)
	go func() { // stream → destination
		defer func() { done <- struct{}{} }()
		bp := pool.Get(flow.MaxDatagram)
		defer pool.Put(bp)
		for {
			msg, err := flow.ReadDatagram(st, *bp)
			if err != nil {
				return
			}
			if len(msg) < 8 || msg[0] != request || msg[1] != 0 {
				continue // only echo requests travel in an ICMP flow
			}
			touch()
			// A send error (no route to the destination) loses this
			// request, as ping on this host would.
			e.send(msg, v4)
		}
	}()
	go func() { // destination → stream
		defer func() { done <- struct{}{} }()
		bp := pool.Get(flow.DatagramBuf)
		defer pool.Put(bp)
		buf := *bp
		for {
			e.c.SetReadDeadline(time.Now().Add(idle))
			n, from, err := e.c.ReadFrom(buf[flow.DatagramHeader:])
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue
				}
				return
			}
			if err != nil {
				return
			}
			if !e.isReply(buf[flow.DatagramHeader:flow.DatagramHeader+n], from, v4) {
				continue
			}
			touch()
			if flow.WriteDatagram(st, buf[:flow.DatagramHeader+n]) != nil {
				return
			}
		}
	}()
	<-done
	e.c.Close()
	st.Close()
	<-done
}
