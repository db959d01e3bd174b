package main

import "runtime"

// setProcs applies --procs: GOMAXPROCS, the number of CPUs that run the
// daemon's Go code at once. 0 leaves the Go runtime's own choice (the CPUs
// of the process's affinity mask and cgroup quota, or the GOMAXPROCS
// environment variable), and that is the default on purpose.
//
// On two cores, one P per daemon wins every column of the tunnel benchmark
// for one busy flow (throughput, CPU per Gbit/s, round trips, connect()'s
// tail: a hand-off to a goroutine runs on the running thread when it
// blocks, instead of waking a parked thread on the other core). But it
// lost where the work is parallel: a hub's connect rate fell by a third,
// and the partition suite's 200 flows recovered from a flapping link in a
// mean of 4.6–6.5 s instead of 1.4–1.7 s (docs/performance.md,
// "GOMAXPROCS"). So it is the user's choice for a client with few flows,
// not the default. It returns what the daemon runs with, for the log.
func setProcs(procs int) int {
	if procs > 0 {
		runtime.GOMAXPROCS(procs)
	}
	return runtime.GOMAXPROCS(0)
}
