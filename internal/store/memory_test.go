package store_test

import (
	"testing"

	"github.com/knowledgehub/realtime/internal/store"
	"github.com/knowledgehub/realtime/internal/store/storetest"
)

// TestMemoryConformance runs the Log conformance suite on the memory log.
func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, r store.Retention) store.Log {
		return store.NewMemory(r)
	})
}
