// Package hub routes accepted events to connections. It follows the event log
// in id order, matches each event against the connections' subscriptions
// through per-user and per-job indexes, and writes the frames each event was
// encoded into once. It knows nothing of the I/O library: connections are
// Sinks.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
	"github.com/knowledgehub/realtime/internal/store"
)

// Config tunes a Hub. Zero fields take the defaults of DefaultConfig.
type Config struct {
	Shards            int           // fan-out workers; default GOMAXPROCS
	PingInterval      time.Duration // WebSocket pings; default 25s
	KeepaliveInterval time.Duration // SSE keepalive comments; default 15s
	ExpiryWarning     time.Duration // token_expiring is sent this long before exp; default 30s
	MaxPending        int           // live events buffered for one client while it replays; default 10000
	MaxJobs           int           // job subscriptions per connection; default 100
	ReplayPage        int           // events read per store call during a replay; default 500
	// NewBatch, when set, gives each fan-out worker a Batch for its live
	// deliveries; it may return nil (batching unavailable), and then every
	// delivery is written at once.
	NewBatch func() Batch
}

func (c Config) withDefaults() Config {
	if c.Shards <= 0 {
		c.Shards = runtime.GOMAXPROCS(0)
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 25 * time.Second
	}
	if c.KeepaliveInterval <= 0 {
		c.KeepaliveInterval = 15 * time.Second
	}
	if c.ExpiryWarning <= 0 {
		c.ExpiryWarning = 30 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 10000
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = 100
	}
	if c.ReplayPage <= 0 {
		c.ReplayPage = 500
	}
	return c
}

// Hub is the routing core of one node.
type Hub struct {
	cfg    Config
	log    store.Log
	obs    Observer
	logger *slog.Logger

	shards  []*shard
	next    atomic.Uint32 // round-robin shard choice
	count   atomic.Int64
	batched atomic.Int32 // fan-out workers running with a Batch
}

// Batched reports how many fan-out workers hand their writes to a Batch
// (Config.NewBatch); 0 when every delivery is written at once.
func (h *Hub) Batched() int { return int(h.batched.Load()) }

// New returns a hub that routes the events of log. obs may be nil.
func New(cfg Config, log store.Log, obs Observer, logger *slog.Logger) *Hub {
	cfg = cfg.withDefaults()
	if obs == nil {
		obs = nopObserver{}
	}
	if logger == nil {
		logger = slog.Default()
	}
	h := &Hub{cfg: cfg, log: log, obs: obs, logger: logger}
	h.shards = make([]*shard, cfg.Shards)
	for i := range h.shards {
		h.shards[i] = newShard(h)
	}
	return h
}

// Observer returns where the hub reports its measurements, for transports
// that end a connection before it reaches the hub.
func (h *Hub) Observer() Observer { return h.obs }

// Config returns the hub's effective configuration.
func (h *Hub) Config() Config { return h.cfg }

// Run follows the log and fans events out until ctx is done. It owns the
// shard workers and the ping loops and returns after they stopped.
func (h *Hub) Run(ctx context.Context) error {
	bounds, err := h.log.Bounds(ctx)
	if err != nil {
		return fmt.Errorf("hub: read log bounds: %w", err)
	}
	var wg sync.WaitGroup
	for _, s := range h.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(ctx)
		}()
	}
	followErr := h.log.Follow(ctx, bounds.Last, h.dispatch)
	wg.Wait()
	if followErr != nil && !errors.Is(followErr, context.Canceled) && !errors.Is(followErr, store.ErrClosed) {
		return fmt.Errorf("hub: follow log: %w", followErr)
	}
	return nil
}

// dispatch hands a batch of events, in id order, to every shard.
func (h *Hub) dispatch(evs []*event.Event) {
	if len(evs) == 0 {
		return
	}
	for _, s := range h.shards {
		s.queue <- evs
	}
}

// Count returns the number of attached clients.
func (h *Hub) Count() int { return int(h.count.Load()) }

// ErrUnknownID is returned for a resume id the hub cannot have issued.
var ErrUnknownID = errors.New("was never issued by this hub (it lies in the future)")

// futureSlack is how far ahead of this node's clock an id may lie and still
// be taken for one issued by another node of the hub whose clock is ahead.
const futureSlack = time.Minute

// CheckResume validates a resume id before the handshake completes. An id
// from the future was never issued: 400. An id past the last one issued but
// not in the future belongs to a history this log no longer has (a restarted
// memory store, a replaced Redis); the client is let in and told about the
// gap, since a browser's EventSource gives up for good on a 400.
func (h *Hub) CheckResume(id event.ID) error {
	if id.Ms > uint64(time.Now().Add(futureSlack).UnixMilli()) {
		return ErrUnknownID
	}
	return nil
}

// NewClient creates a client for a connection that passed its handshake. It
// is not routed to until Attach.
func (h *Hub) NewClient(transport string, sub Subscription, expires time.Time, sink Sink) *Client {
	return &Client{Transport: transport, hub: h, sub: sub, sink: sink, expires: unixNano(expires), heapIdx: -1}
}

// Attach registers c, writes its welcome and, when resume is set, replays
// the retained events after resumeID. From registration on, live events are
// held and flushed after the welcome and the replay, skipping any the replay
// already sent: an event accepted after the client saw its welcome always
// reaches it, and the switch from replay to live neither loses nor repeats
// one. When the resume id is older than the retained history, a gap message
// comes before the replay.
func (h *Hub) Attach(ctx context.Context, c *Client, welcome []byte, resume bool, resumeID event.ID) error {
	s := h.shards[int(h.next.Add(1))%len(h.shards)]
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("hub: attach: connection already closed")
	}
	c.replaying = true
	c.last = resumeID
	c.shard = s
	s.add(c) // lock order: Client.mu, then shard.mu
	h.count.Add(1)
	h.obs.ConnOpened(c.Transport, c.sub.User != "")
	c.armExpiry()
	err := c.sink.WriteControl("connected", welcome)
	c.mu.Unlock()
	if err != nil {
		c.writeFailed(err)
		return nil
	}
	if !resume {
		c.finishReplay()
		return nil
	}
	if err := h.replay(ctx, c, resumeID); err != nil {
		c.Close(protocol.Disconnect{Code: 1011, Reason: "replay failed"})
		return err
	}
	return nil
}

func (h *Hub) replay(ctx context.Context, c *Client, after event.ID) error {
	first := true
	var page []*event.Event
	for {
		start := time.Now()
		evs, err := h.log.Read(ctx, after, h.cfg.ReplayPage)
		h.obs.ObserveStore("read", time.Since(start))
		if err != nil {
			return fmt.Errorf("replay after %s: %w", after, err)
		}
		if first {
			first = false
			// Bounds after Read: a prune that raced the read shows in the
			// watermark, so a gap is never missed.
			bounds, err := h.log.Bounds(ctx)
			if err != nil {
				return fmt.Errorf("replay: bounds: %w", err)
			}
			if gap, oldest := gapAfter(after, bounds, evs); gap {
				if err := c.control("gap", protocol.Gap(after.String(), oldest)); err != nil {
					return nil // the client is gone; its close path cleans up
				}
			}
		}
		page = page[:0]
		c.shard.mu.RLock()
		for _, e := range evs {
			if c.sub.Matches(e) {
				page = append(page, e)
			}
		}
		c.shard.mu.RUnlock()
		if len(evs) > 0 {
			after = evs[len(evs)-1].ID
		}
		if !c.writeReplayPaced(ctx, page, after) {
			return nil
		}
		if len(evs) < h.cfg.ReplayPage {
			break
		}
	}
	c.finishReplay()
	return nil
}

// replayChunk bounds one replay write; before each, the replay waits for
// the client's queue to drain to half its budget, so a long replay to a
// client that keeps up never looks like a slow consumer.
const replayChunk = 256 << 10

// replayStall is how long a replay waits for a client that drains nothing.
const replayStall = 10 * time.Second

// writeReplayPaced writes a replay page in chunks, pacing them by the
// client's backlog; upTo is the last id the page covered.
func (c *Client) writeReplayPaced(ctx context.Context, page []*event.Event, upTo event.ID) bool {
	for len(page) > 0 {
		n, size := 0, 0
		for n < len(page) && (n == 0 || size+len(page[n].WS) <= replayChunk) {
			size += len(page[n].WS)
			n++
		}
		if !c.waitDrain(ctx) {
			return false
		}
		chunkEnd := page[n-1].ID
		if n == len(page) {
			chunkEnd = upTo
		}
		if !c.writeReplay(page[:n], chunkEnd) {
			return false
		}
		page = page[n:]
	}
	return c.writeReplay(nil, upTo)
}

// waitDrain waits until the client's queue is at most half its budget. A
// client that drains nothing for replayStall is a slow consumer (4208).
func (c *Client) waitDrain(ctx context.Context) bool {
	deadline := time.Now().Add(replayStall)
	for {
		queued, budget := c.sink.Backlog()
		if queued <= budget/2 {
			return true
		}
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed || ctx.Err() != nil {
			return false
		}
		if time.Now().After(deadline) {
			c.slow()
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// gapAfter reports whether events after `after` may have been lost: they
// were pruned, or the id is past everything this log issued (its history
// was reset, as a restarted memory store or a new Redis is). oldest is the
// first event the client will receive, or the last issued id when none is
// retained.
func gapAfter(after event.ID, b store.Bounds, firstPage []*event.Event) (bool, string) {
	oldest := b.Last.String()
	if len(firstPage) > 0 {
		oldest = firstPage[0].ID.String()
	}
	// Past the last id only counts when the log returned nothing after it:
	// Bounds may lag a commit that Read already sees.
	reset := b.Last.Less(after) && len(firstPage) == 0
	return after.Less(b.Pruned) || reset, oldest
}

// Shutdown closes every client with 1001 (WebSocket) or a randomized
// retry (SSE).
func (h *Hub) Shutdown() {
	for _, s := range h.shards {
		for _, c := range s.snapshot() {
			c.Close(protocol.DisconnectShutdown)
		}
	}
}

// DisconnectWhere closes, with d, every connection of user on this node for
// which match holds, and returns how many were closed.
func (h *Hub) DisconnectWhere(user string, match func(*Client) bool, d protocol.Disconnect) int {
	n := 0
	for _, s := range h.shards {
		s.mu.RLock()
		var victims []*Client
		victims = append(victims, s.byUser[user]...)
		s.mu.RUnlock()
		for _, c := range victims {
			if match(c) {
				c.Close(d)
				n++
			}
		}
	}
	return n
}
