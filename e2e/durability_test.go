package e2e

// TestDurabilityRestartResume: the gateway runs as a process with the disk
// store; four real clients follow it: a Node `ws` client that reconnects by
// itself with last_event_id (node/resume-ws-client.mjs), a Node
// `eventsource` stream (node/sse-driver.mjs), and in Chromium the demo
// page's EventSource (SSEClient: the browser reconnects by itself with
// Last-Event-ID) and WebSocketClient (its own reconnect with
// last_event_id). The server is killed with SIGKILL, nothing is published
// while it is down, and it is started again on the same port and data
// directory. Every client must end up with exactly the ids published, in
// order: before the kill, between the restart and its reconnect (replayed),
// and after it (live).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/proctest"
)

const (
	durSecret     = "e2e-durability-secret-0123456789abcdef"
	durPublishKey = "e2e-durability-publish-key"
)

// durPublishE2E publishes one event (or a batch) and returns its ids.
func durPublishE2E(t *testing.T, base string, body any) []string {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, base+"/api/realtime/events", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+durPublishKey)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("publish: %d %s", resp.StatusCode, raw)
	}
	var out struct {
		ID  string   `json:"id"`
		IDs []string `json:"ids"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("publish answer %s: %v", raw, err)
	}
	if out.ID != "" {
		return []string{out.ID}
	}
	return out.IDs
}

// durDiffIDs describes how got differs from want, "" when equal.
func durDiffIDs(got, want []string) string {
	if equalStrings(got, want) {
		return ""
	}
	count := map[string]int{}
	for _, id := range got {
		count[id]++
	}
	var missing, dups []string
	for _, id := range want {
		if count[id] == 0 {
			missing = append(missing, id)
		}
	}
	for id, k := range count {
		if k > 1 {
			dups = append(dups, id)
		}
	}
	return fmt.Sprintf("got %d ids, want %d: missing %v, duplicated %v; got %v", len(got), len(want), missing, dups, got)
}

func TestDurabilityRestartResume(t *testing.T) {
	bin, err := proctest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	static, browser := browserSetup(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	base := "http://" + addr
	args := []string{"serve", "--store", "disk", "--data-dir", dir, "--addr", addr,
		"--jwt-secret", durSecret, "--publish-keys", durPublishKey,
		"--allowed-origins", static.URL, "--log-level", "warn"}
	srv := proctest.Serve(t, bin, base, args...)

	// The clients.
	wsc := StartDriver(t, "resume-ws-client.mjs", map[string]string{"KH_WS_URL": "ws://" + addr + "/ws/notifications"})
	wsc.Do(map[string]any{"op": "start"})
	wsc.Wait("ws client welcome", wsMsg("ws", "connected"))
	es := StartDriver(t, "sse-driver.mjs", map[string]string{"KH_URL": base})
	es.Do(map[string]any{"op": "open", "conn": "es"})
	es.Wait("eventsource connected", func(r Report) bool {
		return r.Str("ev") == "named" && r.Str("conn") == "es" && r.Str("type") == "connected"
	})
	openDemo(t, browser, static, base, "", "", "")
	browser.Wait("browser WebSocket welcome", page("ws", "control", typeIs("connected")))
	browser.Wait("browser EventSource connected", page("sse", "control", typeIs("connected")))

	type client struct {
		name string
		ids  func() []string
		wait func(id string)
	}
	nodeWSIDs := func() []string { return eventIDs(wsMessages(wsc, "ws")) }
	esIDs := func() []string {
		var ids []string
		for _, r := range es.Reports(func(r Report) bool { return r.Str("ev") == "message" && r.Str("conn") == "es" }) {
			ids = append(ids, r.Obj("data").Str("id"))
		}
		return ids
	}
	clients := []client{
		{"Node ws (own reconnect, last_event_id)", nodeWSIDs, func(id string) {
			wsc.WaitFor(20*time.Second, "ws client receiving "+id, wsEventID("ws", id))
		}},
		{"Node eventsource (Last-Event-ID)", esIDs, func(id string) {
			es.WaitFor(20*time.Second, "eventsource receiving "+id, func(r Report) bool {
				return r.Str("ev") == "message" && r.Str("conn") == "es" && r.Obj("data").Str("id") == id
			})
		}},
		{"Chromium EventSource (SSEClient)", func() []string { return pageEventIDs(browser, "sse") }, func(id string) {
			browser.WaitFor(20*time.Second, "browser EventSource receiving "+id, page("sse", "event", idIs(id)))
		}},
		{"Chromium WebSocket (WebSocketClient)", func() []string { return pageEventIDs(browser, "ws") }, func(id string) {
			browser.WaitFor(20*time.Second, "browser WebSocket receiving "+id, page("ws", "event", idIs(id)))
		}},
	}
	waitAll := func(id string) {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Go(func() { c.wait(id) })
		}
		wg.Wait()
	}

	var published []string
	publish := func(phase string, n int) {
		for i := 0; i < n; i++ {
			published = append(published, durPublishE2E(t, base, map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"phase": phase, "i": i}})...)
		}
		batch := make([]map[string]any, 5)
		for i := range batch {
			batch[i] = map[string]any{"type": "DECISION_MADE", "data": map[string]any{"phase": phase, "batch": i}}
		}
		published = append(published, durPublishE2E(t, base, batch)...)
	}

	// Before the kill: live events.
	publish("before", 10)
	waitAll(published[len(published)-1])
	beforeKill := len(published)

	srv.Kill(t)
	// The clients see the connection die; nothing is published while the
	// server is down, and it stays down long enough for reconnects to fail.
	wsc.WaitFor(10*time.Second, "ws client noticing the kill", func(r Report) bool { return r.Str("ev") == "close" })
	browser.WaitFor(10*time.Second, "browser WebSocket closed", page("ws", "status", func(s Report) bool { return s.Str("state") == "closed" }))
	browser.WaitFor(10*time.Second, "browser EventSource reconnecting", page("sse", "status", func(s Report) bool { return s.Str("state") == "reconnecting" }))
	time.Sleep(time.Second)

	_ = proctest.Serve(t, bin, base, args...) // stopped by the test's cleanup
	// Published before the clients are back: they get these by replay.
	publish("after restart", 10)
	// Wait for every client to be connected again, then publish live.
	wsc.waitN("ws client reconnected", 2, 20*time.Second, wsMsg("ws", "connected"))
	es.waitN("eventsource reconnected", 2, 20*time.Second, func(r Report) bool {
		return r.Str("ev") == "named" && r.Str("conn") == "es" && r.Str("type") == "connected"
	})
	browser.waitN("browser EventSource reconnected", 2, 20*time.Second, page("sse", "control", typeIs("connected")))
	browser.waitN("browser WebSocket reconnected", 2, 20*time.Second, page("ws", "control", typeIs("connected")))
	publish("live", 10)
	waitAll(published[len(published)-1])

	// Give a duplicate the time to show up, then compare.
	time.Sleep(300 * time.Millisecond)
	for _, c := range clients {
		if d := durDiffIDs(c.ids(), published); d != "" {
			t.Errorf("%s: %s", c.name, d)
		}
	}
	if failed := browser.Reports(page("sse", "status", func(s Report) bool { return s.Str("state") == "failed" })); len(failed) > 0 {
		t.Errorf("the browser's EventSource gave up: %v", failed)
	}
	if gaps := browser.Reports(page("sse", "control", typeIs("gap"))); len(gaps) > 0 {
		t.Errorf("browser EventSource got a gap message though nothing was pruned: %v", gaps)
	}
	if gaps := wsc.Reports(wsMsg("ws", "gap")); len(gaps) > 0 {
		t.Errorf("ws client got a gap message though nothing was pruned: %v", gaps)
	}
	attempts := len(wsc.Reports(func(r Report) bool { return r.Str("ev") == "connecting" }))
	esErrors := len(es.Reports(func(r Report) bool { return r.Str("ev") == "error" }))
	t.Logf("%d events published (%d before the SIGKILL, %d after the restart); 4 clients each received all of them exactly once; the ws client connected %d times, the Node EventSource reported %d errors while the server was down",
		len(published), beforeKill, len(published)-beforeKill, attempts, esErrors)
}
