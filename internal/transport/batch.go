package transport

import (
	"fmt"
	"syscall"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/uring"
)

// Batch gathers the live-event writes of one delivery round and sends them
// with one io_uring submission per uring.MaxBatch connections, instead of
// one write(2) each: at low event rates, where every delivery is a write of
// its own, the system calls are most of the cost of a delivery.
//
// A Batch belongs to one fan-out worker (hub.Batch): Stage and Flush are
// called from it only.
type Batch struct {
	ring    *uring.Ring
	entries []*staged
	free    []*staged
	arena   []byte // frames of multi-event writes, copied once

	fds  []int32
	bufs [][]byte
	res  []int32
	sent []*staged
}

// staged is one connection's write waiting in a batch.
type staged struct {
	w     *Writer
	data  []byte
	owned bool // data is this entry's own buffer and may grow in place
	err   error
}

// append adds b after what is staged (a write made while the stage waits).
func (s *staged) append(b []byte) {
	if !s.owned {
		s.data = append(make([]byte, 0, len(s.data)+len(b)+256), s.data...)
		s.owned = true
	}
	s.data = append(s.data, b...)
}

// NewBatch opens the batch's ring; it fails where io_uring is unavailable
// (uring.ErrUnsupported), and then writes are made one by one.
func NewBatch() (*Batch, error) {
	r, err := uring.Open()
	if err != nil {
		return nil, fmt.Errorf("batched sends: %w", err)
	}
	return &Batch{ring: r}, nil
}

// Close releases the ring.
func (b *Batch) Close() { b.ring.Close() }

// Stage queues the frames of evs for b's next Flush, or writes them at once
// when w cannot be batched (not on the event loop, b nil, or more than
// ChunkBytes). Like Write, it reports hub.ErrSlow for a slow consumer.
func (w *Writer) Stage(b *Batch, evs []*event.Event, frame func(*event.Event) []byte) error {
	if b == nil || w.engine == nil || w.async != nil {
		return w.WriteFrames(evs, frame)
	}
	size := 0
	for _, e := range evs {
		size += len(frame(e))
	}
	if size == 0 {
		return nil
	}
	if size > ChunkBytes {
		return w.WriteFrames(evs, frame)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.admit(w.queued.Load(), size); err != nil {
		return err
	}
	w.queued.Add(int64(size))
	if w.staged != nil {
		for _, e := range evs {
			w.staged.append(frame(e))
		}
		return nil
	}
	st := b.entry(w)
	if len(evs) == 1 {
		st.data = frame(evs[0]) // the event's own frame: never written to
	} else {
		start := len(b.arena)
		for _, e := range evs {
			b.arena = append(b.arena, frame(e)...)
		}
		st.data = b.arena[start:len(b.arena):len(b.arena)]
	}
	w.staged = st
	return nil
}

func (b *Batch) entry(w *Writer) *staged {
	var st *staged
	if n := len(b.free); n > 0 {
		st, b.free = b.free[n-1], b.free[:n-1]
	} else {
		st = new(staged)
	}
	st.w = w
	b.entries = append(b.entries, st)
	return st
}

// Flush sends every staged write, uring.MaxBatch connections at a time.
// While a connection's send is in flight, its Writer and its event-loop
// connection are locked: no other write can come between, and the
// descriptor cannot be closed (and reused by a new connection) before the
// kernel took it. What a socket does not take at once goes to the event
// loop's queue, as a plain write's rest would; a connection whose send
// failed is shut down, for the event loop to close.
func (b *Batch) Flush() {
	for start := 0; start < len(b.entries); start += uring.MaxBatch {
		b.flush(b.entries[start:min(len(b.entries), start+uring.MaxBatch)])
	}
	clear(b.entries)
	b.entries = b.entries[:0]
	if cap(b.arena) > 4<<20 {
		b.arena = nil
	}
	b.arena = b.arena[:0]
}

func (b *Batch) flush(chunk []*staged) {
	b.fds, b.bufs, b.sent = b.fds[:0], b.bufs[:0], b.sent[:0]
	for _, st := range chunk {
		w := st.w
		w.mu.Lock()
		w.engine.Lock()
		if closed, _ := w.engine.IsClosed(); closed {
			continue
		}
		// Bytes still queued by the event loop go first: this write
		// follows them there.
		if w.queued.Load() > int64(len(st.data)) {
			continue
		}
		b.fds = append(b.fds, w.fd)
		b.bufs = append(b.bufs, st.data)
		b.sent = append(b.sent, st)
	}
	if cap(b.res) < len(b.fds) {
		b.res = make([]int32, uring.MaxBatch)
	}
	res := b.res[:len(b.fds)]
	if err := b.ring.Send(b.fds, b.bufs, res); err != nil {
		for i := range res {
			res[i] = -int32(syscall.EAGAIN) // the event loop writes them instead
		}
	}
	for i, st := range b.sent {
		st.err = nil
		switch r := res[i]; {
		case r >= 0:
			st.w.queued.Add(-int64(r))
			st.data = st.data[r:]
		case syscall.Errno(-r) == syscall.EAGAIN || syscall.Errno(-r) == syscall.EINTR:
		default:
			st.err = fmt.Errorf("batched send: %w", syscall.Errno(-r))
		}
	}
	for _, st := range chunk {
		w := st.w
		closed, _ := w.engine.IsClosed()
		if !closed && st.err != nil {
			// The peer is gone. The socket is shut down, not closed: the
			// event loop sees it end and closes it on its own goroutine.
			// A descriptor closed here could be reused by the next
			// accepted connection while the event loop still holds an
			// event of the old one, which it would then apply to the new
			// connection (and end it).
			_ = syscall.Shutdown(int(w.fd), syscall.SHUT_RDWR)
		}
		w.engine.Unlock()
		switch {
		case closed, st.err != nil:
			// Nothing more reaches this socket: what was counted for it
			// is no longer queued.
			w.queued.Add(-int64(len(st.data)))
		case len(st.data) > 0:
			// The rest (or all, behind bytes already queued) is the
			// event loop's to write; w.mu keeps every other write of ours
			// behind it. A Write that fails closes the connection itself.
			_, _ = w.engine.Write(st.data)
		}
		w.staged = nil
		w.mu.Unlock()
	}
	for _, st := range chunk {
		*st = staged{}
		b.free = append(b.free, st)
	}
	clear(b.bufs)
}
