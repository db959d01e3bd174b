package usl

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestRekey runs a transfer across many in-band rekeys, triggered both by
// key age (RekeyInterval, shortened the way a user would set it) and by
// record count (RekeyRecords): every flow's SHA-256 matches, no path is
// replaced, and no read waits longer than 50 ms above the path RTT. A
// second session without rekeys runs the same flows at the same time:
// on two cores shared with the race detector and other builds, a pause
// of the whole process (GC, scheduling) hits both, so the bound is 50 ms
// above the larger of the RTT and that control session's longest wait;
// the timing is measured up to three times, and one clean measurement
// passes (a real rekey stall would show in every one: each crosses at
// least 5 rekeys). At 50 ms instead of 120 s, each second is 20 rekeys, 40 minutes of the
// default, where the issue asks for ten minutes (5 rekeys).
func TestRekey(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		records  uint64
	}{
		{"interval", 50 * time.Millisecond, 0},
		{"records", 0, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for attempt := 1; attempt <= 3; attempt++ {
				if rekeyAttempt(t, tc.interval, tc.records, attempt == 3) {
					return
				}
			}
		})
	}
}

// rekeyAttempt runs one measurement of TestRekey. Correctness failures
// are reported at once; the stall bound only when final, else a false
// return asks for another measurement.
func rekeyAttempt(t *testing.T, interval time.Duration, records uint64, final bool) bool {
	cfg := func(self keypair, peer PublicKey) Config {
		c := fastCfg(t, self, peer)
		// Production liveness timers: on a loaded machine the test's
		// 300 ms dead interval would replace paths, which is not what is
		// measured here.
		c.KeepaliveInterval, c.DeadInterval = DefaultKeepaliveInterval, DefaultDeadInterval
		return c
	}
	ck, sk := newKeypair(t), newKeypair(t)
	ccfg, scfg := cfg(ck, sk.pub), cfg(sk, ck.pub)
	ccfg.RekeyInterval, scfg.RekeyInterval = interval, interval
	ccfg.RekeyRecords, scfg.RekeyRecords = records, records
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	ck2, sk2 := newKeypair(t), newKeypair(t)
	control := newTCPPair(t, cfg(ck2, sk2.pub), cfg(sk2, ck2.pub))
	defer control.close()
	{
		var wg sync.WaitGroup
		var stalls, floor []time.Duration
		wg.Add(2)
		go func() { defer wg.Done(); stalls = pacedFlows(t, p) }()
		go func() { defer wg.Done(); floor = pacedFlows(t, control) }()
		wg.Wait()

		cs, ss := p.client.Stats(), p.server.Stats()
		rtt := max(cs.RTT, ss.RTT)
		ctl := slices.Max(floor)
		t.Logf("rekeys: dialer %d, listener %d; rtt %v; longest stall per flow %v; without rekeys, same time: %v",
			cs.Rekeys, ss.Rekeys, rtt, stalls, floor)
		if cs.Rekeys < 5 || ss.Rekeys < 5 {
			t.Errorf("only %d/%d rekeys", cs.Rekeys, ss.Rekeys)
		}
		if n := control.client.Stats().Rekeys; n != 0 {
			t.Errorf("%d rekeys with the default interval", n)
		}
		if cs.Reconnects != 0 || ss.Reconnects != 0 {
			t.Errorf("paths were replaced: %d/%d reconnects (%s)", cs.Reconnects, ss.Reconnects, cs.LastError+ss.LastError)
		}
		for i, d := range stalls {
			if d > max(rtt, ctl)+50*time.Millisecond {
				if !final {
					t.Logf("flow %d stalled %v, more than max(rtt %v, control %v) + 50 ms: measuring again", i, d, rtt, ctl)
					return false
				}
				t.Errorf("flow %d stalled %v, more than max(rtt %v, control %v) + 50 ms", i, d, rtt, ctl)
			}
		}
	}
	return true
}

// pacedFlows runs two paced flows over p for 2 s, one each way (so both
// sides' send keys turn over under load), checks their SHA-256 and
// returns each flow's longest wait between reads. The pacing (4 MB/s a
// flow) keeps the cores from saturating, so a stall measures the
// protocol rather than the scheduler.
func pacedFlows(t *testing.T, p *pair) []time.Duration {
	const flows, dur = 2, 2 * time.Second
	var wg sync.WaitGroup
	stalls := make([]time.Duration, flows)
	for i := range flows {
		a, b := openPair(t, p.client, p.server, fmt.Sprint("flow-", i))
		w, r := a, b
		if i%2 == 1 {
			w, r = b, a
		}
		type result struct {
			sum [32]byte
			n   int64
		}
		sent := make(chan result, 1)
		wg.Add(2)
		go func() {
			defer wg.Done()
			sum, n, err := writePaced(w, uint64(i), 16<<10, 4*time.Millisecond, dur)
			if err != nil {
				t.Errorf("flow %d write: %v", i, err)
			}
			w.CloseWrite()
			sent <- result{sum, n}
		}()
		go func() {
			defer wg.Done()
			got, n, longest, err := readTimed(r)
			want := <-sent
			if err != nil || n != want.n {
				t.Errorf("flow %d read %d of %d bytes: %v", i, n, want.n, err)
				return
			}
			if got != want.sum {
				t.Errorf("flow %d: SHA-256 mismatch", i)
			}
			stalls[i] = longest
		}()
	}
	wg.Wait()
	return stalls
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
