package usl

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
)

// TestManyStreamsFlapping: 200 streams moving data both ways while the
// path is cut or blackholed every couple of hundred milliseconds. No
// stream may stall or see an error.
func TestManyStreamsFlapping(t *testing.T) {
	if os.Getenv("USLTUN_LONG") == "" {
		t.Skip("a 20 s soak: make test-long runs it")
	}
	ck, sk := newKeypair(t), newKeypair(t)
	fn := newFaultNet(11)
	fn.rate = 16 << 20 // stretch the run so that dozens of faults hit it
	defer fn.close()
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.StreamWindow, scfg.StreamWindow = 32<<10, 32<<10
	ccfg.ReplayBuffer, scfg.ReplayBuffer = 1<<20, 1<<20
	p := newFaultPair(t, fn, ccfg, scfg)
	defer p.close()
	const streams = 200
	type sp struct{ a, b *Stream }
	var ss []sp
	for i := range streams {
		a, b := openPair(t, p.client, p.server, fmt.Sprint(i))
		ss = append(ss, sp{a, b})
	}
	stop := make(chan struct{})
	var fw sync.WaitGroup
	fw.Add(1)
	go func() {
		defer fw.Done()
		rng := rand.New(rand.NewPCG(5, 6))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(100+rng.IntN(200)) * time.Millisecond):
			}
			if l := fn.current(); l != nil {
				l.mu.Lock()
				if rng.IntN(2) == 0 {
					l.cutAfter = int64(rng.IntN(50000))
				} else {
					l.blackholed = true
				}
				l.mu.Unlock()
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := duplex(s.a, s.b, uint64(i), uint64(i+1000), 200<<10, 300<<10); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		close(stop)
		fw.Wait()
		t.Fatalf("streams stalled: client %+v server %+v", p.client.Stats(), p.server.Stats())
	}
	close(stop)
	fw.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("client %+v", p.client.Stats())
	if p.client.Stats().Reconnects < 10 {
		t.Errorf("only %d reconnects: the faults did not bite", p.client.Stats().Reconnects)
	}
}
