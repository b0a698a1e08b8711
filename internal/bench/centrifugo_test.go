package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// ---- the frame parser ----

func messages(frame string) []string {
	var out []string
	b := []byte(frame)
	for {
		var msg []byte
		if msg, b = cfNextMessage(b); msg == nil {
			return out
		}
		out = append(out, string(msg))
	}
}

func TestCentrifugoNextMessage(t *testing.T) {
	for _, tc := range []struct {
		frame string
		want  []string
	}{
		{``, nil},
		{"\n\n", nil},
		{`{}`, []string{`{}`}},
		{`{"id":1,"connect":{"client":"c"}}` + "\n" + `{"id":2,"subscribe":{}}`, []string{`{"id":1,"connect":{"client":"c"}}`, `{"id":2,"subscribe":{}}`}},
		// trailing newline, blank lines, CRLF, a ping among pushes
		{"{\"push\":{\"a\":1}}\n\n{}\r\n{\"push\":{\"b\":2}}\n", []string{`{"push":{"a":1}}`, `{}`, `{"push":{"b":2}}`}},
	} {
		got := messages(tc.frame)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%q: got %q, want %q", tc.frame, got, tc.want)
		}
	}
}

func TestCentrifugoClassify(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		kind cfKind
		id   int64
	}{
		{`{}`, cfPing, 0},
		{`{ }`, cfPing, 0},
		{`{"id":1,"connect":{"client":"x","version":"6.9.1","ping":25,"pong":true}}`, cfReply, 1},
		{`{"id":42,"error":{"code":103,"message":"permission denied"}}`, cfReply, 42},
		{`{"push":{"channel":"bench","pub":{"data":{"a":1}}}}`, cfPush, 0},
		{`{"push":{"channel":"bench","join":{"info":{"user":"u"}}}}`, cfPush, 0},
		{`{"id":"x"}`, cfUnknown, 0},
		{`[1,2]`, cfUnknown, 0},
		{`{"type":"connected"}`, cfUnknown, 0},
	} {
		kind, id := cfClassify([]byte(tc.msg))
		if kind != tc.kind || id != tc.id {
			t.Errorf("%s: got %d/%d, want %d/%d", tc.msg, kind, id, tc.kind, tc.id)
		}
	}
	rerr, err := cfParseReply([]byte(`{"id":2,"error":{"code":103,"message":"permission denied"}}`))
	if err != nil || rerr == nil || rerr.Code != 103 || rerr.Message != "permission denied" {
		t.Errorf("error reply: %+v %v", rerr, err)
	}
	if rerr, err := cfParseReply([]byte(`{"id":2,"subscribe":{}}`)); err != nil || rerr != nil {
		t.Errorf("ok reply: %+v %v", rerr, err)
	}
	if k := cfPushKind([]byte(`{"push":{"channel":"bench","join":{"info":{}}}}`)); k != "push join" {
		t.Errorf("push kind = %q", k)
	}
}

func TestCentrifugoParsePublication(t *testing.T) {
	tag := []byte(`"bench_run":"abcd"`)
	msg := []byte(`{"push":{"channel":"bench","pub":{"data":{"type":"CODE_CHANGE","data":{"bench_run":"abcd","bench_seq":17,"bench_t":1733325600123456789,"pad":"xx"}},"offset":912}}}`)
	ev, ok := cfParsePublication(msg, tag)
	if !ok || ev.Seq != 17 || ev.T != 1733325600123456789 || ev.Offset != 912 || ev.ID != nil {
		t.Fatalf("%+v %v", ev, ok)
	}
	// No history: no offset. A barrier: seq -1.
	ev, ok = cfParsePublication([]byte(`{"push":{"channel":"bench","pub":{"data":{"type":"X","data":{"bench_run":"abcd","bench_seq":-1,"bench_t":5,"pad":""}}}}}`), tag)
	if !ok || ev.Seq != -1 || ev.T != 5 || ev.Offset != 0 {
		t.Fatalf("%+v %v", ev, ok)
	}
	for _, bad := range []string{
		`{"push":{"channel":"bench","pub":{"data":{"bench_run":"other","bench_seq":1,"bench_t":5}}}}`, // another run
		`{"push":{"channel":"bench","pub":{"data":{"bench_run":"abcd","bench_t":5}}}}`,                // no seq
		`{"push":{"channel":"bench","join":{"info":{"bench_run":"abcd"}}}}`,                           // not a publication
	} {
		if ev, ok := cfParsePublication([]byte(bad), tag); ok {
			t.Errorf("%s parsed: %+v", bad, ev)
		}
	}
}

// recorder is a handler that keeps what it was given.
type recorder struct {
	mu       sync.Mutex
	events   []taggedEvent
	controls []string
}

func (h *recorder) onEvent(c *client, ev *taggedEvent, now int64) {
	h.mu.Lock()
	h.events = append(h.events, *ev)
	h.mu.Unlock()
}

func (h *recorder) onControl(c *client, typ string, msg []byte) {
	h.mu.Lock()
	h.controls = append(h.controls, typ)
	h.mu.Unlock()
}

// fakeCentrifugo is a WebSocket endpoint that checks the connect frame,
// answers it with reply (one frame), then sends the frames of pushes and
// records what the client sends afterwards.
type fakeCentrifugo struct {
	t      *testing.T
	reply  string
	pushes []string
	got    chan string
}

func (f *fakeCentrifugo) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch req.URL.Path {
	case "/api/info":
		if req.Header.Get("X-API-Key") != "K" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"result":{"nodes":[{"name":"fake"}]}}`))
		return
	case "/connection/websocket":
	default:
		http.NotFound(w, req)
		return
	}
	up := websocket.Upgrader{}
	ws, err := up.Upgrade(w, req, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	_, first, err := ws.ReadMessage()
	if err != nil {
		return
	}
	if want := `{"id":1,"connect":{}}` + "\n" + `{"id":2,"subscribe":{"channel":"bench"}}`; string(first) != want {
		f.t.Errorf("connect frame %q, want %q", first, want)
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(f.reply))
	for _, p := range f.pushes {
		_ = ws.WriteMessage(websocket.TextMessage, []byte(p))
	}
	for {
		_, m, err := ws.ReadMessage()
		if err != nil {
			return
		}
		f.got <- string(m)
	}
}

func fakeRunner(t *testing.T, f *fakeCentrifugo) *runner {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	r, err := newRunner(context.Background(), Config{
		Target: TargetCentrifugo, Scenario: "idle", Server: srv.URL, N: 1,
		CentrifugoAPIKey: "K", ServerPID: -1, ConnectTimeout: 5 * time.Second, Timeout: 30 * time.Second,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.cancel)
	return r
}

func TestCentrifugoHandshakeAndDispatch(t *testing.T) {
	f := &fakeCentrifugo{t: t, got: make(chan string, 10)}
	r := fakeRunner(t, f)
	pub := func(seq, off int) string {
		return fmt.Sprintf(`{"push":{"channel":"bench","pub":{"data":{"type":"T","data":{%s,"bench_seq":%d,"bench_t":7,"pad":""}},"offset":%d}}}`, r.tag, seq, off)
	}
	// The replies and a first publication in one frame (left for the
	// reader), then a frame with a ping among publications, a join, a
	// publication of someone else and a reply nobody asked for.
	f.reply = `{"id":1,"connect":{"client":"c","version":"6.9.1","ping":25,"pong":true}}` + "\n" + `{"id":2,"subscribe":{}}` + "\n" + pub(0, 1)
	f.pushes = []string{
		pub(1, 2) + "\n{}\n" + pub(2, 3) + "\n" +
			`{"push":{"channel":"bench","join":{"info":{"user":"u"}}}}` + "\n" +
			`{"push":{"channel":"bench","pub":{"data":{"foreign":true}}}}` + "\n" +
			`{"id":9,"rpc":{}}`,
	}
	c, err := r.dial(r.ctx, 0, kindWS, dialParams{})
	if err != nil {
		t.Fatal(err)
	}
	if c.welcomedAt == 0 || !c.pending {
		t.Fatalf("welcomed %d pending %v", c.welcomedAt, c.pending)
	}
	h := &recorder{}
	c.h = h
	r.alive.Add(1)
	r.readers.Add(1)
	go c.read()
	select {
	case m := <-f.got:
		if m != "{}" {
			t.Fatalf("answer to the ping: %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the ping was not answered")
	}
	c.close()
	r.readers.Wait()
	if len(h.events) != 3 {
		t.Fatalf("events %+v", h.events)
	}
	for i, ev := range h.events {
		if ev.Seq != int64(i) || ev.Offset != uint64(i+1) || ev.T != 7 {
			t.Errorf("event %d = %+v", i, ev)
		}
	}
	if fmt.Sprint(h.controls) != "[push join reply]" || r.foreign.Load() != 1 {
		t.Errorf("controls %v, foreign %d", h.controls, r.foreign.Load())
	}
}

func TestCentrifugoHandshakeRefused(t *testing.T) {
	f := &fakeCentrifugo{t: t, got: make(chan string, 10),
		reply: `{"id":1,"connect":{"client":"c"}}` + "\n" + `{"id":2,"error":{"code":103,"message":"permission denied"}}`}
	r := fakeRunner(t, f)
	_, err := r.dial(r.ctx, 0, kindWS, dialParams{})
	ce, ok := err.(*connError)
	if !ok || ce.key() != "103 permission denied" || !strings.Contains(ce.Error(), "subscribe refused") {
		t.Fatalf("err = %v", err)
	}
}

func TestCentrifugoBody(t *testing.T) {
	r := &runner{cfg: Config{Target: TargetCentrifugo, Channel: "bench", EventType: "CODE_CHANGE", EventSize: 200}, run: "abcd"}
	r.tag = []byte(`"bench_run":"abcd"`)
	r.pad = strings.Repeat("x", r.padLen())
	type publish struct {
		Channel string `json:"channel"`
		Data    struct {
			Type string `json:"type"`
			Data struct {
				Run string `json:"bench_run"`
				Seq int64  `json:"bench_seq"`
				T   int64  `json:"bench_t"`
			} `json:"data"`
		} `json:"data"`
		Key string `json:"idempotency_key"`
	}
	var one publish
	b := r.body(5, 1)
	if err := json.Unmarshal(b, &one); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if one.Channel != "bench" || one.Data.Type != "CODE_CHANGE" || one.Data.Data.Run != "abcd" || one.Data.Data.Seq != 5 || one.Data.Data.T <= 0 || one.Key == "" {
		t.Errorf("publish = %+v", one)
	}
	var batch struct {
		Commands []struct {
			Publish publish `json:"publish"`
		} `json:"commands"`
	}
	b = r.body(10, 3)
	if err := json.Unmarshal(b, &batch); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	keys := map[string]bool{one.Key: true}
	for k, c := range batch.Commands {
		if c.Publish.Data.Data.Seq != int64(10+k) || keys[c.Publish.Key] {
			t.Errorf("command %d = %+v", k, c.Publish)
		}
		keys[c.Publish.Key] = true
	}
	if len(batch.Commands) != 3 {
		t.Errorf("%d commands", len(batch.Commands))
	}
}

func TestCentrifugoPublishAnswers(t *testing.T) {
	answer := ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("X-API-Key") != "K" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(answer))
	}))
	defer srv.Close()
	r := &runner{cfg: Config{Target: TargetCentrifugo, CentrifugoAPIKey: "K"}, baseURL: srv.URL, http: srv.Client(), ctx: context.Background()}
	for _, tc := range []struct {
		body, answer string
		ids          []string
		err          string
	}{
		{`{"channel":"bench"}`, `{"result":{"offset":7,"epoch":"e"}}`, []string{"7"}, ""},
		{`{"channel":"bench"}`, `{"result":{}}`, []string{""}, ""},
		{`{"channel":"bench"}`, `{"error":{"code":102,"message":"unknown channel"}}`, nil, "unknown channel"},
		{`{"commands":[]}`, `{"replies":[{"publish":{"offset":1}},{"publish":{"offset":2}}]}`, []string{"1", "2"}, ""},
		{`{"commands":[]}`, `{"replies":[{"publish":{"offset":1}},{"error":{"code":100,"message":"internal server error"}}]}`, nil, "1 of 2 publish commands"},
	} {
		answer = tc.answer
		ids, err := r.cfPublishOnce([]byte(tc.body))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", tc.answer, err, tc.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(ids) != fmt.Sprint(tc.ids) {
			t.Errorf("%s: %q %v", tc.answer, ids, err)
		}
	}
	r.cfg.CentrifugoAPIKey = "wrong"
	if _, err := r.cfPublishOnce([]byte(`{"channel":"bench"}`)); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong key: %v", err)
	}
}

func TestParseMetricsLabels(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(`centrifugo_transport_messages_sent{channel_namespace="",frame_type="push_publication",transport="websocket"} 14
centrifugo_transport_messages_sent{channel_namespace="",frame_type="server_ping",transport="websocket"} 3
odd{a="x,\"y\"",b="2"} 1
`))
	if err != nil {
		t.Fatal(err)
	}
	if m[cfDeliveredMetric] != 14 || m["centrifugo_transport_messages_sent"] != 17 || m[`odd{b="2"}`] != 1 || m[`odd{a="x,\"y\""}`] != 1 {
		t.Errorf("metrics = %v", m)
	}
}

func TestCentrifugoCommandLine(t *testing.T) {
	env := func(string) string { return "" }
	var out, errOut bytes.Buffer
	for _, bad := range [][]string{
		{"resume", "--target", "centrifugo", "--centrifugo-api-key", "K"},
		{"publish", "--target", "centrifugo", "--centrifugo-api-key", "K"},
		{"fanout", "--target", "centrifugo"}, // no API key
		{"idle", "--target", "centrifugo", "--transport", "sse"},
		{"idle", "--target", "centrifugo", "--job", "j"},
		{"idle", "--target", "centrifugo", "--token-user", "u"}, // no secret
		{"idle", "--target", "centrifugo", "--channel", `a"b`},
		{"idle", "--target", "nats"},
		{"idle", "--channel", "x", "--server", "http://127.0.0.1:1"},
		{"idle", "--target", "centrifugo", "--server", "http://10.0.0.1:8000"},
	} {
		err := RunCommand(context.Background(), bad, &out, &errOut, env)
		if code, ok := err.(interface{ ExitCode() int }); !ok || code.ExitCode() != 2 {
			t.Errorf("%v: err = %v, want a usage error", bad, err)
		}
	}
	out.Reset()
	if err := RunCommand(context.Background(), []string{"--help"}, &out, &errOut, env); err == nil ||
		!strings.Contains(out.String(), "Comparing with Centrifugo") || !strings.Contains(out.String(), "-target") {
		t.Errorf("--help: %v\n%s", err, out.String())
	}
}

// ---- against a real Centrifugo ----

// centrifugoBinary is the Centrifugo v6 binary the integration tests run:
// $KNOWLEDGEHUB_BENCH_CENTRIFUGO, else /tmp/centrifugo-bin/centrifugo. It is
// not a dependency of the project: without it the tests are skipped.
func centrifugoBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("KNOWLEDGEHUB_BENCH_CENTRIFUGO")
	if bin == "" {
		bin = "/tmp/centrifugo-bin/centrifugo"
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		t.Skipf("no Centrifugo binary at %s (set $KNOWLEDGEHUB_BENCH_CENTRIFUGO to a Centrifugo v6 binary to run the --target centrifugo integration tests; it is not a project dependency)", bin)
	}
	return bin
}

const (
	cfTestKey    = "bench-test-api-key"
	cfTestSecret = "bench-test-secret-bench-test-secret"
)

// startCentrifugo runs Centrifugo on a free loopback port with a
// generated config: anonymous and token connections, channels without a
// namespace keep history (offsets), the "nohist" namespace does not;
// pings every second, so that a run sees them and must answer.
func startCentrifugo(t *testing.T) (url string, pid int) {
	t.Helper()
	bin := centrifugoBinary(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	cfg := map[string]any{
		"http_server": map[string]any{"address": "127.0.0.1", "port": port},
		"log":         map[string]any{"level": "warn"},
		"client": map[string]any{
			"allow_anonymous_connect_without_token": true,
			"token":                                 map[string]any{"hmac_secret_key": cfTestSecret},
			"ping_interval":                         "1s",
			"pong_timeout":                          "800ms",
		},
		"http_api": map[string]any{"key": cfTestKey},
		"channel": map[string]any{
			"without_namespace": map[string]any{
				"allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true,
				"history_size": 1000, "history_ttl": "300s",
			},
			"namespaces": []any{map[string]any{
				"name": "nohist", "allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true,
			}},
		},
		"prometheus":  map[string]any{"enabled": true},
		"usage_stats": map[string]any{"disabled": true},
	}
	raw, _ := json.MarshalIndent(cfg, "", "  ")
	path := filepath.Join(dir, "centrifugo.json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(bin, "-c", path)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("centrifugo log:\n%s", log.String())
		}
	})
	url = "http://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodPost, url+"/api/info", strings.NewReader("{}"))
		req.Header.Set("X-API-Key", cfTestKey)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url, cmd.Process.Pid
			}
		}
		select {
		case <-exited:
			t.Fatalf("centrifugo exited:\n%s", log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("centrifugo did not answer on %s:\n%s", url, log.String())
		}
	}
}

func centrifugoConfig(url string, pid int, scenario string) Config {
	return Config{
		Target:           TargetCentrifugo,
		Scenario:         scenario,
		Server:           url,
		N:                20,
		CentrifugoAPIKey: cfTestKey,
		ServerPID:        pid,
		Settle:           200 * time.Millisecond,
		Duration:         2 * time.Second,
		Rate:             50,
		Drain:            5 * time.Second,
		Timeout:          30 * time.Second,
	}
}

func TestCentrifugoFanout(t *testing.T) {
	url, pid := startCentrifugo(t)
	for _, tc := range []struct {
		name, channel  string
		batch, conc    int
		tokenUser      string
		orderCheckedBy string
	}{
		{"history", "", 1, 0, "", "offset"},
		{"batch-tokens", "", 5, 0, "user-%d", "offset"},
		{"no-history", "nohist:bench", 1, 1, "", "sequence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := centrifugoConfig(url, pid, "fanout")
			cfg.Channel, cfg.Batch, cfg.Concurrency = tc.channel, tc.batch, tc.conc
			if tc.tokenUser != "" {
				cfg.TokenUser, cfg.Secret = tc.tokenUser, cfTestSecret
			}
			res, err := Fanout(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkOK(t, res)
			f := res.Fanout
			if res.Target != TargetCentrifugo || f.Subscribers != 20 {
				t.Fatalf("target %q, %d subscribers", res.Target, f.Subscribers)
			}
			if f.Published != 100 || f.PublishErrors != 0 {
				t.Errorf("published %d (%d errors), want 100", f.Published, f.PublishErrors)
			}
			if f.Delivered != int64(20*f.Published) || f.Expected != f.Delivered {
				t.Errorf("delivered %d of %d, want 20 × %d", f.Delivered, f.Expected, f.Published)
			}
			if f.Missing != 0 || f.Duplicates != 0 || f.OrderViolations != 0 || f.Unacknowledged != 0 {
				t.Errorf("losses: %+v", f)
			}
			if f.OrderCheckedBy != tc.orderCheckedBy {
				t.Errorf("order checked by %q, want %q", f.OrderCheckedBy, tc.orderCheckedBy)
			}
			if f.Latency.Count != uint64(f.Delivered) || f.Latency.P50 <= 0 {
				t.Errorf("latency = %+v", f.Latency)
			}
			if res.ServerCPU == nil || res.ServerCPU.PID != pid {
				t.Errorf("server cpu = %+v", res.ServerCPU)
			}
			if f.ServerDelivered < f.Delivered {
				t.Errorf("centrifugo's metric says %d deliveries, we counted %d", f.ServerDelivered, f.Delivered)
			}
		})
	}
}

func TestCentrifugoIdle(t *testing.T) {
	url, pid := startCentrifugo(t)
	cfg := centrifugoConfig(url, pid, "idle")
	cfg.CentrifugoAPIKey = ""          // idle needs no API key
	cfg.Hold = 2500 * time.Millisecond // pings every second: unanswered, the server would close them
	cfg.TokenUser, cfg.Secret = "user-%d", cfTestSecret
	res, err := Idle(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkOK(t, res)
	m := res.Memory
	if res.Connect.Welcomed != 20 || m == nil || m.RSSAfter <= 0 || m.ServerPID != pid || m.MetricsRSSAfter <= 0 {
		t.Fatalf("connect %+v memory %+v", res.Connect, m)
	}

	// A wrong secret: refused, and said so.
	cfg.Secret = "wrong-secret-wrong-secret-wrong-secret"
	cfg.ConnectAttempts = 1
	cfg.N = 3
	res, err = Idle(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK || res.Connect.Welcomed != 0 || res.Connect.Refusals["ws close 3500 invalid token"] != 3 {
		t.Fatalf("bad tokens: OK %v %+v", res.OK, res.Connect)
	}
}

func TestCentrifugoCommandJSON(t *testing.T) {
	url, _ := startCentrifugo(t)
	var out, errOut bytes.Buffer
	env := func(k string) string {
		if k == "CENTRIFUGO_HTTP_API_KEY" {
			return cfTestKey
		}
		return ""
	}
	err := RunCommand(context.Background(), []string{"fanout", "--target", "centrifugo", "--server", url,
		"--n", "10", "--rate", "20", "--duration", "1s", "--json", "--quiet"}, &out, &errOut, env)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var res Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !res.OK || res.Target != "centrifugo" || res.Channel != "bench" || res.Fanout == nil || res.Fanout.Delivered != 200 {
		t.Fatalf("result = %s", out.String())
	}
	out.Reset()
	err = RunCommand(context.Background(), []string{"idle", "--target", "centrifugo", "--server", url, "--n", "5", "--settle", "10ms", "--quiet"}, &out, &errOut, env)
	if err != nil || !strings.Contains(out.String(), "bench idle against centrifugo at "+url) {
		t.Errorf("%v\n%s", err, out.String())
	}
}
