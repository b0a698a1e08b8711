package bench

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// resumeHandler checks, in the reconnect phase, that each client receives
// exactly the missed events, in order.
type resumeHandler struct {
	r         *runner
	expected  []string // ids of the missed events, in publish order
	completed atomic.Int64
	replayed  atomic.Int64
	hist      *Hist
	lastDone  atomic.Int64
}

func (h *resumeHandler) onEvent(c *client, ev *taggedEvent, now int64) {
	if h.expected == nil { // first phase: remember where each client is
		c.lastTagged = string(ev.ID)
		if ev.Seq < 0 && !c.barrier {
			c.barrier = true
			h.r.barriers.Add(1)
		}
		return
	}
	if ev.Seq < 0 {
		return // a barrier event sent after the client's resume point
	}
	switch {
	case c.pos < len(h.expected) && string(ev.ID) == h.expected[c.pos]:
		c.pos++
		h.replayed.Add(1)
		if c.pos == len(h.expected) {
			c.doneAt = now
			h.hist.Record(now - c.dialStart)
			for {
				l := h.lastDone.Load()
				if now <= l || h.lastDone.CompareAndSwap(l, now) {
					break
				}
			}
			h.completed.Add(1)
		}
	case c.pos > 0 && int(ev.Seq) < c.pos:
		c.extra++ // received again
	default:
		c.mismatch++
	}
}

func (h *resumeHandler) onControl(c *client, typ string, msg []byte) {
	if typ == "gap" {
		c.gaps++
	}
}

// Resume connects cfg.N clients, disconnects them, publishes cfg.Events
// events, then reconnects all of them at once with their last event id
// and measures how long until every client has received exactly the
// events it missed.
func Resume(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	cfg.Scenario = "resume"
	r, err := newRunner(ctx, cfg, progress)
	if err != nil {
		return nil, err
	}
	cfg = r.cfg
	res := r.res
	h := &resumeHandler{r: r, hist: &Hist{}}

	// 1. Connect, and make every client hold an event id of this run.
	clients, cs := r.connectAll(cfg.N, h, nil, "connect")
	res.Connect = cs
	if r.stopped("connect") {
		return r.finish(clients), nil
	}
	if !r.barrier("barrier") {
		r.stopped("barrier")
		return r.finish(clients), nil
	}
	// 2. Disconnect them all.
	r.setStatus(func() string { return fmt.Sprintf("disconnecting: %d alive", r.alive.Load()) })
	r.closeAll(clients)
	lastIDs := make([]string, cfg.N)
	var idx []int // the clients that take part: welcomed in phase 1
	for i, c := range clients {
		if c != nil && c.lastTagged != "" {
			lastIDs[i] = c.lastTagged
			idx = append(idx, i)
		}
	}
	// 3. Publish the events they miss, sequentially so that the order of
	// the answers is the order of the ids.
	var missed []string
	r.setStatus(func() string { return fmt.Sprintf("publishing while away: %d/%d events", len(missed), cfg.Events) })
	for seq := 0; seq < cfg.Events && r.ctx.Err() == nil; {
		n := min(cfg.Batch, cfg.Events-seq)
		ids, err := r.publish(r.body(int64(seq), n))
		if err != nil {
			res.problem("publishing the missed events: %v", err)
			return r.finish(nil), nil
		}
		missed = append(missed, ids...)
		seq += n
	}
	if r.stopped("publish") {
		return r.finish(nil), nil
	}
	// Let the server notice the closed connections before the storm.
	if !r.sleep(min(cfg.Settle, time.Second)) {
		r.stopped("settle")
		return r.finish(nil), nil
	}

	// 4. Reconnect all at once with last_event_id / Last-Event-ID.
	rs := &ResumeStats{Clients: len(idx), Missed: len(missed)}
	res.Resume = rs
	h.expected = missed
	storm := time.Now()
	clients2, cs2 := r.connectAll(len(idx), h, func(i int) string { return lastIDs[idx[i]] }, "reconnect")
	res.Reconnect = cs2
	rs.ReconnectSeconds = cs2.Seconds
	drainEnd := time.Now().Add(cfg.Drain)
	r.setStatus(func() string {
		return fmt.Sprintf("replay: %d/%d clients complete, %d events replayed", h.completed.Load(), cs2.Welcomed, h.replayed.Load())
	})
	for h.completed.Load() < int64(cs2.Welcomed) && time.Now().Before(drainEnd) && r.alive.Load() > 0 {
		if !r.sleep(5 * time.Millisecond) {
			break
		}
	}
	stopped := r.stopped("replay")
	r.closeAll(clients2)

	if l := h.lastDone.Load(); l > 0 {
		rs.ReplaySeconds = float64(l-storm.UnixNano()) / 1e9
		rs.ReplayedPerSec = float64(h.replayed.Load()) / rs.ReplaySeconds
	}
	rs.Completion = h.hist.Summary()
	for _, c := range clients2 {
		if c == nil {
			continue
		}
		rs.Missing += int64(len(missed) - c.pos)
		rs.Mismatched += int64(c.mismatch)
		rs.Extra += int64(c.extra)
		rs.Gaps += c.gaps
		if c.pos == len(missed) && c.mismatch == 0 && c.extra == 0 {
			rs.Exact++
		} else {
			rs.Incomplete++
		}
	}
	rs.Incomplete += len(idx) - cs2.Welcomed
	if !stopped {
		if rs.Exact < rs.Clients {
			res.problem("%d of %d clients did not get exactly the %d missed events (%d missing, %d mismatched, %d extra, %d gaps)",
				rs.Clients-rs.Exact, rs.Clients, rs.Missed, rs.Missing, rs.Mismatched, rs.Extra, rs.Gaps)
		}
	}
	return r.finish(nil), nil
}
