// Package store defines the event log: where an accepted event is made
// durable, given its id, kept for resume and history, and handed to the hub.
// Implementations: memory (this package), disk (store/disk) and Redis
// (store/redis).
package store

import (
	"context"
	"errors"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
)

// Log is the event log of one hub.
//
// Ids: Append assigns every event an id greater than every id assigned
// before, by any node sharing the log, and a timestamp; Follow delivers
// events in id order. Everything Append acknowledged is durable (as the
// implementation defines it) and is either still retained or below the
// pruned watermark reported by Bounds.
type Log interface {
	// Append assigns ids and timestamps to evs (in order), seals them, makes
	// them durable and returns only then. It is all or nothing: on error no
	// event of evs was stored. When key is not empty and a previous Append
	// with the same key is still remembered, nothing is stored and the ids of
	// that earlier Append are returned with replayed = true.
	Append(ctx context.Context, key string, evs []*event.Event) (ids []event.ID, replayed bool, err error)

	// Read returns up to limit retained events with an id greater than
	// after, in id order.
	Read(ctx context.Context, after event.ID, limit int) ([]*event.Event, error)

	// Bounds reports the last id ever assigned and the pruned watermark: the
	// greatest id that retention has removed (zero when nothing was removed).
	Bounds(ctx context.Context) (Bounds, error)

	// Follow calls fn with every event appended after `after`, in id order,
	// from a single goroutine, until ctx is done or the log is closed. Only
	// one Follow runs per Log. For local logs fn runs before Append returns,
	// so fn must not block for long.
	Follow(ctx context.Context, after event.ID, fn func([]*event.Event)) error

	// Ping reports whether the log is reachable (for /readyz).
	Ping(ctx context.Context) error

	// Close flushes and releases the log.
	Close() error
}

// Bounds describes the ids of a log.
type Bounds struct {
	Last   event.ID // last id assigned; zero when the log is empty
	Pruned event.ID // greatest id removed by retention; zero when none
}

// Retention bounds what a log keeps.
type Retention struct {
	MaxEvents int           // history_size
	MaxAge    time.Duration // history_ttl
}

// ErrUnavailable wraps errors of a log that cannot be reached now (Redis
// down): the publish API answers 503 for them.
var ErrUnavailable = errors.New("event log unavailable")

// ErrClosed is returned by a log after Close.
var ErrClosed = errors.New("event log closed")
