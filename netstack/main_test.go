package netstack

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// flow, pump, timer callback and link reader must end with Stack.Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
