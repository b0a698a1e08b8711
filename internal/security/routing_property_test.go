package security_test

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// The routing property (SPEC §1 "Who receives an event"): with random
// users, transports, job subscriptions and type filters, every connection
// receives exactly the events the rule lets through, in id order, once.

var (
	propTypes = event.DefaultTypes
	propJobs  = []string{"job-0", "job-1", "job-2", "job-3", "job-4"}
	propUsers = []string{"u0", "u1", "u2", "u3"} // u3 has no connection
)

// jobState is a connection's subscription to one job over time.
type jobState struct {
	fromStart bool      // job_ids, or a subscribe confirmed before publishing
	subSent   time.Time // mid-stream subscribe sent
	subConf   time.Time // its confirmation received
	unsubSent time.Time // unsubscribe sent
	unsubConf time.Time // its confirmation received
}

// propConn is one connection and what it received.
type propConn struct {
	name      string
	transport string // websocket or sse
	user      string // "" anonymous
	types     map[string]bool
	ws        *wsClient
	sse       *sseStream

	mu       sync.Mutex
	jobs     map[string]*jobState
	received []map[string]any
	confirms chan map[string]any // subscribed / unsubscribed (WebSocket)
	problems []string
}

// propEvent is a published event and when its publish ran.
type propEvent struct {
	id, typ, user, job string
	start, done        time.Time
}

func (c *propConn) job(j string) *jobState {
	c.mu.Lock()
	defer c.mu.Unlock()
	js := c.jobs[j]
	if js == nil {
		js = &jobState{}
		c.jobs[j] = js
	}
	return js
}

// allowed reports whether c may receive e, and required whether it must.
func (c *propConn) judge(e propEvent) (allowed, required bool) {
	if e.user != "" && e.user != c.user {
		return false, false
	}
	if c.types != nil && !c.types[e.typ] {
		return false, false
	}
	if e.job == "" {
		return true, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	js := c.jobs[e.job]
	if js == nil {
		return false, false
	}
	subscribed := js.fromStart || !js.subSent.IsZero()
	if !subscribed {
		return false, false
	}
	// Published after an unsubscribe was confirmed, and no subscribe came
	// after that unsubscribe: forbidden. (A re-subscribe makes the events
	// of the window between them allowed, not required: matching is at
	// delivery time.)
	resubscribed := !js.subSent.IsZero() && js.subSent.After(js.unsubSent)
	if !js.unsubConf.IsZero() && !resubscribed && !e.start.Before(js.unsubConf) {
		return false, false
	}
	required = (js.fromStart || !js.subConf.IsZero() && !e.start.Before(js.subConf)) && js.unsubSent.IsZero()
	return true, required
}

func (c *propConn) record(m map[string]any) {
	c.mu.Lock()
	c.received = append(c.received, m)
	c.mu.Unlock()
}

func (c *propConn) receivedIDs() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.received))
	for _, m := range c.received {
		id, _ := m["id"].(string)
		out[id] = true
	}
	return out
}

// collectWS reads a WebSocket's messages: events are recorded, answers to
// subscribe and unsubscribe go to confirms.
func (c *propConn) collectWS() {
	for b := range c.ws.msgs {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			c.fail("message is not JSON: %q", b)
			continue
		}
		typ, _ := m["type"].(string)
		switch {
		case typ == "subscribed" || typ == "unsubscribed":
			c.confirms <- m
		case typ != "" && typ == strings.ToUpper(typ):
			c.record(m)
		default:
			c.fail("unexpected control message %v", m)
		}
	}
}

// collectSSE reads an event stream: every frame after the welcome must be
// an event frame "id: <id>" + "data: <event>" whose id lines match.
func (c *propConn) collectSSE() {
	for f := range c.sse.frames {
		if f.Comment {
			continue
		}
		if f.Event != "" || !f.HasID || len(f.Lines) != 2 {
			c.fail("unexpected frame %q", f.Lines)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(f.Data), &m); err != nil {
			c.fail("frame data is not JSON: %q", f.Data)
			continue
		}
		if m["id"] != f.ID {
			c.fail("frame id %q holds event %v", f.ID, m["id"])
		}
		c.record(m)
	}
}

func (c *propConn) fail(format string, args ...any) {
	c.mu.Lock()
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
	c.mu.Unlock()
}

// awaitConfirm waits for the answer {"type":typ,"job_id":job}.
func (c *propConn) awaitConfirm(typ, job string) (time.Time, error) {
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-c.confirms:
			if m["type"] == typ && m["job_id"] == job {
				return time.Now(), nil
			}
			return time.Time{}, fmt.Errorf("%s: answer %v, want %s %s", c.name, m, typ, job)
		case <-deadline:
			return time.Time{}, fmt.Errorf("%s: no %s for %s", c.name, typ, job)
		}
	}
}

func randomSubset(r *rand.Rand, from []string, p float64) []string {
	var out []string
	for _, s := range from {
		if r.Float64() < p {
			out = append(out, s)
		}
	}
	return out
}

func TestRoutingProperty(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("SECURITY_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	defer func() {
		if t.Failed() {
			t.Logf("seed %d (rerun with SECURITY_SEED=%d)", seed, seed)
		}
	}()
	r := rand.New(rand.NewSource(seed))
	n := start(t)
	hc := newHTTPClient(t)

	// Connections: 3 users x 3 and 4 anonymous, each WebSocket or SSE.
	var conns []*propConn
	owners := []string{"u0", "u0", "u0", "u1", "u1", "u1", "u2", "u2", "u2", "", "", "", ""}
	for i, user := range owners {
		c := &propConn{name: fmt.Sprintf("c%d", i), user: user, jobs: map[string]*jobState{}, confirms: make(chan map[string]any, 16)}
		c.transport = "websocket"
		if r.Intn(2) == 0 {
			c.transport = "sse"
		}
		c.name += "/" + c.transport + "/" + user
		if r.Float64() < 0.5 {
			c.types = map[string]bool{}
			for _, ty := range randomSubset(r, propTypes, 0.5) {
				c.types[ty] = true
			}
			if len(c.types) == 0 {
				c.types[propTypes[r.Intn(len(propTypes))]] = true
			}
		}
		qv := map[string]string{}
		if user != "" {
			qv["token"] = servertest.Token(t, user, time.Hour)
		}
		if c.types != nil {
			var ts []string
			for ty := range c.types {
				ts = append(ts, ty)
			}
			sort.Strings(ts)
			qv["event_types"] = strings.Join(ts, ",")
		}
		if js := randomSubset(r, propJobs, 0.3); len(js) > 0 {
			qv["job_ids"] = strings.Join(js, ",")
			for _, j := range js {
				c.jobs[j] = &jobState{fromStart: true}
			}
		}
		var kv []string
		for k, v := range qv {
			kv = append(kv, k, v)
		}
		query := q(kv...)
		if c.transport == "websocket" {
			ws, _, err := dialWS(t, wsURL(n, query), nil)
			if err != nil {
				t.Fatalf("%s: dial: %v", c.name, err)
			}
			m, err := ws.next(5 * time.Second)
			if err != nil || m["type"] != "connected" {
				t.Fatalf("%s: welcome %v %v", c.name, m, err)
			}
			c.ws = ws
			go c.collectWS()
		} else {
			s, res, err := openSSE(t, hc, n.URL+"/api/realtime/stream?"+query, nil)
			if err != nil || s == nil {
				t.Fatalf("%s: open: %v %s", c.name, err, res.Summary())
			}
			if _, err := s.welcome(5 * time.Second); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			c.sse = s
			go c.collectSSE()
		}
		conns = append(conns, c)
	}
	// The welcome is written before the hub attaches a connection: wait
	// until every connection is attached before publishing.
	if !waitFor(5*time.Second, func() bool { return n.Server.Hub().Count() == len(conns) }) {
		t.Fatalf("hub holds %d clients, want %d", n.Server.Hub().Count(), len(conns))
	}

	// WebSockets subscribe (and sometimes unsubscribe) by message before
	// publishing starts; each answer is awaited.
	for _, c := range conns {
		if c.ws == nil {
			continue
		}
		for _, j := range randomSubset(r, propJobs, 0.3) {
			if err := c.ws.send(map[string]any{"type": "subscribe", "job_id": j}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.awaitConfirm("subscribed", j); err != nil {
				t.Fatal(err)
			}
			c.job(j).fromStart = true
		}
		if r.Float64() < 0.3 {
			j := propJobs[r.Intn(len(propJobs))]
			js := c.job(j)
			js.unsubSent = time.Now()
			if err := c.ws.send(map[string]any{"type": "unsubscribe", "job_id": j}); err != nil {
				t.Fatal(err)
			}
			conf, err := c.awaitConfirm("unsubscribed", j)
			if err != nil {
				t.Fatal(err)
			}
			js.unsubConf = conf
		}
	}

	// Mid-stream changes, decided now (seeded), run during publishing.
	type change struct {
		c     *propConn
		delay time.Duration
		sub   bool
		job   string
	}
	var changes []change
	for _, c := range conns {
		if c.ws == nil || r.Float64() < 0.4 {
			continue
		}
		changes = append(changes, change{c, time.Duration(r.Intn(300)) * time.Millisecond, r.Intn(3) > 0, propJobs[r.Intn(len(propJobs))]})
	}

	// Four publishers, ~300 events, some in batches.
	var evMu sync.Mutex
	var events []propEvent
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for p := 0; p < 4; p++ {
		pr := rand.New(rand.NewSource(r.Int63()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := 0
			for sent < 75 {
				size := 1
				if pr.Intn(5) == 0 {
					size = 2 + pr.Intn(2)
				}
				size = min(size, 75-sent)
				batch := make([]map[string]any, size)
				drafts := make([]propEvent, size)
				for i := range batch {
					ev := map[string]any{"type": propTypes[pr.Intn(len(propTypes))], "data": map[string]any{"n": pr.Int63()}}
					d := propEvent{typ: ev["type"].(string)}
					if pr.Intn(3) == 0 {
						d.user = propUsers[pr.Intn(len(propUsers))]
						ev["user_id"] = d.user
					}
					if pr.Intn(2) == 0 {
						d.job = propJobs[pr.Intn(len(propJobs))]
						ev["job_id"] = d.job
					}
					batch[i], drafts[i] = ev, d
				}
				var body any = batch
				if size == 1 {
					body = batch[0]
				}
				b, _ := json.Marshal(body)
				st := time.Now()
				res, err := tryHTTP(hc, http.MethodPost, n.URL+"/api/realtime/events",
					http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + servertest.PublishKey}}, b)
				done := time.Now()
				if err != nil || res.Status != http.StatusCreated {
					errs <- fmt.Errorf("publish: %v %d %s", err, res.Status, res.Body)
					return
				}
				var out struct {
					ID  string   `json:"id"`
					IDs []string `json:"ids"`
				}
				_ = json.Unmarshal(res.Body, &out)
				if size == 1 {
					out.IDs = []string{out.ID}
				}
				if len(out.IDs) != size {
					errs <- fmt.Errorf("publish answered %s", res.Body)
					return
				}
				evMu.Lock()
				for i := range drafts {
					drafts[i].id, drafts[i].start, drafts[i].done = out.IDs[i], st, done
					events = append(events, drafts[i])
				}
				evMu.Unlock()
				sent += size
				time.Sleep(time.Duration(pr.Intn(3)) * time.Millisecond)
			}
		}()
	}
	for _, ch := range changes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(ch.delay)
			js := ch.c.job(ch.job)
			typ := "unsubscribed"
			ch.c.mu.Lock()
			if ch.sub {
				typ = "subscribed"
				js.subSent = time.Now()
			} else {
				js.unsubSent = time.Now()
			}
			ch.c.mu.Unlock()
			if err := ch.c.ws.send(map[string]any{"type": strings.TrimSuffix(typ, "d"), "job_id": ch.job}); err != nil {
				errs <- err
				return
			}
			conf, err := ch.c.awaitConfirm(typ, ch.job)
			if err != nil {
				errs <- err
				return
			}
			ch.c.mu.Lock()
			if ch.sub {
				js.subConf = conf
			} else {
				js.unsubConf = conf
			}
			ch.c.mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sort.Slice(events, func(i, j int) bool {
		return event.MustParseID(events[i].id).Less(event.MustParseID(events[j].id))
	})
	byID := make(map[string]propEvent, len(events))
	for _, e := range events {
		byID[e.id] = e
	}

	// Wait until every connection holds what it must, then a little more
	// for anything it must not.
	missing := func(c *propConn) []string {
		got := c.receivedIDs()
		var out []string
		for _, e := range events {
			if _, req := c.judge(e); req && !got[e.id] {
				out = append(out, e.id)
			}
		}
		return out
	}
	waitFor(15*time.Second, func() bool {
		for _, c := range conns {
			if len(missing(c)) > 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(300 * time.Millisecond)

	total := 0
	for _, c := range conns {
		c.mu.Lock()
		received := append([]map[string]any(nil), c.received...)
		problems := append([]string(nil), c.problems...)
		c.mu.Unlock()
		total += len(received)
		for _, p := range problems {
			t.Errorf("%s: %s", c.name, p)
		}
		var prev event.ID
		for i, m := range received {
			id, _ := m["id"].(string)
			pid, err := event.ParseID(id)
			if err != nil {
				t.Errorf("%s: event %v has a bad id", c.name, m)
				continue
			}
			if i > 0 && !prev.Less(pid) {
				t.Errorf("%s: event %s after %s: not in id order (or a duplicate)", c.name, id, prev)
			}
			prev = pid
			e, ok := byID[id]
			if !ok {
				t.Errorf("%s: received %v, which was never published", c.name, m)
				continue
			}
			if m["type"] != e.typ || (e.user != "") != (m["user_id"] != nil) || (e.job != "") != (m["job_id"] != nil) {
				t.Errorf("%s: event %v does not match what was published (%+v)", c.name, m, e)
			}
			if allowed, _ := c.judge(e); !allowed {
				t.Errorf("%s: FORBIDDEN event %s (type %s user %q job %q) delivered", c.name, id, e.typ, e.user, e.job)
			}
		}
		if miss := missing(c); len(miss) > 0 {
			t.Errorf("%s: %d required events missing, first %s (%+v)", c.name, len(miss), miss[0], byID[miss[0]])
		}
	}
	t.Logf("seed %d: %d events, %d connections, %d mid-stream changes, %d deliveries", seed, len(events), len(conns), len(changes), total)
}

// TestWelcomeThenPublish checks the moment a connection starts: an event
// published after the client read its welcome must reach it. The welcome
// is written before the hub attaches the connection, so this probes that
// window, over both transports.
func TestWelcomeThenPublish(t *testing.T) {
	n := start(t)
	hc := newHTTPClient(t)
	const rounds = 150
	lost := map[string]int{}
	for i := 0; i < rounds; i++ {
		for _, tr := range []string{"websocket", "sse"} {
			job := fmt.Sprintf("w-%s-%d", tr[:2], i)
			var got func() (string, error)
			var closeFn func()
			if tr == "websocket" {
				c, _, err := dialWS(nil, wsURL(n, q("job_ids", job)), nil)
				if err != nil {
					t.Fatal(err)
				}
				if m, err := c.next(5 * time.Second); err != nil || m["type"] != "connected" {
					t.Fatalf("welcome %v %v", m, err)
				}
				got = func() (string, error) {
					m, err := c.next(2 * time.Second)
					if err != nil {
						return "", err
					}
					id, _ := m["id"].(string)
					return id, nil
				}
				closeFn = func() { _ = c.conn.Close() }
			} else {
				s, res, err := openSSE(nil, hc, n.URL+"/api/realtime/stream?"+q("job_ids", job), nil)
				if err != nil || s == nil {
					t.Fatalf("open %v %s", err, res.Summary())
				}
				if _, err := s.welcome(5 * time.Second); err != nil {
					t.Fatal(err)
				}
				got = func() (string, error) {
					f, err := s.next(2 * time.Second)
					return f.ID, err
				}
				closeFn = s.Close
			}
			id := mustPublish(t, hc, n, map[string]any{"type": "CODE_CHANGE", "data": i, "job_id": job})
			if gotID, err := got(); err != nil || gotID != id {
				lost[tr]++
			}
			closeFn()
		}
	}
	for tr, k := range lost {
		t.Errorf("%s: %d of %d events published right after the welcome were never delivered", tr, k, rounds)
	}
}

// TestSubscribeBeforeWelcome sends subscribe right after the upgrade,
// without waiting for the welcome: the server must answer it (or at least
// not crash), and the job's events must arrive.
func TestSubscribeBeforeWelcome(t *testing.T) {
	n := start(t)
	hc := newHTTPClient(t)
	for i := 0; i < 100; i++ {
		job := fmt.Sprintf("early-%d", i)
		c, _, err := dialWS(nil, n.WSURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.send(map[string]any{"type": "subscribe", "job_id": job}); err != nil {
			t.Fatal(err)
		}
		m, err := c.next(5 * time.Second)
		if err != nil || m["type"] != "connected" {
			t.Fatalf("round %d: first message %v %v", i, m, err)
		}
		m, err = c.next(5 * time.Second)
		if err != nil || m["type"] != "subscribed" || m["job_id"] != job {
			t.Fatalf("round %d: subscribe sent before the welcome answered %v %v", i, m, err)
		}
		id := mustPublish(t, hc, n, map[string]any{"type": "CODE_CHANGE", "data": i, "job_id": job})
		if m, err := c.next(5 * time.Second); err != nil || m["id"] != id {
			t.Fatalf("round %d: event %v %v", i, m, err)
		}
		_ = c.conn.Close()
	}
	if r := doHTTP(t, hc, "GET", n.URL+"/healthz", nil, nil); r.Status != 200 {
		t.Fatalf("healthz %d", r.Status)
	}
}
