package loadgen

import (
	"math/bits"
	"slices"
	"time"
)

// hist is a log-linear latency histogram: 32 linear sub-buckets per power of
// two of nanoseconds, so a percentile is exact to ~3 % with fixed memory and
// no allocation per sample.
type hist struct {
	counts [64 * histSub]uint64
	n      uint64
	max    time.Duration
	// slowest are the histSlowest longest samples, longest first, with
	// when each began: where the tail fell against a test's faults.
	slowest []Sample
}

// Sample is one round trip: when it began and how long it took.
type Sample struct {
	At  time.Time     `json:"at"`
	RTT time.Duration `json:"rtt"`
}

// histSlowest is how many of the slowest samples a hist keeps.
const histSlowest = 5

const histSub = 32

func histBucket(d time.Duration) int {
	v := uint64(max(d, 1))
	exp := bits.Len64(v) - 1 // v in [2^exp, 2^(exp+1))
	if exp < 5 {
		return int(v) // values below 32 ns map one to one
	}
	sub := (v >> (exp - 5)) & (histSub - 1)
	return exp*histSub + int(sub)
}

// histValue is the upper bound of bucket i.
func histValue(i int) time.Duration {
	exp, sub := i/histSub, i%histSub
	if exp < 5 {
		return time.Duration(i)
	}
	base := uint64(1) << exp
	return time.Duration(base + (uint64(sub)+1)*(base/histSub))
}

func (h *hist) add(d time.Duration) {
	h.counts[histBucket(d)]++
	h.n++
	h.max = max(h.max, d)
}

// addAt adds a sample that began at t0, keeping it among the slowest.
func (h *hist) addAt(t0 time.Time, d time.Duration) {
	h.add(d)
	h.keepSlow(Sample{At: t0, RTT: d})
}

func (h *hist) keepSlow(s Sample) {
	if len(h.slowest) == histSlowest && s.RTT <= h.slowest[histSlowest-1].RTT {
		return
	}
	i := len(h.slowest)
	for i > 0 && h.slowest[i-1].RTT < s.RTT {
		i--
	}
	h.slowest = slices.Insert(h.slowest, i, s)
	if len(h.slowest) > histSlowest {
		h.slowest = h.slowest[:histSlowest]
	}
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
	for _, s := range o.slowest {
		h.keepSlow(s)
	}
}

func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(histValue(i), h.max)
		}
	}
	return h.max
}
