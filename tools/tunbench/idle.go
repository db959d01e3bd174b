package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usltun/usltun/testenv"
)

// IdleLevel is the memory of the mode's daemons while `Flows` idle TCP
// connections A→C are open through the tunnel.
type IdleLevel struct {
	Flows int `json:"flows"`
	// Alive is how many of the flows still echoed a byte after the RSS
	// sample: a flow the tunnel silently dropped does not count.
	Alive int `json:"alive"`
	// RSS per daemon (A's, then B's) and their sum, bytes.
	RSS      []int64 `json:"rss"`
	RSSTotal int64   `json:"rss_total"`
	// OpenTime is how long opening the flows of this level took.
	OpenTime time.Duration `json:"open_time"`
}

// Idle is the idle-flow memory test of one mode.
type Idle struct {
	// Baseline RSS of the daemons (fresh processes, session up) before any
	// flow was opened.
	Baseline     int64       `json:"baseline_rss_total"`
	Levels       []IdleLevel `json:"levels"`
	BytesPerFlow float64     `json:"bytes_per_flow"` // (largest level − baseline) / flows
}

const (
	idleDialers    = 64               // concurrent connects while opening flows
	idleSettle     = 2 * time.Second  // let the daemons' allocations settle before sampling
	idleOpTimeout  = 20 * time.Second // per connect and per echo; a forwarder may queue SYNs
	echoServerFlag = "echo-server"
)

// measureIdle opens flows A→C in steps (levels must be increasing), each
// proven end to end by a one-byte echo, samples the daemons' RSS at each
// level, then checks that every flow still echoes. The echo server runs as
// a separate process on C, so the harness's own file-descriptor limit only
// has to cover the client ends.
func measureIdle(ctx context.Context, l *lab, daemons []*testenv.Proc, dst string, port int, levels []int) (Idle, error) {
	exe, err := os.Executable()
	if err != nil {
		return Idle{}, fmt.Errorf("idle: own executable: %w", err)
	}
	addr := net.JoinHostPort(dst, strconv.Itoa(port))
	srv := l.c.Start(l.tb, "echo", exe, echoServerFlag, addr)
	defer srv.Kill()
	if err := l.c.WaitDial("tcp", addr, 10*time.Second); err != nil {
		return Idle{}, err
	}
	var res Idle
	base, _, err := rssOf(daemons)
	if err != nil {
		return Idle{}, err
	}
	res.Baseline = base
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, n := range levels {
		t0 := time.Now()
		more, err := openFlows(ctx, l.a, addr, n-len(conns))
		conns = append(conns, more...)
		if err != nil {
			return res, fmt.Errorf("idle: %d of %d flows open: %w", len(conns), n, err)
		}
		lvl := IdleLevel{Flows: len(conns), OpenTime: time.Since(t0)}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(idleSettle):
		}
		if lvl.RSSTotal, lvl.RSS, err = rssOf(daemons); err != nil {
			return res, err
		}
		lvl.Alive = echoAll(conns)
		res.Levels = append(res.Levels, lvl)
		res.BytesPerFlow = float64(lvl.RSSTotal-res.Baseline) / float64(lvl.Flows)
	}
	return res, nil
}

func rssOf(daemons []*testenv.Proc) (int64, []int64, error) {
	var total int64
	per := make([]int64, len(daemons))
	for i, p := range daemons {
		rss, err := p.RSS()
		if err != nil {
			return 0, nil, err
		}
		per[i] = rss
		total += rss
	}
	return total, per, nil
}

// openFlows opens n connections from h to addr, idleDialers at a time, each
// one confirmed by a one-byte echo. On error it still returns the
// connections it opened, for the caller to close.
func openFlows(ctx context.Context, h *testenv.Host, addr string, n int) ([]net.Conn, error) {
	var (
		mu       sync.Mutex
		conns    = make([]net.Conn, 0, n)
		firstErr error
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	for range min(idleDialers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				c, err := openOne(ctx, h, addr)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				conns = append(conns, c)
				stop := firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
			}
		}()
	}
	wg.Wait()
	return conns, firstErr
}

func openOne(ctx context.Context, h *testenv.Host, addr string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, idleOpTimeout)
	defer cancel()
	c, err := h.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if err := echoOne(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// echoOne writes one byte and expects it back.
func echoOne(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(idleOpTimeout))
	defer c.SetDeadline(time.Time{})
	b := []byte{0x5a}
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	if _, err := io.ReadFull(c, b); err != nil {
		return fmt.Errorf("echo read: %w", err)
	}
	if b[0] != 0x5a {
		return fmt.Errorf("echo: got %#x, want 0x5a", b[0])
	}
	return nil
}

// echoAll checks every connection with one echo, idleDialers at a time,
// and returns how many answered.
func echoAll(conns []net.Conn) int {
	var ok, next atomic.Int64
	var wg sync.WaitGroup
	for range min(idleDialers, len(conns)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(conns)) {
					return
				}
				if echoOne(conns[i]) == nil {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return int(ok.Load())
}

// echo copies c back to itself through a small buffer. Not io.Copy: on a
// TCPConn it splices through a pipe, two more descriptors per flow, which
// would cap the server at a third of its file limit.
func echo(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// runEchoServer is the hidden `echo-server ADDR` mode of the binary: it
// echoes every connection until killed. It runs inside C as its own
// process (see measureIdle).
func runEchoServer(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("echo server: listen %s: %w", addr, err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and friends: keep serving the flows already open.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go echo(c)
	}
}
