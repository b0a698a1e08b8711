// Package storetest is the conformance suite of the store.Log contract. Every
// implementation (memory, disk, Redis) runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, r store.Retention) store.Log {
//			return openMyLog(t, r) // a fresh, empty log
//		})
//	}
//
// The suite is backend-neutral: it never assumes local speed, waits for
// asynchronous effects (background retention, Follow delivery) by polling
// with generous deadlines, and only sleeps where the passing of wall-clock
// time is what is being tested (retention by age).
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/store"
)

// Wait bounds every wait of the suite for an asynchronous effect: a Follow
// delivery, a background prune.
const Wait = 5 * time.Second

// Opener returns a fresh, empty log with the given retention. The suite
// closes every log it opens; an Opener may also register a t.Cleanup of its
// own (Close must then be safe to call twice).
type Opener func(t *testing.T, r store.Retention) store.Log

// Types returns the default event types registry, the one the suite's events
// use. Implementations that need a registry to decode stored events pass it.
func Types() *event.Types {
	types, err := event.NewTypes(nil)
	if err != nil {
		panic(fmt.Sprintf("storetest: default event types: %v", err))
	}
	return types
}

// Run runs the conformance suite against the logs that open returns.
func Run(t *testing.T, open func(t *testing.T, r store.Retention) store.Log) {
	s := &suite{open: open, types: Types()}
	t.Run("IDsStrictlyIncrease", s.idsStrictlyIncrease)
	t.Run("AppendSeals", s.appendSeals)
	t.Run("ReadSlices", s.readSlices)
	t.Run("ReadFromZero", s.readFromZero)
	t.Run("BoundsLast", s.boundsLast)
	t.Run("BoundsCoverWhatReadSees", s.boundsCoverWhatReadSees)
	t.Run("RetentionByCount", s.retentionByCount)
	t.Run("RetentionByAge", s.retentionByAge)
	t.Run("IdempotencyKey", s.idempotencyKey)
	t.Run("IdempotencyKeyExpires", s.idempotencyKeyExpires)
	t.Run("BatchAllOrNothing", s.batchAllOrNothing)
	t.Run("FollowDeliversInOrder", s.followDeliversInOrder)
	t.Run("FollowConcurrentAppenders", s.followConcurrentAppenders)
	t.Run("FollowAfterReplaysRetained", s.followAfterReplaysRetained)
	t.Run("CloseThenAppend", s.closeThenAppend)
}

type suite struct {
	open  Opener
	types *event.Types
}

// log opens a fresh log that is closed when the test ends.
func (s *suite) log(t *testing.T, r store.Retention) store.Log {
	t.Helper()
	l := s.open(t, r)
	if l == nil {
		t.Fatal("open returned a nil log")
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*Wait)
	t.Cleanup(cancel)
	return ctx
}

// newEvents returns n unsealed events whose data names tag and their index.
func (s *suite) newEvents(tag string, n int) []*event.Event {
	evs := make([]*event.Event, n)
	for i := range evs {
		typ := event.DefaultTypes[i%len(event.DefaultTypes)]
		data, _ := json.Marshal(map[string]any{"tag": tag, "i": i})
		e := &event.Event{Type: typ, TypeIndex: s.types.Index(typ), Data: data}
		if i%3 == 1 {
			e.UserID = "alice"
		}
		if i%4 == 2 {
			e.JobID = "job-42"
		}
		evs[i] = e
	}
	return evs
}

func mustAppend(t *testing.T, l store.Log, key string, evs []*event.Event) []event.ID {
	t.Helper()
	ids, replayed, err := l.Append(ctxFor(t), key, evs)
	if err != nil {
		t.Fatalf("Append(%d events): %v", len(evs), err)
	}
	if replayed {
		t.Fatalf("Append(key %q) of new events: replayed = true", key)
	}
	if len(ids) != len(evs) {
		t.Fatalf("Append(%d events) returned %d ids", len(evs), len(ids))
	}
	for i, e := range evs {
		if e.ID != ids[i] {
			t.Fatalf("Append: event %d has id %s, Append returned %s", i, e.ID, ids[i])
		}
	}
	return ids
}

// appendSingles appends n events one Append at a time and returns their ids.
func (s *suite) appendSingles(t *testing.T, l store.Log, tag string, n int) []event.ID {
	t.Helper()
	var ids []event.ID
	for i := 0; i < n; i++ {
		ids = append(ids, mustAppend(t, l, "", s.newEvents(fmt.Sprintf("%s-%d", tag, i), 1))...)
	}
	return ids
}

func mustRead(t *testing.T, l store.Log, after event.ID, limit int) []*event.Event {
	t.Helper()
	evs, err := l.Read(ctxFor(t), after, limit)
	if err != nil {
		t.Fatalf("Read(%s, %d): %v", after, limit, err)
	}
	return evs
}

func mustBounds(t *testing.T, l store.Log) store.Bounds {
	t.Helper()
	b, err := l.Bounds(ctxFor(t))
	if err != nil {
		t.Fatalf("Bounds: %v", err)
	}
	return b
}

func idsOf(evs []*event.Event) []event.ID {
	ids := make([]event.ID, len(evs))
	for i, e := range evs {
		ids[i] = e.ID
	}
	return ids
}

func sameIDs(a, b []event.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func checkIncreasing(t *testing.T, what string, ids []event.ID) {
	t.Helper()
	for i := 1; i < len(ids); i++ {
		if !ids[i-1].Less(ids[i]) {
			t.Fatalf("%s: id %d (%s) is not greater than id %d (%s)", what, i, ids[i], i-1, ids[i-1])
		}
	}
}

// eventually polls cond until it holds or Wait has passed.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s; last state: %s", Wait, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *suite) idsStrictlyIncrease(t *testing.T) {
	l := s.log(t, store.Retention{})
	var all []event.ID
	all = append(all, s.appendSingles(t, l, "single", 5)...)
	all = append(all, mustAppend(t, l, "", s.newEvents("batch1", 7))...)
	all = append(all, s.appendSingles(t, l, "single2", 3)...)
	all = append(all, mustAppend(t, l, "", s.newEvents("batch2", 50))...)
	checkIncreasing(t, "ids across appends and batches", all)
	for i, id := range all {
		if id.IsZero() {
			t.Fatalf("id %d is the zero id", i)
		}
		if _, err := event.ParseID(id.String()); err != nil {
			t.Fatalf("id %d %q does not parse: %v", i, id, err)
		}
	}
	if got := idsOf(mustRead(t, l, event.ID{}, 0)); !sameIDs(got, all) {
		t.Fatalf("Read returned ids %v, Append returned %v", got, all)
	}
}

func (s *suite) appendSeals(t *testing.T) {
	l := s.log(t, store.Retention{})
	before := time.Now().Add(-time.Second)
	evs := s.newEvents("seal", 4)
	ids := mustAppend(t, l, "", evs)
	after := time.Now().Add(time.Second)
	check := func(where string, e *event.Event, want *event.Event) {
		t.Helper()
		if len(e.JSON) == 0 || len(e.SSE) == 0 || len(e.WS) == 0 {
			t.Fatalf("%s: event %s not sealed: JSON %d bytes, SSE %d, WS %d", where, e.ID, len(e.JSON), len(e.SSE), len(e.WS))
		}
		if e.Time.IsZero() || e.Time.Before(before) || e.Time.After(after) {
			t.Fatalf("%s: event %s timestamp %v not within [%v, %v]", where, e.ID, e.Time, before, after)
		}
		var w struct {
			ID        string          `json:"id"`
			Type      string          `json:"type"`
			Data      json.RawMessage `json:"data"`
			UserID    string          `json:"user_id"`
			JobID     string          `json:"job_id"`
			Timestamp string          `json:"timestamp"`
		}
		if err := json.Unmarshal(e.JSON, &w); err != nil {
			t.Fatalf("%s: event JSON %s: %v", where, e.JSON, err)
		}
		if w.ID != e.ID.String() || w.Type != want.Type || w.UserID != want.UserID || w.JobID != want.JobID || w.Timestamp == "" {
			t.Fatalf("%s: event JSON %s does not match the event %+v", where, e.JSON, want)
		}
		if string(w.Data) != string(want.Data) {
			t.Fatalf("%s: event data %s, want %s", where, w.Data, want.Data)
		}
		if e.Type != want.Type || e.TypeIndex != want.TypeIndex || e.UserID != want.UserID || e.JobID != want.JobID {
			t.Fatalf("%s: event fields %+v, want %+v", where, e, want)
		}
		wantSSE := "id: " + e.ID.String() + "\ndata: " + string(e.JSON) + "\n\n"
		if string(e.SSE) != wantSSE {
			t.Fatalf("%s: SSE frame %q, want %q", where, e.SSE, wantSSE)
		}
		if wantWS := event.AppendWSTextFrame(nil, e.JSON); string(e.WS) != string(wantWS) {
			t.Fatalf("%s: WS frame does not hold the event JSON", where)
		}
	}
	for i, e := range evs {
		if e.ID != ids[i] {
			t.Fatalf("event %d id %s, Append returned %s", i, e.ID, ids[i])
		}
		check("appended", e, e)
	}
	read := mustRead(t, l, event.ID{}, 0)
	if len(read) != len(evs) {
		t.Fatalf("Read returned %d events, want %d", len(read), len(evs))
	}
	for i, e := range read {
		check("read back", e, evs[i])
		if string(e.JSON) != string(evs[i].JSON) {
			t.Fatalf("read back JSON %s, appended %s", e.JSON, evs[i].JSON)
		}
	}
}

func (s *suite) readSlices(t *testing.T) {
	l := s.log(t, store.Retention{})
	ids := s.appendSingles(t, l, "a", 4)
	ids = append(ids, mustAppend(t, l, "", s.newEvents("b", 16))...)
	n := len(ids)
	cases := []struct {
		after int // index into ids; -1 for the zero id
		limit int
	}{
		{-1, 1}, {-1, 5}, {-1, n}, {-1, n + 10}, {-1, 0},
		{0, 1}, {0, 3}, {3, 2}, {4, 100}, {9, 5}, {n - 2, 1}, {n - 2, 10}, {n - 1, 10}, {n - 1, 0},
	}
	for _, c := range cases {
		after := event.ID{}
		if c.after >= 0 {
			after = ids[c.after]
		}
		want := ids[c.after+1:]
		if c.limit > 0 && len(want) > c.limit {
			want = want[:c.limit]
		}
		got := idsOf(mustRead(t, l, after, c.limit))
		if !sameIDs(got, want) {
			t.Fatalf("Read(after %s, limit %d) = %v, want %v", after, c.limit, got, want)
		}
	}
	// An after that is not an id of the log: between two ids, and after the last.
	mid := ids[5].Next()
	if !mid.Less(ids[6]) {
		mid = ids[5] // ids are adjacent: the case is covered above
	}
	if got := idsOf(mustRead(t, l, mid, 3)); !sameIDs(got, ids[6:9]) {
		t.Fatalf("Read(after %s, 3) = %v, want %v", mid, got, ids[6:9])
	}
	beyond := event.ID{Ms: ids[n-1].Ms + 1000}
	if got := mustRead(t, l, beyond, 10); len(got) != 0 {
		t.Fatalf("Read(after %s beyond the last id) = %v, want nothing", beyond, idsOf(got))
	}
}

func (s *suite) readFromZero(t *testing.T) {
	l := s.log(t, store.Retention{})
	if got := mustRead(t, l, event.ID{}, 10); len(got) != 0 {
		t.Fatalf("Read of an empty log = %v, want nothing", idsOf(got))
	}
	ids := mustAppend(t, l, "", s.newEvents("zero", 3))
	got := mustRead(t, l, event.ID{}, 10)
	if !sameIDs(idsOf(got), ids) {
		t.Fatalf("Read(0-0, 10) = %v, want %v", idsOf(got), ids)
	}
	if got := mustRead(t, l, event.ID{}, 1); !sameIDs(idsOf(got), ids[:1]) {
		t.Fatalf("Read(0-0, 1) = %v, want %v", idsOf(got), ids[:1])
	}
}

func (s *suite) boundsLast(t *testing.T) {
	l := s.log(t, store.Retention{})
	if b := mustBounds(t, l); !b.Last.IsZero() || !b.Pruned.IsZero() {
		t.Fatalf("Bounds of an empty log = %+v, want zero", b)
	}
	ids := mustAppend(t, l, "", s.newEvents("bounds", 3))
	if b := mustBounds(t, l); b.Last != ids[2] || !b.Pruned.IsZero() {
		t.Fatalf("Bounds after a batch = %+v, want Last %s and no Pruned", b, ids[2])
	}
	more := s.appendSingles(t, l, "bounds", 2)
	if b := mustBounds(t, l); b.Last != more[1] {
		t.Fatalf("Bounds.Last = %s, want %s", b.Last, more[1])
	}
	// A replayed Append stores nothing and assigns no id.
	mustAppend(t, l, "bounds-key", s.newEvents("k", 1))
	last := mustBounds(t, l).Last
	if _, replayed, err := l.Append(ctxFor(t), "bounds-key", s.newEvents("k", 1)); err != nil || !replayed {
		t.Fatalf("replayed Append: replayed %v, err %v", replayed, err)
	}
	if b := mustBounds(t, l); b.Last != last {
		t.Fatalf("Bounds.Last after a replayed Append = %s, want %s", b.Last, last)
	}
}

// boundsCoverWhatReadSees reads the newest events while others are
// appended: Bounds, asked after a Read, must never be behind an id that
// Read returned. (A client that received the newest event and resumes from
// it at once would otherwise be told the log was reset: a spurious gap.)
func (s *suite) boundsCoverWhatReadSees(t *testing.T) {
	l := s.log(t, store.Retention{})
	ctx := ctxFor(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := l.Append(ctx, "", s.newEvents("race", 1)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	var seen event.ID
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		evs, err := l.Read(ctx, seen, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			continue
		}
		seen = evs[len(evs)-1].ID
		b, err := l.Bounds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b.Last.Less(seen) {
			t.Fatalf("Bounds.Last %s is behind %s, which Read already returned", b.Last, seen)
		}
	}
}

func (s *suite) retentionByCount(t *testing.T) {
	const keep = 5
	l := s.log(t, store.Retention{MaxEvents: keep})
	ids := s.appendSingles(t, l, "count", 3)
	ids = append(ids, mustAppend(t, l, "", s.newEvents("count", 9))...) // 12 events, 7 to drop
	ids = append(ids, s.appendSingles(t, l, "count2", 2)...)            // 14 events, 9 to drop
	wantPruned := ids[len(ids)-keep-1]
	eventually(t, fmt.Sprintf("Bounds.Pruned reaches %s (the last event beyond the %d kept)", wantPruned, keep), func() (bool, string) {
		b := mustBounds(t, l)
		if wantPruned.Less(b.Pruned) {
			t.Fatalf("Bounds.Pruned = %s is past the last event to drop %s: retained events were pruned", b.Pruned, wantPruned)
		}
		return b.Pruned == wantPruned, fmt.Sprintf("%+v", b)
	})
	b := mustBounds(t, l)
	if b.Last != ids[len(ids)-1] {
		t.Fatalf("Bounds.Last = %s, want %s", b.Last, ids[len(ids)-1])
	}
	got := mustRead(t, l, event.ID{}, 0)
	if want := ids[len(ids)-keep:]; !sameIDs(idsOf(got), want) {
		t.Fatalf("Read(0-0) after retention = %v, want the last %d: %v", idsOf(got), keep, want)
	}
	if got := mustRead(t, l, ids[0], 2); !sameIDs(idsOf(got), ids[len(ids)-keep:len(ids)-keep+2]) {
		t.Fatalf("Read(after a pruned id, 2) = %v, want the first 2 retained", idsOf(got))
	}
	if got := mustRead(t, l, b.Pruned, 0); !sameIDs(idsOf(got), ids[len(ids)-keep:]) {
		t.Fatalf("Read(after Pruned) = %v, want the retained events", idsOf(got))
	}
}

func (s *suite) retentionByAge(t *testing.T) {
	const maxAge = time.Second
	l := s.log(t, store.Retention{MaxAge: maxAge})
	old := mustAppend(t, l, "", s.newEvents("old", 3))
	old = append(old, s.appendSingles(t, l, "old", 2)...)
	// Let the old events age past MaxAge (measured from after they were
	// acknowledged, which is no earlier than their timestamp).
	time.Sleep(maxAge + maxAge/2)
	fresh := mustAppend(t, l, "", s.newEvents("fresh", 2))
	wantPruned := old[len(old)-1]
	eventually(t, fmt.Sprintf("Bounds.Pruned reaches %s, the last event older than %v", wantPruned, maxAge), func() (bool, string) {
		b := mustBounds(t, l)
		return b.Pruned == wantPruned, fmt.Sprintf("%+v", b)
	})
	if got := mustRead(t, l, event.ID{}, 0); !sameIDs(idsOf(got), fresh) {
		t.Fatalf("Read(0-0) after age retention = %v, want only the fresh events %v", idsOf(got), fresh)
	}
	if b := mustBounds(t, l); b.Last != fresh[1] {
		t.Fatalf("Bounds.Last = %s, want %s", b.Last, fresh[1])
	}
}

func (s *suite) idempotencyKey(t *testing.T) {
	l := s.log(t, store.Retention{})
	ids := mustAppend(t, l, "key-1", s.newEvents("first", 3))
	other := mustAppend(t, l, "key-2", s.newEvents("other", 1))
	last := mustBounds(t, l).Last

	// The same key again, even with other events: the first ids, nothing stored.
	again := s.newEvents("second", 2)
	got, replayed, err := l.Append(ctxFor(t), "key-1", again)
	if err != nil {
		t.Fatalf("Append with a known key: %v", err)
	}
	if !replayed {
		t.Fatal("Append with a known key: replayed = false")
	}
	if !sameIDs(got, ids) {
		t.Fatalf("Append with a known key returned %v, want the first ids %v", got, ids)
	}
	if b := mustBounds(t, l); b.Last != last {
		t.Fatalf("Bounds.Last after a replay = %s, want %s", b.Last, last)
	}
	all := mustRead(t, l, event.ID{}, 0)
	if want := append(append([]event.ID(nil), ids...), other...); !sameIDs(idsOf(all), want) {
		t.Fatalf("Read after a replay = %v, want %v", idsOf(all), want)
	}

	// Concurrent Appends with one key: exactly one stores, the others replay it.
	const n = 8
	var wg sync.WaitGroup
	results := make([][]event.ID, n)
	replays := make([]bool, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], replays[i], errs[i] = l.Append(ctxFor(t), "key-race", s.newEvents("race", 2))
		}()
	}
	wg.Wait()
	stored := 0
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("concurrent Append with one key: %v", errs[i])
		}
		if !replays[i] {
			stored++
		}
		if !sameIDs(results[i], results[0]) {
			t.Fatalf("concurrent Appends with one key returned %v and %v", results[0], results[i])
		}
	}
	if stored != 1 {
		t.Fatalf("concurrent Appends with one key: %d stored (replayed = false), want 1", stored)
	}
	if got := mustRead(t, l, last, 0); !sameIDs(idsOf(got), results[0]) {
		t.Fatalf("Read after concurrent Appends with one key = %v, want %v", idsOf(got), results[0])
	}

	// No key: never replayed.
	a := mustAppend(t, l, "", s.newEvents("nokey", 1))
	b := mustAppend(t, l, "", s.newEvents("nokey", 1))
	if a[0] == b[0] {
		t.Fatalf("two Appends without a key got the same id %s", a[0])
	}
}

func (s *suite) idempotencyKeyExpires(t *testing.T) {
	const maxAge = time.Second
	l := s.log(t, store.Retention{MaxAge: maxAge})
	ids := mustAppend(t, l, "expiring", s.newEvents("first", 1))
	got, replayed, err := l.Append(ctxFor(t), "expiring", s.newEvents("second", 1))
	if err != nil || !replayed || !sameIDs(got, ids) {
		t.Fatalf("Append with a fresh key: ids %v replayed %v err %v, want %v replayed", got, replayed, err, ids)
	}
	time.Sleep(maxAge + maxAge/2)
	again := mustAppend(t, l, "expiring", s.newEvents("third", 1))
	if !ids[0].Less(again[0]) {
		t.Fatalf("Append with an expired key returned %v, want a new id after %v", again, ids)
	}
}

func (s *suite) batchAllOrNothing(t *testing.T) {
	l := s.log(t, store.Retention{})
	before := mustAppend(t, l, "", s.newEvents("before", 2))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ids, _, err := l.Append(ctx, "cancelled-key", s.newEvents("cancelled", 10))
	if err == nil {
		t.Fatalf("Append with a cancelled context succeeded with ids %v", ids)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context: %v, want an error wrapping context.Canceled", err)
	}
	if got := mustRead(t, l, event.ID{}, 0); !sameIDs(idsOf(got), before) {
		t.Fatalf("after a failed batch Read = %v, want only %v", idsOf(got), before)
	}
	if b := mustBounds(t, l); b.Last != before[1] {
		t.Fatalf("after a failed batch Bounds.Last = %s, want %s", b.Last, before[1])
	}
	// The key of the failed Append was not remembered.
	after := mustAppend(t, l, "cancelled-key", s.newEvents("after", 3))
	all := idsOf(mustRead(t, l, event.ID{}, 0))
	if want := append(append([]event.ID(nil), before...), after...); !sameIDs(all, want) {
		t.Fatalf("Read = %v, want %v", all, want)
	}

	// A batch is stored whole and is contiguous in id order.
	big := mustAppend(t, l, "", s.newEvents("big", 100))
	if got := idsOf(mustRead(t, l, after[2], 0)); !sameIDs(got, big) {
		t.Fatalf("Read after a batch of 100 = %d events, want the 100 of the batch", len(got))
	}
}

// follower collects what Follow delivers and checks it is in id order.
type follower struct {
	inFn   atomic.Int32 // calls of fn running now: Follow calls fn from one goroutine
	mu     sync.Mutex
	got    []event.ID
	events []*event.Event
	bad    string
	calls  int
}

func (f *follower) fn(evs []*event.Event) {
	concurrent := f.inFn.Add(1) > 1
	defer f.inFn.Add(-1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if concurrent && f.bad == "" {
		f.bad = "Follow called fn from two goroutines at once"
	}
	f.calls++
	if len(evs) == 0 && f.bad == "" {
		f.bad = "Follow called fn with no events"
	}
	for _, e := range evs {
		if n := len(f.got); n > 0 && !f.got[n-1].Less(e.ID) && f.bad == "" {
			f.bad = fmt.Sprintf("Follow delivered %s after %s", e.ID, f.got[n-1])
		}
		if (len(e.JSON) == 0 || len(e.SSE) == 0 || len(e.WS) == 0) && f.bad == "" {
			f.bad = fmt.Sprintf("Follow delivered %s unsealed", e.ID)
		}
		f.got = append(f.got, e.ID)
		f.events = append(f.events, e)
	}
}

func (f *follower) snapshot() ([]event.ID, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]event.ID(nil), f.got...), f.bad
}

// startFollow runs Follow in a goroutine; the returned stop cancels it and
// waits for it to return.
func startFollow(t *testing.T, l store.Log, after event.ID, f *follower) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Follow(ctx, after, f.fn) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, store.ErrClosed) {
					t.Errorf("Follow returned %v", err)
				}
			case <-time.After(Wait):
				t.Errorf("Follow did not return within %v of its context being cancelled", Wait)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitDelivered waits until f has received want (exactly, in order).
func waitDelivered(t *testing.T, f *follower, want []event.ID) {
	t.Helper()
	eventually(t, fmt.Sprintf("Follow delivers the %d events appended", len(want)), func() (bool, string) {
		got, bad := f.snapshot()
		if bad != "" {
			t.Fatal(bad)
		}
		if len(got) > len(want) {
			t.Fatalf("Follow delivered %d events, %d were appended: %v", len(got), len(want), got)
		}
		return len(got) == len(want), fmt.Sprintf("%d of %d delivered", len(got), len(want))
	})
	got, _ := f.snapshot()
	if !sameIDs(got, want) {
		t.Fatalf("Follow delivered %v, want %v", got, want)
	}
}

// followReady appends a marker event until Follow has delivered it, so that
// the follower is known to be registered. It returns the marker ids, which the
// follower delivered (a log may be asynchronous in starting to follow).
func (s *suite) followReady(t *testing.T, l store.Log, f *follower) []event.ID {
	t.Helper()
	ids := mustAppend(t, l, "", s.newEvents("marker", 1))
	eventually(t, "Follow delivers a first event", func() (bool, string) {
		got, bad := f.snapshot()
		if bad != "" {
			t.Fatal(bad)
		}
		return len(got) > 0 && got[len(got)-1] == ids[0], fmt.Sprintf("delivered %v", got)
	})
	return ids
}

func (s *suite) followDeliversInOrder(t *testing.T) {
	l := s.log(t, store.Retention{})
	f := &follower{}
	startFollow(t, l, event.ID{}, f)
	want := s.followReady(t, l, f)
	want = append(want, s.appendSingles(t, l, "follow", 5)...)
	want = append(want, mustAppend(t, l, "", s.newEvents("follow-batch", 20))...)
	// Replays and failed Appends deliver nothing.
	want = append(want, mustAppend(t, l, "follow-key", s.newEvents("k", 2))...)
	if _, replayed, err := l.Append(ctxFor(t), "follow-key", s.newEvents("k", 2)); err != nil || !replayed {
		t.Fatalf("replayed Append: replayed %v, err %v", replayed, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := l.Append(ctx, "", s.newEvents("cancelled", 3)); err == nil {
		t.Fatal("Append with a cancelled context succeeded")
	}
	want = append(want, s.appendSingles(t, l, "follow-end", 2)...)
	waitDelivered(t, f, want)

	// Delivered events are the sealed events the log keeps.
	f.mu.Lock()
	delivered := append([]*event.Event(nil), f.events...)
	f.mu.Unlock()
	read := mustRead(t, l, event.ID{}, 0)
	if len(read) != len(delivered) {
		t.Fatalf("Read returned %d events, Follow delivered %d", len(read), len(delivered))
	}
	for i := range read {
		if string(read[i].JSON) != string(delivered[i].JSON) {
			t.Fatalf("Follow delivered %s, Read returns %s", delivered[i].JSON, read[i].JSON)
		}
	}
}

func (s *suite) followConcurrentAppenders(t *testing.T) {
	const appenders, perAppender = 32, 20
	l := s.log(t, store.Retention{})
	f := &follower{}
	startFollow(t, l, event.ID{}, f)
	marker := s.followReady(t, l, f)

	var wg sync.WaitGroup
	var mu sync.Mutex
	var acked []event.ID
	errs := make(chan error, appenders)
	ctx := ctxFor(t)
	for a := 0; a < appenders; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perAppender; i++ {
				n := 1 + (a+i)%3
				ids, _, err := l.Append(ctx, "", s.newEvents(fmt.Sprintf("a%d-%d", a, i), n))
				if err != nil {
					errs <- err
					return
				}
				for j := 1; j < len(ids); j++ {
					if !ids[j-1].Less(ids[j]) {
						errs <- fmt.Errorf("batch ids %v not increasing", ids)
						return
					}
				}
				mu.Lock()
				acked = append(acked, ids...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Append: %v", err)
	}
	// Every acknowledged event, exactly once, in id order: the order of Read.
	want := append(marker, idsOf(mustRead(t, l, marker[0], 0))...)
	if len(want) != len(acked)+1 {
		t.Fatalf("Read returned %d events after the marker, %d were acknowledged", len(want)-1, len(acked))
	}
	seen := make(map[event.ID]bool, len(want))
	for _, id := range want {
		seen[id] = true
	}
	for _, id := range acked {
		if !seen[id] {
			t.Fatalf("acknowledged id %s is not in the log", id)
		}
		delete(seen, id)
	}
	checkIncreasing(t, "Read", want)
	waitDelivered(t, f, want)
}

func (s *suite) followAfterReplaysRetained(t *testing.T) {
	l := s.log(t, store.Retention{})
	early := mustAppend(t, l, "", s.newEvents("early", 6))
	f := &follower{}
	startFollow(t, l, early[2], f)
	want := append([]event.ID(nil), early[3:]...)
	waitDelivered(t, f, want)
	want = append(want, mustAppend(t, l, "", s.newEvents("late", 4))...)
	want = append(want, s.appendSingles(t, l, "late", 3)...)
	waitDelivered(t, f, want)

	// A second log, followed from the zero id: everything retained, then new.
	l2 := s.log(t, store.Retention{})
	first := s.appendSingles(t, l2, "two", 3)
	f2 := &follower{}
	startFollow(t, l2, event.ID{}, f2)
	waitDelivered(t, f2, first)
	more := append(first, mustAppend(t, l2, "", s.newEvents("two", 2))...)
	waitDelivered(t, f2, more)
}

func (s *suite) closeThenAppend(t *testing.T) {
	l := s.open(t, store.Retention{})
	if l == nil {
		t.Fatal("open returned a nil log")
	}
	mustAppend(t, l, "", s.newEvents("before-close", 2))
	if err := l.Ping(ctxFor(t)); err != nil {
		t.Fatalf("Ping of an open log: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ids, _, err := l.Append(ctxFor(t), "", s.newEvents("after-close", 1))
	if err == nil {
		t.Fatalf("Append after Close succeeded with ids %v", ids)
	}
	if !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Append after Close: %v, want an error wrapping store.ErrClosed", err)
	}
	if _, _, err := l.Append(ctxFor(t), "k", s.newEvents("after-close", 3)); err == nil {
		t.Fatal("batch Append with a key after Close succeeded")
	}
}
