package usl

import (
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// slowHash is a destination that hashes what it takes and now and then
// pauses, so received buffers queue up (and small payloads coalesce)
// behind the one WriteTo is writing.
type slowHash struct {
	h      io.Writer
	writes int
}

func (s *slowHash) Write(b []byte) (int, error) {
	s.writes++
	if s.writes%7 == 0 {
		time.Sleep(2 * time.Millisecond)
	}
	return s.h.Write(b)
}

// TestWriteTo: every byte arrives through WriteTo in order, across many
// windows of credit (the credit of a buffer is granted once the destination
// took it), WriteTo returns nil at the FIN, and the session's receive
// buffers are all given back.
func TestWriteTo(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	a, b := openPair(t, p.client, p.server, "writeto")
	const n = 8 << 20 // 32 default stream windows
	sent := make(chan [32]byte, 1)
	go func() {
		sum, err := writePattern(a, 7, n, 40<<10) // random sizes: small ones coalesce
		if err != nil {
			t.Errorf("write: %v", err)
		}
		a.CloseWrite()
		sent <- sum
	}()
	h := sha256.New()
	got, err := b.WriteTo(&slowHash{h: h})
	if err != nil || got != n {
		t.Fatalf("WriteTo = %d, %v; want %d, nil", got, err, n)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if want := <-sent; sum != want {
		t.Fatalf("SHA-256 %x, sent %x", sum, want)
	}
	b.Close()
	a.Close()
	p.server.mu.Lock()
	mem, held := p.server.recvMem, b.rheld
	p.server.mu.Unlock()
	if mem != 0 || held != 0 {
		t.Fatalf("after the stream ended: session receive memory %d, held %d; want 0, 0", mem, held)
	}
}

// TestWriteToErrors: the destination's error is returned as it is and the
// session stays healthy; a reset and the read deadline end WriteTo with
// their own errors.
func TestWriteToErrors(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()

	errDst := errors.New("destination gone")
	a, b := openPair(t, p.client, p.server, "dst-fails")
	go writePattern(a, 1, 1<<20, 16<<10)
	if _, err := b.WriteTo(failingWriter{errDst}); !errors.Is(err, errDst) {
		t.Fatalf("WriteTo to a failing destination: %v, want %v", err, errDst)
	}
	b.Reset(ResetAborted)

	a, b = openPair(t, p.client, p.server, "reset")
	go func() {
		a.Write([]byte("before the reset"))
		time.Sleep(50 * time.Millisecond)
		a.Reset(ResetRefused)
	}()
	var re *ResetError
	if _, err := b.WriteTo(io.Discard); !errors.As(err, &re) || re.Code != ResetRefused || !re.Remote {
		t.Fatalf("WriteTo after the peer's reset: %v, want the peer's ResetRefused", err)
	}

	a, b = openPair(t, p.client, p.server, "deadline")
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := b.WriteTo(io.Discard); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteTo past the read deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("WriteTo returned %v after its deadline", d)
	}

	// The session is still good for a whole transfer.
	a, b = openPair(t, p.client, p.server, "after")
	go func() { writePattern(a, 2, 1<<20, 8<<10); a.CloseWrite() }()
	if n, err := b.WriteTo(io.Discard); err != nil || n != 1<<20 {
		t.Fatalf("transfer after the failures: %d, %v", n, err)
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// TestFullFrameBuffer: a full DATA frame with its header fits one 64 KiB
// buffer of the pool (not the next class, which would double replay memory)
// and its payload one record.
func TestFullFrameBuffer(t *testing.T) {
	var p bufPool
	b := p.get(headerLen + DefaultMaxFrame)
	if cap(*b) != 1<<16 {
		t.Fatalf("a full frame of %d bytes takes a %d-byte buffer, want 65536", headerLen+DefaultMaxFrame, cap(*b))
	}
	if DefaultMaxFrame > maxRecordPlain {
		t.Fatalf("DefaultMaxFrame %d is more than one record (%d)", DefaultMaxFrame, maxRecordPlain)
	}
}

// gateWriter blocks every Write until release is closed, after telling
// started that a write began.
type gateWriter struct {
	started chan struct{}
	release chan struct{}
}

func (g *gateWriter) Write(b []byte) (int, error) {
	select {
	case g.started <- struct{}{}:
	default:
	}
	<-g.release
	return len(b), nil
}

// TestHostileOverrunWhileHeld: a buffer WriteTo is still writing counts
// against the peer's credit. A peer that sends one byte past its credit
// while the reader's destination holds most of the window gets the stream
// reset, as it would with those bytes still queued.
func TestHostileOverrunWhileHeld(t *testing.T) {
	const window = 64 << 10
	p, _, st, rec := rawWithStream(t, func(c *Config) { c.StreamWindow = window })

	g := &gateWriter{started: make(chan struct{}, 1), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { _, err := st.WriteTo(g); done <- err }()
	p.add(frameData, 1, make([]byte, DefaultMaxFrame))
	p.flush()
	select {
	case <-g.started:
	case <-time.After(5 * time.Second):
		t.Fatal("WriteTo did not start writing the first frame")
	}
	// The rest of the window, then one byte past it.
	p.add(frameData, 1, make([]byte, window-DefaultMaxFrame))
	p.add(frameData, 1, []byte{1})
	p.flush()
	rec.wait(t, "peer overran stream credit")
	close(g.release)
	var re *ResetError
	if err := <-done; !errors.As(err, &re) || re.Code != ResetAborted {
		t.Fatalf("WriteTo after the overrun: %v, want the stream reset (aborted)", err)
	}
}

// countingGate counts writes and blocks the first one until release.
type countingGate struct {
	gateWriter
	writes, bytes int
}

func (c *countingGate) Write(b []byte) (int, error) {
	c.writes++
	c.bytes += len(b)
	if c.writes == 1 {
		return c.gateWriter.Write(b)
	}
	return len(b), nil
}

// TestWriteToGathers: small payloads that queued while the destination
// was busy go out in one write, as a Read would return them, not a write
// each.
func TestWriteToGathers(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	a, b := openPair(t, p.client, p.server, "gather")
	g := &countingGate{gateWriter: gateWriter{started: make(chan struct{}, 1), release: make(chan struct{})}}
	done := make(chan error, 1)
	go func() { _, err := b.WriteTo(g); done <- err }()
	a.Write([]byte("first"))
	<-g.started
	const small, count = 100, 1000 // 100,000 bytes in 1,000 frames, 25 coalescing buffers
	for range count {
		a.Write(make([]byte, small))
	}
	waitFor(t, "all small frames received", func() bool { return p.server.Stats().BytesIn == 5+small*count })
	close(g.release)
	a.CloseWrite()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if g.bytes != 5+small*count || g.writes > 4 {
		t.Fatalf("%d bytes in %d writes; want %d bytes in at most 4 (the first, then the queued ones gathered)", g.bytes, g.writes, 5+small*count)
	}
}
