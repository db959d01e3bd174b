// Package ratelog aggregates repeated events into at most one log line per
// interval for each kind of event, e.g.
//
//	forbidden: destination is not exported count=412 peer=… last_dst=tcp:10.1.2.3:22
//
// so that a peer probing forbidden addresses, or an application flooding
// a front end with connects that fail, cannot flood the log. The first
// event after a quiet interval is logged at once; the ones within the
// interval after it are counted and logged together, each kind with the
// attributes of its most recent event, when that interval ends: no event
// goes uncounted. A Log is safe for concurrent use; after the last Add
// its pending line, if any, is written within one interval.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log is one aggregating log.
type Log struct {
	log      *slog.Logger
	level    slog.Level
	interval time.Duration

	mu      sync.Mutex
	last    time.Time // when the last line was written
	pending map[string]*events
	order   []string // pending's kinds in their first event's order
	timer   *time.Timer
}

type events struct {
	n     int
	attrs []any // the most recent event's
}

// New returns a Log writing to log at level, at most one line per kind of
// event per interval.
func New(log *slog.Logger, level slog.Level, interval time.Duration) *Log {
	return &Log{log: log, level: level, interval: interval, pending: make(map[string]*events)}
}

// Add counts one event of kind msg (the line's message); attrs describe
// it.
func (r *Log) Add(msg string, attrs ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.timer == nil && now.Sub(r.last) >= r.interval {
		r.last = now
		r.log.Log(context.Background(), r.level, msg, append([]any{"count", 1}, attrs...)...)
		return
	}
	p := r.pending[msg]
	if p == nil {
		p = &events{}
		r.pending[msg] = p
		r.order = append(r.order, msg)
	}
	p.n++
	p.attrs = attrs
	if r.timer == nil {
		r.timer = time.AfterFunc(r.last.Add(r.interval).Sub(now), r.flush)
	}
}

// flush writes the lines of the events counted since the last line.
func (r *Log) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timer, r.last = nil, time.Now()
	for _, msg := range r.order {
		p := r.pending[msg]
		r.log.Log(context.Background(), r.level, msg, append([]any{"count", p.n}, p.attrs...)...)
	}
	clear(r.pending)
	r.order = r.order[:0]
}
