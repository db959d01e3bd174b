package usl

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newFaultPair runs a listener on fn and dials it through fn.
func newFaultPair(t testing.TB, fn *faultNet, ccfg, scfg Config) *pair {
	t.Helper()
	l, err := NewListener(fn.listen(), scfg)
	if err != nil {
		t.Fatal(err)
	}
	ccfg.Dial = fn.Dial
	c, err := Dial(context.Background(), "mem", ccfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := l.Accept(ctx)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	// Accept returns once the listener attached the path; the dialer
	// attaches a moment later, when it has read the reply.
	waitFor(t, "dialer up", func() bool { return c.Stats().State == Up })
	return &pair{l: l, client: c, server: s}
}

// duplex writes a pattern each way on a stream pair and checks both
// directions by SHA-256. Every error is a failure: faults must never reach
// a stream.
func duplex(a, b *Stream, seedA, seedB uint64, nA, nB int) error {
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	check := func(name string, w, r *Stream, seed uint64, n int) {
		sums := make(chan [32]byte, 1)
		wg.Add(2)
		go func() {
			defer wg.Done()
			sum, err := writePattern(w, seed, n, 40000)
			if err == nil {
				err = w.CloseWrite()
			}
			if err != nil {
				errs <- fmt.Errorf("%s: write: %w", name, err)
			}
			sums <- sum
		}()
		go func() {
			defer wg.Done()
			got, m, err := readAllHash(r)
			if err != nil {
				errs <- fmt.Errorf("%s: read after %d bytes: %w", name, m, err)
				return
			}
			if m != int64(n) {
				errs <- fmt.Errorf("%s: read %d bytes, want %d", name, m, n)
				return
			}
			if want := <-sums; got != want {
				errs <- fmt.Errorf("%s: SHA-256 mismatch", name)
			}
		}()
	}
	check("a->b", a, b, seedA, nA)
	check("b->a", b, a, seedB, nB)
	wg.Wait()
	close(errs)
	return <-errs
}

// TestPropertyFaults is check 1 of the issue: random streams both ways
// under random cuts (mid-frame included), blackholes, slow links and
// racing reconnects; every byte arrives once and in order.
func TestPropertyFaults(t *testing.T) {
	seeds := []uint64{1, 2, 3}
	switch {
	case testing.Short():
		seeds = seeds[:1]
	case os.Getenv("USLTUN_LONG") != "":
		// make test-long: a soak over many more fault schedules.
		seeds = nil
		for i := range 30 {
			seeds = append(seeds, uint64(100+i))
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { propertyRun(t, seed) })
	}
}

func propertyRun(t *testing.T, seed uint64) {
	ck, sk := newKeypair(t), newKeypair(t)
	fn := newFaultNet(seed)
	defer fn.close()
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	// Small frames and windows: more frames, more records, more chances
	// for a cut to land mid-frame.
	ccfg.MaxFrame, scfg.MaxFrame = 8<<10, 8<<10
	ccfg.StreamWindow, scfg.StreamWindow = 64<<10, 64<<10
	p := newFaultPair(t, fn, ccfg, scfg)
	defer p.close()
	rng := rand.New(rand.NewPCG(seed, 99))
	frng := rand.New(rand.NewPCG(seed, 7)) // the fault goroutine's own

	stop := make(chan struct{})
	var faults sync.WaitGroup
	faults.Add(1)
	var counts [4]atomic.Int64 // cut, blackhole, slow, race
	go func() {
		defer faults.Done()
		var kinds []int
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(30+frng.IntN(150)) * time.Millisecond):
			}
			l := fn.current()
			if l == nil {
				continue
			}
			// Every kind of fault in each round of four, in random order.
			if len(kinds) == 0 {
				kinds = frng.Perm(4)
			}
			k := kinds[0]
			kinds = kinds[1:]
			switch k {
			case 0: // reset at a random byte offset, mid-frame included
				l.mu.Lock()
				l.cutAfter = int64(frng.IntN(20000))
				l.mu.Unlock()
				counts[0].Add(1)
			case 1: // silent blackhole, found by the dead interval
				l.mu.Lock()
				l.blackholed = true
				l.mu.Unlock()
				counts[1].Add(1)
			case 2: // slow link
				l.mu.Lock()
				l.bytesPerS = 256 << 10
				l.mu.Unlock()
				counts[2].Add(1)
			case 3: // two reconnects racing each other and the dial loop
				for range 2 {
					go p.client.connect(0)
				}
				counts[3].Add(1)
			}
		}
	}()

	// Batches of streams run until every kind of fault hit at least three
	// times, so that each seed exercises all of them.
	enough := func() bool {
		for i := range counts {
			if counts[i].Load() < 3 {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(40 * time.Second)
	for batch := 0; batch == 0 || !enough(); batch++ {
		if time.Now().After(deadline) {
			t.Fatalf("faults did not all happen in time: %v", &counts)
		}
		propertyBatch(t, p, rng, seed*1000+uint64(batch)*10)
	}
	close(stop)
	faults.Wait()
	st := p.client.Stats()
	t.Logf("faults cut/blackhole/slow/race %d/%d/%d/%d; client reconnects %d retransmitted %d; server reconnects %d",
		counts[0].Load(), counts[1].Load(), counts[2].Load(), counts[3].Load(), st.Reconnects, st.Retransmitted, p.server.Stats().Reconnects)
	if st.Fences != 0 || p.server.Err() != nil {
		t.Fatalf("session fenced or ended: %+v, server err %v", st, p.server.Err())
	}
	if st.Reconnects == 0 {
		t.Fatal("no reconnect happened: the faults did not bite")
	}
}

func propertyBatch(t *testing.T, p *pair, rng *rand.Rand, seed uint64) {
	const streams = 6
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		a, b := p.client, p.server
		if i%2 == 1 {
			a, b = b, a
		}
		sa, sb := openPair(t, a, b, fmt.Sprint("s", i))
		n1, n2 := 256<<10+rng.IntN(1<<20), rng.IntN(512<<10)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := duplex(sa, sb, seed*100+uint64(i), seed*100+50+uint64(i), n1, n2); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("streams did not finish; client %+v server %+v", p.client.Stats(), p.server.Stats())
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
