package usl

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// processEpoch is this process's incarnation number. It is chosen once, at
// first use, and never changes: a peer that sees a different epoch knows
// this process restarted and lost every session, and fences them. It is the
// one piece of package state, and it is immutable once set.
var processEpoch = sync.OnceValue(func() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic("usl: no randomness for the process epoch: " + err.Error())
		}
		// Zero means "epoch not known yet" on the wire.
		if e := binary.BigEndian.Uint64(b[:]); e != 0 {
			return e
		}
	}
})

// lastTimestamp is the last handshake timestamp this process sent. The
// listener keeps the greatest timestamp it accepted per static key and
// drops a first message that is not newer, so timestamps must increase
// strictly across every session of the process that may share a key:
// that makes this the second piece of package state, a clock.
var lastTimestamp atomic.Uint64

// nextTimestamp is max(now, last+1) in ns since the Unix epoch. A clock
// stepped backwards still yields increasing values; a process restarted
// after such a step is behind its predecessor's timestamps until the clock
// catches up, exactly as with WireGuard's TAI64N.
func nextTimestamp() uint64 {
	for {
		last := lastTimestamp.Load()
		ts := max(uint64(time.Now().UnixNano()), last+1)
		if lastTimestamp.CompareAndSwap(last, ts) {
			return ts
		}
	}
}
