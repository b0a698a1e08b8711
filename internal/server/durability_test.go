package server_test

// Durability tests: nothing acknowledged is ever lost, and every client that
// resumes with its last id gets exactly what it missed.
//
//   - TestDurabilityProcessCrash: the real binary with the disk store is
//     SIGKILLed six times under 32 concurrent publishers; after every
//     restart the history holds every acknowledged event exactly once, with
//     its content, in increasing id order, and no batch partially.
//   - TestDurabilityHistoryUnderPublishLoad: history pages over 64 KiB read
//     while publishes go on change nothing that is stored or answered.
//   - TestDurabilityResumeUnderLoad: 10 WebSocket and 10 SSE clients drop
//     their connections abruptly and resume, over and over, while 4
//     publishers run; each client's concatenated stream equals the log.
//   - TestDurabilitySlowConsumerRecovers: a consumer that stops reading is
//     disconnected (4208 / end of stream) and gets everything it missed by
//     resuming.
//   - TestDurabilityLargeWritesDefaultQueue: with the default settings, a
//     client reading at full speed gets a large accepted batch, and a
//     resume over many large events, without being closed as slow.
//   - TestDurabilityIdempotencyKey: Idempotency-Key replays (single, batch,
//     concurrent, across a restart of the disk store).
//   - TestDurabilityGap: resuming from a pruned id gives a gap message, then
//     exactly the retained events.
//
// Every helper here is prefixed "dur" so as not to collide with the other
// test files of the package.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/config"
	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/proctest"
	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// ---------------------------------------------------------------------------
// Shared helpers.

// durHTTP and durDialer bound every request and handshake of these tests.
var (
	durHTTP   = &http.Client{Timeout: 15 * time.Second}
	durDialer = &websocket.Dialer{HandshakeTimeout: 5 * time.Second}
)

var durTypes = []string{"CODE_CHANGE", "MEMORY_CREATED", "DECISION_MADE", "ERROR_OCCURRED", "PATTERN_DETECTED"}

// durHistEvent is one event as the history API returns it.
type durHistEvent struct {
	ID     string          `json:"id"`
	Type   string          `json:"type"`
	Data   json.RawMessage `json:"data"`
	UserID *string         `json:"user_id"`
	JobID  *string         `json:"job_id"`
	Time   string          `json:"timestamp"`
}

// durJobs are the jobs the tests publish to; the history is read subscribed
// to all of them (job events are visible only to their subscribers).
const durJobs = "job-0,job-1,job-2,job-3,job-4"

// durHistory reads the whole retained history of the node at base, paging
// with after=<last id>&limit=1000 from 0-0 (subscribed to durJobs), and
// checks that ids strictly increase across the pages.
func durHistory(client *http.Client, base string) ([]durHistEvent, error) {
	return durHistoryPaged(client, base, 1000, "")
}

// durHistoryPaged is durHistory with pages of limit events; when until is
// set, it stops after the page that reaches that id.
func durHistoryPaged(client *http.Client, base string, limit int, until string) ([]durHistEvent, error) {
	var all []durHistEvent
	after := "0-0"
	var prev event.ID
	for page := 0; ; page++ {
		if page > 100000 {
			return all, errors.New("history: too many pages")
		}
		resp, err := client.Get(base + "/api/realtime/events?after=" + url.QueryEscape(after) + "&limit=" + strconv.Itoa(limit) + "&job_ids=" + durJobs)
		if err != nil {
			return all, fmt.Errorf("history after %s: %w", after, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return all, fmt.Errorf("history after %s: read: %w", after, err)
		}
		if resp.StatusCode != http.StatusOK {
			return all, fmt.Errorf("history after %s: status %d: %s", after, resp.StatusCode, body)
		}
		var evs []durHistEvent
		if err := json.Unmarshal(body, &evs); err != nil {
			return all, fmt.Errorf("history after %s: not a JSON array of events: %v", after, err)
		}
		for _, e := range evs {
			id, err := event.ParseID(e.ID)
			if err != nil {
				return all, fmt.Errorf("history: event id %q: %v", e.ID, err)
			}
			if len(all) > 0 && !prev.Less(id) {
				return all, fmt.Errorf("history: ids not strictly increasing: %s after %s (position %d)", e.ID, prev, len(all))
			}
			prev = id
			all = append(all, e)
		}
		if len(evs) < limit {
			return all, nil
		}
		after = evs[len(evs)-1].ID
		if until != "" && !durIDLess(after, until) {
			// Cut at until: it ends a request's range of ids, so no batch
			// is cut in two.
			for len(all) > 0 && durIDLess(until, all[len(all)-1].ID) {
				all = all[:len(all)-1]
			}
			return all, nil
		}
	}
}

// durPublishResult is the answer to one publish request.
type durPublishResult struct {
	Status   int
	IDs      []string // {"id"} or {"ids"}
	Replayed bool     // Idempotent-Replayed: true
	Body     string
}

// durPublish posts body (JSON) with the publish key and, when idem is not
// empty, an Idempotency-Key. err is a transport error (no answer).
func durPublish(client *http.Client, base, key string, body []byte, idem string) (durPublishResult, error) {
	return durPublishTraced(client, base, key, body, idem, nil)
}

// durPublishTraced is durPublish; sends, when not nil, counts the times the
// HTTP client wrote the request (more than one: the client retried it on
// another connection by itself).
func durPublishTraced(client *http.Client, base, key string, body []byte, idem string, sends *int) (durPublishResult, error) {
	req, err := http.NewRequest(http.MethodPost, base+"/api/realtime/events", bytes.NewReader(body))
	if err != nil {
		return durPublishResult{}, err
	}
	if sends != nil {
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { *sends++ },
		}))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := client.Do(req)
	if err != nil {
		return durPublishResult{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return durPublishResult{}, err
	}
	r := durPublishResult{Status: resp.StatusCode, Body: string(raw), Replayed: resp.Header.Get("Idempotent-Replayed") == "true"}
	if resp.StatusCode == http.StatusCreated {
		var out struct {
			ID  *string  `json:"id"`
			IDs []string `json:"ids"`
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			return r, fmt.Errorf("201 with a body that is not JSON: %q", raw)
		}
		if out.ID != nil {
			r.IDs = []string{*out.ID}
		} else {
			r.IDs = out.IDs
		}
	}
	return r, nil
}

func durMustPublish(t *testing.T, base string, body any, idem string) durPublishResult {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	r, err := durPublish(durHTTP, base, servertest.PublishKey, b, idem)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if r.Status != http.StatusCreated {
		t.Fatalf("publish: status %d %s", r.Status, r.Body)
	}
	return r
}

// durIDLess compares two wire ids.
func durIDLess(a, b string) bool {
	return event.MustParseID(a).Less(event.MustParseID(b))
}

// durDiff describes how got differs from want (both id lists).
func durDiff(got, want []string) string {
	if slices.Equal(got, want) {
		return ""
	}
	seen := make(map[string]int, len(got))
	dups := 0
	for _, id := range got {
		seen[id]++
		if seen[id] == 2 {
			dups++
		}
	}
	wantSet := make(map[string]bool, len(want))
	missing := 0
	var firstMissing string
	for _, id := range want {
		wantSet[id] = true
		if seen[id] == 0 {
			if missing == 0 {
				firstMissing = id
			}
			missing++
		}
	}
	extra := 0
	for _, id := range got {
		if !wantSet[id] {
			extra++
		}
	}
	first := -1
	for i := 0; i < min(len(got), len(want)); i++ {
		if got[i] != want[i] {
			first = i
			break
		}
	}
	if first < 0 {
		first = min(len(got), len(want))
	}
	ctx := func(l []string) []string { return l[max(0, first-2):min(len(l), first+3)] }
	return fmt.Sprintf("got %d ids, want %d: %d missing (first %s), %d duplicated, %d unexpected; first difference at %d: got %v, want %v",
		len(got), len(want), missing, firstMissing, dups, extra, first, ctx(got), ctx(want))
}

// durSmallRcvBuf is a net.Dialer whose sockets have a tiny receive buffer,
// so that a client that stops reading is noticed by the server at once
// instead of after megabytes of kernel buffering.
func durSmallRcvBuf() *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
}

// durSSEFrame is one SSE frame.
type durSSEFrame struct {
	ID, Event, Data, Retry string
	Comment                bool
}

// durSSEConn is a raw SSE stream over a TCP connection: the test controls
// the socket (abrupt close, small buffers, not reading).
type durSSEConn struct {
	conn net.Conn
	br   *bufio.Reader
}

// durDialSSE opens /api/realtime/stream?query with extra headers over a raw
// connection. When readHead is true the response head is read and checked
// (status 200); otherwise nothing is read.
func durDialSSE(d *net.Dialer, addr, query string, header map[string]string, readHead bool) (*durSSEConn, int, error) {
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	var b strings.Builder
	path := "/api/realtime/stream"
	if query != "" {
		path += "?" + query
	}
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n", path, addr)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	b.WriteString("\r\n")
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, b.String()); err != nil {
		conn.Close()
		return nil, 0, err
	}
	s := &durSSEConn{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}
	if !readHead {
		return s, 0, nil
	}
	status, err := s.readHead(time.Now().Add(5 * time.Second))
	if err != nil || status != http.StatusOK {
		conn.Close()
		return nil, status, err
	}
	return s, status, nil
}

func (s *durSSEConn) readHead(deadline time.Time) (int, error) {
	_ = s.conn.SetReadDeadline(deadline)
	line, err := s.br.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("sse: status line: %w", err)
	}
	parts := strings.Fields(line)
	if len(parts) < 2 {
		return 0, fmt.Errorf("sse: status line %q", line)
	}
	status, _ := strconv.Atoi(parts[1])
	for {
		h, err := s.br.ReadString('\n')
		if err != nil {
			return status, fmt.Errorf("sse: headers: %w", err)
		}
		if h == "\r\n" || h == "\n" {
			return status, nil
		}
	}
}

// next returns the next frame, or an error (timeout, EOF).
func (s *durSSEConn) next(deadline time.Time) (durSSEFrame, error) {
	_ = s.conn.SetReadDeadline(deadline)
	var f durSSEFrame
	some := false
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			return durSSEFrame{}, err // a partial frame is not a frame
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if some {
				return f, nil
			}
		case strings.HasPrefix(line, ":"):
			f.Comment, some = true, true
		default:
			name, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			some = true
			switch name {
			case "id":
				f.ID = value
			case "event":
				f.Event = value
			case "data":
				f.Data += value
			case "retry":
				f.Retry = value
			}
		}
	}
}

func (s *durSSEConn) close() { _ = s.conn.Close() }

// durEventOf decodes an SSE event frame and checks that its id: field is
// the event's id.
func durEventOf(f durSSEFrame) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal([]byte(f.Data), &m); err != nil {
		return nil, fmt.Errorf("sse frame data is not JSON: %q", f.Data)
	}
	if f.Event == "" && m["id"] != f.ID {
		return nil, fmt.Errorf("sse frame id: %q but event id %v", f.ID, m["id"])
	}
	return m, nil
}

func durIsEvent(m map[string]any) bool {
	typ, _ := m["type"].(string)
	return typ != "" && typ[0] >= 'A' && typ[0] <= 'Z'
}

// ---------------------------------------------------------------------------
// 1. Process crash.

// durSent is one event of a publish attempt.
type durSent struct {
	Type  string
	JobID string
	Data  map[string]any // {"tag": unique, "pad": ...}
}

// durAttempt is one publish request, retried as is (same key, same body)
// when it has an Idempotency-Key and got no answer.
type durAttempt struct {
	pub   int
	idem  string
	batch bool
	evs   []durSent
	body  []byte

	// guarded by durRecorder.mu
	acked     bool
	ids       []string
	replayed  bool
	tries     int
	sends     int // requests the HTTP client wrote, over all tries
	gen       int // server incarnation (0: first process) that acknowledged it
	refused   int // definite error answers (not 201) of an attempt without key
	abandoned bool
}

type durRecorder struct {
	mu       sync.Mutex
	attempts []*durAttempt
	byTag    map[string]struct {
		a *durAttempt
		i int
	}
	problems []string // protocol violations seen by publishers
	replays  int      // keyed retries answered Idempotent-Replayed
}

func (r *durRecorder) add(a *durAttempt) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, a)
	for i, e := range a.evs {
		r.byTag[e.Data["tag"].(string)] = struct {
			a *durAttempt
			i int
		}{a, i}
	}
}

func (r *durRecorder) problem(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.problems) < 50 {
		r.problems = append(r.problems, fmt.Sprintf(format, args...))
	}
}

// durSnapshot is what was acknowledged before a history read began.
type durSnapshot struct {
	acked   map[*durAttempt][]string
	all     []*durAttempt
	lastAck string // greatest acknowledged id
}

func (r *durRecorder) snapshot() durSnapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := durSnapshot{acked: make(map[*durAttempt][]string), all: slices.Clone(r.attempts)}
	for _, a := range r.attempts {
		if a.acked {
			s.acked[a] = a.ids
			if n := len(a.ids); n > 0 && (s.lastAck == "" || durIDLess(s.lastAck, a.ids[n-1])) {
				s.lastAck = a.ids[n-1]
			}
		}
	}
	return s
}

type durCrashStats struct {
	attempts, attemptedEvents, ackedAttempts, ackedEvents, verifiedEvents int
	unackedPresent, unackedAbsent, retained                               int
}

// verify checks hist against what was acknowledged before it was read:
// every acknowledged event present once with its ids and content, every
// event in the history one that was sent, no attempt partially present.
// Violations are counted by kind, with a few examples of each.
func (r *durRecorder) verify(snap durSnapshot, hist []durHistEvent) (durCrashStats, []string) {
	kinds := []string{"acknowledged event lost", "acknowledged id holds other content", "stored more than once",
		"event nobody published", "batch partially stored", "bad event"}
	count := make(map[string]int)
	examples := make(map[string][]string)
	bad := func(kind, format string, args ...any) {
		count[kind]++
		if len(examples[kind]) < 3 {
			examples[kind] = append(examples[kind], fmt.Sprintf(format, args...))
		}
	}
	type where struct {
		i   int
		pos int
		id  string
	}
	found := make(map[*durAttempt][]where)
	seenTag := make(map[string]int)
	r.mu.Lock()
	for pos, e := range hist {
		var data map[string]any
		if err := json.Unmarshal(e.Data, &data); err != nil {
			bad("bad event", "history[%d] %s: data %s is not an object", pos, e.ID, e.Data)
			continue
		}
		tag, _ := data["tag"].(string)
		loc, ok := r.byTag[tag]
		if !ok {
			bad("event nobody published", "history[%d] %s: data %s", pos, e.ID, e.Data)
			continue
		}
		seenTag[tag]++
		if seenTag[tag] > 1 {
			a := loc.a
			bad("stored more than once", "event %s at %s, first copy %s; its request: key %q, batch %v, %d tries, %d requests written by the HTTP client, acknowledged %v (by server process #%d) with ids %v, replayed %v",
				tag, e.ID, found[a][0].id, a.idem, a.batch, a.tries, a.sends, a.acked, a.gen, a.ids, a.replayed)
		}
		want := loc.a.evs[loc.i]
		job := ""
		if e.JobID != nil {
			job = *e.JobID
		}
		if e.Type != want.Type || job != want.JobID || !reflect.DeepEqual(data, want.Data) || e.UserID != nil {
			bad("bad event", "history[%d] %s: content %s/%s/%s, published %s/%s/%v", pos, e.ID, e.Type, job, e.Data, want.Type, want.JobID, want.Data)
		}
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", e.Time); err != nil {
			bad("bad event", "history[%d] %s: timestamp %q is not RFC 3339 with milliseconds, UTC", pos, e.ID, e.Time)
		}
		found[loc.a] = append(found[loc.a], where{loc.i, pos, e.ID})
	}
	r.mu.Unlock()
	byID := make(map[string]string, len(hist))
	for _, e := range hist {
		byID[e.ID] = string(e.Data)
	}

	var st durCrashStats
	st.retained = len(hist)
	for _, a := range snap.all {
		st.attempts++
		st.attemptedEvents += len(a.evs)
		got := found[a]
		ids, acked := snap.acked[a]
		if len(got) != 0 && len(got) < len(a.evs) {
			bad("batch partially stored", "request of publisher %d (key %q, %d events, acknowledged %v): %d of its events in the history",
				a.pub, a.idem, len(a.evs), acked, len(got))
		}
		if acked {
			st.ackedAttempts++
			st.ackedEvents += len(a.evs)
			ok := true
			for k, id := range ids {
				data, present := byID[id]
				switch {
				case !present:
					bad("acknowledged event lost", "id %s (publisher %d, key %q, event %d of %d) is not in the history", id, a.pub, a.idem, k+1, len(a.evs))
					ok = false
				case !strings.Contains(data, `"`+a.evs[k].Data["tag"].(string)+`"`):
					bad("acknowledged id holds other content", "id %s was acknowledged for %v (publisher %d, key %q) but holds %s", id, a.evs[k].Data["tag"], a.pub, a.idem, data)
					ok = false
				}
			}
			if ok {
				st.verifiedEvents += len(ids)
			}
		} else if len(got) > 0 {
			st.unackedPresent += len(got)
		} else {
			st.unackedAbsent += len(a.evs)
		}
	}
	var errs []string
	for _, k := range kinds {
		if count[k] > 0 {
			errs = append(errs, fmt.Sprintf("%s: %d times, e.g.\n\t%s", k, count[k], strings.Join(examples[k], "\n\t")))
		}
	}
	return st, errs
}

func TestDurabilityProcessCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and kills it six times")
	}
	bin, err := proctest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const publishKey = "crash-publish-key"
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	base := "http://" + addr
	args := []string{"serve", "--store", "disk", "--data-dir", dir, "--addr", addr,
		"--jwt-secret", "crash-secret-0123456789abcdef0123", "--publish-keys", publishKey,
		"--history-size", "10000000", "--log-level", "warn"}
	srv := proctest.Serve(t, bin, base, args...)

	rec := &durRecorder{byTag: make(map[string]struct {
		a *durAttempt
		i int
	})}
	run := fmt.Sprintf("run%d", time.Now().UnixNano())
	stopNew := make(chan struct{})  // no new attempts
	hardStop := make(chan struct{}) // give up on pending keyed attempts
	var published, transportErrs atomic.Int64
	var generation atomic.Int64 // incremented on every restart
	// Publishers hold gate (read) around each request; a check holds it
	// (write) so that it reads a quiet log: the read covers everything up to
	// its end, and the snapshot of what was acknowledged is exact.
	var gate sync.RWMutex
	pubClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	defer pubClient.CloseIdleConnections()

	const publishers = 32
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(p), uint64(time.Now().UnixNano())))
			var pending *durAttempt
			seq := 0
			for {
				if pending == nil {
					select {
					case <-stopNew:
						return
					default:
					}
					seq++
					a := &durAttempt{pub: p, batch: rng.IntN(2) == 0}
					n := 1
					if a.batch {
						n = 10
					}
					if rng.IntN(3) == 0 {
						a.idem = fmt.Sprintf("%s-p%d-%d", run, p, seq)
					}
					var bodyEvs []map[string]any
					for i := 0; i < n; i++ {
						e := durSent{Type: durTypes[rng.IntN(len(durTypes))],
							Data: map[string]any{"tag": fmt.Sprintf("p%d-%d-%d", p, seq, i), "pad": strings.Repeat("x", rng.IntN(200))}}
						if rng.IntN(4) == 0 {
							e.JobID = fmt.Sprintf("job-%d", p%5)
						}
						a.evs = append(a.evs, e)
						m := map[string]any{"type": e.Type, "data": e.Data}
						if e.JobID != "" {
							m["job_id"] = e.JobID
						}
						bodyEvs = append(bodyEvs, m)
					}
					if a.batch {
						a.body, _ = json.Marshal(bodyEvs)
					} else {
						a.body, _ = json.Marshal(bodyEvs[0])
					}
					rec.add(a)
					pending = a
				} else {
					select {
					case <-hardStop:
						return
					default:
					}
				}
				a := pending
				sends := 0
				gate.RLock()
				res, err := durPublishTraced(pubClient, base, publishKey, a.body, a.idem, &sends)
				gate.RUnlock()
				rec.mu.Lock()
				a.tries++
				a.sends += sends
				rec.mu.Unlock()
				switch {
				case err != nil:
					transportErrs.Add(1)
					if a.idem == "" {
						rec.mu.Lock()
						a.abandoned = true
						rec.mu.Unlock()
						pending = nil
					}
					time.Sleep(time.Duration(10+rng.IntN(40)) * time.Millisecond)
				case res.Status == http.StatusCreated:
					if len(res.IDs) != len(a.evs) {
						rec.problem("publisher %d: 201 with %d ids for %d events: %s", p, len(res.IDs), len(a.evs), res.Body)
					}
					if !a.batch && strings.Contains(res.Body, `"ids"`) || a.batch && !strings.Contains(res.Body, `"ids"`) {
						rec.problem("publisher %d: batch=%v answered %s", p, a.batch, res.Body)
					}
					rec.mu.Lock()
					a.acked, a.ids, a.replayed = true, res.IDs, res.Replayed
					a.gen = int(generation.Load())
					if res.Replayed {
						rec.replays++
						if a.tries == 1 {
							rec.problems = append(rec.problems, fmt.Sprintf("publisher %d: first try of key %q answered Idempotent-Replayed", p, a.idem))
						}
					}
					rec.mu.Unlock()
					published.Add(int64(len(a.evs)))
					pending = nil
				default:
					if res.Status < 500 {
						rec.problem("publisher %d: status %d %s", p, res.Status, res.Body)
					}
					if a.idem == "" {
						rec.mu.Lock()
						a.refused++
						rec.mu.Unlock()
						pending = nil
					}
					time.Sleep(time.Duration(10+rng.IntN(40)) * time.Millisecond)
				}
			}
		})
	}
	stopped := false
	stopPublishers := func() {
		if stopped {
			return
		}
		stopped = true
		close(stopNew)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			close(hardStop)
			<-done
			t.Errorf("publishers could not finish their keyed retries within 10s")
		}
	}
	defer func() {
		if !stopped {
			close(stopNew)
			close(hardStop)
			wg.Wait()
		}
	}()

	histClient := &http.Client{Timeout: 10 * time.Second}
	// KH_DUR_HISTORY_LIMIT changes the page size of the history reads (a
	// diagnosis knob: pages of 150 events stay under 64 KiB, which avoids
	// the corruption TestDurabilityHistoryUnderPublishLoad shows).
	limit := 1000
	if v, err := strconv.Atoi(os.Getenv("KH_DUR_HISTORY_LIMIT")); err == nil && v > 0 {
		limit = v
	}
	check := func(label string) durCrashStats {
		t.Helper()
		gate.Lock()
		defer gate.Unlock()
		snap := rec.snapshot()
		hist, err := durHistoryPaged(histClient, base, limit, "")
		if err != nil {
			t.Fatalf("%s: %v", label, err)
		}
		st, errs := rec.verify(snap, hist)
		for _, e := range errs {
			t.Errorf("%s: %s", label, e)
		}
		if len(errs) > 0 {
			// Read again: is what the history showed stable (the store
			// holds it) or did it change between two reads?
			again, err := durHistoryPaged(histClient, base, limit, "")
			if err != nil {
				t.Fatalf("%s: second read: %v", label, err)
			}
			byID := make(map[string]durHistEvent, len(again))
			for _, e := range again {
				byID[e.ID] = e
			}
			changed, gone := 0, 0
			for _, e := range hist {
				e2, ok := byID[e.ID]
				switch {
				case !ok:
					gone++
				case string(e2.Data) != string(e.Data) || e2.Type != e.Type || e2.Time != e.Time:
					if changed < 5 {
						t.Logf("%s: %s read as %s/%s/%s, then as %s/%s/%s", label, e.ID, e.Type, e.Time, e.Data, e2.Type, e2.Time, e2.Data)
					}
					changed++
				}
			}
			t.Logf("%s: a second read of the history: %d of %d events read differently, %d gone", label, changed, len(hist), gone)
			t.FailNow()
		}
		return st
	}

	start := time.Now()
	const kills = 6
	for round := 1; round <= kills; round++ {
		time.Sleep(time.Duration(100+rand.IntN(700)) * time.Millisecond)
		before := published.Load()
		srv.Kill(t)
		killedAt := time.Now()
		generation.Add(1)
		srv = proctest.Serve(t, bin, base, args...)
		st := check(fmt.Sprintf("after kill %d", round))
		t.Logf("kill %d: %d events acknowledged so far (%d before the kill); restart and check took %v; history %d events: %d acknowledged verified, %d unacknowledged present, %d unacknowledged absent",
			round, published.Load(), before, time.Since(killedAt).Round(time.Millisecond), st.retained, st.verifiedEvents, st.unackedPresent, st.unackedAbsent)
	}
	time.Sleep(300 * time.Millisecond)
	stopPublishers()
	st := check("final")
	rec.mu.Lock()
	problems := slices.Clone(rec.problems)
	replays := rec.replays
	pendingKeyed := 0
	refused := 0
	for _, a := range rec.attempts {
		if a.idem != "" && !a.acked {
			pendingKeyed++
		}
		refused += a.refused
	}
	rec.mu.Unlock()
	for _, p := range problems {
		t.Errorf("publisher saw: %s", p)
	}
	if pendingKeyed > 0 {
		t.Errorf("%d attempts with an Idempotency-Key never acknowledged after the last restart", pendingKeyed)
	}
	if st.ackedEvents < 1000 {
		t.Errorf("only %d events acknowledged: the load was too light to prove anything", st.ackedEvents)
	}
	t.Logf("%d kills in %v; %d attempts (%d events): %d acknowledged attempts (%d events), all %d verified present once with their content; %d unacknowledged events present, %d absent; %d transport errors, %d refused answers; %d keyed retries answered Idempotent-Replayed; final history %d events",
		kills, time.Since(start).Round(time.Millisecond), st.attempts, st.attemptedEvents, st.ackedAttempts, st.ackedEvents, st.verifiedEvents,
		st.unackedPresent, st.unackedAbsent, transportErrs.Load(), refused, replays, st.retained)

	// A graceful stop after all this still exits 0.
	_ = srv.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-srv.Done:
		if srv.Err != nil {
			t.Errorf("serve after SIGTERM: %v\n%s", srv.Err, srv.Out)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("serve did not exit within 15s of SIGTERM")
	}
}

// TestDurabilityHistoryUnderPublishLoad isolates what the crash test runs
// into: history pages over 64 KiB read while publishes go on. Nothing may
// change what is stored or answered: every publish gets its 201, every
// history answer is a well-formed JSON array, and the history holds every
// acknowledged event exactly once with its own content.
func TestDurabilityHistoryUnderPublishLoad(t *testing.T) {
	// The node runs as its own process: what goes wrong in it must not
	// spill into the other tests of this package (the HTTP engine's buffer
	// pool is process-wide).
	bin, err := proctest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const publishKey = "history-load-publish-key"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	base := "http://" + addr
	proc := proctest.Serve(t, bin, base, "serve", "--store", "memory", "--data-dir", t.TempDir(), "--addr", addr,
		"--jwt-secret", "history-load-secret-0123456789abcdef", "--publish-keys", publishKey,
		"--history-size", "1000000", "--log-level", "warn")
	n := &servertest.Node{URL: base}
	var mu sync.Mutex
	ackedData := make(map[string]string) // id -> tag
	var sent, refused, transport atomic.Int64
	var statuses sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for p := 0; p < 16; p++ {
		wg.Go(func() {
			client := &http.Client{Timeout: 10 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tag := fmt.Sprintf("h%d-%d", p, i)
				body, _ := json.Marshal(map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"tag": tag}})
				sent.Add(1)
				res, err := durPublish(client, n.URL, publishKey, body, "")
				switch {
				case err != nil:
					transport.Add(1)
					statuses.Store("transport: "+err.Error(), true)
				case res.Status != http.StatusCreated || len(res.IDs) != 1:
					refused.Add(1)
					statuses.Store(fmt.Sprintf("%d %.120s", res.Status, res.Body), true)
				default:
					mu.Lock()
					ackedData[res.IDs[0]] = tag
					mu.Unlock()
				}
			}
		})
	}
	// One reader pages through the history, 1000 events a page (about
	// 95 KB), over and over.
	var reads, badReads atomic.Int64
	var firstBad atomic.Value
	wg.Go(func() {
		client := &http.Client{Timeout: 5 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := durHistory(client, n.URL); err != nil {
				badReads.Add(1)
				firstBad.CompareAndSwap(nil, err.Error())
				time.Sleep(10 * time.Millisecond)
			}
			reads.Add(1)
		}
	})
	time.Sleep(2500 * time.Millisecond)
	close(stop)
	wg.Wait()

	hist, err := durHistory(durHTTP, n.URL)
	if err != nil {
		t.Fatalf("history after the load: %v", err)
	}
	seen := make(map[string]int)
	wrong := 0
	var wrongEx []string
	for _, e := range hist {
		var data struct{ Tag string }
		_ = json.Unmarshal(e.Data, &data)
		seen[data.Tag]++
		if want, ok := ackedData[e.ID]; ok && want != data.Tag {
			wrong++
			if len(wrongEx) < 3 {
				wrongEx = append(wrongEx, fmt.Sprintf("%s acknowledged for %s holds %s", e.ID, want, e.Data))
			}
		}
	}
	dups := 0
	for _, k := range seen {
		if k > 1 {
			dups++
		}
	}
	inHist := make(map[string]bool, len(hist))
	for _, e := range hist {
		inHist[e.ID] = true
	}
	lost := 0
	for id := range ackedData {
		if !inHist[id] {
			lost++
		}
	}
	var answers []string
	statuses.Range(func(k, _ any) bool {
		if len(answers) < 5 {
			answers = append(answers, k.(string))
		}
		return true
	})
	t.Logf("%d publishes: %d acknowledged, %d refused, %d without an answer; %d full history reads, %d failed; history %d events",
		sent.Load(), len(ackedData), refused.Load(), transport.Load(), reads.Load(), badReads.Load(), len(hist))
	if refused.Load() > 0 || transport.Load() > 0 {
		t.Errorf("valid publishes were refused or not answered (%d, %d): %v", refused.Load(), transport.Load(), answers)
	}
	if badReads.Load() > 0 {
		t.Errorf("%d of %d history reads failed, first: %v", badReads.Load(), reads.Load(), firstBad.Load())
	}
	if dups > 0 {
		t.Errorf("%d published events are stored more than once (each was sent once)", dups)
	}
	if wrong > 0 {
		t.Errorf("%d acknowledged ids hold another request's event: %v", wrong, wrongEx)
	}
	if lost > 0 {
		t.Errorf("%d acknowledged ids missing from the history", lost)
	}
	if len(ackedData) < 1000 {
		t.Errorf("only %d publishes acknowledged: too light to prove anything", len(ackedData))
	}
	logs := proc.Out.String()
	if k := strings.Count(logs, "panic in handler"); k > 0 {
		first := logs[strings.Index(logs, "panic in handler"):]
		t.Errorf("the server logged %d handler panics, first: %.700s", k, first)
	}
}

// ---------------------------------------------------------------------------
// 2. Resume under load.

// durResumer is one client that keeps dropping its connection and resuming.
type durResumer struct {
	name string
	ws   bool
	node *servertest.Node

	got      []string // every event id received, over all connections
	last     string   // resume id
	sessions int
	resets   int // dials retried after a transport reset (durTransportReset)
	problems []string
}

func (c *durResumer) problem(format string, args ...any) {
	if len(c.problems) < 20 {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	}
}

// take records one received event.
func (c *durResumer) take(m map[string]any) {
	id, _ := m["id"].(string)
	if _, err := event.ParseID(id); err != nil {
		c.problem("event without a valid id: %v", m)
		return
	}
	if c.last != "" && !durIDLess(c.last, id) {
		c.problem("session %d: event %s after %s (out of order or repeated)", c.sessions, id, c.last)
	}
	c.got = append(c.got, id)
	c.last = id
}

// session connects with the resume id, reads until `until` passes, maxEvents
// events arrived or the event `target` arrived, then drops the connection
// without a close handshake. It reports whether target was reached.
func (c *durResumer) session(until time.Time, maxEvents int, target string, first bool) (bool, error) {
	c.sessions++
	if c.ws {
		return c.wsSession(until, maxEvents, target)
	}
	return c.sseSession(until, maxEvents, target, first)
}

func (c *durResumer) wsSession(until time.Time, maxEvents int, target string) (bool, error) {
	u := c.node.WSURL
	if c.last != "" {
		u += "?last_event_id=" + url.QueryEscape(c.last)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	var conn *websocket.Conn
	for attempt := 0; ; attempt++ {
		var resp *http.Response
		var err error
		conn, resp, err = d.Dial(u, nil)
		if err == nil {
			break
		}
		if resp != nil && resp.StatusCode == http.StatusTooManyRequests && attempt < 20 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if resp == nil && durTransportReset(err) && c.resets < 1+c.sessions/100 {
			// A real client retries; see durTransportReset.
			c.resets++
			continue
		}
		return false, fmt.Errorf("dial %s: %v", u, err)
	}
	defer conn.UnderlyingConn().Close() // abrupt: no close frame
	_ = conn.SetReadDeadline(until)
	_, b, err := conn.ReadMessage()
	if err != nil {
		return false, fmt.Errorf("welcome: %v", err)
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil || m["type"] != "connected" {
		return false, fmt.Errorf("first message %s, want connected", b)
	}
	n := 0
	for n < maxEvents {
		_, b, err := conn.ReadMessage()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return false, nil
			}
			return false, fmt.Errorf("read: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return false, fmt.Errorf("message %q is not JSON", b)
		}
		if !durIsEvent(m) {
			c.problem("control message %v while resuming", m)
			continue
		}
		c.take(m)
		n++
		if target != "" && m["id"] == target {
			return true, nil
		}
	}
	return false, nil
}

func (c *durResumer) sseSession(until time.Time, maxEvents int, target string, first bool) (bool, error) {
	query, header := "", map[string]string{}
	if c.last != "" {
		if first {
			query = "last_event_id=" + url.QueryEscape(c.last)
		} else {
			header["Last-Event-ID"] = c.last
		}
	}
	var s *durSSEConn
	for attempt := 0; ; attempt++ {
		var status int
		var err error
		s, status, err = durDialSSE(&net.Dialer{Timeout: 5 * time.Second}, c.node.Addr, query, header, true)
		if err == nil && status == http.StatusOK {
			break
		}
		if status == http.StatusTooManyRequests && attempt < 20 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if status == 0 && err != nil && durTransportReset(err) && c.resets < 1+c.sessions/100 {
			c.resets++
			continue
		}
		return false, fmt.Errorf("open stream: status %d: %v", status, err)
	}
	defer s.close()
	n := 0
	sawConnected := false
	for n < maxEvents {
		f, err := s.next(until)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !sawConnected {
					return false, errors.New("no connected frame before the session ended")
				}
				return false, nil
			}
			return false, fmt.Errorf("read: %v", err)
		}
		if f.Comment || f.Data == "" {
			continue
		}
		m, err := durEventOf(f)
		if err != nil {
			return false, err
		}
		if f.Event != "" {
			if f.Event == "connected" {
				sawConnected = true
			} else {
				c.problem("control frame %q %s while resuming", f.Event, f.Data)
			}
			continue
		}
		if !sawConnected {
			c.problem("event before the connected frame")
		}
		c.take(m)
		n++
		if target != "" && m["id"] == target {
			return true, nil
		}
	}
	return false, nil
}

func TestDurabilityResumeUnderLoad(t *testing.T) {
	n := servertest.Start(t, "--store", "disk", "--history-size", "1000000",
		"--connect-rate-per-ip", "100000", "--max-connections-per-ip", "100000")

	var mu sync.Mutex
	var maxAcked string
	acked := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var pubErrs atomic.Int64
	for p := 0; p < 4; p++ {
		wg.Go(func() {
			client := &http.Client{Timeout: 10 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var body any
				if i%3 == 0 {
					batch := make([]map[string]any, 5)
					for k := range batch {
						batch[k] = map[string]any{"type": durTypes[(i+k)%5], "data": map[string]any{"p": p, "i": i, "k": k}}
					}
					body = batch
				} else {
					body = map[string]any{"type": durTypes[i%5], "data": map[string]any{"p": p, "i": i}}
				}
				b, _ := json.Marshal(body)
				res, err := durPublish(client, n.URL, servertest.PublishKey, b, "")
				if err != nil || res.Status != http.StatusCreated {
					pubErrs.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				for _, id := range res.IDs {
					if maxAcked == "" || durIDLess(maxAcked, id) {
						maxAcked = id
					}
				}
				acked += len(res.IDs)
				mu.Unlock()
				time.Sleep(3 * time.Millisecond)
			}
		})
	}
	stopPublishers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopPublishers()

	// Let the log fill a little, then start every client from the last
	// acknowledged id: all events up to it are committed, so each client
	// must receive exactly the log's events after it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		k := acked
		mu.Unlock()
		if k >= 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d events acknowledged in 10s", k)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	startID := maxAcked
	mu.Unlock()

	const perTransport = 10
	clients := make([]*durResumer, 0, 2*perTransport)
	for i := 0; i < perTransport; i++ {
		clients = append(clients, &durResumer{name: fmt.Sprintf("ws-%d", i), ws: true, node: n, last: startID})
		clients = append(clients, &durResumer{name: fmt.Sprintf("sse-%d", i), node: n, last: startID})
	}
	churnEnd := time.Now().Add(5 * time.Second)
	var cwg sync.WaitGroup
	errs := make([]error, len(clients))
	for i, c := range clients {
		cwg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			first := true
			for time.Now().Before(churnEnd) {
				until := time.Now().Add(time.Duration(50+rng.IntN(350)) * time.Millisecond)
				if _, err := c.session(until, 1+rng.IntN(300), "", first); err != nil {
					errs[i] = fmt.Errorf("%s session %d: %w", c.name, c.sessions, err)
					return
				}
				first = false
			}
		})
	}
	cwg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	stopPublishers()
	mu.Lock()
	target, total := maxAcked, acked
	mu.Unlock()

	hist, err := durHistory(durHTTP, n.URL)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range hist {
		if durIDLess(startID, e.ID) {
			want = append(want, e.ID)
		}
	}
	if len(want) == 0 || want[len(want)-1] != target {
		t.Fatalf("the log's last event is not the last acknowledged %s (history %d events)", target, len(hist))
	}
	// A last connection each, until the last event.
	for i, c := range clients {
		cwg.Go(func() {
			if c.last == target {
				return
			}
			ok, err := c.session(time.Now().Add(15*time.Second), 1<<30, target, false)
			if err == nil && !ok {
				err = fmt.Errorf("did not receive the last event %s within 15s (last %s)", target, c.last)
			}
			if err != nil {
				errs[i] = fmt.Errorf("%s final session: %w", c.name, err)
			}
		})
	}
	cwg.Wait()
	sessions, received := 0, 0
	for i, c := range clients {
		if errs[i] != nil {
			t.Error(errs[i])
			continue
		}
		for _, p := range c.problems {
			t.Errorf("%s: %s", c.name, p)
		}
		if d := durDiff(c.got, want); d != "" {
			t.Errorf("%s (%d connections): %s", c.name, c.sessions, d)
		}
		sessions += c.sessions
		received += len(c.got)
	}
	if len(want) < 500 {
		t.Errorf("only %d events published during the churn: too light to prove anything", len(want))
	}
	t.Logf("%d events acknowledged (%d publish errors), %d after the clients' start; 20 clients made %d connections and received %d events, each exactly the log from its start",
		total, pubErrs.Load(), len(want), sessions, received)
}

// ---------------------------------------------------------------------------
// 3. Slow consumer.

// durPublishBulk publishes about `bytes` bytes of events (4 KB each) in
// batches of 10 and returns their ids in order. A batch (~41 KB) stays
// under a max_queue_bytes of 64 KiB, so that only a consumer that does not
// read overflows its queue.
func durPublishBulk(t *testing.T, n *servertest.Node, bytes int) []string {
	t.Helper()
	pad := strings.Repeat("y", 4000)
	var ids []string
	for i := 0; len(ids)*4100 < bytes; i++ {
		batch := make([]map[string]any, 10)
		for k := range batch {
			batch[k] = map[string]any{"type": durTypes[k%5], "data": map[string]any{"n": i*10 + k, "pad": pad}}
		}
		r := durMustPublish(t, n.URL, batch, "")
		ids = append(ids, r.IDs...)
	}
	return ids
}

// durWaitDetached waits until the node has no client attached.
func durWaitDetached(t *testing.T, n *servertest.Node, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for n.Server.Hub().Count() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the server still holds the connection 15s after the publishes", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// durResumeWS reads events over WebSocket from resume id `last` until the
// event target arrives, the way SPEC §2 tells a client to: after a 42xx
// close it reconnects at once with last_event_id. It fails when three
// connections in a row end before delivering any event (no progress: the
// client could never catch up). It returns the events received and the
// close codes seen.
func durResumeWS(t *testing.T, n *servertest.Node, last, target string) ([]string, []int) {
	t.Helper()
	var got, stuck []string
	var codes []int
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; ; attempt++ {
		c, resp, err := durDialer.Dial(n.WSURL+"?last_event_id="+url.QueryEscape(last), nil)
		if err != nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("resume from %s: dial: %v (status %d)", last, err, status)
		}
		_ = c.SetReadDeadline(deadline)
		if _, b, err := c.ReadMessage(); err != nil || !strings.Contains(string(b), `"connected"`) {
			c.Close()
			t.Fatalf("resume from %s: welcome %s %v", last, b, err)
		}
		progress := 0
		var readErr error
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				readErr = err
				break
			}
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil || !durIsEvent(m) {
				c.Close()
				t.Fatalf("resume from %s: unexpected message %.200s", last, b)
			}
			id := m["id"].(string)
			got = append(got, id)
			last = id
			progress++
			if id == target {
				break
			}
		}
		if readErr == nil {
			// Nothing more: every event exactly once.
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, b, err := c.ReadMessage(); err == nil {
				t.Errorf("extra message after the last event: %.200s", b)
			}
			c.Close()
			return got, codes
		}
		c.Close()
		var ce *websocket.CloseError
		if !errors.As(readErr, &ce) || ce.Code < 4200 || ce.Code > 4299 {
			t.Fatalf("resume from %s: after %d events the connection ended with %v, want the last event %s", last, progress, readErr, target)
		}
		codes = append(codes, ce.Code)
		if progress > 0 {
			stuck = stuck[:0]
			continue
		}
		stuck = append(stuck, fmt.Sprintf("close %d %q", ce.Code, ce.Text))
		if len(stuck) == 3 {
			t.Fatalf("resume from %s (%d events received so far): three connections in a row ended before their first event (%v): "+
				"a client that reconnects at once with last_event_id, as SPEC §2 says for 42xx, never receives the events it missed",
				last, len(got), stuck)
		}
	}
}

// durResumeSSE is durResumeWS for SSE: it reconnects with Last-Event-ID
// when the stream ends, and fails after three streams in a row ended
// before their first event.
func durResumeSSE(t *testing.T, n *servertest.Node, last, target string) []string {
	t.Helper()
	var got []string
	stuck := 0
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, status, err := durDialSSE(&net.Dialer{}, n.Addr, "", map[string]string{"Last-Event-ID": last}, true)
		if err != nil || status != 200 {
			t.Fatalf("resume from %s: %d %v", last, status, err)
		}
		progress := 0
		var endErr error
		for {
			f, err := s.next(deadline)
			if err != nil {
				endErr = err
				break
			}
			if f.Comment || f.Data == "" || f.Event == "connected" {
				continue
			}
			m, err := durEventOf(f)
			if err != nil || f.Event != "" {
				s.close()
				t.Fatalf("resume from %s: unexpected frame %+v %v", last, f, err)
			}
			id := m["id"].(string)
			got = append(got, id)
			last = id
			progress++
			if id == target {
				break
			}
		}
		if endErr == nil {
			if f, err := s.next(time.Now().Add(300 * time.Millisecond)); err == nil && !f.Comment {
				t.Errorf("extra frame after the last event: %+v", f)
			}
			s.close()
			return got
		}
		s.close()
		if !errors.Is(endErr, io.EOF) {
			t.Fatalf("resume from %s: after %d events: %v, want the last event %s", last, progress, endErr, target)
		}
		if progress > 0 {
			stuck = 0
			continue
		}
		stuck++
		if stuck == 3 {
			t.Fatalf("resume from %s (%d events received so far): three streams in a row ended before their first event: "+
				"a browser reconnecting with Last-Event-ID never receives the events it missed", last, len(got))
		}
	}
}

func TestDurabilitySlowConsumerRecovers(t *testing.T) {
	t.Run("websocket", func(t *testing.T) {
		n := servertest.Start(t, "--max-queue-bytes", "65536")
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: durSmallRcvBuf().DialContext}
		conn, _, err := d.Dial(n.WSURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, b, err := conn.ReadMessage(); err != nil || !strings.Contains(string(b), `"connected"`) {
			t.Fatalf("welcome: %s %v", b, err)
		}
		// Stop reading while ~5 MB are published.
		ids := durPublishBulk(t, n, 5<<20)
		durWaitDetached(t, n, "slow WebSocket consumer")
		// Read what was queued before the disconnect, up to the close frame.
		var got []string
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var closeErr error
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				closeErr = err
				break
			}
			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil || !durIsEvent(m) {
				t.Fatalf("unexpected message %.200s", b)
			}
			got = append(got, m["id"].(string))
		}
		var ce *websocket.CloseError
		if !errors.As(closeErr, &ce) || ce.Code != 4208 {
			t.Fatalf("after %d events the connection ended with %v, want close 4208", len(got), closeErr)
		}
		before := len(got)
		if before >= len(ids) {
			t.Fatalf("the slow consumer got all %d events before 4208: the test did not make it slow", before)
		}
		if before == 0 {
			t.Fatalf("no event arrived before the 4208 close")
		}
		last := got[len(got)-1]
		rest, codes := durResumeWS(t, n, last, ids[len(ids)-1])
		got = append(got, rest...)
		if d := durDiff(got, ids); d != "" {
			t.Fatalf("received over all connections: %s", d)
		}
		t.Logf("%d events (~%d MB) published; %d received before close 4208, %d after resuming from %s (%d more 42xx closes on the way); all exactly once",
			len(ids), len(ids)*4100>>20, before, len(rest), last, len(codes))
	})

	t.Run("sse", func(t *testing.T) {
		n := servertest.Start(t, "--max-queue-bytes", "65536")
		s, _, err := durDialSSE(durSmallRcvBuf(), n.Addr, "", nil, false)
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		deadline := time.Now().Add(5 * time.Second)
		for n.Server.Hub().Count() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the stream was never attached")
			}
			time.Sleep(5 * time.Millisecond)
		}
		// Stop reading while ~5 MB are published.
		ids := durPublishBulk(t, n, 5<<20)
		durWaitDetached(t, n, "slow SSE consumer")
		// Read what was queued, up to the end of the stream.
		if status, err := s.readHead(time.Now().Add(10 * time.Second)); err != nil || status != 200 {
			t.Fatalf("head: %d %v", status, err)
		}
		var got []string
		var endErr error
		for {
			f, err := s.next(time.Now().Add(10 * time.Second))
			if err != nil {
				endErr = err
				break
			}
			if f.Comment || f.Data == "" || f.Event == "connected" {
				continue
			}
			m, err := durEventOf(f)
			if err != nil || f.Event != "" {
				t.Fatalf("unexpected frame %+v %v", f, err)
			}
			got = append(got, m["id"].(string))
		}
		if !errors.Is(endErr, io.EOF) {
			t.Fatalf("after %d events the stream did not end but: %v", len(got), endErr)
		}
		before := len(got)
		if before >= len(ids) {
			t.Fatalf("the slow reader got all %d events before the stream ended: the test did not make it slow", before)
		}
		if before == 0 {
			t.Fatalf("no event arrived before the stream ended")
		}
		last := got[len(got)-1]
		rest := durResumeSSE(t, n, last, ids[len(ids)-1])
		got = append(got, rest...)
		if d := durDiff(got, ids); d != "" {
			t.Fatalf("received over all streams: %s", d)
		}
		t.Logf("%d events (~%d MB) published; %d received before the stream ended, %d after resuming with Last-Event-ID %s; all exactly once",
			len(ids), len(ids)*4100>>20, before, len(rest), last)
	})
}

// TestDurabilityLargeWritesDefaultQueue uses the default settings
// (max_queue_bytes 1 MiB, max_body_bytes 4 MiB, max_batch 1000): events of
// 4 KB, which the publish API accepts, must reach a client that reads as
// fast as it can, whether they come as one accepted batch or as the replay
// of a resume. Neither client is slow, so neither may be closed.
func TestDurabilityLargeWritesDefaultQueue(t *testing.T) {
	pad := strings.Repeat("z", 4000)
	batchOf := func(k int) []map[string]any {
		b := make([]map[string]any, k)
		for i := range b {
			b[i] = map[string]any{"type": durTypes[i%5], "data": map[string]any{"n": i, "pad": pad}}
		}
		return b
	}

	t.Run("one batch", func(t *testing.T) {
		n := servertest.Start(t)
		ws, _, err := durDialer.Dial(n.WSURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, b, err := ws.ReadMessage(); err != nil || !strings.Contains(string(b), `"connected"`) {
			t.Fatalf("welcome: %s %v", b, err)
		}
		sse, status, err := durDialSSE(&net.Dialer{}, n.Addr, "", nil, true)
		if err != nil || status != 200 {
			t.Fatalf("sse: %d %v", status, err)
		}
		defer sse.close()
		for n.Server.Hub().Count() < 2 {
			time.Sleep(5 * time.Millisecond)
		}
		// One accepted batch of 300 events of 4 KB (1.2 MB; the body is
		// under max_body_bytes, the batch under max_batch).
		ids := durMustPublish(t, n.URL, batchOf(300), "").IDs
		var wsGot []string
		var wsErr error
		for len(wsGot) < len(ids) {
			_, b, err := ws.ReadMessage()
			if err != nil {
				wsErr = err
				break
			}
			var m map[string]any
			_ = json.Unmarshal(b, &m)
			wsGot = append(wsGot, fmt.Sprint(m["id"]))
		}
		var sseGot []string
		var sseErr error
		for len(sseGot) < len(ids) {
			f, err := sse.next(time.Now().Add(10 * time.Second))
			if err != nil {
				sseErr = err
				break
			}
			if f.Event == "" && f.ID != "" {
				sseGot = append(sseGot, f.ID)
			}
		}
		if wsErr != nil {
			t.Errorf("a WebSocket client reading at full speed: after %d of %d events of one 1.2 MB batch: %v (want every event, no close: the client is not slow)", len(wsGot), len(ids), wsErr)
		} else if d := durDiff(wsGot, ids); d != "" {
			t.Errorf("WebSocket: %s", d)
		}
		if sseErr != nil {
			t.Errorf("an SSE client reading at full speed: after %d of %d events of one 1.2 MB batch: stream ended (%v) (want every event: the client is not slow)", len(sseGot), len(ids), sseErr)
		} else if d := durDiff(sseGot, ids); d != "" {
			t.Errorf("SSE: %s", d)
		}
	})

	t.Run("resume", func(t *testing.T) {
		n := servertest.Start(t)
		from := durMustPublish(t, n.URL, map[string]any{"type": "CODE_CHANGE", "data": "start"}, "").IDs[0]
		// 300 events of 4 KB, each published alone, while the client is away.
		var ids []string
		for i := 0; i < 30; i++ {
			ids = append(ids, durMustPublish(t, n.URL, batchOf(10), "").IDs...)
		}
		t.Run("websocket", func(t *testing.T) {
			got, codes := durResumeWS(t, n, from, ids[len(ids)-1])
			if d := durDiff(got, ids); d != "" {
				t.Errorf("WebSocket resume: %s", d)
			}
			if len(codes) > 0 {
				t.Errorf("a WebSocket client resuming and reading at full speed was closed %v", codes)
			}
		})
		t.Run("sse", func(t *testing.T) {
			got := durResumeSSE(t, n, from, ids[len(ids)-1])
			if d := durDiff(got, ids); d != "" {
				t.Errorf("SSE resume: %s", d)
			}
		})
	})
}

// ---------------------------------------------------------------------------
// 4. Idempotency-Key.

func TestDurabilityIdempotencyKey(t *testing.T) {
	for _, store := range []string{"memory", "disk"} {
		t.Run(store, func(t *testing.T) {
			cfg := servertest.Config(t, "--store", store)
			n := servertest.StartConfig(t, cfg)
			count := func(base, tag string) int {
				hist, err := durHistory(durHTTP, base)
				if err != nil {
					t.Fatal(err)
				}
				k := 0
				for _, e := range hist {
					if strings.Contains(string(e.Data), `"`+tag+`"`) {
						k++
					}
				}
				return k
			}

			// One event, the same key twice.
			single := map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"tag": "single-1"}}
			a := durMustPublish(t, n.URL, single, "key-single")
			b := durMustPublish(t, n.URL, single, "key-single")
			if a.Replayed {
				t.Errorf("first publish with a new key answered Idempotent-Replayed: true")
			}
			if !b.Replayed {
				t.Errorf("second publish with the same key: no Idempotent-Replayed: true header (body %s)", b.Body)
			}
			if len(a.IDs) != 1 || !slices.Equal(a.IDs, b.IDs) || !strings.Contains(b.Body, `"id"`) {
				t.Errorf("same key, ids %v then %v (bodies %s, %s), want the same single id", a.IDs, b.IDs, a.Body, b.Body)
			}
			if k := count(n.URL, "single-1"); k != 1 {
				t.Errorf("history holds %d copies of the keyed event, want 1", k)
			}

			// A batch, the same key twice.
			batch := []map[string]any{
				{"type": "MEMORY_CREATED", "data": map[string]any{"tag": "batch-1"}},
				{"type": "DECISION_MADE", "data": map[string]any{"tag": "batch-1"}, "job_id": "job-1"},
				{"type": "ERROR_OCCURRED", "data": map[string]any{"tag": "batch-1"}},
			}
			c := durMustPublish(t, n.URL, batch, "key-batch")
			d := durMustPublish(t, n.URL, batch, "key-batch")
			if c.Replayed || !d.Replayed {
				t.Errorf("batch: Idempotent-Replayed %v then %v, want false then true", c.Replayed, d.Replayed)
			}
			if len(c.IDs) != 3 || !slices.Equal(c.IDs, d.IDs) || !strings.Contains(d.Body, `"ids"`) {
				t.Errorf("batch with the same key: ids %v then %v (bodies %s, %s)", c.IDs, d.IDs, c.Body, d.Body)
			}
			if k := count(n.URL, "batch-1"); k != 3 {
				t.Errorf("history holds %d events of the keyed batch, want 3", k)
			}

			// Another key: new ids.
			e := durMustPublish(t, n.URL, single, "key-single-2")
			if e.Replayed || len(e.IDs) != 1 || e.IDs[0] == a.IDs[0] || !durIDLess(d.IDs[2], e.IDs[0]) {
				t.Errorf("a different key answered ids %v replayed %v, want a new id after %s", e.IDs, e.Replayed, d.IDs[2])
			}
			f := durMustPublish(t, n.URL, batch, "key-batch-2")
			if f.Replayed || len(f.IDs) != 3 || !durIDLess(e.IDs[0], f.IDs[0]) {
				t.Errorf("a batch with a different key answered ids %v replayed %v, want 3 new ids", f.IDs, f.Replayed)
			}
			if k := count(n.URL, "single-1"); k != 2 {
				t.Errorf("history holds %d copies of the single event after two keys, want 2", k)
			}

			// The same key from 8 publishers at once: one copy, the same ids
			// for everyone, exactly one answer not replayed.
			conc := []map[string]any{
				{"type": "PATTERN_DETECTED", "data": map[string]any{"tag": "conc-1"}},
				{"type": "PATTERN_DETECTED", "data": map[string]any{"tag": "conc-1"}},
			}
			body, _ := json.Marshal(conc)
			results := make([]durPublishResult, 8)
			perrs := make([]error, 8)
			var wg sync.WaitGroup
			for i := range results {
				wg.Go(func() {
					results[i], perrs[i] = durPublish(durHTTP, n.URL, servertest.PublishKey, body, "key-concurrent")
				})
			}
			wg.Wait()
			fresh := 0
			for i, r := range results {
				if perrs[i] != nil || r.Status != 201 {
					t.Fatalf("concurrent publish %d: %v %d %s", i, perrs[i], r.Status, r.Body)
				}
				if !r.Replayed {
					fresh++
				}
				if !slices.Equal(r.IDs, results[0].IDs) {
					t.Errorf("concurrent publishes with one key answered different ids: %v and %v", results[0].IDs, r.IDs)
				}
			}
			if fresh != 1 {
				t.Errorf("%d of 8 concurrent publishes with one key were answered without Idempotent-Replayed, want exactly 1", fresh)
			}
			if k := count(n.URL, "conc-1"); k != 2 {
				t.Errorf("history holds %d events of the concurrently keyed batch, want 2", k)
			}

			if store != "disk" {
				return
			}
			// The disk store remembers keys across a restart.
			if err := n.Stop(); err != nil {
				t.Fatal(err)
			}
			cfg2, err := config.Load([]string{"--addr", "127.0.0.1:0", "--store", "disk", "--data-dir", cfg.DataDir,
				"--jwt-secret", servertest.Secret, "--publish-keys", servertest.PublishKey, "--allowed-origins", "http://allowed.example"}, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			n2 := servertest.StartConfig(t, cfg2)
			g := durMustPublish(t, n2.URL, single, "key-single")
			h := durMustPublish(t, n2.URL, batch, "key-batch")
			if !g.Replayed || !slices.Equal(g.IDs, a.IDs) || !h.Replayed || !slices.Equal(h.IDs, c.IDs) {
				t.Errorf("after a restart the keys answered %v (replayed %v) and %v (replayed %v), want %v and %v replayed",
					g.IDs, g.Replayed, h.IDs, h.Replayed, a.IDs, c.IDs)
			}
			if k := count(n2.URL, "single-1"); k != 2 {
				t.Errorf("after a restart the history holds %d copies of the single event, want 2", k)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 6. Gap.

func TestDurabilityGap(t *testing.T) {
	for _, store := range []string{"memory", "disk"} {
		t.Run(store, func(t *testing.T) {
			n := servertest.Start(t, "--store", store, "--history-size", "50")
			var ids []string
			for i := 0; i < 20; i++ {
				batch := make([]map[string]any, 10)
				for k := range batch {
					batch[k] = map[string]any{"type": durTypes[k%5], "data": i*10 + k}
				}
				ids = append(ids, durMustPublish(t, n.URL, batch, "").IDs...)
			}
			want := ids[150:]
			// Retention may run in the background: wait for it to settle.
			deadline := time.Now().Add(10 * time.Second)
			for {
				hist, err := durHistory(durHTTP, n.URL)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, e := range hist {
					got = append(got, e.ID)
				}
				if slices.Equal(got, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("history with history_size 50 after 200 events: %s", durDiff(got, want))
				}
				time.Sleep(20 * time.Millisecond)
			}
			first := ids[0]

			// WebSocket.
			conn, _, err := durDialer.Dial(n.WSURL+"?last_event_id="+url.QueryEscape(first), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			read := func() map[string]any {
				t.Helper()
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, b, err := conn.ReadMessage()
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				var m map[string]any
				if err := json.Unmarshal(b, &m); err != nil {
					t.Fatalf("not JSON: %s", b)
				}
				return m
			}
			if m := read(); m["type"] != "connected" {
				t.Fatalf("first message %v", m)
			}
			if m := read(); m["type"] != "gap" || m["last_event_id"] != first || m["oldest_available_id"] != want[0] {
				t.Fatalf("WebSocket: message after the welcome %v, want gap with last_event_id %s and oldest_available_id %s", m, first, want[0])
			}
			var got []string
			for len(got) < len(want) {
				m := read()
				if !durIsEvent(m) {
					t.Fatalf("WebSocket: control message %v in the replay", m)
				}
				got = append(got, m["id"].(string))
			}
			_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, b, err := conn.ReadMessage(); err == nil {
				t.Errorf("WebSocket: extra message after the 50 retained events: %s", b)
			}
			if d := durDiff(got, want); d != "" {
				t.Errorf("WebSocket replay after the gap: %s", d)
			}

			// SSE, resuming with Last-Event-ID.
			s, status, err := durDialSSE(&net.Dialer{}, n.Addr, "", map[string]string{"Last-Event-ID": first}, true)
			if err != nil || status != 200 {
				t.Fatalf("sse: %d %v", status, err)
			}
			defer s.close()
			var frames []durSSEFrame
			end := time.Now().Add(5 * time.Second)
			for len(frames) < 2+len(want) {
				f, err := s.next(end)
				if err != nil {
					t.Fatalf("sse: after %d frames: %v", len(frames), err)
				}
				if f.Comment || f.Data == "" {
					continue
				}
				frames = append(frames, f)
			}
			if frames[0].Event != "connected" {
				t.Fatalf("sse: first frame %+v", frames[0])
			}
			var gap map[string]any
			_ = json.Unmarshal([]byte(frames[1].Data), &gap)
			if frames[1].Event != "gap" || gap["type"] != "gap" || gap["last_event_id"] != first || gap["oldest_available_id"] != want[0] {
				t.Fatalf("sse: frame after connected %+v, want event: gap with last_event_id %s, oldest_available_id %s", frames[1], first, want[0])
			}
			got = got[:0]
			for _, f := range frames[2:] {
				m, err := durEventOf(f)
				if err != nil || f.Event != "" {
					t.Fatalf("sse: frame %+v in the replay (%v)", f, err)
				}
				got = append(got, m["id"].(string))
			}
			if f, err := s.next(time.Now().Add(300 * time.Millisecond)); err == nil && !f.Comment {
				t.Errorf("sse: extra frame after the 50 retained events: %+v", f)
			}
			if d := durDiff(got, want); d != "" {
				t.Errorf("SSE replay after the gap: %s", d)
			}

			// Resuming inside the retained history: no gap.
			c2, _, err := durDialer.Dial(n.WSURL+"?last_event_id="+url.QueryEscape(want[9]), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, _ = c2.ReadMessage() // welcome
			_, b, err := c2.ReadMessage()
			if err != nil || !strings.Contains(string(b), `"id":"`+want[10]+`"`) {
				t.Errorf("resume from a retained id: first message %s %v, want event %s and no gap", b, err, want[10])
			}
		})
	}
}

// durTransportReset reports a dial that ended before any answer (EOF,
// reset). Clients here drop and reconnect at once, hundreds of times a
// second; rarely such a fresh connection is ended by the server's event
// loop (suspected: nbio's epoll handling when a file descriptor number of a
// connection just closed from another goroutine is reused at once). A real
// client retries, so a resumer may retry once per hundred sessions; more
// fails the test.
func durTransportReset(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "connection reset")
}
