// Package ws is the WebSocket transport at /ws/notifications (SPEC §2), on
// the nbio event loop: no goroutine per connection.
package ws

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/handshake"
	"github.com/knowledgehub/realtime/internal/hub"
	"github.com/knowledgehub/realtime/internal/protocol"
	"github.com/knowledgehub/realtime/internal/transport"
)

// Config tunes the transport.
type Config struct {
	MaxMessageBytes int     // inbound message limit (close 1009)
	MaxQueueBytes   int     // send queue budget (close 4208)
	MessageRate     float64 // inbound messages per second, burst twice that (close 1008)
	MaxBadMessages  int     // bad messages tolerated in a row of 10 s (close 1008)
	PingInterval    time.Duration
}

// Handler serves WebSocket handshakes.
type Handler struct {
	cfg      Config
	checker  *handshake.Checker
	hub      *hub.Hub
	logger   *slog.Logger
	upgrader *websocket.Upgrader
	ctx      context.Context
}

// New returns the handler; engine is the nbio engine the server runs on.
// ctx bounds replays started by handshakes.
func New(ctx context.Context, cfg Config, engine *nbhttp.Engine, checker *handshake.Checker, h *hub.Hub, logger *slog.Logger) *Handler {
	if cfg.MaxBadMessages <= 0 {
		cfg.MaxBadMessages = 10
	}
	u := websocket.NewUpgrader()
	u.Engine = engine
	u.CheckOrigin = func(*http.Request) bool { return true } // checked before, with the JSON 403 of the spec
	u.KeepaliveTime = cfg.PingInterval*2 + cfg.PingInterval/2
	u.MessageLengthLimit = cfg.MaxMessageBytes
	// On Go's own server (TLS) the read goroutine is started after the
	// connection is set up, so no message arrives before its session.
	u.BlockingModHandleRead = false
	handler := &Handler{cfg: cfg, checker: checker, hub: h, logger: logger, upgrader: u, ctx: ctx}
	u.OnMessage(handler.onMessage)
	u.SetCloseHandler(func(c *websocket.Conn, code int, text string) {
		// A close frame answers ours, or starts the closing handshake. Only
		// in the second case is one sent back: a second close frame from the
		// server makes browsers report 1006 instead of our code.
		if s, ok := c.Session().(*sink); ok && s.closed.Swap(true) {
			return
		}
		if code == 1005 {
			_ = c.WriteMessage(websocket.CloseMessage, nil)
			return
		}
		_ = c.WriteClose(code, "")
	})
	u.OnClose(func(c *websocket.Conn, err error) {
		if s, ok := c.Session().(*sink); ok && s.client != nil {
			s.client.Detach()
		}
	})
	return handler
}

// ServeHTTP implements the handshake of SPEC §2.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, ok := h.checker.Check(w, r, handshake.WebSocket)
	if !ok {
		return
	}
	if r.Method != http.MethodGet || !headerHas(r.Header, "Connection", "upgrade") || !headerHas(r.Header, "Upgrade", "websocket") {
		req.Ticket.Release()
		protocol.WriteError(w, http.StatusBadRequest, "not_websocket", "not a WebSocket handshake: want GET with Connection: Upgrade and Upgrade: websocket", 0)
		return
	}
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		req.Ticket.Release()
		h.logger.Debug("websocket upgrade failed", "err", err)
		return
	}
	s := &sink{conn: conn, Writer: transport.NewWriter(conn.Conn, h.cfg.MaxQueueBytes), handler: h}
	s.bucket.init(h.cfg.MessageRate)
	conn.SetSession(s)
	if conn.IsBlockingMod() {
		// Go's own server (TLS): writes block, so the connection gets a
		// send queue with a writer goroutine, and a reader goroutine.
		s.StartAsync(func() { _ = conn.Close() })
		go conn.HandleRead(4096)
	}

	if req.TokenErr != nil {
		_ = s.WriteControl("error", protocol.ErrorMessage("invalid_token", req.TokenErr.Reason))
		req.Ticket.Release()
		s.Close(protocol.DisconnectInvalidToken)
		return
	}
	sub := hub.NewSubscription(req.User(), req.Params.Types, req.Params.Jobs)
	id := uuid.NewString()
	c := h.hub.NewClient(id, handshake.WebSocket, sub, req.Claims.ExpiresAt, s)
	s.client = c
	c.SetToken(req.Claims.ID, req.Claims.IssuedAt)
	c.OnClose(req.Ticket.Release)
	welcome := protocol.Welcome(id, req.User(), req.Claims.ExpiresAt, "WebSocket connection established")
	if err := h.hub.Attach(h.ctx, c, welcome, req.Params.Resume, req.Params.ResumeID); err != nil {
		h.logger.Warn("websocket attach failed", "client_id", id, "err", err)
	}
}

func (h *Handler) onMessage(conn *websocket.Conn, typ websocket.MessageType, data []byte) {
	s, ok := conn.Session().(*sink)
	if !ok || s.client == nil {
		return
	}
	c := s.client
	if !s.bucket.take(h.cfg.MessageRate) {
		c.Close(protocol.DisconnectPolicy)
		return
	}
	if typ != websocket.TextMessage {
		s.bad(h, "binary messages are not accepted; send JSON text")
		return
	}
	msg, err := protocol.ParseClientMessage(data)
	if err != nil {
		s.bad(h, err.Error())
		return
	}
	switch msg.Type {
	case "ping":
		c.Send("pong", protocol.Pong)
	case "subscribe":
		if err := c.Subscribe(msg.JobID); err != nil {
			c.Send("error", protocol.ErrorMessage("too_many_subscriptions", err.Error()))
			return
		}
		c.Send("subscribed", protocol.JobMessage("subscribed", msg.JobID))
	case "unsubscribe":
		c.Unsubscribe(msg.JobID)
		c.Send("unsubscribed", protocol.JobMessage("unsubscribed", msg.JobID))
	case "refresh":
		claims, aerr := h.checker.Verify(msg.Token)
		if aerr != nil {
			c.Send("error", protocol.ErrorMessage("invalid_token", aerr.Reason))
			return
		}
		if err := c.Refresh(claims.Subject, claims.ExpiresAt); err != nil {
			c.Send("error", protocol.ErrorMessage("invalid_token", err.Error()))
			return
		}
		c.SetToken(claims.ID, claims.IssuedAt)
		c.Send("refreshed", protocol.Refreshed(claims.Subject, claims.ExpiresAt))
	}
}

// sink is one WebSocket connection as the hub sees it.
type sink struct {
	transport.Writer
	conn    *websocket.Conn
	handler *Handler
	client  *hub.Client
	closed  atomic.Bool
	bucket  bucket
	badMu   sync.Mutex
	badN    int
	badAt   int64
}

var pingFrame = []byte{0x89, 0x00}

func (s *sink) WriteEvents(evs []*event.Event) error {
	return s.WriteFrames(evs, transport.WSFrame)
}

func (s *sink) WriteControl(name string, msg []byte) error {
	return s.Write(event.AppendWSTextFrame(make([]byte, 0, len(msg)+4), msg))
}

func (s *sink) Ping() error { return s.Write(pingFrame) }

func (s *sink) Close(d protocol.Disconnect) {
	if s.closed.Swap(true) {
		return
	}
	if s.Async() {
		if d.Code != protocol.DisconnectPeerGone.Code {
			_ = s.Write(closeFrame(d))
		}
		s.CloseWhenFlushed()
		return
	}
	if d.Code == protocol.DisconnectPeerGone.Code {
		_ = s.conn.Close()
		return
	}
	_ = s.conn.WriteClose(d.Code, d.Reason)
	// The client answers the close frame and nbio closes the socket; a
	// client that does not is cut off after a grace period.
	time.AfterFunc(3*time.Second, func() { _ = s.conn.Close() })
}

// closeFrame is a WebSocket close frame with d's code and reason.
func closeFrame(d protocol.Disconnect) []byte {
	reason := d.Reason
	if len(reason) > 123 {
		reason = reason[:123]
	}
	b := []byte{0x88, byte(2 + len(reason)), byte(d.Code >> 8), byte(d.Code)}
	return append(b, reason...)
}

// bad answers a malformed message and closes connections that keep
// sending them.
func (s *sink) bad(h *Handler, message string) {
	now := time.Now().UnixNano()
	s.badMu.Lock()
	if now-s.badAt > int64(10*time.Second) {
		s.badN, s.badAt = 0, now
	}
	s.badN++
	tooMany := s.badN > h.cfg.MaxBadMessages
	s.badMu.Unlock()
	if tooMany {
		s.client.Close(protocol.DisconnectErrorRate)
		return
	}
	s.client.Send("error", protocol.ErrorMessage("bad_message", message))
}

// bucket is a token bucket for inbound messages, small enough to live in
// every connection: rate per second, burst twice the rate.
type bucket struct {
	mu     sync.Mutex
	tokens float64
	last   int64
}

func (b *bucket) init(rate float64) { b.tokens, b.last = 2*rate, time.Now().UnixNano() }

func (b *bucket) take(rate float64) bool {
	if rate <= 0 {
		return true
	}
	now := time.Now().UnixNano()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(2*rate, b.tokens+float64(now-b.last)/1e9*rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, part := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}
