package loadgen

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxBuf is the read and write size of bulk transfers: large enough that
// per-call overhead vanishes, small enough for thousands of flows.
const maxBuf = 64 << 10

// counters are a run's live totals, for progress lines.
type counters struct {
	sent, recv atomic.Int64
	errors     atomic.Int64
}

// flowEnd is one end of one flow: it owns the connection's two directions,
// their generators, hashes and timeline, and the end's error list.
type flowEnd struct {
	flow     int
	side     string
	conn     net.Conn
	verify   bool
	ctr      *counters
	canceled *atomic.Bool // set by the owner before it forces deadlines

	tx, rx         *stream
	txHash, rxHash hash.Hash

	mu  sync.Mutex // guards rep.Errors: sender and receiver run concurrently
	rep EndReport
}

func newFlowEnd(flow int, side string, c net.Conn, h *header, txDir Dir, ctr *counters, canceled *atomic.Bool) *flowEnd {
	f := &flowEnd{flow: flow, side: side, conn: c, verify: h.verify, ctr: ctr, canceled: canceled}
	f.rep.Flow = flow
	f.rep.Sent.Mismatch, f.rep.Recv.Mismatch = -1, -1
	rxDir := Both &^ txDir
	f.tx = newStream(h.seed, h.flow, txDir)
	f.rx = newStream(h.seed, h.flow, rxDir)
	if f.verify {
		f.txHash, f.rxHash = sha256.New(), sha256.New()
	}
	return f
}

// fail records an application-visible error.
func (f *flowEnd) fail(op string, off int64, err error) {
	if f.canceled != nil && f.canceled.Load() {
		err = fmt.Errorf("%w: %w", errCanceled, err)
	}
	ev := ErrorEvent{Flow: f.flow, Side: f.side, Op: op, Errno: Errno(err), Offset: off, At: time.Now(), Msg: err.Error()}
	f.ctr.errors.Add(1)
	f.mu.Lock()
	f.rep.Errors = append(f.rep.Errors, ev)
	f.mu.Unlock()
}

// bufSize picks a buffer for a transfer of n bytes (0: unbounded).
func bufSize(n uint64) int {
	if n == 0 || n > maxBuf {
		return maxBuf
	}
	return max(int(n), 4<<10)
}

// sendBulk writes the stream until limit bytes (0: no limit) or until the
// deadline (zero: none), then shuts down writing. rateKbps > 0 paces it:
// writes of 10 ms worth, each no earlier than the rate allows.
func (f *flowEnd) sendBulk(limit uint64, until time.Time, rateKbps uint32) {
	buf := make([]byte, bufSize(limit))
	bytesPerSec := float64(rateKbps) * 1e3 / 8
	if rateKbps > 0 {
		buf = buf[:min(len(buf), max(int(bytesPerSec/100), 1<<10))]
	}
	start := time.Now()
	for limit == 0 || uint64(f.rep.Sent.Bytes) < limit {
		if !until.IsZero() && !time.Now().Before(until) {
			break
		}
		if rateKbps > 0 {
			due := start.Add(time.Duration(float64(f.rep.Sent.Bytes) / bytesPerSec * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		n := len(buf)
		if limit != 0 {
			n = int(min(uint64(n), limit-uint64(f.rep.Sent.Bytes)))
		}
		if !f.write(buf[:n]) {
			return
		}
	}
	f.closeWrite()
}

// write sends b, filled from the stream, and reports success.
func (f *flowEnd) write(b []byte) bool {
	f.tx.fill(b)
	n, err := f.conn.Write(b)
	if n > 0 {
		if f.verify {
			f.txHash.Write(b[:n])
		}
		f.rep.Sent.Bytes += int64(n)
		f.ctr.sent.Add(int64(n))
	}
	if err != nil {
		f.fail("write", f.rep.Sent.Bytes, err)
		return false
	}
	return true
}

func (f *flowEnd) closeWrite() {
	cw, ok := f.conn.(interface{ CloseWrite() error })
	if !ok {
		f.fail("shutdown", f.rep.Sent.Bytes, fmt.Errorf("%w: %T cannot half-close", errProto, f.conn))
		return
	}
	if err := cw.CloseWrite(); err != nil {
		f.fail("shutdown", f.rep.Sent.Bytes, err)
		return
	}
	f.rep.Sent.Complete = true
}

// recvBulk reads and checks the peer's stream until its FIN.
func (f *flowEnd) recvBulk(sizeHint uint64) {
	buf := make([]byte, bufSize(sizeHint))
	var exp []byte
	if f.verify {
		exp = make([]byte, len(buf))
	}
	for {
		n, err := f.conn.Read(buf)
		if n > 0 {
			f.got(buf[:n], exp)
		}
		if errors.Is(err, io.EOF) {
			f.rep.Recv.Complete = true
			return
		}
		if err != nil {
			f.fail("read", f.rep.Recv.Bytes, err)
			return
		}
	}
}

// recvExact reads exactly len(buf) bytes of the stream. A FIN before the
// first byte is a clean end (eof true, no error recorded).
func (f *flowEnd) recvExact(buf, exp []byte) (eof, ok bool) {
	for got := 0; got < len(buf); {
		n, err := f.conn.Read(buf[got:])
		if n > 0 {
			f.got(buf[got:got+n], exp)
			got += n
		}
		if errors.Is(err, io.EOF) && got == 0 {
			f.rep.Recv.Complete = true
			return true, true
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && got < len(buf) {
			f.fail("read", f.rep.Recv.Bytes, err)
			return false, false
		}
	}
	return false, true
}

// got accounts for received bytes: timeline, count, hash, comparison.
func (f *flowEnd) got(b, exp []byte) {
	now := time.Now().UnixNano()
	f.rep.Recv.Timeline.record(now)
	off := f.rep.Recv.Bytes
	f.rep.Recv.Bytes += int64(len(b))
	f.ctr.recv.Add(int64(len(b)))
	if !f.verify {
		return
	}
	f.rxHash.Write(b)
	e := exp[:len(b)]
	f.rx.fill(e)
	if f.rep.Recv.Mismatch < 0 && !bytes.Equal(b, e) {
		i := 0
		for b[i] == e[i] {
			i++
		}
		f.rep.Recv.Mismatch = off + int64(i)
		f.fail("verify", off+int64(i), errMismatch)
	}
}

// finish seals the report: hashes and the ended flag.
func (f *flowEnd) finish() EndReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.verify {
		f.rep.Sent.SHA256 = hex.EncodeToString(f.txHash.Sum(nil))
		f.rep.Recv.SHA256 = hex.EncodeToString(f.rxHash.Sum(nil))
	}
	f.rep.Ended = true
	return f.rep
}
