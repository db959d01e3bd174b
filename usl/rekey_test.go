package usl

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestRekey runs a transfer across many in-band rekeys, triggered both by
// key age (RekeyInterval, shortened the way a user would set it) and by
// record count (RekeyRecords): every flow's SHA-256 matches, no path is
// replaced, and no read waits longer than the path RTT plus 50 ms. At
// 50 ms instead of 120 s, each second is 20 rekeys, 40 minutes of the
// default, where the issue asks for ten minutes (5 rekeys).
func TestRekey(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		records  uint64
	}{
		{"interval", 50 * time.Millisecond, 0},
		{"records", 0, 100},
		{"control-no-rekey", time.Hour, 1 << 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ck, sk := newKeypair(t), newKeypair(t)
			ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
			ccfg.RekeyInterval, scfg.RekeyInterval = tc.interval, tc.interval
			ccfg.RekeyRecords, scfg.RekeyRecords = tc.records, tc.records
			p := newTCPPair(t, ccfg, scfg)
			defer p.close()
			// Paced flows (4 MB/s each) rather than saturating ones: a stall
			// then measures the protocol, not two busy cores' scheduler
			// under the race detector (the control case shows that floor).
			const flows, dur = 2, 2 * time.Second
			var wg sync.WaitGroup
			stalls := make([]time.Duration, flows)
			errs := make(chan error, 3*flows)
			for i := range flows {
				a, b := openPair(t, p.client, p.server, fmt.Sprint("flow-", i))
				// Alternate directions, so both sides' send keys turn over
				// under load.
				w, r := a, b
				if i%2 == 1 {
					w, r = b, a
				}
				wg.Add(2)
				type result struct {
					sum [32]byte
					n   int64
				}
				sent := make(chan result, 1)
				go func() {
					defer wg.Done()
					sum, n, err := writePaced(w, uint64(i), 16<<10, 4*time.Millisecond, dur)
					if err != nil {
						errs <- fmt.Errorf("flow %d write: %w", i, err)
					}
					w.CloseWrite()
					sent <- result{sum, n}
				}()
				go func() {
					defer wg.Done()
					got, n, longest, err := readTimed(r)
					want := <-sent
					if err != nil || n != want.n {
						errs <- fmt.Errorf("flow %d read %d of %d bytes: %v", i, n, want.n, err)
						return
					}
					if got != want.sum {
						errs <- fmt.Errorf("flow %d: SHA-256 mismatch", i)
					}
					stalls[i] = longest
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			cs, ss := p.client.Stats(), p.server.Stats()
			rtt := max(cs.RTT, ss.RTT)
			t.Logf("rekeys: dialer %d, listener %d; rtt %v; longest stall per flow %v", cs.Rekeys, ss.Rekeys, rtt, stalls)
			if want := uint64(5); tc.interval == time.Hour {
				if cs.Rekeys != 0 || ss.Rekeys != 0 {
					t.Errorf("%d/%d rekeys with rekeying off", cs.Rekeys, ss.Rekeys)
				}
			} else if cs.Rekeys < want || ss.Rekeys < want {
				t.Errorf("only %d/%d rekeys", cs.Rekeys, ss.Rekeys)
			}
			if cs.Reconnects != 0 || ss.Reconnects != 0 {
				t.Errorf("paths were replaced: %d/%d reconnects (%s)", cs.Reconnects, ss.Reconnects, cs.LastError+ss.LastError)
			}
			for i, d := range stalls {
				if d > rtt+50*time.Millisecond {
					t.Errorf("flow %d stalled %v, more than rtt %v + 50 ms", i, d, rtt)
				}
			}
		})
	}
}

// writePaced writes pseudo-random chunks every period for dur and returns
// their SHA-256 and count.
func writePaced(w io.Writer, seed uint64, chunk int, period, dur time.Duration) ([32]byte, int64, error) {
	h := sha256.New()
	buf := make([]byte, chunk)
	rng := rand.New(rand.NewPCG(seed, seed+1))
	var n int64
	tick := time.NewTicker(period)
	defer tick.Stop()
	end := time.Now().Add(dur)
	var sum [32]byte
	for time.Now().Before(end) {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		h.Write(buf)
		if _, err := w.Write(buf); err != nil {
			return sum, n, err
		}
		n += int64(len(buf))
		<-tick.C
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}

// readTimed reads r to EOF, hashing, and reports the longest wait for a
// Read (the first one excepted: it waits for the writer to start).
func readTimed(r io.Reader) (sum [32]byte, n int64, longest time.Duration, err error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	last := time.Time{}
	for {
		m, rerr := r.Read(buf)
		now := time.Now()
		if m > 0 {
			if !last.IsZero() {
				longest = max(longest, now.Sub(last))
			}
			last = now
			h.Write(buf[:m])
			n += int64(m)
		}
		if rerr == io.EOF {
			copy(sum[:], h.Sum(nil))
			return sum, n, longest, nil
		}
		if rerr != nil {
			return sum, n, longest, rerr
		}
	}
}
