package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"time"

	"github.com/usltun/usltun/testenv"
	"github.com/usltun/usltun/tools/loadgen"
)

// Ports on C (and B) of the listeners the harness opens itself.
const (
	rrPort       = 9000
	connectPort  = 9001
	recoverPort  = 9002
	idlePortC    = 9100
	sockperfPort = 9003
)

// RR is the request/response latency of small messages over one flow.
type RR struct {
	Count    uint64        `json:"count"`
	P50      time.Duration `json:"p50"`
	P99      time.Duration `json:"p99"`
	Verified bool          `json:"verified"`
}

// measureRR runs loadgen's request/response mode (64-byte request, 64-byte
// response, one at a time, every response byte checked) from A against a
// loadgen server on C.
// perfOut: see measureThroughput.
func measureRR(ctx context.Context, l *lab, daemons []*testenv.Proc, dst string, dur time.Duration, perfOut string) (RR, error) {
	ln, err := l.c.Listen("tcp", fmt.Sprintf("%s:%d", dst, rrPort))
	if err != nil {
		return RR{}, fmt.Errorf("rr listener on C: %w", err)
	}
	srv := loadgen.NewServer(ln, nil)
	defer srv.Close()
	pids := make([]int, len(daemons))
	for i, p := range daemons {
		pids[i] = p.Pid()
	}
	stopPerf, err := startPerf(ctx, pids, dur, perfOut)
	if err != nil {
		return RR{}, err
	}
	defer stopPerf()
	rep, err := loadgen.RunFor(ctx, loadgen.Config{
		Addr: ln.Addr().String(), Dial: l.a.DialContext, Mode: loadgen.RR,
		ReqSize: 64, RespSize: 64, Duration: dur,
	})
	if err != nil {
		return RR{}, fmt.Errorf("rr: %w", err)
	}
	if rep.Latency == nil || rep.Latency.Count == 0 {
		return RR{}, fmt.Errorf("rr: no round trip completed:\n%s", rep)
	}
	if !rep.Verified {
		return RR{}, fmt.Errorf("rr: not verified:\n%s", rep)
	}
	return RR{Count: rep.Latency.Count, P50: rep.Latency.P50, P99: rep.Latency.P99, Verified: true}, nil
}

// Connect is the latency of connect() from A to a listener, over n
// sequential attempts.
type Connect struct {
	Count int           `json:"count"`
	P50   time.Duration `json:"p50"`
	P90   time.Duration `json:"p90"`
	P99   time.Duration `json:"p99"`
	Max   time.Duration `json:"max"`
}

// measureConnect times n sequential TCP connects from `from` to addr. The
// listener accepts and closes; the client closes right after connect
// returns, so at most one connection is open at a time.
func measureConnect(ctx context.Context, from, to *testenv.Host, addr string, n int) (Connect, error) {
	ln, err := to.Listen("tcp", addr)
	if err != nil {
		return Connect{}, fmt.Errorf("connect listener on %s: %w", to, err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// Sockets are created in from's namespace once per dial, through Do;
	// the time of Do's thread switch is outside the measured interval.
	samples := make([]time.Duration, 0, n)
	for range n {
		if err := ctx.Err(); err != nil {
			return Connect{}, err
		}
		var d time.Duration
		err := from.Do(func() error {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var dialer net.Dialer
			t0 := time.Now()
			c, err := dialer.DialContext(dctx, "tcp", addr)
			d = time.Since(t0)
			if err != nil {
				return err
			}
			return c.Close()
		})
		if err != nil {
			return Connect{}, fmt.Errorf("connect %s from %s: %w", addr, from, err)
		}
		samples = append(samples, d)
	}
	if len(samples) == 0 {
		return Connect{}, errors.New("connect: no samples")
	}
	return Connect{Count: len(samples), P50: percentile(samples, 0.5), P90: percentile(samples, 0.9),
		P99: percentile(samples, 0.99), Max: percentile(samples, 1)}, nil
}

// Sockperf is sockperf's TCP ping-pong of 64-byte messages over one flow,
// round-trip times (--full-rtt, comparable with loadgen's): the real client
// the latency targets are set with.
type Sockperf struct {
	Count int64         `json:"count"`
	P50   time.Duration `json:"p50"`
	P99   time.Duration `json:"p99"`
}

// measureSockperf runs a sockperf server on C at dst and `sockperf
// ping-pong --tcp` from A for dur.
func measureSockperf(ctx context.Context, l *lab, dst string, dur time.Duration) (Sockperf, error) {
	port := fmt.Sprint(sockperfPort)
	srv := l.c.Start(l.tb, "sockperf-server", "sockperf", "server", "--tcp", "-i", dst, "-p", port)
	defer srv.Kill()
	if err := l.c.WaitDial("tcp", net.JoinHostPort(dst, port), 10*time.Second); err != nil {
		return Sockperf{}, fmt.Errorf("sockperf server: %w", err)
	}
	secs := fmt.Sprint(max(int(dur/time.Second), 1))
	out, err := run(ctx, l.a, "sockperf", "ping-pong", "--tcp", "-i", dst, "-p", port, "-m", "64", "-t", secs, "--full-rtt")
	if err != nil {
		return Sockperf{}, fmt.Errorf("sockperf ping-pong: %w", err)
	}
	return parseSockperf(out)
}

var (
	sockperfPct   = regexp.MustCompile(`percentile (\d+\.\d+) =\s*([0-9.]+)`)
	sockperfCount = regexp.MustCompile(`Total (\d+) observations`)
)

// parseSockperf reads the 50th and 99th percentiles (µs) and the count of
// observations from sockperf ping-pong's summary.
func parseSockperf(out string) (Sockperf, error) {
	var r Sockperf
	if m := sockperfCount.FindStringSubmatch(out); m != nil {
		r.Count, _ = strconv.ParseInt(m[1], 10, 64)
	}
	for _, m := range sockperfPct.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			continue
		}
		d := time.Duration(v * float64(time.Microsecond))
		switch m[1] {
		case "50.000":
			r.P50 = d
		case "99.000":
			r.P99 = d
		}
	}
	if r.Count == 0 || r.P50 == 0 || r.P99 == 0 {
		return r, fmt.Errorf("sockperf: no percentiles in its output:\n%s", out)
	}
	return r, nil
}
