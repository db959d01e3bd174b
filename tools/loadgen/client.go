package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes a client run. The zero value of each field is a usable
// default, except Addr and one of Bytes or Duration for bulk modes.
type Config struct {
	Addr string // server host:port
	// Dial opens flow and report connections; nil uses net.Dialer. Tests pass
	// a testenv Host's DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	Flows int    // concurrent flows; default 1
	Seed  uint64 // stream seed; the same seed gives the same bytes
	Mode  Mode   // default Bulk
	Dirs  Dir    // default Both (bulk, half-close); RR always uses both

	Bytes int64 // bulk: bytes per flow and direction (0: until Duration)
	// UpBytes and DownBytes, when set, override Bytes for one direction;
	// for example a short request that half-closes while a long reply
	// streams: UpBytes: 1000, Duration: 20 * time.Second.
	UpBytes, DownBytes int64
	Duration           time.Duration // bulk: stop sending after this (0: until Bytes)
	Idle               time.Duration // silence after connecting, before the transfer
	// Rate paces bulk: each direction of each flow sends at most this
	// many bits per second (0: as fast as the path takes them), in
	// bursts of 10 ms worth. A link's own rate is another matter: pacing
	// the sender keeps a flow from filling every queue on its way.
	Rate float64

	ReqSize, RespSize int // rr: message sizes; default 64 bytes each
	Requests          int // rr: round trips per flow (0: until Duration)
	// Interval paces rr: a request starts every Interval (0: back to
	// back). A late response delays the next request, never queues two.
	Interval time.Duration

	NoVerify bool // skip hashing and comparison (for pure throughput)

	// ReportWait bounds the wait for the server's side of the flows;
	// default 10 s.
	ReportWait time.Duration
}

func (c *Config) fill() error {
	if c.Addr == "" {
		return errors.New("loadgen: no server address")
	}
	if c.Dial == nil {
		d := &net.Dialer{}
		c.Dial = d.DialContext
	}
	c.Flows = max(c.Flows, 1)
	if c.Mode == 0 {
		c.Mode = Bulk
	}
	if c.Dirs == 0 || c.Mode == RR {
		c.Dirs = Both
	}
	if c.Mode == RR {
		c.ReqSize, c.RespSize = cmp0(c.ReqSize, 64), cmp0(c.RespSize, 64)
		if c.ReqSize > maxMsg || c.RespSize > maxMsg {
			return fmt.Errorf("loadgen: rr message sizes above %d", maxMsg)
		}
		if c.Requests == 0 && c.Duration == 0 {
			return errors.New("loadgen: rr needs Requests or Duration")
		}
	} else if c.Duration == 0 && (c.Dirs&Up != 0 && c.bytes(Up) == 0 || c.Dirs&Down != 0 && c.bytes(Down) == 0) {
		return errors.New("loadgen: bulk needs Bytes (or UpBytes/DownBytes) or Duration")
	}
	if c.ReportWait == 0 {
		c.ReportWait = 10 * time.Second
	}
	return nil
}

// bytes is the byte bound of one direction (0: none).
func (c *Config) bytes(d Dir) int64 {
	switch {
	case d == Up && c.UpBytes != 0:
		return c.UpBytes
	case d == Down && c.DownBytes != 0:
		return c.DownBytes
	}
	return c.Bytes
}

func cmp0(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Run is a client run in progress.
type Run struct {
	cfg   Config
	id    [16]byte
	start time.Time
	ctr   counters

	canceled atomic.Bool
	done     chan struct{}

	mu     sync.Mutex
	heals  []time.Time
	conns  map[net.Conn]struct{}
	ends   []*clientFlow
	report *Report
	err    error
}

type clientFlow struct {
	end       *flowEnd
	connected bool // the header went out; the server should know the flow
	connect   time.Duration
	lat       hist
	dialErr   *ErrorEvent
}

// Start begins a run; the flows dial concurrently. Cancelling ctx aborts the
// flows (their errors then have errno CANCELED).
func Start(ctx context.Context, cfg Config) (*Run, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	r := &Run{cfg: cfg, start: time.Now(), done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	if _, err := rand.Read(r.id[:]); err != nil {
		return nil, fmt.Errorf("loadgen: run id: %w", err)
	}
	r.ends = make([]*clientFlow, cfg.Flows)
	var wg sync.WaitGroup
	for i := range cfg.Flows {
		r.ends[i] = &clientFlow{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.runFlow(ctx, i, r.ends[i])
		}()
	}
	stopWatch := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			r.abort()
		case <-stopWatch:
		}
	}()
	go func() {
		wg.Wait()
		close(stopWatch)
		r.finish(ctx)
		close(r.done)
	}()
	return r, nil
}

// RunFor runs cfg to the end and returns its report.
func RunFor(ctx context.Context, cfg Config) (*Report, error) {
	r, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return r.Wait()
}

// abort unblocks every flow: connections get a past deadline.
func (r *Run) abort() {
	r.canceled.Store(true)
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		_ = c.SetDeadline(time.Unix(1, 0))
	}
}

func (r *Run) track(c net.Conn, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.conns[c] = struct{}{}
		if r.canceled.Load() {
			_ = c.SetDeadline(time.Unix(1, 0))
		}
	} else {
		delete(r.conns, c)
	}
}

func (r *Run) header(flow int) *header {
	c := &r.cfg
	h := &header{
		kind: kindFlow, mode: c.Mode, dirs: c.Dirs, verify: !c.NoVerify, run: r.id,
		flow: uint32(flow), seed: c.Seed,
		durationMs: uint32(c.Duration / time.Millisecond),
		idleMs:     uint32(c.Idle / time.Millisecond),
		rateKbps:   uint32(min(c.Rate/1e3, math.MaxUint32)),
	}
	if c.Dirs&Up != 0 {
		h.upBytes = uint64(c.bytes(Up))
	}
	if c.Dirs&Down != 0 {
		h.downBytes = uint64(c.bytes(Down))
	}
	if c.Mode == RR {
		h.reqSize, h.respSize = uint32(c.ReqSize), uint32(c.RespSize)
	}
	return h
}

func (r *Run) runFlow(ctx context.Context, i int, cf *clientFlow) {
	h := r.header(i)
	t0 := time.Now()
	conn, err := r.cfg.Dial(ctx, "tcp", r.cfg.Addr)
	cf.connect = time.Since(t0)
	if err != nil {
		if r.canceled.Load() || ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", errCanceled, err)
		}
		cf.dialErr = &ErrorEvent{Flow: i, Side: "client", Op: "dial", Errno: Errno(err), At: time.Now(), Msg: err.Error()}
		r.ctr.errors.Add(1)
		return
	}
	r.track(conn, true)
	defer r.track(conn, false)
	defer conn.Close()
	f := newFlowEnd(i, "client", conn, h, Up, &r.ctr, &r.canceled)
	cf.end = f
	if _, err := conn.Write(h.marshal()); err != nil {
		f.fail("write", 0, fmt.Errorf("send header: %w", err))
		return
	}
	cf.connected = true
	if !sleepUnless(r.cfg.Idle, &r.canceled) {
		f.fail("idle", 0, errCanceled)
		return
	}
	if r.cfg.Mode == RR {
		r.rr(f, &cf.lat)
		return
	}
	var until time.Time
	if r.cfg.Duration > 0 {
		until = time.Now().Add(r.cfg.Duration)
	}
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		f.recvBulk(h.downBytes)
	}()
	if r.cfg.Dirs&Up != 0 {
		f.sendBulk(h.upBytes, until, h.rateKbps)
	} else {
		f.closeWrite()
	}
	<-recvDone
}

func (r *Run) rr(f *flowEnd, lat *hist) {
	req, resp := make([]byte, r.cfg.ReqSize), make([]byte, r.cfg.RespSize)
	var exp []byte
	if f.verify {
		exp = make([]byte, r.cfg.RespSize)
	}
	var until time.Time
	if r.cfg.Duration > 0 {
		until = time.Now().Add(r.cfg.Duration)
	}
	var next time.Time
	for n := 0; r.cfg.Requests == 0 || n < r.cfg.Requests; n++ {
		if r.cfg.Interval > 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = time.Now().Add(r.cfg.Interval)
		}
		if !until.IsZero() && !time.Now().Before(until) {
			break
		}
		t0 := time.Now()
		if !f.write(req) {
			return
		}
		eof, ok := f.recvExact(resp, exp)
		if eof {
			f.fail("read", f.rep.Recv.Bytes, fmt.Errorf("%w: server closed before its response", errProto))
			return
		}
		if !ok {
			return
		}
		lat.addAt(t0, time.Since(t0))
	}
	f.closeWrite()
	// The server answers the FIN with its own; anything else is an error.
	f.recvBulk(0)
}

// MarkHeal records that a fault was healed at t. The report gives, per
// heal, the delay until the first byte after it (see Recovery). Safe from
// any goroutine, also after the run ended.
func (r *Run) MarkHeal(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.heals = append(r.heals, t)
	if r.report != nil {
		r.report.Recoveries = recoveries(r.report.Flows, r.heals)
	}
}

// Progress is a live snapshot of a run.
type Progress struct {
	Elapsed  time.Duration
	Sent     int64 // bytes written by the client
	Received int64 // bytes read by the client
	Errors   int64 // client-side errors so far
}

// Progress returns live totals, for progress lines.
func (r *Run) Progress() Progress {
	return Progress{
		Elapsed:  time.Since(r.start),
		Sent:     r.ctr.sent.Load(),
		Received: r.ctr.recv.Load(),
		Errors:   r.ctr.errors.Load(),
	}
}

// Done is closed when the run has ended and its report is ready.
func (r *Run) Done() <-chan struct{} { return r.done }

// Cancel aborts the run's flows.
func (r *Run) Cancel() { r.abort() }

// Wait waits for the end of the run and returns its report. The error is
// non-nil only when the report could not be completed (the server's half
// missing); network errors of the flows are in the report.
func (r *Run) Wait() (*Report, error) {
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.report, r.err
}

func (r *Run) finish(ctx context.Context) {
	var ids []uint32
	for i, cf := range r.ends {
		if cf.connected {
			ids = append(ids, uint32(i))
		}
	}
	server, err := r.fetchReport(ctx, ids)
	rep := r.assemble(server)
	if err != nil {
		err = fmt.Errorf("loadgen: server report: %w", err)
		rep.Errors = append(rep.Errors, ErrorEvent{Flow: -1, Side: "client", Op: "report", Errno: Errno(err), At: time.Now(), Msg: err.Error()})
		rep.Verified = false
	}
	r.mu.Lock()
	rep.Recoveries = recoveries(rep.Flows, r.heals)
	r.report, r.err = rep, err
	r.mu.Unlock()
}

// fetchReport asks the server for its half of the flows, retrying on a
// fresh connection (a fault may still be active) until ReportWait passes.
func (r *Run) fetchReport(ctx context.Context, ids []uint32) ([]EndReport, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	deadline := time.Now().Add(r.cfg.ReportWait)
	var last error
	for attempt := 0; attempt < 50 && time.Now().Before(deadline) && !r.canceled.Load(); attempt++ {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		rep, err := r.tryReport(ctx, ids, time.Until(deadline))
		if err == nil {
			return rep, nil
		}
		last = err
	}
	if last == nil {
		last = errCanceled
	}
	return nil, last
}

func (r *Run) tryReport(ctx context.Context, ids []uint32, wait time.Duration) ([]EndReport, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	c, err := r.cfg.Dial(ctx, "tcp", r.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", r.cfg.Addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	h := &header{kind: kindReport, run: r.id, durationMs: uint32(wait / time.Millisecond)}
	msg := h.marshal()
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(ids)))
	for _, id := range ids {
		msg = binary.BigEndian.AppendUint32(msg, id)
	}
	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("send report request: %w", err)
	}
	return readReport(c)
}
