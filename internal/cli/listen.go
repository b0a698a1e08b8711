package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/event"
)

// ListenOptions configure Listen.
type ListenOptions struct {
	// Server is the base URL, such as http://127.0.0.1:3000.
	Server string
	// SSE selects Server-Sent Events (GET /api/realtime/stream) instead of
	// the WebSocket (GET /ws/notifications).
	SSE bool
	// Types and Jobs are the event_types and job_ids parameters.
	Types []string
	Jobs  []string
	// Token authenticates the connection; "" connects anonymously.
	Token string
	// Mint, when set, makes fresh tokens: a WebSocket refreshes its token
	// when the server warns that it expires, and a connection ended by an
	// expired token (4002, SSE token_expired) reconnects with a new one.
	Mint func() (string, error)
	// LastEventID resumes after this id.
	LastEventID string
	// Raw prints one raw event JSON per line; otherwise readable lines.
	Raw bool
	// Color colours readable lines.
	Color bool
	// Max ends Listen (with nil) after this many events; 0: no limit.
	Max int
	// Out receives the events; Notes the short notes about the connection
	// (connected, gap, reconnecting, ...).
	Out   io.Writer
	Notes io.Writer
	// MinBackoff and MaxBackoff bound the reconnect backoff (default 500 ms
	// and 30 s); each delay is randomized.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// IdleTimeout is how long a connection may stay silent (no event, ping
	// or keepalive) before it is considered dead; default 75 s.
	IdleTimeout time.Duration
}

// StopError is returned by Listen when the server refused the connection in
// a way that reconnecting would not fix: a 40xx close code, or a 400, 401,
// 403 or 404 answer to the handshake.
type StopError struct {
	// Code is the WebSocket close code, or 0.
	Code int
	// Status is the HTTP status of a refused handshake, or 0.
	Status int
	Err    error
}

// Error returns why listening stopped.
func (e *StopError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *StopError) Unwrap() error { return e.Err }

// Listen connects, prints every event it receives and reconnects after a
// drop with the id of the last event, until ctx is done (it then returns
// ctx.Err()), Max events were printed (nil), or the server refuses the
// connection for good (a *StopError). The first connection must succeed:
// a server that cannot be reached at all is an error, not a retry.
//
// Reconnects follow the close-code ranges of SPEC §2: 40xx stop (except an
// expired token that Mint can replace), 41xx back off, 42xx reconnect at
// once, 1001 reconnects after a short random delay; other drops back off
// exponentially. A 429 or 503 is retried after its Retry-After. A resume id
// the server does not know (a restarted server with an empty memory log
// answers 400) is dropped with a note, and listening continues with new
// events.
func Listen(ctx context.Context, o ListenOptions) error {
	if o.MinBackoff <= 0 {
		o.MinBackoff = 500 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(30*time.Second, o.MinBackoff)
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 75 * time.Second
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Notes == nil {
		o.Notes = io.Discard
	}
	l := &listener{o: o, token: o.Token, lastID: o.LastEventID}
	l.noteLastID()
	for {
		start := time.Now()
		var oc outcome
		if o.SSE {
			oc = l.sseSession(ctx)
		} else {
			oc = l.wsSession(ctx)
		}
		if oc.done {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if oc.fatal != nil {
			return oc.fatal
		}
		if oc.events > 0 || time.Since(start) >= 10*time.Second {
			l.fails, l.quick = 0, 0
		}
		if oc.forgetResume {
			l.lastID, l.haveLast = "", false
		}
		if oc.remint {
			tok, err := o.Mint()
			if err != nil {
				return &StopError{Err: fmt.Errorf("mint a new token: %w", err)}
			}
			l.token = tok
		}
		var d time.Duration
		switch oc.next {
		case nextNow:
			l.quick++
			if l.quick > 3 {
				d = l.backoff()
			}
		case nextSoon:
			d = 200*time.Millisecond + rand.N(1300*time.Millisecond)
		case nextAfter:
			d = oc.delay
			if l.fails > 0 {
				d = max(d, l.backoff())
			} else {
				l.fails++
			}
		default:
			d = l.backoff()
		}
		if oc.what != "" {
			l.notef("%s; reconnecting in %s", oc.what, d.Round(time.Millisecond))
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// listener is the state kept across the connections of one Listen.
type listener struct {
	o         ListenOptions
	token     string
	lastID    string   // sent back on reconnect
	last      event.ID // lastID parsed, to drop anything not after it
	haveLast  bool
	count     int  // events printed
	connected bool // a connection was ever established
	fails     int  // backoffs since the last healthy connection
	quick     int  // immediate reconnects since the last healthy connection
	sseRetry  time.Duration
	lastError string    // the last error message the server sent
	refreshed time.Time // when the token was last refreshed
}

// next is what to do after a connection ended.
type next int

const (
	nextBackoff next = iota // exponential backoff
	nextNow                 // reconnect at once (42xx)
	nextSoon                // after a short random delay (1001)
	nextAfter               // after outcome.delay (Retry-After, SSE retry:)
)

// outcome is how a connection ended.
type outcome struct {
	what         string // why it ended, for the note
	next         next
	delay        time.Duration
	fatal        error
	done         bool // Max events printed
	remint       bool // the token expired: mint a new one
	forgetResume bool // the server does not know lastID
	events       int  // events printed on this connection
}

func (l *listener) notef(format string, args ...any) {
	fmt.Fprintf(l.o.Notes, "listen: "+format+"\n", args...)
}

func (l *listener) noteLastID() {
	if l.lastID == "" {
		return
	}
	if id, err := event.ParseID(l.lastID); err == nil {
		l.last, l.haveLast = id, true
	}
}

// backoff returns the next exponential backoff delay, randomized.
func (l *listener) backoff() time.Duration {
	d := l.o.MinBackoff << min(l.fails, 16)
	if d > l.o.MaxBackoff || d <= 0 {
		d = l.o.MaxBackoff
	}
	l.fails++
	return d/2 + rand.N(d/2+1)
}

// query returns the connection parameters, without the token (sent in the
// Authorization header, so it stays out of URLs) and, for SSE, without the
// last id (sent as Last-Event-ID).
func (l *listener) query(withLastID bool) string {
	q := url.Values{}
	if len(l.o.Types) > 0 {
		q.Set("event_types", strings.Join(l.o.Types, ","))
	}
	if len(l.o.Jobs) > 0 {
		q.Set("job_ids", strings.Join(l.o.Jobs, ","))
	}
	if withLastID && l.lastID != "" {
		q.Set("last_event_id", l.lastID)
	}
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

func (l *listener) header() http.Header {
	h := http.Header{}
	if l.token != "" {
		h.Set("Authorization", "Bearer "+l.token)
	}
	return h
}

// event handles one event: prints it unless it is not after the last one,
// and reports whether Max is reached.
func (l *listener) event(raw []byte, streamID string, oc *outcome) (stop bool, err error) {
	var e WireEvent
	if jerr := json.Unmarshal(raw, &e); jerr != nil {
		l.notef("ignored a message that is not an event: %.120s", raw)
		return false, nil
	}
	id := e.ID
	if id == "" {
		id = streamID
	}
	if parsed, perr := event.ParseID(id); perr == nil {
		if l.haveLast && !l.last.Less(parsed) {
			return false, nil // already printed
		}
		l.last, l.haveLast = parsed, true
	}
	if err := FormatEvent(l.o.Out, raw, &e, l.o.Raw, l.o.Color); err != nil {
		return true, err
	}
	l.lastID = id
	l.count++
	oc.events++
	return l.o.Max > 0 && l.count >= l.o.Max, nil
}

// control handles a control message of either transport; send, when not
// nil, sends a message back on a WebSocket.
func (l *listener) control(name string, raw []byte, send func(any) error, oc *outcome) {
	var m struct {
		ClientID  string  `json:"client_id"`
		UserID    *string `json:"user_id"`
		ExpiresAt string  `json:"expires_at"`
		Last      string  `json:"last_event_id"`
		Oldest    string  `json:"oldest_available_id"`
		Code      string  `json:"code"`
		Message   string  `json:"message"`
		JobID     string  `json:"job_id"`
	}
	_ = json.Unmarshal(raw, &m)
	switch name {
	case "connected":
		l.connected = true
		who := "anonymous"
		if m.UserID != nil {
			who = "user " + *m.UserID
		}
		transport := "WebSocket"
		if l.o.SSE {
			transport = "SSE"
		}
		resume := ""
		if l.lastID != "" {
			resume = ", resuming after " + l.lastID
		}
		l.notef("connected (%s, %s%s)", transport, who, resume)
	case "gap":
		l.notef("gap: events after %s are no longer retained; the replay starts at %s", m.Last, m.Oldest)
	case "token_expiring":
		// A token minted for less than the server's warning period would be
		// refreshed in a loop: refresh at most once a minute.
		if send != nil && l.o.Mint != nil && time.Since(l.refreshed) >= time.Minute {
			l.refreshed = time.Now()
			tok, err := l.o.Mint()
			if err == nil {
				err = send(map[string]string{"type": "refresh", "token": tok})
			}
			if err != nil {
				l.notef("token expires at %s and could not be refreshed: %v", m.ExpiresAt, err)
				return
			}
			l.token = tok
			return
		}
		l.notef("the token expires at %s", m.ExpiresAt)
	case "refreshed":
		l.notef("token refreshed (expires at %s)", m.ExpiresAt)
	case "token_expired":
		l.notef("the token expired at %s", m.ExpiresAt)
		if l.o.Mint != nil {
			oc.remint = true
		} else {
			oc.fatal = &StopError{Err: errors.New("the token expired; get a new one (knowledgehub token) and run listen again")}
		}
	case "error":
		l.lastError = strings.TrimSpace(m.Code + ": " + m.Message)
		l.notef("server error: %s", l.lastError)
	case "subscribed", "unsubscribed", "pong":
	default:
		l.notef("%s: %.200s", name, raw)
	}
}

// refused classifies a handshake the server answered with an HTTP error.
func (l *listener) refused(resp *http.Response, endpoint string) outcome {
	apiErr := readAPIError(resp)
	stop := func() outcome {
		return outcome{fatal: &StopError{Status: apiErr.Status, Err: fmt.Errorf("%s refused the connection: %w", endpoint, apiErr)}}
	}
	switch apiErr.Status {
	case http.StatusBadRequest:
		if l.lastID != "" && mentionsResume(apiErr.Message) {
			l.notef("the server does not know event %s (%s); it may have restarted with an empty event log, so events published meanwhile may be missed; continuing with new events", l.lastID, apiErr.Message)
			return outcome{next: nextNow, forgetResume: true}
		}
		return stop()
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		oc := outcome{what: apiErr.Error(), next: nextBackoff}
		if apiErr.RetryAfter > 0 {
			oc.next, oc.delay = nextAfter, apiErr.RetryAfter
		}
		return oc
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
		return outcome{what: apiErr.Error(), next: nextBackoff}
	}
	return stop()
}

func mentionsResume(msg string) bool {
	for _, p := range []string{"last_event_id", "lastEventId", "Last-Event-ID"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// unreachable classifies a connection that failed before any HTTP answer.
func (l *listener) unreachable(err error) outcome {
	if !l.connected {
		return outcome{fatal: reachError(l.o.Server, err)}
	}
	return outcome{what: "cannot reach the server: " + shortNetError(err), next: nextBackoff}
}

func shortNetError(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// closed classifies a WebSocket close code (SPEC §2).
func (l *listener) closed(code int, reason string) outcome {
	what := fmt.Sprintf("closed by the server with %d", code)
	if reason != "" {
		what += " (" + reason + ")"
	}
	switch {
	case code == websocket.CloseAbnormalClosure:
		what = "connection lost"
		if reason != "" {
			what += " (" + reason + ")"
		}
		return outcome{what: what, next: nextBackoff}
	case code == websocket.CloseGoingAway:
		return outcome{what: what, next: nextSoon}
	case code >= 4000 && code < 4100:
		if code == 4002 && l.o.Mint != nil {
			return outcome{what: what, next: nextNow, remint: true}
		}
		msg := what
		if l.lastError != "" {
			msg += ": " + l.lastError
		}
		return outcome{fatal: &StopError{Code: code, Err: fmt.Errorf("%s; not reconnecting with the same credentials", msg)}}
	case code >= 4200 && code < 4300:
		return outcome{what: what, next: nextNow}
	}
	return outcome{what: what, next: nextBackoff}
}

// wsSession runs one WebSocket connection.
func (l *listener) wsSession(ctx context.Context) outcome {
	u, _ := url.Parse(l.o.Server + "/ws/notifications" + l.query(true))
	if u.Scheme == "https" {
		u.Scheme = "wss"
	} else {
		u.Scheme = "ws"
	}
	endpoint := u.Scheme + "://" + u.Host + u.Path
	dialer := websocket.Dialer{Proxy: http.ProxyFromEnvironment, HandshakeTimeout: 15 * time.Second}
	conn, resp, err := dialer.DialContext(ctx, u.String(), l.header())
	if err != nil {
		if ctx.Err() != nil {
			return outcome{}
		}
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return l.refused(resp, endpoint)
		}
		return l.unreachable(err)
	}
	defer conn.Close()
	l.lastError = ""
	stop := context.AfterFunc(ctx, func() {
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
		_ = conn.Close()
	})
	defer stop()

	conn.SetReadLimit(32 << 20)
	idle := l.o.IdleTimeout
	_ = conn.SetReadDeadline(time.Now().Add(idle))
	conn.SetPingHandler(func(data string) error {
		_ = conn.SetReadDeadline(time.Now().Add(idle))
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(5*time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	})
	send := func(v any) error {
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		return conn.WriteJSON(v)
	}
	var oc outcome
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			if ctx.Err() != nil {
				return outcome{}
			}
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				res := l.closed(ce.Code, ce.Text)
				res.events = oc.events
				return res
			}
			what := "connection lost: " + shortNetError(err)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				what = fmt.Sprintf("no message from the server for %s", idle)
			}
			return outcome{what: what, next: nextBackoff, events: oc.events}
		}
		_ = conn.SetReadDeadline(time.Now().Add(idle))
		if typ != websocket.TextMessage {
			continue
		}
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(msg, &head) != nil {
			l.notef("ignored a message that is not JSON: %.120s", msg)
			continue
		}
		if !event.ValidTypeName(head.Type) {
			l.control(head.Type, msg, send, &oc)
			if oc.fatal != nil {
				return oc
			}
			continue
		}
		done, werr := l.event(msg, "", &oc)
		if werr != nil {
			return outcome{fatal: werr}
		}
		if done {
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done"), time.Now().Add(time.Second))
			return outcome{done: true}
		}
	}
}

// sseClient makes SSE requests: no overall timeout (a stream is long), but
// bounded connect and response-head times.
var sseClient = &http.Client{Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	TLSHandshakeTimeout:   10 * time.Second,
	ResponseHeaderTimeout: 15 * time.Second,
	DisableCompression:    true,
}}

// activityReader calls touch on every read that returned data.
type activityReader struct {
	r     io.Reader
	touch func()
}

func (a activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.touch()
	}
	return n, err
}

// sseSession runs one Server-Sent Events stream.
func (l *listener) sseSession(ctx context.Context) outcome {
	endpoint := l.o.Server + "/api/realtime/stream"
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, endpoint+l.query(false), nil)
	if err != nil {
		return outcome{fatal: err}
	}
	req.Header = l.header()
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if l.lastID != "" {
		req.Header.Set("Last-Event-ID", l.lastID)
	}
	resp, err := sseClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return outcome{}
		}
		return l.unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return l.refused(resp, endpoint)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return outcome{fatal: &StopError{Status: resp.StatusCode, Err: fmt.Errorf("%s answered %q, not an event stream: is --server right?", endpoint, ct)}}
	}
	idle := l.o.IdleTimeout
	errIdle := fmt.Errorf("no data from the server for %s", idle)
	watchdog := time.AfterFunc(idle, func() { cancel(errIdle) })
	defer watchdog.Stop()
	rd := NewSSEReader(activityReader{resp.Body, func() { watchdog.Reset(idle) }}, l.lastID)
	var oc outcome
	for {
		ev, err := rd.Next()
		if rd.Retry > 0 {
			l.sseRetry = rd.Retry
		}
		if err != nil {
			if ctx.Err() != nil {
				return outcome{}
			}
			oc.next, oc.delay = nextAfter, l.sseRetry
			if oc.delay <= 0 {
				oc.delay = 3 * time.Second
			}
			switch {
			case oc.remint:
				oc.what, oc.next = "the stream ended: token expired", nextNow
			case context.Cause(reqCtx) == errIdle:
				oc.what, oc.next = errIdle.Error(), nextBackoff
			case err == io.EOF:
				oc.what = "the stream ended"
			default:
				oc.what, oc.next = "connection lost: "+shortNetError(err), nextBackoff
			}
			return oc
		}
		if ev.Event != "message" {
			l.control(ev.Event, []byte(ev.Data), nil, &oc)
			if oc.fatal != nil {
				return oc
			}
			continue
		}
		done, werr := l.event([]byte(ev.Data), ev.ID, &oc)
		if werr != nil {
			return outcome{fatal: werr}
		}
		if done {
			return outcome{done: true}
		}
	}
}
