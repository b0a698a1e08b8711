// Package ws is the WebSocket transport at /ws/notifications (SPEC §2), on
// the nbio event loop: no goroutine per connection.
package ws

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"

	"github.com/knowledgehub/realtime/internal/auth"
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
	// No read deadline (a timer per connection): the hub's ping sweep finds
	// peers that stopped answering (sink.Ping).
	u.KeepaliveTime = 0
	u.MessageLengthLimit = cfg.MaxMessageBytes
	// On Go's own server (TLS) the read goroutine is started after the
	// connection is set up, so no message arrives before its session.
	u.BlockingModHandleRead = false
	handler := &Handler{cfg: cfg, checker: checker, hub: h, logger: logger, upgrader: u, ctx: ctx}
	u.OnMessage(handler.onMessage)
	u.SetPongHandler(func(c *websocket.Conn, _ string) {
		if s, ok := c.Session().(*sink); ok {
			s.seen()
		}
	})
	u.SetPingHandler(func(c *websocket.Conn, data string) {
		if s, ok := c.Session().(*sink); ok {
			s.seen()
			// Through the writer, so the pong keeps its place among the
			// connection's other frames (a batched send may be in flight).
			_ = s.Write(append([]byte{0x8A, byte(len(data))}, data...))
			return
		}
		_ = c.WriteMessage(websocket.PongMessage, []byte(data))
	})
	u.SetCloseHandler(func(c *websocket.Conn, code int, text string) {
		// A close frame answers ours, or starts the closing handshake. Only
		// in the second case is one sent back: a second close frame from the
		// server makes browsers report 1006 instead of our code.
		s, ok := c.Session().(*sink)
		if ok && s.closed.Swap(true) {
			return
		}
		reply := []byte{0x88, 0x00}
		if code != 1005 {
			reply = closeFrame(protocol.Disconnect{Code: code})
		}
		if ok {
			// The engine closes the socket when this returns: the reply
			// goes out now, ahead of anything still staged.
			_ = s.WriteNow(reply)
			return
		}
		_, _ = c.Conn.Write(reply)
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
	s := &sink{conn: conn, handler: h}
	s.Init(conn.Conn, transport.EngineConn(conn.Conn), h.cfg.MaxQueueBytes)
	s.guard.init(h.cfg.MessageRate)
	s.seen()
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
		h.hub.Observer().Disconnect(handshake.WebSocket, protocol.DisconnectInvalidToken.Code)
		return
	}
	sub := hub.NewSubscription(req.User(), req.Params.Types, req.Params.Jobs)
	id := uuid.NewString()
	c := h.hub.NewClient(handshake.WebSocket, sub, req.Claims.ExpiresAt, s)
	s.client = c
	c.SetToken(auth.JTIHash(req.Claims.ID), req.Claims.IssuedAt)
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
	s.seen()
	if !s.guard.take(h.cfg.MessageRate) {
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
		c.Unsubscribe(msg.JobID, protocol.JobMessage("unsubscribed", msg.JobID))
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
		c.SetToken(auth.JTIHash(claims.ID), claims.IssuedAt)
		c.Send("refreshed", protocol.Refreshed(claims.Subject, claims.ExpiresAt))
	}
}

// sink is one WebSocket connection as the hub sees it.
type sink struct {
	transport.Writer
	conn     *websocket.Conn
	handler  *Handler
	client   *hub.Client
	closed   atomic.Bool
	lastSeen atomic.Int64 // Unix seconds of the last frame from the peer
	guard    guard
}

// seen notes that the peer sent something: it is alive.
func (s *sink) seen() { s.lastSeen.Store(time.Now().Unix()) }

// errSilent ends a connection whose peer stopped answering pings.
var errSilent = errors.New("websocket: peer silent for 2.5 ping intervals")

var pingFrame = []byte{0x89, 0x00}

// closeWait is how long a server-initiated close waits for the client's
// answering close frame.
const closeWait = 3 * time.Second

func (s *sink) WriteEvents(evs []*event.Event) error {
	return s.WriteFrames(evs, transport.WSFrame)
}

func (s *sink) StageEvents(b hub.Batch, evs []*event.Event) error {
	tb, _ := b.(*transport.Batch)
	return s.Stage(tb, evs, transport.WSFrame)
}

func (s *sink) WriteControl(name string, msg []byte) error {
	return s.Write(event.AppendWSTextFrame(make([]byte, 0, len(msg)+4), msg))
}

// Ping writes a ping, or reports errSilent when the peer has not answered
// the last two and a half intervals' pings.
func (s *sink) Ping() error {
	silent := time.Since(time.Unix(s.lastSeen.Load(), 0))
	if silent > s.handler.cfg.PingInterval*5/2 {
		return errSilent
	}
	return s.Write(pingFrame)
}

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
	_ = s.Write(closeFrame(d))
	// The client answers the close frame and the engine closes the socket.
	// Closing at once would reset a client still sending, before it read
	// the frame; one that does not answer is cut off after a moment, once
	// its queue drained (or CloseGrace passed).
	time.AfterFunc(closeWait, s.CloseWhenFlushed)
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
	if s.guard.bad(h.cfg.MaxBadMessages) {
		s.client.Close(protocol.DisconnectErrorRate)
		return
	}
	s.client.Send("error", protocol.ErrorMessage("bad_message", message))
}

// guard limits what one connection may send: a token bucket for messages
// (rate per second, burst twice the rate) and a count of bad messages per
// 10 s window. It is small enough to live in every connection.
type guard struct {
	mu     sync.Mutex
	tokens float32
	badN   int32
	last   int64 // Unix ns of the last refill
	badAt  int64 // Unix ns the bad-message window started
}

func (g *guard) init(rate float64) { g.tokens, g.last = float32(2*rate), time.Now().UnixNano() }

func (g *guard) take(rate float64) bool {
	if rate <= 0 {
		return true
	}
	now := time.Now().UnixNano()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.tokens = min(float32(2*rate), g.tokens+float32(float64(now-g.last)/1e9*rate))
	g.last = now
	if g.tokens < 1 {
		return false
	}
	g.tokens--
	return true
}

// bad counts a bad message and reports whether more than max came within
// the window.
func (g *guard) bad(max int) bool {
	now := time.Now().UnixNano()
	g.mu.Lock()
	defer g.mu.Unlock()
	if now-g.badAt > int64(10*time.Second) {
		g.badN, g.badAt = 0, now
	}
	g.badN++
	return int(g.badN) > max
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
