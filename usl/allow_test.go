package usl

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestListenerAllowSwaps: with Config.Allow the allowlist is the caller's,
// read per handshake: a key admitted later gets in without a new listener,
// a key dropped is refused, and PeerLimits gives each key its own stream
// budget.
func TestListenerAllowSwaps(t *testing.T) {
	srv, a, b := newKeypair(t), newKeypair(t), newKeypair(t)
	var mu sync.Mutex
	allowed := map[PublicKey]bool{a.pub: true}
	scfg := fastCfg(t, srv)
	scfg.Allow = func(k PublicKey) bool { mu.Lock(); defer mu.Unlock(); return allowed[k] }
	scfg.PeerLimits = func(k PublicKey) (int, int) {
		if k == b.pub {
			return 1, 0
		}
		return 0, 0
	}
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	dialB := func() (*Session, error) {
		c := fastCfg(t, b, srv.pub)
		c.SessionTimeout = 500 * time.Millisecond
		s, err := Dial(ctx, l.Addr().String(), c)
		if err != nil {
			return nil, err
		}
		for i := 0; i < 40; i++ {
			if s.Stats().State == Up {
				return s, nil
			}
			time.Sleep(10 * time.Millisecond)
		}
		s.Close()
		return nil, errors.New("not up after 400 ms")
	}
	if _, err := dialB(); err == nil {
		t.Fatal("key b reached the listener before it was allowed")
	}
	mu.Lock()
	allowed[b.pub] = true
	mu.Unlock()
	sb, err := dialB()
	if err != nil {
		t.Fatalf("key b, now allowed: %v", err)
	}
	defer sb.Close()
	server, err := l.Accept(ctx)
	if err != nil || server.PeerKey() != b.pub {
		t.Fatalf("accept: %v, key %v", err, server)
	}
	// b's budget is one stream: the first (never accepted by b) holds
	// it, so a second is over the limit.
	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	go server.OpenStream(octx, []byte("x"))
	for i := 0; server.Stats().Streams == 0 && i < 200; i++ {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := server.OpenStream(ctx, []byte("y")); !errors.Is(err, ErrLimit) {
		t.Fatalf("second stream of a peer limited to 1: %v, want ErrLimit", err)
	}

	ca, err := Dial(ctx, l.Addr().String(), fastCfg(t, a, srv.pub))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	for i := 0; ca.Stats().State != Up; i++ {
		if i == 200 {
			t.Fatalf("key a, allowed from the start: session %v after 2 s", ca.Stats().State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
