package e2e

import (
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// sseSetup starts a node and the Node `eventsource` driver.
func sseSetup(t *testing.T, extra ...string) (*servertest.Node, *Driver) {
	t.Helper()
	nodeDir(t)
	n := servertest.Start(t, extra...)
	d := StartDriver(t, "sse-driver.mjs", map[string]string{"KH_URL": n.URL})
	return n, d
}

// sseOpen opens a stream and returns its `connected` control message, taken
// with addEventListener('connected').
func sseOpen(t *testing.T, d *Driver, conn string, cmd map[string]any) Report {
	t.Helper()
	if cmd == nil {
		cmd = map[string]any{}
	}
	cmd["op"], cmd["conn"] = "open", conn
	d.Send(cmd)
	return d.Wait(conn+" connected", sseNamed(conn, "connected")).Obj("data")
}

func sseNamed(conn, name string) func(Report) bool {
	return func(r Report) bool { return r.Str("ev") == "named" && r.Str("conn") == conn && r.Str("type") == name }
}

// sseMessages returns what onmessage got on conn so far.
func sseMessages(d *Driver, conn string) []Report { return d.Reports(ev("message", conn)) }

// sseEvents waits until conn's onmessage received the event barrier and
// returns the ids of everything onmessage received, in order.
func sseEvents(t *testing.T, d *Driver, conn, barrier string) []string {
	t.Helper()
	d.Wait(conn+" receiving event "+barrier, func(r Report) bool {
		return r.Str("ev") == "message" && r.Str("conn") == conn && r.Obj("data").Str("id") == barrier
	})
	var ids []string
	for _, m := range sseMessages(d, conn) {
		ids = append(ids, m.Obj("data").Str("id"))
	}
	return ids
}

func TestSSEEventsAndVisibility(t *testing.T) {
	n, d := sseSetup(t)
	anon := sseOpen(t, d, "anon", nil)
	alice := sseOpen(t, d, "alice", map[string]any{"query": map[string]string{"token": servertest.Token(t, "alice", time.Hour)}})
	bob := sseOpen(t, d, "bob", map[string]any{"authorization": "Bearer " + servertest.Token(t, "bob", 0)})
	for _, c := range []struct {
		name string
		w    Report
		user any
	}{{"anon", anon, nil}, {"alice", alice, "alice"}, {"bob (Authorization header)", bob, "bob"}} {
		if c.w.Str("type") != "connected" || !uuidRE.MatchString(c.w.Str("client_id")) ||
			c.w["user_id"] != c.user || c.w["authenticated"] != (c.user != nil) || c.w.Str("message") != "SSE stream established" {
			t.Errorf("%s: connected = %s, want type connected, a UUID client_id, user_id %v, authenticated %v", c.name, c.w, c.user, c.user != nil)
		}
		if _, present := c.w["user_id"]; !present {
			t.Errorf("%s: connected has no user_id field: %s", c.name, c.w)
		}
	}

	public := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"file": "api/app.py", "lines": 12}})
	toAlice := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "for alice", "user_id": "alice"})
	toBob := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "for bob", "user_id": "bob"})
	barrier := n.MustPublish(t, map[string]any{"type": "PATTERN_DETECTED", "data": "barrier"})
	names := map[string]string{public: "public", toAlice: "toAlice", toBob: "toBob", barrier: "barrier"}

	expectIDs(t, "anonymous stream", sseEvents(t, d, "anon", barrier), []string{public, barrier}, names)
	expectIDs(t, "alice's stream", sseEvents(t, d, "alice", barrier), []string{public, toAlice, barrier}, names)
	expectIDs(t, "bob's stream", sseEvents(t, d, "bob", barrier), []string{public, toBob, barrier}, names)

	// onmessage got the events as plain messages (no event: field), with
	// the event JSON as data and the SSE id as lastEventId; the connected
	// control message never reached onmessage.
	for _, m := range sseMessages(d, "anon") {
		data := m.Obj("data")
		if m.Str("type") != "message" || !isEventType(data.Str("type")) {
			t.Errorf("onmessage got %s, want only events", m)
		}
		if m.Str("lastEventId") != data.Str("id") {
			t.Errorf("lastEventId %q, want the event id %q", m.Str("lastEventId"), data.Str("id"))
		}
		if data.Str("id") == public {
			if data.Str("type") != "CODE_CHANGE" || data.Obj("data")["file"] != "api/app.py" || data.Obj("data")["lines"] != float64(12) {
				t.Errorf("public event as received: %s", m.Str("raw"))
			}
			if _, err := time.Parse("2006-01-02T15:04:05.000Z", data.Str("timestamp")); err != nil {
				t.Errorf("timestamp: %v", err)
			}
		}
	}
	if got := d.Reports(sseNamed("anon", "connected")); len(got) != 1 {
		t.Errorf("anon: %d connected events, want 1", len(got))
	}
	if errs := d.Reports(func(r Report) bool { return r.Str("ev") == "error" }); len(errs) > 0 {
		t.Errorf("unexpected stream errors: %v", errs)
	}
}

func TestSSEEventTypesFilter(t *testing.T) {
	n, d := sseSetup(t)
	sseOpen(t, d, "decisions", map[string]any{"query": map[string]string{"event_types": "DECISION_MADE,ERROR_OCCURRED"}})
	sseOpen(t, d, "jobs", map[string]any{"query": map[string]string{"event_types": "DECISION_MADE", "job_ids": "job-7"}})
	code := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1})
	d1 := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": 2})
	mem := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": 3})
	jobDec := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": 4, "job_id": "job-7"})
	jobCode := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 5, "job_id": "job-7"})
	e2 := n.MustPublish(t, map[string]any{"type": "ERROR_OCCURRED", "data": 6})
	d2 := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": 7})
	names := map[string]string{code: "CODE_CHANGE", d1: "DECISION_MADE#1", mem: "MEMORY_CREATED", jobDec: "DECISION_MADE job-7",
		jobCode: "CODE_CHANGE job-7", e2: "ERROR_OCCURRED", d2: "DECISION_MADE#2"}
	expectIDs(t, "event_types=DECISION_MADE,ERROR_OCCURRED", sseEvents(t, d, "decisions", d2), []string{d1, e2, d2}, names)
	expectIDs(t, "event_types=DECISION_MADE&job_ids=job-7", sseEvents(t, d, "jobs", d2), []string{d1, jobDec, d2}, names)
}

func TestSSEResume(t *testing.T) {
	n, d := sseSetup(t)
	sseOpen(t, d, "first", nil)
	e1 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1})
	e2 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 2})
	expectIDs(t, "first stream", sseEvents(t, d, "first", e2), []string{e1, e2}, nil)
	d.Do(map[string]any{"op": "close", "conn": "first"})
	last := sseMessages(d, "first")[1].Str("lastEventId")
	if last != e2 {
		t.Fatalf("lastEventId after two events = %q, want %q", last, e2)
	}

	e3 := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": 3})
	hidden := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "not yours", "user_id": "mallory"})
	e4 := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": 4})
	names := map[string]string{e1: "e1", e2: "e2", e3: "e3", hidden: "hidden", e4: "e4"}

	// The stream started again with the last id: as the Last-Event-ID
	// header (what EventSource sends on reconnect), as the query parameter,
	// and both at once (the header wins).
	sseOpen(t, d, "header", map[string]any{"lastEventId": last})
	sseOpen(t, d, "query", map[string]any{"query": map[string]string{"last_event_id": e3}})
	sseOpen(t, d, "both", map[string]any{"lastEventId": e3, "query": map[string]string{"last_event_id": e1}})
	e5 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 5})
	names[e5] = "e5"

	expectIDs(t, "Last-Event-ID e2", sseEvents(t, d, "header", e5), []string{e3, e4, e5}, names)
	expectIDs(t, "last_event_id=e3", sseEvents(t, d, "query", e5), []string{e4, e5}, names)
	expectIDs(t, "Last-Event-ID e3 and last_event_id=e1", sseEvents(t, d, "both", e5), []string{e4, e5}, names)
}

func TestSSERefused(t *testing.T) {
	_, d := sseSetup(t)
	cases := []struct {
		conn   string
		cmd    map[string]any
		status float64
	}{
		{"bad-token", map[string]any{"query": map[string]string{"token": "not-a-jwt"}}, 401},
		{"expired", map[string]any{"authorization": "Bearer " + expiredToken(t, "alice")}, 401},
		{"bad-types", map[string]any{"query": map[string]string{"event_types": "CODE_CHANGE,nope"}}, 400},
	}
	for _, c := range cases {
		c.cmd["op"], c.cmd["conn"] = "open", c.conn
		d.Send(c.cmd)
	}
	for _, c := range cases {
		e := d.Wait(c.conn+" error", ev("error", c.conn))
		if e.Num("code") != c.status {
			t.Errorf("%s: error %s, want code %v", c.conn, e, c.status)
		}
		// The package gives up (readyState CLOSED), as browsers do.
		if e.Num("readyState") != 2 {
			t.Errorf("%s: readyState %v after the error, want 2 (CLOSED: no retry)", c.conn, e["readyState"])
		}
	}
	// No retry: wait longer than the retry the server advises (3 s), then
	// check that nothing else happened on these streams.
	time.Sleep(3500 * time.Millisecond)
	for _, c := range cases {
		if got := d.Reports(func(r Report) bool { return r.Str("conn") == c.conn && r.Str("ev") != "error" }); len(got) > 0 {
			t.Errorf("%s: after the refusal: %v", c.conn, got)
		}
		if got := d.Reports(ev("error", c.conn)); len(got) != 1 {
			t.Errorf("%s: %d errors, want 1 (no retry)", c.conn, len(got))
		}
	}
}
