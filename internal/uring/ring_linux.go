//go:build linux

package uring

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// System call numbers, setup flags, features and opcodes (linux/io_uring.h).
const (
	sysSetup = 425
	sysEnter = 426

	setupSubmitAll   = 1 << 7
	setupCoopTaskrun = 1 << 8
	featSingleMmap   = 1 << 0
	enterGetEvents   = 1 << 0

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	opSend  = 26
	sqeSize = 64
	cqeSize = 16
)

type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sq                                                                     sqOffsets
	cq                                                                     cqOffsets
}

// Ring is one io_uring instance. It is not safe for concurrent use: each
// fan-out worker owns one.
type Ring struct {
	fd      int
	entries uint32
	rings   [][]byte // the mapped SQ and CQ rings (one mapping or two)
	sqes    []byte

	sqTail *uint32
	sqMask uint32
	cqHead *uint32
	cqTail *uint32
	cqMask uint32
	cqes   []byte
}

// Open sets up a ring for batches of up to MaxBatch sends.
func Open() (*Ring, error) {
	var p params
	p.flags = setupSubmitAll | setupCoopTaskrun
	fd, err := setup(MaxBatch, &p)
	if errors.Is(err, syscall.EINVAL) {
		// Kernels before 5.19 know neither flag.
		p = params{}
		fd, err = setup(MaxBatch, &p)
	}
	if err != nil {
		if errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("%w: io_uring_setup: %v", ErrUnsupported, err)
		}
		return nil, fmt.Errorf("io_uring_setup: %w", err)
	}
	r := &Ring{fd: fd, entries: p.sqEntries}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.probeSend(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func setup(entries uint32, p *params) (int, error) {
	fd, _, errno := syscall.Syscall(sysSetup, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

func (r *Ring) mapRings(p *params) error {
	sqSize := int(p.sq.array + p.sqEntries*4)
	cqSize := int(p.cq.cqes + p.cqEntries*cqeSize)
	mmap := func(off int64, size int) ([]byte, error) {
		b, err := syscall.Mmap(r.fd, off, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("mapping io_uring memory: %w", err)
		}
		return b, nil
	}
	var sq, cq []byte
	var err error
	if p.features&featSingleMmap != 0 {
		if sq, err = mmap(offSQRing, max(sqSize, cqSize)); err != nil {
			return err
		}
		cq = sq
		r.rings = [][]byte{sq}
	} else {
		if sq, err = mmap(offSQRing, sqSize); err != nil {
			return err
		}
		r.rings = [][]byte{sq}
		if cq, err = mmap(offCQRing, cqSize); err != nil {
			return err
		}
		r.rings = append(r.rings, cq)
	}
	if r.sqes, err = mmap(offSQEs, int(p.sqEntries*sqeSize)); err != nil {
		return err
	}
	r.sqTail = u32(sq, p.sq.tail)
	r.sqMask = *u32(sq, p.sq.ringMask)
	// The submission array maps slot i to entry i, once and for all.
	for i := uint32(0); i < p.sqEntries; i++ {
		*u32(sq, p.sq.array+4*i) = i
	}
	r.cqHead = u32(cq, p.cq.head)
	r.cqTail = u32(cq, p.cq.tail)
	r.cqMask = *u32(cq, p.cq.ringMask)
	r.cqes = cq[p.cq.cqes : p.cq.cqes+p.cqEntries*cqeSize]
	return nil
}

func u32(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }

// probeSend checks that the kernel knows the send operation (5.6 and
// later): a send on an invalid descriptor must fail with EBADF, not
// EINVAL.
func (r *Ring) probeSend() error {
	res := make([]int32, 1)
	if err := r.Send([]int32{-1}, [][]byte{{0}}, res); err != nil {
		return err
	}
	if syscall.Errno(-res[0]) == syscall.EINVAL {
		return fmt.Errorf("%w: the kernel's io_uring has no send operation", ErrUnsupported)
	}
	return nil
}

// Send writes bufs[i] to socket fds[i], for every i, without blocking, and
// sets res[i] to the bytes sent or to minus the error number (-EAGAIN when
// the socket's buffer is full). It returns once every send has a result.
// A send may be short; what is left is the caller's. Sends on the same
// socket are not ordered: give each socket at most one buffer.
func (r *Ring) Send(fds []int32, bufs [][]byte, res []int32) error {
	n := uint32(len(fds))
	if n == 0 {
		return nil
	}
	if n > r.entries || len(bufs) != len(fds) || len(res) < len(fds) {
		return fmt.Errorf("uring: batch of %d sends, %d buffers, %d results (at most %d)", len(fds), len(bufs), len(res), r.entries)
	}
	tail := *r.sqTail
	for i := uint32(0); i < n; i++ {
		slot := (tail + i) & r.sqMask
		sqe := r.sqes[slot*sqeSize : slot*sqeSize+sqeSize]
		clear(sqe)
		sqe[0] = opSend
		*(*int32)(unsafe.Pointer(&sqe[4])) = fds[i]
		if len(bufs[i]) > 0 {
			*(*uint64)(unsafe.Pointer(&sqe[16])) = uint64(uintptr(unsafe.Pointer(&bufs[i][0])))
		}
		*(*uint32)(unsafe.Pointer(&sqe[24])) = uint32(len(bufs[i]))
		*(*uint32)(unsafe.Pointer(&sqe[28])) = syscall.MSG_DONTWAIT | syscall.MSG_NOSIGNAL
		*(*uint64)(unsafe.Pointer(&sqe[32])) = uint64(i)
	}
	atomic.StoreUint32(r.sqTail, tail+n)

	toSubmit, done := n, uint32(0)
	for round := 0; done < n; round++ {
		var got uintptr
		var errno syscall.Errno
		if round == 0 {
			// Non-blocking sends complete while they are submitted: the
			// call is CPU work, not a wait, so it is made without handing
			// the goroutine's processor to the scheduler (as a blocking
			// call would, with a thread wake-up each time).
			got, _, errno = syscall.RawSyscall6(sysEnter, uintptr(r.fd), uintptr(toSubmit), 0, 0, 0, 0)
		} else {
			got, _, errno = syscall.Syscall6(sysEnter, uintptr(r.fd), uintptr(toSubmit), uintptr(n-done), enterGetEvents, 0, 0)
		}
		switch {
		case errno == syscall.EINTR:
		case errno != 0:
			runtime.KeepAlive(bufs)
			return fmt.Errorf("io_uring_enter: %w", errno)
		default:
			toSubmit -= min(toSubmit, uint32(got))
		}
		done += r.reap(res)
	}
	runtime.KeepAlive(bufs)
	return nil
}

// reap takes the completions the kernel posted and returns how many.
func (r *Ring) reap(res []int32) uint32 {
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail)
	for i := head; i != tail; i++ {
		off := (i & r.cqMask) * cqeSize
		idx := *(*uint64)(unsafe.Pointer(&r.cqes[off]))
		if idx < uint64(len(res)) {
			res[idx] = *(*int32)(unsafe.Pointer(&r.cqes[off+8]))
		}
	}
	atomic.StoreUint32(r.cqHead, tail)
	return tail - head
}

// Close releases the ring.
func (r *Ring) Close() {
	if r.sqes != nil {
		_ = syscall.Munmap(r.sqes)
		r.sqes = nil
	}
	for _, m := range r.rings {
		_ = syscall.Munmap(m)
	}
	r.rings = nil
	if r.fd >= 0 {
		_ = syscall.Close(r.fd)
		r.fd = -1
	}
}
