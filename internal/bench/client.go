package bench

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
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/knowledgehub/realtime/internal/event"
)

// The client side of a connection is kept small, because one bench process
// holds up to ~19,900 of them: one goroutine (the reader), a 2 KiB read
// buffer, and for WebSocket gorilla's connection with a pooled write buffer
// (the bench writes only the close frame). SSE streams are read from a raw
// socket with a hand-written HTTP/1.1 request, not net/http's Transport,
// which would add two goroutines and two buffers per stream.

const readBufferSize = 2048

type transportKind uint8

const (
	kindWS transportKind = iota
	kindSSE
)

func (k transportKind) String() string {
	if k == kindSSE {
		return "sse"
	}
	return "ws"
}

// client is one connection and the per-connection state of the scenario.
// The state fields are written only by the connection's reader goroutine,
// and read by the scenario after that goroutine ended (runner.readers).
type client struct {
	idx  int
	kind transportKind
	ws   *websocket.Conn
	nc   net.Conn
	sse  *sseParser
	buf  []byte
	h    handler
	r    *runner

	closing atomic.Bool
	done    chan struct{} // closed when the reader goroutine ends

	welcomedAt int64 // UnixNano, set by the dialing worker
	dialStart  int64 // UnixNano, the start of the successful attempt
	// pending: buf holds messages that came with the handshake (Centrifugo:
	// after the subscribe reply, in the same frame), for the reader.
	pending bool

	// fanout
	seen     []uint64 // bit set of the sequence numbers received
	uniq     int
	dups     int
	order    int // events not in increasing id order
	lastID   event.ID
	haveLast bool
	lastOff  uint64 // Centrifugo: offset of the last publication, 0 none
	lastSeq  int64  // Centrifugo without offsets: last sequence number + 1
	lastRecv int64
	barrier  bool

	// resume
	lastTagged string // id of the last event of this run received
	pos        int    // events matched so far, in order
	mismatch   int
	extra      int
	doneAt     int64
	gaps       int
}

// handler is a scenario's view of the messages of its connections. Both
// methods run on the connection's reader goroutine.
type handler interface {
	// onEvent gets an event published by this run.
	onEvent(c *client, ev *taggedEvent, now int64)
	// onControl gets a control message (connected, gap, error, ...).
	onControl(c *client, typ string, msg []byte)
}

// taggedEvent is an event published by this run, parsed without
// allocating: ID points into the read buffer.
type taggedEvent struct {
	ID  []byte // KnowledgeHub's event id; nil from Centrifugo
	Seq int64  // -1 for barrier / marker events
	T   int64  // publish time, UnixNano
	// Offset is Centrifugo's publication offset (channels with history),
	// 0 if none.
	Offset uint64
}

// connError is a refusal of the handshake.
type connError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
	Transport  transportKind
}

func (e *connError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("%s: %s: %s", e.Transport, e.Code, e.Message)
	}
	return fmt.Sprintf("%s handshake answered %d %s: %s", e.Transport, e.Status, e.Code, e.Message)
}

// key is how the refusal is counted.
func (e *connError) key() string {
	if e.Status == 0 {
		return e.Code
	}
	if e.Code == "" {
		return strconv.Itoa(e.Status)
	}
	return strconv.Itoa(e.Status) + " " + e.Code
}

func errorBody(status int, h http.Header, body []byte, k transportKind) *connError {
	e := &connError{Status: status, Transport: k}
	var b struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &b) == nil {
		e.Code, e.Message = b.Error, b.Message
	} else {
		e.Message = strings.TrimSpace(string(body))
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	if s := h.Get("Retry-After"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			e.RetryAfter = time.Duration(n) * time.Second
		}
	}
	return e
}

// dialParams are what one connection asks for.
type dialParams struct {
	token       string
	lastEventID string
}

// dial opens connection idx and reads its welcome; the reader goroutine is
// not started.
// dialWS opens a WebSocket to u from the idx-th source address; a refused
// upgrade is reported with its status and body.
func (r *runner) dialWS(ctx context.Context, idx int, u string) (*websocket.Conn, error) {
	ws, resp, err := r.wsDialer[idx%len(r.wsDialer)].DialContext(ctx, u, nil)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			return nil, errorBody(resp.StatusCode, resp.Header, body, kindWS)
		}
		return nil, err
	}
	return ws, nil
}

func (r *runner) dial(ctx context.Context, idx int, kind transportKind, p dialParams) (*client, error) {
	if r.cfg.Target == TargetCentrifugo {
		return r.dialCentrifugo(ctx, idx, p)
	}
	q := url.Values{}
	if p.token != "" {
		q.Set("token", p.token)
	}
	if r.cfg.JobID != "" {
		q.Set("job_ids", r.cfg.JobID)
	}
	c := &client{idx: idx, kind: kind, r: r, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ConnectTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	if kind == kindWS {
		if p.lastEventID != "" {
			q.Set("last_event_id", p.lastEventID)
		}
		u := r.wsURL
		if len(q) > 0 {
			u += "?" + q.Encode()
		}
		ws, err := r.dialWS(ctx, idx, u)
		if err != nil {
			return nil, err
		}
		c.ws = ws
		c.nc = ws.NetConn()
		_ = ws.SetReadDeadline(deadline)
		_, rd, err := ws.NextReader()
		if err != nil {
			_ = c.nc.Close()
			return nil, fmt.Errorf("waiting for the welcome: %w", err)
		}
		c.buf, err = readAllInto(c.buf[:0], rd)
		if err != nil {
			_ = c.nc.Close()
			return nil, fmt.Errorf("waiting for the welcome: %w", err)
		}
		if typ := jsonType(c.buf); typ != "connected" {
			_ = c.nc.Close()
			var m struct{ Code, Message string }
			_ = json.Unmarshal(c.buf, &m)
			if typ == "error" {
				return nil, &connError{Code: m.Code, Message: m.Message, Transport: kind}
			}
			return nil, fmt.Errorf("first message is not the welcome: %.200s", c.buf)
		}
		_ = ws.SetReadDeadline(time.Time{})
		c.welcomedAt = time.Now().UnixNano()
		return c, nil
	}

	d := net.Dialer{LocalAddr: r.sources[idx%len(r.sources)], Deadline: deadline}
	nc, err := d.DialContext(ctx, "tcp", r.hostPort)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(deadline)
	var req bytes.Buffer
	req.WriteString("GET " + r.ssePath)
	if len(q) > 0 {
		req.WriteString("?" + q.Encode())
	}
	req.WriteString(" HTTP/1.1\r\nHost: " + r.hostPort + "\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: knowledgehub-bench\r\n")
	if p.lastEventID != "" {
		req.WriteString("Last-Event-ID: " + p.lastEventID + "\r\n")
	}
	req.WriteString("\r\n")
	if _, err := nc.Write(req.Bytes()); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, readBufferSize)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("reading the SSE response head: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		nc.Close()
		return nil, errorBody(resp.StatusCode, resp.Header, body, kind)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		nc.Close()
		return nil, fmt.Errorf("SSE answered Content-Type %q, want text/event-stream", ct)
	}
	c.nc = nc
	if len(resp.TransferEncoding) > 0 {
		// Chunked: parse the decoded body (one more buffer per stream).
		c.sse = &sseParser{br: bufio.NewReaderSize(httputil.NewChunkedReader(br), readBufferSize)}
	} else {
		// The stream ends with the connection: the body is the rest of br.
		c.sse = &sseParser{br: br}
	}
	for {
		name, data, err := c.sse.next()
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("waiting for the welcome: %w", err)
		}
		if string(name) == "connected" {
			break
		}
		if string(name) == "error" || string(name) == "token_expired" {
			nc.Close()
			return nil, &connError{Code: string(name), Message: string(data), Transport: kind}
		}
	}
	_ = nc.SetDeadline(time.Time{})
	c.welcomedAt = time.Now().UnixNano()
	return c, nil
}

// readAllInto appends all of r to buf[:0].
func readAllInto(buf []byte, r io.Reader) ([]byte, error) {
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// jsonType returns the "type" field of a JSON object, "" if none.
func jsonType(msg []byte) string {
	var m struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(msg, &m)
	return m.Type
}

// read is the reader goroutine of c.
func (c *client) read() {
	r := c.r
	defer func() {
		r.alive.Add(-1)
		close(c.done)
		r.readers.Done()
	}()
	centrifugo := r.cfg.Target == TargetCentrifugo
	if c.pending {
		c.pending = false
		r.dispatchCentrifugo(c, c.buf, time.Now().UnixNano())
	}
	for {
		var (
			name []byte
			msg  []byte
			err  error
		)
		if c.kind == kindWS {
			var rd io.Reader
			_, rd, err = c.ws.NextReader()
			if err == nil {
				c.buf, err = readAllInto(c.buf, rd)
				msg = c.buf
			}
		} else {
			name, msg, err = c.sse.next()
		}
		if err != nil {
			if !c.closing.Load() {
				r.countClose(closeReason(err))
			}
			return
		}
		if centrifugo {
			r.dispatchCentrifugo(c, msg, time.Now().UnixNano())
			continue
		}
		r.dispatch(c, name, msg, time.Now().UnixNano())
	}
}

// dispatch routes one message: events of this run to onEvent, control
// messages to onControl, anything else is counted as foreign.
func (r *runner) dispatch(c *client, sseName, msg []byte, now int64) {
	if len(sseName) == 0 && bytes.Contains(msg, r.tag) {
		if ev, ok := parseTagged(msg); ok {
			c.h.onEvent(c, &ev, now)
			return
		}
	}
	var typ string
	if c.kind == kindSSE {
		typ = string(sseName)
	} else {
		if bytes.HasPrefix(msg, []byte(`{"id":`)) {
			r.foreign.Add(1)
			return
		}
		typ = jsonType(msg)
	}
	if typ == "" || (typ[0] >= 'A' && typ[0] <= 'Z') {
		r.foreign.Add(1)
		return
	}
	r.countControl(typ)
	c.h.onControl(c, typ, msg)
}

// parseTagged finds the id, bench_seq and bench_t of an event of this run.
func parseTagged(msg []byte) (taggedEvent, bool) {
	var ev taggedEvent
	i := bytes.Index(msg, []byte(`"id":"`))
	if i < 0 {
		return ev, false
	}
	rest := msg[i+6:]
	j := bytes.IndexByte(rest, '"')
	if j <= 0 {
		return ev, false
	}
	ev.ID = rest[:j]
	var ok bool
	if ev.Seq, ok = jsonInt(msg, []byte(`"bench_seq":`)); !ok {
		return ev, false
	}
	if ev.T, ok = jsonInt(msg, []byte(`"bench_t":`)); !ok {
		return ev, false
	}
	return ev, true
}

func jsonInt(msg, key []byte) (int64, bool) {
	i := bytes.Index(msg, key)
	if i < 0 {
		return 0, false
	}
	b := msg[i+len(key):]
	for len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg = true
		b = b[1:]
	}
	var v int64
	n := 0
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		v = v*10 + int64(b[n]-'0')
		n++
	}
	if n == 0 {
		return 0, false
	}
	if neg {
		v = -v
	}
	return v, true
}

// closeReason names why the server ended a connection.
func closeReason(err error) string {
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return "ws close " + strconv.Itoa(ce.Code)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

// close ends c from the client side: a close frame for WebSocket, then an
// abortive close (SO_LINGER 0) so that no TIME_WAIT socket holds the source
// port: reconnecting N clients at once must find N free ports again.
func (c *client) close() {
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	if c.ws != nil {
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bench done"), time.Now().Add(time.Second))
	}
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.nc.Close()
}

// sseParser reads a text/event-stream with the HTML standard's rules
// (comments, multi-line data, event names), reusing its buffers.
type sseParser struct {
	br   *bufio.Reader
	name []byte
	data []byte
	long []byte
}

func (p *sseParser) line() ([]byte, error) {
	line, err := p.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		p.long = append(p.long[:0], line...)
		for err == bufio.ErrBufferFull {
			line, err = p.br.ReadSlice('\n')
			p.long = append(p.long, line...)
		}
		line = p.long
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// next returns the next event's name ("" for a message) and data.
func (p *sseParser) next() (name, data []byte, err error) {
	p.name, p.data = p.name[:0], p.data[:0]
	hasData := false
	for {
		line, err := p.line()
		if err != nil {
			return nil, nil, err
		}
		if len(line) == 0 {
			if !hasData {
				p.name = p.name[:0]
				continue
			}
			return p.name, p.data, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			if hasData {
				p.data = append(p.data, '\n')
			}
			p.data = append(p.data, value...)
			hasData = true
		case "event":
			p.name = append(p.name[:0], value...)
		}
	}
}

// counter is a small concurrent multiset of strings.
type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counter) add(k string, n int) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	if len(c.m) < 50 || c.m[k] > 0 {
		c.m[k] += n
	} else {
		c.m["(other)"] += n
	}
	c.mu.Unlock()
}

func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) == 0 {
		return nil
	}
	out := make(map[string]int, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}
