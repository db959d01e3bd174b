package socks

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/flow"
)

// UDP ASSOCIATE.
//
// The relay socket listens on the address the client reached the TCP
// listener on, port chosen by the kernel, and is announced in the reply.
// It takes datagrams only from the client's IP address, and from the first
// source port seen (RFC 1928's DST.PORT hint is 0 for most clients). Each
// datagram is RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT DATA; FRAG other than 0
// is dropped (fragmentation is optional and not offered). Each distinct
// destination is one UDP flow through the Dialer, opened on its first
// datagram, with up to udpQueue datagrams queued while it opens; replies
// come back with the destination, in the form the client named it, as
// their header. The association and its flows end when the TCP connection
// ends.

// udpQueue is how many datagrams to one destination wait while its flow
// opens; beyond that they are dropped, as a congested path drops them.
const udpQueue = 64

type udpDest struct {
	addr netip.Addr
	name string
	port uint16
}

// association is one UDP ASSOCIATE: the relay socket and its flows.
type association struct {
	s      *Server
	relay  *net.UDPConn
	client netip.Addr
	log    *slog.Logger
	ctx    context.Context

	mu     sync.Mutex
	from   netip.AddrPort // the client's UDP source, fixed by its first datagram
	flows  map[udpDest]*udpFlow
	closed bool
	wg     sync.WaitGroup
}

func (s *Server) associate(ctx context.Context, c *net.TCPConn, log *slog.Logger) {
	local := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
	relay, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		log.Warn("socks: udp relay socket", "err", err)
		writeReply(c, repGeneralFailure, netip.AddrPort{})
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	a := &association{
		s: s, relay: relay, log: log, ctx: ctx,
		client: c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(),
		flows:  map[udpDest]*udpFlow{},
	}
	if err := writeReply(c, repSuccess, relay.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		relay.Close()
		cancel()
		return
	}
	log.Debug("socks: udp associate", "relay", relay.LocalAddr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.relayLoop()
	}()
	// The association lives as long as its TCP connection: wait for EOF.
	io.Copy(io.Discard, io.LimitReader(c, 1<<10))
	cancel()
	relay.Close()
	<-done
	a.mu.Lock()
	a.closed = true
	for _, f := range a.flows {
		f.stop()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// relayLoop reads the client's datagrams and hands each to its flow.
func (a *association) relayLoop() {
	buf := make([]byte, flow.MaxDatagram)
	for {
		n, from, err := a.relay.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from.Addr() != a.client {
			continue
		}
		a.mu.Lock()
		if !a.from.IsValid() {
			a.from = from
		}
		ok := a.from == from
		a.mu.Unlock()
		if !ok {
			continue
		}
		dst, payload, ok := parseUDPHeader(buf[:n])
		if !ok {
			continue
		}
		if f := a.flowFor(dst); f != nil {
			f.send(payload)
		}
	}
}

// parseUDPHeader splits a client datagram into its destination and data.
func parseUDPHeader(b []byte) (udpDest, []byte, bool) {
	if len(b) < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0 {
		return udpDest{}, nil, false
	}
	r := bytes.NewReader(b[3:])
	req, err := readAddr(r)
	if err != nil {
		return udpDest{}, nil, false
	}
	return udpDest{addr: req.addr, name: req.name, port: req.port}, b[len(b)-r.Len():], true
}

// flowFor returns dst's flow, opening it if there is room.
func (a *association) flowFor(dst udpDest) *udpFlow {
	a.mu.Lock()
	defer a.mu.Unlock()
	if f := a.flows[dst]; f != nil {
		return f
	}
	if a.closed || len(a.flows) >= a.s.cfg.MaxUDPDests {
		return nil
	}
	f := &udpFlow{a: a, dst: dst, queue: make(chan []byte, udpQueue), quit: make(chan struct{})}
	f.touch()
	a.flows[dst] = f
	a.wg.Add(1)
	go f.run()
	return f
}

// udpFlow carries one destination's datagrams.
type udpFlow struct {
	a     *association
	dst   udpDest
	queue chan []byte
	quit  chan struct{}
	once  sync.Once
	last  atomic.Int64
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func (f *udpFlow) stop() { f.once.Do(func() { close(f.quit) }) }

// send queues a copy of payload, dropping it if the queue is full.
func (f *udpFlow) send(payload []byte) {
	b := make([]byte, flow.DatagramHeader+len(payload))
	copy(b[flow.DatagramHeader:], payload)
	select {
	case f.queue <- b:
	default:
	}
}

func (f *udpFlow) run() {
	a := f.a
	defer a.wg.Done()
	defer func() {
		a.mu.Lock()
		if a.flows[f.dst] == f {
			delete(a.flows, f.dst)
		}
		a.mu.Unlock()
	}()
	dest := request{addr: f.dst.addr, name: f.dst.name, port: f.dst.port}.dest(flow.UDP)
	ctx, cancel := context.WithTimeout(a.ctx, a.s.cfg.ConnectTimeout)
	c, err := a.s.cfg.Dialer.DialFlow(ctx, dest)
	cancel()
	if err != nil {
		a.log.Info("socks: udp flow failed", "dst", dest.String(), "err", err)
		return
	}
	replied := make(chan struct{})
	go func() { f.replies(c); close(replied) }()
	defer func() { c.Close(); <-replied }()
	idle := time.NewTicker(a.s.cfg.UDPIdleTimeout / 4)
	defer idle.Stop()
	for {
		select {
		case b := <-f.queue:
			f.touch()
			if err := flow.WriteDatagram(c, b); err != nil {
				return
			}
		case <-idle.C:
			if time.Since(time.Unix(0, f.last.Load())) > a.s.cfg.UDPIdleTimeout {
				return
			}
		case <-f.quit:
			return
		case <-a.ctx.Done():
			return
		}
	}
}

// replies sends the flow's datagrams back to the client with the
// destination's header. It ends when the flow is closed.
func (f *udpFlow) replies(c flow.Conn) {
	defer f.stop()
	hdr := appendAddr([]byte{0, 0, 0}, f.dst.addr, f.dst.name, f.dst.port)
	buf := make([]byte, flow.MaxDatagram)
	out := make([]byte, 0, len(hdr)+flow.MaxDatagram)
	for {
		p, err := flow.ReadDatagram(c, buf)
		if err != nil {
			return
		}
		f.touch()
		f.a.mu.Lock()
		to := f.a.from
		f.a.mu.Unlock()
		out = append(append(out[:0], hdr...), p...)
		f.a.relay.WriteToUDPAddrPort(out, to)
	}
}
