// Package bufpool hands out byte slices in power-of-two size classes, from
// 64 B to 2 MiB, so data paths reuse buffers instead of allocating one per
// frame or per read. It is the one buffer pool of usltun: the session
// layer's frames, the netstack's and the gateway's copy buffers all come
// from a Pool.
//
// A Pool is a value with no package state: each owner (a session, a stack,
// a gateway) has its own, and its buffers go away with it. The zero Pool is
// ready to use and safe for concurrent use.
package bufpool

import (
	"math/bits"
	"sync"
)

// Size classes: 1<<MinClass to 1<<MaxClass bytes.
const (
	MinClass = 6  // 64 B: a session's control frames are charged what they allocate
	MaxClass = 21 // 2 MiB: the session layer's largest frame plus a header
)

// Pool is a set of sync.Pools, one per size class.
type Pool struct {
	classes [MaxClass - MinClass + 1]sync.Pool
}

func classOf(n int) int {
	if n <= 1<<MinClass {
		return 0
	}
	return bits.Len(uint(n-1)) - MinClass
}

// Get returns a buffer of length n (at most 1<<MaxClass), with the capacity
// of its class. The pointer must go back through Put, and the buffer must
// not be used after that.
func (p *Pool) Get(n int) *[]byte {
	c := classOf(n)
	if v := p.classes[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+MinClass))
	return &b
}

// Put returns a buffer from Get. A slice whose capacity is not exactly a
// class size (one the Pool did not make) is ignored.
func (p *Pool) Put(b *[]byte) {
	c := classOf(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<(c+MinClass) {
		return // not ours
	}
	p.classes[c].Put(b)
}
