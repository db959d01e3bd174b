package usl

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

type keypair struct {
	priv PrivateKey
	pub  PublicKey
}

func newKeypair(t testing.TB) keypair {
	t.Helper()
	k, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return keypair{k, k.Public()}
}

// testLogger shows session logs only with USL_TEST_LOG=1: they are noise
// unless a test is being debugged.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("USL_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// fastCfg shortens every timer so that tests of reconnects and dead paths
// take milliseconds to seconds rather than the production defaults.
func fastCfg(t testing.TB, self keypair, peers ...PublicKey) Config {
	return Config{
		PrivateKey:        self.priv,
		PeerKeys:          peers,
		KeepaliveInterval: 50 * time.Millisecond,
		DeadInterval:      300 * time.Millisecond,
		ReconnectMin:      5 * time.Millisecond,
		ReconnectMax:      100 * time.Millisecond,
		HandshakeTimeout:  2 * time.Second,
		HandshakeRate:     1000,
		RejectLogInterval: 200 * time.Millisecond,
		Logger:            testLogger(t),
	}
}

// pair is a listener and a dialed session with their accepted counterpart.
type pair struct {
	l      *Listener
	client *Session
	server *Session
}

func (p *pair) close() {
	if p.client != nil {
		p.client.Close()
	}
	if p.l != nil {
		p.l.Close()
	}
}

func newTCPPair(t testing.TB, ccfg, scfg Config) *pair {
	t.Helper()
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), l.Addr().String(), ccfg)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := l.Accept(ctx)
	if err != nil {
		c.Close()
		l.Close()
		t.Fatalf("accept: %v", err)
	}
	// Accept returns once the listener attached the path; the dialer
	// attaches a moment later, when it has read the reply.
	waitFor(t, "dialer up", func() bool { return c.Stats().State == Up })
	return &pair{l: l, client: c, server: s}
}

// openPair opens a stream from a to b and accepts it on b.
func openPair(t testing.TB, a, b *Session, desc string) (*Stream, *Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		st  *Stream
		err error
	}
	ch := make(chan res, 1)
	go func() {
		st, err := b.AcceptStream(ctx)
		if err == nil {
			if string(st.Descriptor()) != desc {
				err = io.ErrUnexpectedEOF
			} else {
				err = st.Accept()
			}
		}
		ch <- res{st, err}
	}()
	sa, err := a.OpenStream(ctx, []byte(desc))
	if err != nil {
		t.Fatalf("open %q: %v", desc, err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatalf("accept %q: %v", desc, r.err)
	}
	return sa, r.st
}

// pattern writes n pseudo-random bytes derived from seed and returns their
// SHA-256, so both ends can compare without holding the data.
func writePattern(w io.Writer, seed uint64, n int, chunk int) ([32]byte, error) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	h := sha256.New()
	buf := make([]byte, chunk)
	for n > 0 {
		c := min(n, 1+r.IntN(chunk))
		for i := range buf[:c] {
			buf[i] = byte(r.Uint32())
		}
		h.Write(buf[:c])
		if _, err := w.Write(buf[:c]); err != nil {
			var sum [32]byte
			return sum, err
		}
		n -= c
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func readAllHash(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n, err
}
