// Command go is a small KnowledgeHub Realtime client in Go: it connects to
// the gateway's WebSocket (/ws/notifications, SPEC §2), optionally with a
// token, subscribes to jobs, prints every event it receives as one JSON
// object a line on standard output, and when the connection drops it
// reconnects and resumes with last_event_id, so that no event is missed and
// none is printed twice. Control messages (connected, gap, token_expiring,
// errors) and connection news go to standard error.
//
// It uses github.com/gorilla/websocket and nothing else.
//
// Run it from the repository root against a local server
// (`go run ./cmd/knowledgehub serve`, listening on :3000):
//
//	go run ./examples/go                                  # anonymous: public events
//	go run ./examples/go -token "$(go run ./cmd/knowledgehub token --user alice)" -jobs job-42
//	go run ./examples/go -types CODE_CHANGE,DECISION_MADE | jq .
//	go run ./examples/go -url https://realtime.example.com -last-event-id 1733325600123-0
//
// and publish something from another terminal:
//
//	go run ./cmd/knowledgehub publish --type CODE_CHANGE --data '{"file":"api/app.py"}' --job job-42
//
// Flags (the environment variables KH_URL and KH_TOKEN give the defaults):
//
//	-url            the gateway, http(s):// or ws(s):// (default http://localhost:3000)
//	-token          a JWT; its user's private events come too (SPEC §6)
//	-jobs           comma-separated job ids to subscribe to
//	-types          comma-separated event types to receive (default: all)
//	-last-event-id  resume after this event id
//
// The jobs are subscribed with the job_ids query parameter rather than
// with subscribe messages after the welcome: on a reconnect the server
// replays the missed events right after the welcome, and only a
// subscription made in the URL is already in place for that replay.
//
// Reconnecting follows the close code (SPEC §2): 1000 ends the program; 40xx
// (invalid or expired token) ends it with exit status 1, since the same
// token would be refused again; 42xx (slow consumer) reconnects at once;
// 1001 (server shutting down) after a short random delay; anything else,
// including a network error, after an exponential backoff with jitter
// (0.5 s doubling up to 30 s). Ctrl-C or SIGTERM closes the connection
// normally and exits 0.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// readTimeout is how long a connection may stay silent before it is taken
// for dead. The server pings every 25 s by default (ping_interval), and
// every ping extends the deadline.
const readTimeout = 90 * time.Second

type options struct {
	url, token, jobs, types string
	lastEventID             string
}

func main() {
	var o options
	flag.StringVar(&o.url, "url", envOr("KH_URL", "http://localhost:3000"), "the gateway: http(s)://host[:port] or ws(s)://...")
	flag.StringVar(&o.token, "token", os.Getenv("KH_TOKEN"), "a JWT (default $KH_TOKEN); anonymous when empty")
	flag.StringVar(&o.jobs, "jobs", "", "comma-separated job ids to subscribe to")
	flag.StringVar(&o.types, "types", "", "comma-separated event types to receive (default: all)")
	flag.StringVar(&o.lastEventID, "last-event-id", "", "resume after this event id")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: go run ./examples/go [-url URL] [-token JWT] [-jobs a,b] [-types A,B] [-last-event-id ID]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, o))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// endpoint returns the WebSocket URL for the options, resuming after
// lastEventID when it is set.
func endpoint(o options, lastEventID string) (string, error) {
	u, err := url.Parse(o.url)
	if err != nil {
		return "", fmt.Errorf("bad -url %q: %w", o.url, err)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("bad -url %q: want http(s):// or ws(s)://", o.url)
	}
	if !strings.HasSuffix(u.Path, "/ws/notifications") {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/ws/notifications"
	}
	q := url.Values{}
	if o.jobs != "" {
		q.Set("job_ids", o.jobs)
	}
	if o.types != "" {
		q.Set("event_types", o.types)
	}
	if lastEventID != "" {
		q.Set("last_event_id", lastEventID)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// run connects and reconnects until ctx ends or the server says not to
// come back, and returns the exit status.
func run(ctx context.Context, o options) int {
	last := o.lastEventID
	backoff := 500 * time.Millisecond
	for {
		u, err := endpoint(o, last)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		welcomed, code, err := session(ctx, u, o.token, &last)
		if ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "closed: %v\n", err)
			return 0
		}
		if welcomed {
			backoff = 500 * time.Millisecond
		}
		var delay time.Duration
		switch {
		case code == websocket.CloseNormalClosure:
			fmt.Fprintf(os.Stderr, "closed: %v\n", err)
			return 0
		case code >= 4000 && code < 4100:
			fmt.Fprintf(os.Stderr, "closed: %v; not reconnecting with the same token\n", err)
			return 1
		case code >= 4200 && code < 4300:
			delay = 0
		case code == websocket.CloseGoingAway:
			delay = 500*time.Millisecond + rand.N(time.Second)
		default:
			var hs *handshakeError
			if errors.As(err, &hs) && hs.status >= 400 && hs.status < 500 && hs.status != http.StatusTooManyRequests {
				// 400 (a bad parameter) or 403 (origin): retrying cannot help.
				fmt.Fprintf(os.Stderr, "refused: %v\n", err)
				return 1
			}
			delay = backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, 30*time.Second)
			if hs != nil && hs.retryAfter > delay {
				delay = hs.retryAfter
			}
		}
		if last != "" {
			fmt.Fprintf(os.Stderr, "disconnected (%v); reconnecting in %v, resuming after %s\n", err, delay.Round(time.Millisecond), last)
		} else {
			fmt.Fprintf(os.Stderr, "disconnected (%v); reconnecting in %v\n", err, delay.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(delay):
		}
	}
}

// handshakeError is a refused upgrade: the HTTP status and the server's
// JSON error.
type handshakeError struct {
	status     int
	body       string
	retryAfter time.Duration
}

func (e *handshakeError) Error() string {
	return fmt.Sprintf("HTTP %d %s", e.status, strings.TrimSpace(e.body))
}

// message is what the server sends: an event (upper-case type) or a
// control message (lower-case type).
type message struct {
	Type          string          `json:"type"`
	ID            string          `json:"id"`
	Code          string          `json:"code"`
	Message       string          `json:"message"`
	UserID        *string         `json:"user_id"`
	Authenticated bool            `json:"authenticated"`
	LastEventID   string          `json:"last_event_id"`
	OldestID      string          `json:"oldest_available_id"`
	ExpiresAt     string          `json:"expires_at"`
	Data          json.RawMessage `json:"data"`
}

func isEvent(typ string) bool { return typ != "" && typ[0] >= 'A' && typ[0] <= 'Z' }

// session runs one connection until it ends. It prints the events and
// advances *last past each one. It returns whether the welcome came, the
// close code (0 when the connection ended without a close frame) and why
// it ended.
func session(ctx context.Context, u, token string, last *string) (welcomed bool, code int, err error) {
	header := http.Header{}
	if token != "" {
		// Programs can send the header; browsers have to use ?token=.
		header.Set("Authorization", "Bearer "+token)
	}
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Proxy: http.ProxyFromEnvironment}
	conn, resp, err := dialer.DialContext(ctx, u, header)
	if err != nil {
		if resp != nil {
			he := &handshakeError{status: resp.StatusCode}
			var body struct{ Error, Message string }
			if json.NewDecoder(resp.Body).Decode(&body) == nil {
				he.body = body.Error + ": " + body.Message
			}
			if s, perr := time.ParseDuration(resp.Header.Get("Retry-After") + "s"); perr == nil {
				he.retryAfter = s
			}
			return false, 0, he
		}
		return false, 0, err
	}
	defer conn.Close()

	// Ctrl-C: say goodbye with 1000 and stop reading.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		case <-done:
		}
	}()

	_ = conn.SetReadDeadline(time.Now().Add(readTimeout))
	conn.SetPingHandler(func(appData string) error {
		_ = conn.SetReadDeadline(time.Now().Add(readTimeout))
		err := conn.WriteControl(websocket.PongMessage, []byte(appData), time.Now().Add(5*time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})

	var line bytes.Buffer
	for {
		_, raw, err := conn.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return welcomed, ce.Code, fmt.Errorf("%d %s", ce.Code, ce.Text)
			}
			return welcomed, 0, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(readTimeout))
		var m message
		if err := json.Unmarshal(raw, &m); err != nil {
			fmt.Fprintf(os.Stderr, "not JSON: %q\n", raw)
			continue
		}
		if isEvent(m.Type) {
			// Print the event as the server sent it, on one line.
			line.Reset()
			if err := json.Compact(&line, raw); err != nil {
				return welcomed, 0, err
			}
			line.WriteByte('\n')
			if _, err := os.Stdout.Write(line.Bytes()); err != nil {
				return welcomed, 0, err
			}
			*last = m.ID
			continue
		}
		switch m.Type {
		case "connected":
			welcomed = true
			who := "anonymous"
			if m.Authenticated && m.UserID != nil {
				who = "user " + *m.UserID
			}
			fmt.Fprintf(os.Stderr, "connected as %s: %s\n", who, raw)
		case "gap":
			fmt.Fprintf(os.Stderr, "gap: events after %s are no longer retained; the replay starts at %s\n", m.LastEventID, m.OldestID)
		case "token_expiring":
			fmt.Fprintf(os.Stderr, "token expiring at %s: the server closes with 4002 then (send {\"type\":\"refresh\",\"token\":...} to extend)\n", m.ExpiresAt)
		default:
			fmt.Fprintf(os.Stderr, "%s\n", raw)
		}
	}
}
