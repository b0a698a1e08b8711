package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// start runs a server whose limits let a load test through.
func start(t *testing.T) *servertest.Node {
	t.Helper()
	return servertest.Start(t,
		"--connect-rate-per-ip", "0", "--connect-rate-per-user", "0",
		"--max-connections-per-ip", "0", "--max-connections-per-user", "0")
}

func baseConfig(n *servertest.Node, scenario string) Config {
	return Config{
		Scenario:   scenario,
		Server:     n.URL,
		N:          20,
		PublishKey: servertest.PublishKey,
		Secret:     servertest.Secret,
		ServerPID:  os.Getpid(), // the server runs in this process
		Settle:     200 * time.Millisecond,
		Duration:   time.Second,
		Drain:      5 * time.Second,
		Timeout:    30 * time.Second,
	}
}

func checkOK(t *testing.T, res *Result) {
	t.Helper()
	var buf bytes.Buffer
	res.WriteTable(&buf)
	t.Logf("\n%s", buf.String())
	if !res.OK {
		t.Fatalf("run not OK: %v", res.Problems)
	}
	if len(res.ClosedByServer) > 0 {
		t.Errorf("closed by server: %v", res.ClosedByServer)
	}
}

func TestIdle(t *testing.T) {
	for _, tr := range []string{"ws", "sse", "both"} {
		t.Run(tr, func(t *testing.T) {
			n := start(t)
			cfg := baseConfig(n, "idle")
			cfg.Transport = tr
			cfg.Hold = 200 * time.Millisecond
			cfg.RSSBaseline = 1 << 20
			var progress bytes.Buffer
			res, err := Idle(context.Background(), cfg, &progress)
			if err != nil {
				t.Fatal(err)
			}
			checkOK(t, res)
			c := res.Connect
			if c == nil || c.Welcomed != 20 || c.Failed != 0 {
				t.Fatalf("connect = %+v", c)
			}
			if c.RatePerSec <= 0 || c.Latency.Count != 20 || c.Latency.P50 <= 0 {
				t.Errorf("connect rate/latency = %v %+v", c.RatePerSec, c.Latency)
			}
			m := res.Memory
			if m == nil || m.RSSBefore <= 0 || m.RSSAfter <= 0 || m.ServerPID != os.Getpid() {
				t.Fatalf("memory = %+v", m)
			}
			if m.MetricsRSSAfter <= 0 || m.GoroutinesAfter <= 0 {
				t.Errorf("metrics cross-check missing: %+v", m)
			}
			if m.ServerConnections != 20 {
				t.Errorf("server connections gauge = %d, want 20", m.ServerConnections)
			}
			if m.BytesPerServerConn <= 0 {
				t.Errorf("bytes per server connection over the baseline = %v", m.BytesPerServerConn)
			}
		})
	}
}

func TestIdleAuthenticated(t *testing.T) {
	n := start(t)
	cfg := baseConfig(n, "idle")
	cfg.Transport = "both"
	cfg.TokenUser = "user-%d"
	res, err := Idle(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkOK(t, res)

	// A wrong secret: every connection refused, and said so.
	cfg.Secret = "wrong-secret-wrong-secret-wrong-secret"
	cfg.ConnectAttempts = 1
	res, err = Idle(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK || res.Connect.Welcomed != 0 {
		t.Fatalf("bad tokens accepted: %+v", res.Connect)
	}
	if res.Connect.Refusals["401 invalid_token"] != 10 || res.Connect.Refusals["invalid_token"] != 10 {
		t.Errorf("refusals = %v", res.Connect.Refusals)
	}
}

func TestFanout(t *testing.T) {
	for _, tc := range []struct {
		transport string
		batch     int
		job       string
	}{{"ws", 1, ""}, {"sse", 5, ""}, {"both", 3, "job-7"}} {
		t.Run(tc.transport, func(t *testing.T) {
			n := start(t)
			cfg := baseConfig(n, "fanout")
			cfg.Transport = tc.transport
			cfg.Rate = 50
			cfg.Batch = tc.batch
			cfg.JobID = tc.job
			res, err := Fanout(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkOK(t, res)
			f := res.Fanout
			if f.Published != 50 {
				t.Errorf("published %d, want 50", f.Published)
			}
			if f.Delivered != int64(20*f.Published) || f.Expected != f.Delivered {
				t.Errorf("delivered %d of %d, want %d", f.Delivered, f.Expected, 20*f.Published)
			}
			if f.Missing != 0 || f.Duplicates != 0 || f.OrderViolations != 0 || f.Unacknowledged != 0 {
				t.Errorf("losses: %+v", f)
			}
			if f.Latency.Count != uint64(f.Delivered) || f.Latency.P50 <= 0 || f.Latency.Max < f.Latency.P99 {
				t.Errorf("latency = %+v", f.Latency)
			}
			if f.DeliveriesPerSec <= 0 {
				t.Errorf("deliveries/s = %v", f.DeliveriesPerSec)
			}
			// A second of this load may use less than one clock tick (10 ms).
			if res.ServerCPU == nil || res.ServerCPU.Seconds < 0 || res.ServerCPU.Wall <= 0 {
				t.Errorf("server cpu = %+v", res.ServerCPU)
			}
			if f.ServerDelivered < f.Delivered {
				t.Errorf("server metric says %d deliveries, we counted %d", f.ServerDelivered, f.Delivered)
			}
		})
	}
}

func TestPublish(t *testing.T) {
	n := start(t)
	cfg := baseConfig(n, "publish")
	cfg.Concurrency = 3
	cfg.Batch = 10
	res, err := Publish(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkOK(t, res)
	p := res.Publish
	if p.Events <= 0 || p.Events != p.Requests*10 || p.Errors != 0 {
		t.Errorf("publish = %+v", p)
	}
	if p.EventsPerSec <= 0 || p.Latency.P50 <= 0 || p.Latency.P99 < p.Latency.P50 {
		t.Errorf("rate/latency = %v %+v", p.EventsPerSec, p.Latency)
	}
}

func TestResume(t *testing.T) {
	for _, tr := range []string{"ws", "sse", "both"} {
		t.Run(tr, func(t *testing.T) {
			n := start(t)
			cfg := baseConfig(n, "resume")
			cfg.Transport = tr
			cfg.Events = 30
			cfg.Batch = 7
			res, err := Resume(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkOK(t, res)
			s := res.Resume
			if s.Clients != 20 || s.Missed != 30 || s.Exact != 20 || s.Incomplete != 0 {
				t.Fatalf("resume = %+v", s)
			}
			if s.Missing != 0 || s.Mismatched != 0 || s.Extra != 0 || s.Gaps != 0 {
				t.Errorf("resume = %+v", s)
			}
			if s.ReplaySeconds <= 0 || s.ReconnectSeconds <= 0 || s.Completion.Count != 20 {
				t.Errorf("resume timing = %+v", s)
			}
			if res.Reconnect == nil || res.Reconnect.Welcomed != 20 {
				t.Errorf("reconnect = %+v", res.Reconnect)
			}
		})
	}
}

func TestResumeGap(t *testing.T) {
	// More missed events than the history holds: the clients are told
	// (gap) and the run fails.
	n := servertest.Start(t, "--history-size", "10", "--connect-rate-per-ip", "0", "--max-connections-per-ip", "0")
	cfg := baseConfig(n, "resume")
	cfg.N = 4
	cfg.Events = 25
	cfg.Batch = 5
	cfg.Drain = time.Second
	res, err := Resume(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK || res.Resume.Exact != 0 || res.Resume.Gaps != 4 {
		t.Fatalf("resume past the history = OK %v %+v", res.OK, res.Resume)
	}
}

func TestCommandJSON(t *testing.T) {
	n := start(t)
	var out, errOut bytes.Buffer
	env := func(string) string { return "" }
	err := RunCommand(context.Background(), []string{"fanout", "--server", n.URL, "--key", servertest.PublishKey,
		"--n", "10", "--rate", "20", "--duration", "1s", "--server-pid", "-1", "--json"}, &out, &errOut, env)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var res Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !res.OK || res.Target != TargetKnowledgeHub || res.Fanout == nil || res.Fanout.Delivered != 200 || res.Fanout.OrderCheckedBy != "id" || res.ServerCPU != nil {
		t.Fatalf("result = %s", out.String())
	}

	// Flags before the scenario, table output.
	out.Reset()
	err = RunCommand(context.Background(), []string{"--server", n.URL, "--n", "5", "--settle", "10ms", "idle"}, &out, &errOut, env)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "bench idle against knowledgehub at "+n.URL) || !strings.Contains(out.String(), "5 of 5") {
		t.Errorf("table:\n%s", out.String())
	}

	out.Reset()
	if err := RunCommand(context.Background(), []string{"--help"}, &out, &errOut, env); err == nil || !strings.Contains(out.String(), "Scenarios:") {
		t.Errorf("--help: %v\n%s", err, out.String())
	}
	for _, bad := range [][]string{
		{"idle", "--server", "http://10.1.2.3:3000"},
		{"idle", "--server", "http://example.com:3000"},
		{"nosuch", "--server", n.URL},
		{"idle", "--server", n.URL, "--source-addrs", "10.0.0.1"},
		{"idle", "--server", n.URL, "--transport", "tcp"},
	} {
		err := RunCommand(context.Background(), bad, &out, &errOut, env)
		if code, ok := err.(interface{ ExitCode() int }); !ok || code.ExitCode() != 2 {
			t.Errorf("%v: err = %v, want a usage error", bad, err)
		}
	}
}

func TestTooManyConnections(t *testing.T) {
	n := start(t)
	cfg := baseConfig(n, "idle")
	cfg.N = 5_000_000
	_, err := Idle(context.Background(), cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "several bench processes") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, s := range []string{"http://10.0.0.1:3000", "http://192.168.1.1", "http://example.com", "https://127.0.0.1:3000", "ws://127.0.0.1"} {
		if _, _, err := serverAddr(s); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
	for _, s := range []string{"http://127.0.0.1:3000", "http://localhost:3000", "http://[::1]:3000", "http://127.1.2.3"} {
		if _, _, err := serverAddr(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

func TestParseSourceAddrs(t *testing.T) {
	got, err := ParseSourceAddrs("127.0.0.2-127.0.0.4, 127.0.1.9")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.9"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("got %v", got)
		}
	}
	for _, bad := range []string{"10.0.0.1", "127.0.0.5-127.0.0.2", "nope", "127.0.0.250-128.0.0.2"} {
		if _, err := ParseSourceAddrs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	c := Config{N: 100_000}
	src := c.sources(netip.MustParseAddr("127.0.0.1"))
	if len(src) < 4 || src[0].String() != "127.0.0.2" {
		t.Errorf("auto sources for 100k = %v", src)
	}
	c.N = 1000
	if src := c.sources(netip.MustParseAddr("127.0.0.1")); len(src) != 0 {
		t.Errorf("auto sources for 1000 = %v", src)
	}
}

func TestHist(t *testing.T) {
	var h Hist
	if h.Summary().Count != 0 || h.Quantile(0.5) != 0 {
		t.Fatal("empty histogram")
	}
	for v := int64(1); v <= 100_000; v++ {
		h.Record(v * 1000) // 1 µs .. 100 ms
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := q * 100_000 * 1000
		got := float64(h.Quantile(q))
		if d := (got - want) / want; d > 0.01 || d < -0.01 {
			t.Errorf("q%v = %v, want %v", q, got, want)
		}
	}
	if h.Quantile(1) != 100_000_000 || h.Quantile(0) != 1000 {
		t.Errorf("max/min = %d %d", h.Quantile(1), h.Quantile(0))
	}
	for _, v := range []int64{0, 1, 255, 256, 257, 1 << 20, 1<<62 + 12345, 1<<63 - 1} {
		i := histIndex(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("index(%d) = %d", v, i)
		}
		if v > 0 {
			mid := histValue(i)
			if d := float64(mid-v) / float64(v); d > 0.01 || d < -0.01 {
				t.Errorf("value(index(%d)) = %d", v, mid)
			}
		}
	}
}

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(`# HELP process_resident_memory_bytes x
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.2345e+07
knowledgehub_connections{auth="anonymous",transport="ws"} 3
knowledgehub_connections{auth="authenticated",transport="sse"} 4
weird{a="}"} 1
`))
	if err != nil {
		t.Fatal(err)
	}
	if m["process_resident_memory_bytes"] != 12345000 || m["knowledgehub_connections"] != 7 || m["weird"] != 1 {
		t.Errorf("metrics = %v", m)
	}
}

func TestSSEParser(t *testing.T) {
	long := strings.Repeat("y", 5000)
	in := "retry: 3000\n\nevent: connected\ndata: {\"type\":\"connected\"}\n\n: keepalive\n\nid: 1-0\r\ndata: a\r\ndata: b\r\n\r\ndata: " + long + "\n\n"
	p := &sseParser{br: bufioReader(in)}
	name, data, err := p.next()
	if err != nil || string(name) != "connected" || string(data) != `{"type":"connected"}` {
		t.Fatalf("1: %q %q %v", name, data, err)
	}
	name, data, err = p.next()
	if err != nil || len(name) != 0 || string(data) != "a\nb" {
		t.Fatalf("2: %q %q %v", name, data, err)
	}
	_, data, err = p.next()
	if err != nil || string(data) != long {
		t.Fatalf("3: %d bytes, %v", len(data), err)
	}
	if _, _, err = p.next(); err == nil {
		t.Fatal("no EOF")
	}
}

func TestParseTagged(t *testing.T) {
	msg := []byte(`{"id":"1733325600123-7","type":"CODE_CHANGE","data":{"bench_run":"abcd","bench_seq":-1,"bench_t":1733325600123456789,"pad":"xx"},"timestamp":"2026-12-04T15:20:00.123Z"}`)
	ev, ok := parseTagged(msg)
	if !ok || string(ev.ID) != "1733325600123-7" || ev.Seq != -1 || ev.T != 1733325600123456789 {
		t.Fatalf("%+v %v", ev, ok)
	}
	if _, ok := parseTagged([]byte(`{"id":"1-0","data":{"bench_run":"abcd"}}`)); ok {
		t.Error("parsed without seq")
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 16) }
