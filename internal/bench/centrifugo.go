package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// --target centrifugo: the same scenarios (idle, fanout) against a
// Centrifugo v6 server, so that both servers are measured by the same tool
// in the same way.
//
// Connections speak Centrifugo's bidirectional JSON protocol (v2) on
// /connection/websocket: the bench sends the connect and the subscribe
// commands in one frame,
//
//	{"id":1,"connect":{"token":"..."}}
//	{"id":2,"subscribe":{"channel":"bench"}}
//
// and the connect reply is the "welcome" (dial→welcome latency); the
// connection counts as connected once the subscribe reply came too.
// Server frames hold one or more JSON objects separated by newlines
// (Centrifugo batches replies and pushes; it removes newlines from the
// publication data): replies {"id":N,...}, pushes {"push":{...}} and pings
// {}, which the bench answers with {} as protocol v2 requires.
//
// Events are published with the HTTP API: POST /api/publish
// {"channel","data","idempotency_key"}, and POST /api/batch
// {"commands":[{"publish":{...}},...]} for --batch > 1, with X-API-Key.
// The data is the very event object published to KnowledgeHub (type,
// data.bench_run, bench_seq, bench_t, pad), so payloads are the same size
// and the push is parsed like our events. Centrifugo assigns no event ids:
// duplicates and losses are counted by sequence number, exactly as for
// KnowledgeHub; the order is checked on the publication offsets when the
// channel keeps history (pushes carry "offset"), otherwise on the sequence
// numbers when one publish request is in flight at a time (--concurrency 1),
// otherwise not at all (a note says so). The idempotency key of each event
// makes retried publish requests safe, as the Idempotency-Key header does
// for KnowledgeHub.

// The Prometheus series the result reads, per target.
const (
	khConnectionsMetric = "knowledgehub_connections"
	khDeliveredMetric   = "knowledgehub_events_delivered_total"
	cfConnectionsMetric = "centrifugo_node_num_clients"
	cfDeliveredMetric   = `centrifugo_transport_messages_sent{frame_type="push_publication"}`
)

// cfKind is the kind of one server message of the JSON protocol.
type cfKind uint8

const (
	cfUnknown cfKind = iota
	cfPing           // {}: answer {}
	cfReply          // {"id":N,...}: the reply to command N
	cfPush           // {"push":{...}}: a publication, join, leave, ...
)

// cfNextMessage splits the first message off a frame of the JSON
// protocol, where messages are separated by newlines; blank lines are
// skipped. It returns nil, nil when the frame holds no more.
func cfNextMessage(frame []byte) (msg, rest []byte) {
	for len(frame) > 0 {
		i := bytes.IndexByte(frame, '\n')
		if i < 0 {
			msg, frame = frame, nil
		} else {
			msg, frame = frame[:i], frame[i+1:]
		}
		msg = bytes.TrimSpace(msg)
		if len(msg) > 0 {
			return msg, frame
		}
	}
	return nil, nil
}

// cfClassify tells what one message is; for a reply, its command id.
// Centrifugo writes "id" first in replies and "push" alone in pushes.
func cfClassify(msg []byte) (cfKind, int64) {
	switch {
	case isEmptyObject(msg):
		return cfPing, 0
	case bytes.HasPrefix(msg, []byte(`{"id":`)):
		id, ok := jsonInt(msg[:min(len(msg), 32)], []byte(`"id":`))
		if !ok {
			return cfUnknown, 0
		}
		return cfReply, id
	case bytes.HasPrefix(msg, []byte(`{"push":`)):
		return cfPush, 0
	}
	return cfUnknown, 0
}

func isEmptyObject(msg []byte) bool {
	if len(msg) < 2 || msg[0] != '{' || msg[len(msg)-1] != '}' {
		return false
	}
	return len(bytes.TrimSpace(msg[1:len(msg)-1])) == 0
}

// cfReplyError is the error of a reply, nil if it succeeded.
type cfReplyError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func cfParseReply(msg []byte) (*cfReplyError, error) {
	var m struct {
		Error *cfReplyError `json:"error"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		return nil, fmt.Errorf("reply %.200s: %v", msg, err)
	}
	return m.Error, nil
}

// cfPushKind names a push that is not a publication: "join", "leave",
// "unsubscribe", ... ("push" if it cannot be told).
func cfPushKind(msg []byte) string {
	var m struct {
		Push map[string]json.RawMessage `json:"push"`
	}
	if json.Unmarshal(msg, &m) == nil {
		for k := range m.Push {
			if k != "channel" {
				return "push " + k
			}
		}
	}
	return "push"
}

// cfParsePublication finds the bench fields of a publication push of this
// run (tag is `"bench_run":"<run>"`), and its offset when the channel keeps
// history (0 otherwise).
func cfParsePublication(msg, tag []byte) (taggedEvent, bool) {
	var ev taggedEvent
	if !bytes.Contains(msg, []byte(`"pub":`)) || !bytes.Contains(msg, tag) {
		return ev, false
	}
	var ok bool
	if ev.Seq, ok = jsonInt(msg, []byte(`"bench_seq":`)); !ok {
		return ev, false
	}
	if ev.T, ok = jsonInt(msg, []byte(`"bench_t":`)); !ok {
		return ev, false
	}
	// "offset" follows "data" in the publication.
	if i := bytes.LastIndex(msg, []byte(`"offset":`)); i >= 0 {
		if off, ok := jsonInt(msg[i:], []byte(`"offset":`)); ok && off > 0 {
			ev.Offset = uint64(off)
		}
	}
	return ev, true
}

// cfConnectFrame is the first frame of a connection: connect (with the
// token, if any) and subscribe, pipelined.
func cfConnectFrame(token, channel string) []byte {
	b := make([]byte, 0, 96+len(token)+len(channel))
	b = append(b, `{"id":1,"connect":{`...)
	if token != "" {
		b = append(b, `"token":`...)
		b = strconv.AppendQuote(b, token)
	}
	b = append(b, "}}\n"...)
	b = append(b, `{"id":2,"subscribe":{"channel":`...)
	b = strconv.AppendQuote(b, channel)
	return append(b, "}}"...)
}

var cfPong = []byte("{}")

// dialCentrifugo opens connection idx to Centrifugo, connects and
// subscribes it; the reader goroutine is not started. Messages that came
// after the subscribe reply in the same frame are left in c.buf for the
// reader (c.pending).
func (r *runner) dialCentrifugo(ctx context.Context, idx int, p dialParams) (*client, error) {
	c := &client{idx: idx, kind: kindWS, r: r, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	ws, err := r.dialWS(ctx, idx, r.wsURL)
	if err != nil {
		return nil, err
	}
	c.ws = ws
	c.nc = ws.NetConn()
	fail := func(err error) (*client, error) {
		_ = c.nc.Close()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			code := "ws close " + strconv.Itoa(ce.Code)
			if ce.Text != "" {
				code += " " + ce.Text
			}
			return nil, &connError{Code: code, Message: "closed during the handshake", Transport: kindWS}
		}
		return nil, err
	}
	_ = ws.SetWriteDeadline(deadline)
	if err := ws.WriteMessage(websocket.TextMessage, cfConnectFrame(p.token, r.cfg.Channel)); err != nil {
		return fail(fmt.Errorf("sending connect: %w", err))
	}
	_ = ws.SetReadDeadline(deadline)
	connected, subscribed := false, false
	for !subscribed {
		_, rd, err := ws.NextReader()
		if err == nil {
			c.buf, err = readAllInto(c.buf[:0], rd)
		}
		if err != nil {
			return fail(fmt.Errorf("waiting for the connect and subscribe replies: %w", err))
		}
		frame := c.buf
		for !subscribed {
			var msg []byte
			if msg, frame = cfNextMessage(frame); msg == nil {
				break
			}
			kind, id := cfClassify(msg)
			switch {
			case kind == cfPing:
				if err := ws.WriteMessage(websocket.TextMessage, cfPong); err != nil {
					return fail(err)
				}
			case kind == cfReply && (id == 1 || id == 2):
				rerr, err := cfParseReply(msg)
				if err != nil {
					return fail(err)
				}
				cmd := "connect"
				if id == 2 {
					cmd = "subscribe"
				}
				if rerr != nil {
					return fail(&connError{Code: strconv.Itoa(rerr.Code) + " " + rerr.Message, Message: cmd + " refused", Transport: kindWS})
				}
				if id == 1 {
					connected = true
					c.welcomedAt = time.Now().UnixNano()
				} else {
					if !connected {
						return fail(errors.New("subscribe reply before the connect reply"))
					}
					subscribed = true
				}
			default:
				return fail(fmt.Errorf("unexpected message before the subscribe reply: %.200s", msg))
			}
		}
		if subscribed && len(bytes.TrimSpace(frame)) > 0 {
			n := copy(c.buf, frame)
			c.buf = c.buf[:n]
			c.pending = true
		}
	}
	_ = ws.SetReadDeadline(time.Time{})
	_ = ws.SetWriteDeadline(time.Time{})
	return c, nil
}

// dispatchCentrifugo routes the messages of one frame: publications of
// this run to onEvent, pings answered, other pushes and replies counted as
// control messages, anything else as foreign.
func (r *runner) dispatchCentrifugo(c *client, frame []byte, now int64) {
	for {
		var msg []byte
		if msg, frame = cfNextMessage(frame); msg == nil {
			return
		}
		kind, _ := cfClassify(msg)
		switch kind {
		case cfPing:
			if !c.closing.Load() {
				_ = c.ws.WriteMessage(websocket.TextMessage, cfPong)
			}
		case cfPush:
			if ev, ok := cfParsePublication(msg, r.tag); ok {
				c.h.onEvent(c, &ev, now)
			} else if bytes.Contains(msg, []byte(`"pub":`)) {
				r.foreign.Add(1)
			} else {
				typ := cfPushKind(msg)
				r.countControl(typ)
				c.h.onControl(c, typ, msg)
			}
		case cfReply:
			r.countControl("reply")
			c.h.onControl(c, "reply", msg)
		default:
			r.foreign.Add(1)
		}
	}
}

// cfBody is a publish request of count events from seq on: a publish
// command for one event, a batch of publish commands for more. Every event
// carries its own idempotency key, so the request can be retried as is.
func (r *runner) cfBody(seq int64, count int) []byte {
	t := time.Now().UnixNano()
	key := r.run + "-" + strconv.FormatUint(rand.Uint64(), 36) + "-"
	b := make([]byte, 0, count*(r.cfg.EventSize+len(r.cfg.Channel)+80)+16)
	one := func(b []byte, k int, s int64) []byte {
		b = append(b, `{"channel":`...)
		b = strconv.AppendQuote(b, r.cfg.Channel)
		b = append(b, `,"data":`...)
		b = r.appendEvent(b, s, t)
		b = append(b, `,"idempotency_key":"`...)
		b = append(b, key...)
		b = strconv.AppendInt(b, int64(k), 10)
		return append(b, `"}`...)
	}
	if count == 1 {
		return one(b, 0, seq)
	}
	b = append(b, `{"commands":[`...)
	for k := range count {
		if k > 0 {
			b = append(b, ',')
		}
		s := seq + int64(k)
		if seq < 0 {
			s = seq
		}
		b = append(b, `{"publish":`...)
		b = one(b, k, s)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// cfPublishOnce posts body to the HTTP API and returns the offset of each
// event ("" when the channel keeps no history).
func (r *runner) cfPublishOnce(body []byte) ([]string, error) {
	batch := bytes.HasPrefix(body, []byte(`{"commands":`))
	path := "/api/publish"
	if batch {
		path = "/api/batch"
	}
	raw, status, err := r.cfAPI(path, body)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, cfHTTPError(status, raw)
	}
	type result struct {
		Offset uint64 `json:"offset"`
	}
	id := func(res *result) string {
		if res == nil || res.Offset == 0 {
			return ""
		}
		return strconv.FormatUint(res.Offset, 10)
	}
	if !batch {
		var out struct {
			Error  *cfReplyError `json:"error"`
			Result *result       `json:"result"`
		}
		if err := json.Unmarshal(raw, &out); err != nil {
			return nil, fmt.Errorf("publish answer: %v", err)
		}
		if out.Error != nil {
			return nil, &apiError{Status: status, Code: "error " + strconv.Itoa(out.Error.Code), Message: out.Error.Message}
		}
		return []string{id(out.Result)}, nil
	}
	var out struct {
		Error   *cfReplyError `json:"error"`
		Replies []struct {
			Error   *cfReplyError `json:"error"`
			Publish *result       `json:"publish"`
		} `json:"replies"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("batch answer: %v", err)
	}
	if out.Error != nil {
		return nil, &apiError{Status: status, Code: "error " + strconv.Itoa(out.Error.Code), Message: out.Error.Message}
	}
	ids := make([]string, 0, len(out.Replies))
	var first *cfReplyError
	failed := 0
	for _, rep := range out.Replies {
		if rep.Error != nil {
			failed++
			if first == nil {
				first = rep.Error
			}
			continue
		}
		ids = append(ids, id(rep.Publish))
	}
	if first != nil {
		return nil, &apiError{Status: status, Code: "error " + strconv.Itoa(first.Code), Message: fmt.Sprintf("%s (%d of %d publish commands of the batch failed)", first.Message, failed, len(out.Replies))}
	}
	return ids, nil
}

// cfAPI posts body to a Centrifugo HTTP API method.
func (r *runner) cfAPI(path string, body []byte) (raw []byte, status int, err error) {
	req, err := http.NewRequestWithContext(r.ctx, http.MethodPost, r.baseURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.cfg.CentrifugoAPIKey != "" {
		req.Header.Set("X-API-Key", r.cfg.CentrifugoAPIKey)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	raw, err = io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, 0, err
	}
	return raw, resp.StatusCode, nil
}

func cfHTTPError(status int, raw []byte) *apiError {
	e := &apiError{Status: status, Message: strings.TrimSpace(string(raw))}
	if status == http.StatusUnauthorized {
		e.Code = "unauthorized"
		e.Message = "--centrifugo-api-key must be the server's http_api.key"
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return e
}

// cfPing checks that the server is reachable and is Centrifugo, through
// the HTTP API's info method; a scenario that publishes also needs the API
// key to be accepted.
func (r *runner) cfPing() error {
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.baseURL+"/api/info", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	if r.cfg.CentrifugoAPIKey != "" {
		req.Header.Set("X-API-Key", r.cfg.CentrifugoAPIKey)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("centrifugo %s not reachable: %v", r.cfg.Server, err)
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK && bytes.Contains(raw, []byte(`"nodes"`)):
		return nil
	case resp.StatusCode == http.StatusUnauthorized:
		if r.cfg.Scenario == "idle" && r.cfg.CentrifugoAPIKey == "" {
			return nil // reachable; idle does not publish
		}
		return fmt.Errorf("centrifugo %s: the HTTP API refused the key (401): --centrifugo-api-key (or $CENTRIFUGO_HTTP_API_KEY) must be its http_api.key", r.cfg.Server)
	}
	return fmt.Errorf("centrifugo %s: POST /api/info answered %d %.200s: not a Centrifugo v6 server, or its HTTP API is disabled", r.cfg.Server, resp.StatusCode, raw)
}

// cfWSURL is the WebSocket URL of a Centrifugo server.
func cfWSURL(hostPort, prefix string) string {
	u := url.URL{Scheme: "ws", Host: hostPort, Path: prefix + "/connection/websocket"}
	return u.String()
}
