package netstack

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/flow"
	"github.com/usltun/usltun/internal/splice"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// shutdownWriteGrace bounds writes still in progress when Close stops the
// flows.
const shutdownWriteGrace = time.Second

// tcpFlow is one spliced TCP connection: app is the application's
// connection terminated in gVisor, remote the Dialer's half.
type tcpFlow struct {
	st   *Stack
	dest flow.Dest

	mu       sync.Mutex
	app      *gonet.TCPConn
	ep       tcpip.Endpoint
	wq       *waiter.Queue
	remote   flow.Conn
	stopping bool // Close is shutting flows down: deadline errors mean FIN

	appFIN atomic.Bool // we sent (or are sending) our FIN to the app

	abortOnce sync.Once
	halfOnce  sync.Once
	halfTimer *time.Timer
}

// attach publishes the connection halves; if Close already began it
// applies the shutdown at once.
func (f *tcpFlow) attach(app *gonet.TCPConn, ep tcpip.Endpoint, wq *waiter.Queue, remote flow.Conn) {
	f.mu.Lock()
	f.app, f.ep, f.wq, f.remote = app, ep, wq, remote
	stopping := f.stopping
	f.mu.Unlock()
	if stopping {
		f.interrupt()
	}
}

// shutdown is called by Stack.Close: both read sides stop at once, which
// the pumps turn into FINs in both directions.
func (f *tcpFlow) shutdown() {
	f.mu.Lock()
	f.stopping = true
	attached := f.app != nil
	f.mu.Unlock()
	if attached {
		f.interrupt()
	}
}

func (f *tcpFlow) interrupt() {
	now := time.Now()
	_ = f.app.SetReadDeadline(now)
	_ = f.remote.SetReadDeadline(now)
	_ = f.app.SetWriteDeadline(now.Add(shutdownWriteGrace))
	_ = f.remote.SetWriteDeadline(now.Add(shutdownWriteGrace))
}

func (f *tcpFlow) isStopping() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopping
}

// splice copies both ways until both directions ended (FIN both ways) or
// the flow was aborted, then releases both halves.
func (f *tcpFlow) splice() {
	done := make(chan bool, 1)
	downDone := make(chan struct{})
	go func() {
		clean := f.pump(f.remote, f.app, f.closeWriteRemote)
		if clean {
			clean = f.watchAppReset(downDone)
		}
		done <- clean
	}()
	clean := f.pump(f.app, f.remote, f.closeWriteApp)
	close(downDone)
	clean = <-done && clean
	f.mu.Lock()
	if f.halfTimer != nil {
		f.halfTimer.Stop()
	}
	f.mu.Unlock()
	if !clean {
		f.abort() // idempotent; makes sure both halves saw the reset
	}
	_ = f.app.Close()
	_ = f.remote.Close()
}

func (f *tcpFlow) closeWriteRemote() error { return f.remote.CloseWrite() }
func (f *tcpFlow) closeWriteApp() error {
	f.appFIN.Store(true) // before the FIN, so watchAppReset never mistakes the close
	return f.app.CloseWrite()
}

// pump copies src to dst. On EOF (a FIN) it half-closes dst and reports a
// clean end; on any other error, on either side, it aborts the whole flow:
// an RST from the app resets the remote stream, and a reset of the remote
// stream (fenced, for example) is sent to the app as an RST. A read that
// times out because Close is stopping the flow ends it like a FIN.
func (f *tcpFlow) pump(dst io.Writer, src io.Reader, closeWrite func() error) bool {
	err := splice.Copy(dst, src, &f.st.bufs, nil)
	if err != nil && (splice.IsWrite(err) || !f.isStopping() || !isTimeout(err)) {
		f.abort()
		return false
	}
	if err := closeWrite(); err != nil {
		f.abort()
		return false
	}
	f.halfClosed()
	return true
}

// watchAppReset runs after the app's FIN, while data still flows to the
// app: nothing reads the app's side any more, so an RST from the app would
// otherwise go unnoticed until a write to it fails or the half-close timer
// fires. It aborts the flow on such an RST; it returns once the other
// direction is done.
func (f *tcpFlow) watchAppReset(downDone <-chan struct{}) bool {
	entry, ch := waiter.NewChannelEntry(waiter.EventErr | waiter.EventHUp)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	for {
		// An RST in CLOSE_WAIT moves gVisor's endpoint to CLOSED directly;
		// CLOSED without our FIN can only be a reset.
		st := tcp.EndpointState(f.ep.State())
		if st == tcp.StateError || (st == tcp.StateClose && !f.appFIN.Load()) {
			f.abort()
			return false
		}
		select {
		case <-ch:
		case <-downDone:
			return true
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// halfClosed starts the bound on waiting for the other direction's FIN.
func (f *tcpFlow) halfClosed() {
	f.halfOnce.Do(func() {
		f.mu.Lock()
		f.halfTimer = time.AfterFunc(f.st.cfg.HalfCloseTimeout, func() {
			f.st.log.Debug("tcp half-close timeout, resetting", "dest", f.dest.String())
			f.abort()
		})
		f.mu.Unlock()
	})
}

// abort resets both halves: RST to the application (gVisor Abort sends it
// for a connected endpoint) and Abort/Close on the remote stream.
func (f *tcpFlow) abort() {
	f.abortOnce.Do(func() {
		f.ep.Abort()
		abort(f.remote)
	})
}
