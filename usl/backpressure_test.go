package usl

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingWriter counts what Write accepted.
type countingWriter struct {
	st *Stream
	n  *atomic.Int64
}

func (w countingWriter) Write(b []byte) (int, error) {
	n, err := w.st.Write(b)
	w.n.Add(int64(n))
	return n, err
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestBackpressurePartition is check 3: fast writers through a partition.
// The replay buffer fills to its bound, writers block, the heap stays flat;
// after the heal every byte arrives.
func TestBackpressurePartition(t *testing.T) {
	const (
		replay    = 2 << 20
		streams   = 16
		perStream = 1 << 20
		partition = 2 * time.Second
		slack     = 8 << 20 // pools, path buffers, goroutine stacks, test data
	)
	ck, sk := newKeypair(t), newKeypair(t)
	fn := newFaultNet(3)
	defer fn.close()
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.ReplayBuffer, scfg.ReplayBuffer = replay, replay
	// 16 windows of 256 KiB are 4 MiB of credit: the replay bound, not
	// stream credit, is what must stop the writers.
	p := newFaultPair(t, fn, ccfg, scfg)
	defer p.close()

	type sp struct{ a, b *Stream }
	var ss []sp
	for i := range streams {
		a, b := openPair(t, p.client, p.server, fmt.Sprint("bp", i))
		ss = append(ss, sp{a, b})
	}
	base := heapInUse()
	fn.setDown(true)
	fn.killAll()

	var written atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	for i, s := range ss {
		sums := make(chan [32]byte, 1)
		wg.Add(2)
		go func() {
			defer wg.Done()
			sum, err := writePattern(countingWriter{s.a, &written}, uint64(i), perStream, 64<<10)
			if err == nil {
				err = s.a.CloseWrite()
			}
			if err != nil {
				errs <- fmt.Errorf("stream %d write: %w", i, err)
			}
			sums <- sum
		}()
		go func() {
			defer wg.Done()
			got, n, err := readAllHash(s.b)
			if err != nil || n != perStream || got != <-sums {
				errs <- fmt.Errorf("stream %d: read %d bytes, err %v, or SHA-256 mismatch", i, n, err)
			}
		}()
	}

	time.Sleep(partition / 4)
	mid := written.Load()
	var peak uint64
	for end := time.Now().Add(partition * 3 / 4); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		peak = max(peak, heapInUse())
	}
	blocked := written.Load()
	st := p.client.Stats()
	t.Logf("partition: written %d then %d bytes, unacked %d, heap base %d peak %d", mid, blocked, st.Unacked, base, peak)
	if blocked != mid {
		t.Errorf("writers kept writing during the partition: %d -> %d", mid, blocked)
	}
	if blocked > replay || st.Unacked > replay {
		t.Errorf("written %d, unacked %d: beyond the replay bound %d", blocked, st.Unacked, replay)
	}
	if peak > base+replay+slack {
		t.Errorf("heap in use %d exceeds base %d + replay %d + slack %d", peak, base, replay, slack)
	}

	fn.setDown(false)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("transfer did not finish after the heal: %+v", p.client.Stats())
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if w := written.Load(); w != streams*perStream {
		t.Errorf("written %d, want %d", w, streams*perStream)
	}
}
