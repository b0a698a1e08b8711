package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"
)

// Result is the outcome of one run. Sections that do not apply to the
// scenario are nil.
type Result struct {
	Scenario string `json:"scenario"`
	// Target is the kind of server loaded: knowledgehub or centrifugo.
	Target string `json:"target"`
	Server string `json:"server"`
	// Channel is the Centrifugo channel of the run.
	Channel   string    `json:"channel,omitempty"`
	Transport string    `json:"transport,omitempty"`
	N         int       `json:"n,omitempty"`
	Started   time.Time `json:"started"`
	Seconds   float64   `json:"elapsed_seconds"`
	// OK is false when a check failed (missing welcomes, lost or duplicate
	// events, failed publishes, ...); Problems says which.
	OK       bool     `json:"ok"`
	Problems []string `json:"problems,omitempty"`
	Notes    []string `json:"notes,omitempty"`

	Connect   *ConnectStats `json:"connect,omitempty"`
	Reconnect *ConnectStats `json:"reconnect,omitempty"`
	Memory    *MemoryStats  `json:"memory,omitempty"`
	Fanout    *FanoutStats  `json:"fanout,omitempty"`
	Publish   *PublishStats `json:"publish,omitempty"`
	Resume    *ResumeStats  `json:"resume,omitempty"`
	ServerCPU *CPUStats     `json:"server_cpu,omitempty"`

	// ClosedByServer counts connections the server ended during the run,
	// by reason (ws close code, eof, ...).
	ClosedByServer map[string]int `json:"closed_by_server,omitempty"`
	// Controls counts the control messages received after the welcomes.
	Controls map[string]int `json:"control_messages,omitempty"`
	// ForeignEvents counts events received that this run did not publish.
	ForeignEvents int64 `json:"foreign_events,omitempty"`

	Bench BenchProcess `json:"bench_process"`
}

// ConnectStats describe opening the connections.
type ConnectStats struct {
	Attempted int     `json:"attempted"`
	Welcomed  int     `json:"welcomed"`
	Failed    int     `json:"failed"`
	Retries   int     `json:"retries"`
	Seconds   float64 `json:"seconds"`
	// RatePerSec is welcomed connections per second, first dial to last
	// welcome.
	RatePerSec float64 `json:"rate_per_sec"`
	// Latency is dial to welcome of each connection (its last attempt).
	Latency Quantiles `json:"latency"`
	// Refusals counts refused attempts by status and code ("429
	// connect_rate_per_ip") or error.
	Refusals map[string]int `json:"refusals,omitempty"`
}

// MemoryStats are the server's memory before and after the connections.
type MemoryStats struct {
	ServerPID int `json:"server_pid,omitempty"`
	// RSS from /proc/<pid>/status VmRSS.
	RSSBefore    int64   `json:"rss_before_bytes,omitempty"`
	RSSAfter     int64   `json:"rss_after_bytes,omitempty"`
	BytesPerConn float64 `json:"bytes_per_conn,omitempty"`
	// The same from /metrics process_resident_memory_bytes.
	MetricsRSSBefore    int64   `json:"metrics_rss_before_bytes,omitempty"`
	MetricsRSSAfter     int64   `json:"metrics_rss_after_bytes,omitempty"`
	MetricsBytesPerConn float64 `json:"metrics_bytes_per_conn,omitempty"`
	// go_memstats_heap_inuse_bytes and go_goroutines from /metrics.
	HeapInuseBefore   int64   `json:"heap_inuse_before_bytes,omitempty"`
	HeapInuseAfter    int64   `json:"heap_inuse_after_bytes,omitempty"`
	GoroutinesBefore  int64   `json:"goroutines_before,omitempty"`
	GoroutinesAfter   int64   `json:"goroutines_after,omitempty"`
	GoroutinesPerConn float64 `json:"goroutines_per_conn"`
	// ServerConnections is knowledgehub_connections (all labels) after.
	ServerConnections int64 `json:"server_connections"`
	// With --rss-baseline: (RSSAfter - RSSBaseline) / ServerConnections,
	// right even when several bench processes share the server.
	RSSBaseline        int64   `json:"rss_baseline_bytes,omitempty"`
	BytesPerServerConn float64 `json:"bytes_per_server_conn,omitempty"`
}

// FanoutStats describe a broadcast run.
type FanoutStats struct {
	Subscribers     int     `json:"subscribers"`
	TargetRate      float64 `json:"target_events_per_sec"`
	Batch           int     `json:"batch"`
	Published       int     `json:"events_published"`
	PublishErrors   int     `json:"publish_errors"`
	PublishRate     float64 `json:"publish_events_per_sec"`
	Expected        int64   `json:"deliveries_expected"`
	Delivered       int64   `json:"deliveries"`
	Missing         int64   `json:"missing"`
	Duplicates      int64   `json:"duplicates"`
	OrderViolations int64   `json:"order_violations"`
	// OrderCheckedBy is what the order was checked on: "id" (KnowledgeHub's
	// event ids), "offset" (Centrifugo's publication offsets), "sequence"
	// (the bench's sequence numbers, Centrifugo without history and
	// --concurrency 1) or "none".
	OrderCheckedBy string `json:"order_checked_by,omitempty"`
	Unacknowledged int64  `json:"unacknowledged_received"`
	// DeliveriesPerSec is deliveries from the first publish to the last
	// receipt.
	DeliveriesPerSec float64   `json:"deliveries_per_sec"`
	Latency          Quantiles `json:"latency"`
	// PublishLatency is the publish request round trip.
	PublishLatency Quantiles `json:"publish_latency"`
	// ServerDelivered is the growth of knowledgehub_events_delivered_total,
	// or Centrifugo's centrifugo_transport_messages_sent of push_publication
	// frames (includes the barrier events).
	ServerDelivered int64 `json:"server_metric_delivered,omitempty"`
}

// PublishStats describe a publish-throughput run.
type PublishStats struct {
	Concurrency    int       `json:"concurrency"`
	Batch          int       `json:"batch"`
	Requests       int64     `json:"requests"`
	Events         int64     `json:"events"`
	Errors         int64     `json:"errors"`
	EventsPerSec   float64   `json:"events_per_sec"`
	RequestsPerSec float64   `json:"requests_per_sec"`
	Latency        Quantiles `json:"latency"`
	// ErrorsBy counts failed requests by status and code.
	ErrorsBy map[string]int `json:"errors_by,omitempty"`
}

// ResumeStats describe a reconnect storm with replay.
type ResumeStats struct {
	Clients int `json:"clients"`
	Missed  int `json:"events_missed"`
	// ReconnectSeconds is from the first dial to the last welcome;
	// ReplaySeconds from the first dial to the last client holding all the
	// events it missed.
	ReconnectSeconds float64 `json:"reconnect_seconds"`
	ReplaySeconds    float64 `json:"replay_seconds"`
	// Completion is each client's dial to its last missed event.
	Completion Quantiles `json:"completion"`
	Exact      int       `json:"clients_exact"`
	Incomplete int       `json:"clients_incomplete"`
	Missing    int64     `json:"missing"`
	Mismatched int64     `json:"mismatched"`
	Extra      int64     `json:"extra"`
	Gaps       int       `json:"gaps"`
	// ReplayedPerSec is replayed events delivered per second.
	ReplayedPerSec float64 `json:"replayed_per_sec"`
}

// CPUStats is the server's CPU use during the measured phase.
type CPUStats struct {
	PID     int     `json:"pid"`
	Seconds float64 `json:"seconds"`
	Wall    float64 `json:"wall_seconds"`
	// Cores is Seconds / Wall.
	Cores float64 `json:"cores"`
	// PerMillionDeliveries is CPU seconds per million deliveries (fanout).
	PerMillionDeliveries float64 `json:"seconds_per_million_deliveries,omitempty"`
}

// BenchProcess is what the bench itself used: it shares the machine with
// the server, so its CPU is CPU the server did not have.
type BenchProcess struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_seconds"`
	RSSBytes   int64   `json:"rss_bytes"`
	MaxFiles   uint64  `json:"max_open_files"`
}

func (r *Result) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

func (r *Result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// WriteTable writes r for people.
func (r *Result) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "  %s\t%s\n", k, fmt.Sprintf(format, args...)) }
	head := func(s string) { fmt.Fprintf(tw, "%s\n", s) }
	lat := func(k string, q Quantiles) {
		if q.Count == 0 {
			row(k, "-")
			return
		}
		row(k, "p50 %s  p95 %s  p99 %s  max %s  (n=%d)", fmtMS(q.P50), fmtMS(q.P95), fmtMS(q.P99), fmtMS(q.Max), q.Count)
	}
	status := "OK"
	if !r.OK {
		status = "FAILED"
	}
	target := r.Target
	if target == "" {
		target = TargetKnowledgeHub
	}
	head(fmt.Sprintf("bench %s against %s at %s: %s in %.1fs", r.Scenario, target, r.Server, status, r.Seconds))
	if r.Transport != "" && r.Scenario != "publish" {
		if r.Channel != "" {
			row("connections", "%d over %s, channel %s", r.N, r.Transport, r.Channel)
		} else {
			row("connections", "%d over %s", r.N, r.Transport)
		}
	}
	conn := func(title string, c *ConnectStats) {
		if c == nil {
			return
		}
		head(title)
		row("welcomed", "%d of %d (%d failed, %d retries)", c.Welcomed, c.Attempted, c.Failed, c.Retries)
		row("connect rate", "%.0f conn/s over %.3fs", c.RatePerSec, c.Seconds)
		lat("dial→welcome", c.Latency)
		for _, k := range sortedKeys(c.Refusals) {
			row("refused", "%d× %s", c.Refusals[k], k)
		}
	}
	conn("connect", r.Connect)
	if m := r.Memory; m != nil {
		head("server memory")
		if m.RSSAfter > 0 {
			row("RSS (/proc)", "%s → %s  = %s per connection (pid %d)", fmtBytes(m.RSSBefore), fmtBytes(m.RSSAfter), fmtBytes(int64(m.BytesPerConn)), m.ServerPID)
		} else {
			row("RSS (/proc)", "- (no server pid)")
		}
		if m.MetricsRSSAfter > 0 {
			row("RSS (/metrics)", "%s → %s  = %s per connection", fmtBytes(m.MetricsRSSBefore), fmtBytes(m.MetricsRSSAfter), fmtBytes(int64(m.MetricsBytesPerConn)))
			row("Go heap in use", "%s → %s", fmtBytes(m.HeapInuseBefore), fmtBytes(m.HeapInuseAfter))
			row("goroutines", "%d → %d  = %.2f per connection", m.GoroutinesBefore, m.GoroutinesAfter, m.GoroutinesPerConn)
			row("server connections", "%d", m.ServerConnections)
		}
		if m.RSSBaseline > 0 {
			row("vs --rss-baseline", "%s → %s over %d server connections = %s per connection", fmtBytes(m.RSSBaseline), fmtBytes(m.RSSAfter), m.ServerConnections, fmtBytes(int64(m.BytesPerServerConn)))
		}
	}
	if f := r.Fanout; f != nil {
		head("fanout")
		row("published", "%d events (%.1f/s, target %.1f/s, batch %d), %d publish errors", f.Published, f.PublishRate, f.TargetRate, f.Batch, f.PublishErrors)
		row("deliveries", "%d of %d expected  = %.0f/s", f.Delivered, f.Expected, f.DeliveriesPerSec)
		row("lost / dup / order", "%d missing, %d duplicates, %d out of order, %d unacknowledged", f.Missing, f.Duplicates, f.OrderViolations, f.Unacknowledged)
		lat("publish→receive", f.Latency)
		lat("publish request", f.PublishLatency)
		if f.ServerDelivered > 0 {
			metric := "events_delivered_total"
			if target == TargetCentrifugo {
				metric = "transport_messages_sent push_publication"
			}
			row("server metric", "%d deliveries (%s, incl. barriers)", f.ServerDelivered, metric)
		}
	}
	if p := r.Publish; p != nil {
		head("publish")
		row("throughput", "%.0f events/s, %.0f requests/s (concurrency %d, batch %d)", p.EventsPerSec, p.RequestsPerSec, p.Concurrency, p.Batch)
		row("total", "%d events in %d requests, %d errors", p.Events, p.Requests, p.Errors)
		lat("request latency", p.Latency)
		for _, k := range sortedKeys(p.ErrorsBy) {
			row("error", "%d× %s", p.ErrorsBy[k], k)
		}
	}
	conn("reconnect", r.Reconnect)
	if s := r.Resume; s != nil {
		head("resume")
		row("missed events", "%d per client, %d clients", s.Missed, s.Clients)
		row("reconnect", "%.2fs to the last welcome", s.ReconnectSeconds)
		row("replay", "%.2fs to the last client complete  (%.0f replayed events/s)", s.ReplaySeconds, s.ReplayedPerSec)
		lat("dial→complete", s.Completion)
		row("exact", "%d of %d clients (%d incomplete, %d missing, %d mismatched, %d extra, %d gaps)", s.Exact, s.Clients, s.Incomplete, s.Missing, s.Mismatched, s.Extra, s.Gaps)
	}
	if c := r.ServerCPU; c != nil {
		head("server CPU")
		row("used", "%.2f CPU-s over %.1fs = %.2f cores (pid %d)", c.Seconds, c.Wall, c.Cores, c.PID)
		if c.PerMillionDeliveries > 0 {
			row("per 1M deliveries", "%.2f CPU-s", c.PerMillionDeliveries)
		}
	}
	if len(r.ClosedByServer) > 0 || len(r.Controls) > 0 || r.ForeignEvents > 0 {
		head("seen")
		for _, k := range sortedKeys(r.ClosedByServer) {
			row("closed by server", "%d× %s", r.ClosedByServer[k], k)
		}
		for _, k := range sortedKeys(r.Controls) {
			row("control message", "%d× %s", r.Controls[k], k)
		}
		if r.ForeignEvents > 0 {
			row("foreign events", "%d (published by someone else)", r.ForeignEvents)
		}
	}
	head("bench process")
	row("used", "%.2f CPU-s, RSS %s, open-file limit %d (pid %d)", r.Bench.CPUSeconds, fmtBytes(r.Bench.RSSBytes), r.Bench.MaxFiles, r.Bench.PID)
	for _, n := range r.Notes {
		row("note", "%s", n)
	}
	for _, p := range r.Problems {
		row("PROBLEM", "%s", p)
	}
	_ = tw.Flush()
}

func sortedKeys(m map[string]int) []string { return slices.Sorted(maps.Keys(m)) }

func fmtMS(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.1fms", v)
	default:
		return fmt.Sprintf("%.3fms", v)
	}
}

func fmtBytes(b int64) string {
	neg := ""
	if b < 0 {
		neg, b = "-", -b
	}
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%s%.2f GiB", neg, float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%s%.1f MiB", neg, float64(b)/(1<<20))
	case b >= 10<<10:
		return fmt.Sprintf("%s%.1f KiB", neg, float64(b)/(1<<10))
	default:
		return fmt.Sprintf("%s%d B", neg, b)
	}
}
