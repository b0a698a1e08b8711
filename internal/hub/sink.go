package hub

import (
	"errors"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
)

// Sink is a connection as the hub sees it: the transport (WebSocket or SSE)
// behind it frames and writes. No method blocks: writes are queued by the
// I/O engine, and a queue over its budget is reported as ErrSlow.
type Sink interface {
	// WriteEvents writes the already-framed events as one write, in order.
	WriteEvents(evs []*event.Event) error
	// WriteControl writes a control message; name is its SSE event name
	// ("connected", "gap", "token_expiring", ...), which WebSocket ignores.
	WriteControl(name string, msg []byte) error
	// Ping writes a WebSocket ping or an SSE keepalive comment.
	Ping() error
	// Backlog reports the bytes queued for the connection and its budget;
	// a replay waits for the queue to drain before writing more.
	Backlog() (queued, budget int64)
	// Close ends the connection for reason d: a close frame with d's code for
	// WebSocket; for SSE, a last frame when the reason calls for one. It is
	// idempotent.
	Close(d protocol.Disconnect)
}

// Batch collects the writes of one delivery round of a fan-out worker, for
// the transport to hand to the kernel together at Flush (see
// transport.Batch). Each worker owns one.
type Batch interface {
	// Flush sends what was staged since the last Flush.
	Flush()
	// Close releases the batch when its worker stops.
	Close()
}

// BatchSink is a Sink that can stage live events in the round's Batch
// instead of writing them at once. Writes made to the connection before the
// Flush still follow the staged events.
type BatchSink interface {
	StageEvents(b Batch, evs []*event.Event) error
}

// ErrSlow is returned by a Sink whose send queue is over its budget: the
// client cannot keep up and is disconnected with 4208.
var ErrSlow = errors.New("send queue over budget")

// Observer receives the hub's measurements (the metrics package).
type Observer interface {
	Delivered(typeIndex int, n int)
	// ObserveDeliveryLatency records n deliveries that each took d.
	ObserveDeliveryLatency(d time.Duration, n int)
	SlowConsumer(transport string)
	Disconnect(transport string, code int)
	ConnOpened(transport string, authenticated bool)
	ConnClosed(transport string, authenticated bool)
	ObserveStore(op string, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Delivered(int, int)                        {}
func (nopObserver) ObserveDeliveryLatency(time.Duration, int) {}
func (nopObserver) SlowConsumer(string)                       {}
func (nopObserver) Disconnect(string, int)                    {}
func (nopObserver) ConnOpened(string, bool)                   {}
func (nopObserver) ObserveStore(string, time.Duration)        {}
func (nopObserver) ConnClosed(string, bool)                   {}
