package loadgen

import (
	"slices"
	"time"
)

// assemble joins both ends' views into the report.
func (r *Run) assemble(server []EndReport) *Report {
	byFlow := map[int]EndReport{}
	for _, e := range server {
		byFlow[e.Flow] = e
	}
	rep := &Report{Mode: r.cfg.Mode.String(), Dirs: r.cfg.Dirs.String(), Start: r.start, Elapsed: time.Since(r.start), Verified: true, NoVerify: r.cfg.NoVerify}
	var lat hist
	for i, cf := range r.ends {
		fr := FlowReport{Flow: i, Connect: cf.connect}
		fr.Up.Mismatch, fr.Down.Mismatch = -1, -1
		if cf.dialErr != nil {
			fr.Errors = append(fr.Errors, *cf.dialErr)
		}
		var cl EndReport
		if cf.end != nil {
			cl = cf.end.finish()
			fr.Errors = append(fr.Errors, cl.Errors...)
		}
		sv, ok := byFlow[i]
		fr.ServerSeen = ok
		fr.Errors = append(fr.Errors, sv.Errors...)
		fr.Up = direction(cl.Sent, sv.Recv)
		fr.Down = direction(sv.Sent, cl.Recv)
		if !ok {
			fr.Up.Match = false
		}
		rep.BytesUp += fr.Up.Received
		rep.BytesDown += fr.Down.Received
		rep.LongestStall = max(rep.LongestStall, fr.Up.LongestStall, fr.Down.LongestStall)
		rep.Errors = append(rep.Errors, fr.Errors...)
		if !fr.Up.Match || !fr.Down.Match || len(fr.Errors) > 0 {
			rep.Verified = false
		}
		lat.merge(&cf.lat)
		rep.Flows = append(rep.Flows, fr)
	}
	slices.SortStableFunc(rep.Errors, func(a, b ErrorEvent) int { return a.At.Compare(b.At) })
	// The rate runs from the start (dials included) to the last byte
	// received, not to now: the report exchange is not traffic.
	var last time.Time
	for _, f := range rep.Flows {
		last = latest(last, f.Up.Last, f.Down.Last)
	}
	if secs := last.Sub(r.start).Seconds(); secs > 0 {
		rep.BitsPerSec = float64(rep.BytesUp+rep.BytesDown) * 8 / secs
	}
	if r.cfg.Mode == RR {
		rep.Latency = &Latency{Count: lat.n, P50: lat.quantile(0.50), P99: lat.quantile(0.99), Max: lat.max, Slowest: lat.slowest}
	}
	return rep
}

// direction compares the sender's and the receiver's view of one
// direction. A direction that carries nothing still must match: an empty
// stream, cleanly closed.
func direction(snd, rcv Half) Direction {
	d := Direction{
		Sent: snd.Bytes, Received: rcv.Bytes,
		SentSHA256: snd.SHA256, RecvSHA256: rcv.SHA256,
		Mismatch:     rcv.Mismatch,
		LongestStall: time.Duration(rcv.Timeline.Longest),
		tl:           rcv.Timeline,
	}
	if rcv.Timeline.First != 0 {
		d.First, d.Last = time.Unix(0, rcv.Timeline.First), time.Unix(0, rcv.Timeline.Last)
	}
	d.Match = snd.Complete && rcv.Complete && snd.Bytes == rcv.Bytes &&
		snd.SHA256 == rcv.SHA256 && rcv.Mismatch < 0
	return d
}

// recoveries computes, per heal, the worst delay to the first byte after it
// over the flow directions still transferring at the heal (those whose last
// byte came after it, or that never completed).
func recoveries(flows []FlowReport, heals []time.Time) []Recovery {
	var out []Recovery
	for _, heal := range heals {
		rc := Recovery{Heal: heal}
		hn := heal.UnixNano()
		for _, f := range flows {
			for _, d := range []struct {
				name string
				dir  *Direction
			}{{"up", &f.Up}, {"down", &f.Down}} {
				tl := &d.dir.tl
				if tl.First == 0 && d.dir.Match {
					continue // an empty direction: nothing to recover
				}
				if d.dir.Match && tl.Last < hn {
					continue // finished before the heal
				}
				first, ok := tl.firstAfter(hn)
				if !ok {
					rc.Delay, rc.Flow, rc.Direction, rc.FirstByte = -1, f.Flow, d.name, time.Time{}
					break
				}
				if delay := time.Duration(first - hn); rc.Delay >= 0 && delay >= rc.Delay {
					rc.Delay, rc.Flow, rc.Direction, rc.FirstByte = delay, f.Flow, d.name, time.Unix(0, first)
				}
			}
			if rc.Delay < 0 {
				break
			}
		}
		out = append(out, rc)
	}
	return out
}

func latest(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if t.After(out) {
			out = t
		}
	}
	return out
}
