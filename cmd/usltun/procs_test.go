package main

import (
	"runtime"
	"testing"
)

// TestSetProcs checks that --procs sets GOMAXPROCS and that 0 leaves the
// runtime's own setting.
func TestSetProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	if n := setProcs(3); n != 3 || runtime.GOMAXPROCS(0) != 3 {
		t.Errorf("--procs 3: got %d, runtime %d", n, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(before)
	if n := setProcs(0); n != before || runtime.GOMAXPROCS(0) != before {
		t.Errorf("--procs 0: got %d, runtime %d, want the runtime's %d", n, runtime.GOMAXPROCS(0), before)
	}
}
