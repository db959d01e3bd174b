package usl

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestSessionTimeoutDialer: with no path for SessionTimeout, the dialer
// gives up and every stream fails with ErrSessionTimeout.
func TestSessionTimeoutDialer(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	fn := newFaultNet(4)
	defer fn.close()
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.SessionTimeout = 400 * time.Millisecond
	scfg.SessionTimeout = 400 * time.Millisecond
	p := newFaultPair(t, fn, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "t")
	fn.setDown(true)
	fn.killAll()
	for _, s := range []*Session{p.client, p.server} {
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("session did not time out: %+v", s.Stats())
		}
		if !errors.Is(s.Err(), ErrSessionTimeout) || s.Stats().State != Closed {
			t.Fatalf("err %v state %v", s.Err(), s.Stats().State)
		}
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, ErrSessionTimeout) {
		t.Fatalf("client stream write: %v", err)
	}
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, ErrSessionTimeout) {
		t.Fatalf("server stream read: %v", err)
	}
	if _, err := p.client.OpenStream(context.Background(), nil); !errors.Is(err, ErrSessionTimeout) {
		t.Fatalf("open after timeout: %v", err)
	}
}

// TestOpenWaitsThroughPartition: OpenStream and Write ride out a partition
// shorter than the session timeout, and the stream just works after it.
func TestOpenWaitsThroughPartition(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	fn := newFaultNet(5)
	defer fn.close()
	p := newFaultPair(t, fn, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	fn.setDown(true)
	fn.killAll()
	go func() {
		time.Sleep(500 * time.Millisecond)
		fn.setDown(false)
	}()
	a, b := openPair(t, p.client, p.server, "through")
	a.Write([]byte("ok"))
	buf := make([]byte, 2)
	if _, err := b.Read(buf); err != nil || string(buf) != "ok" {
		t.Fatalf("%q %v", buf, err)
	}
	st := p.client.Stats()
	if st.Reconnects < 1 || st.State != Up || st.Remote == "" {
		t.Fatalf("stats %+v", st)
	}
	// Keepalives run every 50 ms in the test config: an RTT shows up.
	waitFor(t, "keepalive RTT", func() bool { return p.client.Stats().RTT > 0 && p.server.Stats().RTT > 0 })
}
