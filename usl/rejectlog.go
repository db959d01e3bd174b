package usl

import (
	"cmp"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// rejectLog aggregates refused handshakes into at most one log line per
// interval, e.g.
//
//	rejected 1,204 handshakes from 87 sources in the last 10 s (unknown key: 1,100, garbage: 104)
//
// so that a flood of garbage or unknown keys, whose senders vary freely,
// cannot flood the log, and recording a rejection never blocks the accept
// loop on the log sink. The first rejection after a quiet spell opens a
// window; the line for it is written when the window closes.
type rejectLog struct {
	log      *slog.Logger
	interval time.Duration

	mu      sync.Mutex
	total   int
	counts  map[string]int
	sources map[netip.Prefix]struct{}
	last    string // the most recent rejection in words, for the line
	timer   *time.Timer
	closed  bool

	ever map[string]uint64 // every rejection since the start, by reason: Listener.Rejections
}

// maxTrackedSources bounds the distinct-source set of one window; past it
// the line says "at least".
const maxTrackedSources = 1 << 16

func newRejectLog(log *slog.Logger, interval time.Duration) *rejectLog {
	return &rejectLog{log: log, interval: interval, counts: make(map[string]int), sources: make(map[netip.Prefix]struct{}), ever: make(map[string]uint64)}
}

// Rejections returns how many handshakes the listener refused since it
// started, by reason ("garbage", "unknown key", "rate limit", ...): the
// counts behind the aggregated log line, never reset, for metrics.
func (l *Listener) Rejections() map[string]uint64 {
	r := l.rejects
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]uint64, len(r.ever))
	for k, v := range r.ever {
		m[k] = v
	}
	return m
}

// add counts one rejection of src for reason; detail goes into the line's
// "last" attribute if it is the window's last rejection.
func (r *rejectLog) add(src net.Addr, reason, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.total++
	r.counts[reason]++
	r.ever[reason]++
	if p, ok := sourcePrefix(src); ok && len(r.sources) < maxTrackedSources {
		r.sources[p] = struct{}{}
	}
	r.last = reason
	if detail != "" {
		r.last += ": " + detail
	}
	r.last += " from " + src.String()
	if r.timer == nil {
		r.timer = time.AfterFunc(r.interval, r.flush)
	}
}

// flush writes the window's line.
func (r *rejectLog) flush() {
	r.mu.Lock()
	r.timer = nil
	if r.total == 0 {
		r.mu.Unlock()
		return
	}
	msg, last := r.lineLocked(), r.last
	r.total, r.last = 0, ""
	clear(r.counts)
	clear(r.sources)
	r.mu.Unlock()
	r.log.Warn(msg, "last", last)
}

func (r *rejectLog) lineLocked() string {
	type kv struct {
		k string
		n int
	}
	var byCount []kv
	for k, n := range r.counts {
		byCount = append(byCount, kv{k, n})
	}
	slices.SortFunc(byCount, func(a, b kv) int { return cmp.Or(b.n-a.n, strings.Compare(a.k, b.k)) })
	parts := make([]string, len(byCount))
	for i, c := range byCount {
		parts[i] = c.k + ": " + thousands(c.n)
	}
	srcs := thousands(len(r.sources))
	if len(r.sources) >= maxTrackedSources {
		srcs = "at least " + srcs
	}
	noun, snoun := "handshakes", "sources"
	if r.total == 1 {
		noun = "handshake"
	}
	if len(r.sources) == 1 {
		snoun = "source"
	}
	return fmt.Sprintf("rejected %s %s from %s %s in the last %v (%s)",
		thousands(r.total), noun, srcs, snoun, fmtInterval(r.interval), strings.Join(parts, ", "))
}

// close writes what is pending and stops the log.
func (r *rejectLog) close() {
	r.mu.Lock()
	if r.timer != nil {
		r.timer.Stop()
	}
	r.mu.Unlock()
	r.flush()
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
}

func fmtInterval(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%d s", d/time.Second)
	}
	return d.String()
}

// thousands formats n with comma separators: 1204 → "1,204".
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
