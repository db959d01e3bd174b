package usl

import (
	"math/bits"
	"sync"
)

// bufPool hands out byte slices in power-of-two size classes, so the data
// path reuses frame buffers instead of allocating one per frame. Each
// session has its own pool: no package state, and a closed session's
// buffers go away with it.
type bufPool struct {
	classes [maxClass - minClass + 1]sync.Pool
}

// The smallest class is 64 B, so that a control frame (a 40-byte WINDOW,
// a 33-byte RESET) costs 64 B of replay memory, not 512: those frames are
// what Config.ControlBuffer charges.
const (
	minClass = 6  // 64 B
	maxClass = 21 // 2 MiB: maxFrameLimit plus a header
)

func classOf(n int) int {
	if n <= 1<<minClass {
		return 0
	}
	return bits.Len(uint(n-1)) - minClass
}

// get returns a buffer of length n. The pointer must go back through put.
func (p *bufPool) get(n int) *[]byte {
	c := classOf(n)
	if v := p.classes[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minClass))
	return &b
}

func (p *bufPool) put(b *[]byte) {
	c := classOf(cap(*b))
	if cap(*b) != 1<<(c+minClass) {
		return // not ours
	}
	p.classes[c].Put(b)
}
