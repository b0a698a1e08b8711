package security_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// env holds the nodes the hostile cases run against.
type env struct {
	def    *servertest.Node // HS256 secret, allowed origins http://allowed.example and https://*.good.example
	jwks   *servertest.Node // JWKS only (RSA "rsa", EC "ec"), iss and aud required, no secret
	mixed  *servertest.Node // secret and JWKS, no iss/aud
	small  *servertest.Node // max_subscriptions 3, max_event_bytes 1024, max_body_bytes 64 KiB, max_batch 10
	rate   *servertest.Node // connect_rate_per_ip 1 (burst 2)
	capped *servertest.Node // max_connections_per_ip 2
	hc     *http.Client
	tok    tokenSet
}

// outcome is what a hostile request got: an HTTP status or a WebSocket
// close code (101 for a connection that was welcomed, 0 for one that stays
// open after its messages), and a message: "error: message" of a JSON error
// body or of a {"type":"error"} message, or the close reason.
type outcome struct {
	code int
	msg  string
}

// hostileCase is one row of the table.
type hostileCase struct {
	name     string
	weakness string // what the row guards against
	request  string // what is sent, for people
	run      func(t *testing.T, e *env) outcome
	want     int    // status, or close code, 101 welcomed, 0 kept open
	wantMsg  string // substring of outcome.msg
}

// The pseudo codes of outcome.code.
const (
	welcomed = 101
	keptOpen = 0
)

// ---------------------------------------------------------------- runners

func wsURL(n *servertest.Node, query string) string {
	if query == "" {
		return n.WSURL
	}
	return n.WSURL + "?" + query
}

// wsHandshake dials and reports the answer: an HTTP error, the first
// error message and the close code, or the welcome.
func wsHandshake(node func(*env) *servertest.Node, query string, header http.Header) func(*testing.T, *env) outcome {
	return func(t *testing.T, e *env) outcome {
		c, resp, err := dialWS(t, wsURL(node(e), query), header)
		if err != nil {
			if resp == nil {
				t.Fatalf("dial: %v", err)
			}
			return outcome{resp.StatusCode, bodySummary(resp)}
		}
		defer c.conn.Close()
		m, err := c.next(5 * time.Second)
		if err != nil {
			t.Fatalf("first message: %v", err)
		}
		switch m["type"] {
		case "connected":
			return outcome{welcomed, fmt.Sprintf("connected user_id=%v", m["user_id"])}
		case "error":
			code, reason, err := c.closeResult(5 * time.Second)
			if err != nil {
				t.Fatalf("after %v: %v", m, err)
			}
			_ = reason
			return outcome{code, fmt.Sprintf("%v: %v", m["code"], m["message"])}
		}
		t.Fatalf("first message %v", m)
		return outcome{}
	}
}

func bodySummary(resp *http.Response) string {
	defer resp.Body.Close()
	var eb struct{ Error, Message string }
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	if json.Unmarshal(buf.Bytes(), &eb) == nil && eb.Error != "" {
		return eb.Error + ": " + eb.Message
	}
	return buf.String()
}

// sseGet opens a stream and reports the error answer or the welcome.
func sseGet(node func(*env) *servertest.Node, query string, header http.Header) func(*testing.T, *env) outcome {
	return func(t *testing.T, e *env) outcome {
		u := node(e).URL + "/api/realtime/stream"
		if query != "" {
			u += "?" + query
		}
		s, r, err := openSSE(t, e.hc, u, header)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if s == nil {
			return outcome{r.Status, r.Summary()}
		}
		defer s.Close()
		m, err := s.welcome(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return outcome{r.Status, fmt.Sprintf("connected user_id=%v", m["user_id"])}
	}
}

// httpDo sends one request.
func httpDo(node func(*env) *servertest.Node, method, pathQuery string, header http.Header, body []byte) func(*testing.T, *env) outcome {
	return func(t *testing.T, e *env) outcome {
		r := doHTTP(t, e.hc, method, node(e).URL+pathQuery, header, body)
		return outcome{r.Status, r.Summary()}
	}
}

// pub posts a raw body to the publish API.
func pub(node func(*env) *servertest.Node, ctype, key string, body []byte) func(*testing.T, *env) outcome {
	return func(t *testing.T, e *env) outcome {
		h := http.Header{}
		if ctype != "" {
			h.Set("Content-Type", ctype)
		}
		if key != "" {
			h.Set("Authorization", "Bearer "+key)
		}
		r, err := tryHTTP(e.hc, http.MethodPost, node(e).URL+"/api/realtime/events", h, body)
		if err != nil {
			return outcome{-1, "no answer: " + err.Error()}
		}
		return outcome{r.Status, r.Summary()}
	}
}

// pubNothing posts body and also checks that the log did not change.
func pubNothing(node func(*env) *servertest.Node, body []byte) func(*testing.T, *env) outcome {
	return pubNothingCT(node, "application/json", body)
}

func pubNothingCT(node func(*env) *servertest.Node, ctype string, body []byte) func(*testing.T, *env) outcome {
	return func(t *testing.T, e *env) outcome {
		n := node(e)
		before := lastID(t, e.hc, n)
		r := publishRaw(t, e.hc, n, body, ctype, servertest.PublishKey)
		if after := lastID(t, e.hc, n); after != before {
			return outcome{r.Status, fmt.Sprintf("PUBLISHED SOMETHING: last id %q -> %q (%s)", before, after, r.Summary())}
		}
		return outcome{r.Status, r.Summary()}
	}
}

// wsFrame is a message a hostile WebSocket client sends.
type wsFrame struct {
	typ    int
	data   []byte
	repeat int
}

func text(s string) wsFrame { return wsFrame{typ: websocket.TextMessage, data: []byte(s), repeat: 1} }

func (f wsFrame) times(n int) wsFrame { f.repeat = n; return f }

// wsMsgs connects (welcomed), sends the frames, then a probe (an unsubscribe
// from a job of its own). The outcome is keptOpen when the probe is answered,
// with the error messages received before; otherwise the close code and
// reason.
func wsMsgs(node func(*env) *servertest.Node, query string, frames ...wsFrame) func(*testing.T, *env) outcome {
	return func(t *testing.T, e *env) outcome {
		c, _, err := dialWS(t, wsURL(node(e), query), nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.conn.Close()
		if m, err := c.next(5 * time.Second); err != nil || m["type"] != "connected" {
			t.Fatalf("welcome: %v %v", m, err)
		}
		for _, f := range frames {
			for i := 0; i < max(f.repeat, 1); i++ {
				if err := c.writeMessage(f.typ, f.data); err != nil {
					break
				}
			}
		}
		_ = c.writeText([]byte(`{"type":"unsubscribe","job_id":"probe-job"}`))
		var errs []string
		for {
			m, err := c.next(10 * time.Second)
			if err != nil {
				code, reason, cerr := c.closeResult(5 * time.Second)
				if cerr != nil {
					t.Fatalf("no pong and no close: %v / %v", err, cerr)
				}
				return outcome{code, reason}
			}
			switch m["type"] {
			case "unsubscribed":
				if m["job_id"] == "probe-job" {
					return outcome{keptOpen, strings.Join(errs, "; ")}
				}
			case "error":
				errs = append(errs, fmt.Sprintf("%v: %v", m["code"], m["message"]))
			}
		}
	}
}

func def(e *env) *servertest.Node   { return e.def }
func jwksN(e *env) *servertest.Node { return e.jwks }
func mixed(e *env) *servertest.Node { return e.mixed }
func small(e *env) *servertest.Node { return e.small }

func q(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v.Encode()
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// tokenCase is a hostile token: which node, which token, what the server
// must say about it (the reason of SPEC §2 "<why: malformed, bad
// signature, expired, ...>").
type tokenCase struct {
	name, weakness, node, token, reason string
}

// ---------------------------------------------------------------- the table

func hostileCases(e *env) []hostileCase {
	nodes := map[string]func(*env) *servertest.Node{"default": def, "jwks": jwksN, "mixed": mixed}
	var cs []hostileCase

	// Tokens: over WebSocket an invalid token is an error message and close
	// 4001 after the upgrade; over SSE a 401 before the stream.
	for _, tc := range []tokenCase{
		{"alg none", "unsigned token accepted", "default", "hs-none", "algorithm not allowed"},
		{"alg none with kid (JWKS)", "unsigned token accepted by a public-key verifier", "jwks", "rs-none", "algorithm not allowed"},
		{"HS256 signed with the RSA public key (JWKS only)", "algorithm confusion: public key used as HMAC secret", "jwks", "rs-hs-confusion", "algorithm not allowed"},
		{"HS256 signed with the RSA public key (secret+JWKS)", "algorithm confusion when a secret is also configured", "mixed", "mixed-hs-confusion", "bad signature"},
		{"ES256 header naming the RSA kid", "key used for an algorithm of another family", "jwks", "rs-es256-with-rsa-kid", "algorithm not allowed for key"},
		{"alg swapped RS256->PS256", "signature checked under a header-chosen algorithm", "jwks", "rs-alg-swap-ps256", "algorithm not allowed for key"},
		{"RS256 on a node without JWKS", "public-key token accepted without keys", "default", "hs-rs256", "algorithm not allowed"},
		{"unknown kid", "token signed by an unknown key", "jwks", "rs-unknown-kid", "unknown key id"},
		{"forged RS256 (attacker key, real kid)", "signature not checked", "jwks", "rs-forged", "bad signature"},
		{"wrong HMAC secret", "signature not checked", "default", "hs-wrong-secret", "bad signature"},
		{"expired (HS256)", "exp ignored", "default", "hs-expired", "expired"},
		{"expired (RS256)", "exp ignored", "jwks", "rs-expired", "expired"},
		{"not yet valid (nbf)", "nbf ignored", "jwks", "rs-nbf", "not yet valid"},
		{"not yet valid (HS256 nbf)", "nbf ignored", "default", "hs-nbf", "not yet valid"},
		{"issued in the future", "iat ignored", "default", "hs-iat-future", "issued in the future"},
		{"wrong iss", "tokens of another issuer accepted", "jwks", "rs-wrong-iss", "wrong issuer"},
		{"missing iss", "iss optional when configured", "jwks", "rs-no-iss", "wrong issuer"},
		{"wrong aud", "tokens for another audience accepted", "jwks", "rs-wrong-aud", "wrong audience"},
		{"missing sub", "token without a user", "default", "hs-no-sub", "missing sub"},
		{"sub with control characters", "user id injection through sub", "default", "hs-ctl-sub", "invalid sub"},
		{"truncated HS256", "truncated signature accepted", "default", "hs-truncated", "bad signature"},
		{"truncated RS256", "truncated signature accepted", "jwks", "rs-truncated", "bad signature"},
		{"two segments", "parser confusion", "default", "hs-two-segments", "malformed"},
		{"garbage", "parser crash", "default", "garbage", "malformed"},
		{"CR/LF in token", "header/log injection through the token", "default", "crlf", "malformed"},
	} {
		tok := e.tok[tc.token]
		cs = append(cs,
			hostileCase{"ws token: " + tc.name, tc.weakness, "GET /ws/notifications?token=<" + tc.token + ">",
				wsHandshake(nodes[tc.node], q("token", tok), nil), 4001, "invalid_token: " + tc.reason},
			hostileCase{"sse token: " + tc.name, tc.weakness, "GET /api/realtime/stream?token=<" + tc.token + ">",
				sseGet(nodes[tc.node], q("token", tok), nil), 401, "invalid_token: " + tc.reason},
		)
	}
	cs = append(cs,
		hostileCase{"ws token: valid RS256 (control)", "a good IdP token refused", "GET /ws/notifications?token=<rs-valid>",
			wsHandshake(jwksN, q("token", e.tok["rs-valid"]), nil), welcomed, "user_id=alice"},
		hostileCase{"sse token: valid ES256 in Authorization (control)", "a good IdP token refused", "GET /api/realtime/stream, Authorization: Bearer <es-valid>",
			sseGet(jwksN, "", hdr("Authorization", "Bearer "+e.tok["es-valid"])), 200, "user_id=alice"},
		hostileCase{"ws token: 9 KiB token", "unbounded token parsing", "GET /ws/notifications?token=<9 KiB>",
			wsHandshake(def, q("token", e.tok["huge"]), nil), 400, "invalid_parameter: token: longer than 8192 bytes"},
		hostileCase{"sse token: 9 KiB token in Authorization", "unbounded token parsing", "GET /api/realtime/stream, Authorization: Bearer <9 KiB>",
			sseGet(def, "", hdr("Authorization", "Bearer "+e.tok["huge"])), 400, "invalid_parameter: token: longer than 8192 bytes"},
		hostileCase{"sse token: Basic scheme", "credentials in an unexpected scheme", "GET /api/realtime/stream, Authorization: Basic YTpi",
			sseGet(def, "", hdr("Authorization", "Basic YTpi")), 400, "invalid_parameter: Authorization"},
		hostileCase{"sse token: query and header", "two identities on one request", "GET /api/realtime/stream?token=A, Authorization: Bearer B",
			sseGet(def, q("token", e.tok["hs-valid"]), hdr("Authorization", "Bearer "+e.tok["hs-valid"])), 400, "both"},
		hostileCase{"ws token: refresh with an expired token", "refresh extends a session with a dead token", `{"type":"refresh","token":<hs-expired>}`,
			wsMsgs(def, q("token", e.tok["hs-valid"]), text(`{"type":"refresh","token":"`+e.tok["hs-expired"]+`"}`)), keptOpen, "invalid_token: expired"},
		hostileCase{"ws token: refresh as another user", "session hijack by refresh", `{"type":"refresh","token":<bob>}`,
			wsMsgs(def, q("token", e.tok["hs-valid"]), text(`{"type":"refresh","token":"`+mintToken("bob")+`"}`)), keptOpen, "invalid_token: token is for a different user"},
		hostileCase{"history: invalid token", "history readable with a bad token", "GET /api/realtime/events?token=garbage",
			httpDo(def, "GET", "/api/realtime/events?"+q("token", "garbage"), nil, nil), 401, "invalid_token: malformed"},
	)

	// Publish bodies.
	good := func(extra string) []byte { return []byte(`{"type":"CODE_CHANGE","data":1` + extra + `}`) }
	deepArrays := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	deepObjects := strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000)
	batch := func(n int) []byte {
		evs := make([]map[string]any, n)
		for i := range evs {
			evs[i] = map[string]any{"type": "CODE_CHANGE", "data": i}
		}
		b, _ := json.Marshal(evs)
		return b
	}
	cs = append(cs,
		hostileCase{"publish: malformed JSON", "parser crash / partial accept", `{"type":"CODE_CHANGE",`,
			pubNothing(def, []byte(`{"type":"CODE_CHANGE",`)), 400, "invalid_event"},
		hostileCase{"publish: trailing garbage", "second value smuggled after the first", `{"type":"CODE_CHANGE"} {"type":"ERROR_OCCURRED"}`,
			pubNothing(def, []byte(`{"type":"CODE_CHANGE","data":1} {"type":"ERROR_OCCURRED"}`)), 400, "after the JSON value"},
		hostileCase{"publish: trailing ] after the event", "parser differential: trailing data accepted (found by FuzzParsePublish)", `{"type":"CODE_CHANGE","data":1} ]`,
			pubNothing(def, []byte(`{"type":"CODE_CHANGE","data":1} ]`)), 400, "invalid_event"},
		hostileCase{"publish: trailing } after a batch", "parser differential: trailing data accepted (found by FuzzParsePublish)", `[{"type":"CODE_CHANGE","data":1}]}`,
			pubNothing(def, []byte(`[{"type":"CODE_CHANGE","data":1}]}`)), 400, "invalid_event"},
		hostileCase{"publish: type as number", "type confusion", `{"type":5,"data":1}`,
			pubNothing(def, []byte(`{"type":5,"data":1}`)), 400, "type: must be a string"},
		hostileCase{"publish: user_id as number", "type confusion making a private event public", `{"type":"CODE_CHANGE","user_id":42}`,
			pubNothing(def, good(`,"user_id":42`)), 400, "user_id: must be a string"},
		hostileCase{"publish: job_id as object", "type confusion", `{"type":"CODE_CHANGE","job_id":{}}`,
			pubNothing(def, good(`,"job_id":{}`)), 400, "job_id: must be a string"},
		hostileCase{"publish: data missing is null", "missing data rejected or stored as garbage", `{"type":"CODE_CHANGE"}`,
			func(t *testing.T, e *env) outcome {
				r := publishRaw(t, e.hc, e.def, []byte(`{"type":"CODE_CHANGE"}`), "application/json", servertest.PublishKey)
				var out struct{ ID string }
				_ = json.Unmarshal(r.Body, &out)
				for _, ev := range history(t, e.hc, e.def, "limit=1000") {
					if ev["id"] == out.ID {
						if d, ok := ev["data"]; !ok || d != nil {
							return outcome{r.Status, fmt.Sprintf("data = %v, want null", d)}
						}
						return outcome{r.Status, "stored with data null"}
					}
				}
				return outcome{r.Status, "not in history: " + r.Summary()}
			}, 201, "data null"},
		hostileCase{"publish: missing type", "event without a type", `{"data":1}`,
			pubNothing(def, []byte(`{"data":1}`)), 400, "type: missing (known: CODE_CHANGE"},
		hostileCase{"publish: unknown type lists known", "arbitrary (lower-case: control) types delivered", `{"type":"connected","data":1}`,
			pubNothing(def, []byte(`{"type":"connected","data":1}`)), 400, "unknown event type \"connected\" (known: CODE_CHANGE, MEMORY_CREATED, DECISION_MADE, ERROR_OCCURRED, PATTERN_DETECTED)"},
		hostileCase{"publish: invalid UTF-8", "invalid text forwarded to browsers", "body with byte 0xff in a string",
			pubNothing(def, []byte("{\"type\":\"CODE_CHANGE\",\"data\":\"\xff\"}")), 400, "not valid UTF-8"},
		hostileCase{"publish: raw NUL byte", "NUL smuggled into storage", "body with a raw 0x00 in a string",
			pubNothing(def, []byte("{\"type\":\"CODE_CHANGE\",\"data\":\"a\x00b\"}")), 400, "invalid character"},
		hostileCase{"publish: raw LF inside a string", "SSE frame split by a raw newline", "body with a raw 0x0a inside a JSON string",
			pubNothing(def, []byte("{\"type\":\"CODE_CHANGE\",\"data\":\"a\nevent: x\"}")), 400, "invalid character"},
		hostileCase{"publish: body just over the limit", "memory exhaustion by a large body", "4 MiB + 100 bytes body (max_body_bytes 4 MiB)",
			pub(def, "application/json", servertest.PublishKey, []byte(`{"type":"CODE_CHANGE","data":"`+strings.Repeat("x", 4<<20+100)+`"}`)), 413, "body_too_large"},
		hostileCase{"publish: oversized body", "memory exhaustion by a large body; client gets no answer", "5 MiB body (max_body_bytes 4 MiB)",
			pub(def, "application/json", servertest.PublishKey, []byte(`{"type":"CODE_CHANGE","data":"`+strings.Repeat("x", 5<<20)+`"}`)), 413, "body_too_large"},
		hostileCase{"publish: oversized data", "one huge event fanned out to every connection", `{"type":"CODE_CHANGE","data":"<70 KB>"}`,
			pubNothing(def, []byte(`{"type":"CODE_CHANGE","data":"`+strings.Repeat("x", 70000)+`"}`)), 413, "data_too_large"},
		hostileCase{"publish: oversized data in a batch", "batch used to bypass the data limit", `[ok, {"data":"<2 KB>"}] (max_event_bytes 1024)`,
			pubNothing(small, []byte(`[{"type":"CODE_CHANGE","data":1},{"type":"CODE_CHANGE","data":"`+strings.Repeat("x", 2000)+`"}]`)), 413, "[1].data"},
		hostileCase{"publish: 100k nested arrays", "stack exhaustion / hang in the JSON parser", "data = 100,000 nested arrays (200 KB)",
			pubNothing(def, []byte(`{"type":"CODE_CHANGE","data":`+deepArrays+`}`)), 400, "exceeded max depth"},
		hostileCase{"publish: 100k nested objects", "stack exhaustion / hang in the JSON parser", `data = {"a":{"a":... 100,000 deep`,
			pubNothing(def, []byte(`{"type":"CODE_CHANGE","data":`+deepObjects+`}`)), 400, "exceeded max depth"},
		hostileCase{"publish: invalid job_id", "job id injection", `{"type":"CODE_CHANGE","job_id":"a b/../c"}`,
			pubNothing(def, good(`,"job_id":"a b/../c"`)), 400, "job_id: \"a b/../c\" must match"},
		hostileCase{"publish: batch with one bad event", "partial batch published", `[ok, ok, {"type":"NOPE"}]`,
			pubNothing(def, []byte(`[{"type":"CODE_CHANGE","data":1},{"type":"CODE_CHANGE","data":2},{"type":"NOPE","data":3}]`)), 400, "[2].type: unknown event type"},
		hostileCase{"publish: empty batch", "empty batch answered 201 with nothing", `[]`,
			pubNothing(def, []byte(`[]`)), 400, "batch is empty"},
		hostileCase{"publish: batch too large", "unbounded batch", "11 events (max_batch 10)",
			pubNothing(small, batch(11)), 413, "batch_too_large"},
		hostileCase{"publish: nested batch", "batch of batches", `[[{"type":"CODE_CHANGE"}]]`,
			pubNothing(def, []byte(`[[{"type":"CODE_CHANGE"}]]`)), 400, "[0].event"},
		hostileCase{"publish: empty body", "empty body accepted", "(empty)",
			pubNothing(def, []byte{}), 400, "body is empty"},
		hostileCase{"publish: JSON null", "null accepted as an event", "null",
			pubNothing(def, []byte(`null`)), 400, "type: missing"},
		hostileCase{"publish: unknown field", "misspelled user_id makes a private event public", `{"type":"CODE_CHANGE","userid":"alice"}`,
			pubNothing(def, good(`,"userid":"alice"`)), 400, "unknown field \"userid\""},
		hostileCase{"publish: duplicate user_id key", "last-key-wins makes a different event than intended", `{"type":"CODE_CHANGE","user_id":"alice","user_id":"bob"}`,
			pub(def, "application/json", servertest.PublishKey, good(`,"user_id":"alice","user_id":"bob"`)), 201, ""},
		hostileCase{"publish: wrong Content-Type", "CSRF by a form post (text/plain)", "Content-Type: text/plain",
			pubNothingCT(def, "text/plain", good("")), 415, "unsupported_media_type"},
		hostileCase{"publish: form Content-Type", "CSRF by an HTML form", "Content-Type: application/x-www-form-urlencoded",
			pub(def, "application/x-www-form-urlencoded", servertest.PublishKey, good("")), 415, "Content-Type must be application/json"},
		hostileCase{"publish: lookalike Content-Type", "prefix match of the media type", "Content-Type: application/jsonx",
			pub(def, "application/jsonx", servertest.PublishKey, good("")), 415, "unsupported_media_type"},
		hostileCase{"publish: missing Content-Type", "sniffing", "(no Content-Type)",
			pub(def, "", servertest.PublishKey, good("")), 415, "unsupported_media_type"},
		hostileCase{"publish: missing key", "anonymous publishing", "(no Authorization)",
			pub(def, "application/json", "", good("")), 401, "unauthorized"},
		hostileCase{"publish: wrong key", "guessable key", "Authorization: Bearer wrong",
			pub(def, "application/json", "test-publish-kez", good("")), 401, "unauthorized"},
		hostileCase{"publish: key prefix", "prefix comparison of keys", "Authorization: Bearer test-publish-ke",
			pub(def, "application/json", "test-publish-ke", good("")), 401, "unauthorized"},
		hostileCase{"publish: JWT instead of key", "user token accepted as publish key", "Authorization: Bearer <valid user JWT>",
			pub(def, "application/json", e.tok["hs-valid"], good("")), 401, "unauthorized"},
		hostileCase{"publish: key in query", "key accepted from the URL (logged)", "POST /api/realtime/events?key=test-publish-key",
			httpDo(def, "POST", "/api/realtime/events?key="+servertest.PublishKey+"&token="+servertest.PublishKey, hdr("Content-Type", "application/json"), good("")), 401, "unauthorized"},
		hostileCase{"publish: bad key checked before body", "unauthenticated body parsing", "no key, 4 MiB of non-JSON",
			pub(def, "application/json", "", []byte(strings.Repeat("x", 4<<20))), 401, "unauthorized"},
		hostileCase{"publish: huge Idempotency-Key", "unbounded key stored", "Idempotency-Key: <1 KB>",
			httpDo(def, "POST", "/api/realtime/events", hdr("Content-Type", "application/json", "Authorization", "Bearer "+servertest.PublishKey, "Idempotency-Key", strings.Repeat("k", 1024)), good("")), 400, "Idempotency-Key"},
	)

	// Injection: what a publisher or a client controls must not break the
	// framing of SSE (CR/LF) or WebSocket messages.
	nasty := []any{
		"line1\nline2",
		"\r\n\r\nevent: evil\r\ndata: {\"type\":\"connected\"}\r\n\r\n",
		"\rid: 999999999999999-0\r",
		"\n\nid: 1-0\ndata: x\n\n",
		"nul\u0000byte",
		"sep\u2028\u2029\u0085",
		map[string]any{"k\nevent: x": "v\r\nretry: 1"},
		[]any{"\n", "\r", "\r\n", ": comment\n"},
	}
	cs = append(cs,
		hostileCase{"inject: CR/LF and NUL in data (SSE replay)", "SSE frame injection through event data", "8 events with CR/LF/NUL/U+2028 in data strings and keys, then GET /api/realtime/stream?last_event_id=<before>",
			injectSSE(nasty, "", ""), 200, "frames intact"},
		hostileCase{"inject: CR/LF in data (WebSocket)", "message corruption", "same 8 events, WebSocket resume",
			injectWS(nasty), welcomed, "messages intact"},
		hostileCase{"inject: private event to a user id with U+2028/U+0085", "line separators in user ids break framing", `{"user_id":"mallory\u2028\u0085"} then SSE with her token`,
			injectSSE([]any{"for mallory"}, "mallory\u2028\u0085", mintToken("mallory\u2028\u0085")), 200, "frames intact"},
		hostileCase{"inject: CR/LF in job_id", "SSE frame injection through job_id", `{"job_id":"job\r\nevent: x"}`,
			pubNothing(def, good(`,"job_id":"job\r\nevent: x"`)), 400, "job_id"},
		hostileCase{"inject: CR/LF in user_id", "SSE frame injection through user_id", `{"user_id":"bob\nevent: x"}`,
			pubNothing(def, good(`,"user_id":"bob\nevent: x"`)), 400, "user_id: must be 1 to 256 characters without control characters"},
		hostileCase{"inject: NUL in user_id", "truncation of user ids (C strings, logs)", `{"user_id":"bob\u0000admin"}`,
			pubNothing(def, good(`,"user_id":"bob\u0000admin"`)), 400, "user_id"},
		hostileCase{"inject: CR/LF in type", "SSE frame injection through type", `{"type":"CODE_CHANGE\nevent: x"}`,
			pubNothing(def, []byte(`{"type":"CODE_CHANGE\nevent: x","data":1}`)), 400, `unknown event type "CODE_CHANGE\nevent: x"`},
		hostileCase{"inject: CR/LF in last_event_id", "SSE id line injection", "GET /api/realtime/stream?last_event_id=1-0%0D%0Aevent:%20x",
			sseGet(def, q("last_event_id", "1-0\r\nevent: x"), nil), 400, "invalid_parameter: last_event_id"},
		hostileCase{"inject: CR/LF in job_ids", "SSE injection through job_ids", "GET /api/realtime/stream?job_ids=a%0Aevent:x",
			sseGet(def, q("job_ids", "a\nevent:x"), nil), 400, "invalid_parameter: job_ids"},
		hostileCase{"inject: CR/LF in event_types", "SSE injection through event_types", "GET /api/realtime/stream?event_types=CODE_CHANGE%0D%0Aevent:x",
			sseGet(def, q("event_types", "CODE_CHANGE\r\nevent:x"), nil), 400, "invalid_parameter: event_types"},
		hostileCase{"inject: CR/LF in subscribe job_id", "WebSocket job id injection", `{"type":"subscribe","job_id":"a\r\nb"}`,
			wsMsgs(def, "", text(`{"type":"subscribe","job_id":"a\r\nb"}`)), keptOpen, "bad_message: job_id \"a\\r\\nb\" is not a job id"},
		hostileCase{"inject: CR/LF in Origin echoed by CORS", "response splitting through the reflected Origin", "SSE node with sse_allowed_origins list, Origin: http://evil.example",
			func(t *testing.T, e *env) outcome {
				r := doHTTP(t, e.hc, "OPTIONS", e.small.URL+"/api/realtime/stream", hdr("Origin", "http://evil.example"), nil)
				return outcome{r.Status, "Access-Control-Allow-Origin=" + r.Header.Get("Access-Control-Allow-Origin")}
			}, 204, "Access-Control-Allow-Origin="},
	)

	// Query parameters.
	manyJobs := make([]string, 101)
	for i := range manyJobs {
		manyJobs[i] = fmt.Sprintf("job-%d", i)
	}
	for _, tr := range []struct {
		name string
		get  func(func(*env) *servertest.Node, string, http.Header) func(*testing.T, *env) outcome
		path string
	}{{"ws", wsHandshake, "/ws/notifications"}, {"sse", sseGet, "/api/realtime/stream"}} {
		cs = append(cs,
			hostileCase{tr.name + " query: duplicate token", "parameter pollution picks another identity", tr.path + "?token=A&token=B",
				tr.get(def, "token="+e.tok["hs-valid"]+"&token="+e.tok["garbage"], nil), 400, "invalid_parameter: token: given more than once"},
			hostileCase{tr.name + " query: duplicate job_ids", "parameter pollution", tr.path + "?job_ids=a&job_ids=b",
				tr.get(def, "job_ids=a&job_ids=b", nil), 400, "given more than once"},
			hostileCase{tr.name + " query: last_event_id and lastEventId", "two resume points", tr.path + "?last_event_id=1-0&lastEventId=2-0",
				tr.get(def, "last_event_id=1-0&lastEventId=2-0", nil), 400, "lastEventId: given together with last_event_id"},
			hostileCase{tr.name + " query: huge event_types", "unbounded list parsing", tr.path + "?event_types=<5 KB>",
				tr.get(def, q("event_types", strings.Repeat("CODE_CHANGE,", 450)), nil), 400, "event_types: longer than 4096 bytes"},
			hostileCase{tr.name + " query: malformed percent-encoding", "decoder confusion", tr.path + "?event_types=%zz",
				tr.get(def, "event_types=%zz", nil), 400, "invalid_parameter: query: malformed query string"},
			hostileCase{tr.name + " query: bad last_event_id", "resume from an arbitrary position", tr.path + "?last_event_id=-1",
				tr.get(def, "last_event_id=-1", nil), 400, "invalid_parameter: last_event_id"},
			hostileCase{tr.name + " query: last_event_id with leading zero", "two spellings of one id", tr.path + "?last_event_id=01-0",
				tr.get(def, "last_event_id=01-0", nil), 400, "not an event id"},
			hostileCase{tr.name + " query: last_event_id never issued", "resume from the future skips events", tr.path + "?last_event_id=99999999999999-0",
				tr.get(def, "last_event_id=99999999999999-0", nil), 400, "never issued"},
			hostileCase{tr.name + " query: last_event_id overflow", "integer overflow", tr.path + "?last_event_id=18446744073709551616-0",
				tr.get(def, "last_event_id=18446744073709551616-0", nil), 400, "not an event id"},
			hostileCase{tr.name + " query: too many job_ids", "unbounded subscriptions", tr.path + "?job_ids=<101 jobs>",
				tr.get(def, q("job_ids", strings.Join(manyJobs, ",")), nil), 400, "101 jobs, at most 100"},
			hostileCase{tr.name + " query: invalid job id", "job id injection", tr.path + "?job_ids=ok,../etc",
				tr.get(def, q("job_ids", "ok,../etc"), nil), 400, "job_ids: \"../etc\" is not a job id"},
			hostileCase{tr.name + " query: unknown event_types", "filter silently ignored", tr.path + "?event_types=CODE_CHANGE,code_change",
				tr.get(def, q("event_types", "CODE_CHANGE,code_change"), nil), 400, "unknown event type \"code_change\" (known: CODE_CHANGE"},
			hostileCase{tr.name + " query: 200 KB unknown parameter", "huge request line", tr.path + "?x=<200 KB>",
				tr.get(def, "x="+strings.Repeat("a", 200<<10), nil), 431, "headers_too_large"},
		)
	}
	cs = append(cs,
		hostileCase{"sse query: Last-Event-ID header never issued", "resume from the future", "GET /api/realtime/stream, Last-Event-ID: 99999999999999-0",
			sseGet(def, "", hdr("Last-Event-ID", "99999999999999-0")), 400, "Last-Event-ID"},
		hostileCase{"history query: bad after", "arbitrary read position", "GET /api/realtime/events?after=x",
			httpDo(def, "GET", "/api/realtime/events?after=x", nil, nil), 400, "after"},
		hostileCase{"history query: limit too large", "unbounded read", "GET /api/realtime/events?limit=100000",
			httpDo(def, "GET", "/api/realtime/events?limit=100000", nil, nil), 400, "limit: want 1 to 1000"},
		hostileCase{"history query: negative limit", "negative slice bounds", "GET /api/realtime/events?limit=-1",
			httpDo(def, "GET", "/api/realtime/events?limit=-1", nil, nil), 400, "limit"},
		hostileCase{"history: anonymous never sees private events", "private events leak through history", `publish {"user_id":"alice"}, GET /api/realtime/events (no token), then with bob's token`,
			func(t *testing.T, e *env) outcome {
				id := mustPublish(t, e.hc, e.def, map[string]any{"type": "DECISION_MADE", "data": "secret", "user_id": "alice"})
				for _, tok := range []string{"", mintToken("bob")} {
					for _, ev := range history(t, e.hc, e.def, q("limit", "1000", "token", tok)) {
						if ev["id"] == id {
							return outcome{200, "LEAKED to token " + tok}
						}
					}
				}
				for _, ev := range history(t, e.hc, e.def, q("limit", "1000", "token", e.tok["hs-valid"])) {
					if ev["id"] == id {
						return outcome{200, "visible to alice only"}
					}
				}
				return outcome{200, "not visible to alice"}
			}, 200, "visible to alice only"},
	)

	// Origins (WebSocket only; default allowed: http://allowed.example and
	// https://*.good.example).
	for _, o := range []struct {
		origin, why string
		want        int
	}{
		{"http://evil.example", "cross-site WebSocket hijacking", 403},
		{"null", "sandboxed iframe / file: page", 403},
		{"http://allowed.example.evil.com", "suffix lookalike", 403},
		{"http://evilallowed.example", "prefix lookalike", 403},
		{"https://allowed.example", "scheme change", 403},
		{"http://allowed.example:8080", "port change", 403},
		{"http://allowed.example/", "path appended", 403},
		{"http://user@allowed.example", "userinfo", 403},
		{"https://good.example", "wildcard matching its apex", 403},
		{"https://evilgood.example", "wildcard suffix without a dot", 403},
		{"http://app.good.example", "wildcard with another scheme", 403},
		{"https://app.good.example.evil.com", "wildcard lookalike", 403},
		{"https://xn--allowed-example.evil", "punycode lookalike", 403},
		{"http://allowed.example\x00.evil", "NUL truncation", 403},
		{"HTTP://ALLOWED.EXAMPLE:80", "case and default port (allowed: control)", welcomed},
		{"https://deep.app.good.example", "multi-label wildcard (allowed: control)", welcomed},
	} {
		want := "origin_not_allowed"
		if o.want == welcomed {
			want = "connected"
		}
		shown := strings.ReplaceAll(o.origin, "\x00", `\0`)
		cs = append(cs, hostileCase{"origin: " + shown, o.why, "GET /ws/notifications, Origin: " + shown,
			wsHandshake(def, "", hdr("Origin", o.origin)), o.want, want})
	}

	// WebSocket messages.
	cs = append(cs,
		hostileCase{"ws msg: binary frame", "binary payload parsed as JSON", `binary {"type":"ping"}`,
			wsMsgs(def, "", wsFrame{typ: websocket.BinaryMessage, data: []byte(`{"type":"ping"}`), repeat: 1}), keptOpen, "bad_message: binary messages are not accepted"},
		hostileCase{"ws msg: invalid UTF-8 text", "invalid text processed (SPEC: malformed -> bad_message, stays open)", "text frame {\"type\":\"ping\\xff\"}",
			wsMsgs(def, "", text("{\"type\":\"ping\xff\"}")), keptOpen, "bad_message: message is not valid UTF-8"},
		hostileCase{"ws msg: not JSON", "parser crash", "text frame `nonsense`",
			wsMsgs(def, "", text("nonsense")), keptOpen, "bad_message: message is not a JSON object"},
		hostileCase{"ws msg: unknown type", "unknown commands executed", `{"type":"publish","data":1}`,
			wsMsgs(def, "", text(`{"type":"publish","data":1}`)), keptOpen, "bad_message: unknown message type \"publish\""},
		hostileCase{"ws msg: type as number", "type confusion", `{"type":1}`,
			wsMsgs(def, "", text(`{"type":1}`)), keptOpen, "bad_message: type must be a string"},
		hostileCase{"ws msg: deep nesting within the size limit", "stack exhaustion", `{"type":"ping","x":[[[[...2000 deep]]]]}`,
			wsMsgs(def, "", text(`{"type":"ping","x":`+strings.Repeat("[", 2000)+strings.Repeat("]", 2000)+`}`)), keptOpen, ""},
		hostileCase{"ws msg: subscribe to an invalid job id", "job id injection", `{"type":"subscribe","job_id":"../../x"}`,
			wsMsgs(def, "", text(`{"type":"subscribe","job_id":"../../x"}`)), keptOpen, "bad_message: job_id \"../../x\" is not a job id"},
		hostileCase{"ws msg: subscribe without job id", "empty job id subscribes to everything", `{"type":"subscribe"}`,
			wsMsgs(def, "", text(`{"type":"subscribe"}`)), keptOpen, "bad_message: subscribe needs job_id"},
		hostileCase{"ws msg: too many subscriptions", "unbounded subscriptions per connection", `4 x subscribe (max_subscriptions 3)`,
			wsMsgs(small, "", text(`{"type":"subscribe","job_id":"j1"}`), text(`{"type":"subscribe","job_id":"j2"}`), text(`{"type":"subscribe","job_id":"j3"}`), text(`{"type":"subscribe","job_id":"j4"}`)),
			keptOpen, "too_many_subscriptions: too many job subscriptions: at most 3 per connection"},
		hostileCase{"ws msg: oversized message", "memory exhaustion by a large frame", "text frame of 5000 bytes (max_message_bytes 4096)",
			wsMsgs(def, "", text(`{"type":"ping","pad":"`+strings.Repeat("x", 5000)+`"}`)), 1009, ""},
		hostileCase{"ws msg: flood", "CPU exhaustion by message rate", "200 pings at once (message_rate 20, burst 40)",
			wsMsgs(def, "", text(`{"type":"ping"}`).times(200)), 1008, "message rate exceeded"},
		hostileCase{"ws msg: too many bad messages", "error-path abuse", "11 malformed messages (10 tolerated per 10 s)",
			wsMsgs(def, "", text(`nonsense`).times(11)), 1008, "too many bad messages"},
		hostileCase{"ws msg: refresh without token", "refresh to anonymous", `{"type":"refresh"}`,
			wsMsgs(def, "", text(`{"type":"refresh"}`)), keptOpen, "bad_message: refresh needs token"},
		hostileCase{"ws msg: anonymous refresh to a user", "anonymous connection upgraded to a user", `anonymous, {"type":"refresh","token":<alice>}`,
			wsMsgs(def, "", text(`{"type":"refresh","token":"`+e.tok["hs-valid"]+`"}`)), keptOpen, "invalid_token: token is for a different user"},
	)

	// HTTP.
	cs = append(cs,
		hostileCase{"http: PUT on the publish API", "method confusion", "PUT /api/realtime/events",
			httpDo(def, "PUT", "/api/realtime/events", hdr("Authorization", "Bearer "+servertest.PublishKey, "Content-Type", "application/json"), good("")), 405, "method_not_allowed"},
		hostileCase{"http: DELETE on the stream", "method confusion", "DELETE /api/realtime/stream",
			httpDo(def, "DELETE", "/api/realtime/stream", nil, nil), 405, "method_not_allowed"},
		hostileCase{"http: POST on the WebSocket endpoint", "handshake without upgrade", "POST /ws/notifications",
			httpDo(def, "POST", "/ws/notifications", nil, nil), 400, "not_websocket"},
		hostileCase{"http: GET on the WebSocket endpoint without Upgrade", "handshake without upgrade", "GET /ws/notifications",
			httpDo(def, "GET", "/ws/notifications", nil, nil), 400, "not_websocket"},
		hostileCase{"http: rate limit", "connection flood from one IP", "3 SSE streams at once (connect_rate_per_ip 1, burst 2)",
			func(t *testing.T, e *env) outcome {
				var last httpResult
				for i := 0; i < 3; i++ {
					s, r, err := openSSE(t, e.hc, e.rate.URL+"/api/realtime/stream", nil)
					if err != nil {
						t.Fatal(err)
					}
					if s != nil {
						defer s.Close()
					}
					last = r
				}
				return outcome{last.Status, last.Summary() + " Retry-After=" + last.Header.Get("Retry-After")}
			}, 429, "connect_rate_per_ip"},
		hostileCase{"http: connection cap per IP", "connection exhaustion from one IP", "3 WebSockets (max_connections_per_ip 2)",
			func(t *testing.T, e *env) outcome {
				for i := 0; i < 2; i++ {
					c, _, err := dialWS(t, e.capped.WSURL, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer c.conn.Close()
					if _, err := c.next(5 * time.Second); err != nil {
						t.Fatal(err)
					}
				}
				_, resp, err := dialWS(t, e.capped.WSURL, nil)
				if err == nil || resp == nil {
					return outcome{welcomed, "third connection admitted"}
				}
				ra := resp.Header.Get("Retry-After")
				return outcome{resp.StatusCode, bodySummary(resp) + " Retry-After=" + ra}
			}, 429, "max_connections_per_ip"},
		hostileCase{"http: slowloris partial header", "a half-sent request blocks the server", "TCP: `GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: a` and wait; meanwhile GET /healthz, WebSocket, publish",
			slowlorisOthersServed, 200, "others served"},
		hostileCase{"http: oversized request header", "memory exhaustion by an unbounded header (net/http stops at 1 MiB: 431)", "GET /healthz with a 2 MiB header",
			hugeHeader(2 << 20), 431, "rejected"},
	)
	return cs
}

type runFn = func(t *testing.T, e *env) outcome

// injectSSE publishes events with the given data values (private to user
// when set), then resumes an SSE stream (with token) from before them and
// checks that the stream holds exactly the expected frames.
func injectSSE(data []any, user, token string) runFn {
	return func(t *testing.T, e *env) outcome {
		marker := mustPublish(t, e.hc, e.def, map[string]any{"type": "CODE_CHANGE", "data": "marker"})
		var ids []string
		for _, d := range data {
			ev := map[string]any{"type": "ERROR_OCCURRED", "data": d}
			if user != "" {
				ev["user_id"] = user
			}
			ids = append(ids, mustPublish(t, e.hc, e.def, ev))
		}
		s, r, err := openSSE(t, e.hc, e.def.URL+"/api/realtime/stream?"+q("last_event_id", marker, "token", token), nil)
		if err != nil || s == nil {
			t.Fatalf("open: %v %s", err, r.Summary())
		}
		defer s.Close()
		var problems []string
		if _, err := s.welcome(5 * time.Second); err != nil {
			problems = append(problems, err.Error())
		}
		for i, id := range ids {
			f, err := s.next(5 * time.Second)
			if err != nil {
				problems = append(problems, fmt.Sprintf("event %d: %v", i, err))
				break
			}
			if len(f.Lines) != 2 || f.Lines[0] != "id: "+id || !strings.HasPrefix(f.Lines[1], "data: {") || f.Event != "" {
				problems = append(problems, fmt.Sprintf("frame %d = %q", i, f.Lines))
				continue
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(f.Data), &got); err != nil {
				problems = append(problems, fmt.Sprintf("frame %d data: %v", i, err))
				continue
			}
			want := roundTrip(data[i])
			if got["id"] != id || !reflect.DeepEqual(got["data"], want) || got["type"] != "ERROR_OCCURRED" {
				problems = append(problems, fmt.Sprintf("frame %d = %v, want data %#v", i, got, want))
			}
			if user != "" && got["user_id"] != user {
				problems = append(problems, fmt.Sprintf("frame %d user_id %q", i, got["user_id"]))
			}
		}
		if f, err := s.next(300 * time.Millisecond); err == nil {
			problems = append(problems, fmt.Sprintf("extra frame %q", f.Lines))
		}
		raw := s.Raw()
		if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
			body := raw[i+4:]
			if bytes.IndexByte(body, '\r') >= 0 {
				problems = append(problems, "raw CR in the stream body")
			}
			if bytes.IndexByte(body, 0) >= 0 {
				problems = append(problems, "raw NUL in the stream body")
			}
			sc := bufio.NewScanner(bytes.NewReader(body))
			sc.Buffer(nil, 1<<20)
			events := 0
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "event:") {
					events++
				}
			}
			if events != 1 {
				problems = append(problems, fmt.Sprintf("%d event: lines, want 1 (connected)", events))
			}
		}
		if len(problems) > 0 {
			return outcome{r.Status, strings.Join(problems, "; ")}
		}
		return outcome{r.Status, "frames intact"}
	}
}

// injectWS publishes the data values and resumes a WebSocket from before
// them: every message must be the event, intact.
func injectWS(data []any) runFn {
	return func(t *testing.T, e *env) outcome {
		marker := mustPublish(t, e.hc, e.def, map[string]any{"type": "CODE_CHANGE", "data": "marker"})
		var ids []string
		for _, d := range data {
			ids = append(ids, mustPublish(t, e.hc, e.def, map[string]any{"type": "ERROR_OCCURRED", "data": d}))
		}
		c, _, err := dialWS(t, wsURL(e.def, q("last_event_id", marker)), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.conn.Close()
		if m, err := c.next(5 * time.Second); err != nil || m["type"] != "connected" {
			t.Fatalf("welcome %v %v", m, err)
		}
		var problems []string
		for i, id := range ids {
			m, err := c.next(5 * time.Second)
			if err != nil {
				problems = append(problems, fmt.Sprintf("event %d: %v", i, err))
				break
			}
			if m["id"] != id || !reflect.DeepEqual(m["data"], roundTrip(data[i])) {
				problems = append(problems, fmt.Sprintf("message %d = %v", i, m))
			}
		}
		if m, err := c.next(300 * time.Millisecond); err == nil {
			problems = append(problems, fmt.Sprintf("extra message %v", m))
		}
		if len(problems) > 0 {
			return outcome{welcomed, strings.Join(problems, "; ")}
		}
		return outcome{welcomed, "messages intact"}
	}
}

func roundTrip(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// slowlorisOthersServed holds a half-sent request open and checks that the
// server keeps serving everyone else meanwhile.
func slowlorisOthersServed(t *testing.T, e *env) outcome {
	var slow []interface{ Close() error }
	for i := 0; i < 20; i++ {
		c := rawConn(t, e.def)
		if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, c)
	}
	defer func() {
		for _, c := range slow {
			_ = c.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond)
	if r := doHTTP(t, e.hc, "GET", e.def.URL+"/healthz", nil, nil); r.Status != 200 {
		return outcome{r.Status, "healthz: " + r.Summary()}
	}
	c, _, err := dialWS(t, e.def.WSURL, nil)
	if err != nil {
		return outcome{-1, "websocket: " + err.Error()}
	}
	defer c.conn.Close()
	if m, err := c.next(5 * time.Second); err != nil || m["type"] != "connected" {
		return outcome{-1, fmt.Sprintf("websocket welcome %v %v", m, err)}
	}
	id := mustPublish(t, e.hc, e.def, map[string]any{"type": "CODE_CHANGE", "data": "during slowloris"})
	if m, err := c.next(5 * time.Second); err != nil || m["id"] != id {
		return outcome{-1, fmt.Sprintf("event %v %v", m, err)}
	}
	return outcome{200, "others served"}
}

// hugeHeader sends a request with a size-byte header value. A server that
// bounds headers answers 431 (or 400) or closes the connection: "rejected".
func hugeHeader(size int) runFn {
	return func(t *testing.T, e *env) outcome {
		c := rawConn(t, e.def)
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		go func() {
			w := bufio.NewWriterSize(c, 64<<10)
			_, _ = w.WriteString("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
			chunk := bytes.Repeat([]byte("a"), 64<<10)
			for n := 0; n < size; n += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
			_, _ = w.WriteString("\r\n\r\n")
			_ = w.Flush()
		}()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return outcome{431, "rejected (connection closed: " + err.Error() + ")"}
		}
		resp.Body.Close()
		if resp.StatusCode == 431 || resp.StatusCode == 400 {
			return outcome{431, fmt.Sprintf("rejected (%d)", resp.StatusCode)}
		}
		return outcome{resp.StatusCode, fmt.Sprintf("a %d-byte header was accepted", size)}
	}
}

func startEnv(t *testing.T) *env {
	t.Helper()
	jwksFile := writeJWKS(t)
	e := &env{hc: newHTTPClient(t), tok: makeTokens(t)}
	e.def = start(t)
	e.jwks = start(t, "--jwt-secret", "", "--jwks", jwksFile, "--jwt-issuer", testIssuer, "--jwt-audience", testAudience)
	e.mixed = start(t, "--jwks", jwksFile)
	e.small = start(t, "--max-subscriptions", "3", "--max-event-bytes", "1024", "--max-body-bytes", "65536", "--max-batch", "10",
		"--sse-allowed-origins", "http://allowed.example")
	e.rate = servertest.Start(t, "--connect-rate-per-ip", "1")
	e.capped = start(t, "--max-connections-per-ip", "2")
	return e
}

// TestHostileInput runs the table of hostile requests (SECURITY.md).
func TestHostileInput(t *testing.T) {
	e := startEnv(t)
	cases := hostileCases(e)
	if len(cases) < 60 {
		t.Fatalf("only %d cases", len(cases))
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.name] {
			t.Fatalf("duplicate case name %q", c.name)
		}
		seen[c.name] = true
		t.Run(c.name, func(t *testing.T) {
			got := c.run(t, e)
			if got.code != c.want || !strings.Contains(got.msg, c.wantMsg) {
				t.Errorf("%s\n  request: %s\n  got:  %d %q\n  want: %d, message containing %q", c.weakness, c.request, got.code, got.msg, c.want, c.wantMsg)
			}
		})
	}
	// Every node survived: it still answers.
	for _, n := range []*servertest.Node{e.def, e.jwks, e.mixed, e.small, e.rate, e.capped} {
		if r := doHTTP(t, e.hc, "GET", n.URL+"/healthz", nil, nil); r.Status != 200 {
			t.Errorf("%s: healthz %d after the hostile cases", n.URL, r.Status)
		}
		if p := n.Server.Metrics(); p == nil {
			t.Errorf("no metrics")
		}
	}
	if os.Getenv("SECURITY_TABLE") != "" {
		printTable(cases)
	}
}

// printTable writes the table as Markdown (SECURITY_TABLE=1), to keep
// SECURITY.md in step by hand.
func printTable(cases []hostileCase) {
	fmt.Println("| # | case | guards against | request | expected |")
	fmt.Println("|---|---|---|---|---|")
	for i, c := range cases {
		want := fmt.Sprint(c.want)
		switch {
		case c.want == welcomed && strings.HasPrefix(c.name, "ws"), c.want == welcomed && strings.HasPrefix(c.name, "origin"):
			want = "101, welcome"
		case c.want == keptOpen:
			want = "error message, connection stays open"
		case c.want >= 1000:
			want = "close " + want
		}
		if c.wantMsg != "" {
			want += ": `" + strings.ReplaceAll(c.wantMsg, "|", "\\|") + "`"
		}
		req := strings.ReplaceAll(strings.ReplaceAll(c.request, "|", "\\|"), "\n", " ")
		fmt.Printf("| %d | %s | %s | `%s` | %s |\n", i+1, c.name, c.weakness, strings.ReplaceAll(req, "`", "'"), want)
	}
}

// TestSecurityDocListsEveryCase keeps SECURITY.md in step with the table.
func TestSecurityDocListsEveryCase(t *testing.T) {
	doc, err := os.ReadFile("../../SECURITY.md")
	if err != nil {
		t.Fatalf("SECURITY.md: %v", err)
	}
	e := &env{tok: makeTokens(t)}
	for _, c := range hostileCases(e) {
		if !bytes.Contains(doc, []byte("| "+c.name+" |")) {
			t.Errorf("SECURITY.md does not list %q", c.name)
		}
	}
}
