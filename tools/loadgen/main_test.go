package loadgen

import (
	"testing"

	"go.uber.org/goleak"
)

// Every run and server must end all of its goroutines.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
