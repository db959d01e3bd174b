package main

// End-to-end tests of the real usltun binary: TestMain builds it once, and
// the E2E tests run it as daemons on testenv hosts (network namespaces)
// A—B—C, where A routes C's subnets through usl0 and B exports them.
// They need root; without it they skip and the unit tests still run.
//
//	go test ./cmd/usltun/ -run E2E -v
//	USLTUN_LONG=1 go test ./cmd/usltun/ -run E2EPartition -v -timeout 30m

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// e2eBinary is the usltun binary under test. TestMain sets it once, before
// any test runs; empty means the end-to-end tests skip (see e2eSkipReason).
var (
	e2eBinary     string
	e2eSkipReason string
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(floodEnv); spec != "" {
		os.Exit(runFlood(spec)) // a helper process of TestE2EHub
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() != 0 {
		e2eSkipReason = fmt.Sprintf("end-to-end tests need root for network namespaces and TUN devices (euid %d)", os.Geteuid())
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "usltun-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The no-root tests run the binary as an unprivileged user.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	bin := filepath.Join(dir, "usltun")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(gobin, "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build usltun: %v\n%s", err, out)
		return 1
	}
	e2eBinary = bin
	return m.Run()
}

// requireE2E skips t when the binary could not be prepared (not root).
func requireE2E(t *testing.T) {
	t.Helper()
	if e2eBinary == "" {
		t.Skip(e2eSkipReason)
	}
}
