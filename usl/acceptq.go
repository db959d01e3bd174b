package usl

import (
	"context"
	"sync"
)

// acceptQueue is the FIFO behind Listener.Accept and Session.AcceptStream:
// items pushed under the owner's lock, handed out one per caller. A push
// wakes one waiter through a channel of capacity 1; a waiter that takes an
// item and sees more left passes the wake-up on, so concurrent callers
// never sleep while items wait.
type acceptQueue[T comparable] struct {
	q    []T
	wake chan struct{}
}

func newAcceptQueue[T comparable]() acceptQueue[T] {
	return acceptQueue[T]{wake: make(chan struct{}, 1)}
}

func (a *acceptQueue[T]) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// pushLocked appends x and wakes a waiter.
func (a *acceptQueue[T]) pushLocked(x T) {
	a.q = append(a.q, x)
	a.signal()
}

// removeLocked drops x if it is still queued.
func (a *acceptQueue[T]) removeLocked(x T) {
	for i, q := range a.q {
		if q == x {
			a.q = append(a.q[:i], a.q[i+1:]...)
			return
		}
	}
}

// drainLocked empties the queue and returns what was in it.
func (a *acceptQueue[T]) drainLocked() []T {
	q := a.q
	a.q = nil
	return q
}

// next blocks until an item is queued, ended reports an error (checked
// under mu), done is closed, or ctx ends. mu is the owner's lock.
func (a *acceptQueue[T]) next(ctx context.Context, mu sync.Locker, done <-chan struct{}, ended func() error) (T, error) {
	var zero T
	for {
		mu.Lock()
		if len(a.q) > 0 {
			x := a.q[0]
			a.q[0] = zero
			a.q = a.q[1:]
			if len(a.q) > 0 {
				a.signal() // pass the wake-up on to a concurrent caller
			}
			mu.Unlock()
			return x, nil
		}
		err := ended()
		mu.Unlock()
		if err != nil {
			return zero, err
		}
		select {
		case <-a.wake:
		case <-done:
		case <-ctx.Done():
			return zero, ctx.Err()
		}
	}
}
