package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports (the kernel exports
// jiffies to user space scaled to USER_HZ, which is fixed at 100 on them).
const clockTicks = 100

// parseProcStatCPU returns utime+stime (fields 14 and 15) of a
// /proc/<pid>/stat line, in clock ticks. The command name (field 2) is in
// parentheses and may contain spaces and parentheses itself, so fields are
// counted from the last ')'.
func parseProcStatCPU(line string) (uint64, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, errors.New("proc stat: no command name")
	}
	// After ")": field 3 (state) is rest[0], so field n is rest[n-3].
	rest := strings.Fields(line[i+1:])
	if len(rest) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the name, want at least 13", len(rest))
	}
	utime, err := strconv.ParseUint(rest[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat: utime %q: %w", rest[11], err)
	}
	stime, err := strconv.ParseUint(rest[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat: stime %q: %w", rest[12], err)
	}
	return utime + stime, nil
}

// cpuTime is the CPU time (user+system, all threads) a process used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	ticks, err := parseProcStatCPU(string(b))
	if err != nil {
		return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// cpuTotal sums cpuTime over pids.
func cpuTotal(pids []int) (time.Duration, error) {
	var sum time.Duration
	for _, pid := range pids {
		d, err := cpuTime(pid)
		if err != nil {
			return 0, err
		}
		sum += d
	}
	return sum, nil
}

// iperfResult is the part of `iperf3 --json` output the benchmark uses.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
	} `json:"end"`
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int64   `json:"retransmits"`
}

// parseIperf extracts the receiver's rate (what arrived at the server, the
// figure that counts) from iperf3's JSON report.
func parseIperf(data []byte) (iperfSum, error) {
	var r iperfResult
	if err := json.Unmarshal(data, &r); err != nil {
		return iperfSum{}, fmt.Errorf("iperf3 json: %w", err)
	}
	if r.Error != "" {
		return iperfSum{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	s := r.End.SumReceived
	if s.BitsPerSecond <= 0 || s.Bytes <= 0 {
		return iperfSum{}, errors.New("iperf3 json: no received bytes in end.sum_received")
	}
	s.Retransmits = r.End.SumSent.Retransmits
	return s, nil
}

// percentile returns the q-quantile (0 ≤ q ≤ 1) of samples by the
// nearest-rank method: the smallest sample with at least q of all samples
// at or below it. samples need not be sorted; it is not modified.
func percentile(samples []time.Duration, q float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(math.Ceil(q * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}
