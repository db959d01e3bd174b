package usl

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// timedLog records log messages with their time.
type timedLog struct {
	mu    sync.Mutex
	lines []string
	times []time.Time
}

func (r *timedLog) Enabled(context.Context, slog.Level) bool { return true }
func (r *timedLog) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.lines = append(r.lines, rec.Message)
	r.times = append(r.times, rec.Time)
	r.mu.Unlock()
	return nil
}
func (r *timedLog) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *timedLog) WithGroup(string) slog.Handler      { return r }

// TestStarvation floods the listener with 2,000 silent or garbage
// connections per second, half from 250 IPv4 sources (127.0.0.2-251) and
// half from random addresses of one IPv6 /64, for 20 s, inside a network
// namespace the test makes. Meanwhile the real dialer's path is reset
// every 2 s: it must be back up within 1 s each time, its flow must
// arrive intact, no flood connection may get a byte back, and the
// listener may log at most one rejection line per interval. The listener
// runs with the library defaults except the log interval (2 s, so 20 s
// show the spacing).
func TestStarvation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	dur := 20 * time.Second
	if testing.Short() {
		dur = 6 * time.Second
	}
	h := testenv.NewHost(t, "starve")
	if err := h.Sysctl("net.ipv6.ip_nonlocal_bind", "1"); err != nil {
		t.Fatal(err)
	}
	v6net := netip.MustParsePrefix("fd00::/64")
	err := h.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr("fd00::1/128")
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(lo, addr); err != nil {
			return fmt.Errorf("add fd00::1: %w", err)
		}
		// The whole /64 is local, so the flood can use any address in it.
		return netlink.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: prefixIPNet(v6net),
			Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST})
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := h.Listen("tcp", "[::]:9100")
	if err != nil {
		t.Fatal(err)
	}
	ck, sk := newKeypair(t), newKeypair(t)
	logs := &timedLog{}
	const interval = 2 * time.Second
	l, err := NewListener(ln, Config{PrivateKey: sk.priv, PeerKeys: []PublicKey{ck.pub},
		RejectLogInterval: interval, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	var cur atomic.Pointer[net.TCPConn]
	c, err := Dial(context.Background(), "127.0.0.1:9100", Config{PrivateKey: ck.priv, PeerKeys: []PublicKey{sk.pub},
		Logger: testLogger(t),
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := h.DialContext(ctx, network, addr)
			if tc, ok := conn.(*net.TCPConn); ok {
				cur.Store(tc)
			}
			return conn, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := acceptSession(t, l)
	a, b := openPair(t, c, s, "through-the-flood")
	flow := startPacedFlow(a, b, 8<<10, 5*time.Millisecond)

	ns, err := netns.GetFromPath(h.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	fl := startFlood(t, ns, v6net, 2000, dur)

	var recon []time.Duration
	end := time.Now().Add(dur)
	for time.Now().Add(2*time.Second).Before(end) || len(recon) == 0 {
		time.Sleep(2 * time.Second)
		before := c.Stats().Reconnects
		t0 := time.Now()
		if tc := cur.Load(); tc != nil {
			tc.SetLinger(0) // an RST, as a middlebox's reset
			tc.Close()
		}
		deadline := t0.Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if st := c.Stats(); st.Reconnects > before && st.State == Up {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		d := time.Since(t0)
		recon = append(recon, d)
		if d > time.Second {
			t.Errorf("reset %d: back up after %v (last error %s)", len(recon), d, c.Stats().LastError)
		}
	}
	stats := fl.wait()
	flow.wait(t)

	var longest time.Duration
	for _, d := range recon {
		longest = max(longest, d)
	}
	t.Logf("flood: %d connections in %v (%.0f/s), %d refused by the kernel; %d bytes answered", stats.dialed, dur,
		float64(stats.dialed)/dur.Seconds(), stats.dialErrs, stats.answered)
	t.Logf("%d path resets, reconnect times %v (longest %v)", len(recon), recon, longest)
	if stats.answered != 0 {
		t.Errorf("flood connections got %d bytes back", stats.answered)
	}
	if float64(stats.dialed) < 0.75*2000*dur.Seconds() {
		t.Errorf("the flood reached only %d connections", stats.dialed)
	}
	time.Sleep(interval + 200*time.Millisecond) // the last window's line
	logs.mu.Lock()
	var prev time.Time
	n := 0
	for i, m := range logs.lines {
		if !strings.HasPrefix(m, "rejected ") {
			continue
		}
		n++
		if n <= 3 {
			t.Log(m)
		}
		if !prev.IsZero() && logs.times[i].Sub(prev) < interval-100*time.Millisecond {
			t.Errorf("two rejection lines %v apart, interval %v", logs.times[i].Sub(prev), interval)
		}
		prev = logs.times[i]
	}
	logs.mu.Unlock()
	if max := int(dur/interval) + 2; n == 0 || n > max {
		t.Errorf("%d rejection lines in %v, want 1..%d", n, dur, max)
	}
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

type floodStats struct {
	dialed, dialErrs int
	answered         int64
}

type flood struct {
	done  chan floodStats
	stats floodStats
}

// startFlood opens rate connections per second for dur from inside ns:
// even ones from 127.0.0.2-251 to 127.0.0.1, odd ones from a random
// address of v6 to fd00::1. Half say nothing, half send up to 300 random
// bytes; each is held until the listener hangs up (at most 3 s).
func startFlood(t *testing.T, ns netns.NsHandle, v6 netip.Prefix, rate int, dur time.Duration) *flood {
	jobs := make(chan int, rate)
	f := &flood{done: make(chan floodStats, 1)}
	var mu sync.Mutex
	var answered atomic.Int64
	var holders sync.WaitGroup
	var workers sync.WaitGroup
	const nworkers = 8
	for w := range nworkers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			// Sockets are created in the namespace by this locked
			// thread; the thread is never handed back (it dies with the
			// goroutine), so no other goroutine runs in the namespace.
			runtime.LockOSThread()
			if err := netns.Set(ns); err != nil {
				t.Errorf("flood worker: %v", err)
				return
			}
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range jobs {
				var local net.Addr
				raddr := "127.0.0.1:9100"
				if i%2 == 0 {
					local = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i/2%250))}
				} else {
					ip := v6.Addr().As16()
					for k := 8; k < 16; k++ {
						ip[k] = byte(rng.Uint32())
					}
					local = &net.TCPAddr{IP: ip[:]}
					raddr = "[fd00::1]:9100"
				}
				d := net.Dialer{LocalAddr: local, Timeout: time.Second}
				conn, err := d.Dial("tcp", raddr)
				mu.Lock()
				if err != nil {
					f.stats.dialErrs++
				} else {
					f.stats.dialed++
				}
				mu.Unlock()
				if err != nil {
					continue
				}
				var junk []byte
				if i%4 >= 2 {
					junk = make([]byte, rng.IntN(300))
					for k := range junk {
						junk[k] = byte(rng.Uint32())
					}
				}
				holders.Add(1)
				go func() {
					defer holders.Done()
					defer conn.Close()
					conn.SetDeadline(time.Now().Add(3 * time.Second))
					if len(junk) > 0 {
						conn.Write(junk)
					}
					n, _ := io.Copy(io.Discard, conn)
					answered.Add(n)
				}()
			}
		}()
	}
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		per := rate / 200
		end := time.Now().Add(dur)
		for i := 0; time.Now().Before(end); {
			for range per {
				select {
				case jobs <- i:
				default: // the workers are behind: this one is skipped
				}
				i++
			}
			<-tick.C
		}
		close(jobs)
		workers.Wait()
		holders.Wait()
		mu.Lock()
		st := f.stats
		mu.Unlock()
		st.answered = answered.Load()
		f.done <- st
	}()
	return f
}

func (f *flood) wait() floodStats { return <-f.done }
