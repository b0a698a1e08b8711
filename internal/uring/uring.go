// Package uring sends on many sockets with one system call, through Linux's
// io_uring. It holds only what the gateway needs: a ring that submits a
// batch of non-blocking sends and waits for their results. No io_uring
// library is served by the module proxy this project builds from, so the
// few structures of the kernel's ABI it uses are spelled out here.
package uring

import "errors"

// ErrUnsupported is returned by Open where io_uring cannot be used: another
// system, an old kernel, or a sandbox that forbids it.
var ErrUnsupported = errors.New("io_uring is not available")

// MaxBatch is the most sends Send takes at once.
const MaxBatch = 256
