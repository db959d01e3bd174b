package loadgen

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

func startServer(t *testing.T) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ln, nil)
	t.Cleanup(func() { s.Close() })
	return s
}

func run(t *testing.T, cfg Config) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := RunFor(ctx, cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return rep
}

func TestBulkBothDirectionsVerified(t *testing.T) {
	s := startServer(t)
	rep := run(t, Config{Addr: s.Addr().String(), Flows: 4, Bytes: 8 << 20, Seed: 7})
	if !rep.Verified || len(rep.Errors) != 0 {
		t.Fatalf("not verified:\n%s", rep)
	}
	if rep.BytesUp != 4*8<<20 || rep.BytesDown != 4*8<<20 {
		t.Fatalf("bytes up %d down %d, want %d each", rep.BytesUp, rep.BytesDown, 4*8<<20)
	}
	for _, f := range rep.Flows {
		if f.Up.SentSHA256 == "" || f.Up.SentSHA256 != f.Up.RecvSHA256 || f.Down.SentSHA256 != f.Down.RecvSHA256 {
			t.Fatalf("flow %d hashes: %+v", f.Flow, f)
		}
		if f.Up.SentSHA256 == f.Down.SentSHA256 {
			t.Fatal("up and down carry the same bytes; streams must differ per direction")
		}
	}
	if rep.Flows[0].Up.SentSHA256 == rep.Flows[1].Up.SentSHA256 {
		t.Fatal("flows carry the same bytes; streams must differ per flow")
	}
	t.Logf("\n%s", rep)
}

func TestSameSeedSameBytes(t *testing.T) {
	s := startServer(t)
	a := run(t, Config{Addr: s.Addr().String(), Bytes: 100000, Seed: 42, Dirs: Up})
	b := run(t, Config{Addr: s.Addr().String(), Bytes: 100000, Seed: 42, Dirs: Up})
	c := run(t, Config{Addr: s.Addr().String(), Bytes: 100000, Seed: 43, Dirs: Up})
	if a.Flows[0].Up.SentSHA256 != b.Flows[0].Up.SentSHA256 {
		t.Fatal("same seed gave different bytes")
	}
	if a.Flows[0].Up.SentSHA256 == c.Flows[0].Up.SentSHA256 {
		t.Fatal("different seeds gave the same bytes")
	}
}

func TestDurationModeOneDirection(t *testing.T) {
	s := startServer(t)
	rep := run(t, Config{Addr: s.Addr().String(), Duration: 300 * time.Millisecond, Dirs: Down})
	if !rep.Verified {
		t.Fatalf("not verified:\n%s", rep)
	}
	if rep.BytesDown == 0 || rep.BytesUp != 0 {
		t.Fatalf("bytes up %d down %d", rep.BytesUp, rep.BytesDown)
	}
	if rep.Elapsed < 300*time.Millisecond {
		t.Fatalf("elapsed %v, want at least the duration", rep.Elapsed)
	}
}

// TestRatePacesBulk: with Rate, each direction sends about Rate×Duration,
// not what loopback takes.
func TestRatePacesBulk(t *testing.T) {
	s := startServer(t)
	const rate, dur = 40e6, 500 * time.Millisecond
	rep := run(t, Config{Addr: s.Addr().String(), Duration: dur, Rate: rate})
	if !rep.Verified {
		t.Fatalf("not verified:\n%s", rep)
	}
	want := rate / 8 * dur.Seconds()
	for what, got := range map[string]int64{"up": rep.BytesUp, "down": rep.BytesDown} {
		if float64(got) < 0.8*want || float64(got) > 1.1*want {
			t.Errorf("%s: %d bytes in %v at %.0f bit/s, want about %.0f", what, got, dur, rate, want)
		}
	}
}

func TestHalfClose(t *testing.T) {
	s := startServer(t)
	rep := run(t, Config{Addr: s.Addr().String(), Mode: HalfClose, Flows: 2, Bytes: 1 << 20})
	if !rep.Verified {
		t.Fatalf("not verified:\n%s", rep)
	}
	// The reply starts only after the request's FIN.
	for _, f := range rep.Flows {
		if !f.Down.First.After(f.Up.Last) {
			t.Fatalf("flow %d: reply began %v before the request ended %v", f.Flow, f.Down.First, f.Up.Last)
		}
	}
}

func TestIdleThenTransfer(t *testing.T) {
	s := startServer(t)
	start := time.Now()
	rep := run(t, Config{Addr: s.Addr().String(), Idle: 400 * time.Millisecond, Bytes: 4096})
	if !rep.Verified {
		t.Fatalf("not verified:\n%s", rep)
	}
	if first := rep.Flows[0].Down.First; first.Sub(start) < 400*time.Millisecond {
		t.Fatalf("first byte %v after start, want after the idle period", first.Sub(start))
	}
}

func TestRequestResponseLatency(t *testing.T) {
	s := startServer(t)
	rep := run(t, Config{Addr: s.Addr().String(), Mode: RR, Requests: 2000, ReqSize: 100, RespSize: 1000, Flows: 2})
	if !rep.Verified {
		t.Fatalf("not verified:\n%s", rep)
	}
	l := rep.Latency
	if l == nil || l.Count != 4000 || l.P50 <= 0 || l.P99 < l.P50 || l.Max < l.P99 {
		t.Fatalf("latency %+v", l)
	}
	if rep.Flows[0].Up.Received != 2000*100 || rep.Flows[0].Down.Received != 2000*1000 {
		t.Fatalf("rr bytes: %+v", rep.Flows[0])
	}
	t.Logf("p50 %v p99 %v", l.P50, l.P99)
}

// corruptingProxy forwards connections to target, flipping one byte at
// offset flip of the server→client direction.
func corruptingProxy(t *testing.T, target string, flip int64) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(u, c)
				u.(*net.TCPConn).CloseWrite()
			}()
			go func() {
				defer wg.Done()
				defer c.Close()
				defer u.Close()
				buf := make([]byte, 4096)
				var off int64
				for {
					n, err := u.Read(buf)
					if flip >= off && flip < off+int64(n) {
						buf[flip-off] ^= 0x40
					}
					off += int64(n)
					if n > 0 {
						c.Write(buf[:n])
					}
					if err != nil {
						c.(*net.TCPConn).CloseWrite()
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestDetectsCorruption(t *testing.T) {
	s := startServer(t)
	// Offset 80+12345 in the raw stream: the loadgen header goes the other
	// way, so the down stream starts at offset 0.
	proxy := corruptingProxy(t, s.Addr().String(), 12345)
	rep := run(t, Config{Addr: proxy, Bytes: 1 << 20, Dirs: Down})
	if rep.Verified {
		t.Fatal("corrupted transfer reported as verified")
	}
	d := rep.Flows[0].Down
	if d.Mismatch != 12345 || d.Match || d.SentSHA256 == d.RecvSHA256 {
		t.Fatalf("down: mismatch at %d, match %v", d.Mismatch, d.Match)
	}
	if !rep.HasErrno("MISMATCH") {
		t.Fatalf("errors %v, want MISMATCH", rep.Errnos())
	}
}

func TestDialErrorReported(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens now: connection refused
	rep := run(t, Config{Addr: addr, Bytes: 10})
	if rep.Verified || !rep.HasErrno("ECONNREFUSED") {
		t.Fatalf("errors %v, want ECONNREFUSED", rep.Errnos())
	}
}

func TestRecoveryFromTimeline(t *testing.T) {
	tl := timeline{}
	base := int64(1_000_000_000)
	ms := int64(time.Millisecond)
	for _, at := range []int64{0, 1, 2, 3, 500, 501, 502} { // a 497 ms gap
		tl.record(base + at*ms)
	}
	if got, ok := tl.firstAfter(base + 100*ms); !ok || got != base+500*ms {
		t.Fatalf("heal inside gap: %d %v", got-base, ok)
	}
	if got, ok := tl.firstAfter(base + 501*ms); !ok || got != base+501*ms {
		t.Fatalf("heal while flowing: %d %v", got-base, ok)
	}
	if _, ok := tl.firstAfter(base + 600*ms); ok {
		t.Fatal("heal after the last byte must be unrecovered")
	}
	if time.Duration(tl.Longest) != 497*time.Millisecond {
		t.Fatalf("longest stall %v", time.Duration(tl.Longest))
	}
}

func TestHist(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}} {
		got := h.quantile(c.q)
		if got < c.want || float64(got) > float64(c.want)*1.04 {
			t.Errorf("q%v = %v, want ~%v", c.q, got, c.want)
		}
	}
}

func BenchmarkStream(b *testing.B) {
	s := newStream(1, 2, Up)
	buf := make([]byte, maxBuf)
	b.SetBytes(maxBuf)
	for b.Loop() {
		s.fill(buf)
	}
}

func BenchmarkLoopback(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := NewServer(ln, nil)
	defer s.Close()
	const n = 256 << 20
	for _, noVerify := range []bool{false, true} {
		name := map[bool]string{false: "verify", true: "noverify"}[noVerify]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(n)
			for b.Loop() {
				rep, err := RunFor(context.Background(), Config{Addr: s.Addr().String(), Bytes: n, Dirs: Up, NoVerify: noVerify})
				if err != nil || rep.BytesUp != n || len(rep.Errors) != 0 {
					b.Fatalf("%v\n%v", err, rep)
				}
			}
		})
	}
}

// TestHalfClosedWhileReplyStreams: the client's FIN comes early while the
// server keeps sending, as in the partition suite's half-close scenario.
func TestHalfClosedWhileReplyStreams(t *testing.T) {
	s := startServer(t)
	rep := run(t, Config{Addr: s.Addr().String(), UpBytes: 1000, Duration: 300 * time.Millisecond})
	if !rep.Verified {
		t.Fatalf("not verified:\n%s", rep)
	}
	f := rep.Flows[0]
	if f.Up.Received != 1000 || f.Down.Received <= 1000 || !f.Down.Last.After(f.Up.Last) {
		t.Fatalf("up %d (last %v), down %d (last %v)", f.Up.Received, f.Up.Last, f.Down.Received, f.Down.Last)
	}
	if f.Connect <= 0 {
		t.Fatalf("connect time %v", f.Connect)
	}
}

func TestHistSlowest(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var a, b hist
	for i := 1; i <= 100; i++ {
		// Samples in a shuffled order, split over two flows' hists.
		d := time.Duration((i*37)%100+1) * time.Millisecond
		h := &a
		if i%2 == 0 {
			h = &b
		}
		h.addAt(t0.Add(d), d)
	}
	a.merge(&b)
	if len(a.slowest) != histSlowest {
		t.Fatalf("kept %d samples, want %d", len(a.slowest), histSlowest)
	}
	for i, s := range a.slowest {
		want := time.Duration(100-i) * time.Millisecond
		if s.RTT != want || !s.At.Equal(t0.Add(want)) {
			t.Errorf("slowest[%d] = %v at %v, want %v at %v", i, s.RTT, s.At, want, t0.Add(want))
		}
	}
}
