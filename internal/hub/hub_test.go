package hub

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
	"github.com/knowledgehub/realtime/internal/store"
)

// recordSink is a Sink that records what it is given.
type recordSink struct {
	mu      sync.Mutex
	events  []*event.Event
	control []string
	closed  *protocol.Disconnect
	slow    bool // answer ErrSlow to every write
}

func (s *recordSink) WriteEvents(evs []*event.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slow {
		return ErrSlow
	}
	s.events = append(s.events, evs...)
	return nil
}

func (s *recordSink) WriteControl(name string, msg []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.control = append(s.control, name)
	return nil
}

func (s *recordSink) Ping() error { return nil }

func (s *recordSink) Backlog() (int64, int64) { return 0, 1 << 20 }

func (s *recordSink) Close(d protocol.Disconnect) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed == nil {
		s.closed = &d
	}
}

func (s *recordSink) ids() []event.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]event.ID, len(s.events))
	for i, e := range s.events {
		out[i] = e.ID
	}
	return out
}

type fixture struct {
	hub   *Hub
	log   *store.Memory
	types *event.Types
}

func newFixture(t testing.TB, cfg Config) *fixture {
	t.Helper()
	mem := store.NewMemory(store.Retention{MaxEvents: 100000})
	return newFixtureOn(t, cfg, mem, mem)
}

// newFixtureOn runs a hub on log, whose events are appended through mem.
func newFixtureOn(t testing.TB, cfg Config, log store.Log, mem *store.Memory) *fixture {
	t.Helper()
	types, _ := event.NewTypes(nil)
	h := New(cfg, log, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Run starts following asynchronously; wait until an append reaches it.
	f := &fixture{hub: h, log: mem, types: types}
	probe, ps := f.attach(t, "", 0, nil)
	deadline := time.Now().Add(5 * time.Second)
	for len(ps.ids()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("hub does not follow the log")
		}
		f.publish(t, "PATTERN_DETECTED", "", "")
		time.Sleep(5 * time.Millisecond)
	}
	probe.Close(protocol.DisconnectNormal)
	return f
}

func (f *fixture) publish(t testing.TB, typ, user, job string) event.ID {
	t.Helper()
	e := &event.Event{Type: typ, TypeIndex: f.types.Index(typ), Data: []byte(`1`), UserID: user, JobID: job}
	ids, _, err := f.log.Append(context.Background(), "", []*event.Event{e})
	if err != nil {
		t.Fatal(err)
	}
	return ids[0]
}

func (f *fixture) attach(t testing.TB, user string, types event.TypeSet, jobs []string) (*Client, *recordSink) {
	t.Helper()
	s := &recordSink{}
	c := f.hub.NewClient("websocket", NewSubscription(user, types, jobs), time.Time{}, s)
	if err := f.hub.Attach(context.Background(), c, []byte(`{}`), false, event.ID{}); err != nil {
		t.Fatal(err)
	}
	return c, s
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestSubscriptionMatches(t *testing.T) {
	types, _ := event.NewTypes(nil)
	code := types.Index("CODE_CHANGE")
	errIdx := types.Index("ERROR_OCCURRED")
	onlyErrors, _ := types.ParseTypeSet("ERROR_OCCURRED")
	for _, tc := range []struct {
		name string
		sub  Subscription
		ev   event.Event
		want bool
	}{
		{"public to anonymous", NewSubscription("", 0, nil), event.Event{TypeIndex: code}, true},
		{"private to anonymous", NewSubscription("", 0, nil), event.Event{TypeIndex: code, UserID: "alice"}, false},
		{"private to owner", NewSubscription("alice", 0, nil), event.Event{TypeIndex: code, UserID: "alice"}, true},
		{"private to other", NewSubscription("bob", 0, nil), event.Event{TypeIndex: code, UserID: "alice"}, false},
		{"job, not subscribed", NewSubscription("alice", 0, nil), event.Event{TypeIndex: code, JobID: "j"}, false},
		{"job, subscribed", NewSubscription("", 0, []string{"j"}), event.Event{TypeIndex: code, JobID: "j"}, true},
		{"private job, other user subscribed", NewSubscription("bob", 0, []string{"j"}), event.Event{TypeIndex: code, JobID: "j", UserID: "alice"}, false},
		{"filter excludes", NewSubscription("", onlyErrors, nil), event.Event{TypeIndex: code}, false},
		{"filter includes", NewSubscription("", onlyErrors, nil), event.Event{TypeIndex: errIdx}, true},
		{"unknown type with filter", NewSubscription("", onlyErrors, nil), event.Event{TypeIndex: -1}, false},
		{"unknown type without filter", NewSubscription("", 0, nil), event.Event{TypeIndex: -1}, true},
	} {
		if got := tc.sub.Matches(&tc.ev); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRoutingThroughIndexes(t *testing.T) {
	f := newFixture(t, Config{Shards: 3})
	_, anon := f.attach(t, "", 0, nil)
	alice, aliceSink := f.attach(t, "alice", 0, []string{"j1"})
	_, bob := f.attach(t, "bob", 0, nil)
	_, jobOnly := f.attach(t, "", 0, []string{"j1", "j2"})

	f.publish(t, "CODE_CHANGE", "alice", "")   // alice
	f.publish(t, "CODE_CHANGE", "", "j1")      // alice, jobOnly
	f.publish(t, "CODE_CHANGE", "alice", "j2") // nobody: alice is not on j2
	f.publish(t, "CODE_CHANGE", "", "")        // everyone
	// Delivery is asynchronous: let these arrive before the subscriptions
	// change.
	waitFor(t, "first deliveries", func() bool { return len(aliceSink.ids()) == 3 && len(bob.ids()) == 1 })
	if err := alice.Subscribe("j2"); err != nil {
		t.Fatal(err)
	}
	f.publish(t, "CODE_CHANGE", "alice", "j2") // alice
	waitFor(t, "the j2 event", func() bool { return len(aliceSink.ids()) == 4 })
	alice.Unsubscribe("j1", nil)
	f.publish(t, "CODE_CHANGE", "", "j1") // jobOnly

	waitFor(t, "deliveries", func() bool { return len(aliceSink.ids()) == 4 && len(jobOnly.ids()) == 3 })
	time.Sleep(20 * time.Millisecond)
	for name, tc := range map[string]struct {
		s    *recordSink
		want int
	}{"anon": {anon, 1}, "alice": {aliceSink, 4}, "bob": {bob, 1}, "jobOnly": {jobOnly, 3}} {
		if got := len(tc.s.ids()); got != tc.want {
			t.Errorf("%s received %d events, want %d", name, got, tc.want)
		}
	}
}

// TestReplayHandoffUnderLoad attaches resuming clients while publishers run:
// each must receive every event after its resume id exactly once, in order.
func TestReplayHandoffUnderLoad(t *testing.T) {
	f := newFixture(t, Config{Shards: 2, ReplayPage: 7})
	for i := 0; i < 50; i++ {
		f.publish(t, "CODE_CHANGE", "", "")
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for p := 0; p < 4; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1500 && ctx.Err() == nil; i++ {
				f.publish(t, "CODE_CHANGE", "", "")
			}
		}()
	}
	type resumer struct {
		from event.ID
		sink *recordSink
	}
	var resumers []resumer
	for i := 0; i < 20; i++ {
		time.Sleep(time.Millisecond)
		evs, _ := f.log.Read(context.Background(), event.ID{}, 0)
		from := evs[rand.IntN(len(evs))].ID
		s := &recordSink{}
		c := f.hub.NewClient("sse", NewSubscription("", 0, nil), time.Time{}, s)
		if err := f.hub.Attach(context.Background(), c, []byte(`{}`), true, from); err != nil {
			t.Fatal(err)
		}
		resumers = append(resumers, resumer{from, s})
	}
	time.Sleep(20 * time.Millisecond)
	stop()
	wg.Wait()
	b, _ := f.log.Bounds(context.Background())
	all, _ := f.log.Read(context.Background(), event.ID{}, 0)
	for i, r := range resumers {
		waitFor(t, "resumer to catch up", func() bool {
			ids := r.sink.ids()
			return len(ids) > 0 && ids[len(ids)-1] == b.Last
		})
		var want []event.ID
		for _, e := range all {
			if r.from.Less(e.ID) {
				want = append(want, e.ID)
			}
		}
		got := r.sink.ids()
		if len(got) != len(want) {
			t.Fatalf("resumer %d got %d events, want %d", i, len(got), len(want))
		}
		for j := range want {
			if got[j] != want[j] {
				t.Fatalf("resumer %d event %d = %s, want %s", i, j, got[j], want[j])
			}
		}
	}
}

func TestSlowConsumerIsDisconnected(t *testing.T) {
	f := newFixture(t, Config{Shards: 1})
	c, s := f.attach(t, "", 0, nil)
	s.mu.Lock()
	s.slow = true
	s.mu.Unlock()
	f.publish(t, "CODE_CHANGE", "", "")
	waitFor(t, "disconnect", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.closed != nil })
	if s.closed.Code != 4208 {
		t.Fatalf("closed with %d, want 4208", s.closed.Code)
	}
	if f.hub.Count() != 0 {
		t.Fatalf("hub still counts %d clients", f.hub.Count())
	}
	c.Close(protocol.DisconnectNormal) // idempotent
}

// slowReadLog delays the first Read, as a replay from a slow store would.
type slowReadLog struct {
	*store.Memory
	gate chan struct{}
	once sync.Once
}

func (l *slowReadLog) Read(ctx context.Context, after event.ID, limit int) ([]*event.Event, error) {
	l.once.Do(func() { <-l.gate })
	return l.Memory.Read(ctx, after, limit)
}

func TestPendingOverflowDuringReplay(t *testing.T) {
	mem := store.NewMemory(store.Retention{MaxEvents: 1000})
	log := &slowReadLog{Memory: mem, gate: make(chan struct{})}
	f := newFixtureOn(t, Config{Shards: 1, MaxPending: 3}, log, mem)
	h := f.hub
	_, watcher := f.attach(t, "", 0, nil)
	for i := 0; i < 10; i++ {
		f.publish(t, "CODE_CHANGE", "", "")
	}
	// Dispatch is asynchronous: let these reach the shard before the
	// resuming client attaches, so only the later five are held for it.
	waitFor(t, "dispatch", func() bool { return len(watcher.ids()) == 10 })
	s := &recordSink{}
	c := h.NewClient("websocket", NewSubscription("", 0, nil), time.Time{}, s)
	attached := make(chan error)
	go func() { attached <- h.Attach(context.Background(), c, []byte(`{}`), true, event.ID{}) }()
	// While the replay waits for the store, live events pile up for it.
	waitFor(t, "attach", func() bool { return h.Count() == 2 })
	for i := 0; i < 5; i++ {
		f.publish(t, "CODE_CHANGE", "", "")
	}
	waitFor(t, "disconnect", func() bool { return h.Count() == 1 })
	close(log.gate)
	<-attached
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed == nil || s.closed.Code != 4208 {
		t.Fatalf("closed with %v, want 4208", s.closed)
	}
	if len(s.events) != 0 {
		t.Fatalf("a disconnected client was written %d events", len(s.events))
	}
}

func TestShutdownClosesEveryone(t *testing.T) {
	f := newFixture(t, Config{Shards: 2})
	var sinks []*recordSink
	for i := 0; i < 10; i++ {
		_, s := f.attach(t, "", 0, nil)
		sinks = append(sinks, s)
	}
	f.hub.Shutdown()
	for _, s := range sinks {
		if s.closed == nil || s.closed.Code != 1001 {
			t.Fatalf("closed with %v, want 1001", s.closed)
		}
	}
	if f.hub.Count() != 0 {
		t.Fatalf("count %d after shutdown", f.hub.Count())
	}
}

func TestTooManyJobs(t *testing.T) {
	f := newFixture(t, Config{Shards: 1, MaxJobs: 2})
	c, _ := f.attach(t, "", 0, []string{"a"})
	if err := c.Subscribe("b"); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe("c"); err == nil {
		t.Fatal("third job accepted, want ErrTooManyJobs")
	}
	if err := c.Subscribe("a"); err != nil {
		t.Fatalf("resubscribing is not an error: %v", err)
	}
}
