package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/knowledgehub/realtime/internal/store"
)

const (
	// DefaultConnTTL is how long a node's connections stay counted after the
	// node stops refreshing them (it crashed) when NewConnCounter is given no
	// ttl.
	DefaultConnTTL = 30 * time.Second
	// refreshBatch bounds the scripts of one refresh round trip.
	refreshBatch = 1000
	// refreshMembers bounds the members one refresh script names.
	refreshMembers = 500
)

// ConnCounter counts a user's live connections across all nodes sharing the
// Redis, for max_connections_per_user. Each user has a sorted set
// <prefix>:conns:<user> whose members are <nodeID>:<connID> and whose scores
// are expiry times (Redis clock, Unix ms). Run refreshes this node's members,
// so the members of a node that crashed expire after ttl.
//
// It is safe for concurrent use.
type ConnCounter struct {
	client rueidis.Client
	prefix string
	node   string
	ttl    time.Duration
	ttlMs  string
	logger *slog.Logger

	mu    sync.Mutex
	conns map[string]map[string]struct{} // user -> connIDs counted for this node
}

// NewConnCounter returns a counter that keeps its sets in the Redis of
// client (share a Log's with Log.Client) under prefix (DefaultPrefix when
// empty). nodeID names this node among those sharing the Redis; when empty a
// random one is made. ttl (DefaultConnTTL when not positive) is how long a
// member stays counted without a refresh. A nil logger means slog.Default().
func NewConnCounter(client rueidis.Client, prefix, nodeID string, ttl time.Duration, logger *slog.Logger) *ConnCounter {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if nodeID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
		nodeID = hex.EncodeToString(b[:])
	}
	if ttl <= 0 {
		ttl = DefaultConnTTL
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &ConnCounter{
		client: client,
		prefix: prefix,
		node:   nodeID,
		ttl:    ttl,
		ttlMs:  strconv.FormatInt(max(ttl.Milliseconds(), 1), 10),
		logger: logger,
		conns:  make(map[string]map[string]struct{}),
	}
}

// NodeID returns the name of this node in the members it writes.
func (c *ConnCounter) NodeID() string { return c.node }

// Acquire counts connection connID of user when the user has fewer than
// limit live connections on all nodes (limit <= 0: no limit), atomically:
// expired members are dropped, the rest counted, and connID added only below
// the limit. It reports whether connID is counted; acquiring a connID that
// is already counted succeeds. An error wraps store.ErrUnavailable when
// Redis cannot be reached: whether to admit the connection then is the
// caller's choice.
func (c *ConnCounter) Acquire(ctx context.Context, user, connID string, limit int) (ok bool, err error) {
	ctx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	n, err := acquireScript.Exec(ctx, c.client, []string{c.key(user)},
		[]string{c.member(connID), strconv.Itoa(limit), c.ttlMs}).AsInt64()
	if err != nil {
		return false, fmt.Errorf("redis conn count: acquire for user %q: %w: %w", user, store.ErrUnavailable, err)
	}
	if n != 1 {
		return false, nil
	}
	c.mu.Lock()
	set := c.conns[user]
	if set == nil {
		set = make(map[string]struct{})
		c.conns[user] = set
	}
	set[connID] = struct{}{}
	c.mu.Unlock()
	return true, nil
}

// Release stops counting connection connID of user. The connection is
// forgotten locally even when Redis cannot be reached; its member then
// expires after ttl.
func (c *ConnCounter) Release(ctx context.Context, user, connID string) error {
	c.mu.Lock()
	if set := c.conns[user]; set != nil {
		delete(set, connID)
		if len(set) == 0 {
			delete(c.conns, user)
		}
	}
	c.mu.Unlock()
	ctx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	if err := c.client.Do(ctx, c.client.B().Zrem().Key(c.key(user)).Member(c.member(connID)).Build()).Error(); err != nil {
		return fmt.Errorf("redis conn count: release for user %q: %w: %w", user, store.ErrUnavailable, err)
	}
	return nil
}

// Count returns the live connections of user on all nodes.
func (c *ConnCounter) Count(ctx context.Context, user string) (int, error) {
	ctx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	n, err := countScript.Exec(ctx, c.client, []string{c.key(user)}, nil).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("redis conn count: count for user %q: %w: %w", user, store.ErrUnavailable, err)
	}
	return int(n), nil
}

// Run refreshes the expiry of this node's members every ttl/3 until ctx is
// done: one script per user, pipelined, up to 1000 users per round trip. A
// member that expired while Redis was unreachable is counted again. Run
// blocks; the caller owns its goroutine.
func (c *ConnCounter) Run(ctx context.Context) {
	tick := time.NewTicker(c.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := c.Refresh(ctx); err != nil && ctx.Err() == nil {
				c.logger.Warn("redis conn count: refresh failed; this node's connections expire unless a later refresh succeeds",
					"err", err, "ttl", c.ttl)
			}
		}
	}
}

// Refresh renews the expiry of every member this node holds, once. Run calls
// it periodically; it is exported for tests and for a refresh on demand.
func (c *ConnCounter) Refresh(ctx context.Context) error {
	snapshot := c.snapshot()
	if len(snapshot) == 0 {
		return nil
	}
	execs := make([]rueidis.LuaExec, 0, len(snapshot))
	for user, connIDs := range snapshot {
		for start := 0; start < len(connIDs); start += refreshMembers {
			end := min(start+refreshMembers, len(connIDs))
			args := make([]string, 0, 1+end-start)
			args = append(args, c.ttlMs)
			for _, id := range connIDs[start:end] {
				args = append(args, c.member(id))
			}
			execs = append(execs, rueidis.LuaExec{Keys: []string{c.key(user)}, Args: args})
		}
	}
	var failed error
	for start := 0; start < len(execs); start += refreshBatch {
		end := min(start+refreshBatch, len(execs))
		batchCtx, cancel := withTimeout(ctx, opTimeout)
		for _, res := range refreshScript.ExecMulti(batchCtx, c.client, execs[start:end]...) {
			if err := res.Error(); err != nil && failed == nil {
				failed = err
			}
		}
		cancel()
	}
	// A connection released while the refresh was in flight may have been
	// added back after its ZREM: remove it again.
	c.removeReleased(ctx, snapshot)
	if failed != nil {
		return fmt.Errorf("redis conn count: refresh %d users: %w: %w", len(snapshot), store.ErrUnavailable, failed)
	}
	return nil
}

// snapshot copies the connections this node holds, by user.
func (c *ConnCounter) snapshot() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string][]string, len(c.conns))
	for user, set := range c.conns {
		ids := make([]string, 0, len(set))
		for id := range set {
			ids = append(ids, id)
		}
		out[user] = ids
	}
	return out
}

// removeReleased deletes the members of snapshot that are no longer held.
func (c *ConnCounter) removeReleased(ctx context.Context, snapshot map[string][]string) {
	var cmds rueidis.Commands
	c.mu.Lock()
	for user, ids := range snapshot {
		set := c.conns[user]
		for _, id := range ids {
			if _, held := set[id]; !held {
				cmds = append(cmds, c.client.B().Zrem().Key(c.key(user)).Member(c.member(id)).Build())
			}
		}
	}
	c.mu.Unlock()
	if len(cmds) == 0 {
		return
	}
	ctx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	for _, res := range c.client.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			c.logger.Debug("redis conn count: remove a released connection", "err", err)
		}
	}
}

func (c *ConnCounter) key(user string) string { return c.prefix + ":conns:" + user }

func (c *ConnCounter) member(connID string) string { return c.node + ":" + connID }
