package usl

import (
	"errors"
	"io"
	"testing"

	"go.uber.org/goleak"
)

// TestNoLeakAfterClose is check 6: sessions closed in the middle of busy
// streams, from either side, leave no goroutine behind.
func TestNoLeakAfterClose(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, side := range []string{"dialer", "listener"} {
		ck, sk := newKeypair(t), newKeypair(t)
		p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
		var streams []*Stream
		for range 4 {
			a, b := openPair(t, p.client, p.server, side)
			go io.Copy(io.Discard, b)
			go a.Write(make([]byte, 4<<20)) // blocks on credit, then fails at close
			streams = append(streams, a)
		}
		closer, other := p.client, p.server
		if side == "listener" {
			closer, other = p.server, p.client
		}
		closer.Close()
		<-other.Done()
		if !errors.Is(other.Err(), ErrSessionClosed) {
			t.Fatalf("%s closed: the other side ended with %v", side, other.Err())
		}
		p.close()
		for _, st := range streams {
			if _, err := st.Write([]byte("x")); err == nil {
				t.Fatal("write on a closed session succeeded")
			}
		}
	}
}
