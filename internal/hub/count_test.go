package hub

import (
	"sync"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
)

// countObserver records what the shard reports per call.
type countObserver struct {
	nopObserver
	mu        sync.Mutex
	delivered int
	latencies []int // n of each ObserveDeliveryLatency call
}

func (o *countObserver) Delivered(_ int, n int) {
	o.mu.Lock()
	o.delivered += n
	o.mu.Unlock()
}

func (o *countObserver) ObserveDeliveryLatency(_ time.Duration, n int) {
	o.mu.Lock()
	o.latencies = append(o.latencies, n)
	o.mu.Unlock()
}

// TestDeliveriesAreCountedOncePerEvent checks the round's counting: one
// report per event with the number of clients written, not counting a
// closed client, one still replaying, or an event a replay already sent.
func TestDeliveriesAreCountedOncePerEvent(t *testing.T) {
	types, _ := event.NewTypes(nil)
	obs := &countObserver{}
	h := New(Config{Shards: 1}, nil, obs, nil)
	s := h.shards[0]
	attach := func() (*Client, *countSink) {
		sink := &countSink{}
		c := h.NewClient("websocket", NewSubscription("", 0, nil), time.Time{}, sink)
		c.shard = s
		s.add(c)
		return c, sink
	}
	_, ok1 := attach()
	_, ok2 := attach()
	closed, closedSink := attach()
	closed.closed = true
	replaying, replayingSink := attach()
	replaying.replaying = true
	resumed, resumedSink := attach()

	e1, e2 := sealed(types, "", ""), sealed(types, "", "")
	e2.ID = event.ID{Ms: 1, Seq: 2}
	resumed.last = e1.ID // a replay already wrote e1

	s.deliver([]*event.Event{e1, e2})

	if obs.delivered != 5 {
		t.Errorf("delivered %d, want 5 (2 + 2 + 0 closed + 0 replaying + 1 resumed)", obs.delivered)
	}
	if len(obs.latencies) != 2 || obs.latencies[0] != 2 || obs.latencies[1] != 3 {
		t.Errorf("latency observations %v, want [2 3]: one per event with its deliveries", obs.latencies)
	}
	frame := len(e1.WS)
	for name, got := range map[string]int{"first": ok1.bytes, "second": ok2.bytes, "closed": closedSink.bytes, "replaying": replayingSink.bytes, "resumed": resumedSink.bytes} {
		want := map[string]int{"first": 2 * frame, "second": 2 * frame, "resumed": frame}[name]
		if got != want {
			t.Errorf("%s client was written %d bytes, want %d", name, got, want)
		}
	}
	if len(replaying.pending) != 2 {
		t.Errorf("replaying client holds %d events, want 2", len(replaying.pending))
	}
}
