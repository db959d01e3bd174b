package usl

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
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
