// Package tuntest runs tests inside a throwaway network namespace, so TUN
// devices, routes and sockets they create never touch the host's network.
// The namespace is a testenv host: it has testenv's name prefix, so a run
// that was killed leaves nothing the next run does not sweep away.
package tuntest

import (
	"os"
	"testing"

	"github.com/usltun/usltun/testenv"
)

// NS is a network namespace owned by one test, with lo up. Do runs a
// function inside it; sockets, TUN devices and netlink handles created there
// stay in the namespace. It is deleted when the test ends, whether it passed
// or not.
type NS struct {
	*testenv.Host
	Name string
}

// NewNS creates the namespace. It skips the test when not root.
func NewNS(t testing.TB) *NS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	h := testenv.NewHost(t, "tun")
	return &NS{Host: h, Name: h.Name()}
}
