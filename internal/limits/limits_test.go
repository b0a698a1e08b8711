package limits

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is an injectable clock that only moves when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// step is one connection attempt of a scenario.
type step struct {
	advance time.Duration // move the clock first
	ip      string
	user    string
	reason  string        // "" = admitted
	retry   time.Duration // expected RetryAfter when rejected
	release bool          // release the ticket at once
}

func TestAdmit(t *testing.T) {
	const countRetry = 5 * time.Second
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{
			name: "unlimited",
			cfg:  Config{},
			steps: []step{
				{ip: "1.1.1.1", user: "alice"}, {ip: "1.1.1.1", user: "alice"}, {ip: "1.1.1.1", user: "alice"},
			},
		},
		{
			name: "max_connections",
			cfg:  Config{MaxConnections: 2},
			steps: []step{
				{ip: "1.1.1.1"}, {ip: "2.2.2.2", user: "bob"},
				{ip: "3.3.3.3", reason: ReasonMaxConnections, retry: countRetry},
				{ip: "3.3.3.3", user: "carol", reason: ReasonMaxConnections, retry: countRetry},
			},
		},
		{
			name: "max_connections frees on release",
			cfg:  Config{MaxConnections: 1},
			steps: []step{
				{ip: "1.1.1.1", release: true}, {ip: "2.2.2.2"},
				{ip: "3.3.3.3", reason: ReasonMaxConnections, retry: countRetry},
			},
		},
		{
			name: "max_connections_per_ip",
			cfg:  Config{MaxPerIP: 2},
			steps: []step{
				{ip: "1.1.1.1"}, {ip: "1.1.1.1", user: "alice"},
				{ip: "1.1.1.1", user: "bob", reason: ReasonMaxConnectionsPerIP, retry: countRetry},
				{ip: "2.2.2.2"},
				{ip: "", user: "bob"}, // no address: per-IP limits do not apply
			},
		},
		{
			name: "max_connections_per_ip groups an IPv6 /64",
			cfg:  Config{MaxPerIP: 2},
			steps: []step{
				{ip: "2001:db8:1:2::1"}, {ip: "2001:db8:1:2:ffff::9"},
				{ip: "2001:db8:1:2::abcd", reason: ReasonMaxConnectionsPerIP, retry: countRetry},
				{ip: "2001:db8:1:3::1"},
				{ip: "::ffff:1.2.3.4"}, {ip: "1.2.3.4"},
				{ip: "1.2.3.4", reason: ReasonMaxConnectionsPerIP, retry: countRetry},
			},
		},
		{
			name: "IPv6Prefix 128 counts addresses",
			cfg:  Config{MaxPerIP: 1, IPv6Prefix: 128},
			steps: []step{
				{ip: "2001:db8::1"}, {ip: "2001:db8::2"},
				{ip: "2001:db8::1", reason: ReasonMaxConnectionsPerIP, retry: countRetry},
			},
		},
		{
			name: "connect_rate_per_ip",
			cfg:  Config{RatePerIP: 1}, // burst 2
			steps: []step{
				{ip: "1.1.1.1", release: true}, {ip: "1.1.1.1", release: true},
				{ip: "1.1.1.1", reason: ReasonConnectRatePerIP, retry: time.Second},
				{ip: "2.2.2.2"},
				{advance: 500 * time.Millisecond, ip: "1.1.1.1", reason: ReasonConnectRatePerIP, retry: time.Second},
				{advance: 500 * time.Millisecond, ip: "1.1.1.1"},
				{ip: "1.1.1.1", reason: ReasonConnectRatePerIP, retry: time.Second},
			},
		},
		{
			name: "connect_rate_per_ip slow rate: Retry-After is the time to a token",
			cfg:  Config{RatePerIP: 0.1}, // burst 1
			steps: []step{
				{ip: "1.1.1.1"},
				{ip: "1.1.1.1", reason: ReasonConnectRatePerIP, retry: 10 * time.Second},
				{advance: 4 * time.Second, ip: "1.1.1.1", reason: ReasonConnectRatePerIP, retry: 6 * time.Second},
				{advance: 6 * time.Second, ip: "1.1.1.1"},
			},
		},
		{
			name: "max_connections_per_user",
			cfg:  Config{MaxPerUser: 1},
			steps: []step{
				{ip: "1.1.1.1", user: "alice"},
				{ip: "2.2.2.2", user: "alice", reason: ReasonMaxConnectionsPerUser, retry: countRetry},
				{ip: "2.2.2.2", user: "bob"},
				{ip: "2.2.2.2"}, {ip: "2.2.2.2"}, // anonymous: not counted per user
			},
		},
		{
			name: "connect_rate_per_user",
			cfg:  Config{RatePerUser: 2}, // burst 4
			steps: []step{
				{ip: "1.1.1.1", user: "alice", release: true}, {ip: "2.2.2.2", user: "alice", release: true},
				{ip: "3.3.3.3", user: "alice", release: true}, {ip: "4.4.4.4", user: "alice", release: true},
				{ip: "5.5.5.5", user: "alice", reason: ReasonConnectRatePerUser, retry: time.Second},
				{ip: "5.5.5.5"}, {ip: "5.5.5.5"}, {ip: "5.5.5.5"}, {ip: "5.5.5.5"}, {ip: "5.5.5.5"},
				{advance: 500 * time.Millisecond, ip: "5.5.5.5", user: "alice"},
			},
		},
		{
			name: "order: node total before per-IP",
			cfg:  Config{MaxConnections: 1, MaxPerIP: 1},
			steps: []step{
				{ip: "1.1.1.1"},
				{ip: "1.1.1.1", reason: ReasonMaxConnections, retry: countRetry},
			},
		},
		{
			name: "order: per-IP count before per-IP rate",
			cfg:  Config{MaxPerIP: 1, RatePerIP: 0.5},
			steps: []step{
				{ip: "1.1.1.1"},
				{ip: "1.1.1.1", reason: ReasonMaxConnectionsPerIP, retry: countRetry},
			},
		},
		{
			name: "order: per-IP rate before per-user count",
			cfg:  Config{RatePerIP: 0.5, MaxPerUser: 1},
			steps: []step{
				{ip: "1.1.1.1", user: "alice"},
				{ip: "1.1.1.1", user: "alice", reason: ReasonConnectRatePerIP, retry: 2 * time.Second},
				{ip: "2.2.2.2", user: "alice", reason: ReasonMaxConnectionsPerUser, retry: countRetry},
			},
		},
		{
			name: "order: per-user count before per-user rate",
			cfg:  Config{MaxPerUser: 1, RatePerUser: 0.5},
			steps: []step{
				{ip: "1.1.1.1", user: "alice"},
				{ip: "2.2.2.2", user: "alice", reason: ReasonMaxConnectionsPerUser, retry: countRetry},
			},
		},
		{
			name: "custom count Retry-After",
			cfg:  Config{MaxPerUser: 1, CountRetryAfter: 30 * time.Second},
			steps: []step{
				{user: "alice"},
				{user: "alice", reason: ReasonMaxConnectionsPerUser, retry: 30 * time.Second},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newClock()
			cfg := tt.cfg
			cfg.Now = clock.Now
			l := New(cfg)
			var held []*Ticket
			for i, s := range tt.steps {
				clock.Advance(s.advance)
				tk, rej := l.Admit(s.ip, s.user)
				if s.reason == "" {
					if rej != nil || tk == nil {
						t.Fatalf("step %d (%s, %q): rejected: %+v", i, s.ip, s.user, rej)
					}
					if s.release {
						tk.Release()
					} else {
						held = append(held, tk)
					}
					continue
				}
				if rej == nil || tk != nil {
					t.Fatalf("step %d (%s, %q): admitted, want %s", i, s.ip, s.user, s.reason)
				}
				if rej.Reason != s.reason || rej.RetryAfter != s.retry {
					t.Fatalf("step %d: got %s retry %v, want %s retry %v", i, rej.Reason, rej.RetryAfter, s.reason, s.retry)
				}
				if rej.RetryAfter < time.Second {
					t.Fatalf("step %d: RetryAfter %v < 1s", i, rej.RetryAfter)
				}
				if !strings.Contains(rej.Message, rej.Reason+" = ") {
					t.Fatalf("step %d: message %q does not name the limit and its value", i, rej.Message)
				}
			}
			if got := l.Counts(); got != len(held) {
				t.Fatalf("Counts() = %d, want %d", got, len(held))
			}
			for _, tk := range held {
				tk.Release()
			}
			if got := l.Counts(); got != 0 {
				t.Fatalf("Counts() after release = %d", got)
			}
			clock.Advance(time.Hour)
			l.sweep()
			if n := l.ips.len() + l.users.len(); n != 0 {
				t.Fatalf("%d keys left after releasing everything and sweeping", n)
			}
		})
	}
}

func TestRejectedAttemptConsumesNothing(t *testing.T) {
	clock := newClock()
	l := New(Config{RatePerIP: 1, MaxPerIP: 10, MaxPerUser: 1, MaxConnections: 10, Now: clock.Now})
	const ip = "1.1.1.1"
	a, rej := l.Admit(ip, "alice")
	if rej != nil {
		t.Fatal(rej)
	}
	// Rejected by the per-user count after the per-IP checks passed: the
	// per-IP count and token and the node total are given back.
	if _, rej := l.Admit(ip, "alice"); rej == nil || rej.Reason != ReasonMaxConnectionsPerUser {
		t.Fatalf("got %+v, want %s", rej, ReasonMaxConnectionsPerUser)
	}
	if got := l.ips.count(ip); got != 1 {
		t.Fatalf("per-IP count = %d, want 1", got)
	}
	if got := l.Counts(); got != 1 {
		t.Fatalf("total = %d, want 1", got)
	}
	// One token is left of the burst of 2.
	b, rej := l.Admit(ip, "bob")
	if rej != nil {
		t.Fatalf("token not refunded: %+v", rej)
	}
	if _, rej := l.Admit(ip, "carol"); rej == nil || rej.Reason != ReasonConnectRatePerIP {
		t.Fatalf("got %+v, want %s", rej, ReasonConnectRatePerIP)
	}
	if got := l.ips.count(ip); got != 2 {
		t.Fatalf("per-IP count = %d, want 2", got)
	}
	if got := l.users.count("carol"); got != 0 {
		t.Fatalf("carol count = %d, want 0", got)
	}
	a.Release()
	b.Release()
	if l.Counts() != 0 || l.ips.count(ip) != 0 || l.users.count("alice") != 0 {
		t.Fatal("counts not back to zero")
	}
}

func TestReleaseIdempotent(t *testing.T) {
	l := New(Config{MaxPerIP: 1, MaxPerUser: 1})
	tk, rej := l.Admit("1.1.1.1", "alice")
	if rej != nil {
		t.Fatal(rej)
	}
	tk.Release()
	tk.Release()
	tk.Release()
	var nilTicket *Ticket
	nilTicket.Release()
	if l.Counts() != 0 || l.ips.count("1.1.1.1") != 0 || l.users.count("alice") != 0 {
		t.Fatalf("counts after repeated release: total %d", l.Counts())
	}
	// Without rate buckets, a key is forgotten as soon as it has no
	// connection left.
	if n := l.ips.len() + l.users.len(); n != 0 {
		t.Fatalf("%d keys left", n)
	}
	if _, rej := l.Admit("1.1.1.1", "alice"); rej != nil {
		t.Fatalf("not freed: %+v", rej)
	}
}

func TestConcurrentCountsExact(t *testing.T) {
	const (
		workers  = 64
		rounds   = 300
		perIP    = 5
		perUser  = 3
		maxTotal = 40
	)
	l := New(Config{MaxConnections: maxTotal, MaxPerIP: perIP, MaxPerUser: perUser, RatePerIP: 1e6, RatePerUser: 1e6})
	ips := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2", "10.0.0.4"}
	users := []string{"", "alice", "bob", "carol", "dave"}
	var liveIP, liveUser sync.Map // key -> *atomic.Int64, held tickets
	var live atomic.Int64
	counter := func(m *sync.Map, k string) *atomic.Int64 {
		v, _ := m.LoadOrStore(k, new(atomic.Int64))
		return v.(*atomic.Int64)
	}
	var violations atomic.Int64
	var admitted, rejected atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var mine []*Ticket
			var mineKeys [][2]string
			for range rounds {
				if len(mine) > 0 && rng.IntN(2) == 0 {
					i := rng.IntN(len(mine))
					k := mineKeys[i]
					counter(&liveIP, l.ipKey(k[0])).Add(-1)
					if k[1] != "" {
						counter(&liveUser, k[1]).Add(-1)
					}
					live.Add(-1)
					mine[i].Release()
					if rng.IntN(4) == 0 {
						mine[i].Release() // double release must not matter
					}
					mine = append(mine[:i], mine[i+1:]...)
					mineKeys = append(mineKeys[:i], mineKeys[i+1:]...)
					continue
				}
				ip, user := ips[rng.IntN(len(ips))], users[rng.IntN(len(users))]
				tk, rej := l.Admit(ip, user)
				if rej != nil {
					rejected.Add(1)
					continue
				}
				admitted.Add(1)
				if counter(&liveIP, l.ipKey(ip)).Add(1) > perIP {
					violations.Add(1)
				}
				if user != "" && counter(&liveUser, user).Add(1) > perUser {
					violations.Add(1)
				}
				if live.Add(1) > maxTotal {
					violations.Add(1)
				}
				mine = append(mine, tk)
				mineKeys = append(mineKeys, [2]string{ip, user})
			}
			for i, tk := range mine {
				counter(&liveIP, l.ipKey(mineKeys[i][0])).Add(-1)
				if u := mineKeys[i][1]; u != "" {
					counter(&liveUser, u).Add(-1)
				}
				live.Add(-1)
				tk.Release()
			}
		}()
	}
	wg.Wait()
	if v := violations.Load(); v != 0 {
		t.Errorf("%d limit violations observed", v)
	}
	if admitted.Load() == 0 || rejected.Load() == 0 {
		t.Errorf("admitted %d, rejected %d: the test does not exercise both", admitted.Load(), rejected.Load())
	}
	if got := l.Counts(); got != 0 {
		t.Fatalf("Counts() = %d after everything was released", got)
	}
	for _, ip := range ips {
		if n := l.ips.count(l.ipKey(ip)); n != 0 {
			t.Errorf("ip %s count %d", ip, n)
		}
	}
	for _, u := range users[1:] {
		if n := l.users.count(u); n != 0 {
			t.Errorf("user %s count %d", u, n)
		}
	}
}

func TestRefill(t *testing.T) {
	clock := newClock()
	l := New(Config{RatePerIP: 10, Now: clock.Now}) // burst 20
	admit := func(n int) {
		t.Helper()
		for i := range n {
			tk, rej := l.Admit("1.1.1.1", "")
			if rej != nil {
				t.Fatalf("attempt %d of %d rejected: %+v", i+1, n, rej)
			}
			tk.Release()
		}
		if _, rej := l.Admit("1.1.1.1", ""); rej == nil || rej.Reason != ReasonConnectRatePerIP {
			t.Fatalf("attempt %d admitted, want %s", n+1, ReasonConnectRatePerIP)
		}
	}
	admit(20)
	clock.Advance(100 * time.Millisecond)
	admit(1)
	clock.Advance(350 * time.Millisecond)
	admit(3)
	clock.Advance(time.Hour) // the bucket holds no more than the burst
	admit(20)
}

func TestEviction(t *testing.T) {
	clock := newClock()
	l := New(Config{RatePerIP: 1, RatePerUser: 1, MaxPerIP: 100, Now: clock.Now})
	const n = 40_000 // > numShards*shrinkMin, so that shards get rebuilt
	for i := range n {
		ip := fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)
		tk, rej := l.Admit(ip, fmt.Sprintf("user%d", i))
		if rej != nil {
			t.Fatal(rej)
		}
		tk.Release()
	}
	held, rej := l.Admit("192.0.2.1", "holder")
	if rej != nil {
		t.Fatal(rej)
	}
	if got := l.ips.len(); got != n+1 {
		t.Fatalf("ips = %d, want %d", got, n+1)
	}
	l.sweep() // buckets not full yet: nothing to evict
	if got := l.ips.len(); got != n+1 {
		t.Fatalf("ips after early sweep = %d, want %d", got, n+1)
	}
	clock.Advance(time.Second) // refills one token: full again (burst 2, one taken)
	l.sweep()
	if got, gotU := l.ips.len(), l.users.len(); got != 1 || gotU != 1 {
		t.Fatalf("after sweep: %d ips, %d users, want only the live one", got, gotU)
	}
	for i := range l.ips.shards {
		if p := l.ips.shards[i].peak; p > 1 {
			t.Fatalf("shard %d not rebuilt, peak %d", i, p)
		}
	}
	held.Release()
	clock.Advance(time.Second)
	l.sweep()
	if got := l.ips.len() + l.users.len(); got != 0 {
		t.Fatalf("%d keys left", got)
	}
}

func TestRunStops(t *testing.T) {
	clock := newClock()
	l := New(Config{RatePerIP: 1, SweepInterval: time.Millisecond, Now: clock.Now})
	tk, _ := l.Admit("1.1.1.1", "")
	tk.Release()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	clock.Advance(time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for l.ips.len() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not sweep")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestRejection(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want int
	}{{time.Second, 1}, {1500 * time.Millisecond, 2}, {5 * time.Second, 5}, {0, 1}} {
		r := &Rejection{Reason: "x", Message: "m", RetryAfter: tt.d}
		if got := r.RetryAfterSeconds(); got != tt.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
	var err error = &Rejection{Message: "too many"}
	if err.Error() != "too many" {
		t.Error("Error() is not the message")
	}
}

// fakeCluster is a UserCounter over a map.
type fakeCluster struct {
	mu       sync.Mutex
	conns    map[string]map[string]bool
	fail     bool
	released []string
}

func (f *fakeCluster) Acquire(_ context.Context, user, connID string, limit int) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return false, errors.New("redis down")
	}
	if f.conns == nil {
		f.conns = map[string]map[string]bool{}
	}
	if f.conns[user] == nil {
		f.conns[user] = map[string]bool{}
	}
	if len(f.conns[user]) >= limit {
		return false, nil
	}
	f.conns[user][connID] = true
	return true, nil
}

func (f *fakeCluster) Release(_ context.Context, user, connID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, connID)
	delete(f.conns[user], connID)
	return nil
}

func TestUserCounter(t *testing.T) {
	cluster := &fakeCluster{}
	var errs []error
	l := New(Config{MaxPerUser: 2, RatePerUser: 100, RatePerIP: 100, UserCounter: cluster, OnError: func(err error) { errs = append(errs, err) }})
	// Another node already holds one of alice's connections.
	if ok, _ := cluster.Acquire(context.Background(), "alice", "elsewhere", 2); !ok {
		t.Fatal("setup")
	}
	a, rej := l.AdmitContext(context.Background(), "1.1.1.1", "alice", "conn-1")
	if rej != nil {
		t.Fatal(rej)
	}
	_, rej = l.Admit("1.1.1.1", "alice")
	if rej == nil || rej.Reason != ReasonMaxConnectionsPerUser || !strings.Contains(rej.Message, "cluster") {
		t.Fatalf("got %+v, want cluster-wide %s", rej, ReasonMaxConnectionsPerUser)
	}
	if l.Counts() != 1 || l.users.count("alice") != 1 || l.ips.count("1.1.1.1") != 1 {
		t.Fatal("a rejection by the cluster count kept local counts")
	}
	// Anonymous connections never reach the cluster count.
	anon, rej := l.Admit("1.1.1.1", "")
	if rej != nil {
		t.Fatal(rej)
	}
	anon.Release()
	a.Release()
	a.Release()
	if len(cluster.released) != 1 || cluster.released[0] != "conn-1" {
		t.Fatalf("cluster releases %q, want [conn-1]", cluster.released)
	}
	// A failing cluster count admits on the local limits and reports.
	cluster.fail = true
	b, rej := l.Admit("1.1.1.1", "alice")
	if rej != nil {
		t.Fatalf("rejected while the cluster count is down: %+v", rej)
	}
	if len(errs) != 1 {
		t.Fatalf("OnError called %d times, want 1", len(errs))
	}
	b.Release() // not acquired in the cluster: no cluster release
	if len(cluster.released) != 1 {
		t.Fatalf("released a connection the cluster never held")
	}
}
