package hub

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
)

// Client is one connection attached to the hub. It is kept small: a node
// holds a million of them, so times are Unix nanoseconds, token deadlines
// live in the shard's heap instead of a timer each, and nothing is
// allocated for an idle connection beyond this struct.
type Client struct {
	Transport string // "websocket" or "sse"

	hub     *Hub
	shard   *shard
	pos     int32 // index in shard.clients; guarded by shard.mu
	heapIdx int32 // index in shard.deadlines, -1 when absent; guarded by shard.expMu
	sub     Subscription
	sink    Sink

	mu        sync.Mutex
	replaying bool // live events go to pending until the replay ends
	closed    bool
	warned    bool           // token_expiring was sent
	last      event.ID       // last event written; later events only
	pending   []*event.Event // live events held during the replay
	expires   int64          // token exp, Unix ns; 0 when none
	deadline  int64          // next token action, Unix ns; guarded by shard.expMu
	issuedAt  int64          // token iat, Unix ns, for revocation
	tokenID   uint64         // hash of the token's jti (auth.JTIHash), for revocation
	onClose   func()

	batch []*event.Event // shard worker only
}

// SetToken records the token's jti (as its hash, which is all a revocation
// needs to find the connection, in 8 bytes) and iat.
func (c *Client) SetToken(jtiHash uint64, issuedAt time.Time) {
	c.mu.Lock()
	c.tokenID, c.issuedAt = jtiHash, unixNano(issuedAt)
	c.mu.Unlock()
}

// Token returns what SetToken recorded.
func (c *Client) Token() (jtiHash uint64, issuedAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tokenID, fromUnixNano(c.issuedAt)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// User returns the authenticated user id, "" for anonymous clients.
func (c *Client) User() string { return c.sub.User }

// OnClose sets f to run once when the client is closed or detached.
func (c *Client) OnClose(f func()) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		f()
		return
	}
	c.onClose = f
	c.mu.Unlock()
}

// deliver writes live events, or stages them in b when the sink can; it
// returns those written or staged.
func (c *Client) deliver(evs []*event.Event, b Batch) []*event.Event {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	if c.replaying {
		if len(c.pending)+len(evs) > c.hub.cfg.MaxPending {
			c.mu.Unlock()
			c.slow()
			return nil
		}
		c.pending = append(c.pending, evs...)
		c.mu.Unlock()
		return nil
	}
	// Events at or before c.last were already sent (by a replay).
	for len(evs) > 0 && !c.last.Less(evs[0].ID) {
		evs = evs[1:]
	}
	evs = c.current(evs)
	if len(evs) == 0 {
		c.mu.Unlock()
		return nil
	}
	var err error
	if bs, ok := c.sink.(BatchSink); ok && b != nil {
		err = bs.StageEvents(b, evs)
	} else {
		err = c.sink.WriteEvents(evs)
	}
	if err == nil {
		c.last = evs[len(evs)-1].ID
	}
	c.mu.Unlock()
	if err != nil {
		c.writeFailed(err)
		return nil
	}
	return evs
}

// writeReplay writes one page of a replay; upTo is the last id the page
// covered, matching or not. It reports whether the client is still open.
func (c *Client) writeReplay(page []*event.Event, upTo event.ID) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	var err error
	if len(page) > 0 {
		err = c.sink.WriteEvents(page)
	}
	if err == nil && c.last.Less(upTo) {
		c.last = upTo
	}
	c.mu.Unlock()
	if err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// finishReplay flushes the live events held during the replay and switches
// the client to live delivery.
func (c *Client) finishReplay() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	held := c.pending
	c.pending = nil
	c.replaying = false
	i := 0
	for i < len(held) && !c.last.Less(held[i].ID) {
		i++
	}
	held = c.current(held[i:])
	var err error
	if len(held) > 0 {
		err = c.sink.WriteEvents(held)
		if err == nil {
			c.last = held[len(held)-1].ID
		}
	}
	c.mu.Unlock()
	if err != nil {
		c.writeFailed(err)
	}
}

func (c *Client) writeFailed(err error) {
	if errors.Is(err, ErrSlow) {
		c.slow()
		return
	}
	c.Detach()
}

func (c *Client) slow() {
	c.hub.obs.SlowConsumer(c.Transport)
	c.Close(protocol.DisconnectSlow)
}

// control writes a control message.
func (c *Client) control(name string, msg []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("client closed")
	}
	return c.sink.WriteControl(name, msg)
}

// Send writes a control message to the client (replies to client messages).
func (c *Client) Send(name string, msg []byte) {
	if err := c.control(name, msg); err != nil && errors.Is(err, ErrSlow) {
		c.slow()
	}
}

func (c *Client) ping() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	err := c.sink.Ping()
	c.mu.Unlock()
	if err != nil {
		c.writeFailed(err)
	}
}

// ErrTooManyJobs is returned by Subscribe beyond the per-connection cap.
var ErrTooManyJobs = errors.New("too many job subscriptions")

// The job set of a subscription changes under both Client.mu and
// shard.mu: the shard worker matches under shard.mu, and writes check the
// set again under Client.mu (current), so that after "unsubscribed" no
// event of that job reaches the client, even one matched just before.

// Subscribe adds a job subscription; events of that job published from now
// on are delivered.
func (c *Client) Subscribe(job string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.shard
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := c.sub.Jobs[job]; ok {
		return nil
	}
	if len(c.sub.Jobs) >= c.hub.cfg.MaxJobs {
		return fmt.Errorf("%w: at most %d per connection", ErrTooManyJobs, c.hub.cfg.MaxJobs)
	}
	if c.sub.Jobs == nil {
		c.sub.Jobs = make(map[string]struct{}, 1)
	}
	c.sub.Jobs[job] = struct{}{}
	if c.pos >= 0 {
		addIndex(s.byJob, job, c)
	}
	return nil
}

// Unsubscribe removes a job subscription and then writes ack, when not
// nil: no event of the job is written after it.
func (c *Client) Unsubscribe(job string, ack []byte) {
	c.mu.Lock()
	s := c.shard
	s.mu.Lock()
	if _, ok := c.sub.Jobs[job]; ok {
		delete(c.sub.Jobs, job)
		removeIndex(s.byJob, job, c)
	}
	s.mu.Unlock()
	var err error
	if ack != nil && !c.closed {
		err = c.sink.WriteControl("unsubscribed", ack)
	}
	c.mu.Unlock()
	if err != nil {
		c.writeFailed(err)
	}
}

// current drops the events of jobs the client left since they were
// matched; c.mu is held. evs itself is left as it is (the shard counts its
// deliveries from it): when something is dropped, the result is a copy.
func (c *Client) current(evs []*event.Event) []*event.Event {
	left := func(e *event.Event) bool {
		if e.JobID == "" {
			return false
		}
		_, ok := c.sub.Jobs[e.JobID]
		return !ok
	}
	for i, e := range evs {
		if !left(e) {
			continue
		}
		out := append(make([]*event.Event, 0, len(evs)-1), evs[:i]...)
		for _, e := range evs[i+1:] {
			if !left(e) {
				out = append(out, e)
			}
		}
		return out
	}
	return evs
}

// ErrOtherUser is returned by Refresh for a token of another user.
var ErrOtherUser = errors.New("token is for a different user")

// Refresh extends the connection's authentication with a new token's expiry.
func (c *Client) Refresh(user string, expires time.Time) error {
	if user != c.sub.User {
		return ErrOtherUser
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expires = unixNano(expires)
	c.warned = false
	c.armExpiry()
	return nil
}

// armExpiry schedules the next token action in the shard's heap: the
// warning ExpiryWarning before exp, then exp itself. c.mu is held.
func (c *Client) armExpiry() {
	if c.shard == nil {
		return
	}
	var at int64
	if c.expires != 0 && !c.closed {
		at = c.expires
		if !c.warned {
			at = c.expires - int64(c.hub.cfg.ExpiryWarning)
		}
	}
	c.shard.schedule(c, at)
}

// expiryDue is called by the shard when the client's deadline passed.
func (c *Client) expiryDue(now int64) {
	c.mu.Lock()
	if c.closed || c.expires == 0 {
		c.mu.Unlock()
		return
	}
	if now >= c.expires {
		c.mu.Unlock()
		c.Close(protocol.DisconnectExpired)
		return
	}
	if !c.warned {
		c.warned = true
		_ = c.sink.WriteControl("token_expiring", protocol.TokenExpiring(fromUnixNano(c.expires)))
	}
	c.armExpiry()
	c.mu.Unlock()
}

// Expires returns the expiry of the connection's token.
func (c *Client) Expires() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fromUnixNano(c.expires)
}

// Close ends the connection from the server side with reason d.
func (c *Client) Close(d protocol.Disconnect) {
	if c.finish() {
		c.sink.Close(d)
		c.hub.obs.Disconnect(c.Transport, d.Code)
	}
}

// Detach removes a connection whose peer is gone.
func (c *Client) Detach() {
	if c.finish() {
		c.sink.Close(protocol.DisconnectPeerGone)
	}
}

// finish marks the client closed and unregisters it; it reports whether
// this call did it.
func (c *Client) finish() bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.closed = true
	c.pending = nil
	hook := c.onClose
	c.onClose = nil
	attached := c.shard != nil
	if attached {
		c.shard.schedule(c, 0)
	}
	c.mu.Unlock()
	if attached {
		c.shard.remove(c)
		c.hub.count.Add(-1)
		c.hub.obs.ConnClosed(c.Transport, c.sub.User != "")
	}
	if hook != nil {
		hook()
	}
	return true
}
