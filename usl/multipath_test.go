package usl

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// mpLab is a listener reached over two in-memory links, "a" and "b",
// each a faultNet of its own, and a session dialed over both.
type mpLab struct {
	nets   map[string]*faultNet
	l      *Listener
	client *Session
	server *Session
}

func newMPLab(t *testing.T, sched Scheduler) *mpLab {
	t.Helper()
	ck, sk := newKeypair(t), newKeypair(t)
	lab := &mpLab{nets: map[string]*faultNet{"a": newFaultNet(1), "b": newFaultNet(2)}}
	ml := lab.nets["a"].listen()
	lab.nets["b"].mu.Lock()
	lab.nets["b"].ln = ml
	lab.nets["b"].mu.Unlock()
	// Production liveness timers: what is measured here is reinjection,
	// which must beat the 2 s dead interval by far.
	cfg := func(self keypair, peer PublicKey) Config {
		return Config{PrivateKey: self.priv, PeerKeys: []PublicKey{peer}, Scheduler: sched,
			ReconnectMin: 5 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
			HandshakeRate: 1000, Logger: testLogger(t)}
	}
	scfg := cfg(sk, ck.pub)
	l, err := NewListener(ml, scfg)
	if err != nil {
		t.Fatal(err)
	}
	lab.l = l
	ccfg := cfg(ck, sk.pub)
	ccfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return lab.nets[addr].Dial(ctx, network, addr)
	}
	c, err := DialPaths(context.Background(), []Endpoint{{Addr: "a"}, {Addr: "b"}}, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	lab.client = c
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lab.server, err = l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		l.Close()
		for _, n := range lab.nets {
			n.close()
		}
	})
	waitFor(t, "two paths on both sides", func() bool {
		return livePaths(c) == 2 && livePaths(lab.server) == 2
	})
	return lab
}

func livePaths(s *Session) int {
	n := 0
	for _, p := range s.Stats().Paths {
		if p.State != PathDead {
			n++
		}
	}
	return n
}

func (lab *mpLab) blackhole(name string, on bool) {
	n := lab.nets[name]
	n.mu.Lock()
	links := append([]*link(nil), n.links...)
	n.down = on
	n.mu.Unlock()
	for _, l := range links {
		l.mu.Lock()
		l.blackholed = on
		l.mu.Unlock()
	}
}

// rr runs request/response round trips of 64 bytes on st (echoed by the
// peer's stream) every interval until stop, and returns the worst latency.
func rr(t *testing.T, a, b *Stream, interval time.Duration, stop <-chan struct{}) (worst time.Duration, n int, err error) {
	go func() { io.Copy(b, b) }()
	req, resp := make([]byte, 64), make([]byte, 64)
	tk := time.NewTicker(interval)
	defer tk.Stop()
	for i := 0; i < 100000; i++ {
		select {
		case <-stop:
			return worst, n, nil
		case <-tk.C:
		}
		req[0] = byte(i)
		start := time.Now()
		if _, err := a.Write(req); err != nil {
			return worst, n, err
		}
		if _, err := io.ReadFull(a, resp); err != nil {
			return worst, n, err
		}
		if resp[0] != byte(i) {
			return worst, n, errors.New("rr: response out of order")
		}
		worst = max(worst, time.Since(start))
		n++
	}
	return worst, n, nil
}

// bulk sends n verified bytes from a to b and reports the hashes and the
// longest gap between reads.
func bulk(t *testing.T, a, b *Stream, n int) (gap time.Duration, err error) {
	var wg sync.WaitGroup
	var sum [32]byte
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		sum, werr = writePattern(a, 7, n, 16<<10)
		a.CloseWrite()
	}()
	h, got, gap, rerr := readTimed(b)
	wg.Wait()
	switch {
	case werr != nil:
		return gap, werr
	case rerr != nil:
		return gap, rerr
	case got != int64(n) || h != sum:
		return gap, errors.New("bulk: bytes differ")
	}
	return gap, nil
}

func TestMultipathMirrorBlackhole(t *testing.T) {
	lab := newMPLab(t, Mirror{})
	ra, rb := openPair(t, lab.client, lab.server, "rr")
	ba, bb := openPair(t, lab.client, lab.server, "bulk")
	stop := make(chan struct{})
	type res struct {
		worst time.Duration
		n     int
		err   error
	}
	rrc := make(chan res, 1)
	go func() { w, n, err := rr(t, ra, rb, 20*time.Millisecond, stop); rrc <- res{w, n, err} }()
	bc := make(chan error, 1)
	var gap time.Duration
	go func() {
		var err error
		gap, err = bulk(t, ba, bb, 24<<20)
		bc <- err
	}()
	time.Sleep(300 * time.Millisecond)
	firstA := lab.client.Stats().Paths[0].ID
	lab.blackhole("a", true)
	time.Sleep(time.Second)
	lab.blackhole("a", false)
	// The blackholed connection stays dead (as a real one whose peer's
	// state timed out): wait for the redialed path a.
	waitFor(t, "path a redialed", func() bool {
		ps := lab.client.Stats().Paths
		return len(ps) == 2 && ps[0].State == PathUp && ps[0].ID != firstA && ps[0].ID>>24 == 1
	})
	lab.blackhole("b", true)
	time.Sleep(time.Second)
	lab.blackhole("b", false)
	if err := <-bc; err != nil {
		t.Fatal(err)
	}
	close(stop)
	r := <-rrc
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("mirror, each link blackholed 1 s in turn: rr worst %v over %d round trips; bulk longest read gap %v", r.worst, r.n, gap)
	if r.worst > 150*time.Millisecond && !raceEnabled {
		t.Errorf("rr worst latency %v with one link always up", r.worst)
	}
}

func TestMultipathFailoverReinjects(t *testing.T) {
	for _, sc := range []Scheduler{Failover{}, LowRTT{}, Balance{}, Hedge{}} {
		t.Run(sc.Name(), func(t *testing.T) {
			lab := newMPLab(t, sc)
			ra, rb := openPair(t, lab.client, lab.server, "rr")
			stop := make(chan struct{})
			type res struct {
				worst time.Duration
				err   error
			}
			rrc := make(chan res, 1)
			go func() { w, _, err := rr(t, ra, rb, 10*time.Millisecond, stop); rrc <- res{w, err} }()
			time.Sleep(300 * time.Millisecond)
			// Cut the path the client prefers (a: the first endpoint).
			cut := time.Now()
			lab.blackhole("a", true)
			time.Sleep(1500 * time.Millisecond)
			close(stop)
			r := <-rrc
			if r.err != nil {
				t.Fatal(r.err)
			}
			t.Logf("%s: link a blackholed at %v: rr worst %v", sc.Name(), cut.Format("15:04:05.000"), r.worst)
			if r.worst > 500*time.Millisecond && !raceEnabled {
				t.Errorf("%s: rr stalled %v after the cut: reinjection should beat the dead interval", sc.Name(), r.worst)
			}
			var reinj uint64
			for _, p := range lab.client.Stats().Paths {
				reinj += p.Reinjected
			}
			for _, p := range lab.server.Stats().Paths {
				reinj += p.Reinjected
			}
			if sc.Name() != "mirror" && reinj == 0 {
				t.Logf("%s: nothing reinjected (the cut hit between round trips)", sc.Name())
			}
		})
	}
}

// TestMultipathNoHeadOfLine: a stream frame that arrives past a gap (its
// session seq's predecessor, another stream's frame, is still on a slow
// path) is delivered at once; the other stream waits for its own frame
// only.
func TestMultipathNoHeadOfLine(t *testing.T) {
	p, s, st1, _ := rawWithStream(t, nil)
	p.add(frameOpen, 3, nil)
	p.flush()
	var st3 *Stream
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st3, err := s.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st3.Accept()
	// Hold back stream 1's frame: give it seq N, stream 3's frame N+1,
	// send N+1 first.
	seq := p.seq
	p.seq = seq + 1
	p.add(frameData, 3, []byte("three")) // seq N+1
	p.flush()
	buf := make([]byte, 5)
	st3.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(st3, buf); err != nil || string(buf) != "three" {
		t.Fatalf("stream 3 waited behind stream 1's missing frame: %q %v", buf, err)
	}
	st1.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := st1.Read(buf); n != 0 || err == nil {
		t.Fatalf("stream 1 read %d bytes before its frame arrived", n)
	}
	s.mu.Lock()
	gaps := len(s.recvRanges)
	s.mu.Unlock()
	if gaps != 1 {
		t.Fatalf("%d ranges held past the gap, want 1", gaps)
	}
	end := p.seq
	p.seq = seq
	p.add(frameData, 1, []byte("one..")) // seq N
	// A copy of N+1 (as mirror sends) is dropped as a duplicate.
	p.sseq[3]--
	p.add(frameData, 3, []byte("three"))
	p.seq = end
	p.flush()
	st1.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(st1, buf); err != nil || string(buf) != "one.." {
		t.Fatalf("stream 1: %q %v", buf, err)
	}
	waitFor(t, "the gap closed", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.recvRanges) == 0 && s.recvSeq == end && s.reorderMem == 0
	})
	if e := s.Stats().LastError; strings.Contains(e, "protocol") {
		t.Fatal(e)
	}
}

// secondOnly is the worked example of docs/design.md: a scheduler of our
// own that keeps everything on the second path (Preference 1) while it is
// up and falls back to the shipped Failover otherwise.
type secondOnly struct{}

func (secondOnly) Name() string { return "second-only" }

func (secondOnly) Pick(f *Frame, paths []PathInfo) PathSet {
	for i, p := range paths {
		if p.Preference == 1 && p.State == PathUp {
			return PathSet(0).With(i)
		}
	}
	return Failover{}.Pick(f, paths)
}

// TestSchedulerExtension: a scheduler written outside the shipped set
// decides, per stream (SetScheduler) and without loss when a stream moves
// to it mid-transfer.
func TestSchedulerExtension(t *testing.T) {
	lab := newMPLab(t, Failover{})
	a, b := openPair(t, lab.client, lab.server, "bulk")
	sent := func() (first, second uint64) {
		for _, p := range lab.client.Stats().Paths {
			switch p.ID >> 24 {
			case 1:
				first = p.BytesSent
			case 2:
				second = p.BytesSent
			}
		}
		return
	}
	done := make(chan error, 1)
	go func() {
		_, err := bulk(t, a, b, 16<<20)
		done <- err
	}()
	waitFor(t, "some bytes on the first path", func() bool { f, _ := sent(); return f > 1<<20 })
	a.SetScheduler(secondOnly{}, "mine")
	f0, s0 := sent()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f1, s1 := sent()
	t.Logf("after the switch: first path +%d bytes, second +%d", f1-f0, s1-s0)
	if s1-s0 < 4<<20 || f1-f0 > (s1-s0)/4 {
		t.Errorf("after SetScheduler(secondOnly) the first path sent %d and the second %d bytes", f1-f0, s1-s0)
	}
	if name, class := a.Scheduler(); name != "second-only" || class != "mine" {
		t.Errorf("Scheduler() = %q, %q", name, class)
	}
}

// TestMultipathBlockedPathHoldsNoBuffers: a path whose writer sits in a
// Write on a blackholed connection must not keep the session's acked
// replay buffers out of the pool. A writer pins the buffers it seals
// from only while sealing, and unpins before its Write (path.writeLoop);
// were the pin held across the Write, every buffer the live path gets
// acked would wait in s.deferred for the whole blackhole: the session's
// memory would grow by its throughput.
func TestMultipathBlockedPathHoldsNoBuffers(t *testing.T) {
	lab := newMPLab(t, Mirror{})
	ba, bb := openPair(t, lab.client, lab.server, "bulk")
	bc := make(chan error, 1)
	go func() {
		_, err := bulk(t, ba, bb, 64<<20)
		bc <- err
	}()
	time.Sleep(200 * time.Millisecond)
	lab.blackhole("a", true)
	// Shorter than the 2 s dead interval: the path stays, its writer
	// blocked in Write.
	var blocked bool
	maxDeferred, maxPinned := 0, 0
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		s := lab.client
		s.mu.Lock()
		maxDeferred = max(maxDeferred, len(s.deferred))
		maxPinned = max(maxPinned, s.pins)
		for _, p := range s.paths {
			if w := p.writing.Load(); w != 0 && time.Since(time.Unix(0, w)) > 500*time.Millisecond {
				blocked = true
			}
		}
		s.mu.Unlock()
	}
	lab.blackhole("a", false)
	if err := <-bc; err != nil {
		t.Fatal(err)
	}
	t.Logf("blackholed path's writer blocked in Write: %v; acked buffers deferred at most %d, pins at most %d", blocked, maxDeferred, maxPinned)
	if !blocked {
		t.Fatal("no writer was blocked in Write: the test did not test anything")
	}
	// A pin lasts one seal; what the other path's acks free meanwhile is
	// a few frames, not the blackhole's worth.
	if maxDeferred > 64 {
		t.Errorf("%d acked replay buffers held back from the pool while a path was blocked", maxDeferred)
	}
}

// holdAll defers every frame: no path ever has room for it.
type holdAll struct{}

func (holdAll) Name() string                    { return "hold-all" }
func (holdAll) Pick(*Frame, []PathInfo) PathSet { return 0 }

// TestMultipathDeferredFrameBlocksNoOtherStream: a stream whose scheduler
// defers its frames (Balance waiting for the faster path's room) must not
// hold back another stream's frames queued behind them; the deferred
// stream's bytes follow, in order, once its scheduler takes them.
func TestMultipathDeferredFrameBlocksNoOtherStream(t *testing.T) {
	lab := newMPLab(t, Failover{})
	ba, bb := openPair(t, lab.client, lab.server, "bulk")
	ra, rb := openPair(t, lab.client, lab.server, "rr")
	ba.SetScheduler(holdAll{}, "held")
	want := make([]byte, 100<<10)
	for i := range want {
		want[i] = byte(i * 7)
	}
	if _, err := ba.Write(want); err != nil { // within the stream window: returns at once
		t.Fatal(err)
	}
	stop := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() { close(stop) })
	ra.SetReadDeadline(time.Now().Add(3 * time.Second)) // a held rr fails instead of hanging
	worst, n, err := rr(t, ra, rb, 20*time.Millisecond, stop)
	if err != nil || n < 5 {
		t.Fatalf("rr beside a deferred stream: %d round trips, %v", n, err)
	}
	if worst > 200*time.Millisecond {
		t.Errorf("rr worst %v beside a deferred stream", worst)
	}
	bb.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if k, _ := bb.Read(make([]byte, 1)); k != 0 {
		t.Fatal("the deferred stream's bytes arrived while its scheduler held them")
	}
	ba.SetScheduler(Failover{}, "")
	got := make([]byte, len(want))
	bb.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(bb, got); err != nil || string(got) != string(want) {
		t.Fatalf("deferred stream after its scheduler took it: %v (bytes equal: %v)", err, string(got) == string(want))
	}
}
