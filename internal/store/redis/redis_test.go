package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/redistest"
	"github.com/knowledgehub/realtime/internal/store"
	"github.com/knowledgehub/realtime/internal/store/storetest"
)

var testTypes = storetest.Types()

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter sends log lines to t.Log, so they show only for failing tests.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// openLog opens a log on url under prefix, closed when t ends.
func openLog(t testing.TB, url, prefix string, r store.Retention) *Log {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := Open(ctx, url, prefix, testTypes, r, testLogger(t))
	if err != nil {
		t.Fatalf("Open(%s): %v", url, err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestConformance(t *testing.T) {
	url := redistest.Start(t)
	storetest.Run(t, func(t *testing.T, r store.Retention) store.Log {
		return openLog(t, url, redistest.Prefix(t, url), r)
	})
}

func newEvents(tag string, n int) []*event.Event {
	evs := make([]*event.Event, n)
	for i := range evs {
		data, _ := json.Marshal(map[string]any{"tag": tag, "i": i})
		evs[i] = &event.Event{Type: "CODE_CHANGE", TypeIndex: testTypes.Index("CODE_CHANGE"), Data: data}
	}
	return evs
}

// collector gathers what a Follow delivers and checks order and uniqueness.
type collector struct {
	mu   sync.Mutex
	ids  []event.ID
	seen map[event.ID]bool
	bad  string
}

func (c *collector) fn(evs []*event.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = make(map[event.ID]bool)
	}
	for _, e := range evs {
		if c.seen[e.ID] && c.bad == "" {
			c.bad = fmt.Sprintf("%s delivered twice", e.ID)
		}
		if n := len(c.ids); n > 0 && !c.ids[n-1].Less(e.ID) && c.bad == "" {
			c.bad = fmt.Sprintf("%s delivered after %s", e.ID, c.ids[n-1])
		}
		c.seen[e.ID] = true
		c.ids = append(c.ids, e.ID)
	}
}

func (c *collector) snapshot() ([]event.ID, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event.ID(nil), c.ids...), c.bad
}

// follow runs l.Follow from after until the test ends.
func follow(t *testing.T, l *Log, after event.ID) *collector {
	t.Helper()
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Follow(ctx, after, c.fn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, store.ErrClosed) {
				t.Errorf("Follow returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Follow did not return within 5s of its context being cancelled")
		}
	})
	return c
}

// waitFor waits until c has delivered exactly want.
func waitFor(t *testing.T, c *collector, want []event.ID, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, bad := c.snapshot()
		if bad != "" {
			t.Fatal(bad)
		}
		if len(got) >= len(want) {
			if len(got) > len(want) || !equalIDs(got, want) {
				t.Fatalf("Follow delivered %d events %v, want %d %v", len(got), got, len(want), want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v Follow delivered %d of %d events", within, len(got), len(want))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func equalIDs(a, b []event.ID) bool {
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

func sortedIDs(ids []event.ID) []event.ID {
	out := append([]event.ID(nil), ids...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Less(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// TestTwoNodes runs two logs on one Redis, as two nodes of one hub.
func TestTwoNodes(t *testing.T) {
	url := redistest.Start(t)
	prefix := redistest.Prefix(t, url)
	a := openLog(t, url, prefix, store.Retention{})
	b := openLog(t, url, prefix, store.Retention{})
	fa, fb := follow(t, a, event.ID{}), follow(t, b, event.ID{})
	ctx := context.Background()

	// Appends from both nodes, concurrently, one and several at a time.
	const perNode, rounds = 4, 25
	var mu sync.Mutex
	var acked []event.ID
	var wg sync.WaitGroup
	errs := make(chan error, 2*perNode)
	for _, l := range []*Log{a, b} {
		for w := 0; w < perNode; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < rounds; i++ {
					ids, _, err := l.Append(ctx, "", newEvents(fmt.Sprintf("w%d-%d", w, i), 1+i%3))
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					acked = append(acked, ids...)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Append: %v", err)
	}
	want := sortedIDs(acked)
	for i := 1; i < len(want); i++ {
		if want[i] == want[i-1] {
			t.Fatalf("two events got id %s", want[i])
		}
	}
	// Each node reads the other's events, and both follow everything,
	// exactly once, in id order.
	for name, l := range map[string]*Log{"a": a, "b": b} {
		evs, err := l.Read(ctx, event.ID{}, 0)
		if err != nil {
			t.Fatalf("node %s Read: %v", name, err)
		}
		got := make([]event.ID, len(evs))
		for i, e := range evs {
			got[i] = e.ID
		}
		if !equalIDs(got, want) {
			t.Fatalf("node %s reads %d events, %d were acknowledged", name, len(got), len(want))
		}
	}
	waitFor(t, fa, want, 10*time.Second)
	waitFor(t, fb, want, 10*time.Second)

	// Bounds agree.
	ba, err := a.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := b.Bounds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ba != bb || ba.Last != want[len(want)-1] {
		t.Fatalf("Bounds a %+v, b %+v, want Last %s", ba, bb, want[len(want)-1])
	}

	// An idempotency key used on one node is known to the other.
	first, replayed, err := a.Append(ctx, "cross-node", newEvents("key", 2))
	if err != nil || replayed {
		t.Fatalf("Append on a: %v, replayed %v", err, replayed)
	}
	again, replayed, err := b.Append(ctx, "cross-node", newEvents("key", 2))
	if err != nil || !replayed || !equalIDs(first, again) {
		t.Fatalf("Append with the same key on b: ids %v replayed %v err %v, want %v replayed", again, replayed, err, first)
	}
	want = append(want, first...)
	waitFor(t, fa, want, 10*time.Second)
	waitFor(t, fb, want, 10*time.Second)
}

// TestRetentionAcrossNodes: a node with retention trims what another node
// appended, and both report the same pruned watermark.
func TestRetentionAcrossNodes(t *testing.T) {
	url := redistest.Start(t)
	prefix := redistest.Prefix(t, url)
	a := openLog(t, url, prefix, store.Retention{MaxEvents: 10})
	b := openLog(t, url, prefix, store.Retention{MaxEvents: 10})
	ctx := context.Background()
	var ids []event.ID
	for i := 0; i < 5; i++ {
		got, _, err := a.Append(ctx, "", newEvents("a", 3))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
		got, _, err = b.Append(ctx, "", newEvents("b", 2))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	for name, l := range map[string]*Log{"a": a, "b": b} {
		bd, err := l.Bounds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if bd.Pruned != ids[len(ids)-11] || bd.Last != ids[len(ids)-1] {
			t.Fatalf("node %s Bounds %+v, want Pruned %s Last %s", name, bd, ids[len(ids)-11], ids[len(ids)-1])
		}
		evs, err := l.Read(ctx, event.ID{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 10 || evs[0].ID != ids[len(ids)-10] {
			t.Fatalf("node %s reads %d events, want the last 10", name, len(evs))
		}
	}
}

// TestReadPages reads more than one XRANGE page.
func TestReadPages(t *testing.T) {
	url := redistest.Start(t)
	l := openLog(t, url, redistest.Prefix(t, url), store.Retention{})
	ctx := context.Background()
	var ids []event.ID
	for i := 0; i < 3; i++ {
		got, _, err := l.Append(ctx, "", newEvents("page", 900))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	evs, err := l.Read(ctx, event.ID{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(ids) || evs[len(evs)-1].ID != ids[len(ids)-1] {
		t.Fatalf("Read(0) returned %d events, want %d", len(evs), len(ids))
	}
	evs, err = l.Read(ctx, ids[10], 1500)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1500 || evs[0].ID != ids[11] || evs[1499].ID != ids[1510] {
		t.Fatalf("Read(ids[10], 1500) returned %d events", len(evs))
	}
}

// TestOutage takes Redis away while a node follows the stream and brings it
// back: Append fails fast with ErrUnavailable meanwhile, and afterwards
// Follow delivers every acknowledged event exactly once.
func TestOutage(t *testing.T) {
	srv := redistest.StartServer(t)
	prefix := redistest.Prefix(t, srv.URL())
	l := openLog(t, srv.URL(), prefix, store.Retention{})
	f := follow(t, l, event.ID{})
	ctx := context.Background()

	var acked []event.ID
	appendOK := func(tag string, n int) {
		t.Helper()
		ids, _, err := l.Append(ctx, "", newEvents(tag, n))
		if err != nil {
			t.Fatalf("Append %s: %v", tag, err)
		}
		acked = append(acked, ids...)
	}
	appendOK("before", 3)
	appendOK("before", 1)
	waitFor(t, f, acked, 10*time.Second)
	appendOK("just-before", 2) // perhaps not yet delivered when Redis dies

	srv.Kill()

	start := time.Now()
	_, _, err := l.Append(ctx, "", newEvents("during", 2))
	if err == nil {
		t.Fatal("Append with Redis down succeeded")
	}
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Append with Redis down: %v, want an error wrapping store.ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Append with Redis down took %v", d)
	}
	if err := l.Ping(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Ping with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := l.Bounds(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Bounds with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := l.Read(ctx, event.ID{}, 10); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Read with Redis down: %v, want ErrUnavailable", err)
	}
	// An Append with a deadline of its own fails within it.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	start = time.Now()
	_, _, err = l.Append(short, "k", newEvents("during", 1))
	cancel()
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("Append with a 500ms deadline and Redis down: %v after %v", err, time.Since(start))
	}
	time.Sleep(1 * time.Second) // let Follow retry a few times

	srv.Start()

	// The first commands may meet connections broken by the crash.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids, _, err := l.Append(ctx, "", newEvents("after", 2))
		if err == nil {
			acked = append(acked, ids...)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Append after Redis came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := l.Ping(ctx); err != nil {
		t.Fatalf("Ping after Redis came back: %v", err)
	}
	appendOK("after", 3)
	waitFor(t, f, acked, 15*time.Second)
	evs, err := l.Read(ctx, event.ID{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(acked) {
		t.Fatalf("after the outage Redis holds %d events, %d were acknowledged", len(evs), len(acked))
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, url := range []string{
		"",
		"http://example.com",
		"redis://:s3cret@" + closed + "/0",
	} {
		start := time.Now()
		l, err := Open(ctx, url, "", testTypes, store.Retention{}, logger)
		if err == nil {
			l.Close()
			t.Fatalf("Open(%q) succeeded", url)
		}
		if !strings.Contains(err.Error(), "redis_url") {
			t.Errorf("Open(%q): %v, want the error to name redis_url", url, err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q): %v shows the password", url, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Open(%q) took %v", url, d)
		}
	}
}

// TestDefaultPrefix uses a private server: the default keys must not meet
// another test's on a shared Redis.
func TestDefaultPrefix(t *testing.T) {
	l := openLog(t, redistest.StartServer(t).URL(), "", store.Retention{})
	if l.Prefix() != DefaultPrefix || l.streamKey != "knowledgehub:events" {
		t.Fatalf("prefix %q stream %q", l.Prefix(), l.streamKey)
	}
	ctx := context.Background()
	if _, _, err := l.Append(ctx, "k", newEvents("p", 1)); err != nil {
		t.Fatal(err)
	}
	c := l.Client()
	n, err := c.Do(ctx, c.B().Exists().Key("knowledgehub:events", "knowledgehub:idem:k").Build()).AsInt64()
	if err != nil || n != 2 {
		t.Fatalf("EXISTS the default keys = %d, %v; want 2", n, err)
	}
}

// TestCloseEndsFollow: Close ends a running Follow with store.ErrClosed,
// without waiting for its XREAD to time out.
func TestCloseEndsFollow(t *testing.T) {
	url := redistest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := Open(ctx, url, redistest.Prefix(t, url), testTypes, store.Retention{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Follow(context.Background(), event.ID{}, func([]*event.Event) {}) }()
	time.Sleep(200 * time.Millisecond) // let it block in XREAD
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, store.ErrClosed) {
			t.Fatalf("Follow after Close returned %v, want store.ErrClosed", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Follow took %v to return after Close", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow did not return after Close")
	}
	if err := l.Ping(ctx); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Ping after Close: %v, want store.ErrClosed", err)
	}
	if _, _, err := l.Append(ctx, "", newEvents("closed", 1)); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Append after Close: %v, want store.ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestRedisHangs: a Redis that stops answering (paused, as behind a network
// partition) makes Append and Ping fail within their timeouts instead of
// hanging, and Follow carries on once it answers again.
func TestRedisHangs(t *testing.T) {
	srv := redistest.StartServer(t)
	l := openLog(t, srv.URL(), redistest.Prefix(t, srv.URL()), store.Retention{})
	f := follow(t, l, event.ID{})
	ctx := context.Background()
	before, _, err := l.Append(ctx, "", newEvents("before", 2))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, f, before, 10*time.Second)

	srv.Pause()
	start := time.Now()
	_, _, err = l.Append(ctx, "hang-key", newEvents("during", 1))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Append with Redis hung: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > opTimeout+time.Second {
		t.Fatalf("Append with Redis hung took %v, want about %v", d, opTimeout)
	}
	start = time.Now()
	if err := l.Ping(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Ping with Redis hung: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > pingTimeout+time.Second {
		t.Fatalf("Ping with Redis hung took %v", d)
	}
	srv.Resume()

	// The timed-out Append may still have run once Redis resumed (its
	// outcome was unknown); retried with its key it is not stored twice.
	var during []event.ID
	deadline := time.Now().Add(10 * time.Second)
	for {
		during, _, err = l.Append(ctx, "hang-key", newEvents("during", 1))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Append after Redis resumed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	after, _, err := l.Append(ctx, "", newEvents("after", 2))
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(before, during...), after...)
	waitFor(t, f, want, 15*time.Second)
}
