package cluster_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// markerEvent is a public event every view of these tests sees (their type
// filters all include DECISION_MADE): the tests publish one before and one
// after the events under test and compare what lies between.
func markerEvent(name string) spec {
	return spec{Type: "DECISION_MADE", Data: map[string]any{"marker": name}}
}

// sync publishes a marker on nd and waits until every client received it:
// from then on each client is attached on its node and receives every
// event published later.
func syncClients(t *testing.T, nd *node, name string, clients ...*client) []acked {
	t.Helper()
	a := mustPublish(t, nd, markerEvent(name))
	for _, c := range clients {
		c.waitMarker(15*time.Second, name)
	}
	return a
}

// index maps ids to the acknowledged events.
func index(all ...[]acked) map[string]acked {
	m := map[string]acked{}
	for _, list := range all {
		for _, e := range list {
			m[e.ID] = e
		}
	}
	return m
}

// mixedEvents is one round of events with every combination of
// visibility, job and type the delivery rules distinguish.
func mixedEvents(round int) []spec {
	base := []spec{
		{Type: "CODE_CHANGE"},
		{Type: "MEMORY_CREATED", UserID: "alice"},
		{Type: "ERROR_OCCURRED", UserID: "bob"},
		{Type: "PATTERN_DETECTED", JobID: "job-1"},
		{Type: "CODE_CHANGE", JobID: "job-2"},
		{Type: "DECISION_MADE", UserID: "alice", JobID: "job-1"},
		{Type: "ERROR_OCCURRED", UserID: "bob", JobID: "job-2"},
		{Type: "DECISION_MADE", UserID: "carol"}, // nobody connected is carol
		{Type: "MEMORY_CREATED", JobID: "job-3"}, // nobody subscribed to job-3
		{Type: "ERROR_OCCURRED"},
	}
	for i := range base {
		base[i].Data = map[string]any{"round": round, "seq": round*100 + i, "file": "api/app.py"}
	}
	return base
}

// TestCrossNodeDelivery publishes on node A and checks that WebSocket and
// SSE clients on B and C (and A) receive every event they may see, in
// order, with the ids A acknowledged, and nothing else: private events only
// reach their user and job events only the job's subscribers, on every
// node, including a job subscribed after the connection opened.
func TestCrossNodeDelivery(t *testing.T) {
	c := newCluster(t, 3)
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]

	var clients []*client
	for _, nd := range []*node{b, cc} {
		p := nd.name + "/"
		clients = append(clients,
			connect(t, p+"ws-anon", "ws", view{}, nd),
			connect(t, p+"ws-alice", "ws", view{user: "alice"}, nd),
			connect(t, p+"ws-bob-job1", "ws", view{user: "bob", jobs: []string{"job-1"}}, nd),
			connect(t, p+"ws-types", "ws", view{types: []string{"DECISION_MADE", "ERROR_OCCURRED"}}, nd),
			connect(t, p+"sse-anon", "sse", view{}, nd),
			connect(t, p+"sse-alice-job1", "sse", view{user: "alice", jobs: []string{"job-1"}}, nd),
			connect(t, p+"sse-bob", "sse", view{user: "bob"}, nd),
			connect(t, p+"sse-job2-types", "sse", view{jobs: []string{"job-2"}, types: []string{"CODE_CHANGE", "DECISION_MADE"}}, nd),
		)
		// A job subscribed by message after the welcome.
		dyn := connect(t, p+"ws-dyn-job2", "ws", view{user: "bob"}, nd)
		dyn.send(map[string]string{"type": "subscribe", "job_id": "job-2"})
		if m := dyn.waitControl(5*time.Second, "subscribed"); m.control["job_id"] != "job-2" {
			t.Fatalf("subscribe answered %v", m.control)
		}
		dyn.view.jobs = []string{"job-2"}
		clients = append(clients, dyn)
	}
	// The publishing node's own clients too.
	clients = append(clients,
		connect(t, "A/ws-alice", "ws", view{user: "alice"}, a),
		connect(t, "A/sse-anon", "sse", view{}, a))

	published := syncClients(t, a, "sync", clients...)
	for round := range 3 {
		evs := mixedEvents(round)
		if round == 1 {
			published = append(published, mustPublish(t, a, evs...)...) // one batch
			continue
		}
		for _, e := range evs {
			published = append(published, mustPublish(t, a, e)...)
		}
	}
	published = append(published, mustPublish(t, a, markerEvent("end"))...)
	byID := index(published)
	body := published[1 : len(published)-1]

	for _, cl := range clients {
		cl.waitMarker(15*time.Second, "end")
		got := cl.between("sync", "end")
		want := expected(body, cl.view)
		if len(want) == 0 {
			t.Fatalf("client %s: the test publishes nothing it may see", cl.name)
		}
		checkSequence(t, "client "+cl.name, got, want, byID)
	}
	// Nothing private leaked afterwards either: anything an anonymous
	// client got after "end" would be a leak (nothing was published).
	time.Sleep(200 * time.Millisecond)
	for _, cl := range clients {
		evs, _, _, _, _ := cl.snapshot()
		if last := evs[len(evs)-1]; last.marker() != "end" {
			t.Fatalf("client %s received %+v after the end marker", cl.name, last)
		}
	}
}

// TestConcurrentPublishersAcrossNodes has 8 publishers spread over three
// nodes publish at the same time. The ids must be unique and increase in
// each publisher's order; every client on every node must receive all the
// events exactly once, in increasing id order — the same sequence
// everywhere, which is also the history's.
func TestConcurrentPublishersAcrossNodes(t *testing.T) {
	c := newCluster(t, 3)
	var clients []*client
	for _, nd := range c.nodes {
		clients = append(clients,
			connect(t, nd.name+"/ws-anon", "ws", view{}, nd),
			connect(t, nd.name+"/sse-anon", "sse", view{}, nd),
			connect(t, nd.name+"/ws-alice", "ws", view{user: "alice"}, nd))
	}
	start := syncClients(t, c.nodes[0], "sync", clients...)

	const publishers, requests = 8, 30
	results := make([][]acked, publishers)
	errs := make([]error, publishers)
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for p := range publishers {
		nd := c.nodes[p%len(c.nodes)]
		wg.Go(func() {
			<-begin
			for k := range requests {
				var evs []spec
				n := 1
				if k%6 == 5 {
					n = 3 // some batches
				}
				for j := range n {
					e := spec{Type: "CODE_CHANGE", Data: map[string]any{"seq": p*10000 + k*10 + j, "publisher": p, "node": nd.name}}
					if (k+j)%4 == 0 {
						e.UserID = "alice"
					}
					evs = append(evs, e)
				}
				r := publish(nd, evs...)
				if r.err != nil || r.status != http.StatusCreated {
					errs[p] = fmt.Errorf("publisher %d on node %s, request %d: status %d, err %v, body %s", p, nd.name, k, r.status, r.err, r.body)
					return
				}
				for i, e := range evs {
					results[p] = append(results[p], acked{spec: e, ID: r.ids[i]})
				}
			}
		})
	}
	close(begin)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	// Each publisher's ids increase; all ids are distinct.
	var all []acked
	seen := map[string]bool{}
	for p, list := range results {
		for i, e := range list {
			if seen[e.ID] {
				t.Fatalf("id %s was given to two events", e.ID)
			}
			seen[e.ID] = true
			if i > 0 && !parseID(t, list[i-1].ID).less(parseID(t, e.ID)) {
				t.Fatalf("publisher %d: id %s after %s: ids do not increase in acceptance order", p, e.ID, list[i-1].ID)
			}
		}
		all = append(all, list...)
	}
	slices.SortFunc(all, func(x, y acked) int {
		if parseID(t, x.ID).less(parseID(t, y.ID)) {
			return -1
		}
		return 1
	})
	if !parseID(t, start[0].ID).less(parseID(t, all[0].ID)) {
		t.Fatalf("event %s precedes the sync marker %s", all[0].ID, start[0].ID)
	}
	end := mustPublish(t, c.nodes[1], markerEvent("end"))
	byID := index(start, all, end)

	for _, cl := range clients {
		cl.waitMarker(20*time.Second, "end")
		got := cl.between("sync", "end")
		for i := 1; i < len(got); i++ {
			if !parseID(t, got[i-1].ID).less(parseID(t, got[i].ID)) {
				t.Fatalf("client %s: event %s after %s: not in increasing id order", cl.name, got[i].ID, got[i-1].ID)
			}
		}
		checkSequence(t, "client "+cl.name, got, expected(all, cl.view), byID)
	}

	// The history (acceptance order) agrees, on every node.
	q := url.Values{"after": {start[0].ID}, "limit": {"1000"}, "token": {token(t, "alice")}}
	for _, nd := range c.nodes {
		h := history(t, nd, q.Encode())
		want := append(expected(all, view{user: "alice"}), end[0].ID)
		checkSequence(t, "history on node "+nd.name, h, want, byID)
	}
}

// TestPerUserLimitAcrossNodes runs three nodes with
// --max-connections-per-user 3: a user with two connections on A and one on
// B is refused a fourth on C (429 with Retry-After, WebSocket and SSE);
// other users are not affected; once one connection closes, a new one is
// admitted on another node.
func TestPerUserLimitAcrossNodes(t *testing.T) {
	c := newCluster(t, 3, "--max-connections-per-user", "3")
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	carol := view{user: "carol"}
	a1 := connect(t, "A/ws-carol-1", "ws", carol, a)
	a2 := connect(t, "A/sse-carol-2", "sse", carol, a)
	connect(t, "B/ws-carol-3", "ws", carol, b)

	refused := func(nd *node, kind string) {
		t.Helper()
		cl, err := tryConnect(t, "refused", kind, carol, nd)
		if err == nil {
			cl.close()
			t.Fatalf("carol's 4th connection (%s on node %s) was admitted; want 429", kind, nd.name)
		}
		var he *handshakeError
		if !errors.As(err, &he) || he.status != http.StatusTooManyRequests {
			t.Fatalf("carol's 4th connection (%s on node %s): %v; want 429", kind, nd.name, err)
		}
		if n, err := strconv.Atoi(he.retryAfter); err != nil || n < 1 {
			t.Fatalf("429 on node %s has Retry-After %q; want whole seconds >= 1", nd.name, he.retryAfter)
		}
		// The count refused it, not a connect rate.
		var body struct{ Error, Message string }
		if json.Unmarshal([]byte(he.body), &body) != nil || body.Error != "max_connections_per_user" || body.Message == "" {
			t.Fatalf("429 on node %s: body %q; want error max_connections_per_user with a message", nd.name, he.body)
		}
	}
	refused(cc, "ws")
	refused(cc, "sse")
	refused(a, "ws")
	// Others are not affected.
	connect(t, "C/ws-dave", "ws", view{user: "dave"}, cc)
	connect(t, "C/ws-anon", "ws", view{}, cc)

	// Closing one (WebSocket on A) makes room on C, after a short delay.
	a1.close()
	admitted := func(nd *node, kind, name string) *client {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			cl, err := tryConnect(t, name, kind, carol, nd)
			if err == nil {
				return cl
			}
			var he *handshakeError
			if !errors.As(err, &he) || he.status != http.StatusTooManyRequests {
				t.Fatalf("connect %s on node %s: %v", kind, nd.name, err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("carol still refused on node %s 5s after closing a connection: %v", nd.name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	admitted(cc, "ws", "C/ws-carol-4")
	refused(b, "sse")
	// Closing the SSE stream on A releases its place too.
	a2.close()
	admitted(b, "sse", "B/sse-carol-5")
	refused(cc, "ws")
}

// TestHistorySameOnEveryNode publishes on all nodes and reads the history
// API of each with several tokens and filters: every node answers the
// same events, those the token may see.
func TestHistorySameOnEveryNode(t *testing.T) {
	c := newCluster(t, 3)
	var all []acked
	for round := range 3 {
		nd := c.nodes[round]
		evs := mixedEvents(round)
		all = append(all, mustPublish(t, nd, evs[:4]...)...)
		for _, e := range evs[4:] {
			all = append(all, mustPublish(t, nd, e)...)
		}
	}
	byID := index(all)
	cases := []struct {
		query string
		view  view
		limit int
	}{
		{"", view{}, 0},
		{"token=" + token(t, "alice"), view{user: "alice"}, 0},
		{"token=" + token(t, "bob") + "&job_ids=job-1,job-2", view{user: "bob", jobs: []string{"job-1", "job-2"}}, 0},
		{"event_types=CODE_CHANGE,ERROR_OCCURRED&job_ids=job-2", view{jobs: []string{"job-2"}, types: []string{"CODE_CHANGE", "ERROR_OCCURRED"}}, 0},
		{"after=" + all[5].ID + "&limit=4&token=" + token(t, "alice") + "&job_ids=job-1", view{user: "alice", jobs: []string{"job-1"}}, 4},
	}
	for _, tc := range cases {
		want := expected(all, tc.view)
		if tc.limit > 0 {
			want = expected(all[6:], tc.view)[:tc.limit]
		}
		var first []wireEvent
		for _, nd := range c.nodes {
			got := history(t, nd, tc.query)
			checkSequence(t, fmt.Sprintf("history on node %s (%s)", nd.name, tc.query), got, want, byID)
			if first == nil {
				first = got
				continue
			}
			a, _ := json.Marshal(first)
			b, _ := json.Marshal(got)
			if string(a) != string(b) {
				t.Fatalf("history (%s) differs between nodes:\nA: %s\n%s: %s", tc.query, a, nd.name, b)
			}
		}
	}
}

// TestIdempotentRetryOnAnotherNode retries a publish with the same
// Idempotency-Key on other nodes, as a publisher behind a load balancer
// does after a timeout: every node answers the ids of the first publish,
// and the clients receive the events once.
func TestIdempotentRetryOnAnotherNode(t *testing.T) {
	c := newCluster(t, 3)
	cl := connect(t, "C/ws-alice", "ws", view{user: "alice"}, c.nodes[2])
	start := syncClients(t, c.nodes[0], "sync", cl)
	evs := []spec{
		{Type: "CODE_CHANGE", Data: map[string]any{"seq": 1}},
		{Type: "MEMORY_CREATED", UserID: "alice", Data: map[string]any{"seq": 2}},
	}
	first := publishKeyed(c.nodes[0], "retry-key-1", evs...)
	if first.status != http.StatusCreated || first.replay {
		t.Fatalf("first publish: %d (replayed %v) %v %s", first.status, first.replay, first.err, first.body)
	}
	for _, nd := range c.nodes {
		again := publishKeyed(nd, "retry-key-1", evs...)
		if again.status != http.StatusCreated || !again.replay || !slices.Equal(again.ids, first.ids) {
			t.Fatalf("retry on node %s: %d, replayed %v, ids %v; want 201 replayed with %v (%v %s)",
				nd.name, again.status, again.replay, again.ids, first.ids, again.err, again.body)
		}
	}
	pub := []acked{{spec: evs[0], ID: first.ids[0]}, {spec: evs[1], ID: first.ids[1]}}
	end := mustPublish(t, c.nodes[1], markerEvent("end"))
	cl.waitMarker(15*time.Second, "end")
	checkSequence(t, "client "+cl.name, cl.between("sync", "end"), first.ids, index(start, pub, end))
}
