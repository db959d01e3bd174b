package usl

import (
	"testing"
	"time"
)

// TestBalanceSharesByRate: with both paths measured, Balance fills them
// in proportion to their delivery rates (earliest completion first), a
// path with a stale low rate sample and nothing in flight still gets the
// next frame, and unmeasured paths are ranked by their window share.
func TestBalanceSharesByRate(t *testing.T) {
	const frame = 16 << 10
	paths := []PathInfo{
		{ID: 1, Preference: 0, SRTT: 10 * time.Millisecond, Rate: 25e6, Window: 64 << 20},
		{ID: 2, Preference: 1, SRTT: 10 * time.Millisecond, Rate: 6.25e6, Window: 64 << 20},
	}
	for range 200 {
		set := Balance{}.Pick(&Frame{Len: frame}, paths)
		switch set {
		case PathSet(0).With(0):
			paths[0].InFlight += frame
		case PathSet(0).With(1):
			paths[1].InFlight += frame
		default:
			t.Fatalf("Pick returned %b", set)
		}
	}
	if r := float64(paths[0].InFlight) / float64(paths[1].InFlight); r < 3.5 || r > 4.5 {
		t.Errorf("in flight %d and %d: ratio %.2f, want the rates' 4", paths[0].InFlight, paths[1].InFlight, r)
	}

	// A path whose last rate sample was tiny (it carried one frame now
	// and then) and that holds nothing is not starved.
	starved := []PathInfo{
		{ID: 1, SRTT: time.Millisecond, Rate: 1e3, Window: 64 << 20},
		{ID: 2, SRTT: time.Millisecond, Rate: 25e6, InFlight: 1 << 20, Window: 64 << 20},
	}
	if set := (Balance{}).Pick(&Frame{Len: frame}, starved); set != PathSet(0).With(0) {
		t.Errorf("idle path with a low rate sample: Pick %b, want path 0", set)
	}

	// Not yet measured: the smaller share of its window wins.
	fresh := []PathInfo{
		{ID: 1, Window: 256 << 10, InFlight: 128 << 10},
		{ID: 2, Window: 256 << 10, InFlight: 64 << 10, SRTT: time.Millisecond, Rate: 1e6},
	}
	if set := (Balance{}).Pick(&Frame{Len: frame}, fresh); set != PathSet(0).With(1) {
		t.Errorf("unmeasured paths: Pick %b, want path 1", set)
	}
	// No room anywhere: the frame waits.
	full := []PathInfo{{ID: 1, Window: 256 << 10, InFlight: 256 << 10, SRTT: time.Millisecond, Rate: 1e6}}
	if set := (Balance{}).Pick(&Frame{Len: frame}, full); set != 0 {
		t.Errorf("no room: Pick %b, want none", set)
	}
}

// TestHedgeLateCap: Hedge copies a frame once it is unacked for srtt +
// 2×rttvar plus the ack slack, or for twice the path's minimum RTT plus
// the slack when that is sooner (srtt and rttvar inflated by samples
// that waited for a TCP retransmission).
func TestHedgeLateCap(t *testing.T) {
	ms := time.Millisecond
	clean := []PathInfo{
		{ID: 1, SRTT: 10 * ms, RTTVar: 2 * ms, MinRTT: 9 * ms, Window: 1 << 20},
		{ID: 2, Preference: 1, SRTT: 40 * ms, RTTVar: ms, MinRTT: 40 * ms, Window: 1 << 20},
	}
	sent := PathSet(0).With(0)
	for _, c := range []struct {
		paths []PathInfo
		age   time.Duration
		want  PathSet
	}{
		{clean, 14*ms + hedgeAckSlack - ms, 0},                       // srtt + 2 rttvar = 14 ms: not yet
		{clean, 14*ms + hedgeAckSlack, PathSet(0).With(1)},           // due
		{inflated(clean), 18*ms + hedgeAckSlack - ms, 0},             // 2 × min RTT = 18 ms: not yet
		{inflated(clean), 18*ms + hedgeAckSlack, PathSet(0).With(1)}, // due long before srtt + 2 rttvar (260 ms)
	} {
		if got := (Hedge{}).Late(&Frame{Len: 100, Age: c.age, SentOn: sent}, c.paths); got != c.want {
			t.Errorf("srtt %v rttvar %v min %v, age %v: Late %b, want %b", c.paths[0].SRTT, c.paths[0].RTTVar, c.paths[0].MinRTT, c.age, got, c.want)
		}
	}
}

// inflated is paths with the first one's srtt and rttvar blown up by
// retransmission-delayed samples, its minimum RTT unchanged.
func inflated(paths []PathInfo) []PathInfo {
	out := append([]PathInfo(nil), paths...)
	out[0].SRTT, out[0].RTTVar = 60*time.Millisecond, 100*time.Millisecond
	return out
}
