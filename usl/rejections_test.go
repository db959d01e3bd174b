package usl

import (
	"net"
	"testing"
	"time"
)

// Rejections counts refused handshakes by reason, cumulatively.
func TestListenerRejections(t *testing.T) {
	k, _ := GeneratePrivateKey()
	peer, _ := GeneratePrivateKey()
	l, err := Listen("tcp", "127.0.0.1:0", Config{PrivateKey: k, PeerKeys: []PublicKey{peer.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 3 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(make([]byte, 512)) // zeros: not a USL first message
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n uint64
		for _, v := range l.Rejections() {
			n += v
		}
		if n >= 3 {
			t.Logf("rejections: %v", l.Rejections())
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 3 garbage connections: %v", l.Rejections())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
