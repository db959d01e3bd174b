package main

import (
	"sync"
	"time"

	"github.com/usltun/usltun/tools/loadgen"
)

// liveEvery is how often the progress line is refreshed.
const liveEvery = 250 * time.Millisecond

// live refreshes the progress line from its own goroutine until stop.
type live struct {
	w       *world
	con     *console
	start   time.Time
	run     *loadgen.Run
	base    int64 // w.delivered when the part started
	session bool  // ask A's daemon for the session state

	quit chan struct{}
	done chan struct{}

	mu   sync.Mutex
	last progress
}

// startLive shows the progress of run; withSession adds the tunnel's state.
func (w *world) startLive(con *console, run *loadgen.Run, withSession bool) *live {
	l := &live{
		w: w, con: con, run: run, start: time.Now(), base: w.delivered.Load(), session: withSession,
		quit: make(chan struct{}), done: make(chan struct{}),
	}
	go l.loop()
	return l
}

func (l *live) loop() {
	defer close(l.done)
	meter := rateMeter{window: time.Second}
	meter.add(0, 0)
	t := time.NewTicker(liveEvery)
	defer t.Stop()
	for {
		select {
		case <-l.quit:
			return
		case <-t.C:
		}
		p := l.sample(&meter)
		l.con.progress(formatProgress(p))
	}
}

func (l *live) sample(meter *rateMeter) progress {
	el := time.Since(l.start)
	// C's reads are counted on its listener, A's by the loadgen client.
	p := progress{Elapsed: el, Delivered: l.w.delivered.Load() - l.base + l.run.Progress().Received}
	p.BitsPerS = meter.add(el, p.Delivered)
	if l.session {
		// A status that cannot be read (the daemon is busy or gone) shows
		// as "?" rather than stopping the line.
		p.Session = "?"
		if st, err := l.w.status(); err == nil {
			p.Session, p.Reconnects, p.Retransmitted = st.State, st.Reconnects, st.RetransmittedBytes
		}
	}
	l.mu.Lock()
	l.last = p
	l.mu.Unlock()
	return p
}

// stop ends the refreshing and leaves the final numbers on screen.
func (l *live) stop() {
	close(l.quit)
	<-l.done
	meter := rateMeter{window: time.Second}
	l.mu.Lock()
	last := l.last
	l.mu.Unlock()
	// The final line is the whole part's average rate, not the last second's.
	p := l.sample(&meter)
	if p.Elapsed > 0 {
		p.BitsPerS = float64(p.Delivered) * 8 / p.Elapsed.Seconds()
	}
	p.Average = true
	if l.session && p.Session == "?" {
		p.Session, p.Reconnects, p.Retransmitted = last.Session, last.Reconnects, last.Retransmitted
	}
	l.con.keep(formatProgress(p))
}
