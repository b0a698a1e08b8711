package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// The live console (internal/console, served by the binary at "/") in
// headless Chromium, against a real node: e2e/node/console-driver.mjs
// reports every request the page makes and every .event-row added to
// #event-list; the test publishes from Go, connects Go clients, and checks
// what the page shows.
//
// KH_SCREENSHOT_DIR keeps the screenshot (console.png) for a look; the one
// in docs/screenshots was made with
//
//	KH_SCREENSHOT_DIR=$PWD/docs/screenshots go test -run TestConsole ./e2e/

// consoleSetup starts a node and Chromium, and loads the console from the
// node.
func consoleSetup(t *testing.T) (*servertest.Node, *consolePage) {
	t.Helper()
	nodeDir(t)
	chromium := os.Getenv("KH_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("e2e: no Chromium at %s (set KH_CHROMIUM): %v", chromium, err)
	}
	n := servertest.Start(t)
	d := StartDriver(t, "console-driver.mjs", map[string]string{"KH_CHROMIUM": chromium})
	d.WaitFor(40*time.Second, "Chromium to start", func(r Report) bool { return r.Str("ev") == "ready" })
	p := &consolePage{t: t, d: d, n: n}
	d.Do(map[string]any{"op": "goto", "url": n.URL + "/"})
	if r := d.Reports(func(r Report) bool { return r.Str("ev") == "loaded" }); len(r) != 1 || r[0].Num("status") != 200 {
		t.Fatalf("the console did not load: %v", r)
	}
	return n, p
}

type consolePage struct {
	t   *testing.T
	d   *Driver
	n   *servertest.Node
	seq atomic.Int64
}

// waitFor polls the JavaScript expression js in the page until it is
// truthy, for at most timeout, and returns its value and how long it took
// (measured in the browser). It fails the test on timeout, with the last
// value.
func (p *consolePage) waitFor(what, js string, timeout time.Duration) (any, time.Duration) {
	p.t.Helper()
	id := fmt.Sprintf("w%d", p.seq.Add(1))
	p.d.Do(map[string]any{"op": "waitfor", "id": id, "js": js, "timeout": timeout.Milliseconds()})
	r := p.d.Wait("waitfor "+what, func(r Report) bool { return r.Str("ev") == "waited" && r.Str("id") == id })
	took := time.Duration(r.Num("ms")) * time.Millisecond
	if r["ok"] != true {
		p.t.Fatalf("console: no %s within %v; last value %v", what, timeout, r["value"])
	}
	return r["value"], took
}

// eval returns the value of the JavaScript expression js, which must
// return a JSON string, decoded into out.
func (p *consolePage) eval(js string, out any) {
	p.t.Helper()
	evalJSON(p.t, p.d, fmt.Sprintf("e%d", p.seq.Add(1)), js, out)
}

// text returns the text content of the element with id.
func (p *consolePage) text(id string) string {
	p.t.Helper()
	var s string
	p.eval(`JSON.stringify(document.getElementById(`+jsString(id)+`).textContent)`, &s)
	return s
}

// rowIDs returns the data-id of the rows of #event-list, top (newest) first.
func (p *consolePage) rowIDs() []string {
	p.t.Helper()
	var ids []string
	p.eval(`JSON.stringify([...document.querySelectorAll('#event-list .event-row')].map((r) => r.getAttribute('data-id')))`, &ids)
	return ids
}

// rowsOf returns the ids of the rows the page added for the events in ids,
// in the order it added them.
func (p *consolePage) rowsOf(ids []string) []string {
	var out []string
	for _, r := range p.d.Reports(func(r Report) bool { return r.Str("ev") == "row" && slices.Contains(ids, r.Str("id")) }) {
		out = append(out, r.Str("id"))
	}
	return out
}

// waitRow waits for the row of event id.
func (p *consolePage) waitRow(id string) Report {
	p.t.Helper()
	return p.d.Wait("a row for event "+id, func(r Report) bool { return r.Str("ev") == "row" && r.Str("id") == id })
}

// reconnected waits until the console opened a new stream whose query is
// exactly query (after the page's filters changed) and the stream said
// connected with status, e.g. "live · anonymous".
func (p *consolePage) reconnected(query url.Values, status string) {
	p.t.Helper()
	want := p.n.URL + "/api/realtime/stream"
	if len(query) > 0 {
		want += "?" + query.Encode()
	}
	p.d.Wait("a stream request "+want, func(r Report) bool {
		return r.Str("ev") == "request" && sameURL(r.Str("url"), want)
	})
	p.waitFor("stream status "+status, `(() => { const s = document.getElementById('stream-status');
		return s.dataset.state === 'open' && s.textContent === `+jsString(status)+` })()`, 5*time.Second)
}

// sameURL compares two URLs, their query parameters in any order.
func sameURL(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	if err1 != nil || err2 != nil {
		return false
	}
	qa, qb := ua.Query(), ub.Query()
	ua.RawQuery, ub.RawQuery = "", ""
	return ua.String() == ub.String() && qa.Encode() == qb.Encode()
}

// statsJS is an expression that is the console's connection cards as a JSON
// string when they show want (ids of the cards to their text), else false.
func statsJS(want map[string]string) string {
	b, _ := json.Marshal(want)
	return `(() => { const want = ` + string(b) + `; const got = {};
		for (const id of Object.keys(want)) got[id] = document.getElementById(id).textContent;
		return Object.keys(want).every((id) => got[id] === want[id]) && JSON.stringify(got) })()`
}

func TestConsole(t *testing.T) {
	n, p := consoleSetup(t)
	d := p.d

	// The console opens its own anonymous stream, with no filter, and polls
	// the stats every second; before anything else connects it counts
	// itself: one SSE connection.
	p.reconnected(nil, "live · anonymous")
	p.waitFor("stats: live", `document.getElementById('stats-status').textContent === 'stats: live'`, 3*time.Second)
	p.waitFor("the console's own stream counted", statsJS(map[string]string{
		"conn-total": "1", "conn-websocket": "0", "conn-sse": "1", "conn-anon": "1", "conn-auth": "0",
	}), 3*time.Second)

	// Three WebSockets and two SSE streams from Go: with the console's own
	// stream, 6 connections, 3 WebSocket, 3 SSE, all anonymous.
	var clients []*goWS
	for range 3 {
		clients = append(clients, dialGoWS(t, n, ""))
	}
	for range 2 {
		openGoSSE(t, n, "")
	}
	connected := time.Now()
	_, took := p.waitFor("the connection cards to count the Go clients", statsJS(map[string]string{
		"conn-total": "6", "conn-websocket": "3", "conn-sse": "3", "conn-anon": "6", "conn-auth": "0",
	}), 3*time.Second)
	t.Logf("connection cards updated %v after the clients connected (browser: %v)", time.Since(connected).Round(time.Millisecond), took)

	// A published event appears as a row within a second.
	start := time.Now()
	first := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"file": "api/app.py", "lines": 12}})
	row := p.waitRow(first)
	latency := time.Since(start)
	inBrowser := time.Duration(int64(row.Num("at"))-start.UnixMilli()) * time.Millisecond
	t.Logf("publish → row: %v seen from Go, %v by the browser's clock", latency.Round(time.Millisecond), inBrowser)
	if latency >= time.Second {
		t.Errorf("the row of event %s appeared %v after the publish, want < 1s", first, latency)
	}
	if row.Str("type") != "CODE_CHANGE" || row.Str("job") != "" || row.Str("user") != "" {
		t.Errorf("row %s, want type CODE_CHANGE without job and user", row)
	}
	if ids := p.rowIDs(); !slices.Equal(ids, []string{first}) {
		t.Errorf("#event-list rows %v, want [%s]", ids, first)
	}

	// Type filter: unchecking CODE_CHANGE reconnects with event_types set to
	// the other four; CODE_CHANGE events no longer appear.
	d.Do(map[string]any{"op": "uncheck", "selector": "#filter-type-CODE_CHANGE"})
	p.reconnected(url.Values{"event_types": {"MEMORY_CREATED,DECISION_MADE,ERROR_OCCURRED,PATTERN_DETECTED"}}, "live · anonymous")
	c1 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "filtered out"})
	m1 := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "shown"})
	c2 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "filtered out too"})
	barrier := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "barrier"})
	p.waitRow(barrier)
	names := map[string]string{c1: "CODE_CHANGE 1", m1: "MEMORY_CREATED", c2: "CODE_CHANGE 2", barrier: "barrier"}
	expectIDs(t, "console with CODE_CHANGE unchecked", p.rowsOf([]string{c1, m1, c2, barrier}), []string{m1, barrier}, names)

	// Job filter (SPEC §1): the console subscribes to the jobs typed into
	// #filter-job (job_ids) and then receives the events of those jobs as
	// well as the events of no job; never another job's, and, being
	// anonymous, never a private event, even of a subscribed job.
	d.Do(map[string]any{"op": "check", "selector": "#filter-type-CODE_CHANGE"})
	d.Do(map[string]any{"op": "fill", "selector": "#filter-job", "value": "job-1"})
	d.Do(map[string]any{"op": "click", "selector": "#stream-apply"})
	p.reconnected(url.Values{"job_ids": {"job-1"}}, "live · anonymous")
	d.Do(map[string]any{"op": "click", "selector": "#clear"})
	public := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "public"})
	job1 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "job 1", "job_id": "job-1"})
	job2 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "job 2", "job_id": "job-2"})
	alice := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "for alice", "user_id": "alice"})
	aliceJob1 := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "alice, job 1", "user_id": "alice", "job_id": "job-1"})
	job1Memory := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "job 1 memory", "job_id": "job-1"})
	barrier = n.MustPublish(t, map[string]any{"type": "PATTERN_DETECTED", "data": "barrier"})
	names = map[string]string{public: "public", job1: "job-1", job2: "job-2", alice: "alice", aliceJob1: "alice job-1",
		job1Memory: "job-1 memory", barrier: "barrier"}
	all := []string{public, job1, job2, alice, aliceJob1, job1Memory, barrier}
	p.waitRow(barrier)
	want := []string{public, job1, job1Memory, barrier}
	expectIDs(t, "anonymous console on job-1", p.rowsOf(all), want, names)
	if rows := p.rowIDs(); !slices.Equal(rows, reversed(want)) {
		t.Errorf("#event-list after Clear shows %v, want %v (newest first)", label(rows, names), label(reversed(want), names))
	}
	var jobs []string
	p.eval(`JSON.stringify([...document.querySelectorAll('#event-list .event-row .job')].map((e) => e.textContent))`, &jobs)
	if !slices.Equal(jobs, []string{"", "job-1", "job-1", ""}) {
		t.Errorf("job column %q, want the job ids of the rows", jobs)
	}

	// With alice's token in #stream-token, the stream is hers: her private
	// events come too, and still no other job's or user's.
	d.Do(map[string]any{"op": "fill", "selector": "#stream-token", "value": servertest.Token(t, "alice", time.Hour)})
	d.Do(map[string]any{"op": "click", "selector": "#stream-apply"})
	p.d.Wait("an authenticated stream request", func(r Report) bool {
		u, err := url.Parse(r.Str("url"))
		return r.Str("ev") == "request" && err == nil && u.Path == "/api/realtime/stream" &&
			u.Query().Get("token") != "" && u.Query().Get("job_ids") == "job-1" && !u.Query().Has("event_types")
	})
	p.waitFor("stream status live · user alice", `document.getElementById('stream-status').textContent === 'live · user alice'`, 5*time.Second)
	public = n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "public"})
	alice = n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "for alice", "user_id": "alice"})
	aliceJob1 = n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "alice, job 1", "user_id": "alice", "job_id": "job-1"})
	bob := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "for bob", "user_id": "bob"})
	job2 = n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "job 2", "job_id": "job-2"})
	job1 = n.MustPublish(t, map[string]any{"type": "ERROR_OCCURRED", "data": map[string]any{"error": "timeout"}, "job_id": "job-1"})
	barrier = n.MustPublish(t, map[string]any{"type": "PATTERN_DETECTED", "data": "barrier"})
	names = map[string]string{public: "public", alice: "alice", aliceJob1: "alice job-1", bob: "bob", job2: "job-2", job1: "job-1", barrier: "barrier"}
	p.waitRow(barrier)
	expectIDs(t, "alice's console on job-1", p.rowsOf([]string{public, alice, aliceJob1, bob, job2, job1, barrier}),
		[]string{public, alice, aliceJob1, job1, barrier}, names)
	p.waitFor("the authenticated card to count the console", statsJS(map[string]string{
		"conn-total": "6", "conn-sse": "3", "conn-auth": "1", "conn-anon": "5",
	}), 3*time.Second)

	// Pause buffers what arrives; Resume shows it, in order.
	d.Do(map[string]any{"op": "click", "selector": "#pause"})
	p.waitFor("Pause to turn into Resume", `(() => { const b = document.getElementById('pause');
		return b.textContent === 'Resume' && b.getAttribute('aria-pressed') === 'true' })()`, 2*time.Second)
	before := p.rowIDs()
	var paused []string
	for i := range 3 {
		paused = append(paused, n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": map[string]any{"paused": i}}))
	}
	p.waitFor("3 buffered", `document.getElementById('pause-info').textContent === '3 buffered'`, 2*time.Second)
	time.Sleep(200 * time.Millisecond) // longer than the console's 30 ms render batching
	if rows := p.rowIDs(); !slices.Equal(rows, before) {
		t.Errorf("rows changed while paused: %v, was %v", rows, before)
	}
	if got := p.rowsOf(paused); len(got) != 0 {
		t.Errorf("rows added while paused: %v", got)
	}
	d.Do(map[string]any{"op": "click", "selector": "#pause"})
	for _, id := range paused {
		p.waitRow(id)
	}
	expectIDs(t, "rows after Resume", p.rowsOf(paused), paused, nil)
	if rows := p.rowIDs(); len(rows) < 3 || !slices.Equal(rows[:3], reversed(paused)) {
		t.Errorf("#event-list after Resume starts with %v, want %v (newest first)", rows, reversed(paused))
	}
	if info, btn := p.text("pause-info"), p.text("pause"); info != "" || btn != "Pause" {
		t.Errorf("after Resume: #pause-info %q, button %q; want empty and Pause", info, btn)
	}

	// The publish form, with the publish key: 201 and the id; a WebSocket
	// client receives the event.
	ws := clients[0]
	ws.drain(t) // the public events published so far
	d.Do(map[string]any{"op": "fill", "selector": "#publish-key", "value": servertest.PublishKey})
	d.Do(map[string]any{"op": "select", "selector": "#publish-type", "value": "DECISION_MADE"})
	d.Do(map[string]any{"op": "fill", "selector": "#publish-data", "value": `{"decision": "use Redis", "by": "console"}`})
	d.Do(map[string]any{"op": "click", "selector": "#publish-submit"})
	v, _ := p.waitFor("a 201 in #publish-result", `(() => { const r = document.getElementById('publish-result');
		return r.getAttribute('data-status') && JSON.stringify({status: r.getAttribute('data-status'), id: r.getAttribute('data-id'),
			text: r.textContent, cls: r.className}) })()`, 5*time.Second)
	var res struct{ Status, ID, Text, Cls string }
	_ = json.Unmarshal([]byte(v.(string)), &res)
	if res.Status != "201" || res.ID == "" || res.Text != "201 Created · id "+res.ID || res.Cls != "result ok" {
		t.Fatalf("#publish-result after publishing: %+v, want 201 Created with the id", res)
	}
	got := ws.nextEvent(t, 5*time.Second)
	if got["id"] != res.ID || got["type"] != "DECISION_MADE" || fmt.Sprint(got["data"]) != "map[by:console decision:use Redis]" {
		t.Errorf("the WebSocket client received %v, want event %s, DECISION_MADE {decision: use Redis, by: console}", got, res.ID)
	}
	p.waitRow(res.ID)

	dir := os.Getenv("KH_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "console.png")
	d.Do(map[string]any{"op": "screenshot", "path": shot})
	checkScreenshot(t, shot, 800, 600)

	// Until now, not one console message of level error or warning.
	bad := func(r Report) bool {
		return r.Str("ev") == "console" && (r.Str("type") == "error" || r.Str("type") == "warning")
	}
	if msgs := d.Reports(bad); len(msgs) > 0 {
		t.Errorf("console errors or warnings: %v", msgs)
	}
	before = slices.Clone(p.rowIDs())

	// A wrong publish key: the form shows the server's 401 and nothing is
	// published.
	d.Do(map[string]any{"op": "fill", "selector": "#publish-key", "value": "wrong-key"})
	d.Do(map[string]any{"op": "click", "selector": "#publish-submit"})
	v, _ = p.waitFor("a 401 in #publish-result", `(() => { const r = document.getElementById('publish-result');
		return r.getAttribute('data-status') === '401' && JSON.stringify({status: r.getAttribute('data-status'), id: r.getAttribute('data-id'),
			text: r.textContent, cls: r.className}) })()`, 5*time.Second)
	res = struct{ Status, ID, Text, Cls string }{}
	_ = json.Unmarshal([]byte(v.(string)), &res)
	if !strings.HasPrefix(res.Text, "401 unauthorized: ") || !strings.Contains(res.Text, "publish key") || res.ID != "" || res.Cls != "result bad" {
		t.Errorf("#publish-result with a wrong key: %+v, want the 401 unauthorized error and message", res)
	}
	if m, err := ws.tryNext(300 * time.Millisecond); err == nil {
		t.Errorf("the WebSocket client received %v after a refused publish", m)
	}
	if rows := p.rowIDs(); !slices.Equal(rows, before) {
		t.Errorf("rows changed after a refused publish: %v", rows)
	}
	// Chromium logs a failed request as a console error; that is the only
	// one allowed.
	for _, m := range d.Reports(bad) {
		if !(strings.Contains(m.Str("text"), "status of 401") && strings.HasSuffix(m.Str("url"), "/api/realtime/events")) {
			t.Errorf("console message %v", m)
		}
	}

	// Every request went to the node's origin: the console has no external
	// resources.
	seen := map[string]bool{}
	for _, r := range d.Reports(func(r Report) bool { return r.Str("ev") == "request" }) {
		u, err := url.Parse(r.Str("url"))
		if err != nil || u.Scheme+"://"+u.Host != n.URL {
			t.Errorf("request to another origin than %s: %s %s (%s)", n.URL, r.Str("method"), r.Str("url"), r.Str("type"))
			continue
		}
		seen[r.Str("method")+" "+u.Path+" "+r.Str("type")] = true
	}
	for _, want := range []string{"GET / document", "GET /console.js script", "GET /console.css stylesheet",
		"GET /api/realtime/stats fetch", "GET /api/realtime/stream eventsource", "POST /api/realtime/events fetch"} {
		if !seen[want] {
			t.Errorf("no request %q; saw %v", want, seen)
		}
	}
}

func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

// checkScreenshot checks that path is a PNG of at least w×h pixels.
func checkScreenshot(t *testing.T, path string, w, h int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot %s (%d bytes) is not a PNG: %v", path, len(b), err)
	}
	if r := img.Bounds(); r.Dx() < w || r.Dy() < h {
		t.Errorf("screenshot %s is %dx%d, want at least %dx%d", path, r.Dx(), r.Dy(), w, h)
	}
	t.Logf("screenshot %s: %dx%d, %d bytes", path, img.Bounds().Dx(), img.Bounds().Dy(), len(b))
}

// goWS is a WebSocket client from Go (gorilla/websocket), its messages read
// by a goroutine.
type goWS struct {
	conn *websocket.Conn
	msgs chan map[string]any
}

// dialGoWS connects to the node with the query and waits for the welcome.
func dialGoWS(t *testing.T, n *servertest.Node, query string) *goWS {
	t.Helper()
	u := n.WSURL
	if query != "" {
		u += "?" + query
	}
	dialer := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, _, err := dialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	c := &goWS{conn: conn, msgs: make(chan map[string]any, 256)}
	go func() {
		defer close(c.msgs)
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				return
			}
			var m map[string]any
			if json.Unmarshal(b, &m) == nil {
				c.msgs <- m
			}
		}
	}()
	t.Cleanup(func() { _ = conn.Close() })
	if m, err := c.tryNext(5 * time.Second); err != nil || m["type"] != "connected" {
		t.Fatalf("WebSocket %s: first message %v (%v), want the welcome", u, m, err)
	}
	return c
}

func (c *goWS) tryNext(timeout time.Duration) (map[string]any, error) {
	select {
	case m, ok := <-c.msgs:
		if !ok {
			return nil, fmt.Errorf("connection closed")
		}
		return m, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("no message within %v", timeout)
	}
}

// drain discards the messages received so far, waiting until none has
// come for 200 ms.
func (c *goWS) drain(t *testing.T) {
	t.Helper()
	for {
		if _, err := c.tryNext(200 * time.Millisecond); err != nil {
			if strings.Contains(err.Error(), "closed") {
				t.Fatalf("WebSocket: %v", err)
			}
			return
		}
	}
}

// nextEvent returns the next event (upper-case type), skipping nothing:
// a control message fails the test.
func (c *goWS) nextEvent(t *testing.T, timeout time.Duration) map[string]any {
	t.Helper()
	m, err := c.tryNext(timeout)
	if err != nil {
		t.Fatalf("WebSocket: %v", err)
	}
	if typ, _ := m["type"].(string); !isEventType(typ) {
		t.Fatalf("WebSocket: control message %v, want an event", m)
	}
	return m
}

// openGoSSE opens a stream from Go, waits for its connected event and
// keeps reading it (discarding) until the test ends.
func openGoSSE(t *testing.T, n *servertest.Node, query string) {
	t.Helper()
	u := n.URL + "/api/realtime/stream"
	if query != "" {
		u += "?" + query
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", u, resp.StatusCode)
	}
	connected := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		once := false
		for sc.Scan() {
			if !once && sc.Text() == "event: connected" {
				once = true
				close(connected)
			}
		}
	}()
	select {
	case <-connected:
	case <-time.After(5 * time.Second):
		t.Fatalf("stream %s: no connected event within 5s", u)
	}
}
