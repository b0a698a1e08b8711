// Package transport holds what the WebSocket and SSE connections share: a
// non-blocking writer with a bounded send queue, and the batch that hands a
// delivery round's writes to the kernel together.
package transport

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"
	"github.com/lesismal/nbio/nbhttp"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/hub"
)

// Writer writes to a connection without ever blocking its caller, and bounds
// what is queued for it: a slow consumer is found and disconnected instead of
// growing memory.
//
// On the event-loop engine (the default), the engine's Write never blocks:
// what the socket does not take at once is queued by the engine. Writer
// counts the bytes handed to the engine minus the bytes the engine reports
// written (Written) and refuses to queue past its budget.
//
// On a connection of Go's net/http server (TLS with crypto/tls), writes
// block; StartAsync gives the connection a queue and a goroutine that
// drains it, and the budget bounds that queue.
//
// Live events may instead be staged in a Batch (Stage), which sends the
// writes of a whole delivery round with one system call. Every write
// takes mu, so a write made while a staged one waits is appended to it and
// the connection's bytes keep their order.
type Writer struct {
	Conn      net.Conn
	engine    *nbio.Conn // the event loop's connection; nil for blocking connections
	fd        int32
	budget    int64
	queued    atomic.Int64 // bytes handed over (staged ones included) and not yet on the socket
	overSince atomic.Int64 // Unix ns since when the queue has been over budget; 0 when under
	async     *asyncQueue

	mu     sync.Mutex
	staged *staged // the write waiting in a batch; guarded by mu
}

// The queue may exceed its budget for a moment: a burst (a large batch, a
// backlog written at once) is absorbed as long as the peer drains it. A
// connection is a slow consumer when its queue stays over the budget for
// OverBudgetGrace, or would grow past HardLimitFactor times the budget.
const (
	OverBudgetGrace = 2 * time.Second
	HardLimitFactor = 4
	// ChunkBytes bounds one write of several frames.
	ChunkBytes = 256 << 10
)

// Init sets w up to write to conn, allowing budget queued bytes. engine is
// the event loop's connection under conn, or nil when conn is not on the
// event loop; only then can w's writes be batched.
func (w *Writer) Init(conn net.Conn, engine *nbio.Conn, budget int) {
	w.Conn, w.budget, w.fd = conn, int64(budget), -1
	if engine == nil {
		return
	}
	if rc, err := engine.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { w.fd = int32(fd) })
	}
	if w.fd >= 0 {
		w.engine = engine
	}
}

// Async reports whether the writer has its own queue and goroutine
// (StartAsync): the connection is not on the event loop.
func (w *Writer) Async() bool { return w.async != nil }

// Written is called by the engine with the bytes it wrote to the socket.
func (w *Writer) Written(n int) { w.queued.Add(int64(-n)) }

// Backlog returns the bytes queued and the budget.
func (w *Writer) Backlog() (queued, budget int64) { return w.Queued(), w.budget }

// Queued returns the bytes handed over and not yet written.
func (w *Writer) Queued() int64 {
	if w.async != nil {
		w.async.mu.Lock()
		defer w.async.mu.Unlock()
		return int64(len(w.async.buf))
	}
	return w.queued.Load()
}

// Write queues b, or returns hub.ErrSlow for a slow consumer (see
// OverBudgetGrace).
func (w *Writer) Write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if w.async != nil {
		if err := w.admit(w.Queued(), len(b)); err != nil {
			return err
		}
		return w.async.push(b)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.admit(w.queued.Load(), len(b)); err != nil {
		return err
	}
	w.queued.Add(int64(len(b)))
	if w.staged != nil {
		w.staged.append(b)
		return nil
	}
	if _, err := w.Conn.Write(b); err != nil {
		return err
	}
	return nil
}

// WriteNow writes b ahead of anything staged in a batch: for a last frame
// before the engine closes the connection, which would drop a staged one.
func (w *Writer) WriteNow(b []byte) error {
	if w.async != nil || w.engine == nil {
		return w.Write(b)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.queued.Add(int64(len(b)))
	if _, err := w.engine.Write(b); err != nil {
		return err
	}
	return nil
}

// EngineConn finds the event loop's connection behind c (a hijacked or
// upgraded one), or nil when c is not on the event loop.
func EngineConn(c net.Conn) *nbio.Conn {
	switch v := c.(type) {
	case *nbio.Conn:
		return v
	case *nbhttp.Conn:
		if nc, ok := v.Conn.(*nbio.Conn); ok {
			return nc
		}
	}
	return nil
}

// admit decides whether n more bytes may be queued on top of queued.
func (w *Writer) admit(queued int64, n int) error {
	if queued+int64(n) > HardLimitFactor*w.budget {
		return hub.ErrSlow
	}
	if queued <= w.budget {
		w.overSince.Store(0)
		return nil
	}
	now := time.Now().UnixNano()
	since := w.overSince.Load()
	if since == 0 {
		w.overSince.CompareAndSwap(0, now)
		return nil
	}
	if now-since > int64(OverBudgetGrace) {
		return hub.ErrSlow
	}
	return nil
}

var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// WriteFrames writes the frame of each event that frame selects, in order,
// coalesced into writes of up to ChunkBytes.
func (w *Writer) WriteFrames(evs []*event.Event, frame func(*event.Event) []byte) error {
	if len(evs) == 1 {
		return w.Write(frame(evs[0]))
	}
	bp := scratch.Get().(*[]byte)
	b := (*bp)[:0]
	var err error
	for _, e := range evs {
		f := frame(e)
		if len(b) > 0 && len(b)+len(f) > ChunkBytes {
			if err = w.Write(b); err != nil {
				break
			}
			b = b[:0]
		}
		b = append(b, f...)
	}
	if err == nil {
		err = w.Write(b)
	}
	if cap(b) <= 1<<20 {
		*bp = b[:0]
		scratch.Put(bp)
	}
	return err
}

// WSFrame selects the WebSocket frame of an event.
func WSFrame(e *event.Event) []byte { return e.WS }

// SSEFrame selects the SSE frame of an event.
func SSEFrame(e *event.Event) []byte { return e.SSE }

// asyncQueue is the send queue of a blocking connection and its writer
// goroutine.
type asyncQueue struct {
	mu      sync.Mutex
	buf     []byte
	closing bool
	wake    chan struct{}
}

// WriteTimeout bounds one blocking write: a peer that takes nothing for this
// long is gone.
const WriteTimeout = 10 * time.Second

// StartAsync switches w to a queue drained by its own goroutine, for
// connections whose writes block. The goroutine ends when the connection
// fails, calling gone, or after CloseWhenFlushed.
func (w *Writer) StartAsync(gone func()) {
	q := &asyncQueue{wake: make(chan struct{}, 1)}
	w.async = q
	go q.run(w.Conn, gone)
}

func (q *asyncQueue) push(b []byte) error {
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return net.ErrClosed
	}
	q.buf = append(q.buf, b...)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return nil
}

func (q *asyncQueue) run(conn net.Conn, gone func()) {
	var out []byte
	for range q.wake {
		q.mu.Lock()
		out, q.buf = q.buf, out[:0]
		closing := q.closing
		q.mu.Unlock()
		if len(out) > 0 {
			_ = conn.SetWriteDeadline(time.Now().Add(WriteTimeout))
			if _, err := conn.Write(out); err != nil {
				_ = conn.Close()
				gone()
				return
			}
		}
		if closing {
			q.mu.Lock()
			empty := len(q.buf) == 0
			q.mu.Unlock()
			if empty {
				_ = conn.Close()
				return
			}
		}
	}
}

// CloseWhenFlushed closes the connection once what is queued was written:
// at once on the engine when nothing is pending, else after a grace period.
func (w *Writer) CloseWhenFlushed() {
	if q := w.async; q != nil {
		q.mu.Lock()
		q.closing = true
		q.mu.Unlock()
		select {
		case q.wake <- struct{}{}:
		default:
		}
		return
	}
	w.closeWhenDrained(time.Now().Add(CloseGrace))
}

// CloseGrace is how long a closing connection may take to drain its queue
// (so that a slow consumer still reads its close frame) before it is cut.
const CloseGrace = 10 * time.Second

func (w *Writer) closeWhenDrained(deadline time.Time) {
	if w.Queued() <= 0 || time.Now().After(deadline) {
		_ = w.Conn.Close()
		return
	}
	time.AfterFunc(100*time.Millisecond, func() { w.closeWhenDrained(deadline) })
}
