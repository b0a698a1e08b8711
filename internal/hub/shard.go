package hub

import (
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
	byUser  map[string]map[*Client]struct{} // authenticated clients by user
	byJob   map[string]map[*Client]struct{} // clients by subscribed job

	touched []*Client // worker only: clients with events in the current batch
}

func newShard(h *Hub) *shard {
	return &shard{
		hub:    h,
		queue:  make(chan []*event.Event, 1024),
		byUser: make(map[string]map[*Client]struct{}),
		byJob:  make(map[string]map[*Client]struct{}),
	}
}

func (s *shard) add(c *Client) {
	s.mu.Lock()
	c.pos = len(s.clients)
	s.clients = append(s.clients, c)
	if c.sub.User != "" {
		addIndex(s.byUser, c.sub.User, c)
	}
	for j := range c.sub.Jobs {
		addIndex(s.byJob, j, c)
	}
	s.mu.Unlock()
}

func (s *shard) remove(c *Client) {
	s.mu.Lock()
	if c.pos >= 0 && c.pos < len(s.clients) && s.clients[c.pos] == c {
		last := len(s.clients) - 1
		s.clients[c.pos] = s.clients[last]
		s.clients[c.pos].pos = c.pos
		s.clients[last] = nil
		s.clients = s.clients[:last]
		c.pos = -1
		if c.sub.User != "" {
			removeIndex(s.byUser, c.sub.User, c)
		}
		for j := range c.sub.Jobs {
			removeIndex(s.byJob, j, c)
		}
	}
	s.mu.Unlock()
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
	ping := time.NewTicker(s.hub.cfg.PingInterval)
	defer ping.Stop()
	keepalive := time.NewTicker(s.hub.cfg.KeepaliveInterval)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case evs := <-s.queue:
			s.deliver(evs)
		case <-ping.C:
			s.pingAll("websocket")
		case <-keepalive.C:
			s.pingAll("sse")
		}
	}
}

// deliver routes one batch: each client gets the events it may receive, in
// id order, as a single write.
func (s *shard) deliver(evs []*event.Event) {
	s.mu.RLock()
	for _, e := range evs {
		switch {
		case e.JobID != "":
			for c := range s.byJob[e.JobID] {
				s.collect(c, e)
			}
		case e.UserID != "":
			for c := range s.byUser[e.UserID] {
				s.collect(c, e)
			}
		default:
			for _, c := range s.clients {
				s.collect(c, e)
			}
		}
	}
	s.mu.RUnlock()

	obs := s.hub.obs
	for _, c := range s.touched {
		if n := c.deliver(c.batch); n > 0 {
			for _, e := range c.batch[:n] {
				obs.Delivered(e.TypeIndex, 1)
			}
		}
		clear(c.batch)
		c.batch = c.batch[:0]
	}
	clear(s.touched)
	s.touched = s.touched[:0]
	now := time.Now()
	for _, e := range evs {
		obs.ObserveDeliveryLatency(now.Sub(e.Time))
	}
}

func (s *shard) collect(c *Client, e *event.Event) {
	if !c.sub.Matches(e) {
		return
	}
	if len(c.batch) == 0 {
		s.touched = append(s.touched, c)
	}
	c.batch = append(c.batch, e)
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
