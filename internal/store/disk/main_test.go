package disk

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine outlives them: every
// goroutine of a Log is owned and stopped by Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
