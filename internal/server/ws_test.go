package server_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/server/servertest"
	"github.com/knowledgehub/realtime/internal/uring"
)

// wsClient is a real WebSocket client (gorilla/websocket) for tests. A
// reader goroutine owns the connection's reads, because gorilla makes a
// read deadline fatal for the connection.
type wsClient struct {
	t      *testing.T
	conn   *websocket.Conn
	msgs   chan []byte
	closed chan error // the read error that ended the connection
}

func dialWS(t *testing.T, n *servertest.Node, query string, header http.Header) (*wsClient, *http.Response, error) {
	t.Helper()
	u := n.WSURL
	if query != "" {
		u += "?" + query
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial(u, header)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{t: t, conn: conn, msgs: make(chan []byte, 1024), closed: make(chan error, 1)}
	go func() {
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				c.closed <- err
				close(c.msgs)
				return
			}
			c.msgs <- b
		}
	}()
	t.Cleanup(func() { _ = conn.Close() })
	return c, resp, nil
}

func mustDialWS(t *testing.T, n *servertest.Node, query string) *wsClient {
	t.Helper()
	c, resp, err := dialWS(t, n, query, nil)
	if err != nil {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = string(b)
		}
		t.Fatalf("dial %s: %v %s", query, err, body)
	}
	return c
}

// read returns the next message as a map, failing after timeout.
func (c *wsClient) read(timeout time.Duration) map[string]any {
	c.t.Helper()
	m, err := c.tryRead(timeout)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

var errNoMessage = errors.New("no message in time")

func (c *wsClient) tryRead(timeout time.Duration) (map[string]any, error) {
	select {
	case b, ok := <-c.msgs:
		if !ok {
			return nil, errors.New("connection closed")
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			c.t.Fatalf("message is not JSON: %q", b)
		}
		return m, nil
	case <-time.After(timeout):
		return nil, errNoMessage
	}
}

// welcome reads and checks the welcome message.
func (c *wsClient) welcome() map[string]any {
	c.t.Helper()
	m := c.read(5 * time.Second)
	if m["type"] != "connected" {
		c.t.Fatalf("first message = %v, want connected", m)
	}
	return m
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	if err := c.conn.WriteJSON(v); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// expectClose skips messages until the connection closes and returns the
// close code and reason.
func (c *wsClient) expectClose(timeout time.Duration) (int, string) {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-c.msgs:
			if ok {
				continue
			}
			err := <-c.closed
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, ce.Text
			}
			c.t.Fatalf("connection ended without a close frame: %v", err)
		case <-deadline:
			c.t.Fatal("connection did not close in time")
		}
	}
}

// expectNoEvent asserts nothing arrives within d.
func (c *wsClient) expectNoEvent(d time.Duration) {
	c.t.Helper()
	if m, err := c.tryRead(d); err == nil {
		c.t.Fatalf("unexpected message %v", m)
	}
}

// events reads n events (type in upper case), failing on control messages.
func (c *wsClient) events(n int) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	for len(out) < n {
		m := c.read(5 * time.Second)
		typ, _ := m["type"].(string)
		if typ == strings.ToLower(typ) {
			c.t.Fatalf("control message %v while waiting for events", m)
		}
		out = append(out, m)
	}
	return out
}

func TestWebSocketWelcome(t *testing.T) {
	n := servertest.Start(t)
	anon := mustDialWS(t, n, "").welcome()
	if anon["user_id"] != nil || anon["authenticated"] != false || anon["message"] != "WebSocket connection established" {
		t.Errorf("anonymous welcome = %v", anon)
	}
	if id, _ := anon["client_id"].(string); len(id) != 36 {
		t.Errorf("client_id %q is not a UUID", id)
	}
	tok := servertest.Token(t, "alice", time.Hour)
	auth := mustDialWS(t, n, "token="+tok).welcome()
	if auth["user_id"] != "alice" || auth["authenticated"] != true || auth["expires_at"] == nil {
		t.Errorf("authenticated welcome = %v", auth)
	}
	// The Authorization header works as well as the query parameter.
	c, _, err := dialWS(t, n, "", http.Header{"Authorization": {"Bearer " + tok}})
	if err != nil {
		t.Fatal(err)
	}
	if w := c.welcome(); w["user_id"] != "alice" {
		t.Errorf("header-authenticated welcome = %v", w)
	}
}

func TestWebSocketInvalidToken(t *testing.T) {
	n := servertest.Start(t)
	for _, tc := range []struct{ name, token, reason string }{
		{"garbage", "not-a-jwt", "malformed"},
		{"expired", expiredToken(t, "alice"), "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustDialWS(t, n, "token="+url.QueryEscape(tc.token))
			m := c.read(5 * time.Second)
			if m["type"] != "error" || m["code"] != "invalid_token" || !strings.Contains(m["message"].(string), tc.reason) {
				t.Fatalf("got %v, want invalid_token error mentioning %q", m, tc.reason)
			}
			if code, _ := c.expectClose(5 * time.Second); code != 4001 {
				t.Fatalf("close code %d, want 4001", code)
			}
		})
	}
}

func TestWebSocketClientMessages(t *testing.T) {
	n := servertest.Start(t)
	c := mustDialWS(t, n, "")
	c.welcome()
	c.send(map[string]any{"type": "ping"})
	if m := c.read(5 * time.Second); m["type"] != "pong" {
		t.Fatalf("ping answered %v", m)
	}
	c.send(map[string]any{"type": "subscribe", "job_id": "job-1"})
	if m := c.read(5 * time.Second); m["type"] != "subscribed" || m["job_id"] != "job-1" {
		t.Fatalf("subscribe answered %v", m)
	}
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1, "job_id": "job-1"})
	if ev := c.events(1)[0]; ev["job_id"] != "job-1" {
		t.Fatalf("job event = %v", ev)
	}
	c.send(map[string]any{"type": "unsubscribe", "job_id": "job-1"})
	if m := c.read(5 * time.Second); m["type"] != "unsubscribed" || m["job_id"] != "job-1" {
		t.Fatalf("unsubscribe answered %v", m)
	}
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 2, "job_id": "job-1"})
	c.expectNoEvent(300 * time.Millisecond)

	for _, bad := range []string{`nonsense`, `{"type":"dance"}`, `{"type":"subscribe"}`, `{"type":"subscribe","job_id":"bad id!"}`, `{"type":7}`, `[]`} {
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		m := c.read(5 * time.Second)
		if m["type"] != "error" || m["code"] != "bad_message" || m["message"] == "" {
			t.Fatalf("%s answered %v, want bad_message", bad, m)
		}
	}
	// The connection stays open after bad messages.
	c.send(map[string]any{"type": "ping"})
	if m := c.read(5 * time.Second); m["type"] != "pong" {
		t.Fatalf("after bad messages, ping answered %v", m)
	}
}

// TestWebSocketRouting runs with the fan-out's sends batched through
// io_uring (the default, where the kernel allows it) and with one write per
// delivery, and checks which the node reports in its stats.
func TestWebSocketRouting(t *testing.T) {
	want := "io_uring"
	if r, err := uring.Open(); err != nil {
		want = "off"
	} else {
		r.Close()
	}
	for setting, want := range map[string]string{"auto": want, "off": "off"} {
		t.Run("send_batching="+setting, func(t *testing.T) {
			n := servertest.Start(t, "--send-batching", setting)
			testWebSocketRouting(t, n)
			resp, err := http.Get(n.URL + "/api/realtime/stats")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var stats struct {
				SendBatching string `json:"send_batching"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
				t.Fatal(err)
			}
			if stats.SendBatching != want {
				t.Errorf("stats send_batching = %q, want %q", stats.SendBatching, want)
			}
		})
	}
}

func testWebSocketRouting(t *testing.T, n *servertest.Node) {
	anon := mustDialWS(t, n, "")
	anon.welcome()
	alice := mustDialWS(t, n, "token="+servertest.Token(t, "alice", time.Hour))
	alice.welcome()
	bob := mustDialWS(t, n, "token="+servertest.Token(t, "bob", time.Hour))
	bob.welcome()
	jobs := mustDialWS(t, n, "job_ids=job-7,job-8&event_types=ERROR_OCCURRED")
	jobs.welcome()

	n.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "private", "user_id": "alice"})
	n.MustPublish(t, map[string]any{"type": "ERROR_OCCURRED", "data": "job", "job_id": "job-8"})
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "job-wrong-type", "job_id": "job-7"})
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "public"})

	got := func(c *wsClient, n int) []any {
		var out []any
		for _, e := range c.events(n) {
			out = append(out, e["data"])
		}
		return out
	}
	if d := got(alice, 2); d[0] != "private" || d[1] != "public" {
		t.Errorf("alice got %v", d)
	}
	if d := got(bob, 1); d[0] != "public" {
		t.Errorf("bob got %v", d)
	}
	if d := got(anon, 1); d[0] != "public" {
		t.Errorf("anonymous got %v", d)
	}
	if d := got(jobs, 1); d[0] != "job" {
		t.Errorf("job subscriber got %v", d)
	}
	for _, c := range []*wsClient{alice, bob, anon, jobs} {
		c.expectNoEvent(200 * time.Millisecond)
	}
}

func TestWebSocketResume(t *testing.T) {
	n := servertest.Start(t)
	first := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 0})
	var want []string
	for i := 1; i <= 5; i++ {
		want = append(want, n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": i}))
	}
	c := mustDialWS(t, n, "last_event_id="+first)
	c.welcome()
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 6})
	evs := c.events(6)
	for i, e := range evs[:5] {
		if e["id"] != want[i] {
			t.Fatalf("replayed event %d = %v, want id %s", i, e, want[i])
		}
	}
	if evs[5]["data"] != float64(6) {
		t.Fatalf("live event after replay = %v", evs[5])
	}
	c.expectNoEvent(200 * time.Millisecond)
	// lastEventId, as some polyfills send it, is accepted too.
	c2 := mustDialWS(t, n, "lastEventId="+want[3])
	c2.welcome()
	if e := c2.events(1)[0]; e["id"] != want[4] {
		t.Fatalf("lastEventId resume got %v", e)
	}
}

func TestWebSocketGap(t *testing.T) {
	n := servertest.Start(t, "--history-size", "3")
	first := n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 0})
	var ids []string
	for i := 1; i <= 5; i++ {
		ids = append(ids, n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": i}))
	}
	c := mustDialWS(t, n, "last_event_id="+first)
	c.welcome()
	gap := c.read(5 * time.Second)
	if gap["type"] != "gap" || gap["last_event_id"] != first || gap["oldest_available_id"] != ids[2] {
		t.Fatalf("gap = %v, want last_event_id %s oldest %s", gap, first, ids[2])
	}
	evs := c.events(3)
	if evs[0]["id"] != ids[2] || evs[2]["id"] != ids[4] {
		t.Fatalf("replay after gap = %v", evs)
	}
}

func TestWebSocketHandshakeErrors(t *testing.T) {
	n := servertest.Start(t)
	for _, tc := range []struct {
		name, query, origin string
		status              int
		inMessage           string
	}{
		{"bad event type", "event_types=NOPE", "", 400, "event_types"},
		{"bad job id", "job_ids=a%20b", "", 400, "job_ids"},
		{"bad last id", "last_event_id=xyz", "", 400, "last_event_id"},
		{"future last id", "last_event_id=99999999999999-0", "", 400, "never issued"},
		{"duplicate param", "event_types=CODE_CHANGE&event_types=CODE_CHANGE", "", 400, "more than once"},
		{"origin rejected", "", "http://evil.example", 403, "origin"},
		{"origin wildcard", "", "https://app.good.example", 101, ""},
		{"origin exact", "", "http://allowed.example", 101, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.origin != "" {
				h.Set("Origin", tc.origin)
			}
			c, resp, err := dialWS(t, n, tc.query, h)
			if tc.status == 101 {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				c.welcome()
				return
			}
			if err == nil || resp == nil {
				t.Fatalf("dial succeeded, want %d", tc.status)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			var body map[string]string
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if body["error"] == "" || !strings.Contains(body["message"], tc.inMessage) {
				t.Fatalf("body %v, want message naming %q", body, tc.inMessage)
			}
		})
	}
}

func TestWebSocketLimits(t *testing.T) {
	n := servertest.Start(t, "--max-connections-per-ip", "2")
	mustDialWS(t, n, "").welcome()
	mustDialWS(t, n, "").welcome()
	_, resp, err := dialWS(t, n, "", nil)
	if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third connection: err %v resp %v, want 429 with Retry-After", err, resp)
	}
}

func TestWebSocketInboundLimits(t *testing.T) {
	n := servertest.Start(t, "--max-message-bytes", "256", "--message-rate", "5")
	big := mustDialWS(t, n, "")
	big.welcome()
	if err := big.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping","pad":"`+strings.Repeat("x", 400)+`"}`)); err != nil {
		t.Fatal(err)
	}
	if code, _ := big.expectClose(5 * time.Second); code != 1009 {
		t.Fatalf("oversized message: close %d, want 1009", code)
	}
	flood := mustDialWS(t, n, "")
	flood.welcome()
	for i := 0; i < 40; i++ {
		if err := flood.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
			break
		}
	}
	if code, _ := flood.expectClose(5 * time.Second); code != 1008 {
		t.Fatalf("message flood: close %d, want 1008", code)
	}
}

func TestWebSocketSlowConsumer(t *testing.T) {
	n := servertest.Start(t, "--max-queue-bytes", "65536")
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, ReadBufferSize: 4096}
	conn, _, err := d.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var welcome map[string]any
	if err := conn.ReadJSON(&welcome); err != nil || welcome["type"] != "connected" {
		t.Fatalf("welcome %v %v", welcome, err)
	}
	// Stop reading: the kernel's buffers fill, then the server's queue, and
	// the server must disconnect with 4208 instead of dropping events.
	big := strings.Repeat("x", 60000)
	batch := make([]map[string]any, 50)
	for i := range batch {
		batch[i] = map[string]any{"type": "CODE_CHANGE", "data": big}
	}
	for i := 0; n.Server.Hub().Count() > 0; i++ {
		if i == 100 {
			t.Fatal("the server never disconnected a client that reads nothing")
		}
		if status, out := n.Publish(t, batch); status != 201 {
			t.Fatalf("publish: %d %v", status, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Reading again, the client gets what was queued, then the close frame.
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, _, err := conn.ReadMessage()
		if err == nil {
			continue
		}
		if !websocket.IsCloseError(err, 4208) {
			t.Fatalf("connection ended with %v, want close 4208", err)
		}
		return
	}
}

func TestWebSocketTokenExpiryAndRefresh(t *testing.T) {
	n := servertest.Start(t)
	c := mustDialWS(t, n, "token="+servertest.Token(t, "alice", 2*time.Second))
	c.welcome()
	// Less than the warning period is left: token_expiring comes at once.
	if m := c.read(5 * time.Second); m["type"] != "token_expiring" {
		t.Fatalf("got %v, want token_expiring", m)
	}
	if code, _ := c.expectClose(5 * time.Second); code != 4002 {
		t.Fatalf("close %d, want 4002", code)
	}

	r := mustDialWS(t, n, "token="+servertest.Token(t, "alice", 2*time.Second))
	r.welcome()
	if m := r.read(5 * time.Second); m["type"] != "token_expiring" {
		t.Fatalf("got %v, want token_expiring", m)
	}
	r.send(map[string]any{"type": "refresh", "token": servertest.Token(t, "bob", time.Hour)})
	if m := r.read(5 * time.Second); m["type"] != "error" || m["code"] != "invalid_token" {
		t.Fatalf("refresh with another user's token answered %v", m)
	}
	r.send(map[string]any{"type": "refresh", "token": servertest.Token(t, "alice", time.Hour)})
	if m := r.read(5 * time.Second); m["type"] != "refreshed" || m["user_id"] != "alice" || m["expires_at"] == nil {
		t.Fatalf("refresh answered %v", m)
	}
	// Past the first token's expiry the connection is still open.
	time.Sleep(2500 * time.Millisecond)
	r.send(map[string]any{"type": "ping"})
	if m := r.read(5 * time.Second); m["type"] != "pong" {
		t.Fatalf("after refresh, ping answered %v", m)
	}
}

func TestWebSocketShutdown(t *testing.T) {
	n := servertest.Start(t)
	c := mustDialWS(t, n, "")
	c.welcome()
	done := make(chan error, 1)
	go func() { done <- n.Stop() }()
	if code, _ := c.expectClose(10 * time.Second); code != 1001 {
		t.Fatalf("close %d, want 1001", code)
	}
	if err := <-done; err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// expiredToken returns a correctly signed token that expired a minute ago.
func expiredToken(t *testing.T, user string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user, "iat": time.Now().Add(-time.Hour).Unix(), "exp": time.Now().Add(-time.Minute).Unix(),
	}).SignedString([]byte(servertest.Secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestWebSocketSilentPeerClosed: the server pings, and closes a connection
// whose peer stops answering (no pong for 2.5 ping intervals).
func TestWebSocketSilentPeerClosed(t *testing.T) {
	n := servertest.Start(t, "--ping-interval", "1s")
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	silent, _, err := d.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var welcome map[string]any
	if err := silent.ReadJSON(&welcome); err != nil {
		t.Fatal(err)
	}
	// An answering peer on the same server stays: gorilla answers pings
	// while it reads.
	alive := mustDialWS(t, n, "")
	alive.welcome()
	// The silent peer reads nothing more, so it never answers a ping.
	deadline := time.Now().Add(10 * time.Second)
	for n.Server.Hub().Count() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections after 10 s, want the silent one closed", n.Server.Hub().Count())
		}
		time.Sleep(100 * time.Millisecond)
	}
	alive.send(map[string]any{"type": "ping"})
	if m := alive.read(5 * time.Second); m["type"] != "pong" {
		t.Fatalf("the answering peer got %v", m)
	}
}

// TestWebSocketControlFrames: the server answers a client's ping with a
// pong carrying the same payload and a client's close frame with the same
// code (RFC 6455), while events are being delivered to the connection,
// with batched sends and without. Pongs and close replies go through the
// connection's writer, behind anything staged for it.
func TestWebSocketControlFrames(t *testing.T) {
	for _, setting := range []string{"auto", "off"} {
		t.Run("send_batching="+setting, func(t *testing.T) {
			n := servertest.Start(t, "--send-batching", setting)
			d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
			conn, _, err := d.Dial(n.WSURL, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			pongs := make(chan string, 64)
			conn.SetPongHandler(func(data string) error { pongs <- data; return nil })
			msgs := make(chan map[string]any, 256)
			ended := make(chan error, 1)
			go func() {
				for {
					var m map[string]any
					if err := conn.ReadJSON(&m); err != nil {
						ended <- err
						close(msgs)
						return
					}
					msgs <- m
				}
			}()
			if m := <-msgs; m["type"] != "connected" {
				t.Fatalf("first message %v, want the welcome", m)
			}
			const rounds = 20
			for i := range rounds {
				if err := conn.WriteControl(websocket.PingMessage, []byte(fmt.Sprintf("probe-%d", i)), time.Now().Add(time.Second)); err != nil {
					t.Fatal(err)
				}
				n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": i})
			}
			for i := range rounds {
				select {
				case m := <-msgs:
					if m["data"] != float64(i) {
						t.Fatalf("event %d: got %v", i, m)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("event %d did not arrive", i)
				}
				select {
				case p := <-pongs:
					if want := fmt.Sprintf("probe-%d", i); p != want {
						t.Fatalf("pong %q, want %q", p, want)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("no pong for probe-%d", i)
				}
			}
			if err := conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "done"), time.Now().Add(time.Second)); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-ended:
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != 4000 {
					t.Fatalf("after our close frame: %v, want the server's close frame with code 4000", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the server did not answer the close frame")
			}
		})
	}
}
