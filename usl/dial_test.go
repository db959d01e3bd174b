package usl

import (
	"context"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestRedialAfterHostUnreachable: after a connect that the kernel failed
// with EHOSTUNREACH (address resolution gave up), the dialer tries again
// after ReconnectMin, not after its grown backoff; after other failures
// (here ECONNREFUSED) the backoff applies.
func TestRedialAfterHostUnreachable(t *testing.T) {
	for _, c := range []struct {
		errno    syscall.Errno
		min, max int // attempts in the window
	}{
		{syscall.EHOSTUNREACH, 25, 1 << 30},
		{syscall.ECONNREFUSED, 1, 15},
	} {
		t.Run(c.errno.Error(), func(t *testing.T) {
			ck, sk := newKeypair(t), newKeypair(t)
			ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
			ccfg.ReconnectMin, ccfg.ReconnectMax = 5*time.Millisecond, 100*time.Millisecond
			l, err := Listen("tcp", "127.0.0.1:0", scfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var (
				failing  atomic.Bool
				attempts atomic.Int64
				mu       sync.Mutex
				conns    []net.Conn
			)
			ccfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				if failing.Load() {
					attempts.Add(1)
					return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", c.errno)}
				}
				conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err == nil {
					mu.Lock()
					conns = append(conns, conn)
					mu.Unlock()
				}
				return conn, err
			}
			cl, err := Dial(context.Background(), l.Addr().String(), ccfg)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			waitFor(t, "dialer up", func() bool { return cl.Stats().State == Up })
			failing.Store(true)
			mu.Lock()
			for _, conn := range conns {
				conn.Close() // the path fails; the dialer redials into the errors
			}
			mu.Unlock()
			waitFor(t, "first failed redial", func() bool { return attempts.Load() > 0 })
			start := attempts.Load()
			time.Sleep(500 * time.Millisecond)
			n := int(attempts.Load() - start)
			t.Logf("%v: %d attempts in 500 ms", c.errno, n)
			if n < c.min || n > c.max {
				t.Fatalf("%v: %d attempts in 500 ms, want %d..%d", c.errno, n, c.min, c.max)
			}
		})
	}
}
