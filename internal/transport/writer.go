// Package transport holds what the WebSocket and SSE connections share: a
// non-blocking writer with a bounded send queue.
package transport

import (
	"net"
	"sync"
	"sync/atomic"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/hub"
)

// Writer writes to a connection of the event-loop engine, whose Write never
// blocks: what the socket does not take at once is queued by the engine.
// Writer counts the bytes handed to the engine minus the bytes the engine
// reports written (Written), and refuses to queue past its budget, so a
// slow consumer is found and disconnected instead of growing memory.
type Writer struct {
	Conn   net.Conn
	budget int64
	queued atomic.Int64
}

// NewWriter returns a writer on conn allowing budget queued bytes.
func NewWriter(conn net.Conn, budget int) Writer {
	return Writer{Conn: conn, budget: int64(budget)}
}

// Written is called by the engine with the bytes it wrote to the socket.
func (w *Writer) Written(n int) { w.queued.Add(int64(-n)) }

// Queued returns the bytes handed to the engine and not yet written.
func (w *Writer) Queued() int64 { return w.queued.Load() }

// Write queues b, or returns hub.ErrSlow when that would exceed the budget.
func (w *Writer) Write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if w.queued.Load()+int64(len(b)) > w.budget {
		return hub.ErrSlow
	}
	w.queued.Add(int64(len(b)))
	if _, err := w.Conn.Write(b); err != nil {
		return err
	}
	return nil
}

var scratch = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// WriteFrames writes the frame of each event that frame selects, in order,
// as a single write.
func (w *Writer) WriteFrames(evs []*event.Event, frame func(*event.Event) []byte) error {
	if len(evs) == 1 {
		return w.Write(frame(evs[0]))
	}
	bp := scratch.Get().(*[]byte)
	b := (*bp)[:0]
	for _, e := range evs {
		b = append(b, frame(e)...)
	}
	err := w.Write(b)
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
