package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/usltun/usltun/testenv"
)

// Throughput is one iperf3 run A→C.
type Throughput struct {
	Streams     int     `json:"streams"`
	Gbps        float64 `json:"gbps"` // received at C
	Retransmits int64   `json:"retransmits"`
	// DaemonCores is the CPU the mode's daemons used (all of them, user +
	// system) per second of wall time; CoresPerGbps divides it by Gbps.
	// Both are zero for direct routing, which has no daemon.
	DaemonCores  float64 `json:"daemon_cores"`
	CoresPerGbps float64 `json:"cores_per_gbps"`
	// MachineBusy is the share of all the machine's CPUs that was busy
	// (iperf3 at both ends, the kernel's TCP and forwarding, the daemons and
	// anything else running): near 1, the run was CPU-bound.
	MachineBusy float64 `json:"machine_busy"`
	// AllGbps lists the rate of every repetition, in run order; the other
	// fields are those of the median run.
	AllGbps []float64 `json:"all_gbps,omitempty"`
}

// medianRun returns the run with the median rate (the lower middle one for
// an even count), with every run's rate in AllGbps. Taking one whole run,
// rather than medians field by field, keeps its CPU figures consistent
// with its rate.
func medianRun(runs []Throughput) Throughput {
	idx := make([]int, len(runs))
	all := make([]float64, len(runs))
	for i, r := range runs {
		idx[i], all[i] = i, r.Gbps
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(runs[a].Gbps, runs[b].Gbps) })
	m := runs[idx[(len(idx)-1)/2]]
	m.AllGbps = all
	return m
}

// measureThroughput runs iperf3 from A to the iperf3 server on C for dur,
// omitting the first second (slow start) from the rate, and charges the
// daemons' CPU time over the same wall-clock window.
//
// With perfOut set, `perf record` samples the daemons (call graphs) over
// the run and writes its data there, for `perf report -i perfOut`.
func measureThroughput(ctx context.Context, l *lab, daemons []*testenv.Proc, dst string, streams int, dur time.Duration, perfOut string) (Throughput, error) {
	pids := make([]int, len(daemons))
	for i, p := range daemons {
		pids[i] = p.Pid()
	}
	stopPerf, err := startPerf(ctx, pids, dur, perfOut)
	if err != nil {
		return Throughput{}, err
	}
	defer stopPerf()
	// The iperf3 server takes a moment after a test before it accepts the
	// next one and refuses with "server is busy" until then; that refusal
	// costs milliseconds, so simply try again.
	for attempt := 1; ; attempt++ {
		t, err := throughputOnce(ctx, l, pids, dst, streams, dur)
		if !errors.Is(err, errIperfBusy) || attempt == 20 {
			return t, err
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return Throughput{}, err
		}
	}
}

var errIperfBusy = errors.New("iperf3 server busy")

func throughputOnce(ctx context.Context, l *lab, pids []int, dst string, streams int, dur time.Duration) (Throughput, error) {
	cpu0, err := cpuTotal(pids)
	if err != nil {
		return Throughput{}, err
	}
	m0, err := machineCPU()
	if err != nil {
		return Throughput{}, err
	}
	t0 := time.Now()
	secs := strconv.Itoa(max(int(dur/time.Second), 1))
	out, runErr := run(ctx, l.a, "iperf3", "--client", dst, "--port", strconv.Itoa(bulkPort),
		"--time", secs, "--omit", "1", "--parallel", strconv.Itoa(streams), "--json", "--connect-timeout", "5000")
	wall := time.Since(t0)
	cpu1, err := cpuTotal(pids)
	if err != nil {
		return Throughput{}, err
	}
	m1, err := machineCPU()
	if err != nil {
		return Throughput{}, err
	}
	sum, err := parseIperf([]byte(out))
	if err != nil && strings.Contains(err.Error(), "server is busy") {
		return Throughput{}, fmt.Errorf("%w: %w", errIperfBusy, err)
	}
	if err != nil {
		if runErr != nil {
			return Throughput{}, runErr
		}
		return Throughput{}, fmt.Errorf("iperf3 -P %d: %w", streams, err)
	}
	t := Throughput{Streams: streams, Gbps: sum.BitsPerSecond / 1e9, Retransmits: sum.Retransmits, MachineBusy: busyFraction(m0, m1)}
	if len(pids) > 0 {
		t.DaemonCores = (cpu1 - cpu0).Seconds() / wall.Seconds()
		t.CoresPerGbps = t.DaemonCores / t.Gbps
	}
	return t, nil
}

// startPerf samples pids with `perf record -g` for dur into out; the
// returned func waits for perf to finish writing. With no out or no pids it
// does nothing. perf runs in the root namespace: -p reaches processes of
// any network namespace.
func startPerf(ctx context.Context, pids []int, dur time.Duration, out string) (func(), error) {
	if out == "" || len(pids) == 0 {
		return func() {}, nil
	}
	list := make([]string, len(pids))
	for i, p := range pids {
		list[i] = strconv.Itoa(p)
	}
	perf := exec.CommandContext(ctx, "perf", "record", "--quiet", "-F", "499", "-g", "-o", out,
		"-p", strings.Join(list, ","), "--", "sleep", strconv.Itoa(max(int(dur/time.Second), 1)))
	perf.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	perf.Stdout, perf.Stderr = io.Discard, io.Discard
	if err := perf.Start(); err != nil {
		return nil, fmt.Errorf("perf record (apt-get install linux-perf): %w", err)
	}
	return func() { _ = perf.Wait() }, nil
}
