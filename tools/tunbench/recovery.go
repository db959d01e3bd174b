package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync/atomic"
	"time"
)

// Recovery is the blackhole test of one mode: a slow steady transfer A→C,
// the A—B link blackholed for Blackhole, then healed.
type Recovery struct {
	Blackhole time.Duration `json:"blackhole"`
	// Delay from the heal to the first byte read at C after it; -1 when
	// none came within Cap.
	Delay time.Duration `json:"delay"`
	Cap   time.Duration `json:"cap"`
	// Bytes received at C, and whether they are exactly the bytes A wrote
	// (same count and SHA-256) once the transfer was allowed to finish.
	Bytes    int64 `json:"bytes"`
	Verified bool  `json:"verified"`
}

// Pacing of the "slow steady transfer": 8 KiB every 8 ms ≈ 8 Mbit/s. Slow
// enough that nothing is left queued beyond B when the blackhole starts
// (the B—C link drains it in microseconds), so the first byte at C after
// the heal really crossed A—B after the heal.
const (
	recChunk  = 8 << 10
	recPeriod = 8 * time.Millisecond
	recWarmup = 3 * time.Second
)

// receiver is C's end: it hashes what it reads and records the first read
// at or after the heal.
type receiver struct {
	heal  atomic.Int64 // Unix ns of the heal, 0 before it
	first atomic.Int64 // Unix ns of the first read at or after heal
	bytes atomic.Int64
	sum   [32]byte
	err   error
	done  chan struct{}
}

func (r *receiver) run(c net.Conn) {
	defer close(r.done)
	defer c.Close()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			now := time.Now().UnixNano()
			if heal := r.heal.Load(); heal != 0 && now >= heal {
				r.first.CompareAndSwap(0, now)
			}
			h.Write(buf[:n])
			r.bytes.Add(int64(n))
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.err = err
			return
		}
	}
	copy(r.sum[:], h.Sum(nil))
}

// measureRecovery streams paced pseudo-random bytes A→C, blackholes the
// A—B link for blackhole, heals it and waits (at most cap) for C to read a
// byte. Then it lets the writer finish and compares SHA-256 at both ends.
func measureRecovery(ctx context.Context, l *lab, dst string, blackhole, cap time.Duration) (Recovery, error) {
	res := Recovery{Blackhole: blackhole, Cap: cap, Delay: -1}
	ln, err := l.c.Listen("tcp", net.JoinHostPort(dst, strconv.Itoa(recoverPort)))
	if err != nil {
		return res, fmt.Errorf("recovery listener: %w", err)
	}
	defer ln.Close()
	rcv := &receiver{done: make(chan struct{})}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			close(rcv.done)
			return
		}
		accepted <- nil
		rcv.run(c)
	}()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := l.a.DialContext(dctx, "tcp", ln.Addr().String())
	cancel()
	if err != nil {
		return res, fmt.Errorf("recovery: dial C: %w", err)
	}
	defer conn.Close()
	if err := <-accepted; err != nil {
		return res, fmt.Errorf("recovery: accept: %w", err)
	}

	stopWriting := make(chan struct{})
	wrote := make(chan writerResult, 1)
	go func() { wrote <- pacedWrite(conn, stopWriting) }()
	finish := func() (writerResult, error) {
		close(stopWriting)
		select {
		case w := <-wrote:
			return w, nil
		case <-time.After(cap):
			conn.Close()
			return <-wrote, fmt.Errorf("recovery: writer still blocked %v after stop", cap)
		}
	}

	l.ab.OnHeal(func(t time.Time) { rcv.heal.CompareAndSwap(0, t.UnixNano()) })
	if err := sleepCtx(ctx, recWarmup); err != nil {
		finish()
		return res, err
	}
	if rcv.bytes.Load() == 0 {
		finish()
		return res, errors.New("recovery: no bytes reached C before the blackhole")
	}
	if err := l.ab.Blackhole(); err != nil {
		finish()
		return res, err
	}
	sleepErr := sleepCtx(ctx, blackhole)
	if err := l.ab.Heal(); err != nil {
		finish()
		return res, err
	}
	if sleepErr != nil {
		finish()
		return res, sleepErr
	}
	deadline := time.Now().Add(cap)
	for rcv.first.Load() == 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	f := rcv.first.Load()
	if f == 0 {
		// Not recovered within cap: report it as such; waiting for the
		// transfer to complete could take as long again.
		conn.Close()
		finish()
		return res, ctx.Err()
	}
	res.Delay = time.Duration(f - rcv.heal.Load())
	w, err := finish()
	if err != nil {
		return res, err
	}
	if w.err != nil {
		return res, fmt.Errorf("recovery: writer: %w", w.err)
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	select {
	case <-rcv.done:
	case <-time.After(cap):
		return res, fmt.Errorf("recovery: C still missing bytes %v after the writer stopped (%d of %d)", cap, rcv.bytes.Load(), w.bytes)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.Bytes = rcv.bytes.Load()
	if rcv.err != nil {
		return res, fmt.Errorf("recovery: read at C: %w", rcv.err)
	}
	res.Verified = res.Bytes == w.bytes && bytes.Equal(rcv.sum[:], w.sum[:])
	return res, nil
}

type writerResult struct {
	bytes int64
	sum   [32]byte
	err   error
}

// pacedWrite writes recChunk pseudo-random bytes every recPeriod until
// stop; a write that blocks (the blackhole filled the buffers) simply
// delays the next ticks.
func pacedWrite(c net.Conn, stop <-chan struct{}) writerResult {
	var res writerResult
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{'t', 'u', 'n', 'b', 'e', 'n', 'c', 'h'})
	buf := make([]byte, recChunk)
	tick := time.NewTicker(recPeriod)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			copy(res.sum[:], h.Sum(nil))
			return res
		case <-tick.C:
		}
		_, _ = rng.Read(buf)
		n, err := c.Write(buf)
		h.Write(buf[:n])
		res.bytes += int64(n)
		if err != nil {
			res.err = err
			copy(res.sum[:], h.Sum(nil))
			return res
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
