package usl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// rawPeer is a hostile peer built from the library's own handshake and
// record layer, which writes whatever frames a test makes: wrong acks,
// data before ACCEPT, floods. What the victim sends it is read and thrown
// away undecrypted, so the victim's writer never blocks on it.
type rawPeer struct {
	t    testing.TB
	c    net.Conn
	rc   *recordConn
	seq  uint64
	sseq map[uint32]uint32
	buf  []byte
}

func dialRaw(t testing.TB, addr string, priv PrivateKey, server PublicKey, id sessionID) *rawPeer {
	t.Helper()
	return dialRawHello(t, addr, priv, server, hello{id: id, epoch: processEpoch(), pathID: 1})
}

// dialRawHello is dialRaw with a hello of the test's making; timestamp,
// window and max frame are filled in.
func dialRawHello(t testing.TB, addr string, priv PrivateKey, server PublicKey, h hello) *rawPeer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h.timestamp, h.window, h.maxFrame = nextTimestamp(), 1<<20, DefaultMaxFrame
	res, _, err := clientHandshake(c, priv, server, h)
	if err != nil {
		c.Close()
		t.Fatalf("raw handshake: %v", err)
	}
	rc, err := newRecordConn(c, res)
	if err != nil {
		t.Fatal(err)
	}
	rc.in = nil // it never opens a record: keep the heap the victim's
	go io.Copy(io.Discard, res.br)
	p := &rawPeer{t: t, c: c, rc: rc, sseq: map[uint32]uint32{}}
	p.add(frameAck, 0, nil) // key confirmation
	p.flush()
	return p
}

// add queues a frame; sequenced frames get the next seq and their
// stream's next sseq. The ack field is always 0: this peer never acks.
func (p *rawPeer) add(t frameType, stream uint32, payload []byte) {
	h := frameHeader{typ: t, stream: stream, length: uint32(len(payload))}
	if t.sequenced() {
		p.seq++
		h.seq = p.seq
	}
	if t.streamFrame() {
		h.sseq = p.sseq[stream]
		p.sseq[stream]++
	}
	var hb [headerLen]byte
	h.put(hb[:])
	p.buf = append(append(p.buf, hb[:]...), payload...)
}

// flush sends what was queued; false once the victim hung up.
func (p *rawPeer) flush() bool {
	err := p.rc.writeSegments([][]byte{p.buf})
	p.buf = p.buf[:0]
	return err == nil
}

func (p *rawPeer) close() { p.c.Close() }

// hostileListener is a victim listener with a logRecorder and a session
// acceptor that accepts every stream it is offered (accept=true) or none.
func hostileListener(t *testing.T, mod func(*Config)) (*Listener, keypair, keypair, *logRecorder) {
	ck, sk := newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	cfg := fastCfg(t, sk, ck.pub)
	cfg.Logger = slog.New(rec)
	// The raw peer never answers PINGs: only its floods keep the path
	// alive, so a scheduling hiccup must not pass for a dead path.
	cfg.DeadInterval = 10 * time.Second
	if mod != nil {
		mod(&cfg)
	}
	l, err := Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, ck, sk, rec
}

func acceptSession(t *testing.T, l *Listener) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := l.Accept(ctx)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	return s
}

// rawWithStream is a victim listener, a raw peer with a session on it,
// stream 1, which the raw peer opened and the victim accepted, and the
// victim's log.
func rawWithStream(t *testing.T, mod func(*Config)) (*rawPeer, *Session, *Stream, *logRecorder) {
	t.Helper()
	l, ck, sk, rec := hostileListener(t, mod)
	p := dialRaw(t, l.Addr().String(), ck.priv, sk.pub, newSessionID())
	t.Cleanup(p.close)
	p.add(frameOpen, 1, nil)
	p.flush()
	s := acceptSession(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Accept()
	return p, s, st, rec
}

const mib = 1 << 20

// TestHostileTinyFrames: a peer may not ask for tiny frames (the MaxFrame
// floor refuses the config and the hello), and a peer that sends a whole
// window in 1-byte DATA frames costs about a byte per byte, not a buffer
// per frame: before v2, 4 streams × 64 Ki frames cost 128 MiB.
func TestHostileTinyFrames(t *testing.T) {
	if _, err := Dial(context.Background(), "127.0.0.1:1", Config{PrivateKey: fixedKey(1), PeerKeys: []PublicKey{{1}}, MaxFrame: 1}); err == nil ||
		!strings.Contains(err.Error(), "MaxFrame 1 outside [4096,") {
		t.Fatalf("MaxFrame 1: %v", err)
	}
	const window, streams = 64 << 10, 4
	l, ck, sk, rec := hostileListener(t, func(c *Config) { c.StreamWindow = window })

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = clientHandshake(c, ck.priv, sk.pub, hello{id: newSessionID(), epoch: 1, timestamp: nextTimestamp(), window: window, maxFrame: 1})
	c.Close()
	if err != ErrHandshake {
		t.Fatalf("hello with max frame 1: %v, want silence", err)
	}
	rec.wait(t, "rejected ", "bad hello: 1")

	p := dialRaw(t, l.Addr().String(), ck.priv, sk.pub, newSessionID())
	defer p.close()
	for i := range streams {
		p.add(frameOpen, uint32(2*i+1), nil)
	}
	p.flush()
	s := acceptSession(t, l)
	for range streams {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := s.AcceptStream(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		st.Accept() // and never read
	}
	before := heapInUse()
	one := []byte{'x'}
	for i := range streams {
		for j := range window {
			p.add(frameData, uint32(2*i+1), one)
			if j%4096 == 4095 {
				p.flush()
			}
		}
	}
	p.flush()
	waitFor(t, "all tiny frames received", func() bool { return s.Stats().BytesIn == streams*window })
	s.mu.Lock()
	mem := s.recvMem
	s.mu.Unlock()
	grew := int64(heapInUse()) - int64(before)
	bound := streams * (2*window + coalesceBuf)
	t.Logf("%d 1-byte frames: receive buffers %d KiB (bound %d KiB), heap grew %d KiB", streams*window, mem>>10, bound>>10, grew>>10)
	if mem > bound || grew > int64(bound)+8*mib {
		t.Fatalf("receive memory %d, heap growth %d; bound %d + 8 MiB", mem, grew, bound)
	}
}

// TestHostileAcksWithheld: a peer that never acks while it makes the
// victim send credit (it sends data the victim reads) fills the control
// budget, and then the path fails with a protocol error naming the
// cause; the control frames held never exceed the budget by more than
// one frame.
func TestHostileAcksWithheld(t *testing.T) {
	const budget = 8 << 10
	p, s, st, _ := rawWithStream(t, func(c *Config) { c.StreamWindow = 16 << 10; c.ControlBuffer = budget })
	go io.Copy(io.Discard, st)
	chunk := make([]byte, 4<<10)
	peak := 0
	for i := 0; i < 100000; i++ {
		p.add(frameData, 1, chunk)
		if !p.flush() {
			break
		}
		// Stay inside the credit the victim keeps granting (it reads at
		// once), so only the withheld acks are wrong.
		waitFor(t, "victim read", func() bool { return s.Stats().BytesIn == uint64(i+1)*4096 || s.Stats().State != Up })
		s.mu.Lock()
		peak = max(peak, s.ctlBytes)
		up := len(s.paths) > 0
		s.mu.Unlock()
		if !up {
			break
		}
	}
	waitFor(t, "path dropped", func() bool { return strings.Contains(s.Stats().LastError, "peer withholds acks") })
	t.Logf("peak control frames %d bytes (budget %d); %s", peak, budget, s.Stats().LastError)
	if peak > budget+64 {
		t.Fatalf("control frames reached %d, budget %d", peak, budget)
	}
}

// TestHostileDataBeforeAccept: DATA on a stream the victim has not
// accepted yet resets that stream instead of being buffered while the
// victim's gateway would dial: 500 streams each sending a full window
// before ACCEPT leave no receive buffer behind.
func TestHostileDataBeforeAccept(t *testing.T) {
	const window, streams = 64 << 10, 500
	l, ck, sk, _ := hostileListener(t, func(c *Config) { c.StreamWindow = window })
	p := dialRaw(t, l.Addr().String(), ck.priv, sk.pub, newSessionID())
	defer p.close()
	p.add(frameOpen, 1, nil)
	p.flush()
	s := acceptSession(t, l)
	before := heapInUse()
	chunk := make([]byte, 16<<10)
	for i := range streams {
		id := uint32(2*i + 3)
		p.add(frameOpen, id, nil)
		for range window / len(chunk) {
			p.add(frameData, id, chunk)
		}
		p.flush()
	}
	waitFor(t, "all data received", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.recvSeq == p.seq
	})
	s.mu.Lock()
	mem := s.recvMem
	s.mu.Unlock()
	grew := int64(heapInUse()) - int64(before)
	t.Logf("%d streams × %d KiB before ACCEPT: receive buffers %d bytes, heap grew %d KiB", streams, window>>10, mem, grew>>10)
	if mem != 0 || grew > 8*mib {
		t.Fatalf("data before ACCEPT held: %d bytes buffered, heap grew %d", mem, grew)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := s.AcceptStream(ctx); err != nil { // stream 1, which sent nothing
		t.Fatal(err)
	}
	st, err := s.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Read(make([]byte, 1)); err == nil {
		t.Fatal("a stream that got data before ACCEPT still reads")
	}
}

// TestHostileManySessions: 1,000 sessions opened with one key leave at
// most MaxSessionsPerKey alive; each new one replaces the oldest only
// after its key confirmation.
func TestHostileManySessions(t *testing.T) {
	n := 1000
	l, ck, sk, _ := hostileListener(t, nil)
	before := heapInUse()
	var peers []*rawPeer
	defer func() {
		for _, p := range peers {
			p.close()
		}
	}()
	most := 0
	for i := range n {
		peers = append(peers, dialRaw(t, l.Addr().String(), ck.priv, sk.pub, newSessionID()))
		if i%50 == 49 || i == n-1 {
			waitFor(t, "sessions settle", func() bool {
				l.mu.Lock()
				defer l.mu.Unlock()
				most = max(most, len(l.sessions))
				return len(l.sessions) <= DefaultMaxSessionsPerKey && l.created == uint64(i+1)
			})
		}
	}
	grew := int64(heapInUse()) - int64(before)
	t.Logf("%d sessions with one key: at most %d alive, heap grew %d KiB", n, most, grew>>10)
	if most > DefaultMaxSessionsPerKey {
		t.Fatalf("%d sessions alive, limit %d", most, DefaultMaxSessionsPerKey)
	}
	if grew > 16*mib {
		t.Fatalf("heap grew %d for %d replaced sessions", grew, n)
	}
}

// TestHostileRejectedOpens: a peer that opens streams past MaxStreams and
// never acks the RESETs it gets back fails on the control budget, with
// a handful of log lines about the refusals (at 1 and each power of two
// from 1,024), not one per OPEN.
func TestHostileRejectedOpens(t *testing.T) {
	const budget = 256 << 10 // 4,096 refusals; the default 2 MiB takes 32,768
	l, ck, sk, rec := hostileListener(t, func(c *Config) { c.MaxStreams = 16; c.ControlBuffer = budget })
	p := dialRaw(t, l.Addr().String(), ck.priv, sk.pub, newSessionID())
	defer p.close()
	p.add(frameOpen, 1, nil)
	p.flush()
	s := acceptSession(t, l)
	before := heapInUse()
	sent := 0
	for i := range 100000 {
		p.add(frameOpen, uint32(2*i+3), nil)
		sent++
		if i%256 == 255 && !p.flush() {
			break
		}
	}
	p.flush()
	for start := time.Now(); !strings.Contains(s.Stats().LastError, "peer withholds acks"); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			s.mu.Lock()
			why := fmt.Sprintf("last error %q, control %d bytes, recv seq %d of %d sent, paths %d",
				s.lastErr, s.ctlBytes, s.recvSeq, p.seq, len(s.paths))
			s.mu.Unlock()
			t.Fatalf("path not dropped: %s", why)
		}
	}
	grew := int64(heapInUse()) - int64(before)
	lines := 0
	rec.mu.Lock()
	for _, m := range rec.msgs {
		if strings.HasPrefix(m, "refused streams") {
			lines++
		}
	}
	rec.mu.Unlock()
	t.Logf("%d OPENs sent; %s; heap grew %d KiB; %d log lines", sent, s.Stats().LastError, grew>>10, lines)
	if grew > budget+8*mib || lines > 8 {
		t.Fatalf("heap grew %d, %d log lines", grew, lines)
	}
}

// TestJoin: a resumed path with the JOIN flag is added next to the
// session's other paths (up to MaxPathsPerSession); one without it
// replaces them all, as single-path failover does.
func TestJoin(t *testing.T) {
	l, ck, sk, _ := hostileListener(t, func(c *Config) { c.MaxPathsPerSession = 2 })
	id := newSessionID()
	first := dialRaw(t, l.Addr().String(), ck.priv, sk.pub, id)
	defer first.close()
	s := acceptSession(t, l)
	paths := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.paths)
	}
	resume := func(path uint32, flags uint8) *rawPeer {
		return dialRawHello(t, l.Addr().String(), ck.priv, sk.pub,
			hello{id: id, epoch: processEpoch(), peerEpoch: l.cfg.epoch, pathID: path, flags: flags})
	}
	second := resume(2, helloJoin)
	defer second.close()
	waitFor(t, "two paths", func() bool { return paths() == 2 })
	third := resume(3, helloJoin) // over MaxPathsPerSession: refused
	defer third.close()
	time.Sleep(100 * time.Millisecond)
	if n := paths(); n != 2 {
		t.Fatalf("%d paths after a join past the limit of 2", n)
	}
	fourth := resume(4, 0)
	defer fourth.close()
	waitFor(t, "failover to one path", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.paths) == 1 && s.paths[0].id == 4
	})
}

// TestStreamSeqChecked: a stream frame whose sseq is not the next one of
// its stream kills the path with a protocol error.
func TestStreamSeqChecked(t *testing.T) {
	p, s, st, _ := rawWithStream(t, nil)
	p.add(frameData, 1, []byte("in order")) // sseq 1
	p.sseq[1] = 7
	p.add(frameData, 1, []byte("skips ahead"))
	p.flush()
	waitFor(t, "protocol error", func() bool {
		return strings.Contains(s.Stats().LastError, "protocol: DATA on stream 1 with stream seq 7, want 2")
	})
	buf := make([]byte, 8)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "in order" {
		t.Fatalf("the in-order frame: %q %v", buf, err)
	}
}

// TestRecvBufferBound: a session's receive buffers, counted by
// allocation, never pass RecvBuffer; a stream whose data would is reset
// with ResetLimit, which its writer sees as ErrLimit, and the other
// streams keep their data.
func TestRecvBufferBound(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.StreamWindow, scfg.StreamWindow = 64<<10, 64<<10
	scfg.RecvBuffer = 128 << 10
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	var writers []*Stream
	var readers []*Stream
	for i := range 4 {
		a, b := openPair(t, p.client, p.server, fmt.Sprint("s", i))
		writers, readers = append(writers, a), append(readers, b)
	}
	chunk := make([]byte, 32<<10)
	for i, w := range writers[:2] {
		for range 2 {
			if _, err := w.Write(chunk); err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
		}
	}
	waitFor(t, "two windows buffered", func() bool { return p.server.Stats().BytesIn == 128<<10 })
	for i, w := range writers[2:] {
		w.Write(chunk)
		w.SetWriteDeadline(time.Now().Add(5 * time.Second))
		var err error
		for err == nil {
			_, err = w.Write(chunk) // until the reset arrives
		}
		if !errors.Is(err, ErrLimit) {
			t.Fatalf("stream %d over the session's receive bound: %v, want ErrLimit", i+2, err)
		}
	}
	p.server.mu.Lock()
	mem := p.server.recvMem
	p.server.mu.Unlock()
	if mem > scfg.RecvBuffer {
		t.Fatalf("receive buffers %d, bound %d", mem, scfg.RecvBuffer)
	}
	got := make([]byte, 64<<10)
	for i, r := range readers[:2] {
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("stream %d lost its data: %v", i, err)
		}
	}
	t.Logf("receive buffers held at %d KiB (bound %d KiB); streams past it reset with limit", mem>>10, scfg.RecvBuffer>>10)
}
