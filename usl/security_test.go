package usl

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flynn/noise"
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
	line := rec.wait(t, "rejected ", "handshake", "from 1 source", "unknown key: ")
	t.Log(line)
	waitFor(t, "client error", func() bool { return strings.Contains(c.Stats().LastError, ErrHandshake.Error()) })
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
	// mac1 is keyed by the listener's public key: a dialer with the wrong
	// key is refused before any Diffie-Hellman, in silence.
	rec.wait(t, "rejected ", "bad mac1: ")
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
	h := hello{id: p.client.id, epoch: processEpoch(), peerEpoch: p.client.peerEpoch, timestamp: nextTimestamp(),
		window: 1 << 16, maxFrame: 1 << 16}
	p.client.mu.Unlock()
	_, _, err = clientHandshake(conn, mallory.priv, sk.pub, h)
	if !errors.Is(err, ErrNotOwner) {
		t.Fatalf("hijack: %v, want ErrNotOwner", err)
	}
	t.Log(rec.wait(t, "rejected ", "resume by another key: 1"))
	a.Write([]byte("still mine"))
	buf := make([]byte, 10)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "still mine" {
		t.Fatalf("victim stream after hijack attempt: %q %v", buf, err)
	}
	if p.client.Stats().Reconnects != 0 {
		t.Fatal("the hijack attempt disturbed the owner's path")
	}
}

// TestVersionMismatch: a v1 peer (its first flight crafted as v1 sends
// it) gets the listener's preamble back, so it can report the mismatch,
// and the listener counts it under the version; a v2 dialer meeting a v1
// listener says which versions met.
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
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(v1FirstFlight(t, ck.priv, sk.pub))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "USL\x02" {
		t.Fatalf("listener answered %q, %v; want exactly its preamble, then EOF", got, err)
	}
	t.Log(rec.wait(t, "rejected 1 handshake", "peer speaks USL v1, this build speaks v2: 1"))

	// This v2 dialer talks to a v1 listener.
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
		c.Write([]byte("USL\x01"))
	}()
	c2, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, _, err = clientHandshake(c2, ck.priv, sk.pub, hello{id: newSessionID(), epoch: 1, timestamp: 1, window: 1, maxFrame: MinMaxFrame})
	var ve *VersionError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "peer speaks USL v1, this build speaks v2") {
		t.Fatalf("client: %v", err)
	}
}

// v1FirstFlight is what a v1 dialer sends: preamble v1, then a Noise IK
// message with the v1 preamble as prologue and the 48-byte v1 hello.
func v1FirstFlight(t *testing.T, priv PrivateKey, peer PublicKey) []byte {
	pub := priv.Public()
	hs, err := noise.NewHandshakeState(noise.Config{CipherSuite: cipherSuite, Random: crand.Reader,
		Pattern: noise.HandshakeIK, Initiator: true, Prologue: []byte("USL\x01"),
		StaticKeypair: noise.DHKey{Private: priv[:], Public: pub[:]}, PeerStatic: peer[:]})
	if err != nil {
		t.Fatal(err)
	}
	v1hello := make([]byte, 48)
	v1hello[0], v1hello[23] = 1, 1 // session id and epoch non-zero
	binary.BigEndian.PutUint32(v1hello[40:], 1<<16)
	binary.BigEndian.PutUint32(v1hello[44:], 1<<16)
	msg, _, _, err := hs.WriteMessage(nil, v1hello)
	if err != nil {
		t.Fatal(err)
	}
	return appendMsg([]byte("USL\x01"), msg)
}

// TestGarbage throws random bytes, truncated and corrupted handshakes at
// the listener: not one byte comes back, no panic, no session, no leaked
// goroutine, one aggregated log line per interval, and a real client
// still gets in afterwards.
func TestGarbage(t *testing.T) {
	defer goleak.VerifyNone(t)
	ck, sk := newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, ck.pub)
	scfg.FirstMessageTimeout = 300 * time.Millisecond
	scfg.RejectLogInterval = 10 * time.Second
	scfg.Logger = slog.New(rec)
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	valid := validFirstFlight(t, ck.priv, sk.pub)
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	var answered sync.Map
	for i := range 60 {
		var msg []byte
		switch i % 6 {
		case 0:
			msg = make([]byte, rng.IntN(300))
			for j := range msg {
				msg[j] = byte(rng.Uint32())
			}
		case 1:
			msg = append([]byte("USL\x02"), byte(rng.Uint32()), byte(rng.Uint32()))
		case 2:
			msg = append([]byte(nil), valid...)
			msg[6+rng.IntN(len(valid)-6)] ^= 1 << rng.IntN(8) // bad mac1, or bad Noise under a good one
		case 3:
			msg = valid[:rng.IntN(len(valid))] // truncated: hits the first-message deadline
		case 4:
			msg = []byte("GET / HTTP/1.1\r\n\r\n")
		case 5:
			msg = valid // a replay of one first message
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
			if n, _ := io.Copy(io.Discard, c); n != 0 { // until the listener hangs up
				answered.Store(i, n)
			}
		}()
	}
	wg.Wait()
	n := 0
	answered.Range(func(k, v any) bool {
		n++
		if k.(int)%6 != 5 {
			t.Errorf("garbage %d got %d bytes back", k, v)
		}
		return true
	})
	// The valid first message is answered once (its first copy; the others
	// are replays); its sender never confirms, so no session exists.
	if n != 1 {
		t.Fatalf("%d connections were answered, want 1", n)
	}
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
	l.Close() // flushes the pending aggregated line
	var lines []string
	rec.mu.Lock()
	for _, m := range rec.msgs {
		if strings.HasPrefix(m, "rejected ") {
			lines = append(lines, m)
		}
	}
	rec.mu.Unlock()
	if len(lines) != 1 || !strings.Contains(lines[0], "rejected 60 handshakes from 1 source") ||
		!strings.Contains(lines[0], "replayed first message: 9") || !strings.Contains(lines[0], "no key confirmation: 1") {
		t.Fatalf("rejection log lines: %q, want one for 60 handshakes", lines)
	}
	t.Log(lines[0])
}

// validFirstFlight is a first message a real dialer would send.
func validFirstFlight(t testing.TB, priv PrivateKey, peer PublicKey) []byte {
	hs, err := newNoiseInitiator(priv, peer)
	if err != nil {
		t.Fatal(err)
	}
	b, err := firstMessage(hs, peer, hello{id: newSessionID(), epoch: 1, timestamp: nextTimestamp(), window: 1 << 16, maxFrame: MinMaxFrame})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHandshakeTimeoutAndRateLimit(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, ck.pub)
	scfg.FirstMessageTimeout = 200 * time.Millisecond
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
		// the first-message deadline. Our own 5 s deadline must not fire.
		n, err := c.Read(make([]byte, 1))
		var ne net.Error
		if n != 0 || err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("conn %d: read %d, %v", i, n, err)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("silent connections were held %v", d)
	}
	// The counts may fall into two windows: add them up.
	waitFor(t, "2 rate-limited and 2 silent in the rejection lines", func() bool {
		return rejectCount(rec, rejRate) == 2 && rejectCount(rec, rejSilent) == 2
	})
}

// rejectCount sums one reason's counts over every aggregated line.
func rejectCount(rec *logRecorder, reason string) int {
	re := regexp.MustCompile(regexp.QuoteMeta(reason) + `: ([\d,]+)`)
	n := 0
	for _, line := range rejectLines(rec) {
		if m := re.FindStringSubmatch(line); m != nil {
			v, _ := strconv.Atoi(strings.ReplaceAll(m[1], ",", ""))
			n += v
		}
	}
	return n
}

// TestPendingPoolEvicts: with the pool full of silent connections, the
// oldest is evicted for each new one, and a real dialer still gets in
// long before the silent ones' deadline.
func TestPendingPoolEvicts(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	rec := &logRecorder{}
	scfg := fastCfg(t, sk, ck.pub)
	scfg.PendingHandshakes = 4
	scfg.FirstMessageTimeout = time.Minute
	scfg.Logger = slog.New(rec)
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var silent []net.Conn
	for range 8 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	// The four oldest are evicted (EOF), in order.
	for i, c := range silent[:4] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
			t.Fatalf("silent conn %d: read %d, %v; want EOF by eviction", i, n, err)
		}
	}
	start := time.Now()
	c, err := Dial(context.Background(), l.Addr().String(), fastCfg(t, ck, sk.pub))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.Accept(ctx); err != nil {
		t.Fatalf("real dialer with a full pending pool: %v", err)
	}
	t.Logf("real dialer in after %v", time.Since(start))
	t.Log(rec.wait(t, "rejected ", "evicted while silent: 5"))
}

func TestUnknownKeyBytesNeverReachSession(t *testing.T) {
	// A frame-shaped payload in the clear after a bogus preamble is never
	// parsed as a frame: only the handshake parser sees it.
	ck, sk := newKeypair(t), newKeypair(t)
	scfg := fastCfg(t, sk, ck.pub)
	scfg.FirstMessageTimeout = 200 * time.Millisecond
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
	c.Write(append([]byte("USL\x02"), bytes.Repeat(hb[:], 3)...))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		t.Fatalf("listener answered %d bytes", n)
	}
	l.mu.Lock()
	n := len(l.sessions)
	l.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d sessions exist", n)
	}
}
