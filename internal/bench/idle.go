package bench

import (
	"context"
	"fmt"
	"io"
	"time"
)

// idleHandler ignores events; control messages are only counted.
type idleHandler struct{}

func (idleHandler) onEvent(*client, *taggedEvent, int64) {}
func (idleHandler) onControl(*client, string, []byte)    {}

// Idle opens cfg.N connections, waits for every welcome, samples the
// server's memory before and after (plus cfg.Settle), holds them cfg.Hold
// and closes them. It reports the connect rate and the server's memory per
// connection.
func Idle(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	cfg.Scenario = "idle"
	r, err := newRunner(ctx, cfg, progress)
	if err != nil {
		return nil, err
	}
	cfg = r.cfg
	res := r.res
	before := r.sample()

	clients, cs := r.connectAll(cfg.N, idleHandler{}, nil, "connect")
	res.Connect = cs
	if r.stopped("connect") {
		return r.finish(clients), nil
	}

	settleEnd := time.Now().Add(cfg.Settle)
	r.setStatus(func() string {
		return fmt.Sprintf("settling %s: %d connections alive", time.Until(settleEnd).Round(time.Second), r.alive.Load())
	})
	if !r.sleep(cfg.Settle) {
		r.stopped("settle")
		return r.finish(clients), nil
	}
	after := r.sample()
	res.Memory = memoryStats(r.pid, before, after, cs.Welcomed, r.connMetric)
	if m := res.Memory; cfg.RSSBaseline > 0 && m.ServerConnections > 0 && m.RSSAfter > 0 {
		m.RSSBaseline = cfg.RSSBaseline
		m.BytesPerServerConn = float64(m.RSSAfter-cfg.RSSBaseline) / float64(m.ServerConnections)
	}

	if m := res.Memory; cfg.Target == TargetCentrifugo && cfg.RSSBaseline == 0 && m.MetricsRSSAfter > 0 && m.ServerConnections < int64(cs.Welcomed) {
		res.note("Centrifugo reports %d clients for %d connections: centrifugo_node_num_clients is refreshed about once a second; give --settle 2s or more", m.ServerConnections, cs.Welcomed)
	}
	if m := res.Memory; m.RSSAfter > 0 || m.MetricsRSSAfter > 0 {
		rssGrowth := max(m.RSSAfter-m.RSSBefore, m.MetricsRSSAfter-m.MetricsRSSBefore)
		if heapGrowth := m.HeapInuseAfter - m.HeapInuseBefore; heapGrowth > 2*max(rssGrowth, 0)+(1<<20) {
			res.note("the Go heap grew by %s but RSS by %s: the server reused memory freed by an earlier load, so RSS per connection reads low; restart the server before an idle run", fmtBytes(heapGrowth), fmtBytes(rssGrowth))
		}
		if cs.Welcomed < 5000 {
			res.note("with fewer than 5,000 connections, fixed costs (buffers, maps, page granularity) weigh on the per-connection figure")
		}
	}

	holdEnd := time.Now().Add(cfg.Hold)
	r.setStatus(func() string {
		return fmt.Sprintf("holding %s: %d connections alive", time.Until(holdEnd).Round(time.Second), r.alive.Load())
	})
	if !r.sleep(cfg.Hold) {
		r.stopped("hold")
		return r.finish(clients), nil
	}
	if lost := int64(cs.Welcomed) - r.alive.Load(); lost > 0 {
		res.problem("%d connections were closed by the server while idle", lost)
	}
	return r.finish(clients), nil
}

func memoryStats(pid int, before, after sample, n int, connMetric string) *MemoryStats {
	m := &MemoryStats{ServerPID: pid, RSSBefore: before.rss, RSSAfter: after.rss}
	per := func(a, b float64) float64 {
		if n == 0 {
			return 0
		}
		return (b - a) / float64(n)
	}
	if before.rss > 0 && after.rss > 0 {
		m.BytesPerConn = per(float64(before.rss), float64(after.rss))
	}
	if before.metrics != nil && after.metrics != nil {
		m.MetricsRSSBefore = int64(before.metrics["process_resident_memory_bytes"])
		m.MetricsRSSAfter = int64(after.metrics["process_resident_memory_bytes"])
		m.MetricsBytesPerConn = per(float64(m.MetricsRSSBefore), float64(m.MetricsRSSAfter))
		m.HeapInuseBefore = int64(before.metrics["go_memstats_heap_inuse_bytes"])
		m.HeapInuseAfter = int64(after.metrics["go_memstats_heap_inuse_bytes"])
		m.GoroutinesBefore = int64(before.metrics["go_goroutines"])
		m.GoroutinesAfter = int64(after.metrics["go_goroutines"])
		m.GoroutinesPerConn = per(float64(m.GoroutinesBefore), float64(m.GoroutinesAfter))
		m.ServerConnections = int64(after.metrics[connMetric])
	}
	return m
}
