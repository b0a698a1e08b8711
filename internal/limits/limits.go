// Package limits admits or refuses new connections (WebSocket upgrades and
// SSE streams) before any work is done for them, SPEC §8: the node total
// (max_connections), concurrent connections per user and per client IP
// (max_connections_per_user, max_connections_per_ip) and the rate of new
// connections per IP and per user (connect_rate_per_ip,
// connect_rate_per_user: token buckets holding up to twice the rate).
//
// It also finds the client address of a request behind trusted reverse
// proxies (ClientIP, trusted_proxies).
//
// State is kept per key (client IP, user), never per connection: a counted
// connection costs its Ticket and nothing else, no goroutine, no timer. The
// maps are sharded, and hold only keys with live connections or with a rate
// bucket that has not refilled yet; Run sweeps the rest away, which loses
// nothing since a full bucket is what a new key gets anyway.
package limits

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Rejection reasons, the values of Rejection.Reason; they are the names of
// the settings that caused the rejection.
const (
	ReasonMaxConnections        = "max_connections"
	ReasonMaxConnectionsPerIP   = "max_connections_per_ip"
	ReasonMaxConnectionsPerUser = "max_connections_per_user"
	ReasonConnectRatePerIP      = "connect_rate_per_ip"
	ReasonConnectRatePerUser    = "connect_rate_per_user"
)

// Defaults used when the corresponding Config field is zero.
const (
	// DefaultCountRetryAfter is the Retry-After of a rejection by a
	// connection count (when no rate is involved, there is no exact time at
	// which a slot frees up).
	DefaultCountRetryAfter = 5 * time.Second
	// DefaultSweepInterval is how often Run evicts idle keys.
	DefaultSweepInterval = 5 * time.Second
	// DefaultIPv6Prefix is the prefix length under which IPv6 clients share
	// their per-IP limits: one /64 is one subscriber line, and its owner
	// can use any of its 2^64 addresses.
	DefaultIPv6Prefix = 64
	// DefaultUserCounterTimeout bounds each call to a UserCounter.
	DefaultUserCounterTimeout = 2 * time.Second
)

// Config holds the limits. For every limit, zero (or a negative value)
// means unlimited.
type Config struct {
	// MaxConnections is the number of concurrent connections of this node
	// (max_connections).
	MaxConnections int
	// MaxPerUser is the number of concurrent connections of one user
	// (max_connections_per_user); anonymous connections are not counted.
	MaxPerUser int
	// MaxPerIP is the number of concurrent connections from one client IP
	// (max_connections_per_ip).
	MaxPerIP int
	// RatePerIP is the number of new connections per second from one client
	// IP (connect_rate_per_ip), with a burst of twice that (at least 1).
	RatePerIP float64
	// RatePerUser is the number of new connections per second of one user
	// (connect_rate_per_user), with a burst of twice that (at least 1).
	RatePerUser float64

	// IPv6Prefix is the prefix length that groups IPv6 addresses into one
	// per-IP key: 0 means DefaultIPv6Prefix (64), 128 counts each address
	// on its own. IPv4 addresses are always counted one by one.
	IPv6Prefix int
	// CountRetryAfter is the Retry-After of a rejection by a connection
	// count; 0 means DefaultCountRetryAfter. Values below 1s are raised to 1s.
	CountRetryAfter time.Duration
	// SweepInterval is how often Run evicts idle keys; 0 means
	// DefaultSweepInterval.
	SweepInterval time.Duration

	// UserCounter, when set and MaxPerUser > 0, also enforces MaxPerUser
	// across the cluster (after the node-local check passed).
	UserCounter UserCounter
	// UserCounterTimeout bounds each UserCounter call; 0 means
	// DefaultUserCounterTimeout.
	UserCounterTimeout time.Duration
	// OnError, when set, is told about UserCounter failures. A failing
	// UserCounter does not refuse connections (the node-local limits still
	// apply): availability wins over the cluster-wide count.
	OnError func(error)

	// Now is the clock, for tests; nil means time.Now.
	Now func() time.Time
}

// UserCounter counts a user's connections across all nodes of a cluster
// (implemented over Redis). Acquire records connection connID of user and
// reports whether the user then holds no more than limit connections (when
// it does not, nothing is recorded). Release forgets connID; it is called
// exactly once for every successful Acquire.
type UserCounter interface {
	Acquire(ctx context.Context, user, connID string, limit int) (bool, error)
	Release(ctx context.Context, user, connID string) error
}

// Rejection tells why a connection was refused: the answer is 429 with a
// Retry-After header.
type Rejection struct {
	// Reason is the name of the limit: "max_connections",
	// "max_connections_per_ip", "max_connections_per_user",
	// "connect_rate_per_ip" or "connect_rate_per_user".
	Reason string
	// Message is human readable and names the limit and its value.
	Message string
	// RetryAfter is at least 1s: for a rate, the time until a token is
	// available; for a count, Config.CountRetryAfter.
	RetryAfter time.Duration
}

// Error returns the Message, so that a Rejection can be used as an error.
func (r *Rejection) Error() string { return r.Message }

// RetryAfterSeconds returns RetryAfter in whole seconds, rounded up, at
// least 1: the value of the Retry-After header.
func (r *Rejection) RetryAfterSeconds() int {
	s := int((r.RetryAfter + time.Second - 1) / time.Second)
	return max(s, 1)
}

// Ticket is an admitted connection. Release it exactly once when the
// connection ends; further calls do nothing.
type Ticket struct {
	l        *Limiter
	ipKey    string // "" when per-IP limits do not apply
	user     string // "" when per-user limits do not apply
	connID   string // set when the UserCounter acquired it
	released atomic.Bool
}

// Release gives back the connection's place in every count. It is
// idempotent and safe on a nil Ticket. When a UserCounter holds the
// connection, Release waits for it (at most Config.UserCounterTimeout).
func (t *Ticket) Release() {
	if t == nil || !t.released.CompareAndSwap(false, true) {
		return
	}
	l := t.l
	now := l.now()
	if t.ipKey != "" {
		l.ips.release(t.ipKey, now)
	}
	if t.user != "" {
		l.users.release(t.user, now)
	}
	l.total.Add(-1)
	if t.connID != "" {
		ctx, cancel := context.WithTimeout(context.Background(), l.ucTimeout)
		err := l.cfg.UserCounter.Release(ctx, t.user, t.connID)
		cancel()
		if err != nil {
			l.reportError(fmt.Errorf("limits: releasing connection of user %q in the cluster-wide count: %w", t.user, err))
		}
	}
}

// Limiter admits connections. It is safe for concurrent use.
type Limiter struct {
	cfg        Config
	clock      func() time.Time
	epoch      time.Time
	total      atomic.Int64
	ips        keyed
	users      keyed
	countRetry time.Duration
	sweepEvery time.Duration
	ucTimeout  time.Duration
	v6Bits     int
}

// New returns a Limiter enforcing cfg.
func New(cfg Config) *Limiter {
	l := &Limiter{cfg: cfg, clock: cfg.Now}
	if l.clock == nil {
		l.clock = time.Now
	}
	l.epoch = l.clock()
	l.countRetry = cfg.CountRetryAfter
	if l.countRetry <= 0 {
		l.countRetry = DefaultCountRetryAfter
	}
	l.countRetry = max(l.countRetry, time.Second)
	l.sweepEvery = cfg.SweepInterval
	if l.sweepEvery <= 0 {
		l.sweepEvery = DefaultSweepInterval
	}
	l.ucTimeout = cfg.UserCounterTimeout
	if l.ucTimeout <= 0 {
		l.ucTimeout = DefaultUserCounterTimeout
	}
	l.v6Bits = cfg.IPv6Prefix
	if l.v6Bits <= 0 || l.v6Bits > 128 {
		l.v6Bits = DefaultIPv6Prefix
	}
	seed := maphash.MakeSeed()
	l.ips.init(seed, max(cfg.MaxPerIP, 0), cfg.RatePerIP, ReasonMaxConnectionsPerIP, ReasonConnectRatePerIP, "this IP address", l.countRetry)
	l.users.init(seed, max(cfg.MaxPerUser, 0), cfg.RatePerUser, ReasonMaxConnectionsPerUser, ReasonConnectRatePerUser, "this user", l.countRetry)
	return l
}

// Admit checks every limit for a new connection from client address ip
// (as returned by ClientIP; "" skips the per-IP limits) by user ("" for an
// anonymous connection: the per-user limits are skipped). When admitted, the
// connection is counted and the returned Ticket must be Released when it
// ends; otherwise the Rejection says why and nothing is consumed.
//
// The limits are checked in this order: node total, per-IP count, per-IP
// rate, per-user count, per-user rate, then the cluster-wide UserCounter if
// one is configured.
func (l *Limiter) Admit(ip, user string) (*Ticket, *Rejection) {
	return l.AdmitContext(context.Background(), ip, user, "")
}

// AdmitContext is Admit with a context for the UserCounter call and the id
// under which the UserCounter records the connection (a random one is made
// up when connID is empty).
func (l *Limiter) AdmitContext(ctx context.Context, ip, user, connID string) (*Ticket, *Rejection) {
	if limit := l.cfg.MaxConnections; limit > 0 {
		for {
			n := l.total.Load()
			if n >= int64(limit) {
				return nil, &Rejection{
					Reason:     ReasonMaxConnections,
					Message:    fmt.Sprintf("this server holds too many connections (max_connections = %d); try again later", limit),
					RetryAfter: l.countRetry,
				}
			}
			if l.total.CompareAndSwap(n, n+1) {
				break
			}
		}
	} else {
		l.total.Add(1)
	}

	t := &Ticket{l: l}
	now := l.now()
	if ip != "" && l.ips.active() {
		key := l.ipKey(ip)
		if rej := l.ips.acquire(key, now); rej != nil {
			l.total.Add(-1)
			return nil, rej
		}
		t.ipKey = key
	}
	if user != "" && l.users.active() {
		if rej := l.users.acquire(user, now); rej != nil {
			l.undo(t, now)
			return nil, rej
		}
		t.user = user
	}
	if uc := l.cfg.UserCounter; uc != nil && user != "" && l.cfg.MaxPerUser > 0 {
		if connID == "" {
			connID = randomID()
		}
		cctx, cancel := context.WithTimeout(ctx, l.ucTimeout)
		ok, err := uc.Acquire(cctx, user, connID, l.cfg.MaxPerUser)
		cancel()
		switch {
		case err != nil:
			l.reportError(fmt.Errorf("limits: cluster-wide count of user %q unavailable, admitting on node-local limits: %w", user, err))
		case !ok:
			l.undo(t, now)
			return nil, &Rejection{
				Reason:     ReasonMaxConnectionsPerUser,
				Message:    fmt.Sprintf("too many connections for this user across the cluster (max_connections_per_user = %d)", l.cfg.MaxPerUser),
				RetryAfter: l.countRetry,
			}
		default:
			t.connID = connID
		}
	}
	return t, nil
}

// undo gives back what a rejected attempt took: its counts and its tokens.
func (l *Limiter) undo(t *Ticket, now int64) {
	if t.ipKey != "" {
		l.ips.refund(t.ipKey, now)
	}
	if t.user != "" {
		l.users.refund(t.user, now)
	}
	l.total.Add(-1)
}

// Counts returns the number of connections currently admitted and not yet
// released.
func (l *Limiter) Counts() (total int) { return int(l.total.Load()) }

// Run evicts idle keys (no live connection, rate bucket full again) every
// Config.SweepInterval, so that the maps stay bounded under a flood of
// distinct IPs or users. It returns when ctx is done.
func (l *Limiter) Run(ctx context.Context) {
	t := time.NewTicker(l.sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.sweep()
		}
	}
}

// sweep evicts idle keys once.
func (l *Limiter) sweep() {
	now := l.now()
	l.ips.sweep(now)
	l.users.sweep(now)
}

// now returns the clock in nanoseconds since New (monotonic with time.Now).
func (l *Limiter) now() int64 { return int64(l.clock().Sub(l.epoch)) }

// ipKey maps a client address to its per-IP key: IPv4 (also IPv4-mapped
// IPv6) as is, IPv6 masked to the configured prefix. Anything that is not an
// IP address is used verbatim.
func (l *Limiter) ipKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap().WithZone("")
	if a.Is6() && l.v6Bits < 128 {
		p, _ := a.Prefix(l.v6Bits)
		return p.String()
	}
	return a.String()
}

func (l *Limiter) reportError(err error) {
	if l.cfg.OnError != nil {
		l.cfg.OnError(err)
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// numShards is the number of independently locked parts of each map.
const numShards = 32

// keyed holds the per-key state of one dimension (IPs or users).
//
// The token bucket is kept as a GCRA "theoretical arrival time" (tat): each
// connection pushes tat one emission interval (1/rate) into the future, and
// a connection is allowed while tat stays within tolerance (burst/rate) of
// now. The bucket is full when tat <= now. Integer nanoseconds keep it exact.
type keyed struct {
	seed       maphash.Seed
	maxCount   int
	interval   int64 // nanoseconds per token; 0 = no rate limit
	tolerance  int64 // burst * interval
	ratePerSec float64
	burst      float64
	countRej   Rejection // template
	rateReason string
	what       string
	shards     [numShards]shard
}

type shard struct {
	mu   sync.Mutex
	m    map[string]entry
	peak int      // most keys held since the map was last rebuilt
	_    [40]byte // keep shards on separate cache lines
}

// entry is the state of one key: its live connections and the theoretical
// arrival time of its bucket (nanoseconds since the Limiter's epoch).
type entry struct {
	count int
	tat   int64
}

func (k *keyed) init(seed maphash.Seed, maxCount int, ratePerSec float64, countReason, rateReason, what string, countRetry time.Duration) {
	k.seed, k.maxCount, k.what, k.rateReason = seed, maxCount, what, rateReason
	if ratePerSec > 0 && !math.IsInf(ratePerSec, 0) && !math.IsNaN(ratePerSec) {
		k.ratePerSec = ratePerSec
		k.burst = max(2*ratePerSec, 1)
		k.interval = max(int64(math.Round(float64(time.Second)/ratePerSec)), 1)
		k.tolerance = int64(math.Round(k.burst * float64(k.interval)))
	}
	k.countRej = Rejection{
		Reason:     countReason,
		Message:    fmt.Sprintf("too many connections for %s (%s = %d)", what, countReason, maxCount),
		RetryAfter: countRetry,
	}
	for i := range k.shards {
		k.shards[i].m = make(map[string]entry)
	}
}

// active reports whether any limit of this dimension is set.
func (k *keyed) active() bool { return k.maxCount > 0 || k.interval > 0 }

func (k *keyed) shard(key string) *shard {
	return &k.shards[maphash.String(k.seed, key)%numShards]
}

// idle reports whether e can be forgotten: no live connection and a full
// bucket (which is what a new entry starts with).
func (k *keyed) idle(e entry, now int64) bool {
	return e.count <= 0 && e.tat <= now
}

// acquire counts a connection of key and takes a token, or returns why not
// (consuming nothing).
func (k *keyed) acquire(key string, now int64) *Rejection {
	s := k.shard(key)
	s.mu.Lock()
	e := s.m[key] // a new key: count 0, tat 0 <= now, a full bucket
	if k.maxCount > 0 && e.count >= k.maxCount {
		s.mu.Unlock()
		r := k.countRej
		return &r
	}
	if k.interval > 0 {
		tat := max(e.tat, now) + k.interval
		if tat-now > k.tolerance {
			s.mu.Unlock()
			return k.rateRejection(time.Duration(tat - now - k.tolerance))
		}
		e.tat = tat
	}
	e.count++
	s.m[key] = e
	s.peak = max(s.peak, len(s.m))
	s.mu.Unlock()
	return nil
}

func (k *keyed) rateRejection(wait time.Duration) *Rejection {
	return &Rejection{
		Reason: k.rateReason,
		Message: fmt.Sprintf("too many new connections from %s (%s = %g per second, burst %g)",
			k.what, k.rateReason, k.ratePerSec, k.burst),
		RetryAfter: max(wait, time.Second),
	}
}

// release uncounts a connection of key, forgetting the key when idle.
func (k *keyed) release(key string, now int64) {
	k.update(key, now, false)
}

// refund undoes acquire: uncounts the connection and gives the token back.
func (k *keyed) refund(key string, now int64) {
	k.update(key, now, true)
}

func (k *keyed) update(key string, now int64, refund bool) {
	s := k.shard(key)
	s.mu.Lock()
	if e, ok := s.m[key]; ok {
		e.count--
		if refund && k.interval > 0 {
			e.tat -= k.interval
		}
		if k.idle(e, now) {
			delete(s.m, key)
		} else {
			s.m[key] = e
		}
	}
	s.mu.Unlock()
}

// shrinkMin is the peak size below which a shard's map is never rebuilt.
const shrinkMin = 1024

// sweep forgets idle keys. Go maps keep their memory after deletes, so a
// shard whose map holds less than a quarter of its peak after a flood is
// copied into a new, smaller map.
func (k *keyed) sweep(now int64) {
	for i := range k.shards {
		s := &k.shards[i]
		s.mu.Lock()
		for key, e := range s.m {
			if k.idle(e, now) {
				delete(s.m, key)
			}
		}
		if s.peak >= shrinkMin && len(s.m) < s.peak/4 {
			m := make(map[string]entry, len(s.m))
			for key, e := range s.m {
				m[key] = e
			}
			s.m, s.peak = m, len(m)
		}
		s.mu.Unlock()
	}
}

// len returns the number of keys held.
func (k *keyed) len() int {
	n := 0
	for i := range k.shards {
		s := &k.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// count returns the live connections of key.
func (k *keyed) count(key string) int {
	s := k.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key].count
}
