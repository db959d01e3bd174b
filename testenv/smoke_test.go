package testenv

import (
	"errors"
	"syscall"
	"testing"
	"time"
)

func TestLinkCarriesTCPv4v6(t *testing.T) {
	requireRoot(t)
	a, b, _ := pair(t)
	for _, addr := range []string{"10.0.0.2:7000", "[fd10::2]:7000"} {
		ln, err := b.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, ln)
		start := time.Now()
		c, err := a.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		// A fresh link must carry the very first SYN: a connect that takes
		// a retransmission timeout (1 s) means the link was not ready.
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("first connect to %s took %v", addr, d)
		}
		if err := roundTrip(c, []byte("hello"), 2*time.Second); err != nil {
			t.Fatalf("echo via %s: %v", addr, err)
		}
		c.Close()
	}
}

func TestResetTCPGivesECONNRESET(t *testing.T) {
	requireRoot(t)
	a, b, l := pair(t)
	ln, err := b.Listen("tcp", "10.0.0.2:7001")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	c, err := a.Dial("tcp", "10.0.0.2:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("before"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.ResetTCP(7001); err != nil {
		t.Fatal(err)
	}
	err = roundTrip(c, []byte("during"), 2*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("round trip across ResetTCP: got %v, want ECONNRESET", err)
	}
	// A new connection is refused while the fault lasts...
	if c2, err := a.Dial("tcp", "10.0.0.2:7001"); !errors.Is(err, syscall.ECONNREFUSED) {
		if c2 != nil {
			c2.Close()
		}
		t.Fatalf("dial during ResetTCP: got %v, want ECONNREFUSED", err)
	}
	// ...and works after Heal; ResetTCP twice is harmless.
	if err := l.ResetTCP(7001); err != nil {
		t.Fatal(err)
	}
	if err := l.Heal(); err != nil {
		t.Fatal(err)
	}
	c3, err := a.Dial("tcp", "10.0.0.2:7001")
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	defer c3.Close()
	if err := roundTrip(c3, []byte("after"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
}
