package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// expiredToken returns a token for user, signed with the test secret, that
// expired an hour ago (well past the server's clock-skew leeway).
func expiredToken(t *testing.T, user string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(time.Now().Add(-2 * time.Hour)),
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Hour)),
	}).SignedString([]byte(servertest.Secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// wsSetup starts a node (with extra flags) and the Node `ws` driver.
func wsSetup(t *testing.T, extra ...string) (*servertest.Node, *Driver) {
	t.Helper()
	nodeDir(t)
	n := servertest.Start(t, extra...)
	d := StartDriver(t, "ws-driver.mjs", map[string]string{"KH_WS_URL": n.WSURL})
	return n, d
}

// wsOpen opens conn with the query parameters and returns its welcome.
func wsOpen(t *testing.T, d *Driver, conn string, query map[string]string) Report {
	t.Helper()
	d.Send(map[string]any{"op": "open", "conn": conn, "query": query})
	w := d.Wait(conn+" welcome", wsMsg(conn, "connected")).Obj("msg")
	if first := wsMessages(d, conn)[0]; first.Str("type") != "connected" {
		t.Fatalf("%s: first message %s, want the welcome", conn, first)
	}
	return w
}

// wsSend sends a JSON text message on conn.
func wsSend(d *Driver, conn string, msg any) {
	b, _ := json.Marshal(msg)
	d.Do(map[string]any{"op": "send", "conn": conn, "text": string(b)})
}

// wsEvents waits until conn received the event barrier and returns the ids
// of all the events conn received, in order. Events come in id order
// (SPEC §1), so whatever was published before the barrier and is not in
// the list was not delivered.
func wsEvents(t *testing.T, d *Driver, conn, barrier string) []string {
	t.Helper()
	d.Wait(conn+" receiving event "+barrier, wsEventID(conn, barrier))
	return eventIDs(wsMessages(d, conn))
}

func expectIDs(t *testing.T, who string, got, want []string, names map[string]string) {
	t.Helper()
	if !equalStrings(got, want) {
		t.Errorf("%s received events %v, want %v", who, label(got, names), label(want, names))
	}
}

// label turns event ids into readable names for failure messages.
func label(ids []string, names map[string]string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		if n, ok := names[id]; ok {
			out[i] = n + "(" + id + ")"
		} else {
			out[i] = id
		}
	}
	return out
}

func TestWSWelcome(t *testing.T) {
	_, d := wsSetup(t)
	anon := wsOpen(t, d, "anon", nil)
	alice := wsOpen(t, d, "alice", map[string]string{"token": servertest.Token(t, "alice", time.Hour)})
	d.Send(map[string]any{"op": "open", "conn": "bearer", "headers": map[string]string{"Authorization": "Bearer " + servertest.Token(t, "bob", 0)}})
	bearer := d.Wait("bearer welcome", wsMsg("bearer", "connected")).Obj("msg")

	for _, c := range []struct {
		name string
		w    Report
		user any
	}{{"anon", anon, nil}, {"alice", alice, "alice"}, {"bearer", bearer, "bob"}} {
		w := c.w
		if !uuidRE.MatchString(w.Str("client_id")) {
			t.Errorf("%s: client_id %q is not a UUID: %s", c.name, w.Str("client_id"), w)
		}
		if v, ok := w["user_id"]; !ok || v != c.user {
			t.Errorf("%s: user_id = %v (present %v), want %v: %s", c.name, v, ok, c.user, w)
		}
		if got, want := w["authenticated"], c.user != nil; got != want {
			t.Errorf("%s: authenticated = %v, want %v: %s", c.name, got, want, w)
		}
		if w.Str("message") != "WebSocket connection established" {
			t.Errorf("%s: message = %q: %s", c.name, w.Str("message"), w)
		}
	}
	if exp := alice.Str("expires_at"); exp != "" {
		if _, err := time.Parse(time.RFC3339, exp); err != nil {
			t.Errorf("alice: expires_at %q is not RFC 3339: %v", exp, err)
		}
	}
	if anon.Str("client_id") == alice.Str("client_id") || alice.Str("client_id") == bearer.Str("client_id") {
		t.Errorf("client ids are not distinct: %s %s %s", anon.Str("client_id"), alice.Str("client_id"), bearer.Str("client_id"))
	}
}

func TestWSInvalidToken(t *testing.T) {
	_, d := wsSetup(t)
	otherKey, err := auth.Mint("another-secret-0123456789abcdef012345", "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired := expiredToken(t, "alice")
	cases := []struct{ conn, token, reason string }{
		{"malformed", "not-a-jwt", "malformed"},
		{"badsig", otherKey, "signature"},
		{"expired", expired, "expired"},
	}
	for _, c := range cases {
		d.Send(map[string]any{"op": "open", "conn": c.conn, "query": map[string]string{"token": c.token}})
	}
	for _, c := range cases {
		cl := d.Wait(c.conn+" close", ev("close", c.conn))
		if cl.Num("code") != 4001 {
			t.Errorf("%s: close code %v (%q), want 4001", c.conn, cl["code"], cl.Str("reason"))
		}
		msgs := wsMessages(d, c.conn)
		if len(msgs) != 1 {
			t.Errorf("%s: got %d messages before the close, want exactly the error: %v", c.conn, len(msgs), msgs)
			continue
		}
		m := msgs[0]
		if m.Str("type") != "error" || m.Str("code") != "invalid_token" {
			t.Errorf("%s: message %s, want type error, code invalid_token", c.conn, m)
		}
		if !strings.Contains(m.Str("message"), c.reason) {
			t.Errorf("%s: error message %q does not say %q", c.conn, m.Str("message"), c.reason)
		}
	}
}

func TestWSControlMessages(t *testing.T) {
	_, d := wsSetup(t)
	wsOpen(t, d, "c", nil)
	steps := []struct {
		send string
		want map[string]any // fields the answer must have
	}{
		{`{"type":"subscribe","job_id":"job-1"}`, map[string]any{"type": "subscribed", "job_id": "job-1"}},
		{`{"type":"ping"}`, map[string]any{"type": "pong"}},
		{`{"type":"unsubscribe","job_id":"job-1"}`, map[string]any{"type": "unsubscribed", "job_id": "job-1"}},
		{`this is not JSON`, map[string]any{"type": "error", "code": "bad_message"}},
		{`{"type":"dance"}`, map[string]any{"type": "error", "code": "bad_message"}},
		{`{"type":"subscribe"}`, map[string]any{"type": "error", "code": "bad_message"}},
		{`{"type":"subscribe","job_id":"bad job id!"}`, map[string]any{"type": "error", "code": "bad_message"}},
		{`[1,2,3]`, map[string]any{"type": "error", "code": "bad_message"}},
		{`{"type":"ping"}`, map[string]any{"type": "pong"}}, // still open after the garbage
	}
	for i, s := range steps {
		d.Do(map[string]any{"op": "send", "conn": "c", "text": s.send})
		// Answers come in order: the (i+2)th message answers step i.
		all := d.WaitN(fmt.Sprintf("answer %d to %s", i+1, s.send), i+2, ev("message", "c"))
		got := all[i+1].Obj("msg")
		for k, v := range s.want {
			if got[k] != v {
				t.Errorf("sent %s: answer %s, want %s = %v", s.send, got, k, v)
			}
		}
		if got.Str("type") == "error" && got.Str("message") == "" {
			t.Errorf("sent %s: error without a message: %s", s.send, got)
		}
	}
	if cl := d.Reports(ev("close", "c")); len(cl) > 0 {
		t.Errorf("connection closed after bad messages: %v", cl)
	}
	if n := len(d.Reports(ev("message", "c"))); n != len(steps)+1 {
		t.Errorf("got %d messages, want %d (welcome + one answer per message)", n, len(steps)+1)
	}
}

func TestWSPrivateEvents(t *testing.T) {
	n, d := wsSetup(t)
	wsOpen(t, d, "anon", nil)
	wsOpen(t, d, "alice", map[string]string{"token": servertest.Token(t, "alice", time.Hour)})
	wsOpen(t, d, "bob", map[string]string{"token": servertest.Token(t, "bob", time.Hour)})
	d.Send(map[string]any{"op": "open", "conn": "alice-bearer", "headers": map[string]string{"Authorization": "Bearer " + servertest.Token(t, "alice", 0)}})
	d.Wait("alice-bearer welcome", wsMsg("alice-bearer", "connected"))

	toAlice := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": map[string]any{"secret": 1}, "user_id": "alice"})
	toCarol := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": map[string]any{"secret": 2}, "user_id": "carol"})
	public := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"file": "a.go"}})
	names := map[string]string{toAlice: "toAlice", toCarol: "toCarol", public: "public"}

	expectIDs(t, "alice", wsEvents(t, d, "alice", public), []string{toAlice, public}, names)
	expectIDs(t, "alice (Authorization header)", wsEvents(t, d, "alice-bearer", public), []string{toAlice, public}, names)
	expectIDs(t, "anonymous", wsEvents(t, d, "anon", public), []string{public}, names)
	expectIDs(t, "bob", wsEvents(t, d, "bob", public), []string{public}, names)

	// The private event arrives whole: the event JSON of SPEC §1.
	for _, m := range wsMessages(d, "alice") {
		if m.Str("id") != toAlice {
			continue
		}
		if m.Str("type") != "DECISION_MADE" || m.Str("user_id") != "alice" || m.Obj("data")["secret"] != float64(1) {
			t.Errorf("private event as received: %s", m)
		}
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", m.Str("timestamp")); err != nil {
			t.Errorf("timestamp %q: %v", m.Str("timestamp"), err)
		}
	}
}

func TestWSJobFilter(t *testing.T) {
	n, d := wsSetup(t)
	wsOpen(t, d, "params", map[string]string{"job_ids": "job-1,job-2"})
	wsOpen(t, d, "message", nil)
	wsOpen(t, d, "none", nil)
	wsSend(d, "message", map[string]any{"type": "subscribe", "job_id": "job-3"})
	d.Wait("subscribed job-3", wsMsg("message", "subscribed"))

	j1 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1, "job_id": "job-1"})
	j3 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 3, "job_id": "job-3"})
	j9 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 9, "job_id": "job-9"})
	j2 := n.MustPublish(t, map[string]any{"type": "PATTERN_DETECTED", "data": 2, "job_id": "job-2"})
	barrier := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "barrier"})
	names := map[string]string{j1: "job-1", j2: "job-2", j3: "job-3", j9: "job-9", barrier: "barrier"}

	expectIDs(t, "job_ids=job-1,job-2", wsEvents(t, d, "params", barrier), []string{j1, j2, barrier}, names)
	expectIDs(t, "subscribed to job-3", wsEvents(t, d, "message", barrier), []string{j3, barrier}, names)
	expectIDs(t, "no jobs", wsEvents(t, d, "none", barrier), []string{barrier}, names)

	// After unsubscribe, job-3 events stop.
	wsSend(d, "message", map[string]any{"type": "unsubscribe", "job_id": "job-3"})
	d.Wait("unsubscribed job-3", wsMsg("message", "unsubscribed"))
	j3b := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "3b", "job_id": "job-3"})
	barrier2 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "barrier2"})
	names[j3b], names[barrier2] = "job-3 again", "barrier2"
	expectIDs(t, "unsubscribed from job-3", wsEvents(t, d, "message", barrier2), []string{j3, barrier, barrier2}, names)
}

func TestWSEventTypesFilter(t *testing.T) {
	n, d := wsSetup(t)
	wsOpen(t, d, "filtered", map[string]string{"event_types": "CODE_CHANGE,ERROR_OCCURRED"})
	wsOpen(t, d, "all", nil)
	mem := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": nil})
	code := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": nil})
	dec := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": nil})
	errEv := n.MustPublish(t, map[string]any{"type": "ERROR_OCCURRED", "data": nil})
	names := map[string]string{mem: "MEMORY_CREATED", code: "CODE_CHANGE", dec: "DECISION_MADE", errEv: "ERROR_OCCURRED"}
	expectIDs(t, "event_types=CODE_CHANGE,ERROR_OCCURRED", wsEvents(t, d, "filtered", errEv), []string{code, errEv}, names)
	expectIDs(t, "unfiltered", wsEvents(t, d, "all", errEv), []string{mem, code, dec, errEv}, names)
}

func TestWSResume(t *testing.T) {
	n, d := wsSetup(t)
	wsOpen(t, d, "first", nil)
	e1 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1})
	d.Wait("first receiving e1", wsEventID("first", e1))
	d.Do(map[string]any{"op": "close", "conn": "first"})
	d.Wait("first closed", ev("close", "first"))

	// Missed while away; the private one is not alice's and must not replay.
	e2 := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": 2})
	hidden := n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "hidden", "user_id": "mallory"})
	e3 := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": 3})
	names := map[string]string{e1: "e1", e2: "e2", hidden: "hidden", e3: "e3"}

	wsOpen(t, d, "resumed", map[string]string{"last_event_id": e1})
	wsOpen(t, d, "alias", map[string]string{"lastEventId": e2}) // the polyfill spelling
	e4 := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 4})
	names[e4] = "e4"

	expectIDs(t, "resumed after e1", wsEvents(t, d, "resumed", e4), []string{e2, e3, e4}, names)
	expectIDs(t, "resumed after e2 (lastEventId)", wsEvents(t, d, "alias", e4), []string{e3, e4}, names)
	expectIDs(t, "first, before closing", eventIDs(wsMessages(d, "first")), []string{e1}, names)
}

func TestWSOrigin(t *testing.T) {
	_, d := wsSetup(t)
	for _, o := range []string{"http://allowed.example", "https://app.good.example"} {
		d.Send(map[string]any{"op": "open", "conn": o, "origin": o})
		d.Wait("welcome with Origin "+o, wsMsg(o, "connected"))
	}
	wsOpen(t, d, "no-origin", nil)

	for _, o := range []string{"http://evil.example", "https://good.example.evil.example", "http://app.good.example"} {
		d.Send(map[string]any{"op": "open", "conn": o, "origin": o})
		r := d.Wait("refusal of Origin "+o, func(r Report) bool {
			return r.Str("conn") == o && (r.Str("ev") == "unexpected-response" || r.Str("ev") == "open")
		})
		if r.Str("ev") != "unexpected-response" {
			t.Errorf("Origin %s: connection opened, want HTTP 403", o)
			continue
		}
		if r.Num("status") != 403 {
			t.Errorf("Origin %s: status %v, want 403; body %s", o, r["status"], r.Str("body"))
		}
		checkErrorBody(t, "Origin "+o, r, "")
	}
}

func TestWSBadParameters(t *testing.T) {
	_, d := wsSetup(t)
	cases := []struct{ conn, param, value string }{
		{"types", "event_types", "NOT_A_TYPE"},
		{"lower", "event_types", "code_change"},
		{"jobs", "job_ids", "job 1"},
		{"resume", "last_event_id", "yesterday"},
	}
	for _, c := range cases {
		d.Send(map[string]any{"op": "open", "conn": c.conn, "query": map[string]string{c.param: c.value}})
	}
	for _, c := range cases {
		r := d.Wait(c.conn+" refusal", func(r Report) bool {
			return r.Str("conn") == c.conn && (r.Str("ev") == "unexpected-response" || r.Str("ev") == "open")
		})
		if r.Str("ev") != "unexpected-response" || r.Num("status") != 400 {
			t.Errorf("%s=%s: got %s, want HTTP 400", c.param, c.value, r)
			continue
		}
		checkErrorBody(t, c.param+"="+c.value, r, c.param)
	}
}

// checkErrorBody checks the JSON error body of SPEC §2 in an
// unexpected-response report; param, when set, must be named in it.
func checkErrorBody(t *testing.T, what string, r Report, param string) {
	t.Helper()
	if ct := r.Obj("headers").Str("content-type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var body struct {
		Error   *string `json:"error"`
		Message *string `json:"message"`
	}
	if err := json.Unmarshal([]byte(r.Str("body")), &body); err != nil {
		t.Errorf("%s: body %q is not JSON: %v", what, r.Str("body"), err)
		return
	}
	if body.Error == nil || *body.Error == "" || body.Message == nil || *body.Message == "" {
		t.Errorf("%s: body %s, want {\"error\": ..., \"message\": ...}", what, r.Str("body"))
		return
	}
	if param != "" && !strings.Contains(*body.Message, param) && !strings.Contains(*body.Error, param) {
		t.Errorf("%s: body %s does not name the parameter %s", what, r.Str("body"), param)
	}
}
