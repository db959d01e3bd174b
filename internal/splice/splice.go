// Package splice copies one direction of a flow: the loop that the netstack
// (application ↔ session stream) and the gateway (session stream ↔
// destination socket) share.
//
// Buffers come from a bufpool.Pool and are held only while data moves, so
// thousands of idle flows pin almost nothing: with a wait function a pooled
// buffer is borrowed for one read of data that is already there; without
// one, an idle direction blocks in a small buffer of its own and borrows a
// pooled buffer only while its reads keep filling the small one. A source
// that writes its own received buffers (a usl.Stream's WriteTo) takes no
// buffer of Copy's at all.
package splice

import (
	"errors"
	"io"
	"syscall"

	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/usl"
)

const (
	// ChunkSize is the largest read: one full USL data frame, which is
	// sealed as one record. A read of 64 KiB would be a full frame plus a
	// 32-byte one, each with its header, replay entry and ack.
	ChunkSize = usl.DefaultMaxFrame
	// idleBuf is the buffer a direction without a wait function blocks in
	// while idle: idle flows must be cheap. It lives in the goroutine's
	// stack frame, so its size sets the stack an idle flow keeps: 1 KiB
	// instead of 4 KiB saves ≈ 5.8 KiB per netstack flow (TestIdleFlowMemory:
	// 28.7 → 22.9 KB), and a busy flow leaves it after one full read.
	idleBuf = 1 << 10
)

// WriteError is Copy's error when dst failed; any other error came from
// src or from wait.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// IsWrite reports whether Copy's err came from the destination.
func IsWrite(err error) bool {
	var we *WriteError
	return errors.As(err, &we)
}

// Copy copies src to dst until src ends. It returns nil at io.EOF (the
// caller then half-closes dst), a *WriteError if dst failed, and src's or
// wait's error otherwise. Bytes read together with an error are written
// before the error is returned.
//
// wait, if not nil, blocks until src has data, its EOF or an error pending,
// without consuming it; io.EOF from wait ends the copy like EOF from src.
//
// A src that writes its own buffers (io.WriterTo: a usl.Stream, or a front
// end's wrapper of one) is asked to, and needs neither pool nor wait: it
// hands each received buffer to dst without a copy into one of Copy's, and
// blocks holding none while idle. Kernel sockets and files (syscall.Conn)
// are read here even though *net.TCPConn has a WriteTo: it copies through a
// 32 KiB buffer of its own, which an idle flow would pin.
func Copy(dst io.Writer, src io.Reader, pool *bufpool.Pool, wait func() error) error {
	if wt, ok := src.(io.WriterTo); ok {
		if _, kernel := src.(syscall.Conn); !kernel {
			return copyTo(dst, wt)
		}
	}
	if wait != nil {
		return copyWaiting(dst, src, pool, wait)
	}
	var small [idleBuf]byte
	buf := small[:]
	var big *[]byte
	defer func() {
		if big != nil {
			pool.Put(big)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return &WriteError{werr}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
		switch {
		case big == nil && n == len(buf):
			big = pool.Get(ChunkSize) // busy: read in large chunks
			buf = *big
		case big != nil && n < len(buf)/4:
			pool.Put(big) // draining: go back to the idle buffer
			big, buf = nil, small[:]
		}
	}
}

// copyTo is Copy from a source that writes to dst itself; dst's errors
// become *WriteError, as in the other copies.
func copyTo(dst io.Writer, src io.WriterTo) error {
	w := &recordingWriter{w: dst}
	_, err := src.WriteTo(w)
	if w.err != nil {
		return &WriteError{w.err}
	}
	return err
}

// recordingWriter remembers the error of its writer, so copyTo can tell
// the destination's failure from the source's.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(b []byte) (int, error) {
	n, err := r.w.Write(b)
	if err != nil {
		r.err = err
	}
	return n, err
}

func copyWaiting(dst io.Writer, src io.Reader, pool *bufpool.Pool, wait func() error) error {
	for {
		if err := wait(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		bp := pool.Get(ChunkSize)
		n, rerr := src.Read(*bp)
		var werr error
		if n > 0 {
			_, werr = dst.Write((*bp)[:n])
		}
		pool.Put(bp)
		if werr != nil {
			return &WriteError{werr}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
