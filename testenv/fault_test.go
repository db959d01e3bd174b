package testenv

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

// udpCounter receives numbered datagrams on b and records when each
// arrived, so tests can count losses and find silent stretches.
type udpCounter struct {
	pc   net.PacketConn
	mu   sync.Mutex
	seen map[uint32]time.Time
}

func newUDPCounter(t *testing.T, h *Host, addr string) *udpCounter {
	t.Helper()
	pc, err := h.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u := &udpCounter{pc: pc, seen: map[uint32]time.Time{}}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 4 {
				u.mu.Lock()
				u.seen[binary.BigEndian.Uint32(buf)] = time.Now()
				u.mu.Unlock()
			}
		}
	}()
	return u
}

func (u *udpCounter) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.seen)
}

// sendUDP sends n numbered datagrams from h to addr, perMs of them per
// millisecond, and returns how many the kernel accepted (without a route,
// none are).
func sendUDP(t *testing.T, h *Host, addr string, first uint32, n, perMs int) int {
	t.Helper()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := h.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var msg [16]byte
	sent := 0
	for i := range n {
		binary.BigEndian.PutUint32(msg[:], first+uint32(i))
		if _, err := pc.WriteTo(msg[:], dst); err == nil {
			sent++
		}
		if (i+1)%perMs == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	return sent
}

// settle gives the receiver a moment to drain after the last datagram.
func settle() { time.Sleep(100 * time.Millisecond) }

func TestLoss50DropsAboutHalf(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	u := newUDPCounter(t, b, "10.0.0.2:7100")
	// Resolve the neighbour first: with ARP itself lossy, datagrams would
	// wait in the neighbour queue, block the sender and overflow.
	sendUDP(t, a, "10.0.0.2:7100", 100000, 10, 10)
	settle()
	base := u.count()
	const n = 2000
	if err := l.Loss(50); err != nil {
		t.Fatal(err)
	}
	if err := l.Loss(50); err != nil { // idempotent
		t.Fatal(err)
	}
	sendUDP(t, a, "10.0.0.2:7100", 0, n, 20)
	settle()
	got := u.count() - base
	t.Logf("Loss(50): %d of %d datagrams arrived", got, n)
	if got < n*30/100 || got > n*70/100 {
		t.Fatalf("%d of %d arrived, want 30..70 %%", got, n)
	}
	if err := l.Loss(0); err != nil {
		t.Fatal(err)
	}
	sendUDP(t, a, "10.0.0.2:7100", n, 500, 20)
	settle()
	if after := u.count() - got - base; after != 500 {
		t.Fatalf("after Loss(0): %d of 500 arrived", after)
	}
}

func TestDownStopsTrafficAndUpRestoresRoutes(t *testing.T) {
	requireRoot(t)
	// a — gw — b: the route on a to b's subnet goes through the link that
	// goes down, so Up must put it back.
	a, gw, b := NewHost(t, "a"), NewHost(t, "gw"), NewHost(t, "b")
	l := Link(t, a, gw, "10.1.0.1/24", "10.1.0.254/24")
	Link(t, gw, b, "10.2.0.254/24", "10.2.0.1/24")
	gw.EnableForwarding()
	a.AddRoute("10.2.0.0/24", "10.1.0.254")
	b.AddRoute("default", "10.2.0.254")

	u := newUDPCounter(t, b, "10.2.0.1:7101")
	sendUDP(t, a, "10.2.0.1:7101", 0, 50, 10)
	settle()
	if got := u.count(); got != 50 {
		t.Fatalf("healthy routed link: %d of 50 arrived", got)
	}
	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	if err := l.Down(); err != nil { // idempotent
		t.Fatal(err)
	}
	sendUDP(t, a, "10.2.0.1:7101", 1000, 50, 10)
	settle()
	if got := u.count(); got != 50 {
		t.Fatalf("link down: %d datagrams got through", got-50)
	}
	if err := l.Up(); err != nil {
		t.Fatal(err)
	}
	if l.HealedAt().IsZero() {
		t.Fatal("Up did not record a heal time")
	}
	sendUDP(t, a, "10.2.0.1:7101", 2000, 50, 10)
	settle()
	if got := u.count(); got != 100 {
		t.Fatalf("after Up: %d of 50 arrived (route not restored?)", got-50)
	}
}

func TestFlapStopsTrafficHalfTheTime(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	u := newUDPCounter(t, b, "10.0.0.2:7102")
	sendUDP(t, a, "10.0.0.2:7102", 100000, 10, 10) // resolve the neighbour first
	settle()
	var ups atomic.Int32
	l.OnHeal(func(time.Time) { ups.Add(1) })
	const period, duration = 100 * time.Millisecond, 1200 * time.Millisecond
	flapDone := make(chan error, 1)
	go func() { flapDone <- l.Flap(period, duration) }()
	// One datagram a millisecond for exactly as long as the flapping lasts
	// (bounded by 10 times the count it should take), so a loaded machine
	// that sends slowly still sends across the same down and up halves.
	dst, err := net.ResolveUDPAddr("udp", "10.0.0.2:7102")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := a.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var msg [16]byte
	n, start := 0, time.Now()
	var flapErr error
send:
	for n < 10*int(duration/time.Millisecond) {
		select {
		case flapErr = <-flapDone:
			break send
		default:
		}
		binary.BigEndian.PutUint32(msg[:], uint32(n))
		pc.WriteTo(msg[:], dst) // a write may fail while the link is down
		n++
		time.Sleep(time.Millisecond)
	}
	if flapErr != nil {
		t.Fatal(flapErr)
	}
	settle()
	// Which of the numbered datagrams arrived: runs of them separated by
	// the down halves.
	u.mu.Lock()
	got, runs, prev := 0, 0, false
	for i := range n {
		_, ok := u.seen[uint32(i)]
		if ok {
			got++
			if !prev {
				runs++
			}
		}
		prev = ok
	}
	u.mu.Unlock()
	t.Logf("flap: %d of %d datagrams arrived in %d runs, %d ups, %v", got, n, runs, ups.Load(), time.Since(start))
	if got < n*20/100 || got > n*80/100 {
		t.Fatalf("%d of %d datagrams arrived during flapping, want about half", got, n)
	}
	if runs < 3 {
		t.Fatalf("datagrams arrived in %d runs, want one per up half (about %d)", runs, duration/(2*period))
	}
	if ups.Load() < 3 {
		t.Fatalf("%d up transitions, want about %d", ups.Load(), duration/(2*period))
	}
	// The link ends up.
	before := u.count()
	sendUDP(t, a, "10.0.0.2:7102", 200000, 20, 10)
	settle()
	if u.count() != before+20 {
		t.Fatal("link not usable after Flap")
	}
}

func TestBlackholeStallsThenContinues(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	ln, err := b.Listen("tcp", "10.0.0.2:7103")
	if err != nil {
		t.Fatal(err)
	}
	srv := loadgen.NewServer(ln, nil)
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run, err := loadgen.Start(ctx, loadgen.Config{
		Addr: "10.0.0.2:7103", Dial: a.DialContext, Flows: 2, Duration: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	l.OnHeal(run.MarkHeal)
	time.Sleep(time.Second)
	if err := l.Blackhole(); err != nil {
		t.Fatal(err)
	}
	// What was already in socket buffers drains first; after that nothing
	// may arrive.
	time.Sleep(500 * time.Millisecond)
	mid := run.Progress()
	time.Sleep(time.Second)
	if p := run.Progress(); p.Received != mid.Received {
		t.Fatalf("%d bytes arrived during the blackhole", p.Received-mid.Received)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	rep, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	if !rep.Verified || len(rep.Errors) != 0 {
		t.Fatalf("plain TCP must survive a 3 s blackhole with identical bytes and no error:\n%s", rep)
	}
	if rep.LongestStall < 2500*time.Millisecond {
		t.Fatalf("longest stall %v, want about 3 s: the blackhole did not stop traffic", rep.LongestStall)
	}
	rc := rep.MaxRecovery()
	if len(rep.Recoveries) != 1 || rc <= 0 || rc > 8*time.Second {
		t.Fatalf("recovery %v (%d heals), want a positive delay of at most one backed-off RTO", rc, len(rep.Recoveries))
	}
}

func TestChangeAddressBreaksConnection(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	ln, err := b.Listen("tcp", "10.0.0.2:7104")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	c, err := a.Dial("tcp", "10.0.0.2:7104")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("before"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := ChangeAddress(a, l, "10.0.0.77/24"); err != nil {
		t.Fatal(err)
	}
	if got := l.A.IP().String(); got != "10.0.0.77" {
		t.Fatalf("address after move: %s", got)
	}
	if err := roundTrip(c, []byte("after"), 1500*time.Millisecond); err == nil {
		t.Fatal("connection from the old address still works after ChangeAddress")
	} else {
		t.Logf("old connection after the move: %v", err)
	}
	c2, err := a.Dial("tcp", "10.0.0.2:7104")
	if err != nil {
		t.Fatalf("dial from the new address: %v", err)
	}
	defer c2.Close()
	if src := c2.LocalAddr().(*net.TCPAddr).IP.String(); src != "10.0.0.77" {
		t.Fatalf("new connection from %s, want 10.0.0.77", src)
	}
	if err := roundTrip(c2, []byte("new"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestRateLimit(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	ln, err := b.Listen("tcp", "10.0.0.2:7105")
	if err != nil {
		t.Fatal(err)
	}
	srv := loadgen.NewServer(ln, nil)
	t.Cleanup(func() { srv.Close() })
	measure := func() float64 {
		rep, err := loadgen.RunFor(context.Background(), loadgen.Config{
			Addr: "10.0.0.2:7105", Dial: a.DialContext, Duration: time.Second, Dirs: loadgen.Up,
		})
		if err != nil || !rep.Verified {
			t.Fatalf("%v\n%v", err, rep)
		}
		return rep.BitsPerSec
	}
	if err := l.RateLimit(40e6); err != nil {
		t.Fatal(err)
	}
	if err := l.RateLimit(40e6); err != nil { // idempotent
		t.Fatal(err)
	}
	limited := measure()
	if err := l.RateLimit(0); err != nil {
		t.Fatal(err)
	}
	free := measure()
	t.Logf("rate limited to 40 Mbit/s: %.1f Mbit/s; unlimited: %.1f Mbit/s", limited/1e6, free/1e6)
	if limited < 20e6 || limited > 48e6 {
		t.Fatalf("limited rate %.1f Mbit/s, want about 40", limited/1e6)
	}
	if free < 4*limited {
		t.Fatalf("unlimited rate %.1f Mbit/s is not clearly above the limit", free/1e6)
	}
}

func TestResetTCPBothEndsSeeReset(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	sides, rep := sidesReset(t, a, b, l, "[fd10::2]:7106", 3*time.Second, "ECONNRESET", "EPIPE")
	if !sides["client"] || !sides["server"] {
		t.Fatalf("want ECONNRESET at client and server (IPv6), got:\n%s", rep)
	}
}

// TestResetTCPRouted: the reset works for forwarded traffic too (the plain
// TCP baseline of the demo: a—gw—c with the fault on a—gw).
func TestResetTCPRouted(t *testing.T) {
	requireRoot(t)
	a, gw, c := NewHost(t, "a"), NewHost(t, "gw"), NewHost(t, "c")
	l := Link(t, a, gw, "10.1.0.1/24", "10.1.0.254/24")
	Link(t, gw, c, "10.2.0.254/24", "10.2.0.1/24")
	gw.EnableForwarding()
	a.AddRoute("10.2.0.0/24", "10.1.0.254")
	c.AddRoute("default", "10.2.0.254")
	sides, rep := sidesReset(t, a, c, l, "10.2.0.1:7107", 2*time.Second, "ECONNRESET")
	if !sides["client"] || !sides["server"] {
		t.Fatalf("want ECONNRESET at both ends of the routed connection, got:\n%s", rep)
	}
}

// sidesReset streams loadgen traffic for d from a client on from to a
// server on to at addr, turns on ResetTCP for addr's port on l for 300 ms,
// and returns the sides ("client", "server") that saw one of errnos, with
// the report for failure messages.
func sidesReset(t *testing.T, from, to *Host, l *LinkPair, addr string, d time.Duration, errnos ...string) (map[string]bool, *loadgen.Report) {
	t.Helper()
	ln, err := to.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := loadgen.NewServer(ln, nil)
	t.Cleanup(func() { srv.Close() })
	run, err := loadgen.Start(context.Background(), loadgen.Config{
		Addr: addr, Dial: from.DialContext, Duration: d, ReportWait: 3 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	time.Sleep(300 * time.Millisecond)
	if err := l.ResetTCP(port); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	rep, err := run.Wait()
	if err != nil {
		t.Fatal(err)
	}
	sides := map[string]bool{}
	for _, e := range rep.Errors {
		if slices.Contains(errnos, e.Errno) {
			sides[e.Side] = true
		}
	}
	return sides, rep
}
