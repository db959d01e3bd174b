package testenv

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

// rtts measures n one-byte echo round trips from h to the echo server at
// addr over one TCP connection (Go sets TCP_NODELAY, so each is one
// network round trip), sorted.
func rtts(t *testing.T, h *Host, addr string, n int) []time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if err := roundTrip(c, []byte{'x'}, 2*time.Second); err != nil {
			t.Fatalf("round trip to %s: %v", addr, err)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out
}

func median(d []time.Duration) time.Duration { return d[len(d)/2] }

// wantRTT fails unless the median round trip to addr is within tol of want.
func wantRTT(t *testing.T, h *Host, addr string, want, tol time.Duration) []time.Duration {
	t.Helper()
	d := rtts(t, h, addr, 15)
	t.Logf("RTT to %s: median %v (min %v, max %v), want %v ± %v", addr, median(d), d[0], d[len(d)-1], want, tol)
	if m := median(d); m < want-tol || m > want+tol {
		t.Fatalf("median RTT to %s is %v, want %v ± %v", addr, m, want, tol)
	}
	return d
}

// echoOn starts an echo server on h at addr, for the test's lifetime.
func echoOn(t *testing.T, h *Host, addr string) {
	t.Helper()
	ln, err := h.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
}

// hasDelayRule reports whether packets arriving at e are queued for a delay.
func hasDelayRule(t *testing.T, e *End) bool { return hasRules(t, e, e.delayTableName()) }

func TestDelayAddsRTT(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	echoOn(t, b, "10.0.0.2:7400")
	echoOn(t, b, "[fd10::2]:7400")
	wantRTT(t, a, "10.0.0.2:7400", 0, 3*time.Millisecond)

	if err := l.Delay(20*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Delay(20*time.Millisecond, 0); err != nil { // idempotent
		t.Fatal(err)
	}
	wantRTT(t, a, "10.0.0.2:7400", 40*time.Millisecond, 5*time.Millisecond)
	wantRTT(t, a, "[fd10::2]:7400", 40*time.Millisecond, 5*time.Millisecond)

	// One direction only: packets into a stay delayed.
	if err := l.B.Delay(0, 0); err != nil {
		t.Fatal(err)
	}
	wantRTT(t, a, "10.0.0.2:7400", 20*time.Millisecond, 5*time.Millisecond)

	if err := l.Delay(0, 0); err != nil {
		t.Fatal(err)
	}
	wantRTT(t, a, "10.0.0.2:7400", 0, 3*time.Millisecond)
	for _, e := range []*End{l.A, l.B} {
		if hasDelayRule(t, e) || e.delay != nil {
			t.Fatalf("%s: delay left behind by Delay(0, 0)", e)
		}
	}
}

func TestDelayJitterSpreads(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	echoOn(t, b, "10.0.0.2:7401")
	if err := l.Delay(20*time.Millisecond, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// Each direction adds a delay uniform in 10..30 ms: a round trip is in
	// 20..60 ms, centred on 40.
	d := wantRTT(t, a, "10.0.0.2:7401", 40*time.Millisecond, 8*time.Millisecond)
	lo, hi := d[0], d[len(d)-1]
	if hi-lo < 8*time.Millisecond {
		t.Fatalf("RTTs %v..%v: spread %v, want at least 8 ms from ±10 ms jitter", lo, hi, hi-lo)
	}
	// Above 60 ms only by scheduling delays of a loaded machine.
	if lo < 19*time.Millisecond || hi > 75*time.Millisecond {
		t.Fatalf("RTTs %v..%v outside 20..60 ms", lo, hi)
	}
	// Heal removes it.
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	d = rtts(t, a, "10.0.0.2:7401", 15)
	if d[len(d)-1] > 5*time.Millisecond {
		t.Fatalf("after Heal: RTTs up to %v, want the undelayed link", d[len(d)-1])
	}
}

// TestDelayWithRateLimit: delay and rate hold together, in either order of
// setting, and removing each leaves the other in place.
func TestDelayWithRateLimit(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	echoOn(t, b, "10.0.0.2:7402")
	ln, err := b.Listen("tcp", "10.0.0.2:7403")
	if err != nil {
		t.Fatal(err)
	}
	srv := loadgen.NewServer(ln, nil)
	t.Cleanup(func() { srv.Close() })
	throughput := func() float64 {
		t.Helper()
		rep, err := loadgen.RunFor(context.Background(), loadgen.Config{
			Addr: "10.0.0.2:7403", Dial: a.DialContext, Duration: 2 * time.Second, Dirs: loadgen.Up,
		})
		if err != nil || !rep.Verified {
			t.Fatalf("%v\n%v", err, rep)
		}
		t.Logf("throughput %.1f Mbit/s", rep.BitsPerSec/1e6)
		return rep.BitsPerSec
	}
	wantRate := func(lo, hi float64) {
		t.Helper()
		if r := throughput(); r < lo || r > hi {
			t.Fatalf("throughput %.1f Mbit/s, want %.0f..%.0f", r/1e6, lo/1e6, hi/1e6)
		}
	}

	// Rate first, then delay .
	if err := l.RateLimit(40e6); err != nil {
		t.Fatal(err)
	}
	if err := l.Delay(10*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	wantRTT(t, a, "10.0.0.2:7402", 20*time.Millisecond, 5*time.Millisecond)
	wantRate(30e6, 44e6)
	wantRTT(t, a, "10.0.0.2:7402", 20*time.Millisecond, 5*time.Millisecond)

	// The rate goes, the delay stays.
	if err := l.RateLimit(0); err != nil {
		t.Fatal(err)
	}
	wantRTT(t, a, "10.0.0.2:7402", 20*time.Millisecond, 5*time.Millisecond)
	wantRate(160e6, 1e12)

	// The delay goes, the rate stays.
	if err := l.RateLimit(40e6); err != nil {
		t.Fatal(err)
	}
	if err := l.Delay(0, 0); err != nil {
		t.Fatal(err)
	}
	wantRTT(t, a, "10.0.0.2:7402", 0, 3*time.Millisecond)
	wantRate(30e6, 44e6)

	// Heal clears both.
	if err := l.Delay(10*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	wantRTT(t, a, "10.0.0.2:7402", 0, 3*time.Millisecond)
	wantRate(160e6, 1e12)
	for _, e := range []*End{l.A, l.B} {
		if hasDelayRule(t, e) {
			t.Fatalf("%s: delay table left behind by Heal", e)
		}
	}
}

// TestDelayComposesWithLoss: nftables loss acts on top of a delay.
func TestDelayComposesWithLoss(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	u, base := primedCounter(t, a, b, "10.0.0.2:7404")
	if err := l.Delay(50*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Loss(50); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	sendUDP(t, a, "10.0.0.2:7404", 0, n, 20)
	// Nothing has arrived yet 20 ms after the last send: all are delayed.
	time.Sleep(20 * time.Millisecond)
	early := u.count() - base
	time.Sleep(300 * time.Millisecond)
	got := u.count() - base
	t.Logf("delay 50 ms + loss 50%%: %d of %d arrived (%d within 20 ms of the last send)", got, n, early)
	if got < n*30/100 || got > n*70/100 {
		t.Fatalf("%d of %d arrived, want 30..70 %%", got, n)
	}
	if early >= got {
		t.Fatalf("all %d datagrams had arrived within 20 ms of the last send: not delayed", got)
	}
}

func TestDelayRejectsBadValues(t *testing.T) {
	requireRoot(t)
	rec := &errRecorder{TB: t}
	a, b := NewHost(t, "a"), NewHost(t, "b")
	l := Link(rec, a, b, "10.0.0.1/24", "10.0.0.2/24")
	for _, c := range []struct{ delay, jitter time.Duration }{
		{-time.Millisecond, 0},
		{10 * time.Millisecond, 11 * time.Millisecond},
		{10 * time.Millisecond, -time.Millisecond},
		{11 * time.Second, 0},
	} {
		if err := l.Delay(c.delay, c.jitter); err == nil {
			t.Errorf("Delay(%v, %v) succeeded", c.delay, c.jitter)
		}
	}
	if n := rec.count(); n != 4 {
		t.Fatalf("%d errors reported through the TB, want 4", n)
	}
	if hasDelayRule(t, l.A) || hasDelayRule(t, l.B) {
		t.Fatal("a rejected Delay left a delay table")
	}
}

// primedCounter starts a UDP counter on to at addr, and sends it a few
// datagrams from from first, so the neighbour entry exists before a fault
// or delay (otherwise datagrams wait in the neighbour queue, which
// overflows); base is how many of those arrived.
func primedCounter(t *testing.T, from, to *Host, addr string) (u *udpCounter, base int) {
	t.Helper()
	u = newUDPCounter(t, to, addr)
	sendUDP(t, from, addr, 100000, 10, 10)
	settle()
	return u, u.count()
}

// errRecorder counts Errorf calls instead of failing the test, for faults
// that are meant to fail.
type errRecorder struct {
	TB
	mu   sync.Mutex
	errs []string
}

func (r *errRecorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
	r.TB.Logf("(expected) "+format, args...)
}

func (r *errRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs)
}

// TestMultiLinkEachLinkOwnRTT: two links with different delays between the
// same hosts; traffic to each link's addresses measures that link.
func TestMultiLinkEachLinkOwnRTT(t *testing.T) {
	requireRoot(t)
	m := NewMultiLink(t, 2)
	if len(m.AB) != 2 || m.AB[0].A.Name == m.AB[1].A.Name {
		t.Fatalf("links %v", m.AB)
	}
	echoOn(t, m.B, ":7405")
	if err := m.AB[0].Delay(5*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.AB[1].Delay(25*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	for i, want := range []time.Duration{10 * time.Millisecond, 50 * time.Millisecond} {
		for _, ip := range []string{m.AB[i].B.IP().String(), m.AB[i].B.IP6().String()} {
			wantRTT(t, m.A, net.JoinHostPort(ip, "7405"), want, 5*time.Millisecond)
		}
	}
	// A blackhole on one link leaves the other working.
	if err := m.AB[0].Blackhole(); err != nil {
		t.Fatal(err)
	}
	if err := m.A.WaitDial("tcp", net.JoinHostPort(m.AB[0].B.IP().String(), "7405"), 300*time.Millisecond); err == nil {
		t.Fatal("dial across the blackholed link succeeded")
	}
	wantRTT(t, m.A, net.JoinHostPort(m.AB[1].B.IP().String(), "7405"), 50*time.Millisecond, 5*time.Millisecond)
	if err := m.AB[0].Heal(); err != nil {
		t.Fatal(err)
	}
	// C, behind B, is reachable from A over the first link, both families.
	echoOn(t, m.C, ":7406")
	wantRTT(t, m.A, "10.100.0.2:7406", 0, 3*time.Millisecond)
	wantRTT(t, m.A, "[fd00:100::2]:7406", 0, 3*time.Millisecond)
}

// TestDelayRemovalLosesNothing: removing a delay under traffic lets every
// held and queued packet through.
func TestDelayRemovalLosesNothing(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	u, base := primedCounter(t, a, b, "10.0.0.2:7407")
	if err := l.Delay(30*time.Millisecond, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	sent := make(chan int, 1)
	go func() { sent <- sendUDP(t, a, "10.0.0.2:7407", 0, n, 10) }()
	time.Sleep(100 * time.Millisecond)
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	if s := <-sent; s != n {
		t.Fatalf("the kernel took %d of %d datagrams", s, n)
	}
	settle()
	if got := u.count() - base; got != n {
		t.Fatalf("%d of %d datagrams arrived across a delay removed mid-stream", got, n)
	}
}

// TestFaultsOnOneLinkSpareAnothersDelay: faults set and healed on link 1
// while link 2 delays a stream lose nothing on link 2. (Removing any
// netfilter hook of a namespace drops every packet its queues hold, so the
// lab must never remove one while a delay line runs.)
func TestFaultsOnOneLinkSpareAnothersDelay(t *testing.T) {
	requireRoot(t)
	m := NewMultiLink(t, 2)
	u, base := primedCounter(t, m.A, m.B, "10.2.0.2:7408")
	if err := m.AB[1].Delay(30*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	sent := make(chan int, 1)
	go func() { sent <- sendUDP(t, m.A, "10.2.0.2:7408", 0, n, 10) }()
	for _, fault := range []func() error{
		m.AB[0].Blackhole, func() error { return m.AB[0].Loss(10) }, m.AB[0].Heal,
		func() error { return m.AB[0].Delay(time.Millisecond, 0) }, m.AB[0].Heal,
	} {
		time.Sleep(20 * time.Millisecond)
		if err := fault(); err != nil {
			t.Fatal(err)
		}
	}
	if s := <-sent; s != n {
		t.Fatalf("the kernel took %d of %d datagrams", s, n)
	}
	time.Sleep(100 * time.Millisecond)
	if got := u.count() - base; got != n {
		t.Fatalf("%d of %d datagrams arrived over link 2 while link 1 was faulted and healed", got, n)
	}
}
