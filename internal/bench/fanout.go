package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
)

// fanoutHandler records every event of the run each subscriber receives.
type fanoutHandler struct {
	r         *runner
	hist      *Hist
	delivered atomic.Int64 // unique deliveries of measured events
	dups      atomic.Int64
	// Centrifugo: offsets says publications carried offsets (the order
	// is checked on them); without them, seqOrder checks the order on the
	// sequence numbers, which is the publication order only when one
	// publish request is in flight at a time.
	offsets  atomic.Bool
	seqOrder bool
}

func (h *fanoutHandler) onEvent(c *client, ev *taggedEvent, now int64) {
	switch {
	case len(ev.ID) > 0:
		if id, err := event.ParseID(string(ev.ID)); err == nil {
			if c.haveLast && !c.lastID.Less(id) {
				c.order++
			}
			c.lastID, c.haveLast = id, true
		}
		c.lastTagged = string(ev.ID)
	case ev.Offset > 0:
		if c.lastOff != 0 && ev.Offset <= c.lastOff {
			c.order++
		}
		c.lastOff = ev.Offset
		if !h.offsets.Load() {
			h.offsets.Store(true)
		}
	case h.seqOrder && ev.Seq >= 0:
		if ev.Seq < c.lastSeq {
			c.order++
		}
		c.lastSeq = ev.Seq + 1
	}
	if ev.Seq < 0 {
		if !c.barrier {
			c.barrier = true
			h.r.barriers.Add(1)
		}
		return
	}
	w := int(ev.Seq >> 6)
	for w >= len(c.seen) {
		c.seen = append(c.seen, 0)
	}
	bit := uint64(1) << (ev.Seq & 63)
	if c.seen[w]&bit != 0 {
		c.dups++
		h.dups.Add(1)
		return
	}
	c.seen[w] |= bit
	c.uniq++
	c.lastRecv = now
	h.delivered.Add(1)
	h.hist.Record(now - ev.T)
}

func (h *fanoutHandler) onControl(c *client, typ string, msg []byte) {}

// Fanout connects cfg.N subscribers, publishes cfg.Rate events per second
// for cfg.Duration, and checks that every subscriber received every
// acknowledged event exactly once, measuring publish→receive latency,
// deliveries per second and the server's CPU.
func Fanout(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	cfg.Scenario = "fanout"
	r, err := newRunner(ctx, cfg, progress)
	if err != nil {
		return nil, err
	}
	cfg = r.cfg
	res := r.res
	planned := int(math.Floor(cfg.Rate * cfg.Duration.Seconds()))
	if planned < 1 {
		planned = 1
	}
	words := (planned + 63) / 64
	h := &fanoutHandler{r: r, hist: &Hist{}, seqOrder: cfg.Target == TargetCentrifugo && cfg.Concurrency == 1}

	clients, cs := r.connectAll(cfg.N, h, nil, "connect")
	res.Connect = cs
	if r.stopped("connect") {
		return r.finish(clients), nil
	}
	if !r.barrier("barrier") {
		r.stopped("barrier")
		return r.finish(clients), nil
	}

	f := &FanoutStats{Subscribers: cs.Welcomed, TargetRate: cfg.Rate, Batch: cfg.Batch}
	res.Fanout = f
	before := r.sample()
	cpu0 := r.cpu()
	wall0 := time.Now()

	// Publish: a scheduler hands batches to Concurrency workers at the
	// planned times; what cannot be sent within Duration is not sent.
	var (
		ackMu      sync.Mutex
		acked      = make([]uint64, words)
		nAcked     atomic.Int64
		pubErrs    atomic.Int64
		pubHist    Hist
		lastAck    atomic.Int64
		jobs       = make(chan [2]int, cfg.Concurrency)
		wg         sync.WaitGroup
		errSamples counter
	)
	start := time.Now()
	end := start.Add(cfg.Duration)
	interval := time.Duration(float64(cfg.Batch) / cfg.Rate * float64(time.Second))
	r.setStatus(func() string {
		el := time.Since(start).Seconds()
		d := h.delivered.Load()
		return fmt.Sprintf("fanout: published %d/%d, %d deliveries (%.0f/s), %d subscribers alive, %d publish errors",
			nAcked.Load(), planned, d, float64(d)/max(el, 1e-9), r.alive.Load(), pubErrs.Load())
	})
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				t0 := time.Now()
				ids, err := r.publish(r.body(int64(j[0]), j[1]))
				pubHist.Record(int64(time.Since(t0)))
				if err != nil || len(ids) != j[1] {
					pubErrs.Add(int64(j[1]))
					if err != nil {
						errSamples.add(err.Error(), 1)
					}
					continue
				}
				ackMu.Lock()
				for s := j[0]; s < j[0]+j[1]; s++ {
					acked[s>>6] |= 1 << (s & 63)
				}
				ackMu.Unlock()
				nAcked.Add(int64(j[1]))
				lastAck.Store(time.Now().UnixNano())
			}
		}()
	}
	scheduled := 0
	for k := 0; scheduled < planned; k++ {
		if !r.sleep(time.Until(start.Add(time.Duration(k) * interval))) {
			break
		}
		if time.Now().After(end) {
			break
		}
		n := min(cfg.Batch, planned-scheduled)
		select {
		case jobs <- [2]int{scheduled, n}:
		case <-r.ctx.Done():
		}
		scheduled += n
	}
	close(jobs)
	wg.Wait()
	pubEnd := time.Now()
	f.Published = int(nAcked.Load())
	f.PublishErrors = int(pubErrs.Load())
	f.PublishLatency = pubHist.Summary()
	if la := lastAck.Load(); la > 0 {
		f.PublishRate = float64(f.Published) / max(float64(la-start.UnixNano())/1e9, cfg.Duration.Seconds())
	}
	if scheduled < planned && r.ctx.Err() == nil {
		res.problem("published only %d of the %d events planned in %s: the publisher could not keep --rate %.0f (raise --concurrency or --batch)", scheduled, planned, cfg.Duration, cfg.Rate)
	}
	for k, n := range errSamples.snapshot() {
		res.problem("publish failed %d×: %s", n, k)
	}

	// Drain: wait for the deliveries in flight.
	expected := int64(cs.Welcomed) * int64(f.Published)
	drainEnd := pubEnd.Add(cfg.Drain)
	r.setStatus(func() string {
		return fmt.Sprintf("draining: %d of %d deliveries, %d subscribers alive", h.delivered.Load(), expected, r.alive.Load())
	})
	for h.delivered.Load() < expected && time.Now().Before(drainEnd) && r.alive.Load() > 0 {
		if !r.sleep(10 * time.Millisecond) {
			break
		}
	}
	wall := time.Since(wall0).Seconds()
	cpu1 := r.cpu()
	after := r.sample()
	stopped := r.stopped("fanout")

	r.closeAll(clients) // readers end: the per-client state is ours now
	f.Expected = expected
	f.Delivered = h.delivered.Load()
	f.Duplicates = h.dups.Load()
	f.Latency = h.hist.Summary()
	var lastRecv int64
	for _, c := range clients {
		if c == nil {
			continue
		}
		f.OrderViolations += int64(c.order)
		lastRecv = max(lastRecv, c.lastRecv)
		for w := range words {
			var seen uint64
			if w < len(c.seen) {
				seen = c.seen[w]
			}
			f.Missing += int64(bits.OnesCount64(acked[w] &^ seen))
			f.Unacknowledged += int64(bits.OnesCount64(seen &^ acked[w]))
		}
		for w := words; w < len(c.seen); w++ {
			f.Unacknowledged += int64(bits.OnesCount64(c.seen[w]))
		}
	}
	if lastRecv > 0 {
		f.DeliveriesPerSec = float64(f.Delivered) / (float64(lastRecv-start.UnixNano()) / 1e9)
	}
	if before.metrics != nil && after.metrics != nil {
		f.ServerDelivered = int64(after.metrics[r.deliveredMetric] - before.metrics[r.deliveredMetric])
	}
	if r.pid > 0 {
		c := &CPUStats{PID: r.pid, Seconds: cpu1 - cpu0, Wall: wall}
		c.Cores = c.Seconds / max(wall, 1e-9)
		if f.Delivered > 0 {
			c.PerMillionDeliveries = c.Seconds / (float64(f.Delivered) / 1e6)
		}
		res.ServerCPU = c
	}
	f.OrderCheckedBy = "id"
	if cfg.Target == TargetCentrifugo {
		switch {
		case f.Delivered == 0:
			f.OrderCheckedBy = "none"
		case h.offsets.Load():
			f.OrderCheckedBy = "offset"
		case h.seqOrder:
			f.OrderCheckedBy = "sequence"
			res.note("the channel keeps no history, so publications carry no offset: the order was checked on the sequence numbers (--concurrency 1)")
		default:
			f.OrderCheckedBy = "none"
			res.note("order not checked: the channel keeps no history (no offsets) and --concurrency %d publishes out of sequence order; set history_size and history_ttl on the channel, or use --concurrency 1", cfg.Concurrency)
		}
	}
	if !stopped {
		if f.Missing > 0 {
			res.problem("%d deliveries missing (of %d expected)", f.Missing, f.Expected)
		}
		if f.Duplicates > 0 {
			res.problem("%d duplicate deliveries", f.Duplicates)
		}
		if f.OrderViolations > 0 {
			res.problem("%d events received out of %s order", f.OrderViolations, f.OrderCheckedBy)
		}
		if f.Published == 0 {
			res.problem("nothing was published")
		}
	}
	return r.finish(clients), nil
}
