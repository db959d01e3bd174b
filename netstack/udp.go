package netstack

import (
	"context"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/flow"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpDialFailHold keeps the 4-tuple of a flow whose dial failed for a while,
// discarding its datagrams, so a retrying client does not cause one stream
// OPEN per datagram.
const udpDialFailHold = 5 * time.Second

// dnsIdleTimeout bounds the idle time of flows to port 53: a DNS exchange is
// one query and its answer, and resolvers use a fresh source port per query,
// so at the general UDP timeout their flows (and streams) would pile up.
const dnsIdleTimeout = 10 * time.Second

// udpFlow carries one UDP 4-tuple over a stream of length-prefixed
// datagrams. The gVisor endpoint is connected to the tuple, so replies go
// out with the original destination as their source.
type udpFlow struct {
	st   *Stack
	dest flow.Dest
	ep   tcpip.Endpoint
	wq   *waiter.Queue

	mu     sync.Mutex
	remote flow.Conn

	idle      time.Duration
	last      atomic.Int64 // unix nanos of the last datagram either way
	done      chan struct{}
	closeOnce sync.Once
}

// handleUDP runs in the packet path for the first datagram of a 4-tuple, so
// it only claims the tuple; dialing happens on the flow's goroutine, and
// datagrams arriving meanwhile queue in the endpoint.
func (st *Stack) handleUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	dest := flow.Dest{Proto: flow.UDP, Addr: netip.AddrPortFrom(addrOf(id.LocalAddress), id.LocalPort)}
	if !st.acquireFlow(dest) {
		return // dropped, like a full conntrack table
	}
	wq := new(waiter.Queue)
	ep, err := r.CreateEndpoint(wq)
	if err != nil {
		st.releaseFlow()
		st.log.Debug("udp endpoint", "dest", dest.String(), "err", err.String())
		return
	}
	f := &udpFlow{st: st, dest: dest, ep: ep, wq: wq, done: make(chan struct{}), idle: st.cfg.UDPIdleTimeout}
	if dest.Addr.Port() == 53 {
		f.idle = min(f.idle, dnsIdleTimeout)
	}
	if !st.track(f) {
		ep.Close()
		st.releaseFlow()
		return
	}
	st.udpFlows.Add(1)
	f.touch()
	go f.run()
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

// shutdown ends the flow; its goroutines exit and run cleans up.
func (f *udpFlow) shutdown() {
	f.closeOnce.Do(func() {
		close(f.done)
		f.mu.Lock()
		if f.remote != nil {
			_ = f.remote.Close() // wakes remoteToApp
		}
		f.mu.Unlock()
	})
}

// dialDatagram dials the far half of a UDP or ICMP flow, waiting at most
// ConnectTimeout; a failure is counted and logged.
func (st *Stack) dialDatagram(dest flow.Dest) (flow.Conn, error) {
	ctx, cancel := context.WithTimeout(st.ctx, st.cfg.ConnectTimeout)
	remote, err := st.cfg.Dialer.DialFlow(ctx, dest)
	cancel()
	if err == nil && remote == nil {
		err = errNilConn
	}
	if err != nil {
		st.dialErrors.Add(1)
		st.log.Debug("flow dial failed", "dest", dest.String(), "err", err)
	}
	return remote, err
}

// publishRemote stores a datagram flow's dialed far half where shutdown
// finds it, under mu, unless the flow was shut down while dialing: then it
// closes remote and returns false.
func publishRemote(mu *sync.Mutex, slot *flow.Conn, done <-chan struct{}, remote flow.Conn) bool {
	mu.Lock()
	defer mu.Unlock()
	select {
	case <-done:
		_ = remote.Close()
		return false
	default:
		*slot = remote
		return true
	}
}

func (f *udpFlow) run() {
	st := f.st
	defer func() {
		f.ep.Close()
		st.udpFlows.Add(-1)
		st.releaseFlow()
		st.untrack(f)
	}()
	remote, err := st.dialDatagram(f.dest)
	if err != nil {
		f.discardFor(udpDialFailHold)
		return
	}
	if !publishRemote(&f.mu, &f.remote, f.done, remote) {
		return
	}
	idle := time.AfterFunc(f.idle, f.checkIdle)
	defer idle.Stop()
	out := make(chan struct{})
	go func() {
		defer close(out)
		f.appToRemote(remote)
	}()
	f.remoteToApp(remote)
	f.shutdown()
	<-out
}

// checkIdle closes the flow once neither side sent for its idle timeout.
func (f *udpFlow) checkIdle() {
	since := time.Since(time.Unix(0, f.last.Load()))
	if since >= f.idle {
		f.st.log.Debug("udp flow idle, closing", "dest", f.dest.String())
		f.shutdown()
		return
	}
	select {
	case <-f.done:
	default:
		time.AfterFunc(f.idle-since, f.checkIdle)
	}
}

// discardFor drops the tuple's datagrams until d passed or shutdown.
func (f *udpFlow) discardFor(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	for {
		var w tcpip.SliceWriter
		if _, err := f.ep.Read(&w, tcpip.ReadOptions{}); err == nil {
			continue
		}
		select {
		case <-ch:
		case <-t.C:
			return
		case <-f.done:
			return
		}
	}
}

// appToRemote sends each datagram from the app as one length-prefixed
// record. It waits for readability before borrowing a buffer, so an idle
// flow holds none.
func (f *udpFlow) appToRemote(remote flow.Conn) {
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	var w tcpip.SliceWriter // outside the loop: one escape per flow, not per datagram
	for {
		bp := f.st.bufs.Get(flow.DatagramBuf)
		buf := *bp
		w = tcpip.SliceWriter(buf[flow.DatagramHeader:])
		res, err := f.ep.Read(&w, tcpip.ReadOptions{})
		if err == nil {
			werr := flow.WriteDatagram(remote, buf[:flow.DatagramHeader+res.Count])
			f.st.bufs.Put(bp)
			if werr != nil {
				f.shutdown()
				return
			}
			f.touch()
			continue
		}
		f.st.bufs.Put(bp)
		if _, wouldBlock := err.(*tcpip.ErrWouldBlock); !wouldBlock {
			f.shutdown()
			return
		}
		select {
		case <-ch:
		case <-f.done:
			return
		}
	}
}

// remoteToApp writes each record from the remote side to the app as one
// datagram from the flow's original destination.
func (f *udpFlow) remoteToApp(remote flow.Conn) {
	var r bytesReader
	for {
		n, err := flow.ReadDatagramLen(remote)
		if err != nil {
			return
		}
		bp := f.st.bufs.Get(n)
		buf := *bp
		if _, err := io.ReadFull(remote, buf); err != nil {
			f.st.bufs.Put(bp)
			return
		}
		r.b = buf
		_, werr := f.ep.Write(&r, tcpip.WriteOptions{})
		f.st.bufs.Put(bp)
		if werr != nil {
			if _, full := werr.(*tcpip.ErrWouldBlock); !full {
				return
			}
			// The send buffer is full: drop this datagram, as UDP may.
		}
		f.touch()
	}
}

// bytesReader is a minimal io.Reader over a slice; bytes.Reader would do,
// but this one is reset in place without an allocation per datagram.
type bytesReader struct{ b []byte }

func (r *bytesReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (r *bytesReader) Len() int { return len(r.b) }
