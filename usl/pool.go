package usl

import "github.com/usltun/usltun/internal/bufpool"

// bufPool hands out frame buffers from usltun's one size-class pool, so the
// data path reuses them instead of allocating one per frame. Each session has
// its own: no package state, and a closed session's buffers go away with it.
// The pool's smallest class is 64 B, so a control frame (a 40-byte WINDOW, a
// 33-byte RESET) costs 64 B of replay memory: that is what
// Config.ControlBuffer charges.
type bufPool struct{ p bufpool.Pool }

// get returns a buffer of length n. The pointer must go back through put.
func (b *bufPool) get(n int) *[]byte { return b.p.Get(n) }

func (b *bufPool) put(buf *[]byte) { b.p.Put(buf) }
