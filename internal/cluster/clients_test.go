package cluster_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// message is one thing a client received: an event, or a control message
// (WebSocket: a lower-case type; SSE: a named event).
type message struct {
	event   *wireEvent
	ctlType string
	control map[string]any
}

// conn is one open WebSocket or SSE connection, past its welcome.
type conn interface {
	next() (message, error) // the next message; an error ends the connection
	send(v any) error       // WebSocket only
	close()                 // closes the connection; next then fails
}

// handshakeError is a refused connection: the HTTP answer before the
// upgrade or the stream.
type handshakeError struct {
	status     int
	retryAfter string
	body       string
}

func (e *handshakeError) Error() string {
	return fmt.Sprintf("handshake answered %d (Retry-After %q): %s", e.status, e.retryAfter, e.body)
}

// ---- WebSocket (gorilla) ----

type wsConn struct {
	c   *websocket.Conn
	wmu sync.Mutex
}

func dialWS(nd *node, q url.Values) (*wsConn, map[string]any, error) {
	u := nd.ws
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial(u, nil)
	if err != nil {
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			return nil, nil, &handshakeError{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), body: string(b)}
		}
		return nil, nil, err
	}
	w := &wsConn{c: c}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := w.next()
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("welcome: %w", err)
	}
	if m.ctlType != "connected" {
		c.Close()
		return nil, nil, fmt.Errorf("first message %v, want connected", m)
	}
	return w, m.control, nil
}

func (w *wsConn) next() (message, error) {
	_, b, err := w.c.ReadMessage()
	if err != nil {
		return message{}, err
	}
	return parseMessage(b, "")
}

func (w *wsConn) send(v any) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_ = w.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return w.c.WriteJSON(v)
}

func (w *wsConn) close() {
	w.wmu.Lock()
	_ = w.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	w.wmu.Unlock()
	_ = w.c.Close()
}

// parseMessage decodes a JSON message; sseEvent is the SSE event name
// ("" for events).
func parseMessage(b []byte, sseEvent string) (message, error) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return message{}, fmt.Errorf("message %q is not JSON: %v", b, err)
	}
	if sseEvent != "" || head.Type == strings.ToLower(head.Type) {
		m := message{ctlType: head.Type}
		if sseEvent != "" {
			m.ctlType = sseEvent
		}
		_ = json.Unmarshal(b, &m.control)
		return m, nil
	}
	var e wireEvent
	if err := json.Unmarshal(b, &e); err != nil {
		return message{}, fmt.Errorf("event %q: %v", b, err)
	}
	return message{event: &e}, nil
}

// ---- SSE (raw text/event-stream over net/http) ----

type sseConn struct {
	cancel context.CancelFunc
	body   io.ReadCloser
	r      *bufio.Reader
}

// sseClient has no timeout: a stream lasts as long as the test wants.
var sseClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, ResponseHeaderTimeout: 10 * time.Second}}

func dialSSE(nd *node, q url.Values, lastEventID string) (*sseConn, map[string]any, error) {
	u := nd.url + "/api/realtime/stream"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := sseClient.Do(req)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		return nil, nil, &handshakeError{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), body: string(b)}
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		cancel()
		return nil, nil, fmt.Errorf("Content-Type %q", ct)
	}
	s := &sseConn{cancel: cancel, body: resp.Body, r: bufio.NewReader(resp.Body)}
	timer := time.AfterFunc(10*time.Second, cancel) // bounds the wait for the welcome
	m, err := s.next()
	timer.Stop()
	if err != nil {
		s.close()
		return nil, nil, fmt.Errorf("welcome: %w", err)
	}
	if m.ctlType != "connected" {
		s.close()
		return nil, nil, fmt.Errorf("first frame %v, want event: connected", m)
	}
	return s, m.control, nil
}

// next reads frames until one carries data (retry-only frames and
// comments are skipped). An event's id: field must equal its JSON id.
func (s *sseConn) next() (message, error) {
	var id, name string
	var data []string
	hasID := false
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return message{}, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if len(data) == 0 {
				id, name, hasID = "", "", false
				continue
			}
			m, err := parseMessage([]byte(strings.Join(data, "\n")), name)
			if err != nil {
				return message{}, err
			}
			if m.event != nil && (!hasID || id != m.event.ID) {
				return message{}, fmt.Errorf("SSE frame id: %q does not match the event id %q", id, m.event.ID)
			}
			if m.event == nil && name == "" {
				return message{}, fmt.Errorf("SSE control message %v without an event: name", m.control)
			}
			return m, nil
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			id, hasID = value, true
		case "event":
			name = value
		case "data":
			data = append(data, value)
		}
	}
}

func (s *sseConn) send(any) error { return errors.New("SSE cannot send") }

func (s *sseConn) close() {
	s.cancel()
	_ = s.body.Close()
}

// ---- client ----

// client is a WebSocket or SSE subscriber that records what it receives in
// a goroutine of its own. With several nodes it fails over: when its
// connection ends it connects to the next node with the id of the last
// event it received (WebSocket: last_event_id; SSE: the Last-Event-ID
// header), as a browser behind a load balancer would.
type client struct {
	t     *testing.T
	name  string
	kind  string // ws or sse
	query url.Values
	view  view
	nodes []*node // the first is connected at start; the rest are failovers

	mu       sync.Mutex
	cur      conn
	events   []wireEvent
	controls []message
	problems []string
	joined   []string // node names, one per connection
	ends     []string // why each connection ended
	notify   chan struct{}
	stopping bool
	done     chan struct{}
}

// connect opens a client on nodes[0] and starts its reader; it returns
// once the welcome arrived. t.Cleanup closes it.
func connect(t *testing.T, name, kind string, v view, nodes ...*node) *client {
	t.Helper()
	c, err := tryConnect(t, name, kind, v, nodes...)
	if err != nil {
		t.Fatalf("client %s: connect to node %s: %v", name, nodes[0].name, err)
	}
	return c
}

func tryConnect(t *testing.T, name, kind string, v view, nodes ...*node) (*client, error) {
	t.Helper()
	q := url.Values{}
	if v.user != "" {
		q.Set("token", token(t, v.user))
	}
	if len(v.jobs) > 0 {
		q.Set("job_ids", strings.Join(v.jobs, ","))
	}
	if len(v.types) > 0 {
		q.Set("event_types", strings.Join(v.types, ","))
	}
	c := &client{t: t, name: name, kind: kind, query: q, view: v, nodes: nodes, notify: make(chan struct{}, 1), done: make(chan struct{})}
	first, welcome, err := c.dial(nodes[0], "")
	if err != nil {
		return nil, err
	}
	if err := checkWelcome(welcome, v.user); err != nil {
		first.close()
		t.Fatalf("client %s: %v", name, err)
	}
	c.cur = first
	c.joined = append(c.joined, nodes[0].name)
	go c.run(first)
	t.Cleanup(c.close)
	return c, nil
}

func checkWelcome(w map[string]any, user string) error {
	if id, _ := w["client_id"].(string); len(id) != 36 {
		return fmt.Errorf("welcome %v: client_id is not a UUID", w)
	}
	if user == "" && (w["user_id"] != nil || w["authenticated"] != false) {
		return fmt.Errorf("anonymous welcome %v", w)
	}
	if user != "" && (w["user_id"] != user || w["authenticated"] != true) {
		return fmt.Errorf("welcome %v, want user %s", w, user)
	}
	return nil
}

func (c *client) dial(nd *node, lastID string) (conn, map[string]any, error) {
	if c.kind == "sse" {
		return dialSSE(nd, c.query, lastID)
	}
	q := c.query
	if lastID != "" {
		q = url.Values{}
		for k, v := range c.query {
			q[k] = v
		}
		q.Set("last_event_id", lastID)
	}
	return dialWS(nd, q)
}

// run reads until the connection ends, then fails over to the next node,
// until the client is closed or no node is left.
func (c *client) run(cur conn) {
	defer close(c.done)
	for i := 0; ; {
		err := c.read(cur)
		c.mu.Lock()
		stopping := c.stopping
		if !stopping {
			c.ends = append(c.ends, fmt.Sprintf("node %s: %v", c.nodes[i].name, err))
		}
		last := ""
		if n := len(c.events); n > 0 {
			last = c.events[n-1].ID
		}
		c.mu.Unlock()
		c.wake()
		i++
		if stopping || i >= len(c.nodes) {
			return
		}
		// Reconnect, retrying refusals (a rate limit, a node still
		// starting) for up to 15 s.
		deadline := time.Now().Add(15 * time.Second)
		for {
			next, welcome, err := c.dial(c.nodes[i], last)
			if err == nil {
				if werr := checkWelcome(welcome, c.view.user); werr != nil {
					c.problem("reconnect to node %s: %v", c.nodes[i].name, werr)
				}
				c.mu.Lock()
				if c.stopping {
					c.mu.Unlock()
					next.close()
					return
				}
				c.cur = next
				c.joined = append(c.joined, c.nodes[i].name)
				c.mu.Unlock()
				cur = next
				break
			}
			if time.Now().After(deadline) {
				c.problem("reconnect to node %s with last id %q: %v", c.nodes[i].name, last, err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (c *client) read(cur conn) error {
	for {
		m, err := cur.next()
		if err != nil {
			return err
		}
		c.mu.Lock()
		if m.event != nil {
			c.events = append(c.events, *m.event)
		} else {
			c.controls = append(c.controls, m)
		}
		c.mu.Unlock()
		c.wake()
	}
}

func (c *client) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *client) problem(format string, args ...any) {
	c.mu.Lock()
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
	c.mu.Unlock()
	c.wake()
}

// close ends the client's connection and its reader. Idempotent.
func (c *client) close() {
	c.mu.Lock()
	c.stopping = true
	cur := c.cur
	c.mu.Unlock()
	if cur != nil {
		cur.close()
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.t.Errorf("client %s: reader did not end within 10s of close", c.name)
	}
}

func (c *client) send(v any) {
	c.t.Helper()
	c.mu.Lock()
	cur := c.cur
	c.mu.Unlock()
	if err := cur.send(v); err != nil {
		c.t.Fatalf("client %s: send %v: %v", c.name, v, err)
	}
}

// snapshot returns copies of what the client recorded.
func (c *client) snapshot() (events []wireEvent, controls []message, problems, joined, ends []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]wireEvent(nil), c.events...), append([]message(nil), c.controls...),
		append([]string(nil), c.problems...), append([]string(nil), c.joined...), append([]string(nil), c.ends...)
}

// waitFor waits until cond holds for what the client recorded, failing the
// test after d (or at once when the client has a problem).
func (c *client) waitFor(d time.Duration, what string, cond func(evs []wireEvent, ctl []message) bool) {
	c.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		evs, ctl, problems, joined, ends := c.snapshot()
		if len(problems) > 0 {
			c.t.Fatalf("client %s (%s) while waiting for %s: %v", c.name, c.kind, what, problems)
		}
		if cond(evs, ctl) {
			return
		}
		select {
		case <-c.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			c.t.Fatalf("client %s (%s, nodes %v, ended %v): no %s within %s; it has %d events, last %s",
				c.name, c.kind, joined, ends, what, d, len(evs), lastOf(evs))
		}
	}
}

func lastOf(evs []wireEvent) string {
	if len(evs) == 0 {
		return "(none)"
	}
	return fmt.Sprintf("%s %s", evs[len(evs)-1].ID, evs[len(evs)-1].Data)
}

// waitMarker waits for the event whose data has "marker": marker.
func (c *client) waitMarker(d time.Duration, marker string) {
	c.t.Helper()
	c.waitFor(d, "event with marker "+marker, func(evs []wireEvent, _ []message) bool {
		for i := len(evs) - 1; i >= 0; i-- {
			if evs[i].marker() == marker {
				return true
			}
		}
		return false
	})
}

// waitControl waits for a control message of type typ.
func (c *client) waitControl(d time.Duration, typ string) message {
	c.t.Helper()
	var found message
	c.waitFor(d, "control message "+typ, func(_ []wireEvent, ctl []message) bool {
		for _, m := range ctl {
			if m.ctlType == typ {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// between returns the events strictly after the one with marker from and
// before the one with marker to; both must have been received, once.
func (c *client) between(from, to string) []wireEvent {
	c.t.Helper()
	evs, _, _, _, _ := c.snapshot()
	start, end := -1, -1
	for i, e := range evs {
		switch e.marker() {
		case from:
			if start >= 0 {
				c.t.Fatalf("client %s received marker %s twice", c.name, from)
			}
			start = i
		case to:
			if end >= 0 {
				c.t.Fatalf("client %s received marker %s twice", c.name, to)
			}
			end = i
		}
	}
	if start < 0 || end < 0 || end < start {
		c.t.Fatalf("client %s: markers %s at %d and %s at %d", c.name, from, start, to, end)
	}
	return evs[start+1 : end]
}

// ids returns the ids of evs.
func ids(evs []wireEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

// checkSequence fails unless got holds exactly the ids want, in order,
// and every event matches what was published (type, user, job, data).
func checkSequence(t *testing.T, who string, got []wireEvent, want []string, published map[string]acked) {
	t.Helper()
	if len(got) == len(want) {
		same := true
		for i := range got {
			same = same && got[i].ID == want[i]
		}
		if same {
			for _, e := range got {
				checkEvent(t, who, e, published)
			}
			return
		}
	}
	t.Fatalf("%s received %d events, want %d\n%s", who, len(got), len(want), diffIDs(ids(got), want))
}

// checkEvent compares a received event with the one published under its id.
func checkEvent(t *testing.T, who string, e wireEvent, published map[string]acked) {
	t.Helper()
	p, ok := published[e.ID]
	if !ok {
		t.Fatalf("%s received event %s that was never acknowledged: %+v", who, e.ID, e)
	}
	wantData, _ := json.Marshal(p.Data)
	var a, b any
	_ = json.Unmarshal(wantData, &a)
	_ = json.Unmarshal(e.Data, &b)
	if e.Type != p.Type || e.UserID != p.UserID || e.JobID != p.JobID || fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("%s: event %s = {%s %s user %q job %q}, published {%s %s user %q job %q}",
			who, e.ID, e.Type, e.Data, e.UserID, e.JobID, p.Type, wantData, p.UserID, p.JobID)
	}
	ts, err := time.Parse(time.RFC3339Nano, e.Timestamp)
	if err != nil || !strings.HasSuffix(e.Timestamp, "Z") {
		t.Fatalf("%s: event %s timestamp %q is not RFC 3339 UTC", who, e.ID, e.Timestamp)
	}
	if id := parseID(t, e.ID); uint64(ts.UnixMilli()) != id.ms {
		t.Fatalf("%s: event %s timestamp %s is not its acceptance time", who, e.ID, e.Timestamp)
	}
}

// diffIDs describes how got differs from want: missing, duplicated and
// unexpected ids, and the first position where they part.
func diffIDs(got, want []string) string {
	wantSet := map[string]bool{}
	for _, id := range want {
		wantSet[id] = true
	}
	seen := map[string]int{}
	var dups, extra []string
	for _, id := range got {
		seen[id]++
		if seen[id] == 2 {
			dups = append(dups, id)
		}
		if !wantSet[id] && seen[id] == 1 {
			extra = append(extra, id)
		}
	}
	var missing []string
	for _, id := range want {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	first := -1
	for i := 0; i < len(got) && i < len(want); i++ {
		if got[i] != want[i] {
			first = i
			break
		}
	}
	return fmt.Sprintf("missing %d %s\nduplicated %d %s\nunexpected %d %s\nfirst difference at index %d",
		len(missing), head(missing), len(dups), head(dups), len(extra), head(extra), first)
}

func head(ids []string) string {
	if len(ids) > 10 {
		return fmt.Sprint(ids[:10]) + "..."
	}
	return fmt.Sprint(ids)
}
