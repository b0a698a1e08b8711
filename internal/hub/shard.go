package hub

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
)

// shard owns a share of the clients, their indexes and one fan-out worker.
// The worker scans candidates under the read lock and writes after
// releasing it, so no lock is held while the engine queues bytes.
type shard struct {
	hub   *Hub
	queue chan []*event.Event

	mu      sync.RWMutex
	clients []*Client                       // every client; Client.pos is its index
	byUser  map[string][]*Client            // authenticated clients by user: few per user
	byJob   map[string]map[*Client]struct{} // clients by subscribed job: possibly many

	expMu     sync.Mutex
	deadlines deadlineHeap // clients with a token deadline, soonest first

	touched []*Client      // worker only: clients with events in the current batch
	merged  []*event.Event // worker only: batches coalesced for one round
	batch   Batch          // worker only: the round's staged writes; nil without batching
	counts  []int          // worker only: deliveries of each event of the round
}

func newShard(h *Hub) *shard {
	return &shard{
		hub:    h,
		queue:  make(chan []*event.Event, 1024),
		byUser: make(map[string][]*Client),
		byJob:  make(map[string]map[*Client]struct{}),
	}
}

func (s *shard) add(c *Client) {
	s.mu.Lock()
	c.pos = int32(len(s.clients))
	s.clients = append(s.clients, c)
	if c.sub.User != "" {
		s.byUser[c.sub.User] = append(s.byUser[c.sub.User], c)
	}
	for j := range c.sub.Jobs {
		addIndex(s.byJob, j, c)
	}
	s.mu.Unlock()
}

func (s *shard) remove(c *Client) {
	s.mu.Lock()
	if c.pos >= 0 && int(c.pos) < len(s.clients) && s.clients[c.pos] == c {
		last := len(s.clients) - 1
		s.clients[c.pos] = s.clients[last]
		s.clients[c.pos].pos = c.pos
		s.clients[last] = nil
		s.clients = s.clients[:last]
		c.pos = -1
		if c.sub.User != "" {
			s.removeUser(c)
		}
		for j := range c.sub.Jobs {
			removeIndex(s.byJob, j, c)
		}
	}
	s.mu.Unlock()
}

func (s *shard) removeUser(c *Client) {
	list := s.byUser[c.sub.User]
	for i, x := range list {
		if x == c {
			list[i] = list[len(list)-1]
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			break
		}
	}
	if len(list) == 0 {
		delete(s.byUser, c.sub.User)
	} else {
		s.byUser[c.sub.User] = list
	}
}

func addIndex(idx map[string]map[*Client]struct{}, key string, c *Client) {
	set := idx[key]
	if set == nil {
		set = make(map[*Client]struct{}, 1)
		idx[key] = set
	}
	set[c] = struct{}{}
}

func removeIndex(idx map[string]map[*Client]struct{}, key string, c *Client) {
	if set := idx[key]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(idx, key)
		}
	}
}

func (s *shard) snapshot() []*Client {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]*Client(nil), s.clients...)
}

func (s *shard) run(ctx context.Context) {
	if s.hub.cfg.NewBatch != nil {
		if b := s.hub.cfg.NewBatch(); b != nil {
			s.batch = b
			s.hub.batched.Add(1)
			defer s.hub.batched.Add(-1)
			defer b.Close()
		}
	}
	ping := time.NewTicker(s.hub.cfg.PingInterval)
	defer ping.Stop()
	keepalive := time.NewTicker(s.hub.cfg.KeepaliveInterval)
	defer keepalive.Stop()
	expiry := time.NewTicker(expiryTick)
	defer expiry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case evs := <-s.queue:
			s.deliver(s.coalesce(evs))
		case now := <-expiry.C:
			s.expire(now.UnixNano())
		case <-ping.C:
			s.pingAll("websocket")
		case <-keepalive.C:
			s.pingAll("sse")
		}
	}
}

// maxCoalesce and maxCoalesceBytes bound what one delivery round takes
// from the queue.
const (
	maxCoalesce      = 512
	maxCoalesceBytes = 256 << 10
)

// coalesce appends to evs the batches already waiting in the queue, so that
// a shard that fell behind writes each client everything it is due in one
// system call: under load, the cost per delivery falls instead of the
// backlog growing. Without a backlog it returns evs as it is.
func (s *shard) coalesce(evs []*event.Event) []*event.Event {
	if len(s.queue) == 0 {
		return evs
	}
	s.merged = append(s.merged[:0], evs...)
	size := 0
	for _, e := range evs {
		size += len(e.WS)
	}
	for len(s.merged) < maxCoalesce && size < maxCoalesceBytes {
		select {
		case more := <-s.queue:
			s.merged = append(s.merged, more...)
			for _, e := range more {
				size += len(e.WS)
			}
			continue
		default:
		}
		break
	}
	return s.merged
}

// deliver routes one batch: each client gets the events it may receive, in
// id order, as a single write.
//
// Each event's deliveries are counted as they are collected and corrected
// for the few clients that took less than collected (closed, replaying),
// so the metrics are updated once per event, not once per delivery.
func (s *shard) deliver(evs []*event.Event) {
	if cap(s.counts) < len(evs) {
		s.counts = make([]int, len(evs))
	}
	s.counts = s.counts[:len(evs)]
	s.mu.RLock()
	for i, e := range evs {
		n := 0
		switch {
		case e.JobID != "":
			for c := range s.byJob[e.JobID] {
				n += s.collect(c, e)
			}
		case e.UserID != "":
			for _, c := range s.byUser[e.UserID] {
				n += s.collect(c, e)
			}
		default:
			for _, c := range s.clients {
				n += s.collect(c, e)
			}
		}
		s.counts[i] = n
	}
	s.mu.RUnlock()

	now := time.Now()
	for _, c := range s.touched {
		if written := c.deliver(c.batch, s.batch); len(written) != len(c.batch) {
			s.uncount(evs, c.batch, written)
		}
		clear(c.batch)
		c.batch = c.batch[:0]
	}
	if s.batch != nil {
		s.batch.Flush()
	}
	obs := s.hub.obs
	for i, e := range evs {
		if n := s.counts[i]; n > 0 {
			obs.Delivered(e.TypeIndex, n)
			obs.ObserveDeliveryLatency(now.Sub(e.Time), n)
		}
	}
	clear(s.touched)
	s.touched = s.touched[:0]
	clear(s.merged)
}

// collect adds e to c's batch when c may receive it, and returns how many
// deliveries that made: 1 or 0.
func (s *shard) collect(c *Client, e *event.Event) int {
	if !c.sub.Matches(e) {
		return 0
	}
	if len(c.batch) == 0 {
		s.touched = append(s.touched, c)
	}
	c.batch = append(c.batch, e)
	return 1
}

// uncount takes back the events of batch (collected for one client, in
// the order of evs) that are not in written (a subsequence of batch).
func (s *shard) uncount(evs, batch, written []*event.Event) {
	i := 0
	for _, e := range batch {
		if len(written) > 0 && written[0] == e {
			written = written[1:]
			continue
		}
		for evs[i] != e {
			i++
		}
		s.counts[i]--
	}
}

// expiryTick is how often token deadlines are checked.
const expiryTick = 250 * time.Millisecond

// schedule puts c in the deadline heap at Unix ns at, or takes it out when
// at is 0.
func (s *shard) schedule(c *Client, at int64) {
	s.expMu.Lock()
	defer s.expMu.Unlock()
	switch {
	case at == 0 && c.heapIdx >= 0:
		heap.Remove(&s.deadlines, int(c.heapIdx))
	case at == 0:
	case c.heapIdx >= 0:
		c.deadline = at
		heap.Fix(&s.deadlines, int(c.heapIdx))
	default:
		c.deadline = at
		heap.Push(&s.deadlines, c)
	}
}

// expire acts on every client whose deadline passed.
func (s *shard) expire(now int64) {
	for {
		s.expMu.Lock()
		if len(s.deadlines) == 0 || s.deadlines[0].deadline > now {
			s.expMu.Unlock()
			return
		}
		c := heap.Pop(&s.deadlines).(*Client)
		s.expMu.Unlock()
		c.expiryDue(now)
	}
}

// deadlineHeap orders clients by deadline (container/heap).
type deadlineHeap []*Client

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h deadlineHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = int32(i), int32(j)
}
func (h *deadlineHeap) Push(x any) {
	c := x.(*Client)
	c.heapIdx = int32(len(*h))
	*h = append(*h, c)
}
func (h *deadlineHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.heapIdx = -1
	return c
}

// pingAll pings the clients of one transport, a chunk at a time so that
// attaching clients never wait long for the lock.
func (s *shard) pingAll(transport string) {
	const chunk = 1024
	var buf []*Client
	for start := 0; ; start += chunk {
		s.mu.RLock()
		if start >= len(s.clients) {
			s.mu.RUnlock()
			return
		}
		end := min(start+chunk, len(s.clients))
		buf = append(buf[:0], s.clients[start:end]...)
		s.mu.RUnlock()
		for _, c := range buf {
			if c.Transport == transport {
				c.ping()
			}
		}
	}
}
