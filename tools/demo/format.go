package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

// This file renders what the demo prints; it holds no state and does no
// I/O, so the tests pin the exact text.

// progress is one sample of the live line.
type progress struct {
	Elapsed   time.Duration
	Delivered int64   // bytes C's application has read
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
	rate := fmt.Sprintf("%11s", humanRate(p.BitsPerS))
	if p.Average {
		rate = "avg " + strings.TrimLeft(rate, " ")
	}
	line := fmt.Sprintf("%6.1fs  %10s delivered  %11s", p.Elapsed.Seconds(), humanBytes(p.Delivered), rate)
	if p.Session == "" {
		return line
	}
	return line + fmt.Sprintf("  session %-12s  reconnects %-3d  retransmitted %s",
		p.Session, p.Reconnects, humanBytes(int64(p.Retransmitted)))
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

// formatTunnelSummary renders the verdict on the transfer through usltun.
// cutRecovery is the delay from the end of the cut to the first new byte at
// C (negative: unknown).
func formatTunnelSummary(rep *loadgen.Report, s sessionSummary, cutRecovery time.Duration) string {
	var b strings.Builder
	up := flowUp(rep)
	row := func(k, f string, a ...any) { fmt.Fprintf(&b, "  %-20s "+f+"\n", append([]any{k}, a...)...) }
	verdict := "identical"
	if !up.Match {
		verdict = "DIFFERENT"
	}
	row("sent by A", "%-10s  sha256 %s", humanBytes(up.Sent), shortHash(up.SentSHA256))
	row("received by C", "%-10s  sha256 %s  %s", humanBytes(up.Received), shortHash(up.RecvSHA256), verdict)
	row("application errors", "%d", len(rep.Errors))
	for _, e := range rep.Errors {
		row("", "%s", describeError(e))
	}
	row("longest stall", "%s", seconds(rep.LongestStall))
	if cutRecovery >= 0 {
		row("back after the cut", "%s from heal to the next byte at C", seconds(cutRecovery))
	}
	row("tunnel", "%d reconnects, %s retransmitted", s.Reconnects, humanBytes(int64(s.Retransmitted)))
	return b.String()
}

// formatPlainSummary renders the outcome of the plain TCP transfer.
func formatPlainSummary(rep *loadgen.Report) string {
	var b strings.Builder
	up := flowUp(rep)
	row := func(k, f string, a ...any) { fmt.Fprintf(&b, "  %-20s "+f+"\n", append([]any{k}, a...)...) }
	row("sent by A", "%s", humanBytes(up.Sent))
	row("received by C", "%s", humanBytes(up.Received))
	row("application errors", "%d", len(rep.Errors))
	for _, e := range rep.Errors {
		row("", "%s", describeError(e))
	}
	return b.String()
}

// describeError says which host saw which errno, in what operation.
func describeError(e loadgen.ErrorEvent) string {
	host := "A"
	if e.Side == "server" {
		host = "C"
	}
	return fmt.Sprintf("%s on %s's %s, after %s", e.Errno, host, e.Op, humanBytes(e.Offset))
}

// flowUp is the A→C direction of the demo's single flow.
func flowUp(rep *loadgen.Report) loadgen.Direction {
	if len(rep.Flows) == 0 {
		return loadgen.Direction{Mismatch: -1}
	}
	return rep.Flows[0].Up
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

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func humanRate(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.0f Mbit/s", bps/1e6)
	case bps >= 1e3:
		return fmt.Sprintf("%.0f kbit/s", bps/1e3)
	}
	return fmt.Sprintf("%.0f bit/s", bps)
}
