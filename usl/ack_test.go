package usl

import (
	"io"
	"testing"
	"time"
)

// TestDelayedAck: with no reverse traffic, a bare ACK frees the sender's
// replay buffer within about AckDelay.
func TestDelayedAck(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	// No keepalive traffic to carry the ack instead.
	ccfg.KeepaliveInterval, scfg.KeepaliveInterval = time.Hour, time.Hour
	ccfg.DeadInterval, scfg.DeadInterval = time.Hour, time.Hour
	scfg.AckDelay = 20 * time.Millisecond
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "ack")
	go io.Copy(io.Discard, b)
	time.Sleep(50 * time.Millisecond) // the ACCEPT's own ack settles
	start := time.Now()
	a.Write([]byte("x"))
	if u := p.client.Stats().Unacked; u != 1 {
		t.Fatalf("unacked right after the write: %d, want 1", u)
	}
	waitFor(t, "ack", func() bool { return p.client.Stats().Unacked == 0 })
	if d := time.Since(start); d < 15*time.Millisecond || d > 500*time.Millisecond {
		t.Fatalf("acked after %v, want about the 20 ms ack delay", d)
	}
}

// TestAckThreshold: past the byte threshold acks go out at once, so a bulk
// transfer never waits on the ack delay, however long it is.
func TestAckThreshold(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.KeepaliveInterval, scfg.KeepaliveInterval = time.Hour, time.Hour
	ccfg.DeadInterval, scfg.DeadInterval = time.Hour, time.Hour
	scfg.AckDelay = time.Hour
	ccfg.ReplayBuffer = 512 << 10 // a transfer of 8 MiB needs acks to proceed
	// A window larger than the transfer: no WINDOW frame flows back to
	// carry an ack, only the threshold can.
	ccfg.StreamWindow, scfg.StreamWindow = 16<<20, 16<<20
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "bulk")
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, b)
		done <- n
	}()
	go func() {
		writePattern(a, 3, 8<<20, 64<<10)
		a.CloseWrite()
	}()
	select {
	case n := <-done:
		if n != 8<<20 {
			t.Fatalf("received %d", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("transfer stalled with %d bytes unacked: acks waited for the delay", p.client.Stats().Unacked)
	}
}
