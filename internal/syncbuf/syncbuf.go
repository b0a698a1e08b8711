// Package syncbuf is a bytes.Buffer that concurrent writers (a child
// process's output, a logger) and a reader (a test waiting for a line) can
// share.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is safe for concurrent Write and String.
type Buffer struct {
	// Max, when above 0, bounds what is kept: once the buffer holds Max
	// bytes, later writes are dropped (and reported written), so a chatty
	// long-running process cannot grow a test's memory without end.
	Max int

	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p, unless the buffer is full (Max).
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Max > 0 && b.b.Len() >= b.Max {
		return len(p), nil
	}
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
