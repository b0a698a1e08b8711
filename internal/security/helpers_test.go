// Package security_test drives real servers with hostile input, checks the
// routing rule of SPEC §1 as a property, and soaks a server to find leaks.
// It only tests: it has no non-test code.
package security_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// start runs a node without connection-rate limits (every test client comes
// from 127.0.0.1), plus extra flags.
func start(t testing.TB, extra ...string) *servertest.Node {
	t.Helper()
	return servertest.Start(t, append([]string{"--connect-rate-per-ip", "0", "--connect-rate-per-user", "0"}, extra...)...)
}

// newHTTPClient returns a client whose idle connections are closed when the
// test ends, so that goleak sees no lingering transport goroutines.
func newHTTPClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// httpResult is an HTTP answer: status, headers and body, with the JSON
// error body decoded when there is one.
type httpResult struct {
	Status int
	Header http.Header
	Body   []byte
	Err    string // "error" of the JSON error body
	Msg    string // "message" of the JSON error body
}

// Summary is "error: message" for error bodies, the body otherwise.
func (r httpResult) Summary() string {
	if r.Err != "" {
		return r.Err + ": " + r.Msg
	}
	return string(r.Body)
}

func doHTTP(t testing.TB, c *http.Client, method, url string, header http.Header, body []byte) httpResult {
	t.Helper()
	r, err := tryHTTP(c, method, url, header, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// tryHTTP is doHTTP returning transport errors.
func tryHTTP(c *http.Client, method, url string, header http.Header, body []byte) (httpResult, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return httpResult{}, err
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		return httpResult{}, err
	}
	defer resp.Body.Close()
	// Streams (a 200 SSE answer) are not read to the end.
	var b []byte
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ = readFor(resp.Body, 300*time.Millisecond)
	} else {
		b, _ = io.ReadAll(resp.Body)
	}
	r := httpResult{Status: resp.StatusCode, Header: resp.Header, Body: b}
	var eb struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &eb) == nil {
		r.Err, r.Msg = eb.Error, eb.Message
	}
	return r, nil
}

// readFor reads what arrives on r during d.
func readFor(r io.Reader, d time.Duration) ([]byte, error) {
	var mu sync.Mutex
	var buf bytes.Buffer
	done := make(chan error, 1)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			mu.Lock()
			buf.Write(b[:n])
			mu.Unlock()
			if err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		return buf.Bytes(), err
	case <-time.After(d):
		if c, ok := r.(io.Closer); ok {
			_ = c.Close()
		}
		<-done
		mu.Lock()
		defer mu.Unlock()
		return buf.Bytes(), nil
	}
}

// publish posts v as JSON with the test publish key.
func publish(t testing.TB, c *http.Client, n *servertest.Node, v any) httpResult {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return publishRaw(t, c, n, b, "application/json", servertest.PublishKey)
}

func publishRaw(t testing.TB, c *http.Client, n *servertest.Node, body []byte, ctype, key string) httpResult {
	t.Helper()
	h := http.Header{}
	if ctype != "" {
		h.Set("Content-Type", ctype)
	}
	if key != "" {
		h.Set("Authorization", "Bearer "+key)
	}
	return doHTTP(t, c, http.MethodPost, n.URL+"/api/realtime/events", h, body)
}

// mustPublish publishes one event and returns its id.
func mustPublish(t testing.TB, c *http.Client, n *servertest.Node, ev map[string]any) string {
	t.Helper()
	r := publish(t, c, n, ev)
	if r.Status != http.StatusCreated {
		t.Fatalf("publish %v: %d %s", ev, r.Status, r.Body)
	}
	var out struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(r.Body, &out); err != nil || out.ID == "" {
		t.Fatalf("publish answer %s", r.Body)
	}
	return out.ID
}

// history reads the retained events after id (all of them with after "").
func history(t testing.TB, c *http.Client, n *servertest.Node, query string) []map[string]any {
	t.Helper()
	r := doHTTP(t, c, http.MethodGet, n.URL+"/api/realtime/events?"+query, nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("history %s: %d %s", query, r.Status, r.Body)
	}
	var evs []map[string]any
	if err := json.Unmarshal(r.Body, &evs); err != nil {
		t.Fatalf("history body %q: %v", r.Body, err)
	}
	return evs
}

// lastID returns the id of the newest retained event, "" when none.
func lastID(t testing.TB, c *http.Client, n *servertest.Node) string {
	t.Helper()
	evs := history(t, c, n, "limit=1000")
	for len(evs) == 1000 {
		more := history(t, c, n, "limit=1000&after="+evs[len(evs)-1]["id"].(string))
		if len(more) == 0 {
			break
		}
		evs = more
	}
	if len(evs) == 0 {
		return ""
	}
	return evs[len(evs)-1]["id"].(string)
}

// ---------------------------------------------------------------- WebSocket

// wsClient is a gorilla/websocket client whose reads a goroutine owns.
type wsClient struct {
	conn   *websocket.Conn
	msgs   chan []byte
	closed chan error // the read error that ended the connection
	wmu    sync.Mutex
}

func dialWS(t testing.TB, url string, header http.Header) (*wsClient, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	conn, resp, err := d.Dial(url, header)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{conn: conn, msgs: make(chan []byte, 4096), closed: make(chan error, 1)}
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
	if t != nil {
		t.Cleanup(func() { _ = conn.Close() })
	}
	return c, resp, nil
}

var errNoMessage = errors.New("no message in time")

// next returns the next message, decoded.
func (c *wsClient) next(timeout time.Duration) (map[string]any, error) {
	select {
	case b, ok := <-c.msgs:
		if !ok {
			return nil, errors.New("connection closed")
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("message is not a JSON object: %q", b)
		}
		return m, nil
	case <-time.After(timeout):
		return nil, errNoMessage
	}
}

// nextType returns the next message of type typ, skipping others.
func (c *wsClient) nextType(typ string, timeout time.Duration) (map[string]any, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := c.next(time.Until(deadline))
		if err != nil {
			return nil, err
		}
		if m["type"] == typ {
			return m, nil
		}
	}
}

func (c *wsClient) writeText(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return c.conn.WriteMessage(websocket.TextMessage, b)
}

func (c *wsClient) writeMessage(typ int, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return c.conn.WriteMessage(typ, b)
}

func (c *wsClient) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.writeText(b)
}

// closeResult waits for the end of the connection and returns the close
// code and reason (code -1 when it ended without a close frame).
func (c *wsClient) closeResult(timeout time.Duration) (int, string, error) {
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-c.msgs:
			if ok {
				continue
			}
			err := <-c.closed
			c.closed <- err
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, ce.Text, nil
			}
			return -1, err.Error(), nil
		case <-deadline:
			return 0, "", errors.New("connection did not close in time")
		}
	}
}

// ---------------------------------------------------------------- SSE

// sseFrame is one parsed Server-Sent Events frame (a block ended by a blank
// line), with the raw lines it was made of.
type sseFrame struct {
	Lines   []string
	ID      string
	HasID   bool
	Event   string
	Data    string
	Retry   string
	Comment bool // only comment lines
}

// sseStream reads an event stream with net/http and parses it by the
// rules of the EventSource standard (CRLF, LF and CR each end a line).
type sseStream struct {
	resp   *http.Response
	frames chan sseFrame
	done   chan struct{}
	mu     sync.Mutex
	raw    bytes.Buffer // the whole body as received
	err    error
	cancel context.CancelFunc
}

func openSSE(t testing.TB, c *http.Client, url string, header http.Header) (*sseStream, httpResult, error) {
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, httpResult{}, err
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		return nil, httpResult{}, err
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		r := httpResult{Status: resp.StatusCode, Header: resp.Header, Body: b}
		var eb struct{ Error, Message string }
		if json.Unmarshal(b, &eb) == nil {
			r.Err, r.Msg = eb.Error, eb.Message
		}
		return nil, r, nil
	}
	s := &sseStream{resp: resp, frames: make(chan sseFrame, 4096), done: make(chan struct{}), cancel: cancel}
	go s.read()
	if t != nil {
		t.Cleanup(s.Close)
	}
	return s, httpResult{Status: resp.StatusCode, Header: resp.Header}, nil
}

// Close ends the stream from the client side and waits for the reader.
func (s *sseStream) Close() {
	s.cancel()
	_ = s.resp.Body.Close()
	<-s.done
}

type teeReader struct {
	r io.Reader
	s *sseStream
}

func (t teeReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	t.s.mu.Lock()
	t.s.raw.Write(b[:n])
	t.s.mu.Unlock()
	return n, err
}

// Raw returns the body received so far.
func (s *sseStream) Raw() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.raw.Bytes()...)
}

// scanSSELines splits on CRLF, LF or a lone CR.
func scanSSELines(data []byte, atEOF bool) (int, []byte, error) {
	for i, b := range data {
		switch b {
		case '\n':
			return i + 1, data[:i], nil
		case '\r':
			if i+1 < len(data) {
				if data[i+1] == '\n' {
					return i + 2, data[:i], nil
				}
				return i + 1, data[:i], nil
			}
			if atEOF {
				return i + 1, data[:i], nil
			}
			return 0, nil, nil // need one more byte to know
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

func (s *sseStream) read() {
	defer close(s.done)
	defer close(s.frames)
	sc := bufio.NewScanner(teeReader{s.resp.Body, s})
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	sc.Split(scanSSELines)
	var f sseFrame
	comments := true
	var data []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if len(f.Lines) > 0 {
				f.Data = strings.Join(data, "\n")
				f.Comment = comments
				s.frames <- f
			}
			f, data, comments = sseFrame{}, nil, true
			continue
		}
		f.Lines = append(f.Lines, line)
		if strings.HasPrefix(line, ":") {
			continue
		}
		comments = false
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch name {
		case "id":
			f.ID, f.HasID = value, true
		case "event":
			f.Event = value
		case "data":
			data = append(data, value)
		case "retry":
			f.Retry = value
		}
	}
	s.mu.Lock()
	s.err = sc.Err()
	s.mu.Unlock()
}

// next returns the next frame that is not a keepalive comment.
func (s *sseStream) next(timeout time.Duration) (sseFrame, error) {
	deadline := time.After(timeout)
	for {
		select {
		case f, ok := <-s.frames:
			if !ok {
				return sseFrame{}, io.EOF
			}
			if f.Comment {
				continue
			}
			return f, nil
		case <-deadline:
			return sseFrame{}, errNoMessage
		}
	}
}

// welcome reads the head of a stream: the retry advice, then the
// connected frame, whose data it returns decoded.
func (s *sseStream) welcome(timeout time.Duration) (map[string]any, error) {
	f, err := s.next(timeout)
	if err != nil {
		return nil, fmt.Errorf("retry frame: %w", err)
	}
	if len(f.Lines) != 1 || !strings.HasPrefix(f.Lines[0], "retry: ") {
		return nil, fmt.Errorf("first frame %q, want retry", f.Lines)
	}
	f, err = s.next(timeout)
	if err != nil {
		return nil, fmt.Errorf("connected frame: %w", err)
	}
	if len(f.Lines) != 2 || f.Lines[0] != "event: connected" || !strings.HasPrefix(f.Lines[1], "data: {") {
		return nil, fmt.Errorf("welcome frame %q", f.Lines)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(f.Data), &m); err != nil {
		return nil, fmt.Errorf("welcome %q: %w", f.Data, err)
	}
	if m["type"] != "connected" {
		return nil, fmt.Errorf("welcome %v", m)
	}
	return m, nil
}

// rawConn opens a TCP connection to the node.
func rawConn(t testing.TB, n *servertest.Node) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", n.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
