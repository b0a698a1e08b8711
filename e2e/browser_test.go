package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// browserSetup serves examples/browser from a static server on 127.0.0.1,
// and starts headless Chromium. The gateway must allow the static
// server's origin for WebSockets, so callers start it with
// --allowed-origins static.URL.
func browserSetup(t *testing.T) (*httptest.Server, *Driver) {
	t.Helper()
	nodeDir(t)
	chromium := os.Getenv("KH_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("e2e: no Chromium at %s (set KH_CHROMIUM): %v", chromium, err)
	}
	static := httptest.NewServer(http.FileServer(http.Dir(filepath.Join(repoDir(t), "examples", "browser"))))
	t.Cleanup(static.Close)
	d := StartDriver(t, "browser-driver.mjs", map[string]string{"KH_CHROMIUM": chromium})
	d.WaitFor(40*time.Second, "Chromium to start", func(r Report) bool { return r.Str("ev") == "ready" })
	return static, d
}

// openDemo loads index.html against the gateway at server, fills the form
// and presses Connect.
func openDemo(t *testing.T, d *Driver, static *httptest.Server, server, token, job, types string) {
	t.Helper()
	q := url.Values{"server": {server}, "job": {job}, "types": {types}}
	d.Do(map[string]any{"op": "goto", "url": static.URL + "/index.html?" + q.Encode()})
	if r := d.Reports(func(r Report) bool { return r.Str("ev") == "loaded" }); len(r) == 0 || r[len(r)-1].Num("status") != 200 {
		t.Fatalf("index.html did not load: %v", r)
	}
	if token != "" {
		d.Do(map[string]any{"op": "fill", "selector": "#token", "value": token})
	}
	d.Do(map[string]any{"op": "click", "selector": "#connect"})
}

// page matches what the page reported for client ("ws" or "sse") and kind
// ("event", "control", "status"), with an optional check of the data.
func page(client, kind string, check func(Report) bool) func(Report) bool {
	return func(r Report) bool {
		det := r.Obj("detail")
		return r.Str("ev") == "page" && det.Str("client") == client && det.Str("kind") == kind &&
			(check == nil || check(det.Obj("data")))
	}
}

func typeIs(typ string) func(Report) bool {
	return func(m Report) bool { return m.Str("type") == typ }
}

func idIs(id string) func(Report) bool {
	return func(m Report) bool { return m.Str("id") == id }
}

// pageEventIDs returns the ids of the events the page reported for client.
func pageEventIDs(d *Driver, client string) []string {
	var ids []string
	for _, r := range d.Reports(page(client, "event", nil)) {
		ids = append(ids, r.Obj("detail").Obj("data").Str("id"))
	}
	return ids
}

// evalJSON evaluates js in the page; js must return a JSON string, decoded
// into out.
func evalJSON(t *testing.T, d *Driver, id, js string, out any) {
	t.Helper()
	d.Do(map[string]any{"op": "eval", "id": id, "js": js})
	r := d.Wait("eval "+id, func(r Report) bool { return r.Str("ev") == "result" && r.Str("id") == id })
	if err := json.Unmarshal([]byte(r.Str("value")), out); err != nil {
		t.Fatalf("eval %s: %v (value %v)", id, err, r["value"])
	}
}

// TestBrowserClients runs the guide's WebSocketClient and SSEClient in
// Chromium, both authenticated as alice: the WebSocket subscribed to
// job-1, the stream filtered to CODE_CHANGE and DECISION_MADE. Each must
// receive exactly what SPEC §1 lets through.
func TestBrowserClients(t *testing.T) {
	static, d := browserSetup(t)
	n := servertest.Start(t, "--allowed-origins", static.URL)
	token := servertest.Token(t, "alice", time.Hour)
	openDemo(t, d, static, n.URL, token, "job-1", "CODE_CHANGE,DECISION_MADE")

	ws := d.Wait("WebSocket welcome", page("ws", "control", typeIs("connected"))).Obj("detail").Obj("data")
	if ws.Str("user_id") != "alice" || ws["authenticated"] != true {
		t.Errorf("WebSocket welcome %s, want alice, authenticated", ws)
	}
	d.Wait("subscribed to job-1", page("ws", "control", func(m Report) bool {
		return m.Str("type") == "subscribed" && m.Str("job_id") == "job-1"
	}))
	sse := d.Wait("SSE connected", page("sse", "control", typeIs("connected"))).Obj("detail").Obj("data")
	if sse.Str("user_id") != "alice" || sse["authenticated"] != true {
		t.Errorf("SSE connected %s, want alice, authenticated", sse)
	}

	public := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"file": "api/app.py"}})
	job1 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "job 1", "job_id": "job-1"})
	job2 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "job 2", "job_id": "job-2"})
	aliceDecision := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "for alice", "user_id": "alice"})
	aliceMemory := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "for alice", "user_id": "alice"})
	aliceJob1 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "alice job 1", "user_id": "alice", "job_id": "job-1"})
	bob := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "for bob", "user_id": "bob"})
	errEv := n.MustPublish(t, map[string]any{"type": "ERROR_OCCURRED", "data": "oops"})
	barrier := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "barrier"})
	names := map[string]string{public: "public", job1: "job-1", job2: "job-2", aliceDecision: "alice DECISION_MADE",
		aliceMemory: "alice MEMORY_CREATED", aliceJob1: "alice job-1", bob: "bob", errEv: "ERROR_OCCURRED", barrier: "barrier"}
	wantWS := []string{public, job1, aliceDecision, aliceMemory, aliceJob1, errEv, barrier}
	wantSSE := []string{public, aliceDecision, barrier}

	d.Wait("WebSocket receiving the barrier", page("ws", "event", idIs(barrier)))
	d.Wait("SSE receiving the barrier", page("sse", "event", idIs(barrier)))
	expectIDs(t, "WebSocketClient (callback)", pageEventIDs(d, "ws"), wantWS, names)
	expectIDs(t, "SSEClient (callback)", pageEventIDs(d, "sse"), wantSSE, names)

	// The clients' own arrays and the page's lists agree.
	var got struct {
		WS, SSE           []string
		WSItems, SSEItems int
	}
	evalJSON(t, d, "arrays", `JSON.stringify({
		WS: demo.ws.events.map((e) => e.id), SSE: demo.sse.events.map((e) => e.id),
		WSItems: document.querySelectorAll('#ws-list li:not(.control)').length,
		SSEItems: document.querySelectorAll('#sse-list li:not(.control)').length})`, &got)
	expectIDs(t, "WebSocketClient.events", got.WS, wantWS, names)
	expectIDs(t, "SSEClient.events", got.SSE, wantSSE, names)
	if got.WSItems != len(wantWS) || got.SSEItems != len(wantSSE) {
		t.Errorf("page lists %d and %d events, want %d and %d", got.WSItems, got.SSEItems, len(wantWS), len(wantSSE))
	}

	// KH_E2E_SCREENSHOT_DIR keeps the screenshot for a look.
	dir := os.Getenv("KH_E2E_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "browser-clients.png")
	d.Do(map[string]any{"op": "screenshot", "path": shot})
	checkPNG(t, shot)
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(b) == 0 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot %s: %d bytes, not a PNG", path, len(b))
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	if r := img.Bounds(); r.Dx() < 100 || r.Dy() < 100 {
		t.Errorf("screenshot %s is only %v", path, r)
	}
}

// TestBrowserReconnect stops the gateway under a connected page and starts
// a new one on the same port (memory store: a fresh event log). The
// browser's EventSource reconnects by itself (Last-Event-ID), the
// WebSocketClient after its 1001 close (last_event_id), and both receive
// the events published after the restart, once each, in order.
func TestBrowserReconnect(t *testing.T) {
	static, d := browserSetup(t)
	first := servertest.Start(t, "--allowed-origins", static.URL)
	openDemo(t, d, static, first.URL, "", "", "")
	d.Wait("WebSocket welcome", page("ws", "control", typeIs("connected")))
	d.Wait("SSE connected", page("sse", "control", typeIs("connected")))

	e1 := first.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "before the restart"})
	d.Wait("WebSocket receiving e1", page("ws", "event", idIs(e1)))
	d.Wait("SSE receiving e1", page("sse", "event", idIs(e1)))

	if err := first.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// The close code the browser sees is checked by TestBrowserCloseCodes.
	d.Wait("WebSocket closed", page("ws", "status", func(s Report) bool { return s.Str("state") == "closed" }))
	d.Wait("EventSource reconnecting", page("sse", "status", func(s Report) bool { return s.Str("state") == "reconnecting" }))

	// The new node issues ids after e1's, so both clients' resume ids are
	// valid there. Publish at once: the clients wait at least 0.5 s (the
	// WebSocketClient after 1001) and 1 s (the retry the server advises on
	// shutdown) before they come back.
	second := servertest.Start(t, "--allowed-origins", static.URL, "--addr", first.Addr)
	e2 := second.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "after the restart"})
	d.WaitN("second WebSocket welcome", 2, page("ws", "control", typeIs("connected")))
	d.WaitN("second SSE connected", 2, page("sse", "control", typeIs("connected")))
	e3 := second.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "live on the new node"})
	d.Wait("WebSocket receiving e3", page("ws", "event", idIs(e3)))
	d.Wait("SSE receiving e3", page("sse", "event", idIs(e3)))

	names := map[string]string{e1: "e1", e2: "e2", e3: "e3"}
	expectIDs(t, "WebSocketClient", pageEventIDs(d, "ws"), []string{e1, e2, e3}, names)
	expectIDs(t, "SSEClient", pageEventIDs(d, "sse"), []string{e1, e2, e3}, names)
	if failed := d.Reports(page("sse", "status", func(s Report) bool { return s.Str("state") == "failed" })); len(failed) > 0 {
		t.Errorf("EventSource gave up: %v", failed)
	}
}

// TestBrowserCloseCodes checks what a browser sees when the gateway refuses
// or ends a connection: the WebSocketClient with a bad token gets the
// invalid_token error and close code 4001 and does not reconnect; the
// SSEClient with a bad token is refused (401) and the browser gives up; a
// connected WebSocketClient sees 1001 when the gateway shuts down.
func TestBrowserCloseCodes(t *testing.T) {
	static, d := browserSetup(t)
	n := servertest.Start(t, "--allowed-origins", static.URL)
	openDemo(t, d, static, n.URL, "", "", "")
	d.Wait("WebSocket welcome", page("ws", "control", typeIs("connected")))
	d.Do(map[string]any{"op": "eval", "id": "bad", "js": `(() => {
		const report = (client, kind) => (data) => window.dispatchEvent(new CustomEvent('kh:message', {detail: {client, kind, data}}));
		window.badWS = new WebSocketClient('not-a-jwt', {url: ` + jsString(n.WSURL) + `,
			onControl: report('bad-ws', 'control'), onStatus: report('bad-ws', 'status')});
		window.badSSE = new SSEClient('not-a-jwt', [], {baseUrl: ` + jsString(n.URL) + `,
			onControl: report('bad-sse', 'control'), onStatus: report('bad-sse', 'status')});
		return 'ok';
	})()`})

	e := d.Wait("invalid_token error", page("bad-ws", "control", typeIs("error"))).Obj("detail").Obj("data")
	if e.Str("code") != "invalid_token" || e.Str("message") == "" {
		t.Errorf("error message %s, want code invalid_token with a message", e)
	}
	d.Wait("SSE refused", page("bad-sse", "status", func(s Report) bool { return s.Str("state") == "failed" }))
	badClose := d.Wait("bad WebSocket closed", page("bad-ws", "status", typeIsState("closed"))).Obj("detail").Obj("data")
	if badClose["retryInMs"] != nil {
		t.Errorf("WebSocketClient will reconnect with a rejected token: %s", badClose)
	}

	if err := n.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	shutdown := d.Wait("WebSocket closed at shutdown", page("ws", "status", typeIsState("closed"))).Obj("detail").Obj("data")

	if badClose.Num("code") != 4001 || shutdown.Num("code") != 1001 {
		msg := fmt.Sprintf("the browser saw close codes %v (bad token) and %v (shutdown), want 4001 and 1001", badClose["code"], shutdown["code"])
		if len(d.Reports(consoleHas("Close received after close"))) > 0 {
			msg += ": Chromium failed the connections with \"Close received after close\": after its own Close frame " +
				"the server answered the client's Close with a second one (RFC 6455 §5.5.1)"
		}
		t.Error(msg)
	}
}

func typeIsState(state string) func(Report) bool {
	return func(s Report) bool { return s.Str("state") == state }
}

func consoleHas(text string) func(Report) bool {
	return func(r Report) bool { return r.Str("ev") == "console" && strings.Contains(r.Str("text"), text) }
}

func jsString(s string) string { b, _ := json.Marshal(s); return string(b) }
