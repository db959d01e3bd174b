package hub

import (
	"context"
	"sync"

	"github.com/usltun/usltun/usl"
)

// Slot holds the session new flows to one peer go to. A dialed peer's is
// set once; an accepting peer's is replaced by each session the listener
// hands out (a restarted peer's new session, after the old one's fence).
type Slot struct {
	mu      sync.Mutex
	s       *usl.Session
	changed chan struct{}
}

// NewSlot returns an empty slot.
func NewSlot() *Slot { return &Slot{changed: make(chan struct{})} }

// Set makes s the current session and wakes the waiters.
func (m *Slot) Set(s *usl.Session) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s = s
	close(m.changed)
	m.changed = make(chan struct{})
}

// Current is the latest session, live or not, or nil.
func (m *Slot) Current() *usl.Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.s
}

// Wait returns a live session, waiting for the peer to connect if there is
// none yet: a SYN during a partition waits for the heal, bounded by ctx and
// by stop (the peer's removal).
func (m *Slot) Wait(ctx, stop context.Context) (*usl.Session, error) {
	for {
		m.mu.Lock()
		s, changed := m.s, m.changed
		m.mu.Unlock()
		if s != nil && !ended(s) {
			return s, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-stop.Done():
			return nil, stop.Err()
		}
	}
}

func ended(s *usl.Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}
