package usl

import (
	"errors"
	"io"
	"testing"
)

func TestEchoTCP(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	if p.server.PeerKey() != ck.pub {
		t.Fatalf("server sees peer %s, want %s", p.server.PeerKey(), ck.pub)
	}
	a, b := openPair(t, p.client, p.server, "echo")
	go func() {
		io.Copy(b, b)
		b.CloseWrite()
	}()
	const n = 3 << 20
	done := make(chan [32]byte, 1)
	go func() {
		sum, _ := writePattern(a, 1, n, 70000)
		a.CloseWrite()
		done <- sum
	}()
	got, m, err := readAllHash(a)
	if err != nil || m != n {
		t.Fatalf("read %d bytes, err %v; want %d", m, err, n)
	}
	if want := <-done; got != want {
		t.Fatal("echo: SHA-256 mismatch")
	}
	st := p.client.Stats()
	if st.State != Up || st.BytesOut != n || st.BytesIn != n {
		t.Fatalf("stats %+v", st)
	}
	if err := p.client.Close(); err != nil {
		t.Fatal(err)
	}
	<-p.server.Done()
	if err := p.server.Err(); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("server err %v, want ErrSessionClosed", err)
	}
}
