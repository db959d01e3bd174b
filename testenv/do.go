package testenv

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread switched into the host's namespace and waits
// for it. Sockets created inside fn belong to the host for their lifetime,
// so they may be used from any goroutine after Do returns. fn must not start
// goroutines that create sockets (those run on other threads).
func (h *Host) Do(fn func() error) error {
	type result struct {
		err   error
		panic any
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: fmt.Errorf("testenv: current namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(h.ns); err != nil {
			ch <- result{err: fmt.Errorf("testenv: enter %s: %w", h.name, err)}
			return
		}
		var r result
		func() {
			defer func() { r.panic = recover() }()
			r.err = fn()
		}()
		// Only a thread back in its original namespace may run other
		// goroutines; if switching back fails the thread stays locked and
		// dies with this goroutine.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		ch <- r
	}()
	r := <-ch
	if r.panic != nil {
		panic(r.panic)
	}
	return r.err
}

// DialContext connects from inside the host.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Dial connects from inside the host.
func (h *Host) Dial(network, addr string) (net.Conn, error) {
	return h.DialContext(context.Background(), network, addr)
}

// Listen opens a listener inside the host.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the host.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// WaitDial dials network/addr from inside the host until a connection
// succeeds or timeout passes; use it to wait for a daemon to listen.
func (h *Host) WaitDial(network, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		c, err := h.DialContext(ctx, network, addr)
		cancel()
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testenv: %s: %s %s not reachable within %v: %w", h.label, network, addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
