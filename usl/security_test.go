package usl

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logRecorder keeps log messages for assertions.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, rec.Message)
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) find(substr ...string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
next:
	for _, m := range r.msgs {
		for _, s := range substr {
			if !strings.Contains(m, s) {
				continue next
			}
		}
		return m
	}
	return ""
}

func (r *logRecorder) wait(t *testing.T, substr ...string) string {
	t.Helper()
	var m string
	waitFor(t, "log line with "+strings.Join(substr, ", "), func() bool {
		m = r.find(substr...)
		return m != ""
	})
	return m
}

func TestWrongClientKeyRejected(t *testing.T) {
	ck, sk, other := newKeypair(t), newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, other.pub) // ck is not allowed
	scfg.Logger = slog.New(rec)
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := Dial(context.Background(), l.Addr().String(), fastCfg(t, ck, sk.pub))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := rec.wait(t, "rejected peer 127.0.0.1:", "public key "+ck.pub.String()+" not allowed")
	t.Log(line)
	waitFor(t, "client error", func() bool { return strings.Contains(c.Stats().LastError, ErrKeyNotAllowed.Error()) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := l.Accept(ctx); err == nil {
		t.Fatal("listener created a session for a key outside its allowlist")
	}
}

func TestWrongServerKey(t *testing.T) {
	ck, sk, wrong := newKeypair(t), newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, ck.pub)
	scfg.Logger = slog.New(rec)
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := Dial(context.Background(), l.Addr().String(), fastCfg(t, ck, wrong.pub))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rec.wait(t, "rejected peer", "bad handshake")
	waitFor(t, "client error", func() bool { return strings.Contains(c.Stats().LastError, ErrHandshake.Error()) })
}

// TestHijackRefused: an allowed key other than the owner's cannot resume
// somebody else's session, and the owner's session is unaffected.
func TestHijackRefused(t *testing.T) {
	ck, sk, mallory := newKeypair(t), newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, ck.pub, mallory.pub)
	scfg.Logger = slog.New(rec)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "victim")

	conn, err := net.Dial("tcp", p.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	p.client.mu.Lock()
	h := hello{id: p.client.id, epoch: processEpoch(), peerEpoch: p.client.peerEpoch, window: 1 << 16, maxFrame: 1 << 16}
	p.client.mu.Unlock()
	_, _, err = clientHandshake(conn, mallory.priv, sk.pub, h)
	if !errors.Is(err, ErrNotOwner) {
		t.Fatalf("hijack: %v, want ErrNotOwner", err)
	}
	t.Log(rec.wait(t, "rejected peer", "belongs to another key"))
	a.Write([]byte("still mine"))
	buf := make([]byte, 10)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "still mine" {
		t.Fatalf("victim stream after hijack attempt: %q %v", buf, err)
	}
	if p.client.Stats().Reconnects != 0 {
		t.Fatal("the hijack attempt disturbed the owner's path")
	}
}

func TestVersionMismatch(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, ck.pub)
	scfg.Logger = slog.New(rec)
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A v3 client talks to this v1 listener.
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("USL\x03\x00\x05hello"))
	reply := make([]byte, 4)
	if _, err := io.ReadFull(conn, reply); err != nil || string(reply) != "USL\x01" {
		t.Fatalf("listener answered %q, %v; want its preamble", reply, err)
	}
	rec.wait(t, "rejected peer", "peer speaks USL v3, this build speaks v1")

	// This v1 client talks to a v3 server.
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		c, err := srv.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.ReadFull(c, make([]byte, 4))
		c.Write([]byte("USL\x03"))
	}()
	c2, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, _, err = clientHandshake(c2, ck.priv, sk.pub, hello{id: newSessionID(), epoch: 1, window: 1, maxFrame: 1})
	var ve *VersionError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "peer speaks USL v3, this build speaks v1") {
		t.Fatalf("client: %v", err)
	}
}

// TestGarbage throws random bytes, truncated and corrupted handshakes at
// the listener: no panic, no session, no leaked goroutine, and a real
// client still gets in afterwards.
func TestGarbage(t *testing.T) {
	defer goleak.VerifyNone(t)
	ck, sk := newKeypair(t), newKeypair(t)
	scfg := fastCfg(t, sk, ck.pub)
	scfg.HandshakeTimeout = 300 * time.Millisecond
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	// A valid first message to corrupt.
	hs, _ := newNoiseInitiator(ck.priv, sk.pub)
	valid, _, _, _ := hs.WriteMessage(nil, (&hello{id: newSessionID(), epoch: 1, window: 1, maxFrame: 1}).marshal())
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	for i := range 60 {
		var msg []byte
		switch i % 5 {
		case 0:
			msg = make([]byte, rng.IntN(300))
			for j := range msg {
				msg[j] = byte(rng.Uint32())
			}
		case 1:
			msg = append([]byte("USL\x01"), byte(rng.Uint32()), byte(rng.Uint32()))
		case 2:
			msg = binary.BigEndian.AppendUint16([]byte("USL\x01"), uint16(len(valid)))
			msg = append(msg, valid...)
			msg[6+rng.IntN(len(valid))] ^= 1 << rng.IntN(8)
		case 3:
			msg = binary.BigEndian.AppendUint16([]byte("USL\x01"), uint16(len(valid)))
			msg = append(msg, valid[:rng.IntN(len(valid))]...) // truncated: hits the timeout
		case 4:
			msg = []byte("GET / HTTP/1.1\r\n\r\n")
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				return
			}
			defer c.Close()
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c) // until the listener hangs up
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := l.Accept(ctx); err == nil {
		t.Fatal("garbage produced a session")
	}
	c, err := Dial(context.Background(), l.Addr().String(), fastCfg(t, ck, sk.pub))
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	s, err := l.Accept(ctx2)
	if err != nil {
		t.Fatalf("real client after garbage: %v", err)
	}
	openPair(t, c, s, "after-garbage")
	c.Close()
	l.Close()
}

func TestHandshakeTimeoutAndRateLimit(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, ck.pub)
	scfg.HandshakeTimeout = 200 * time.Millisecond
	scfg.HandshakeRate = 1 // burst 2
	scfg.Logger = slog.New(rec)
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	var conns []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// The listener hangs up: rate limited at once, or silent past
		// the handshake timeout. Our own 5 s deadline must not fire.
		n, err := c.Read(make([]byte, 1))
		var ne net.Error
		if n != 0 || err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("conn %d: read %d, %v", i, n, err)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("silent connections were held %v", d)
	}
	rec.wait(t, "rejected peer", "handshake rate limit exceeded")
	rec.wait(t, "rejected peer", "i/o timeout")
}

func TestUnknownKeyBytesNeverReachSession(t *testing.T) {
	// A frame-shaped payload in the clear after a bogus preamble is never
	// parsed as a frame: only the handshake parser sees it.
	ck, sk := newKeypair(t), newKeypair(t)
	scfg := fastCfg(t, sk, ck.pub)
	scfg.HandshakeTimeout = 200 * time.Millisecond
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var hb [headerLen]byte
	(&frameHeader{typ: frameClose, seq: 1}).put(hb[:])
	c.Write(append([]byte("USL\x01"), bytes.Repeat(hb[:], 3)...))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c)
	l.mu.Lock()
	n := len(l.sessions)
	l.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d sessions exist", n)
	}
}
