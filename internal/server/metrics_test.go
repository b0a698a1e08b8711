package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// The operations endpoints of SPEC §7 with real traffic: /metrics is
// scraped before and after real clients connect, are refused, receive
// events and fall behind, and every counter must move by exactly what
// happened; /api/realtime/stats must agree with /metrics.

// promScrape is one parsed scrape of /metrics.
type promScrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, n *servertest.Node) promScrape {
	t.Helper()
	resp, err := http.Get(n.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /metrics: Content-Type %q, want the text exposition format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: not the Prometheus text format: %v", err)
	}
	return fams
}

// get returns the sum of the samples of the counter or gauge name whose
// labels include labels (name_count and name_sum give a histogram's count
// and sum). A family that does not exist is 0.
func (s promScrape) get(name string, labels ...string) float64 {
	fam := s[name]
	field := ""
	if fam == nil {
		for _, suffix := range []string{"_count", "_sum"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && s[base] != nil {
				fam, field = s[base], suffix
			}
		}
	}
	if fam == nil {
		return 0
	}
	var sum float64
	for _, m := range fam.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case field == "_count" && m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case field == "_sum" && m.GetHistogram() != nil:
			sum += m.GetHistogram().GetSampleSum()
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// hasLabels reports whether m has every name=value pair of labels (given as
// name, value, name, value, ...).
func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// metricWant is one expected change of a sample between two scrapes.
type metricWant struct {
	name   string
	labels []string
	delta  float64
}

func (w metricWant) String() string {
	if len(w.labels) == 0 {
		return w.name
	}
	var b strings.Builder
	for i := 0; i+1 < len(w.labels); i += 2 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%s=%q", w.labels[i], w.labels[i+1])
	}
	return w.name + "{" + b.String() + "}"
}

// waitDeltas scrapes until every sample in wants moved by exactly its
// delta from before (the hub counts a delivery just after writing it, so a
// client may see an event a moment before the counter moves), then scrapes
// once more after a short pause so that a counter that overshoots is
// caught too. It returns the last scrape.
func waitDeltas(t *testing.T, n *servertest.Node, before promScrape, wants []metricWant) promScrape {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	var after promScrape
	var wrong []string
	check := func() {
		after = scrapeMetrics(t, n)
		wrong = wrong[:0]
		for _, w := range wants {
			if d := after.get(w.name, w.labels...) - before.get(w.name, w.labels...); d != w.delta {
				wrong = append(wrong, fmt.Sprintf("%s moved by %v, want %v", w, d, w.delta))
			}
		}
	}
	for check(); len(wrong) > 0 && time.Now().Before(deadline); check() {
		time.Sleep(20 * time.Millisecond)
	}
	if len(wrong) == 0 {
		time.Sleep(100 * time.Millisecond)
		check()
	}
	for _, w := range wrong {
		t.Error(w)
	}
	return after
}

// statsJSON is GET /api/realtime/stats.
type statsJSON struct {
	Connections struct {
		Total, WebSocket, SSE, Authenticated, Anonymous float64
	}
	Events struct {
		Accepted, Delivered float64
	}
	UptimeSeconds float64 `json:"uptime_seconds"`
}

func getStats(t *testing.T, n *servertest.Node) statsJSON {
	t.Helper()
	resp, err := http.Get(n.URL + "/api/realtime/stats")
	if err != nil {
		t.Fatalf("GET /api/realtime/stats: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/realtime/stats: status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var s statsJSON
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("GET /api/realtime/stats: %v", err)
	}
	return s
}

// checkStatsAgree checks that /api/realtime/stats and /metrics, taken while
// nothing happens, give the same numbers.
func checkStatsAgree(t *testing.T, n *servertest.Node) {
	t.Helper()
	st := getStats(t, n)
	m := scrapeMetrics(t, n)
	const conns = "knowledgehub_connections"
	for _, c := range []struct {
		what        string
		stats, prom float64
	}{
		{"connections.total", st.Connections.Total, m.get(conns)},
		{"connections.websocket", st.Connections.WebSocket, m.get(conns, "transport", "websocket")},
		{"connections.sse", st.Connections.SSE, m.get(conns, "transport", "sse")},
		{"connections.authenticated", st.Connections.Authenticated, m.get(conns, "auth", "authenticated")},
		{"connections.anonymous", st.Connections.Anonymous, m.get(conns, "auth", "anonymous")},
		{"events.accepted", st.Events.Accepted, m.get("knowledgehub_events_accepted_total")},
		{"events.delivered", st.Events.Delivered, m.get("knowledgehub_events_delivered_total")},
	} {
		if c.stats != c.prom {
			t.Errorf("/api/realtime/stats %s = %v, but /metrics says %v", c.what, c.stats, c.prom)
		}
	}
	if st.UptimeSeconds <= 0 || m.get("knowledgehub_uptime_seconds") <= 0 {
		t.Errorf("uptime: stats %v, metrics %v; want > 0", st.UptimeSeconds, m.get("knowledgehub_uptime_seconds"))
	}
}

func TestMetricsWithTraffic(t *testing.T) {
	n := servertest.Start(t, "--max-connections-per-user", "1", "--max-queue-bytes", "65536")

	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(n.URL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !json.Valid(body) {
			t.Errorf("GET %s: %d %s, want 200 and a JSON body", path, resp.StatusCode, body)
		}
	}

	start := scrapeMetrics(t, n)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if start[name] == nil || start.get(name) <= 0 {
			t.Errorf("/metrics has no %s (or it is 0)", name)
		}
	}
	for _, name := range []string{"knowledgehub_connections", "knowledgehub_handshakes_rejected_total",
		"knowledgehub_events_accepted_total", "knowledgehub_events_delivered_total", "knowledgehub_delivery_latency_seconds",
		"knowledgehub_slow_consumers_total", "knowledgehub_disconnects_total"} {
		if start[name] == nil {
			t.Errorf("/metrics has no %s before any traffic", name)
		}
	}
	if ft := start["knowledgehub_delivery_latency_seconds"].GetType(); ft != dto.MetricType_HISTOGRAM {
		t.Errorf("knowledgehub_delivery_latency_seconds is a %v, want a histogram", ft)
	}
	checkStatsAgree(t, n)

	// Connections: two anonymous WebSockets and one authenticated stream.
	const conns = "knowledgehub_connections"
	connWants := func(wsAnon, sseAuth float64) []metricWant {
		return []metricWant{
			{conns, []string{"transport", "websocket", "auth", "anonymous"}, wsAnon},
			{conns, []string{"transport", "websocket", "auth", "authenticated"}, 0},
			{conns, []string{"transport", "sse", "auth", "anonymous"}, 0},
			{conns, []string{"transport", "sse", "auth", "authenticated"}, sseAuth},
		}
	}
	ws1 := mustDialWS(t, n, "")
	ws1.welcome()
	ws2 := mustDialWS(t, n, "event_types=CODE_CHANGE&job_ids=job-1")
	ws2.welcome()
	alice := servertest.Token(t, "alice", time.Hour)
	sse, resp := openSSE(t, n, "token="+alice, nil)
	if sse == nil {
		t.Fatalf("alice's stream: status %d", resp.StatusCode)
	}
	if w := sse.connected(); w["user_id"] != "alice" {
		t.Fatalf("alice's stream: connected %v", w)
	}
	open := waitDeltas(t, n, start, connWants(2, 1))
	checkStatsAgree(t, n)

	// One refused handshake of each kind; none of them counts as a connection.
	const rejected = "knowledgehub_handshakes_rejected_total"
	before := open
	if _, resp, err := dialWS(t, n, "", http.Header{"Origin": {"http://evil.example"}}); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("WebSocket from a foreign origin: %v %v, want 403", err, resp)
	}
	if s, resp := openSSE(t, n, "token=not-a-jwt", nil); s != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("stream with a bad token: status %d, want 401", resp.StatusCode)
	}
	if _, resp, err := dialWS(t, n, "event_types=NOPE", nil); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("WebSocket with event_types=NOPE: %v %v, want 400", err, resp)
	}
	// --max-connections-per-user 1: alice has her stream already.
	if _, resp, err := dialWS(t, n, "token="+url.QueryEscape(alice), nil); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("alice's second connection: %v %v, want 429", err, resp)
	}
	open = waitDeltas(t, n, before, append(connWants(0, 0),
		metricWant{rejected, []string{"reason", "origin"}, 1},
		metricWant{rejected, []string{"reason", "token"}, 1},
		metricWant{rejected, []string{"reason", "parameter"}, 1},
		metricWant{rejected, []string{"reason", "limit"}, 1},
		metricWant{rejected, []string{"reason", "shutdown"}, 0},
		metricWant{rejected, nil, 4},
	))

	// Events, routed by SPEC §1 to
	//   ws1 (anonymous, everything public), ws2 (anonymous, CODE_CHANGE, job-1),
	//   alice's stream (everything public or hers).
	before = open
	ids := map[string]string{}
	pub := func(name string, ev map[string]any) {
		ids[name] = n.MustPublish(t, ev)
	}
	pub("code", map[string]any{"type": "CODE_CHANGE", "data": 1})                                 // ws1 ws2 sse
	pub("code job-1", map[string]any{"type": "CODE_CHANGE", "data": 2, "job_id": "job-1"})        // ws2
	pub("decision", map[string]any{"type": "DECISION_MADE", "data": 3})                           // ws1 sse
	pub("decision alice", map[string]any{"type": "DECISION_MADE", "data": 4, "user_id": "alice"}) // sse
	pub("memory bob", map[string]any{"type": "MEMORY_CREATED", "data": 5, "user_id": "bob"})      // nobody
	status, out := n.Publish(t, []map[string]any{                                                 // ws1 sse, twice
		{"type": "MEMORY_CREATED", "data": 6}, {"type": "MEMORY_CREATED", "data": 7},
	})
	if status != http.StatusCreated {
		t.Fatalf("batch publish: %d %v", status, out)
	}
	pub("error job-2", map[string]any{"type": "ERROR_OCCURRED", "data": 8, "job_id": "job-2"}) // nobody
	pub("last", map[string]any{"type": "PATTERN_DETECTED", "data": 9, "user_id": "alice"})     // sse
	// The clients got what they should: 4 + 2 + 6 = 12 deliveries.
	dataOf := func(evs []map[string]any) []any {
		var d []any
		for _, e := range evs {
			d = append(d, e["data"])
		}
		return d
	}
	if got := dataOf(ws1.events(4)); fmt.Sprint(got) != "[1 3 6 7]" {
		t.Errorf("ws1 received %v, want [1 3 6 7]", got)
	}
	if got := dataOf(ws2.events(2)); fmt.Sprint(got) != "[1 2]" {
		t.Errorf("ws2 received %v, want [1 2]", got)
	}
	var sseGot []any
	for range 6 {
		sseGot = append(sseGot, sse.event()["data"])
	}
	if fmt.Sprint(sseGot) != "[1 3 4 6 7 9]" {
		t.Errorf("alice's stream received %v, want [1 3 4 6 7 9]", sseGot)
	}
	const accepted, delivered, latency = "knowledgehub_events_accepted_total", "knowledgehub_events_delivered_total", "knowledgehub_delivery_latency_seconds_count"
	open = waitDeltas(t, n, before, append(connWants(0, 0),
		metricWant{accepted, []string{"type", "CODE_CHANGE"}, 2},
		metricWant{accepted, []string{"type", "DECISION_MADE"}, 2},
		metricWant{accepted, []string{"type", "MEMORY_CREATED"}, 3},
		metricWant{accepted, []string{"type", "ERROR_OCCURRED"}, 1},
		metricWant{accepted, []string{"type", "PATTERN_DETECTED"}, 1},
		metricWant{accepted, nil, 9},
		metricWant{delivered, []string{"type", "CODE_CHANGE"}, 4},
		metricWant{delivered, []string{"type", "DECISION_MADE"}, 3},
		metricWant{delivered, []string{"type", "MEMORY_CREATED"}, 4},
		metricWant{delivered, []string{"type", "ERROR_OCCURRED"}, 0},
		metricWant{delivered, []string{"type", "PATTERN_DETECTED"}, 1},
		metricWant{delivered, nil, 12},
		metricWant{rejected, nil, 0},
	))
	if d := open.get(latency) - before.get(latency); d <= 0 {
		t.Errorf("%s did not increase with 12 deliveries", latency)
	} else {
		t.Logf("%s moved by %v for 9 events and 12 deliveries", latency, d)
	}
	if b := open.get("knowledgehub_delivery_latency_seconds_sum") - before.get("knowledgehub_delivery_latency_seconds_sum"); b <= 0 || b > 10 {
		t.Errorf("delivery latency sum moved by %v s, want a small positive time", b)
	}
	checkStatsAgree(t, n)

	// The clients leave: the gauges go back to where they were.
	before = open
	_ = ws1.conn.Close()
	_ = ws2.conn.Close()
	_ = sse.resp.Body.Close()
	open = waitDeltas(t, n, before, connWants(-2, -1))
	checkStatsAgree(t, n)

	// A slow consumer: a client that stops reading. The server queues at
	// most 64 KiB for it (--max-queue-bytes) beyond what the sockets hold;
	// bursts of 50 events of 60 KB are published until it gives up on the
	// client, which must then see close code 4208 (SPEC §2). (Today the
	// first burst does it: see TestWebSocketSlowConsumer.)
	before = open
	dialer := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	slow, _, err := dialer.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer slow.Close()
	_ = slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, msg, err := slow.ReadMessage(); err != nil || !strings.Contains(string(msg), `"type":"connected"`) {
		t.Fatalf("slow client: first message %s (%v), want the welcome", msg, err)
	}
	big := strings.Repeat("x", 60000)
	batch := make([]map[string]any, 50)
	for i := range batch {
		batch[i] = map[string]any{"type": "CODE_CHANGE", "data": big}
	}
	bursts := 0
	for bursts < 40 {
		if status, out := n.Publish(t, batch); status != http.StatusCreated {
			t.Fatalf("publish: %d %v", status, out)
		}
		bursts++
		if scrapeMetrics(t, n).get("knowledgehub_slow_consumers_total") > before.get("knowledgehub_slow_consumers_total") {
			break
		}
	}
	// Now read: what the sockets held, then the close frame.
	_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, _, err := slow.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4208 {
			t.Fatalf("after %d bursts the slow client ended with %v, want close 4208", bursts, err)
		}
		break
	}
	after := waitDeltas(t, n, before, append(connWants(0, 0),
		metricWant{"knowledgehub_slow_consumers_total", []string{"transport", "websocket"}, 1},
		metricWant{"knowledgehub_slow_consumers_total", []string{"transport", "sse"}, 0},
		metricWant{"knowledgehub_disconnects_total", []string{"transport", "websocket", "code", "4208"}, 1},
		metricWant{"knowledgehub_disconnects_total", nil, 1},
		metricWant{accepted, []string{"type", "CODE_CHANGE"}, float64(50 * bursts)},
	))
	t.Logf("the slow consumer got %v deliveries before it was cut off after %d bursts",
		after.get(delivered)-before.get(delivered), bursts)
	checkStatsAgree(t, n)

	// Every knowledgehub_ family has help text and a known type.
	var names []string
	for name, fam := range after {
		if strings.HasPrefix(name, "knowledgehub_") {
			names = append(names, name)
			if fam.GetHelp() == "" {
				t.Errorf("%s has no HELP", name)
			}
		}
	}
	sort.Strings(names)
	t.Logf("knowledgehub metrics: %s", strings.Join(names, " "))
}

// TestMetricsStoreLatency: appends (publishes) and reads (history, resume)
// are timed by operation.
func TestMetricsStoreLatency(t *testing.T) {
	n := servertest.Start(t)
	before := scrapeMetrics(t, n)
	first := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1})
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 2})
	resp, err := http.Get(n.URL + "/api/realtime/events?after=0-0")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c := mustDialWS(t, n, "last_event_id="+first)
	c.welcome()
	c.events(1)
	after := scrapeMetrics(t, n)
	appends := after.get("knowledgehub_store_latency_seconds_count", "op", "append") - before.get("knowledgehub_store_latency_seconds_count", "op", "append")
	reads := after.get("knowledgehub_store_latency_seconds_count", "op", "read") - before.get("knowledgehub_store_latency_seconds_count", "op", "read")
	if appends != 2 {
		t.Errorf("store appends timed %v times, want 2", appends)
	}
	if reads < 2 {
		t.Errorf("store reads timed %v times, want at least 2 (history and replay)", reads)
	}
}
