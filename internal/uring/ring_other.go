//go:build !linux

package uring

// Ring is not available on this system.
type Ring struct{}

// Open reports ErrUnsupported.
func Open() (*Ring, error) { return nil, ErrUnsupported }

// Send is never called: Open fails.
func (r *Ring) Send(fds []int32, bufs [][]byte, res []int32) error { return ErrUnsupported }

// Close does nothing.
func (r *Ring) Close() {}
