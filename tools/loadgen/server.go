package loadgen

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxRuns bounds how many client runs the server remembers for reports.
const maxRuns = 256

// headerTimeout bounds how long a new connection may take to send its
// header, so stray connections cannot pile up.
const headerTimeout = 10 * time.Second

// Server answers loadgen clients on a listener.
type Server struct {
	ln  net.Listener
	log *slog.Logger
	ctr counters

	mu     sync.Mutex
	runs   map[[16]byte]*serverRun
	order  [][16]byte // creation order, for eviction
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	stop   atomic.Bool
}

type serverRun struct {
	flows   map[int]EndReport // ended flows
	changed chan struct{}     // closed and replaced whenever a flow ends
}

// NewServer serves loadgen flows on ln until Close. log may be nil.
func NewServer(ln net.Listener, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{ln: ln, log: log, runs: map[[16]byte]*serverRun{}, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting, aborts running flows and waits for their
// goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.stop.Store(true)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !s.stop.Load() {
				s.log.Error("accept", "err", err)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer s.forget(c)
			s.handle(c)
		}()
	}
}

func (s *Server) forget(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) handle(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
	h, err := readHeader(c)
	if err != nil {
		s.log.Warn("bad connection", "peer", c.RemoteAddr(), "err", err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	switch h.kind {
	case kindFlow:
		rep := s.serveFlow(c, &h)
		s.flowEnded(h.run, rep)
		attrs := []any{"peer", c.RemoteAddr().String(), "flow", rep.Flow, "mode", h.mode.String(),
			"sent", rep.Sent.Bytes, "received", rep.Recv.Bytes}
		for _, e := range rep.Errors {
			s.log.Warn("flow error", append(attrs, "op", e.Op, "errno", e.Errno, "offset", e.Offset, "err", e.Msg)...)
		}
		s.log.Debug("flow ended", attrs...)
	case kindReport:
		if err := s.serveReport(c, &h); err != nil {
			s.log.Warn("report", "peer", c.RemoteAddr(), "err", err)
		}
	}
}

func (s *Server) serveFlow(c net.Conn, h *header) EndReport {
	f := newFlowEnd(int(h.flow), "server", c, h, Down, &s.ctr, &s.stop)
	if !sleepUnless(time.Duration(h.idleMs)*time.Millisecond, &s.stop) {
		f.fail("idle", 0, errCanceled)
		return f.finish()
	}
	switch h.mode {
	case RR:
		req, resp := make([]byte, h.reqSize), make([]byte, h.respSize)
		var exp []byte
		if f.verify {
			exp = make([]byte, h.reqSize)
		}
		for {
			eof, ok := f.recvExact(req, exp)
			if eof {
				f.closeWrite()
				break
			}
			if !ok || !f.write(resp) {
				break
			}
		}
	default:
		var until time.Time
		if h.durationMs > 0 {
			until = time.Now().Add(time.Duration(h.durationMs) * time.Millisecond)
		}
		recvDone := make(chan struct{})
		go func() {
			defer close(recvDone)
			f.recvBulk(h.upBytes)
		}()
		if h.mode == HalfClose {
			<-recvDone
		}
		if h.dirs&Down != 0 {
			f.sendBulk(h.downBytes, until, h.rateKbps)
		} else {
			f.closeWrite()
		}
		<-recvDone
	}
	return f.finish()
}

// sleepUnless sleeps for d in small steps and reports false if stop was set
// meanwhile.
func sleepUnless(d time.Duration, stop *atomic.Bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if stop.Load() {
			return false
		}
		time.Sleep(min(50*time.Millisecond, time.Until(end)))
	}
	return !stop.Load()
}

func (s *Server) run(id [16]byte) *serverRun {
	r := s.runs[id]
	if r != nil {
		return r
	}
	r = &serverRun{flows: map[int]EndReport{}, changed: make(chan struct{})}
	s.runs[id] = r
	s.order = append(s.order, id)
	if len(s.order) > maxRuns {
		delete(s.runs, s.order[0])
		s.order = s.order[1:]
	}
	return r
}

func (s *Server) flowEnded(id [16]byte, rep EndReport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.run(id)
	r.flows[rep.Flow] = rep
	close(r.changed)
	r.changed = make(chan struct{})
}

// serveReport answers a report request: wait (bounded by the header's
// duration) for the listed flows, then send what is known.
func (s *Server) serveReport(c net.Conn, h *header) error {
	_ = c.SetDeadline(time.Now().Add(headerTimeout + time.Duration(h.durationMs)*time.Millisecond))
	var n uint32
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		return fmt.Errorf("read flow count: %w", err)
	}
	if n > maxReportFlows {
		return fmt.Errorf("%w: %d flows in report request", errProto, n)
	}
	want := make([]uint32, n)
	if err := binary.Read(c, binary.BigEndian, want); err != nil {
		return fmt.Errorf("read flow list: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.durationMs)*time.Millisecond)
	defer cancel()
	var out []EndReport
	for {
		s.mu.Lock()
		r := s.run(h.run)
		out = out[:0]
		for _, id := range want {
			if rep, ok := r.flows[int(id)]; ok {
				out = append(out, rep)
			}
		}
		changed := r.changed
		s.mu.Unlock()
		if len(out) == len(want) {
			break
		}
		select {
		case <-changed:
			continue
		case <-ctx.Done():
		}
		break
	}
	body, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	var lenb [4]byte
	binary.BigEndian.PutUint32(lenb[:], uint32(len(body)))
	if _, err := c.Write(append(lenb[:], body...)); err != nil {
		return fmt.Errorf("send report: %w", err)
	}
	return nil
}

// readReport is the client half of serveReport.
func readReport(r io.Reader) ([]EndReport, error) {
	var lenb [4]byte
	if _, err := io.ReadFull(r, lenb[:]); err != nil {
		return nil, fmt.Errorf("read report length: %w", err)
	}
	n := binary.BigEndian.Uint32(lenb[:])
	if n > 1<<30 {
		return nil, fmt.Errorf("%w: report of %d bytes", errProto, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read report: %w", err)
	}
	var out []EndReport
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, errors.Join(errProto, fmt.Errorf("decode report: %w", err))
	}
	return out, nil
}
