package usl

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// tcpProxy forwards loopback TCP connections and can reset them all, so
// resume is tested on real sockets too: kernel buffers, RSTs with unread
// data, TCP_NODELAY.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	return p
}

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); io.Copy(u, c); u.Close(); c.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, u); u.Close(); c.Close() }()
	}
}

// resetAll aborts every proxied connection with an RST (linger 0), the
// way a NAT flush or a middlebox would.
func (p *tcpProxy) resetAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

func (p *tcpProxy) close() {
	p.ln.Close()
	p.resetAll()
	p.wg.Wait()
}

// TestResumeOverTCP resets real TCP paths every few hundred milliseconds
// while streams move data both ways; every byte arrives exactly once.
// It also checks that the Control hook runs on the listener's and the
// dialer's sockets.
func TestResumeOverTCP(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	var controls atomic.Int64
	control := func(network, address string, c syscall.RawConn) error {
		controls.Add(1)
		return nil
	}
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.Control, scfg.Control = control, control
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	proxy := newTCPProxy(t, l.Addr().String())
	defer proxy.close()
	c, err := Dial(context.Background(), proxy.ln.Addr().String(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	resets := 0
	var rw sync.WaitGroup
	rw.Add(1)
	go func() {
		defer rw.Done()
		for {
			select {
			case <-stop:
				return
			// Often enough to bite a transfer of 4 × 8 MiB each way,
			// which takes about 0.1 s on a quiet machine without them.
			case <-time.After(40 * time.Millisecond):
				proxy.resetAll()
				resets++
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		a, b := openPair(t, c, s, fmt.Sprint("tcp", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := duplex(a, b, uint64(i), uint64(i+10), 8<<20, 2<<20); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	rw.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := c.Stats()
	t.Logf("%d resets, %d reconnects, %d bytes retransmitted, control hook ran %d times", resets, st.Reconnects, st.Retransmitted, controls.Load())
	if st.Reconnects == 0 {
		t.Error("no reconnect: the resets did not bite")
	}
	if controls.Load() < 2 {
		t.Errorf("Control ran %d times, want the listener and at least one dial", controls.Load())
	}
}
