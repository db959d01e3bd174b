package usl

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestFenceListenerRestart: the listener crashes and comes back with a new
// epoch. The dialer's streams fail with ErrPeerRestarted, nothing of the
// old incarnation reaches the new listener, and new streams just work.
func TestFenceListenerRestart(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	fn := newFaultNet(1)
	defer fn.close()
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	scfg.epoch = 111
	p := newFaultPair(t, fn, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "old")
	if _, err := a.Write([]byte("delivered")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 9)
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatal(err)
	}
	// Blackhole the path, then write: these bytes sit in the client's
	// replay buffer when the listener "crashes".
	fn.current().mu.Lock()
	fn.current().blackholed = true
	fn.current().mu.Unlock()
	if _, err := a.Write([]byte("OLD-UNDELIVERED")); err != nil {
		t.Fatal(err)
	}
	// Crash: a new listener with a new epoch takes over the address.
	scfg2 := scfg
	scfg2.epoch = 222
	l2, err := NewListener(fn.listen(), scfg2)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	fn.killAll()
	p.l.Close() // the old process is gone; its session has no path

	if _, err := a.Read(buf); !errors.Is(err, ErrPeerRestarted) {
		t.Fatalf("old stream read: %v, want ErrPeerRestarted", err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, ErrPeerRestarted) {
		t.Fatalf("old stream write: %v, want ErrPeerRestarted", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s2, err := l2.Accept(ctx)
	if err != nil {
		t.Fatalf("accept after restart: %v", err)
	}
	na, nb := openPair(t, p.client, s2, "new") // fails if "old" came first
	na.Write([]byte("fresh"))
	na.CloseWrite()
	got, err := io.ReadAll(nb)
	if err != nil || string(got) != "fresh" {
		t.Fatalf("new stream got %q, %v", got, err)
	}
	if st := p.client.Stats(); st.Fences != 1 || st.State != Up {
		t.Fatalf("client stats after fence: %+v", st)
	}
	// Nothing else is pending on the new session: no old OPEN, no old data.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if st, err := s2.AcceptStream(ctx2); err == nil {
		t.Fatalf("unexpected stream %q on the new session", st.Descriptor())
	}
	if s2.Stats().BytesIn != 5 {
		t.Fatalf("new session received %d bytes, want 5", s2.Stats().BytesIn)
	}
}

// TestFenceDialerRestart: the dialing process crashes and its successor
// (same key, new epoch) connects. The listener's old session ends with
// ErrPeerRestarted, its streams fail without delivering buffered bytes,
// and the fresh session comes out of Accept.
func TestFenceDialerRestart(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	fn := newFaultNet(2)
	defer fn.close()
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.epoch = 111
	ccfg.SessionTimeout = 300 * time.Millisecond // the crashed one gives up quickly
	var crashed atomic.Bool
	l, err := NewListener(fn.listen(), scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ccfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if crashed.Load() {
			return nil, errors.New("crashed")
		}
		return fn.Dial(ctx, network, addr)
	}
	c1, err := Dial(context.Background(), "mem", ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s1, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, b := openPair(t, c1, s1, "old")
	if _, err := a.Write([]byte("unread-old-bytes")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "old bytes buffered", func() bool { return s1.Stats().BytesIn == 16 })
	crashed.Store(true)
	fn.killAll()

	ccfg2 := fastCfg(t, ck, sk.pub)
	ccfg2.epoch = 222
	ccfg2.Dial = fn.Dial
	c2, err := Dial(context.Background(), "mem", ccfg2)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	s2, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s1.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("old session not fenced")
	}
	if !errors.Is(s1.Err(), ErrPeerRestarted) || s1.Stats().State != Fenced {
		t.Fatalf("old session: err %v state %v", s1.Err(), s1.Stats().State)
	}
	n, err := b.Read(make([]byte, 64))
	if n != 0 || !errors.Is(err, ErrPeerRestarted) {
		t.Fatalf("old stream read %d bytes, err %v; want 0, ErrPeerRestarted", n, err)
	}
	na, nb := openPair(t, c2, s2, "new")
	nb.Write([]byte("hello"))
	nb.CloseWrite()
	got, err := io.ReadAll(na)
	if err != nil || !bytes.Equal(got, []byte("hello")) {
		t.Fatalf("new stream: %q %v", got, err)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
