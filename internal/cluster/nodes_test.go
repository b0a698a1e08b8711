package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/proctest"
	"github.com/knowledgehub/realtime/internal/redistest"
	"github.com/knowledgehub/realtime/internal/syncbuf"
)

const (
	// jwtSecret and publishKey are shared by every node of a cluster, as
	// docs/deploy.md requires.
	jwtSecret  = "cluster-test-secret-0123456789abcdef0123456789"
	publishKey = "pk-cluster-test"
)

// node is one `knowledgehub serve` process.
type node struct {
	name  string
	addr  string   // 127.0.0.1:port
	url   string   // http://addr
	ws    string   // ws://addr/ws/notifications
	store []string // the store flags
	args  []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	killed  bool // ended by the test on purpose (SIGKILL)
	output  *syncbuf.Buffer
	outputs []*syncbuf.Buffer // of every process this node ran
}

// cluster is a Redis and the nodes sharing it.
type cluster struct {
	t     *testing.T
	redis *redistest.Server
	nodes []*node
}

// newCluster starts a redis-server (AOF, appendfsync always) and n nodes on
// it, named A, B, C, ..., each started with the common flags plus extra,
// and waits until every node is ready. One cleanup stops all nodes at once
// (SIGTERM), before Redis stops, and fails the test when a node's output
// shows a data race or a panic.
func newCluster(t *testing.T, n int, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, redis: redistest.StartServer(t)}
	t.Cleanup(c.stopNodes)
	for i := range n {
		nd := &node{name: string(rune('A' + i)), store: []string{"--store", "redis", "--redis-url", c.redis.URL()}}
		nd.configure(t, extra)
		nd.launch(t)
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		c.waitUp(nd, extra)
	}
	for _, nd := range c.nodes {
		c.waitReady(nd, 15*time.Second)
	}
	return c
}

// configure picks a free port and sets the node's command line.
func (nd *node) configure(t *testing.T, extra []string) {
	addr := freeAddr(t)
	nd.addr, nd.url, nd.ws = addr, "http://"+addr, "ws://"+addr+"/ws/notifications"
	nd.args = append([]string{"serve",
		"--addr", addr,
		"--jwt-secret", jwtSecret,
		"--publish-keys", publishKey,
		"--data-dir", t.TempDir(),
		"--shutdown-timeout", "3s",
		"--log-level", "warn",
	}, append(slices.Clone(nd.store), extra...)...)
}

// waitUp waits until nd answers /healthz; a node that could not bind its
// port (taken between the probe and the bind) is started on another.
func (c *cluster) waitUp(nd *node, extra []string) {
	t := c.t
	t.Helper()
	for attempt := 1; ; attempt++ {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) && nd.running() {
			if code, _ := status(nd, "/healthz"); code == http.StatusOK {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		out := nd.output.String()
		nd.kill()
		if !strings.Contains(out, "address already in use") || attempt == 5 {
			t.Fatalf("node %s did not start (attempt %d):\n%s", nd.name, attempt, out)
		}
		nd.configure(t, extra)
		nd.launch(t)
	}
}

// launch starts the node's process.
func (nd *node) launch(t *testing.T) {
	t.Helper()
	cmd := exec.Command(binary, nd.args...)
	cmd.Env = proctest.Env()
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node %s: %v", nd.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	nd.mu.Lock()
	nd.cmd, nd.done, nd.output, nd.killed = cmd, done, out, false
	nd.outputs = append(nd.outputs, out)
	nd.mu.Unlock()
}

// stopNodes sends SIGTERM to every running node, waits for them, and
// checks their output.
func (c *cluster) stopNodes() {
	t := c.t
	for _, nd := range c.nodes {
		if nd.running() {
			_ = nd.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, nd := range c.nodes {
		select {
		case <-nd.done:
		case <-time.After(10 * time.Second):
			_ = nd.cmd.Process.Kill()
			<-nd.done
			t.Errorf("node %s ignored SIGTERM for 10s", nd.name)
		}
		for _, out := range nd.outputs {
			text := out.String()
			if strings.Contains(text, "WARNING: DATA RACE") || strings.Contains(text, "panic:") {
				t.Errorf("node %s reported a data race or a panic:\n%s", nd.name, text)
			} else if t.Failed() && text != "" {
				t.Logf("node %s (%s) output:\n%s", nd.name, nd.addr, tail(text, 40))
			}
		}
	}
}

func (nd *node) running() bool {
	nd.mu.Lock()
	done := nd.done
	nd.mu.Unlock()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// kill ends the node abruptly (SIGKILL), as a crash would, and waits for it.
func (nd *node) kill() {
	nd.mu.Lock()
	cmd, done := nd.cmd, nd.done
	nd.killed = true
	nd.mu.Unlock()
	_ = cmd.Process.Kill()
	<-done
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// httpClient is for short requests (publish, history, readyz): nothing the
// tests send may hang for longer than its timeout.
var httpClient = &http.Client{Timeout: 20 * time.Second}

// status GETs path on nd and returns the status code (0 when the request
// failed) and how long it took.
func status(nd *node, path string) (int, time.Duration) {
	start := time.Now()
	resp, err := httpClient.Get(nd.url + path)
	if err != nil {
		return 0, time.Since(start)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start)
}

// waitReady waits until nd's /readyz answers 200.
func (c *cluster) waitReady(nd *node, d time.Duration) {
	c.t.Helper()
	eventually(c.t, d, "node "+nd.name+" /readyz 200", func() bool {
		code, _ := status(nd, "/readyz")
		return code == http.StatusOK
	})
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// token mints an HS256 token for user, valid for an hour.
func token(t testing.TB, user string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ---- events ----

// spec is an event as published.
type spec struct {
	Type   string         `json:"type"`
	Data   map[string]any `json:"data"`
	UserID string         `json:"user_id,omitempty"`
	JobID  string         `json:"job_id,omitempty"`
}

// acked is an event the publish API acknowledged with 201.
type acked struct {
	spec
	ID string
}

// wireEvent is an event as a client receives it.
type wireEvent struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
	UserID    string          `json:"user_id"`
	JobID     string          `json:"job_id"`
	Timestamp string          `json:"timestamp"`
}

// seq returns the "seq" field of the event's data (-1 when absent).
func (e wireEvent) seq() int {
	var d struct {
		Seq *int `json:"seq"`
	}
	if json.Unmarshal(e.Data, &d) != nil || d.Seq == nil {
		return -1
	}
	return *d.Seq
}

// marker returns the "marker" field of the event's data.
func (e wireEvent) marker() string {
	var d struct {
		Marker string `json:"marker"`
	}
	_ = json.Unmarshal(e.Data, &d)
	return d.Marker
}

// eventID is a parsed "<ms>-<seq>" id, for order checks.
type eventID struct{ ms, seq uint64 }

func parseID(t testing.TB, s string) eventID {
	t.Helper()
	a, b, ok := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("event id %q is not <ms>-<seq>", s)
	}
	return eventID{ms, seq}
}

func (a eventID) less(b eventID) bool { return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq }

// view is what a connection subscribed to: SPEC §1 "who receives an event".
type view struct {
	user  string
	jobs  []string
	types []string
}

func (v view) sees(e spec) bool {
	if e.UserID != "" && e.UserID != v.user {
		return false
	}
	if e.JobID != "" && !contains(v.jobs, e.JobID) {
		return false
	}
	return len(v.types) == 0 || contains(v.types, e.Type)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// expected returns the ids of the events of all that v sees, in order.
func expected(all []acked, v view) []string {
	var out []string
	for _, e := range all {
		if v.sees(e.spec) {
			out = append(out, e.ID)
		}
	}
	return out
}

// ---- publishing ----

// pubResult is the outcome of one publish request.
type pubResult struct {
	status int
	ids    []string
	took   time.Duration
	err    error  // transport error
	body   string // error answers
	retry  string // Retry-After
	replay bool   // Idempotent-Replayed: true
}

// publish posts events (one: as an object; several: as a batch) to nd.
func publish(nd *node, evs ...spec) pubResult { return publishKeyed(nd, "", evs...) }

// publishKeyed publishes with an Idempotency-Key (none when key is empty).
func publishKeyed(nd *node, key string, evs ...spec) pubResult {
	var body []byte
	if len(evs) == 1 {
		body, _ = json.Marshal(evs[0])
	} else {
		body, _ = json.Marshal(evs)
	}
	req, _ := http.NewRequest(http.MethodPost, nd.url+"/api/realtime/events", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+publishKey)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	start := time.Now()
	resp, err := httpClient.Do(req)
	r := pubResult{took: time.Since(start), err: err}
	if err != nil {
		return r
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r.took = time.Since(start)
	r.status = resp.StatusCode
	r.retry = resp.Header.Get("Retry-After")
	r.replay = resp.Header.Get("Idempotent-Replayed") == "true"
	if resp.StatusCode != http.StatusCreated {
		r.body = string(raw)
		return r
	}
	var out struct {
		ID  string   `json:"id"`
		IDs []string `json:"ids"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		r.err = fmt.Errorf("201 answer %q: %v", raw, err)
		return r
	}
	if out.ID != "" {
		r.ids = []string{out.ID}
	} else {
		r.ids = out.IDs
	}
	if len(r.ids) != len(evs) {
		r.err = fmt.Errorf("201 answer %q: %d ids for %d events", raw, len(r.ids), len(evs))
	}
	return r
}

// mustPublish publishes and fails the test unless the answer is 201.
func mustPublish(t *testing.T, nd *node, evs ...spec) []acked {
	t.Helper()
	r := publish(nd, evs...)
	if r.err != nil || r.status != http.StatusCreated {
		t.Fatalf("publish to node %s: status %d, err %v, body %s", nd.name, r.status, r.err, r.body)
	}
	out := make([]acked, len(evs))
	for i, e := range evs {
		out[i] = acked{spec: e, ID: r.ids[i]}
	}
	return out
}

// history GETs the history API of nd with query and returns the events.
func history(t *testing.T, nd *node, query string) []wireEvent {
	t.Helper()
	resp, err := httpClient.Get(nd.url + "/api/realtime/events?" + query)
	if err != nil {
		t.Fatalf("history on node %s: %v", nd.name, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("history on node %s (%s): %d %s", nd.name, query, resp.StatusCode, raw)
	}
	var out []wireEvent
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("history on node %s: %v: %s", nd.name, err, raw)
	}
	return out
}

// ctxSleep waits d or until ctx ends.
func ctxSleep(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}
