package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/knowledgehub/realtime/internal/devkeys"
)

func readAll(t *testing.T, r *SSEReader) []SSEEvent {
	t.Helper()
	var out []SSEEvent
	for {
		ev, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		out = append(out, ev)
	}
}

func TestSSEReader(t *testing.T) {
	stream := "\uFEFFretry: 3000\n\n" +
		"event: connected\ndata: {\"type\":\"connected\"}\n\n" +
		": keepalive\n\n" +
		"id: 1-0\ndata: {\"a\":1}\n\n" +
		"data: line1\r\ndata:line2\r\n\r\n" + // CRLF, no space after the colon
		"id: 2-0\rdata: cr\r\r" + // bare CR line endings
		"id: bad\x00id\ndata: keeps 2-0\n\n" + // an id with NUL is ignored
		"retry: soon\n" + // not digits: ignored
		"event: x\n\n" + // no data: not dispatched, and the name is reset
		"data: named reset\n\n" +
		"data: cut off" // incomplete: dropped
	for _, chunked := range []bool{false, true} {
		var r io.Reader = strings.NewReader(stream)
		if chunked {
			r = iotest.OneByteReader(r) // every CR at a buffer end
		}
		rd := NewSSEReader(r, "0-9")
		got := readAll(t, rd)
		want := []SSEEvent{
			{Event: "connected", Data: `{"type":"connected"}`, ID: "0-9"},
			{Event: "message", Data: `{"a":1}`, ID: "1-0"},
			{Event: "message", Data: "line1\nline2", ID: "1-0"},
			{Event: "message", Data: "cr", ID: "2-0"},
			{Event: "message", Data: "keeps 2-0", ID: "2-0"},
			{Event: "message", Data: "named reset", ID: "2-0"},
		}
		if len(got) != len(want) {
			t.Fatalf("chunked=%v: got %d events %q, want %d", chunked, len(got), got, len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("chunked=%v: event %d = %+v, want %+v", chunked, i, got[i], want[i])
			}
		}
		if rd.Retry != 3*time.Second {
			t.Errorf("Retry = %v, want 3s", rd.Retry)
		}
		if rd.LastID() != "2-0" {
			t.Errorf("LastID = %q", rd.LastID())
		}
	}
}

func TestSSEReaderError(t *testing.T) {
	boom := errors.New("boom")
	rd := NewSSEReader(io.MultiReader(strings.NewReader("data: x\n\n"), iotest.ErrReader(boom)), "")
	if ev, err := rd.Next(); err != nil || ev.Data != "x" {
		t.Fatalf("first = %+v, %v", ev, err)
	}
	if _, err := rd.Next(); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}

func TestFormatEvent(t *testing.T) {
	raw := []byte(`{"id":"1-0","type":"ERROR_OCCURRED","data":{"file": "a.go"},"user_id":"alice","job_id":"job-42","timestamp":"2026-12-04T15:20:00.123Z"}`)
	var e WireEvent
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := FormatEvent(&b, raw, &e, true, false); err != nil {
		t.Fatal(err)
	}
	if b.String() != string(raw)+"\n" {
		t.Errorf("raw = %q", b.String())
	}
	b.Reset()
	_ = FormatEvent(&b, raw, &e, false, false)
	line := b.String()
	ts := time.Date(2026, 12, 4, 15, 20, 0, 123e6, time.UTC).Local().Format("15:04:05.000")
	want := ts + " ERROR_OCCURRED   job=job-42 user=alice {\"file\":\"a.go\"}\n"
	if line != want {
		t.Errorf("readable = %q, want %q", line, want)
	}
	b.Reset()
	_ = FormatEvent(&b, raw, &e, false, true)
	if !strings.Contains(b.String(), "\033[31m") || !strings.Contains(b.String(), "ERROR_OCCURRED") {
		t.Errorf("coloured = %q", b.String())
	}
	long := json.RawMessage(`"` + strings.Repeat("é", 500) + `"`)
	if s := compactData(long); len([]rune(s)) != maxDataChars+1 || !strings.HasSuffix(s, "…") {
		t.Errorf("long data not cut: %d runes", len([]rune(s)))
	}
}

func TestCloseCodes(t *testing.T) {
	l := &listener{o: ListenOptions{}}
	cases := []struct {
		code  int
		next  next
		fatal bool
	}{
		{1000, nextBackoff, false},
		{1001, nextSoon, false},
		{1006, nextBackoff, false},
		{1008, nextBackoff, false},
		{1011, nextBackoff, false},
		{4001, 0, true},
		{4002, 0, true},
		{4003, 0, true},
		{4099, 0, true},
		{4100, nextBackoff, false},
		{4150, nextBackoff, false},
		{4208, nextNow, false},
		{4299, nextNow, false},
	}
	for _, c := range cases {
		oc := l.closed(c.code, "why")
		if (oc.fatal != nil) != c.fatal || (!c.fatal && oc.next != c.next) {
			t.Errorf("close %d: next=%v fatal=%v, want next=%v fatal=%v", c.code, oc.next, oc.fatal, c.next, c.fatal)
		}
		var se *StopError
		if c.fatal && (!errors.As(oc.fatal, &se) || se.Code != c.code) {
			t.Errorf("close %d: fatal %v is not a StopError with the code", c.code, oc.fatal)
		}
	}
	l.o.Mint = func() (string, error) { return "t", nil }
	if oc := l.closed(4002, "token expired"); oc.fatal != nil || oc.next != nextNow || !oc.remint {
		t.Errorf("4002 with Mint: %+v", oc)
	}
	if oc := l.closed(4001, "invalid token"); oc.fatal == nil {
		t.Errorf("4001 with Mint must stop")
	}
}

func response(status int, body string, header ...string) *http.Response {
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}
}

func TestRefused(t *testing.T) {
	l := &listener{o: ListenOptions{Notes: io.Discard}}
	if oc := l.refused(response(400, `{"error":"invalid_parameter","message":"event_types: unknown"}`), "x"); oc.fatal == nil || !strings.Contains(oc.fatal.Error(), "event_types: unknown") {
		t.Errorf("400: %+v", oc)
	}
	if oc := l.refused(response(400, `{"error":"invalid_parameter","message":"last_event_id: \"9-0\" was never issued by this hub"}`), "x"); oc.fatal == nil {
		t.Errorf("400 about the resume id without a resume id must stop: %+v", oc)
	}
	l.lastID = "9-0"
	if oc := l.refused(response(400, `{"error":"invalid_parameter","message":"Last-Event-ID: \"9-0\" was never issued by this hub"}`), "x"); oc.fatal != nil || !oc.forgetResume || oc.next != nextNow {
		t.Errorf("unknown resume id: %+v", oc)
	}
	if oc := l.refused(response(429, `{"error":"rate_limited","message":"slow down"}`, "Retry-After", "7"), "x"); oc.next != nextAfter || oc.delay != 7*time.Second {
		t.Errorf("429: %+v", oc)
	}
	if oc := l.refused(response(503, `<html>busy</html>`), "x"); oc.fatal != nil || oc.next != nextBackoff {
		t.Errorf("503: %+v", oc)
	}
	for _, status := range []int{401, 403, 404} {
		oc := l.refused(response(status, `{"error":"e","message":"m"}`), "x")
		var se *StopError
		if !errors.As(oc.fatal, &se) || se.Status != status {
			t.Errorf("%d: %+v", status, oc)
		}
	}
}

func TestBackoff(t *testing.T) {
	l := &listener{o: ListenOptions{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	prevMax := time.Duration(0)
	for i := 0; i < 10; i++ {
		d := l.backoff()
		ceil := min(100*time.Millisecond<<i, time.Second)
		if d < ceil/2 || d > ceil {
			t.Errorf("backoff %d = %v, want in [%v, %v]", i, d, ceil/2, ceil)
		}
		prevMax = max(prevMax, d)
	}
	if prevMax > time.Second {
		t.Errorf("backoff exceeded the maximum: %v", prevMax)
	}
}

func TestWithDefaultsAndBatchError(t *testing.T) {
	b, err := withDefaults([]byte(`{"type":"CODE_CHANGE","data":1}`), Draft{Type: "MEMORY_CREATED", UserID: "alice"})
	if err != nil || string(b) != `{"data":1,"type":"CODE_CHANGE","user_id":"alice"}` {
		t.Errorf("withDefaults = %s, %v", b, err)
	}
	apiErr := &APIError{Status: 400, Code: "invalid_event", Message: `[1].type: unknown event type "X"`}
	if err := batchError("f", []int{3, 5, 9}, apiErr); !strings.HasPrefix(err.Error(), "f line 5: ") {
		t.Errorf("batchError = %v", err)
	}
	if err := batchError("f", []int{3, 5, 9}, errors.New("x")); !strings.HasPrefix(err.Error(), "f lines 3-9: ") {
		t.Errorf("batchError = %v", err)
	}
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{}
	o := IO{Getenv: func(k string) string { return env[k] }}

	if _, err := ResolveSecret("", dir, o); err == nil || !strings.Contains(err.Error(), "--secret") {
		t.Errorf("no secret: %v", err)
	}
	if _, err := ResolvePublishKey("", dir, o); err == nil || !strings.Contains(err.Error(), "--key") {
		t.Errorf("no key: %v", err)
	}
	if s, _ := ResolveServer("", dir, o); s != DefaultServer {
		t.Errorf("default server = %q", s)
	}
	if err := devkeys.Save(dir, devkeys.Keys{JWTSecret: "dev-secret", PublishKey: "dev-key", URL: "http://127.0.0.1:4567"}); err != nil {
		t.Fatal(err)
	}
	check := func(name, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	s, _ := ResolveSecret("", dir, o)
	check("secret from the dev credentials", s, "dev-secret")
	k, _ := ResolvePublishKey("", dir, o)
	check("key from the dev credentials", k, "dev-key")
	u, _ := ResolveServer("", dir, o)
	check("server from the dev credentials", u, "http://127.0.0.1:4567")

	env["KNOWLEDGEHUB_JWT_SECRET"] = " first , second"
	env["KNOWLEDGEHUB_PUBLISH_KEYS"] = "k1,k2"
	env["KNOWLEDGEHUB_URL"] = "https://rt.example.com/base/"
	s, _ = ResolveSecret("", dir, o)
	check("secret from the environment", s, "first")
	k, _ = ResolvePublishKey("", dir, o)
	check("key from KNOWLEDGEHUB_PUBLISH_KEYS", k, "k1")
	u, _ = ResolveServer("", dir, o)
	check("server from the environment", u, "https://rt.example.com/base")
	env["KNOWLEDGEHUB_PUBLISH_KEY"] = "single"
	k, _ = ResolvePublishKey("", dir, o)
	check("key from KNOWLEDGEHUB_PUBLISH_KEY", k, "single")

	s, _ = ResolveSecret("flag", dir, o)
	check("secret flag", s, "flag")
	k, _ = ResolvePublishKey("flag", dir, o)
	check("key flag", k, "flag")
	u, _ = ResolveServer("http://h:1", dir, o)
	check("server flag", u, "http://h:1")
	if _, err := ResolveServer("ftp://x", dir, o); err == nil {
		t.Error("ftp server URL accepted")
	}

	// A malformed credentials file is reported, not ignored.
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, devkeys.FileName), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveSecret("", bad, IO{Getenv: func(string) string { return "" }}); err == nil || !strings.Contains(err.Error(), devkeys.FileName) {
		t.Errorf("malformed credentials: %v", err)
	}

	check("data dir default", dataDir("", IO{Getenv: func(string) string { return "" }}), DefaultDataDir)
	check("data dir env", dataDir("", IO{Getenv: func(k string) string { return map[string]string{"KNOWLEDGEHUB_DATA_DIR": "/d"}[k] }}), "/d")
	check("data dir flag", dataDir("/f", o), "/f")
}

func TestUsageErrors(t *testing.T) {
	env := IO{Stdout: io.Discard, Stderr: io.Discard, Getenv: func(string) string { return "" }}
	cases := []struct {
		run  func([]string) error
		args []string
	}{
		{func(a []string) error { return RunToken(t.Context(), a, env) }, []string{"--nope"}},
		{func(a []string) error { return RunToken(t.Context(), a, env) }, []string{}},
		{func(a []string) error { return RunToken(t.Context(), a, env) }, []string{"--user", "a", "extra"}},
		{func(a []string) error { return RunPublish(t.Context(), a, env) }, []string{}},
		{func(a []string) error { return RunPublish(t.Context(), a, env) }, []string{"--type", "X", "--data", "{bad"}},
		{func(a []string) error { return RunPublish(t.Context(), a, env) }, []string{"--file", "f", "--data", "1"}},
		{func(a []string) error { return RunPublish(t.Context(), a, env) }, []string{"--type", "X", "--batch", "5"}},
		{func(a []string) error { return RunListen(t.Context(), a, env) }, []string{"--ws", "--sse"}},
		{func(a []string) error { return RunListen(t.Context(), a, env) }, []string{"--user", "a", "--token", "t"}},
		{func(a []string) error { return RunListen(t.Context(), a, env) }, []string{"--server", "localhost:3000"}},
		{func(a []string) error { return RunListen(t.Context(), a, env) }, []string{"--last-event-id", "yesterday"}},
	}
	for _, c := range cases {
		err := c.run(c.args)
		var ee *ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%q: err = %v, want a usage error (exit 2)", c.args, err)
		}
	}
	var out bytes.Buffer
	help := IO{Stdout: &out, Stderr: io.Discard}
	for name, run := range map[string]func(IO) error{
		"token":   func(o IO) error { return RunToken(t.Context(), []string{"--help"}, o) },
		"publish": func(o IO) error { return RunPublish(t.Context(), []string{"-h"}, o) },
		"listen":  func(o IO) error { return RunListen(t.Context(), []string{"--help"}, o) },
	} {
		out.Reset()
		if err := run(help); err == nil || !strings.Contains(err.Error(), "help requested") {
			t.Errorf("%s --help: %v", name, err)
		}
		if !strings.Contains(out.String(), "Examples:\n  knowledgehub "+name) {
			t.Errorf("%s --help has no examples:\n%s", name, out.String())
		}
	}
}

func TestPublishRetries(t *testing.T) {
	var (
		mu    sync.Mutex
		keys  []string
		calls int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer k" || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("headers %v", r.Header)
		}
		switch n {
		case 1:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":"unavailable","message":"retry"}`)
		case 2:
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"error":"rate_limited","message":"slow down"}`)
		default:
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"id":"5-0"}`)
		}
	}))
	defer srv.Close()
	p := &Publisher{Server: srv.URL, Key: "k", Retries: 3, RetryDelay: 10 * time.Millisecond}
	id, err := p.Publish(t.Context(), Draft{Type: "CODE_CHANGE"})
	if err != nil || id != "5-0" {
		t.Fatalf("Publish = %q, %v", id, err)
	}
	if len(keys) != 3 || keys[0] == "" || keys[0] != keys[1] || keys[1] != keys[2] {
		t.Errorf("Idempotency-Keys %q: want one key, repeated", keys)
	}

	mu.Lock()
	calls = 0
	mu.Unlock()
	p.Retries = 0
	_, err = p.Publish(t.Context(), Draft{Type: "CODE_CHANGE"})
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 503 || apiErr.Message != "retry" {
		t.Errorf("without retries: %v", err)
	}

	// Nothing listens: no retry, and a message that says so.
	start := time.Now()
	p = &Publisher{Server: "http://" + closedAddr(t), Key: "k", Retries: 3}
	_, err = p.Publish(t.Context(), Draft{Type: "CODE_CHANGE"})
	if err == nil || !strings.Contains(err.Error(), "cannot reach the server") || time.Since(start) > time.Second {
		t.Errorf("no server: %v after %v", err, time.Since(start))
	}
}

func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
