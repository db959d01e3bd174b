//go:build race

package usl

// raceEnabled: the race detector slows everything several times, so
// latency bounds are checked only without it (correctness always is).
const raceEnabled = true
