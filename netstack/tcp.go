package netstack

import (
	"context"
	"errors"
	"net/netip"

	"github.com/usltun/usltun/flow"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleTCP runs on the forwarder's goroutine for each new SYN. It dials
// first and completes the handshake only on success. Every path calls
// r.Complete exactly once, or the forwarder's in-flight slot would leak
// and new connections to that 4-tuple would stall.
func (st *Stack) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dest := flow.Dest{Proto: flow.TCP, Addr: netip.AddrPortFrom(addrOf(id.LocalAddress), id.LocalPort)}
	f := &tcpFlow{st: st, dest: dest}
	if !st.track(f) {
		st.link.takeSYN(id)
		r.Complete(true) // shutting down
		return
	}
	handedOff := false // once the splice runs in its own goroutine, it releases f
	defer func() {
		if !handedOff {
			st.untrack(f)
		}
	}()
	if !st.acquireFlow(dest) {
		st.link.takeSYN(id)
		r.Complete(true)
		return
	}
	defer func() {
		if !handedOff {
			st.releaseFlow()
		}
	}()

	st.pending.Add(1)
	ctx, cancel := context.WithTimeout(st.ctx, st.cfg.ConnectTimeout)
	remote, err := st.cfg.Dialer.DialFlow(ctx, dest)
	cancel()
	if err == nil && remote == nil {
		err = errNilConn
	}
	st.pending.Add(-1)
	syn := st.link.takeSYN(id)
	if err != nil {
		st.dialErrors.Add(1)
		st.reject(r, syn, dest, err)
		return
	}

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The app gave up (RST) or the stack is closing: no one to tell.
		r.Complete(true)
		abort(remote)
		st.log.Debug("tcp handshake failed after dial", "dest", dest.String(), "err", terr.String())
		return
	}
	r.Complete(false)
	f.attach(gonet.NewTCPConn(&wq, ep), ep, &wq, remote)
	st.tcpFlows.Add(1)
	// The splice runs in a fresh goroutine, not in this one: the handshake
	// and the dial grew this goroutine's stack, and a goroutine keeps its
	// stack while its flow idles, so an idle flow would keep that stack for
	// its life.
	handedOff = true
	go func() {
		defer st.untrack(f)
		defer st.releaseFlow()
		defer st.tcpFlows.Add(-1)
		f.splice()
	}()
}

// reject answers a SYN whose dial failed. Refusals become an RST, so the
// application's connect fails with ECONNREFUSED; an unreachable or silent
// destination becomes ICMP host unreachable (EHOSTUNREACH), falling back to
// an RST if the SYN was not recorded.
func (st *Stack) reject(r *tcp.ForwarderRequest, syn []byte, dest flow.Dest, err error) {
	icmp := errors.Is(err, flow.ErrUnreachable) || errors.Is(err, flow.ErrTimeout) ||
		(errors.Is(err, context.DeadlineExceeded) && st.ctx.Err() == nil)
	if errors.Is(err, flow.ErrRefused) {
		st.log.Debug("tcp connect failed", "dest", dest.String(), "err", err) // refused ports are routine
	} else {
		// The rest says something about the path, but an application
		// connecting in a loop must not flood the log: aggregated.
		st.failed.Add("tcp connect failed", "last_dest", dest.String(), "err", err.Error())
	}
	if icmp && st.link.unreachable(syn) {
		r.Complete(false)
		return
	}
	r.Complete(true)
}

var errNilConn = errors.New("netstack: Dialer returned neither a Conn nor an error")

// abort tears the remote half down in both directions.
func abort(c flow.Conn) {
	_ = c.Abort()
	_ = c.Close()
}
