package loadgen

import "time"

// GapMin is the shortest pause between two reads that a timeline records.
// Shorter pauses are scheduling noise; a heal that falls into one counts as
// a recovery of at most GapMin.
const GapMin = 5 * time.Millisecond

// maxGaps bounds the gaps a timeline keeps. When full, the shortest gap
// is dropped: recovery delays are measured from the gap a heal falls into,
// so what matters is keeping the long (fault) gaps; a heal that falls into a
// dropped gap is under-reported by at most Dropped.
const maxGaps = 1024

// Gap is a pause between two reads, in Unix nanoseconds.
type Gap struct {
	Start int64 `json:"start"`
	End   int64 `json:"end"`
}

// timeline records when a receiving direction made progress. record runs
// once per read on the reader's goroutine and allocates nothing except when
// a pause of at least GapMin occurred (rare by definition).
type timeline struct {
	First   int64 `json:"first,omitempty"` // first byte, Unix ns
	Last    int64 `json:"last,omitempty"`  // latest byte
	Longest int64 `json:"longest_stall_ns"`
	Gaps    []Gap `json:"gaps,omitempty"`
	Dropped int64 `json:"dropped_gap_ns,omitempty"` // longest gap dropped for space
}

func (t *timeline) record(now int64) {
	if t.First == 0 {
		t.First, t.Last = now, now
		return
	}
	d := now - t.Last
	if d > t.Longest {
		t.Longest = d
	}
	if d >= int64(GapMin) {
		t.addGap(Gap{Start: t.Last, End: now})
	}
	t.Last = now
}

func (t *timeline) addGap(g Gap) {
	if len(t.Gaps) < maxGaps {
		t.Gaps = append(t.Gaps, g)
		return
	}
	// Full: replace the shortest gap if the new one is longer. The scan is
	// rare (only on a pause of GapMin or more with a full table).
	short := 0
	for i, x := range t.Gaps {
		if x.End-x.Start < t.Gaps[short].End-t.Gaps[short].Start {
			short = i
		}
	}
	drop := g
	if x := t.Gaps[short]; g.End-g.Start > x.End-x.Start {
		drop, t.Gaps[short] = x, g
	}
	t.Dropped = max(t.Dropped, drop.End-drop.Start)
}

// firstAfter returns the time of the first byte at or after heal, and false
// if no byte came after it. Within a stretch without recorded gaps bytes
// arrived at least every GapMin, so the heal time itself is the answer.
func (t *timeline) firstAfter(heal int64) (int64, bool) {
	switch {
	case t.First == 0 || heal > t.Last:
		return 0, false
	case heal <= t.First:
		return t.First, true
	}
	for _, g := range t.Gaps {
		if g.Start < heal && heal <= g.End {
			return g.End, true
		}
	}
	return heal, true
}

// GapsOver returns the pauses of at least min this direction recorded, in
// time order as recorded (for telling which fault caused a stall).
func (d *Direction) GapsOver(min time.Duration) []Gap {
	var out []Gap
	for _, g := range d.tl.Gaps {
		if g.End-g.Start >= int64(min) {
			out = append(out, g)
		}
	}
	return out
}
