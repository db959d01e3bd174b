package usl

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHalfClose is check 4: each direction closes on its own, as TCP's
// shutdown allows, and the other keeps flowing.
func TestHalfClose(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	for _, dir := range []string{"opener-first", "acceptor-first"} {
		a, b := openPair(t, p.client, p.server, dir)
		first, second := a, b
		if dir == "acceptor-first" {
			first, second = b, a
		}
		first.Write([]byte("request"))
		if err := first.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if _, err := first.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
			t.Fatalf("%s: write after CloseWrite: %v", dir, err)
		}
		got, err := io.ReadAll(second)
		if err != nil || string(got) != "request" {
			t.Fatalf("%s: read %q, %v", dir, got, err)
		}
		// The half-closed side still reads, the other still writes.
		second.Write([]byte("response"))
		second.CloseWrite()
		got, err = io.ReadAll(first)
		if err != nil || string(got) != "response" {
			t.Fatalf("%s: reverse read %q, %v", dir, got, err)
		}
		first.Close()
		second.Close()
	}
	waitFor(t, "streams removed", func() bool {
		return p.client.Stats().Streams == 0 && p.server.Stats().Streams == 0
	})
}

// TestRejectCodes: every reject reason reaches OpenStream exactly.
func TestRejectCodes(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	codes := []struct {
		code ResetCode
		want error
	}{
		{ResetRefused, ErrRefused},
		{ResetUnreachable, ErrUnreachable},
		{ResetForbidden, ErrForbidden},
		{ResetTimeout, ErrTimeout},
		{ResetPeerRestarted, ErrPeerRestarted},
		{ResetLimit, ErrLimit},
	}
	for _, c := range codes {
		go func() {
			st, err := p.server.AcceptStream(context.Background())
			if err == nil {
				st.Reject(c.code)
			}
		}()
		_, err := p.client.OpenStream(context.Background(), []byte("dest"))
		var re *ResetError
		if !errors.As(err, &re) || re.Code != c.code || !re.Remote || !errors.Is(err, c.want) {
			t.Fatalf("reject %v: OpenStream returned %v", c.code, err)
		}
	}
}

// TestResetMidStream: a reset aborts both directions with its reason.
func TestResetMidStream(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	a, b := openPair(t, p.client, p.server, "r")
	a.Write([]byte("some"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatal(err)
	}
	if err := b.Reset(ResetUnreachable); err != nil {
		t.Fatal(err)
	}
	_, err := a.Read(buf)
	var re *ResetError
	if !errors.As(err, &re) || re.Code != ResetUnreachable || !re.Remote {
		t.Fatalf("read after peer reset: %v", err)
	}
	if _, err := a.Write(buf); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("write after peer reset: %v", err)
	}
	if _, err := b.Read(buf); !errors.As(err, &re) || re.Remote || re.Code != ResetUnreachable {
		t.Fatalf("read after local reset: %v", err)
	}
}

// TestDeadlines: Read and Write honour deadlines with os.ErrDeadlineExceeded
// and work again once the deadline is lifted.
func TestDeadlines(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.StreamWindow, scfg.StreamWindow = 4096, 4096
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "d")
	a.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v", err)
	}
	// A passed deadline fails Read even with data waiting, as net.Conn's do.
	b.Write([]byte("waiting"))
	waitFor(t, "data buffered", func() bool { return p.client.Stats().BytesIn == 7 })
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline with data waiting: %v", err)
	}
	a.SetReadDeadline(time.Time{})
	if got, err := io.ReadAll(io.LimitReader(a, 7)); err != nil || string(got) != "waiting" {
		t.Fatalf("read after lifting the deadline: %q %v", got, err)
	}
	// Nobody reads b: after the 4 KiB window the writer must block, and the
	// deadline must end the wait.
	a.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := a.Write(make([]byte, 64<<10))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != 4096 {
		t.Fatalf("write: %d, %v; want 4096, deadline", n, err)
	}
	a.SetWriteDeadline(time.Time{})
	go io.Copy(io.Discard, b)
	if _, err := a.Write(make([]byte, 64<<10)); err != nil {
		t.Fatalf("write after lifting the deadline: %v", err)
	}
}

// TestSlowReaderDoesNotBlockOthers: credit is per stream.
func TestSlowReaderDoesNotBlockOthers(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	stuck, _ := openPair(t, p.client, p.server, "stuck") // never read
	a, b := openPair(t, p.client, p.server, "fast")
	go stuck.Write(make([]byte, 4<<20)) // blocks after one window
	go func() {
		writePattern(a, 5, 8<<20, 64<<10)
		a.CloseWrite()
	}()
	_, n, err := readAllHash(b)
	if err != nil || n != 8<<20 {
		t.Fatalf("fast stream: %d bytes, %v", n, err)
	}
}

// TestReliableClose: everything written before Session.Close arrives,
// then EOF, though Close was called right after the writes.
func TestReliableClose(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub))
	defer p.close()
	a, b := openPair(t, p.client, p.server, "c")
	got := make(chan [32]byte, 1)
	go func() {
		h, _, _ := readAllHash(b)
		got <- h
	}()
	sum, err := writePattern(a, 9, 2<<20, 32<<10)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.client.Close(); err != nil {
		t.Fatal(err)
	}
	if h := <-got; h != sum {
		t.Fatal("data written before Close did not all arrive")
	}
	if _, err := a.Write([]byte("x")); err == nil {
		t.Fatal("write after Close succeeded")
	}
}

// TestMaxStreams: the peer's limit refuses extra streams with ResetLimit.
func TestMaxStreams(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	scfg := fastCfg(t, sk, ck.pub)
	scfg.MaxStreams = 2
	p := newTCPPair(t, fastCfg(t, ck, sk.pub), scfg)
	defer p.close()
	openPair(t, p.client, p.server, "1")
	openPair(t, p.client, p.server, "2")
	_, err := p.client.OpenStream(context.Background(), []byte("3"))
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("third stream: %v, want ErrLimit", err)
	}
}

// TestConcurrentReadersWriters: net.Conn allows concurrent Reads and
// Writes on one stream; with a small window every byte still arrives and
// nobody is left waiting.
func TestConcurrentReadersWriters(t *testing.T) {
	ck, sk := newKeypair(t), newKeypair(t)
	ccfg, scfg := fastCfg(t, ck, sk.pub), fastCfg(t, sk, ck.pub)
	ccfg.StreamWindow, scfg.StreamWindow = 4096, 4096
	p := newTCPPair(t, ccfg, scfg)
	defer p.close()
	a, b := openPair(t, p.client, p.server, "cc")
	const writers, per = 4, 256 << 10
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chunk := bytes.Repeat([]byte{byte(w + 1)}, 1000)
			for left := per; left > 0; left -= min(left, len(chunk)) {
				if _, err := a.Write(chunk[:min(left, len(chunk))]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		a.CloseWrite()
	}()
	var counts [writers + 1]atomic.Int64
	var rg sync.WaitGroup
	for range 4 {
		rg.Add(1)
		go func() {
			defer rg.Done()
			buf := make([]byte, 777)
			for {
				n, err := b.Read(buf)
				for _, c := range buf[:n] {
					counts[c].Add(1)
				}
				if err != nil {
					if err != io.EOF {
						t.Error(err)
					}
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { rg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("concurrent readers or writers stalled")
	}
	for w := 1; w <= writers; w++ {
		if c := counts[w].Load(); c != per {
			t.Errorf("writer %d: %d bytes arrived, want %d", w, c, per)
		}
	}
}
