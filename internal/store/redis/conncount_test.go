package redis

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/redistest"
	"github.com/knowledgehub/realtime/internal/store"
)

func mustAcquire(t *testing.T, c *ConnCounter, user, conn string, limit int, want bool) {
	t.Helper()
	ok, err := c.Acquire(context.Background(), user, conn, limit)
	if err != nil {
		t.Fatalf("Acquire(%s, %s): %v", user, conn, err)
	}
	if ok != want {
		t.Fatalf("node %s Acquire(%s, %s, limit %d) = %v, want %v", c.NodeID(), user, conn, limit, ok, want)
	}
}

func mustCount(t *testing.T, c *ConnCounter, user string, want int) {
	t.Helper()
	n, err := c.Count(context.Background(), user)
	if err != nil {
		t.Fatalf("Count(%s): %v", user, err)
	}
	if n != want {
		t.Fatalf("Count(%s) = %d, want %d", user, n, want)
	}
}

func TestConnCounterLimitAcrossNodes(t *testing.T) {
	url := redistest.Start(t)
	prefix := redistest.Prefix(t, url)
	l := openLog(t, url, prefix, store.Retention{})
	a := NewConnCounter(l.Client(), prefix, "node-a", time.Minute, testLogger(t))
	b := NewConnCounter(l.Client(), prefix, "node-b", time.Minute, testLogger(t))
	ctx := context.Background()

	mustAcquire(t, a, "alice", "c1", 3, true)
	mustAcquire(t, a, "alice", "c2", 3, true)
	mustAcquire(t, b, "alice", "c1", 3, true) // same conn id, other node: another connection
	mustCount(t, a, "alice", 3)
	mustAcquire(t, b, "alice", "c2", 3, false)
	mustAcquire(t, a, "alice", "c3", 3, false)
	mustAcquire(t, a, "alice", "c1", 3, true) // already counted
	mustAcquire(t, b, "bob", "c1", 3, true)   // other users are unaffected
	mustCount(t, b, "bob", 1)

	if err := a.Release(ctx, "alice", "c1"); err != nil {
		t.Fatal(err)
	}
	mustCount(t, b, "alice", 2)
	mustAcquire(t, b, "alice", "c2", 3, true)
	mustAcquire(t, a, "alice", "c4", 3, false)
	mustAcquire(t, a, "alice", "c4", 0, true) // no limit
	mustCount(t, a, "alice", 4)
}

func TestConnCounterDeadNodeExpires(t *testing.T) {
	url := redistest.Start(t)
	prefix := redistest.Prefix(t, url)
	l := openLog(t, url, prefix, store.Retention{})
	const ttl = time.Second
	dead := NewConnCounter(l.Client(), prefix, "dead", ttl, testLogger(t))
	live := NewConnCounter(l.Client(), prefix, "live", ttl, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); live.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	mustAcquire(t, dead, "carol", "d1", 3, true)
	mustAcquire(t, dead, "carol", "d2", 3, true)
	mustAcquire(t, live, "carol", "l1", 3, true)
	mustAcquire(t, live, "carol", "l2", 3, false)

	// The dead node never refreshes: after ttl only the live node's member,
	// refreshed by Run, is counted.
	time.Sleep(ttl + ttl*6/10)
	mustCount(t, live, "carol", 1)
	mustAcquire(t, live, "carol", "l2", 3, true)
	mustAcquire(t, live, "carol", "l3", 3, true)
	mustAcquire(t, live, "carol", "l4", 3, false)

	// Releasing everything leaves no key behind once the members expire.
	for _, id := range []string{"l1", "l2", "l3"} {
		if err := live.Release(context.Background(), "carol", id); err != nil {
			t.Fatal(err)
		}
	}
	mustCount(t, live, "carol", 0)
}

func TestConnCounterRefreshReAddsAndForgetsReleased(t *testing.T) {
	url := redistest.Start(t)
	prefix := redistest.Prefix(t, url)
	l := openLog(t, url, prefix, store.Retention{})
	c := NewConnCounter(l.Client(), prefix, "n", time.Second, testLogger(t))
	ctx := context.Background()
	mustAcquire(t, c, "dan", "1", 5, true)
	mustAcquire(t, c, "dan", "2", 5, true)
	time.Sleep(1200 * time.Millisecond) // both expired, as after a Redis outage
	mustCount(t, c, "dan", 0)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	mustCount(t, c, "dan", 2)

	// A member released while a refresh is in flight does not come back.
	snap := c.snapshot()
	if err := c.Release(ctx, "dan", "1"); err != nil {
		t.Fatal(err)
	}
	// Replay the race by hand: the refresh of the old snapshot lands after
	// the ZREM, then removeReleased repairs it.
	res := refreshScript.Exec(ctx, c.client, []string{c.key("dan")}, []string{c.ttlMs, c.member("1"), c.member("2")})
	if err := res.Error(); err != nil {
		t.Fatal(err)
	}
	mustCount(t, c, "dan", 2)
	c.removeReleased(ctx, snap)
	mustCount(t, c, "dan", 1)
}

func TestConnCounterUnavailable(t *testing.T) {
	srv := redistest.StartServer(t)
	l := openLog(t, srv.URL(), "", store.Retention{})
	c := NewConnCounter(l.Client(), "", "", time.Minute, testLogger(t))
	if c.NodeID() == "" {
		t.Fatal("no node id was made")
	}
	srv.Kill()
	if _, err := c.Acquire(context.Background(), "erin", "1", 3); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Acquire with Redis down: %v, want ErrUnavailable", err)
	}
}
