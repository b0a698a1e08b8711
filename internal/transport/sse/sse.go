// Package sse is the Server-Sent Events transport at /api/realtime/stream
// (SPEC §3). After the checks the handler takes the connection over from
// the HTTP engine, writes the response head itself and hands the socket to
// the hub: no goroutine and no buffers per idle stream.
package sse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/lesismal/nbio"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/handshake"
	"github.com/knowledgehub/realtime/internal/hub"
	"github.com/knowledgehub/realtime/internal/protocol"
	"github.com/knowledgehub/realtime/internal/transport"
)

// Config tunes the transport.
type Config struct {
	AllowedOrigins []string      // CORS: "*" or a list of origins
	Retry          time.Duration // the retry: advised to browsers
	MaxQueueBytes  int
}

// Handler serves SSE streams.
type Handler struct {
	cfg     Config
	checker *handshake.Checker
	hub     *hub.Hub
	logger  *slog.Logger
	ctx     context.Context
	allOrig bool
}

// New returns the handler. ctx bounds replays.
func New(ctx context.Context, cfg Config, checker *handshake.Checker, h *hub.Hub, logger *slog.Logger) *Handler {
	if cfg.Retry <= 0 {
		cfg.Retry = 3 * time.Second
	}
	all := len(cfg.AllowedOrigins) == 0
	for _, o := range cfg.AllowedOrigins {
		if o == "*" {
			all = true
		}
	}
	return &Handler{cfg: cfg, checker: checker, hub: h, logger: logger, ctx: ctx, allOrig: all}
}

// cors returns the Access-Control-Allow-Origin value for a request, "" when
// the origin is not allowed.
func (h *Handler) cors(r *http.Request) string {
	if h.allOrig {
		return "*"
	}
	o := r.Header.Get("Origin")
	for _, allowed := range h.cfg.AllowedOrigins {
		if strings.EqualFold(o, allowed) {
			return o
		}
	}
	return ""
}

// CORS sets the CORS headers of SPEC §3 (sse_allowed_origins) on a response.
func (h *Handler) CORS(w http.ResponseWriter, r *http.Request) {
	if v := h.cors(r); v != "" {
		w.Header().Set("Access-Control-Allow-Origin", v)
		if v != "*" {
			w.Header().Add("Vary", "Origin")
		}
	}
}

// ServeHTTP implements SPEC §3.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodOptions {
		h.CORS(w, r)
		w.Header().Set("Access-Control-Allow-Methods", "GET, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control")
		w.Header().Set("Access-Control-Max-Age", "86400")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	h.CORS(w, r)
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, OPTIONS")
		protocol.WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET", 0)
		return
	}
	req, ok := h.checker.Check(w, r, handshake.SSE)
	if !ok {
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		req.Ticket.Release()
		protocol.WriteError(w, http.StatusInternalServerError, "internal", "connection cannot be taken over", 0)
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		req.Ticket.Release()
		h.logger.Debug("sse hijack failed", "err", err)
		return
	}
	nbc := transport.EngineConn(conn)
	s := &stream{nbc: nbc}
	s.Init(conn, nbc, h.cfg.MaxQueueBytes)
	if nbc != nil {
		// The engine's keep-alive read deadline would end the stream; the
		// engine still reads the socket, so a closed peer is noticed at once.
		_ = nbc.SetReadDeadline(time.Time{})
		nbc.SetSession(s)
	} else {
		// A connection of Go's own server (TLS): blocking writes get a queue
		// and a writer; a failed write, found at the latest by a keepalive,
		// is how a gone peer shows.
		_ = conn.SetReadDeadline(time.Time{})
		s.StartAsync(func() { s.CloseAndClean(net.ErrClosed) })
	}

	id := uuid.NewString()
	head := h.head(r)
	if err := s.Write(head); err != nil {
		req.Ticket.Release()
		_ = conn.Close()
		return
	}
	sub := hub.NewSubscription(req.User(), req.Params.Types, req.Params.Jobs)
	c := h.hub.NewClient(handshake.SSE, sub, req.Claims.ExpiresAt, s)
	s.client.Store(c)
	c.SetToken(auth.JTIHash(req.Claims.ID), req.Claims.IssuedAt)
	c.OnClose(req.Ticket.Release)
	if s.gone.Load() {
		c.Detach()
		return
	}
	welcome := protocol.Welcome(id, req.User(), req.Claims.ExpiresAt, "SSE stream established")
	if err := h.hub.Attach(h.ctx, c, welcome, req.Params.Resume, req.Params.ResumeID); err != nil {
		h.logger.Warn("sse attach failed", "client_id", id, "err", err)
	}
}

// head is the response head and the retry advice, in one write; the hub
// writes the welcome when it registers the stream.
func (h *Handler) head(r *http.Request) []byte {
	var b strings.Builder
	b.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n")
	if v := h.cors(r); v != "" {
		b.WriteString("Access-Control-Allow-Origin: " + v + "\r\n")
		if v != "*" {
			b.WriteString("Vary: Origin\r\n")
		}
	}
	b.WriteString("\r\n")
	fmt.Fprintf(&b, "retry: %d\n\n", h.cfg.Retry.Milliseconds())
	return []byte(b.String())
}

func controlFrame(name string, msg []byte) []byte {
	b := make([]byte, 0, len(name)+len(msg)+16)
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	b = append(b, msg...)
	return append(b, "\n\n"...)
}

var keepalive = []byte(": keepalive\n\n")

// stream is one SSE connection. It is also the engine's session for the
// socket: the engine hands it what the client sends (nothing is expected)
// and tells it when the socket closed.
type stream struct {
	transport.Writer
	nbc    *nbio.Conn
	client atomic.Pointer[hub.Client]
	closed atomic.Bool
	gone   atomic.Bool
	read   atomic.Int64
}

func (s *stream) WriteEvents(evs []*event.Event) error {
	return s.WriteFrames(evs, transport.SSEFrame)
}

func (s *stream) StageEvents(b hub.Batch, evs []*event.Event) error {
	tb, _ := b.(*transport.Batch)
	return s.Stage(tb, evs, transport.SSEFrame)
}

func (s *stream) WriteControl(name string, msg []byte) error {
	return s.Write(controlFrame(name, msg))
}

func (s *stream) Ping() error { return s.Write(keepalive) }

// Close ends the stream, with a last frame that says why when there is one.
func (s *stream) Close(d protocol.Disconnect) {
	if s.closed.Swap(true) {
		return
	}
	var last []byte
	switch d.Code {
	case protocol.DisconnectShutdown.Code:
		// A random retry spreads the browsers' reconnects over time.
		last = []byte("retry: " + strconv.Itoa(1000+rand.IntN(4000)) + "\n\n")
	case protocol.DisconnectExpired.Code:
		if c := s.client.Load(); c != nil {
			last = controlFrame("token_expired", protocol.TokenExpired(c.Expires()))
		}
	}
	if last != nil {
		_ = s.Write(last)
	}
	s.CloseWhenFlushed()
}

// UnderlayerConn implements nbhttp.ParserCloser.
func (s *stream) UnderlayerConn() net.Conn { return s.Conn }

// Parse implements nbhttp.ParserCloser: an SSE client sends nothing after
// its request, so a little is ignored and more ends the stream.
func (s *stream) Parse(data []byte) error {
	if s.read.Add(int64(len(data))) > 4096 {
		return errors.New("sse: client sent data on an event stream")
	}
	return nil
}

// CloseAndClean implements nbhttp.ParserCloser: the socket is closed.
func (s *stream) CloseAndClean(error) {
	s.gone.Store(true)
	s.closed.Store(true)
	if c := s.client.Load(); c != nil {
		c.Detach()
	}
}
