package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/bufpool"
	"github.com/usltun/usltun/internal/splice"
	"github.com/usltun/usltun/usl"
)

// halfCloser is a connection whose write side can be shut down alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// relayTCP copies both ways between the stream and the destination socket.
// A FIN on one side becomes CloseWrite on the other; a reset on one side
// aborts the other with a reset. Once one direction has finished, the other
// gets halfClose to finish too.
// Relay buffers come from pool only once data is ready to read (see
// copySocket; the stream side needs none, see copyStream), so idle flows
// pin no buffer: 10,000 idle flows would otherwise pin 1.25 GiB.
// The caller's goroutine copies socket → stream itself and one goroutine
// copies stream → socket: an idle flow costs two parked goroutines, not
// three (a parked goroutine's stack is most of what an idle flow costs).
func relayTCP(pool *bufpool.Pool, st *usl.Stream, c *net.TCPConn, halfClose time.Duration) {
	var end sync.Once // the first to end the flow, cleanly or not, decides how
	fail := func(err error) { end.Do(func() { abortTCP(st, c, err) }) }
	type result struct {
		err   error
		timer *time.Timer // the bound on the other direction, once this one ended cleanly
	}
	down := make(chan result, 1)
	go func() {
		var r result
		if r.err = copyStream(pool, c, st); r.err != nil {
			fail(r.err) // closes c, which ends copySocket below
		} else {
			r.timer = time.AfterFunc(halfClose, func() { fail(errHalfCloseTimeout) })
		}
		down <- r
	}()
	if err := copySocket(pool, st, c); err != nil {
		fail(err) // closes st, which ends the other copy
		if r := <-down; r.timer != nil {
			r.timer.Stop()
		}
		return
	}
	var r result
	t := time.NewTimer(halfClose)
	select {
	case r = <-down:
	case <-t.C:
		fail(errHalfCloseTimeout)
		r = <-down
	}
	t.Stop()
	if r.timer != nil {
		r.timer.Stop()
	}
	if r.err == nil {
		end.Do(func() {
			st.Close()
			c.Close()
		})
	}
}

var errHalfCloseTimeout = errors.New("half-closed flow timed out")

// abortTCP tears both sides down with a reset, choosing the stream's reason
// from what went wrong.
func abortTCP(st *usl.Stream, c *net.TCPConn, cause error) {
	var re *usl.ResetError
	if !errors.As(cause, &re) {
		st.Reset(usl.ResetAborted)
	}
	// SO_LINGER 0 makes Close send an RST, which is how the destination
	// learns that the client side aborted rather than finished.
	c.SetLinger(0)
	c.Close()
	st.Close()
}

// copyStream copies the stream to dst until the stream's FIN, then
// half-closes dst; any other error is returned. The stream writes its
// received buffers to dst itself (usl.Stream.WriteTo, through splice.Copy):
// no relay buffer, no copy into one, and an idle flow blocks holding none.
func copyStream(pool *bufpool.Pool, dst halfCloser, st *usl.Stream) error {
	if err := splice.Copy(dst, st, pool, nil); err != nil {
		return err
	}
	return dst.CloseWrite()
}

// copySocket copies the socket c to dst until c's EOF, then half-closes
// dst; any other error is returned. It reads the fd itself inside the
// poller's callback, which takes a pooled buffer only for the read and
// returns it at once when the socket has nothing (EAGAIN): an idle flow
// parks in the poller without a buffer, and a busy one costs one read per
// chunk, where peeking first (MSG_PEEK) cost two. A reset is returned as
// ECONNRESET, so the stream is reset too rather than closed cleanly.
func copySocket(pool *bufpool.Pool, dst halfCloser, c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	read := func(fd uintptr) bool {
		bp = pool.Get(splice.ChunkSize)
		for {
			n, rerr = syscall.Read(int(fd), *bp)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			pool.Put(bp)
			bp = nil
			return false
		}
		return true
	}
	for {
		if err := rc.Read(read); err != nil {
			return err // closed or past a deadline: the relay is ending
		}
		if rerr != nil || n <= 0 {
			pool.Put(bp)
			if rerr != nil {
				return os.NewSyscallError("read", rerr)
			}
			return dst.CloseWrite()
		}
		_, werr := dst.Write((*bp)[:n])
		pool.Put(bp)
		if werr != nil {
			return &splice.WriteError{Err: werr}
		}
	}
}

// relayUDP carries datagrams between the stream and a connected UDP socket.
// On the stream each datagram is a 2-byte big-endian length and the payload.
// The flow ends after idle with no datagram either way.
func relayUDP(pool *bufpool.Pool, st *usl.Stream, c *net.UDPConn, idle time.Duration) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	touch := func() { last.Store(time.Now().UnixNano()) }
	idleFor := func() time.Duration { return time.Since(time.Unix(0, last.Load())) }

	done := make(chan struct{}, 2)
	// stream → socket. It has no deadline of its own: a deadline firing
	// between a record's header and payload would lose the framing. The
	// other direction watches for idleness and closes both sides.
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			n, err := flow.ReadDatagramLen(st)
			if err != nil {
				return
			}
			bp := pool.Get(n)
			p := *bp
			_, err = io.ReadFull(st, p)
			if err == nil {
				touch()
				// A send error (ECONNREFUSED from an earlier ICMP port
				// unreachable) loses one datagram, as UDP does; go on.
				c.Write(p)
			}
			pool.Put(bp)
			if err != nil {
				return
			}
		}
	}()
	go func() { // socket → stream
		defer func() { done <- struct{}{} }()
		for {
			c.SetReadDeadline(time.Now().Add(idle))
			bp := pool.Get(flow.DatagramBuf)
			n, err := c.Read((*bp)[flow.DatagramHeader:])
			if err == nil {
				touch()
				err = flow.WriteDatagram(st, (*bp)[:flow.DatagramHeader+n])
			}
			pool.Put(bp)
			if errors.Is(err, os.ErrDeadlineExceeded) && idleFor() < idle {
				continue
			}
			if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				return
			}
		}
	}()
	<-done
	c.Close()
	st.Close()
	<-done
}
