package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/usltun/usltun/internal/human"
	"github.com/usltun/usltun/tools/loadgen"
)

// This file renders what the demo prints; it holds no state and does no
// I/O, so the tests pin the exact text.

// progress is one sample of the live line.
type progress struct {
	Elapsed   time.Duration
	Delivered int64   // bytes the applications have read, both directions
	BitsPerS  float64 // delivery rate over the last second
	// Session is the state `usltun status --json` reports on A ("up",
	// "reconnecting", ...); empty on the plain TCP path.
	Session       string
	Reconnects    uint64
	Retransmitted uint64
	// Average marks the final line, whose rate is over the whole part.
	Average bool
}

// formatProgress renders the live line. Every field has a fixed width, so
// successive lines overwrite each other without flicker.
func formatProgress(p progress) string {
	rate := fmt.Sprintf("%11s", human.Rate(p.BitsPerS))
	if p.Average {
		rate = "avg " + strings.TrimLeft(rate, " ")
	}
	line := fmt.Sprintf("%6.1fs  %10s delivered  %11s", p.Elapsed.Seconds(), human.Bytes(p.Delivered), rate)
	if p.Session == "" {
		return line
	}
	return line + fmt.Sprintf("  session %-12s  reconnects %-3d  retransmitted %s",
		p.Session, p.Reconnects, human.Bytes(int64(p.Retransmitted)))
}

// rateMeter turns cumulative byte counts into a rate over a sliding window,
// so a single slow tick does not make the line jump.
type rateMeter struct {
	window  time.Duration
	samples []rateSample
}

type rateSample struct {
	at    time.Duration
	bytes int64
}

// add records the total at elapsed time at and returns the rate in bit/s
// over the window (0 until two samples exist).
func (m *rateMeter) add(at time.Duration, total int64) float64 {
	m.samples = append(m.samples, rateSample{at, total})
	// Keep the newest sample at or before the window's start as the base.
	for len(m.samples) > 2 && m.samples[1].at <= at-m.window {
		m.samples = m.samples[1:]
	}
	first := m.samples[0]
	dt := (at - first.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(total-first.bytes) * 8 / dt
}

// sessionSummary is what `usltun status` on A said at the end.
type sessionSummary struct {
	Reconnects    uint64
	Retransmitted uint64
}

// The summaries are tables with one row per direction of the flow:
//
//	                       sent        received    sha256 at A / at C
//	  A → C                1.48 GiB    1.48 GiB    569e1c4b77fcc6a1… / 569e1c4b77fcc6a1…  identical

// formatTunnelSummary renders the verdict on the transfer through usltun.
// cutRecovery is the delay from the end of the cut to the first new byte
// (negative: unknown).
func formatTunnelSummary(rep *loadgen.Report, s sessionSummary, cutRecovery time.Duration) string {
	var b strings.Builder
	row := func(k, f string, a ...any) { fmt.Fprintf(&b, "  %-20s "+f+"\n", append([]any{k}, a...)...) }
	row("", "%-10s  %-10s  %s", "sent", "received", "sha256 at sender / at receiver")
	for _, d := range directions(rep) {
		verdict := "identical"
		if !d.Match {
			verdict = "DIFFERENT"
		}
		row(d.name, "%-10s  %-10s  %s / %s  %s", human.Bytes(d.Sent), human.Bytes(d.Received),
			shortHash(d.SentSHA256), shortHash(d.RecvSHA256), verdict)
	}
	errorRows(row, rep)
	row("longest stall", "%s", seconds(rep.LongestStall))
	if cutRecovery >= 0 {
		row("back after the cut", "%s from heal to the next byte", seconds(cutRecovery))
	}
	row("tunnel", "%d reconnects, %s retransmitted", s.Reconnects, human.Bytes(int64(s.Retransmitted)))
	return b.String()
}

// formatPlainSummary renders the outcome of the plain TCP transfer.
func formatPlainSummary(rep *loadgen.Report) string {
	var b strings.Builder
	row := func(k, f string, a ...any) { fmt.Fprintf(&b, "  %-20s "+f+"\n", append([]any{k}, a...)...) }
	row("", "%-10s  %s", "sent", "received")
	for _, d := range directions(rep) {
		row(d.name, "%-10s  %s", human.Bytes(d.Sent), human.Bytes(d.Received))
	}
	errorRows(row, rep)
	return b.String()
}

func errorRows(row func(k, f string, a ...any), rep *loadgen.Report) {
	row("application errors", "%d", len(rep.Errors))
	for _, e := range rep.Errors {
		row("", "%s", describeError(e))
	}
}

// describeError says which host saw which errno, in what operation.
func describeError(e loadgen.ErrorEvent) string {
	host := "A"
	if e.Side == "server" {
		host = "C"
	}
	return fmt.Sprintf("%s on %s's %s, after %s", e.Errno, host, e.Op, human.Bytes(e.Offset))
}

type namedDirection struct {
	name string
	loadgen.Direction
}

// directions are the two directions of the demo's single flow; A is the
// loadgen client, C the server.
func directions(rep *loadgen.Report) []namedDirection {
	if len(rep.Flows) == 0 {
		none := loadgen.Direction{Mismatch: -1}
		return []namedDirection{{"A → C", none}, {"C → A", none}}
	}
	f := rep.Flows[0]
	return []namedDirection{{"A → C", f.Up}, {"C → A", f.Down}}
}

// shortHash keeps the first 16 hex digits: enough to see two hashes agree.
func shortHash(h string) string {
	if h == "" {
		return "(none)"
	}
	if len(h) <= 16 {
		return h
	}
	return h[:16] + "…"
}

func seconds(d time.Duration) string {
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// span renders a scheduled duration: "10 s", "2.5 s".
func span(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%d s", d/time.Second)
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// formatMultipathSummary is the second act's summary: the transfer's
// verdict and its longest stall next to the one-path run's.
func formatMultipathSummary(rep *loadgen.Report, onePath time.Duration) string {
	var b strings.Builder
	row := func(k, f string, a ...any) { fmt.Fprintf(&b, "  %-20s "+f+"\n", append([]any{k}, a...)...) }
	for _, d := range directions(rep) {
		verdict := "sha256 identical at both ends"
		if !d.Match {
			verdict = "sha256 DIFFERENT"
		}
		row(d.name, "%-10s  %-10s  %s", human.Bytes(d.Sent), human.Bytes(d.Received), verdict)
	}
	errorRows(row, rep)
	row("longest stall", "%s (one path, the same cut: %s)", seconds(rep.LongestStall), seconds(onePath))
	return b.String()
}
