package metrics

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var testTypes = []string{"CODE_CHANGE", "MEMORY_CREATED", "DECISION_MADE", "ERROR_OCCURRED", "PATTERN_DETECTED"}

func TestConnections(t *testing.T) {
	m := New(testTypes)
	m.ConnOpened("websocket", true)
	m.ConnOpened("websocket", false)
	m.ConnOpened("websocket", false)
	m.ConnOpened("sse", false)
	m.ConnOpened("sse", true)
	m.ConnClosed("websocket", false)

	for _, c := range []struct {
		transport, auth string
		want            float64
	}{
		{"websocket", "authenticated", 1},
		{"websocket", "anonymous", 1},
		{"sse", "authenticated", 1},
		{"sse", "anonymous", 1},
	} {
		if got := testutil.ToFloat64(m.connGauges.WithLabelValues(c.transport, c.auth)); got != c.want {
			t.Errorf("knowledgehub_connections{transport=%q,auth=%q} = %v, want %v", c.transport, c.auth, got, c.want)
		}
	}

	s := m.Snapshot()
	c := s.Connections
	if c.Total != 4 || c.WebSocket != 2 || c.SSE != 2 || c.Authenticated != 2 || c.Anonymous != 2 {
		t.Errorf("Snapshot().Connections = %+v, want total 4, 2 of each", c)
	}

	m.ConnClosed("websocket", true)
	m.ConnClosed("websocket", false)
	m.ConnClosed("sse", false)
	m.ConnClosed("sse", true)
	if c := m.Snapshot().Connections; c.Total != 0 || c.WebSocket != 0 || c.SSE != 0 || c.Authenticated != 0 || c.Anonymous != 0 {
		t.Errorf("after closing all: %+v, want zeros", c)
	}
}

func TestUnknownTransportCountsInTotal(t *testing.T) {
	m := New(testTypes)
	m.ConnOpened("longpoll", true)
	s := m.Snapshot().Connections
	if s.Total != 1 || s.Authenticated != 1 || s.WebSocket != 0 || s.SSE != 0 {
		t.Errorf("Snapshot().Connections = %+v", s)
	}
	if got := testutil.ToFloat64(m.connGauges.WithLabelValues("longpoll", "authenticated")); got != 1 {
		t.Errorf("gauge = %v, want 1", got)
	}
	m.ConnClosed("longpoll", true)
	if s := m.Snapshot().Connections; s.Total != 0 {
		t.Errorf("after close: %+v", s)
	}
}

func TestEventsByType(t *testing.T) {
	m := New(testTypes)
	m.Accepted(0, 3)
	m.Accepted(4, 1)
	m.Accepted(-1, 2)
	m.Accepted(99, 1) // out of range: "other"
	m.Accepted(1, 0)  // ignored
	m.Accepted(1, -5) // ignored, must not panic
	m.Delivered(0, 10)
	m.Delivered(2, 1)
	m.Delivered(-1, 4)

	check := func(name string, got, want float64) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("accepted CODE_CHANGE", testutil.ToFloat64(m.acceptedVec.WithLabelValues("CODE_CHANGE")), 3)
	check("accepted PATTERN_DETECTED", testutil.ToFloat64(m.acceptedVec.WithLabelValues("PATTERN_DETECTED")), 1)
	check("accepted MEMORY_CREATED", testutil.ToFloat64(m.acceptedVec.WithLabelValues("MEMORY_CREATED")), 0)
	check("accepted other", testutil.ToFloat64(m.acceptedVec.WithLabelValues("other")), 3)
	check("delivered CODE_CHANGE", testutil.ToFloat64(m.deliveredVec.WithLabelValues("CODE_CHANGE")), 10)
	check("delivered DECISION_MADE", testutil.ToFloat64(m.deliveredVec.WithLabelValues("DECISION_MADE")), 1)
	check("delivered other", testutil.ToFloat64(m.deliveredVec.WithLabelValues("other")), 4)

	s := m.Snapshot()
	if s.Events.Accepted != 7 || s.Events.Delivered != 15 {
		t.Errorf("Snapshot().Events = %+v, want accepted 7, delivered 15", s.Events)
	}

	// Every configured type and "other" is exposed from the start.
	if n := testutil.CollectAndCount(m.acceptedVec); n != len(testTypes)+1 {
		t.Errorf("events_accepted_total has %d series, want %d", n, len(testTypes)+1)
	}
}

func TestNoTypes(t *testing.T) {
	m := New(nil)
	m.Accepted(0, 1)
	m.Delivered(-1, 1)
	if got := testutil.ToFloat64(m.acceptedVec.WithLabelValues("other")); got != 1 {
		t.Errorf("accepted other = %v, want 1", got)
	}
}

func TestCountersAndHistograms(t *testing.T) {
	m := New(testTypes)
	for _, r := range []string{"origin", "token", "token", "limit", "parameter", "shutdown", "weird"} {
		m.HandshakeRejected(r)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues("token")); got != 2 {
		t.Errorf("rejected token = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.rejected.WithLabelValues("weird")); got != 1 {
		t.Errorf("rejected weird = %v, want 1", got)
	}

	m.SlowConsumer("websocket")
	m.SlowConsumer("sse")
	m.SlowConsumer("sse")
	if got := testutil.ToFloat64(m.slow.WithLabelValues("sse")); got != 2 {
		t.Errorf("slow sse = %v, want 2", got)
	}

	m.Disconnect("websocket", 4208)
	m.Disconnect("websocket", 4208)
	m.Disconnect("sse", 1001)
	m.Disconnect("websocket", 1000) // not pre-resolved
	if got := testutil.ToFloat64(m.disconnects.WithLabelValues("websocket", "4208")); got != 2 {
		t.Errorf("disconnects websocket 4208 = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.disconnects.WithLabelValues("sse", "1001")); got != 1 {
		t.Errorf("disconnects sse 1001 = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.disconnects.WithLabelValues("websocket", "1000")); got != 1 {
		t.Errorf("disconnects websocket 1000 = %v, want 1", got)
	}

	m.PanicRecovered()
	if got := testutil.ToFloat64(m.panics); got != 1 {
		t.Errorf("panics = %v, want 1", got)
	}

	m.ObserveDeliveryLatency(2*time.Millisecond, 1)
	m.ObserveDeliveryLatency(-time.Second, 1)
	m.ObserveStore("append", time.Millisecond)
	m.ObserveStore("read", time.Millisecond)
	m.ObserveStore("read", time.Millisecond)
	m.ObserveStore("scan", time.Millisecond)

	want := `
# HELP knowledgehub_delivery_latency_seconds Time from an event's acceptance to its being written to a client connection.
# TYPE knowledgehub_delivery_latency_seconds histogram
knowledgehub_delivery_latency_seconds_bucket{le="0.0005"} 1
knowledgehub_delivery_latency_seconds_bucket{le="0.001"} 1
knowledgehub_delivery_latency_seconds_bucket{le="0.0025"} 2
knowledgehub_delivery_latency_seconds_bucket{le="0.005"} 2
knowledgehub_delivery_latency_seconds_bucket{le="0.01"} 2
knowledgehub_delivery_latency_seconds_bucket{le="0.025"} 2
knowledgehub_delivery_latency_seconds_bucket{le="0.05"} 2
knowledgehub_delivery_latency_seconds_bucket{le="0.1"} 2
knowledgehub_delivery_latency_seconds_bucket{le="0.25"} 2
knowledgehub_delivery_latency_seconds_bucket{le="0.5"} 2
knowledgehub_delivery_latency_seconds_bucket{le="1"} 2
knowledgehub_delivery_latency_seconds_bucket{le="2.5"} 2
knowledgehub_delivery_latency_seconds_bucket{le="5"} 2
knowledgehub_delivery_latency_seconds_bucket{le="+Inf"} 2
knowledgehub_delivery_latency_seconds_sum 0.002
knowledgehub_delivery_latency_seconds_count 2
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "knowledgehub_delivery_latency_seconds"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.storeLatency); n != 3 {
		t.Errorf("store_latency_seconds has %d series, want 3", n)
	}
}

func TestHandlerExposesEverything(t *testing.T) {
	m := New(testTypes)
	m.ConnOpened("sse", false)
	m.Accepted(0, 1)
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	text := string(body)
	for _, name := range []string{
		`knowledgehub_connections{auth="anonymous",transport="sse"} 1`,
		`knowledgehub_events_accepted_total{type="CODE_CHANGE"} 1`,
		`knowledgehub_events_delivered_total{type="other"} 0`,
		"knowledgehub_handshakes_rejected_total{reason=\"origin\"} 0",
		"knowledgehub_delivery_latency_seconds_bucket",
		"knowledgehub_slow_consumers_total{transport=\"websocket\"} 0",
		"knowledgehub_disconnects_total{code=\"4208\",transport=\"sse\"} 0",
		"knowledgehub_store_latency_seconds_bucket",
		"knowledgehub_panics_recovered_total 0",
		"knowledgehub_uptime_seconds",
		"go_goroutines",
		"process_start_time_seconds",
	} {
		if !strings.Contains(text, name) {
			t.Errorf("exposition lacks %q", name)
		}
	}
	// Lint the metric families that are ours.
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, Namespace+"_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestSnapshotJSON(t *testing.T) {
	m := New(testTypes)
	m.ConnOpened("websocket", true)
	m.Delivered(1, 2)
	b, err := json.Marshal(m.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	conns, _ := got["connections"].(map[string]any)
	for _, k := range []string{"total", "websocket", "sse", "authenticated", "anonymous"} {
		if _, ok := conns[k]; !ok {
			t.Errorf("connections.%s missing in %s", k, b)
		}
	}
	events, _ := got["events"].(map[string]any)
	if events["accepted"] != float64(0) || events["delivered"] != float64(2) {
		t.Errorf("events = %v", events)
	}
	if conns["total"] != float64(1) || conns["authenticated"] != float64(1) {
		t.Errorf("connections = %v", conns)
	}
	if up, ok := got["uptime_seconds"].(float64); !ok || up < 0 {
		t.Errorf("uptime_seconds = %v", got["uptime_seconds"])
	}
}

// TestSnapshotConsistentUnderLoad opens and closes connections from several
// goroutines while snapshots are taken: totals always equal the sum of their
// parts, and the final counts are exact.
func TestSnapshotConsistentUnderLoad(t *testing.T) {
	m := New(testTypes)
	const workers, rounds = 8, 500
	var wg sync.WaitGroup
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := m.Snapshot().Connections
			if s.Total != s.WebSocket+s.SSE || s.Total != s.Authenticated+s.Anonymous {
				t.Errorf("inconsistent snapshot %+v", s)
				return
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := transportNames[w%2]
			auth := w%3 == 0
			for range rounds {
				m.ConnOpened(tr, auth)
				m.Delivered(w%len(testTypes), 1)
				m.ConnClosed(tr, auth)
			}
			m.ConnOpened(tr, auth)
		}()
	}
	wg.Wait()
	close(stop)
	<-done
	s := m.Snapshot()
	if s.Connections.Total != workers || s.Events.Delivered != workers*rounds {
		t.Errorf("final snapshot %+v", s)
	}
	var sum float64
	for _, tr := range transportNames {
		for _, a := range authNames {
			sum += testutil.ToFloat64(m.connGauges.WithLabelValues(tr, a))
		}
	}
	if sum != workers {
		t.Errorf("knowledgehub_connections sums to %v, want %d", sum, workers)
	}
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	m := New(testTypes)
	for name, f := range map[string]func(){
		"Delivered":              func() { m.Delivered(2, 1) },
		"Delivered other":        func() { m.Delivered(-1, 3) },
		"Accepted":               func() { m.Accepted(0, 1) },
		"ObserveDeliveryLatency": func() { m.ObserveDeliveryLatency(3*time.Millisecond, 1) },
		"ConnOpened/Closed": func() {
			m.ConnOpened("websocket", true)
			m.ConnClosed("websocket", true)
		},
		"SlowConsumer":      func() { m.SlowConsumer("sse") },
		"Disconnect":        func() { m.Disconnect("websocket", 4208) },
		"HandshakeRejected": func() { m.HandshakeRejected("limit") },
		"ObserveStore":      func() { m.ObserveStore("append", time.Millisecond) },
		"Snapshot":          func() { _ = m.Snapshot() },
	} {
		if a := testing.AllocsPerRun(1000, f); a != 0 {
			t.Errorf("%s: %v allocs per call, want 0", name, a)
		}
	}
}

func BenchmarkDelivered(b *testing.B) {
	m := New(testTypes)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.Delivered(i%len(testTypes), 1)
			i++
		}
	})
}

func BenchmarkObserveDeliveryLatency(b *testing.B) {
	m := New(testTypes)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			m.ObserveDeliveryLatency(d, 1)
			d = (d + 137*time.Microsecond) % (2 * time.Second)
		}
	})
}

func BenchmarkConnOpenedClosed(b *testing.B) {
	m := New(testTypes)
	b.ReportAllocs()
	for b.Loop() {
		m.ConnOpened("sse", false)
		m.ConnClosed("sse", false)
	}
}

func BenchmarkSnapshot(b *testing.B) {
	m := New(testTypes)
	b.ReportAllocs()
	for b.Loop() {
		_ = m.Snapshot()
	}
}
