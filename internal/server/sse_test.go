package server_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// sseFrame is one parsed Server-Sent Events frame.
type sseFrame struct {
	ID, Event, Data string
	Retry           string
	Comment         bool
}

// sseStream reads a raw text/event-stream with its own goroutine.
type sseStream struct {
	t      *testing.T
	resp   *http.Response
	frames chan sseFrame
}

func openSSE(t *testing.T, n *servertest.Node, query string, header http.Header) (*sseStream, *http.Response) {
	t.Helper()
	u := n.URL + "/api/realtime/stream"
	if query != "" {
		u += "?" + query
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET stream: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		return nil, resp
	}
	s := &sseStream{t: t, resp: resp, frames: make(chan sseFrame, 1024)}
	go func() {
		defer close(s.frames)
		r := bufio.NewReader(resp.Body)
		var f sseFrame
		some := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if some {
					s.frames <- f
				}
				f, some = sseFrame{}, false
			case strings.HasPrefix(line, ":"):
				s.frames <- sseFrame{Comment: true}
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
				default:
					t.Errorf("unexpected SSE field %q", line)
				}
			}
		}
	}()
	return s, resp
}

func (s *sseStream) next(timeout time.Duration) (sseFrame, bool) {
	select {
	case f, ok := <-s.frames:
		return f, ok
	case <-time.After(timeout):
		s.t.Fatal("no SSE frame in time")
		return sseFrame{}, false
	}
}

// nextData skips comments and returns the next frame with data.
func (s *sseStream) nextData() sseFrame {
	s.t.Helper()
	for {
		f, ok := s.next(5 * time.Second)
		if !ok {
			s.t.Fatal("stream ended")
		}
		if !f.Comment && f.Data != "" {
			return f
		}
	}
}

func (s *sseStream) connected() map[string]any {
	s.t.Helper()
	f, _ := s.next(5 * time.Second)
	if f.Retry != "3000" {
		s.t.Fatalf("first frame %+v, want retry: 3000", f)
	}
	f = s.nextData()
	if f.Event != "connected" {
		s.t.Fatalf("frame %+v, want event: connected", f)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(f.Data), &m); err != nil {
		s.t.Fatal(err)
	}
	return m
}

func (s *sseStream) event() map[string]any {
	s.t.Helper()
	f := s.nextData()
	if f.Event != "" || f.ID == "" {
		s.t.Fatalf("frame %+v, want an event without event: and with id:", f)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(f.Data), &m); err != nil {
		s.t.Fatal(err)
	}
	if m["id"] != f.ID {
		s.t.Fatalf("id: %s but event id %v", f.ID, m["id"])
	}
	return m
}

func TestSSEStream(t *testing.T) {
	n := servertest.Start(t)
	s, resp := openSSE(t, n, "", nil)
	for h, want := range map[string]string{
		"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
		"X-Accel-Buffering": "no", "Access-Control-Allow-Origin": "*",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	w := s.connected()
	if w["type"] != "connected" || w["user_id"] != nil || w["authenticated"] != false || w["message"] != "SSE stream established" {
		t.Errorf("welcome %v", w)
	}
	id := n.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": map[string]any{"x": 1}})
	if e := s.event(); e["id"] != id || e["type"] != "DECISION_MADE" {
		t.Errorf("event %v", e)
	}
}

func TestSSEAuthAndFilters(t *testing.T) {
	n := servertest.Start(t)
	alice, _ := openSSE(t, n, "token="+servertest.Token(t, "alice", time.Hour)+"&event_types=MEMORY_CREATED,CODE_CHANGE", nil)
	if w := alice.connected(); w["user_id"] != "alice" || w["authenticated"] != true {
		t.Fatalf("welcome %v", w)
	}
	anon, _ := openSSE(t, n, "job_ids=j1", nil)
	anon.connected()
	n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "for alice", "user_id": "alice"})
	n.MustPublish(t, map[string]any{"type": "ERROR_OCCURRED", "data": "filtered out for alice"})
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "job", "job_id": "j1"})
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "public"})
	if e := alice.event(); e["data"] != "for alice" {
		t.Errorf("alice first %v", e)
	}
	if e := alice.event(); e["data"] != "public" {
		t.Errorf("alice second %v", e)
	}
	if e := anon.event(); e["data"] != "filtered out for alice" {
		t.Errorf("anon first %v", e)
	}
	if e := anon.event(); e["data"] != "job" {
		t.Errorf("anon second %v", e)
	}
	if e := anon.event(); e["data"] != "public" {
		t.Errorf("anon third %v", e)
	}
}

func TestSSEResumeWithHeader(t *testing.T) {
	n := servertest.Start(t)
	a := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1})
	b := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 2})
	c := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 3})
	// Last-Event-ID wins over last_event_id.
	s, _ := openSSE(t, n, "last_event_id="+a, http.Header{"Last-Event-ID": {b}})
	s.connected()
	if e := s.event(); e["id"] != c {
		t.Fatalf("resumed with %v, want %s", e, c)
	}
}

func TestSSEErrors(t *testing.T) {
	n := servertest.Start(t)
	for _, tc := range []struct {
		name, query string
		header      http.Header
		status      int
		code        string
	}{
		{"bad token", "token=abc", nil, 401, "invalid_token"},
		{"expired token", "token=" + expiredToken(t, "alice"), nil, 401, "invalid_token"},
		{"bad type", "event_types=lower", nil, 400, "invalid_parameter"},
		{"bad header id", "", http.Header{"Last-Event-ID": {"nope"}}, 400, "invalid_parameter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, resp := openSSE(t, n, tc.query, tc.header)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			var body map[string]string
			b, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(b, &body); err != nil || body["error"] != tc.code || body["message"] == "" {
				t.Fatalf("body %s, want error %s", b, tc.code)
			}
		})
	}
	// CORS preflight.
	req, _ := http.NewRequest(http.MethodOptions, n.URL+"/api/realtime/stream", nil)
	req.Header.Set("Origin", "http://elsewhere.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "*" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Last-Event-ID") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
}

func TestSSEKeepaliveExpiryAndShutdown(t *testing.T) {
	n := servertest.Start(t, "--sse-keepalive", "1s")
	s, _ := openSSE(t, n, "token="+servertest.Token(t, "alice", 3*time.Second), nil)
	s.connected()
	sawKeepalive, sawExpired := false, false
	for !sawExpired {
		f, ok := s.next(10 * time.Second)
		if !ok {
			break
		}
		if f.Comment {
			sawKeepalive = true
		}
		if f.Event == "token_expired" {
			sawExpired = true
		}
	}
	if !sawKeepalive || !sawExpired {
		t.Fatalf("keepalive %v, token_expired %v", sawKeepalive, sawExpired)
	}
	if _, ok := s.next(5 * time.Second); ok {
		t.Fatal("stream continued after token_expired")
	}

	d, _ := openSSE(t, n, "", nil)
	d.connected()
	go func() { _ = n.Stop() }()
	for {
		f, ok := d.next(10 * time.Second)
		if !ok {
			t.Fatal("stream ended without a retry frame")
		}
		if f.Retry != "" {
			if f.Retry < "1000" || len(f.Retry) != 4 {
				t.Fatalf("shutdown retry %q, want 1000..4999 ms", f.Retry)
			}
			break
		}
	}
	if _, ok := d.next(5 * time.Second); ok {
		t.Fatal("stream continued after the shutdown retry")
	}
}

// TestDraining: once a node drains (the first step of SIGTERM), new
// streams, WebSockets and publishes get 503 with Retry-After and the JSON
// error body, /readyz turns 503, and open connections go on.
func TestDraining(t *testing.T) {
	n := servertest.Start(t)
	open := mustDialWS(t, n, "")
	open.welcome()
	n.Server.Drain()

	_, resp := openSSE(t, n, "", nil)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("SSE while draining: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	var body map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body["error"] != "shutting_down" {
		t.Fatalf("SSE body %v %v", body, err)
	}
	if _, resp, err := dialWS(t, n, "", nil); err == nil || resp == nil || resp.StatusCode != 503 {
		t.Fatalf("WebSocket while draining: %v %v", resp, err)
	}
	if status, out := n.Publish(t, map[string]any{"type": "CODE_CHANGE", "data": 1}); status != 503 {
		t.Fatalf("publish while draining: %d %v", status, out)
	}
	r, err := http.Get(n.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 503 {
		t.Fatalf("/readyz while draining: %d", r.StatusCode)
	}
	open.send(map[string]any{"type": "ping"})
	if m := open.read(5 * time.Second); m["type"] != "pong" {
		t.Fatalf("an open connection stopped working: %v", m)
	}
}
