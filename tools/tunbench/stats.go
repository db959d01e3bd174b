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

// cpuSample is the machine-wide CPU time from the first line of /proc/stat,
// in clock ticks: busy (everything but idle and iowait) and total.
type cpuSample struct{ busy, total uint64 }

// parseProcStatTotal reads the aggregate "cpu" line of /proc/stat.
func parseProcStatTotal(data string) (cpuSample, error) {
	line, _, _ := strings.Cut(data, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuSample{}, fmt.Errorf("/proc/stat: first line %q is not the cpu total", line)
	}
	var s cpuSample
	// user nice system idle iowait irq softirq steal guest guest_nice; guest
	// time is already counted in user, so stop at steal.
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cpuSample{}, fmt.Errorf("/proc/stat: field %d %q: %w", i+1, v, err)
		}
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
	}
	return s, nil
}

func machineCPU() (cpuSample, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}, fmt.Errorf("machine cpu: %w", err)
	}
	return parseProcStatTotal(string(b))
}

// busyFraction is the share of all CPUs that was busy between a and b.
func busyFraction(a, b cpuSample) float64 {
	if b.total <= a.total {
		return 0
	}
	return float64(b.busy-a.busy) / float64(b.total-a.total)
}
