package usl

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// benchMsg is the size of one Write in the throughput benchmarks.
const benchMsg = 32 << 10

// BenchmarkRawTCP is the baseline: plain loopback TCP, one connection,
// the same message size. Session throughput is reported against it.
func BenchmarkRawTCP(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- 0
			return
		}
		defer c.Close()
		n, _ := io.CopyBuffer(io.Discard, c, make([]byte, benchMsg))
		done <- n
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, benchMsg)
	b.SetBytes(benchMsg)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	if n := <-done; n != int64(b.N)*benchMsg {
		b.Fatalf("received %d bytes", n)
	}
}

// BenchmarkSession measures stream throughput over a loopback TCP path
// with encryption on, one message = one Write of benchMsg bytes, both
// ends in this process. allocs/op is allocations per message across the
// writer, both path goroutines and the reader.
func BenchmarkSession(b *testing.B) {
	for _, streams := range []int{1, 64} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) { benchSession(b, streams) })
	}
}

func benchSession(b *testing.B, streams int) {
	ck, sk := newKeypair(b), newKeypair(b)
	ccfg, scfg := Config{PrivateKey: ck.priv, PeerKeys: []PublicKey{sk.pub}}, Config{PrivateKey: sk.priv, PeerKeys: []PublicKey{ck.pub}}
	p := newTCPPair(b, ccfg, scfg)
	defer p.close()
	type sp struct{ a, b *Stream }
	var ss []sp
	for i := range streams {
		a, bb := openPair(b, p.client, p.server, fmt.Sprint(i))
		ss = append(ss, sp{a, bb})
	}
	msg := make([]byte, benchMsg)
	// Warm the pools and windows so the timed part is the steady state.
	for _, s := range ss {
		go s.a.Write(msg)
		io.ReadFull(s.b, make([]byte, benchMsg))
	}
	per := b.N / streams
	extra := b.N % streams
	var wg sync.WaitGroup
	b.SetBytes(benchMsg)
	b.ReportAllocs()
	b.ResetTimer()
	for i, s := range ss {
		n := per
		if i < extra {
			n++
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range n {
				if _, err := s.a.Write(msg); err != nil {
					b.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, benchMsg)
			want := n * benchMsg
			for want > 0 {
				m, err := s.b.Read(buf[:min(len(buf), want)])
				if err != nil {
					b.Error(err)
					return
				}
				want -= m
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
}

// BenchmarkRecordSeal is the encryption ceiling: sealing benchMsg-sized
// plaintexts into records, written nowhere, on one core. The session does
// this on the sender and the inverse on the receiver for every byte.
func BenchmarkRecordSeal(b *testing.B) {
	rc, err := newRecordConn(fuzzConn{}, &handshakeResult{send: [32]byte{1}, recv: [32]byte{2}})
	if err != nil {
		b.Fatal(err)
	}
	segs := [][]byte{make([]byte, benchMsg)}
	b.SetBytes(benchMsg)
	b.ReportAllocs()
	for range b.N {
		if err := rc.writeSegments(segs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMultipath moves one stream's bytes over one loopback path and
// over two (the listener on two ports, the dialer joining both) with
// balance and mirror, and reports the process CPU time per byte moved
// (cpu-ns/B; both ends run in this process), so the ratios in
// docs/performance.md come from one run:
//
//	go test -run '^$' -bench Multipath -benchtime 2000x ./usl/
//
// Loopback has no link bottleneck, so this measures cost, not aggregate
// link capacity: the e2e rows on rate-limited links measure that.
func BenchmarkMultipath(b *testing.B) {
	for _, c := range []struct {
		name  string
		paths int
		sched Scheduler
	}{{"one_path", 1, Failover{}}, {"balance_2", 2, Balance{}}, {"mirror_2", 2, Mirror{}}} {
		b.Run(c.name, func(b *testing.B) { benchMultipath(b, c.paths, c.sched) })
	}
}

func benchMultipath(b *testing.B, paths int, sched Scheduler) {
	ck, sk := newKeypair(b), newKeypair(b)
	ccfg := Config{PrivateKey: ck.priv, PeerKeys: []PublicKey{sk.pub}, Scheduler: sched}
	scfg := Config{PrivateKey: sk.priv, PeerKeys: []PublicKey{ck.pub}, Scheduler: sched}
	l, err := Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	eps := []Endpoint{{Addr: l.Addr().String()}}
	for len(eps) < paths {
		a, err := l.ListenAlso("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		eps = append(eps, Endpoint{Addr: a.String()})
	}
	c, err := DialPaths(context.Background(), eps, ccfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := l.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	waitFor(b, "all paths up", func() bool { return len(c.Stats().Paths) == paths && c.Stats().Paths[paths-1].State == PathUp })
	sa, sb := openPair(b, c, s, "bench")
	msg := make([]byte, benchMsg)
	go sa.Write(msg)
	io.ReadFull(sb, make([]byte, benchMsg))
	b.SetBytes(benchMsg)
	cpu0 := processCPU()
	b.ResetTimer()
	done := make(chan error, 1)
	go func() {
		for range b.N {
			if _, err := sa.Write(msg); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	buf := make([]byte, benchMsg)
	for range b.N {
		if _, err := io.ReadFull(sb, buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N*benchMsg), "cpu-ns/B")
}

// processCPU is this process's user+system CPU time in ns.
func processCPU() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkSessionRR is request/response over one stream of a session on
// loopback TCP: 64 bytes each way, one exchange at a time, as sockperf and
// loadgen's rr mode do through the tunnel. Besides the time per exchange it
// reports the process's CPU time per exchange (both ends run here), which
// counts the wake-ups a message costs, and p50/p99.
func BenchmarkSessionRR(b *testing.B) {
	ck, sk := newKeypair(b), newKeypair(b)
	ccfg, scfg := Config{PrivateKey: ck.priv, PeerKeys: []PublicKey{sk.pub}}, Config{PrivateKey: sk.priv, PeerKeys: []PublicKey{ck.pub}}
	p := newTCPPair(b, ccfg, scfg)
	defer p.close()
	a, srv := openPair(b, p.client, p.server, "rr")
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(srv, buf); err != nil {
				return
			}
			if _, err := srv.Write(buf); err != nil {
				return
			}
		}
	}()
	msg, buf := make([]byte, 64), make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	cpu0 := processCPU()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := a.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(a, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	cpu := processCPU() - cpu0
	slices.Sort(lat)
	b.ReportMetric(float64(cpu)/float64(b.N)/1e3, "cpu-µs/op")
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}
