package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Publish runs cfg.Concurrency publishers, each posting batches of
// cfg.Batch events back to back for cfg.Duration, and reports durable
// events per second and the request latency. Requests are not retried
// here: every answer counts.
func Publish(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	cfg.Scenario = "publish"
	r, err := newRunner(ctx, cfg, progress)
	if err != nil {
		return nil, err
	}
	cfg = r.cfg
	res := r.res
	p := &PublishStats{Concurrency: cfg.Concurrency, Batch: cfg.Batch}
	res.Publish = p

	var (
		seq, events, requests, errs atomic.Int64
		hist                        Hist
		errsBy                      counter
		wg                          sync.WaitGroup
	)
	cpu0 := r.cpu()
	start := time.Now()
	end := start.Add(cfg.Duration)
	r.setStatus(func() string {
		el := time.Since(start).Seconds()
		return fmt.Sprintf("publish: %d events (%.0f/s), %d requests, %d errors", events.Load(), float64(events.Load())/max(el, 1e-9), requests.Load(), errs.Load())
	})
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && r.ctx.Err() == nil {
				s := seq.Add(int64(cfg.Batch)) - int64(cfg.Batch)
				body := r.body(s, cfg.Batch)
				t0 := time.Now()
				ids, err := r.publishOnce(body, r.run+"-"+fmt.Sprint(s))
				hist.Record(int64(time.Since(t0)))
				requests.Add(1)
				if err != nil || len(ids) != cfg.Batch {
					if r.ctx.Err() != nil {
						return
					}
					errs.Add(1)
					var ae *apiError
					switch {
					case errors.As(err, &ae):
						errsBy.add(ae.key(), 1)
					case err != nil:
						errsBy.add(errKey(err), 1)
					default:
						errsBy.add(fmt.Sprintf("%d ids for %d events", len(ids), cfg.Batch), 1)
					}
					if !r.sleep(50 * time.Millisecond) {
						return
					}
					continue
				}
				events.Add(int64(len(ids)))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	cpu1 := r.cpu()
	p.Requests, p.Events, p.Errors = requests.Load(), events.Load(), errs.Load()
	p.EventsPerSec = float64(p.Events) / el
	p.RequestsPerSec = float64(p.Requests) / el
	p.Latency = hist.Summary()
	p.ErrorsBy = errsBy.snapshot()
	if r.pid > 0 {
		res.ServerCPU = &CPUStats{PID: r.pid, Seconds: cpu1 - cpu0, Wall: el, Cores: (cpu1 - cpu0) / el}
	}
	if !r.stopped("publish") {
		if p.Errors > 0 {
			res.problem("%d publish requests failed", p.Errors)
		}
		if p.Events == 0 {
			res.problem("nothing was published")
		}
	}
	return r.finish(nil), nil
}
