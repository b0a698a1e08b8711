package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/server/servertest"
	"github.com/knowledgehub/realtime/internal/syncbuf"
)

// waitFor waits until cond holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listening runs Listen in the background; the returned channel gets its
// result.
func listening(t *testing.T, ctx context.Context, o ListenOptions) (out, notes *syncbuf.Buffer, done chan error) {
	t.Helper()
	out, notes = &syncbuf.Buffer{}, &syncbuf.Buffer{}
	o.Out, o.Notes = out, notes
	if o.MinBackoff == 0 {
		o.MinBackoff = 50 * time.Millisecond
		o.MaxBackoff = 500 * time.Millisecond
	}
	done = make(chan error, 1)
	go func() { done <- Listen(ctx, o) }()
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Listen did not return")
		}
	})
	return out, notes, done
}

func result(t *testing.T, done chan error) error {
	t.Helper()
	select {
	case err := <-done:
		done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Listen did not return within 10s")
		return nil
	}
}

func connectedCount(notes *syncbuf.Buffer) int {
	return strings.Count(notes.String(), "listen: connected")
}

func eventLines(t *testing.T, s string) []WireEvent {
	t.Helper()
	var out []WireEvent
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var e WireEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("output line %q is not an event: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func publisher(n *servertest.Node) *Publisher {
	return &Publisher{Server: n.URL, Key: servertest.PublishKey, Client: &http.Client{Timeout: 10 * time.Second}}
}

func transports() []struct {
	name string
	sse  bool
} {
	return []struct {
		name string
		sse  bool
	}{{"ws", false}, {"sse", true}}
}

func TestListenInProcess(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			n := servertest.Start(t)
			p := publisher(n)
			ctx := t.Context()
			anonOut, anonNotes, anonDone := listening(t, ctx, ListenOptions{Server: n.URL, SSE: tr.sse, Raw: true, Max: 2})
			tok := servertest.Token(t, "alice", time.Hour)
			aliceOut, aliceNotes, aliceDone := listening(t, ctx, ListenOptions{Server: n.URL, SSE: tr.sse, Raw: true, Max: 3, Token: tok, Types: []string{"CODE_CHANGE", "MEMORY_CREATED"}})
			jobOut, jobNotes, jobDone := listening(t, ctx, ListenOptions{Server: n.URL, SSE: tr.sse, Raw: true, Max: 1, Jobs: []string{"job-42"}, Types: []string{"DECISION_MADE"}})
			waitFor(t, 5*time.Second, "connected", func() bool {
				return connectedCount(anonNotes) == 1 && connectedCount(aliceNotes) == 1 && connectedCount(jobNotes) == 1
			})
			if !strings.Contains(aliceNotes.String(), "user alice") || !strings.Contains(anonNotes.String(), "anonymous") {
				t.Errorf("notes: %q / %q", aliceNotes.String(), anonNotes.String())
			}
			var ids []string
			for _, d := range []Draft{
				{Type: "CODE_CHANGE", Data: json.RawMessage(`{"file":"a.go"}`), UserID: "alice"}, // alice only
				{Type: "ERROR_OCCURRED", Data: json.RawMessage(`1`)},                             // anon only (alice filters types)
				{Type: "DECISION_MADE", JobID: "job-42"},                                         // job listener only
				{Type: "MEMORY_CREATED", Data: json.RawMessage(`"m"`)},                           // anon and alice
				{Type: "CODE_CHANGE", Data: json.RawMessage(`2`)},                                // alice
			} {
				id, err := p.Publish(ctx, d)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			for name, c := range map[string]struct {
				done chan error
				out  *syncbuf.Buffer
				want []string
			}{
				"anonymous": {anonDone, anonOut, []string{ids[1], ids[3]}},
				"alice":     {aliceDone, aliceOut, []string{ids[0], ids[3], ids[4]}},
				"job":       {jobDone, jobOut, []string{ids[2]}},
			} {
				if err := result(t, c.done); err != nil {
					t.Fatalf("%s: Listen = %v", name, err)
				}
				evs := eventLines(t, c.out.String())
				var got []string
				for _, e := range evs {
					got = append(got, e.ID)
				}
				if strings.Join(got, ",") != strings.Join(c.want, ",") {
					t.Errorf("%s got %v, want %v", name, got, c.want)
				}
			}
		})
	}
}

func TestListenRefused(t *testing.T) {
	n := servertest.Start(t)
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			_, _, done := listening(t, t.Context(), ListenOptions{Server: n.URL, SSE: tr.sse, Token: "not-a-jwt"})
			err := result(t, done)
			var se *StopError
			if !errors.As(err, &se) {
				t.Fatalf("Listen = %v, want a StopError", err)
			}
			if tr.sse && se.Status != http.StatusUnauthorized || !tr.sse && se.Code != 4001 {
				t.Errorf("StopError = %+v", se)
			}
			if !strings.Contains(err.Error(), "invalid_token") {
				t.Errorf("the server's message is missing: %v", err)
			}

			_, _, done = listening(t, t.Context(), ListenOptions{Server: n.URL, SSE: tr.sse, Types: []string{"lower"}})
			if err := result(t, done); !errors.As(err, &se) || se.Status != 400 || !strings.Contains(err.Error(), "event_types") {
				t.Errorf("bad type filter: %v", err)
			}

			_, _, done = listening(t, t.Context(), ListenOptions{Server: "http://127.0.0.1:1", SSE: tr.sse})
			if err := result(t, done); err == nil || !strings.Contains(err.Error(), "cannot reach the server") {
				t.Errorf("no server: %v", err)
			}
		})
	}
}

func TestListenTokenRenewal(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			n := servertest.Start(t)
			var minted atomic.Int32
			mint := func() (string, error) {
				ttl := time.Hour
				if minted.Add(1) == 1 {
					ttl = 2 * time.Second // the first token expires almost at once
				}
				return auth.Mint(servertest.Secret, "alice", ttl)
			}
			first, _ := mint()
			out, notes, done := listening(t, t.Context(), ListenOptions{Server: n.URL, SSE: tr.sse, Raw: true, Max: 2, Token: first, Mint: mint})
			waitFor(t, 5*time.Second, "connected", func() bool { return connectedCount(notes) == 1 })
			p := publisher(n)
			id1, err := p.Publish(t.Context(), Draft{Type: "CODE_CHANGE", UserID: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "first event", func() bool { return strings.Contains(out.String(), id1) })
			if tr.sse {
				// The stream ends with token_expired; listen reconnects with
				// a fresh token and resumes.
				waitFor(t, 10*time.Second, "reconnect", func() bool { return connectedCount(notes) == 2 })
				if !strings.Contains(notes.String(), "token expired") {
					t.Errorf("notes: %s", notes.String())
				}
			} else {
				// token_expiring comes at once; listen refreshes in place.
				waitFor(t, 5*time.Second, "refresh", func() bool { return strings.Contains(notes.String(), "token refreshed") })
				time.Sleep(2500 * time.Millisecond) // past the first token's exp
			}
			id2, err := p.Publish(t.Context(), Draft{Type: "CODE_CHANGE", UserID: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			if err := result(t, done); err != nil {
				t.Fatalf("Listen = %v\n%s", err, notes.String())
			}
			evs := eventLines(t, out.String())
			if len(evs) != 2 || evs[0].ID != id1 || evs[1].ID != id2 {
				t.Errorf("events %+v, want %s, %s", evs, id1, id2)
			}
			if !tr.sse && connectedCount(notes) != 1 {
				t.Errorf("the WebSocket reconnected instead of refreshing:\n%s", notes.String())
			}
		})
	}
}

// TestListenReconnectInProcess stops the server gracefully (WebSocket 1001,
// SSE randomized retry) and starts a new one, with an empty memory log, on
// the same address: listen must not exit, must report the gap the new server
// announces (its history does not hold the resume id), and must print the
// events published after the restart.
func TestListenReconnectInProcess(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			n := servertest.Start(t)
			ctx, cancel := context.WithCancel(t.Context())
			out, notes, done := listening(t, ctx, ListenOptions{Server: n.URL, SSE: tr.sse, Raw: true})
			waitFor(t, 5*time.Second, "connected", func() bool { return connectedCount(notes) == 1 })
			id1, err := publisher(n).Publish(ctx, Draft{Type: "CODE_CHANGE"})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "event 1", func() bool { return strings.Contains(out.String(), id1) })
			if err := n.Stop(); err != nil {
				t.Fatal(err)
			}
			n2 := servertest.Start(t, "--addr", n.Addr)
			waitFor(t, 15*time.Second, "reconnect", func() bool { return connectedCount(notes) == 2 })
			if !strings.Contains(notes.String(), "gap: events after "+id1) {
				t.Errorf("no note about the gap after the resume id:\n%s", notes.String())
			}
			id2, err := publisher(n2).Publish(ctx, Draft{Type: "CODE_CHANGE"})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "event 2", func() bool { return strings.Contains(out.String(), id2) })
			select {
			case err := <-done:
				t.Fatalf("Listen returned: %v", err)
			default:
			}
			cancel()
			if err := result(t, done); !errors.Is(err, context.Canceled) {
				t.Errorf("Listen = %v, want context.Canceled", err)
			}
			if evs := eventLines(t, out.String()); len(evs) != 2 {
				t.Errorf("events: %s", out.String())
			}
		})
	}
}

func writeEvents(t *testing.T, n int, typ func(i int) string) string {
	t.Helper()
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, `{"type":%q,"data":{"n":%d}}`+"\n", typ(i), i)
		if i%50 == 0 {
			b.WriteString("\n") // blank lines are skipped
		}
	}
	path := filepath.Join(t.TempDir(), "events.ndjson")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func history(t *testing.T, base string) []WireEvent {
	t.Helper()
	resp, err := http.Get(base + "/api/realtime/events?limit=1000")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var evs []WireEvent
	if err := json.NewDecoder(resp.Body).Decode(&evs); err != nil {
		t.Fatal(err)
	}
	return evs
}

func fileOpener(path string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return os.Open(path) }
}

func TestPublishFileInProcess(t *testing.T) {
	n := servertest.Start(t)
	p := publisher(n)
	path := writeEvents(t, 250, func(int) string { return "CODE_CHANGE" })
	var progress []int
	res, err := p.PublishFile(t.Context(), fileOpener(path), FileOptions{Batch: 100, KeepIDs: true, Progress: func(done, total int) {
		if total != 250 {
			t.Errorf("total = %d", total)
		}
		progress = append(progress, done)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 250 || len(res.IDs) != 250 || res.LastID != res.IDs[249] || res.Replayed != 0 {
		t.Errorf("result %+v", res)
	}
	if fmt.Sprint(progress) != "[100 200 250]" {
		t.Errorf("progress %v", progress)
	}
	evs := history(t, n.URL)
	if len(evs) != 250 || evs[249].ID != res.LastID {
		t.Fatalf("history has %d events", len(evs))
	}
	var first struct{ N int }
	_ = json.Unmarshal(evs[0].Data, &first)
	if first.N != 1 {
		t.Errorf("first event data %s", evs[0].Data)
	}

	// The same file again: every batch is recognized, nothing is duplicated.
	again, err := p.PublishFile(t.Context(), fileOpener(path), FileOptions{Batch: 100})
	if err != nil {
		t.Fatal(err)
	}
	if again.Replayed != 250 || again.LastID != res.LastID {
		t.Errorf("re-run %+v", again)
	}
	if got := len(history(t, n.URL)); got != 250 {
		t.Errorf("history has %d events after the re-run, want 250", got)
	}

	// Defaults change the content, hence the keys: published anew.
	withUser, err := p.PublishFile(t.Context(), fileOpener(path), FileOptions{Batch: 100, Defaults: Draft{UserID: "alice"}})
	if err != nil || withUser.Replayed != 0 || withUser.Events != 250 {
		t.Errorf("with defaults: %+v %v", withUser, err)
	}
}

func TestPublishFileErrors(t *testing.T) {
	n := servertest.Start(t)
	p := publisher(n)
	// Line 160 (event 157: three blank lines come before it) has an unknown type.
	path := writeEvents(t, 200, func(i int) string {
		if i == 157 {
			return "NOT_A_TYPE"
		}
		return "CODE_CHANGE"
	})
	res, err := p.PublishFile(t.Context(), fileOpener(path), FileOptions{Batch: 100})
	if err == nil || !strings.Contains(err.Error(), "line 160: server answered 400 (invalid_event): [56].type: unknown event type") {
		t.Fatalf("err = %v", err)
	}
	if res.Events != 100 {
		t.Errorf("published before the failure: %d", res.Events)
	}

	bad := filepath.Join(t.TempDir(), "bad.ndjson")
	_ = os.WriteFile(bad, []byte("{\"type\":\"CODE_CHANGE\"}\n[1]\n"), 0o600)
	if _, err := p.PublishFile(t.Context(), fileOpener(bad), FileOptions{Name: "bad.ndjson"}); err == nil || !strings.Contains(err.Error(), "bad.ndjson line 2: want a JSON object") {
		t.Errorf("err = %v", err)
	}
	_ = os.WriteFile(bad, []byte("{\"data\":1}\n"), 0o600)
	if _, err := p.PublishFile(t.Context(), fileOpener(bad), FileOptions{}); err == nil || !strings.Contains(err.Error(), "no \"type\"") {
		t.Errorf("err = %v", err)
	}
	if got := len(history(t, n.URL)); got != 100 {
		t.Errorf("history has %d events, want the 100 of the first batch", got)
	}

	wrongKey := &Publisher{Server: n.URL, Key: "wrong"}
	if _, err := wrongKey.Publish(t.Context(), Draft{Type: "CODE_CHANGE"}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong key: %v", err)
	}
}

// TestListenResume starts from --last-event-id: the server replays what
// came after it, with a gap note when the history no longer holds it.
func TestListenResume(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			n := servertest.Start(t, "--history-size", "3")
			p := publisher(n)
			var ids []string
			for i := 0; i < 6; i++ {
				id, err := p.Publish(t.Context(), Draft{Type: "CODE_CHANGE", Data: json.RawMessage(fmt.Sprint(i))})
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			out, notes, done := listening(t, t.Context(), ListenOptions{Server: n.URL, SSE: tr.sse, Raw: true, Max: 2, LastEventID: ids[3]})
			if err := result(t, done); err != nil {
				t.Fatal(err)
			}
			if evs := eventLines(t, out.String()); len(evs) != 2 || evs[0].ID != ids[4] || evs[1].ID != ids[5] {
				t.Errorf("resume after %s: %s", ids[3], out.String())
			}
			if strings.Contains(notes.String(), "gap") || !strings.Contains(notes.String(), "resuming after "+ids[3]) {
				t.Errorf("notes: %s", notes.String())
			}

			out, notes, done = listening(t, t.Context(), ListenOptions{Server: n.URL, SSE: tr.sse, Raw: true, Max: 3, LastEventID: ids[0]})
			if err := result(t, done); err != nil {
				t.Fatal(err)
			}
			if evs := eventLines(t, out.String()); len(evs) != 3 || evs[0].ID != ids[3] {
				t.Errorf("resume after a pruned id: %s", out.String())
			}
			if !strings.Contains(notes.String(), "gap: events after "+ids[0]) {
				t.Errorf("no gap note: %s", notes.String())
			}
		})
	}
}
