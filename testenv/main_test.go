package testenv

import (
	"testing"

	"go.uber.org/goleak"
)

// No goroutine of the lab (process waiters, Do threads) may outlive it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
