package usl

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a dialer (Config.Dial) that keeps what the dialer wrote on
// each connection: the first Write (message 1 with its mac1) and the
// first recordCap bytes of the whole stream, as an on-path attacker
// would record them. gate makes dials fail, as a partition would.
type recorder struct {
	mu    sync.Mutex
	conns []*recConn
	gate  atomic.Bool
}

const recordCap = 256 << 10

type recConn struct {
	net.Conn
	mu     sync.Mutex
	first  []byte
	stream []byte
}

func (c *recConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.first == nil {
		c.first = append([]byte(nil), p...)
	}
	if room := recordCap - len(c.stream); room > 0 {
		c.stream = append(c.stream, p[:min(len(p), room)]...)
	}
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (r *recorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if r.gate.Load() {
		return nil, errors.New("recorder: dials held back")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	rc := &recConn{Conn: c}
	r.mu.Lock()
	r.conns = append(r.conns, rc)
	r.mu.Unlock()
	return rc, nil
}

// recording returns message 1 and the stream of connection i (-1: last).
func (r *recorder) recording(i int) (first, stream []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i < 0 {
		i = len(r.conns) - 1
	}
	c := r.conns[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.first...), append([]byte(nil), c.stream...)
}

// replayer sends recorded bytes to addr rate times a second for dur,
// alternating message 1 alone and the whole stream, and counts the bytes
// the listener sent back.
func replay(t *testing.T, addr string, first, stream []byte, rate int, dur time.Duration) (sent int, answered int64) {
	t.Helper()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(dur)
	var wg sync.WaitGroup
	var back atomic.Int64
	for i := 0; time.Now().Before(end); i++ {
		msg := first
		if i%2 == 1 {
			msg = stream
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Errorf("replay dial: %v", err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(msg)
			n, _ := io.Copy(io.Discard, c)
			back.Add(n)
		}()
		sent++
		<-tick.C
	}
	wg.Wait()
	return sent, back.Load()
}

// pacedFlow writes a paced stream from w and reads it at r; received
// counts the bytes, so phases can be compared. wait returns both SHA-256s.
type pacedFlow struct {
	received atomic.Int64
	stop     chan struct{}
	done     chan struct{}
	sent     [32]byte
	got      [32]byte
	err      error
}

func startPacedFlow(w, r *Stream, chunk int, period time.Duration) *pacedFlow {
	f := &pacedFlow{stop: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		h := sha256.New()
		buf := make([]byte, chunk)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-f.stop:
				copy(f.sent[:], h.Sum(nil))
				w.CloseWrite()
				return
			case <-tick.C:
			}
			for j := range buf {
				buf[j] = byte(i*31 + j)
			}
			h.Write(buf)
			if _, err := w.Write(buf); err != nil {
				f.err = err
				copy(f.sent[:], h.Sum(nil))
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			h.Write(buf[:n])
			f.received.Add(int64(n))
			if err != nil {
				if err != io.EOF {
					f.err = err
				}
				copy(f.got[:], h.Sum(nil))
				return
			}
		}
	}()
	go func() { wg.Wait(); close(f.done) }()
	return f
}

func (f *pacedFlow) wait(t *testing.T) {
	t.Helper()
	close(f.stop)
	select {
	case <-f.done:
	case <-time.After(20 * time.Second):
		t.Fatal("flow did not finish")
	}
	if f.err != nil || f.sent != f.got {
		t.Fatalf("flow: err %v, SHA-256 match %v", f.err, f.sent == f.got)
	}
}

// rejectLines returns the aggregated rejection lines logged so far.
func rejectLines(rec *logRecorder) []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []string
	for _, m := range rec.msgs {
		if strings.HasPrefix(m, "rejected ") {
			out = append(out, m)
		}
	}
	return out
}

// TestReplayLiveSession replays a recorded message 1, and a recorded whole
// client byte stream, 5 times a second for 10 s against the live session
// they came from, during a bulk transfer: no byte answers them, the path
// is not dropped, nothing reconnects or is fenced, throughput stays
// within 10 % of an undisturbed run, and the listener logs exactly one
// aggregated line. The undisturbed run is a second session with the same
// paced flow (4 MB/s) at the same time, so both see the same machine:
// two cores shared with the race detector and other builds drift more
// than 10 % between one phase and the next. A dropped path would cost at
// least a reconnect, and is also checked directly. Liveness timers are
// the production ones, so a loaded machine does not pass for a dead path.
func TestReplayLiveSession(t *testing.T) {
	r := &recorder{}
	rec := &logRecorder{}
	mk := func(dial func(context.Context, string, string) (net.Conn, error), log *logRecorder) (*pair, *pacedFlow) {
		ck, sk := newKeypair(t), newKeypair(t)
		ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
		ccfg.Dial = dial
		if log != nil {
			scfg.Logger = slog.New(log)
		}
		scfg.RejectLogInterval = 10 * time.Second
		for _, c := range []*Config{&ccfg, &scfg} {
			c.KeepaliveInterval, c.DeadInterval = DefaultKeepaliveInterval, DefaultDeadInterval
		}
		p := newTCPPair(t, ccfg, scfg)
		a, b := openPair(t, p.client, p.server, "bulk")
		return p, startPacedFlow(a, b, 8<<10, 2*time.Millisecond)
	}
	p, f := mk(r.dial, rec)
	defer p.close()
	ctl, cf := mk(nil, nil)
	defer ctl.close()

	const attack = 10 * time.Second
	time.Sleep(time.Second) // let the recording fill
	first, stream := r.recording(0)
	if len(stream) < 32<<10 {
		t.Fatalf("recorded only %d bytes", len(stream))
	}
	n1, c1 := f.received.Load(), cf.received.Load()
	sent, back := replay(t, p.l.Addr().String(), first, stream, 5, attack)
	n2, c2 := f.received.Load(), cf.received.Load()
	f.wait(t)
	cf.wait(t)

	attackRate := float64(n2-n1) / attack.Seconds()
	ctlRate := float64(c2-c1) / attack.Seconds()
	ratio := attackRate / ctlRate
	t.Logf("%d replays; throughput under replay %.2f MB/s, undisturbed session at the same time %.2f MB/s (ratio %.3f)",
		sent, attackRate/1e6, ctlRate/1e6, ratio)
	if back != 0 {
		t.Errorf("the listener answered replays with %d bytes", back)
	}
	if ratio < 0.9 {
		t.Errorf("throughput under replay is %.1f %% of undisturbed", 100*ratio)
	}
	cs, ss := p.client.Stats(), p.server.Stats()
	if cs.Reconnects != 0 || ss.Reconnects != 0 || cs.Fences != 0 {
		t.Errorf("replay disturbed the session: reconnects %d/%d, fences %d", cs.Reconnects, ss.Reconnects, cs.Fences)
	}
	p.l.mu.Lock()
	nsess := len(p.l.sessions)
	p.l.mu.Unlock()
	if nsess != 1 {
		t.Errorf("%d sessions on the listener, want 1", nsess)
	}
	line := rec.wait(t, "rejected ")
	time.Sleep(200 * time.Millisecond)
	if lines := rejectLines(rec); len(lines) != 1 || !strings.Contains(line, "replayed first message: ") {
		t.Errorf("log lines %q, want exactly one aggregated line about replays", lines)
	}
	t.Log(line)
}

// replayDuration is how long the restart cases replay: 10 s as the issue
// asks with USLTUN_LONG=1, 2 s otherwise.
func replayDuration() time.Duration {
	if os.Getenv("USLTUN_LONG") != "" {
		return 10 * time.Second
	}
	return 2 * time.Second
}

// TestReplayAfterDialerRestart: the dialer restarts (new epoch, new
// session, which fences the old one as it should); then the old process's
// recorded message 1 and stream, and the new one's, are replayed against
// the new session. Nothing is answered, the new session is not fenced, no
// phantom session appears, and its flow completes intact.
func TestReplayAfterDialerRestart(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	r := &recorder{}
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.Dial = r.dial
	// The production liveness timers, as in TestReplayLiveSession: the
	// check is that no replay disturbs the new session, and with the fast
	// 300 ms dead interval a loaded machine (the race detector beside
	// other builds) reconnected it once by itself.
	for _, c := range []*Config{&ccfg, &scfg} {
		c.KeepaliveInterval, c.DeadInterval = DefaultKeepaliveInterval, DefaultDeadInterval
	}
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "old")
	a.Write(make([]byte, 100<<10))
	io.ReadFull(b, make([]byte, 100<<10))
	oldFirst, oldStream := r.recording(0)

	// The old process dies: no CLOSE, its paths just vanish.
	p.client.end(ErrSessionClosed, Closed)
	ccfg.epoch = processEpoch() + 1
	c2, err := Dial(context.Background(), p.l.Addr().String(), ccfg)
	if err != nil {
		t.Fatal(err)
	}
	p.client = c2
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s2, err := p.l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "old session fenced", func() bool { return p.server.Err() != nil })
	waitFor(t, "new dialer up", func() bool { return c2.Stats().State == Up })
	a2, b2 := openPair(t, c2, s2, "new")
	f := startPacedFlow(a2, b2, 16<<10, 2*time.Millisecond)
	newFirst, newStream := r.recording(-1)
	d := replayDuration()
	_, back1 := replay(t, p.l.Addr().String(), oldFirst, oldStream, 5, d/2)
	_, back2 := replay(t, p.l.Addr().String(), newFirst, newStream, 5, d/2)
	f.wait(t)
	if back1 != 0 || back2 != 0 {
		t.Errorf("replays answered with %d and %d bytes", back1, back2)
	}
	if st := s2.Stats(); s2.Err() != nil || st.Reconnects != 0 || c2.Stats().Fences != 0 {
		t.Errorf("new session disturbed: err %v, reconnects %d, fences %d", s2.Err(), st.Reconnects, c2.Stats().Fences)
	}
	p.l.mu.Lock()
	nsess := len(p.l.sessions)
	p.l.mu.Unlock()
	if nsess != 1 {
		t.Errorf("%d sessions on the listener, want 1 (no phantom)", nsess)
	}
}

// TestReplayAfterListenerRestart: the listener restarts (crashes: no
// CLOSE) and comes back with empty state, so a recorded first-contact
// message 1 carries a timestamp it has never seen. While the real dialer
// is held back, that message and the whole recorded stream are replayed:
// the first is answered (nothing can tell it from the real dialer yet)
// but never confirmed, so no session exists. Then the real dialer is let
// through: it is fenced once, as a restart of its peer must do, and its
// fresh session carries a flow intact.
func TestReplayAfterListenerRestart(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	r := &recorder{}
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.Dial = r.dial
	scfg.Logger = slog.New(rec)
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "before")
	a.Write(make([]byte, 100<<10))
	io.ReadFull(b, make([]byte, 100<<10))
	first, stream := r.recording(0)

	addr := p.l.Addr().String()
	r.gate.Store(true)
	p.l.ln.Close()
	p.l.mu.Lock()
	var all []*Session
	for _, s := range p.l.sessions {
		all = append(all, s)
	}
	p.l.mu.Unlock()
	for _, s := range all {
		s.end(ErrSessionClosed, Closed) // the crash: paths vanish, no CLOSE
	}
	p.l.Close()
	l2, err := Listen("tcp", addr, scfg)
	if err != nil {
		t.Fatal(err)
	}
	p.l = l2
	_, back := replay(t, addr, first, stream, 5, replayDuration())
	if back == 0 {
		t.Log("no replay was answered (the real dialer's timestamp had already been seen)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	if s, err := l2.Accept(ctx); err == nil {
		t.Errorf("replay created session %s", s.id)
	}
	cancel()
	l2.mu.Lock()
	nsess := len(l2.sessions)
	l2.mu.Unlock()
	if nsess != 0 {
		t.Fatalf("%d phantom sessions", nsess)
	}
	t.Log(rec.wait(t, "rejected ", "no key confirmation: 1"))

	r.gate.Store(false)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	s2, err := l2.Accept(ctx2)
	if err != nil {
		t.Fatalf("real dialer after the restart: %v", err)
	}
	waitFor(t, "dialer fenced and up again", func() bool {
		st := p.client.Stats()
		return st.Fences == 1 && st.State == Up
	})
	a2, b2 := openPair(t, p.client, s2, "after")
	f := startPacedFlow(a2, b2, 16<<10, 2*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	f.wait(t)
	if n := p.client.Stats().Fences; n != 1 {
		t.Errorf("%d fences, want exactly the one of the restart", n)
	}
}
