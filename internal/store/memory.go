package store

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
)

// Memory is a Log held in process memory: fast, and lost on exit. It is the
// reference implementation of the Log contract and serves tests and
// ephemeral use (store: memory).
type Memory struct {
	retention Retention
	now       func() time.Time

	mu       sync.Mutex
	events   []*event.Event // retained, in id order
	last     event.ID
	pruned   event.ID
	keys     map[string]keyEntry
	follower func([]*event.Event)
	closed   bool
	done     chan struct{} // closed by Close
	keySweep time.Time     // last sweep of expired idempotency keys
}

type keyEntry struct {
	ids []event.ID
	at  time.Time
}

// NewMemory returns an empty memory log with the given retention.
func NewMemory(r Retention) *Memory {
	return &Memory{retention: r, now: time.Now, keys: make(map[string]keyEntry), done: make(chan struct{})}
}

// Append implements Log.
func (m *Memory) Append(ctx context.Context, key string, evs []*event.Event) ([]event.ID, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, false, ErrClosed
	}
	now := m.now()
	if key != "" {
		if k, ok := m.keys[key]; ok && (m.retention.MaxAge <= 0 || now.Sub(k.at) < m.retention.MaxAge) {
			return append([]event.ID(nil), k.ids...), true, nil
		}
	}
	ids := make([]event.ID, len(evs))
	for i, e := range evs {
		m.last = event.NextAt(m.last, uint64(now.UnixMilli()))
		e.ID = m.last
		e.Time = now
		e.Seal()
		ids[i] = e.ID
	}
	m.events = append(m.events, evs...)
	if key != "" {
		m.keys[key] = keyEntry{ids: ids, at: now}
	}
	m.prune(now)
	if m.follower != nil {
		m.follower(evs)
	}
	return ids, false, nil
}

// prune drops events beyond the retention; callers hold m.mu.
func (m *Memory) prune(now time.Time) {
	drop := 0
	if m.retention.MaxEvents > 0 && len(m.events) > m.retention.MaxEvents {
		drop = len(m.events) - m.retention.MaxEvents
	}
	if m.retention.MaxAge > 0 {
		cutoff := now.Add(-m.retention.MaxAge)
		for drop < len(m.events) && m.events[drop].Time.Before(cutoff) {
			drop++
		}
		if now.Sub(m.keySweep) > time.Second {
			m.keySweep = now
			for k, v := range m.keys {
				if v.at.Before(cutoff) {
					delete(m.keys, k)
				}
			}
		}
	}
	if drop == 0 {
		return
	}
	if m.retention.MaxAge <= 0 && len(m.keys) > 2*m.retention.MaxEvents {
		// Without an age limit, a key lives as long as the events it names
		// (swept when the keys outnumber the events twice over).
		oldest := m.events[drop-1].Time
		for k, v := range m.keys {
			if !v.at.After(oldest) {
				delete(m.keys, k)
			}
		}
	}
	m.pruned = m.events[drop-1].ID
	m.events = append(m.events[:0:0], m.events[drop:]...)
}

// Read implements Log.
func (m *Memory) Read(ctx context.Context, after event.ID, limit int) ([]*event.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	i := sort.Search(len(m.events), func(i int) bool { return after.Less(m.events[i].ID) })
	end := len(m.events)
	if limit > 0 && i+limit < end {
		end = i + limit
	}
	return append([]*event.Event(nil), m.events[i:end]...), nil
}

// Bounds implements Log.
func (m *Memory) Bounds(ctx context.Context) (Bounds, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Bounds{Last: m.last, Pruned: m.pruned}, nil
}

// Follow implements Log. Events appended after `after` that are already
// retained are delivered first, then every new append as it happens.
func (m *Memory) Follow(ctx context.Context, after event.ID, fn func([]*event.Event)) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	i := sort.Search(len(m.events), func(i int) bool { return after.Less(m.events[i].ID) })
	if i < len(m.events) {
		fn(append([]*event.Event(nil), m.events[i:]...))
	}
	m.follower = fn
	m.mu.Unlock()
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-m.done:
		err = ErrClosed
	}
	m.mu.Lock()
	m.follower = nil
	m.mu.Unlock()
	return err
}

// Ping implements Log.
func (m *Memory) Ping(ctx context.Context) error { return nil }

// Close implements Log.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		close(m.done)
	}
	return nil
}
