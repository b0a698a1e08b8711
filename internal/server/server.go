// Package server assembles a node: the configured event log, the hub, the
// transports and APIs on one HTTP mux, served by the nbio event loop; and
// the graceful shutdown of SPEC §7.
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/lesismal/nbio"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"

	"github.com/knowledgehub/realtime/internal/admin"
	"github.com/knowledgehub/realtime/internal/api"
	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/config"
	"github.com/knowledgehub/realtime/internal/console"
	"github.com/knowledgehub/realtime/internal/devkeys"
	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/handshake"
	"github.com/knowledgehub/realtime/internal/hub"
	"github.com/knowledgehub/realtime/internal/limits"
	"github.com/knowledgehub/realtime/internal/metrics"
	"github.com/knowledgehub/realtime/internal/origin"
	"github.com/knowledgehub/realtime/internal/protocol"
	"github.com/knowledgehub/realtime/internal/store"
	"github.com/knowledgehub/realtime/internal/store/disk"
	redislog "github.com/knowledgehub/realtime/internal/store/redis"
	"github.com/knowledgehub/realtime/internal/transport"
	"github.com/knowledgehub/realtime/internal/transport/sse"
	"github.com/knowledgehub/realtime/internal/transport/ws"
)

// Server is one node.
type Server struct {
	cfg      *config.Config
	logger   *slog.Logger
	types    *event.Types
	log      store.Log
	hub      *hub.Hub
	verifier *auth.Verifier
	limiter  *limits.Limiter
	// revocations are checked at connect and refresh; adminBus carries
	// admin commands to every node.
	revocations *admin.Revocations
	adminBus    admin.Bus
	// userCounter counts users' connections across nodes (store: redis).
	userCounter *redislog.ConnCounter
	metrics     *metrics.Metrics
	checker     *handshake.Checker
	engine      *nbhttp.Engine

	runCtx    context.Context
	runCancel context.CancelFunc

	// tlsServer serves HTTPS and WSS with Go's crypto/tls when
	// tls_cert_file is set; otherwise the event loop serves plain HTTP.
	tlsServer *http.Server

	mu       sync.Mutex
	listener net.Listener
}

// New builds a node from cfg. Nothing listens until Run.
func New(cfg *config.Config, logger *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, logger: logger}
	routeEngineLogs(logger)
	s.runCtx, s.runCancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			s.runCancel()
			if s.log != nil {
				_ = s.log.Close()
			}
		}
	}()

	types, err := event.NewTypes(cfg.EventTypes)
	if err != nil {
		return nil, fmt.Errorf("setting event_types: %w", err)
	}
	s.types = types

	if len(cfg.JWTSecrets) == 0 && cfg.JWKS == "" && len(cfg.PublishKeys) == 0 {
		keys, created, err := devkeys.LoadOrCreate(cfg.DataDir)
		if err != nil {
			return nil, fmt.Errorf("setting data_dir: %w", err)
		}
		cfg.JWTSecrets = []string{keys.JWTSecret}
		cfg.PublishKeys = []string{keys.PublishKey}
		if len(cfg.AdminKeys) == 0 {
			cfg.AdminKeys = []string{keys.AdminKey}
		}
		verb := "using"
		if created {
			verb = "created"
		}
		logger.Warn("no jwt_secret, jwks or publish_keys configured: "+verb+" development credentials; `knowledgehub token` and `knowledgehub publish` on this machine find them", "file", devkeys.Path(cfg.DataDir))
	}

	s.verifier, err = auth.New(s.runCtx, auth.Config{Secrets: cfg.JWTSecrets, JWKS: cfg.JWKS, Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience, Logger: logger})
	if err != nil {
		return nil, err
	}
	origins := cfg.AllowedOrigins
	if len(origins) == 0 {
		origins = origin.Default(cfg.Port())
	}
	originChecker, err := origin.New(origins)
	if err != nil {
		return nil, fmt.Errorf("setting allowed_origins: %w", err)
	}
	trusted, err := limits.ParseTrusted(cfg.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("setting trusted_proxies: %w", err)
	}
	s.metrics = metrics.New(types.Names())

	s.log, err = openLog(s.runCtx, cfg, types, logger)
	if err != nil {
		return nil, err
	}
	limitCfg := limits.Config{
		MaxConnections: cfg.MaxConnections, MaxPerUser: cfg.MaxConnsPerUser, MaxPerIP: cfg.MaxConnsPerIP,
		RatePerIP: cfg.ConnectRatePerIP, RatePerUser: cfg.ConnectRatePerUsr,
		OnError: func(err error) { logger.Warn("cluster connection count unavailable; local limits apply", "err", err) },
	}
	if rl, isRedis := s.log.(*redislog.Log); isRedis {
		// Every node on the Redis counts a user's connections in one place.
		s.userCounter = redislog.NewConnCounter(rl.Client(), rl.Prefix(), uuid.NewString(), 0, logger)
		limitCfg.UserCounter = s.userCounter
	}
	s.limiter = limits.New(limitCfg)
	s.hub = hub.New(hub.Config{
		PingInterval: cfg.PingInterval, KeepaliveInterval: cfg.SSEKeepalive, MaxJobs: cfg.MaxSubscriptions,
		NewBatch: sendBatches(cfg.SendBatching, logger),
	}, s.log, s.metrics, logger)
	s.revocations = admin.NewRevocations()
	switch l := s.log.(type) {
	case *redislog.Log:
		s.adminBus = admin.NewRedisBus(l.Client(), l.Prefix(), logger)
	case *disk.Log:
		s.adminBus = admin.NewLocalBus(filepath.Join(cfg.DataDir, "revocations.json"))
	default:
		s.adminBus = admin.NewLocalBus("")
	}
	s.checker = &handshake.Checker{Types: types, Hub: s.hub, Verifier: s.verifier, Origins: originChecker, Limiter: s.limiter, Trusted: trusted, Observer: s.metrics, Revoked: s.revocations.Revoked}

	addrs := []string{cfg.Addr}
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("settings tls_cert_file and tls_key_file: %w", err)
		}
		s.tlsServer = s.newTLSServer(cert)
		// Go's server takes the address; the engine only lends its buffers
		// and timers to the WebSocket upgrader.
		addrs = nil
	}
	s.engine = nbhttp.NewEngine(nbhttp.Config{
		Name:                    "knowledgehub",
		Network:                 "tcp",
		Addrs:                   addrs,
		Listen:                  s.listen,
		MaxLoad:                 cfg.MaxConnections + 1024,
		ReleaseWebsocketPayload: true,
		// A backstop above our own limit (transport.HardLimitFactor x the
		// budget), which closes slow consumers with 4208 first.
		MaxWriteBufferSize: (transport.HardLimitFactor+1)*cfg.MaxQueueBytes + transport.ChunkBytes,
		// Our handler answers 413 for bodies over max_body_bytes; the engine
		// cuts off (closes) only those over twice that.
		MaxHTTPBodySize: 2*cfg.MaxBodyBytes + 64<<10,
		// Unparsed bytes one connection may make the engine hold: a request
		// head and body (heads over 64 KiB are then refused with 431).
		ReadLimit:     2*cfg.MaxBodyBytes + 1<<20,
		KeepaliveTime: 60 * time.Second,
	})
	// Client messages are checked for UTF-8 by the protocol, which answers
	// bad_message and keeps the connection, as SPEC §2 promises; the
	// engine's own check would close it with 1002.
	s.engine.CheckUtf8 = func([]byte) bool { return true }
	// The WebSocket upgrader needs the engine, so routes are built after it.
	s.engine.Handler = s.routes()
	if s.tlsServer != nil {
		s.tlsServer.Handler = s.engine.Handler
	}
	s.engine.OnWrittenSize(countWritten)
	raceSyncHandoff(s.engine.Engine)
	ok = true
	return s, nil
}

// openLog opens the configured event log.
func openLog(ctx context.Context, cfg *config.Config, types *event.Types, logger *slog.Logger) (store.Log, error) {
	ret := store.Retention{MaxEvents: cfg.HistorySize, MaxAge: cfg.HistoryTTL}
	switch cfg.Store {
	case "memory":
		return store.NewMemory(ret), nil
	case "disk":
		l, err := disk.Open(cfg.DataDir, types, ret, logger)
		if err != nil {
			return nil, fmt.Errorf("setting store: disk: %w", err)
		}
		return l, nil
	case "redis":
		l, err := redislog.Open(ctx, cfg.RedisURL, cfg.RedisPrefix, types, ret, logger)
		if err != nil {
			return nil, fmt.Errorf("setting store: redis: %w", err)
		}
		return l, nil
	default:
		return nil, fmt.Errorf("setting store: unknown store %q", cfg.Store)
	}
}

// sendBatches gives each fan-out worker a transport.Batch (io_uring) when
// setting is auto and the kernel allows it; otherwise deliveries are
// written one by one.
func sendBatches(setting string, logger *slog.Logger) func() hub.Batch {
	if setting == "off" {
		return nil
	}
	var once sync.Once
	return func() hub.Batch {
		b, err := transport.NewBatch()
		if err != nil {
			once.Do(func() { logger.Info("send batching off: one write per delivery", "err", err) })
			return nil
		}
		return b
	}
}

// countWritten tells a connection's writer how many bytes the engine wrote.
func countWritten(c *nbio.Conn, _ []byte, n int) {
	type counter interface{ Written(int) }
	switch s := c.Session().(type) {
	case *websocket.Conn:
		if w, ok := s.Session().(counter); ok {
			w.Written(n)
		}
	case counter:
		s.Written(n)
	}
}

func (s *Server) listen(network, addr string) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("setting addr: listen on %s: %w", addr, err)
	}
	s.mu.Lock()
	s.listener = ln
	s.mu.Unlock()
	return ln, nil
}

// Addr returns the address the server listens on, once Run started it.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return nil
	}
	return s.listener.Addr()
}

// Hub returns the node's hub.
func (s *Server) Hub() *hub.Hub { return s.hub }

// Metrics returns the node's metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

func (s *Server) routes() http.Handler {
	cfg := s.cfg
	mux := http.NewServeMux()
	wsHandler := ws.New(s.runCtx, ws.Config{
		MaxMessageBytes: cfg.MaxMessageBytes, MaxQueueBytes: cfg.MaxQueueBytes, MessageRate: cfg.MessageRate, PingInterval: cfg.PingInterval,
	}, s.engine, s.checker, s.hub, s.logger)
	sseHandler := sse.New(s.runCtx, sse.Config{AllowedOrigins: cfg.SSEAllowedOrigins, Retry: cfg.SSERetry, MaxQueueBytes: cfg.MaxQueueBytes}, s.checker, s.hub, s.logger)
	publisher := &api.Publisher{
		Log: s.log, Types: s.types, Keys: api.NewKeys(cfg.PublishKeys),
		Limits:       event.Limits{MaxDataBytes: cfg.MaxEventBytes, MaxBatch: cfg.MaxBatch},
		MaxBodyBytes: cfg.MaxBodyBytes, Observer: s.metrics, Logger: s.logger,
	}
	history := &api.History{Log: s.log, Types: s.types, Verify: s.checker.Verify, MaxLimit: 1000, CORS: sseHandler.CORS, Observer: s.metrics}

	mux.Handle("/ws/notifications", wsHandler)
	mux.Handle("/api/realtime/stream", sseHandler)
	mux.HandleFunc("/api/realtime/events", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			if s.checker.Draining() {
				protocol.WriteError(w, http.StatusServiceUnavailable, "shutting_down", "server is shutting down; retry on another node", 2*time.Second)
				return
			}
			publisher.ServeHTTP(w, r)
		case http.MethodGet:
			history.ServeHTTP(w, r)
		case http.MethodOptions:
			sseHandler.CORS(w, r)
			w.Header().Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
			w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key")
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "GET, POST, OPTIONS")
			protocol.WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST to publish or GET for history", 0)
		}
	})
	mux.HandleFunc("/api/realtime/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		batching := "off"
		if s.hub.Batched() > 0 {
			batching = "io_uring"
		}
		_ = json.NewEncoder(w).Encode(struct {
			metrics.Stats
			EventTypes   []string `json:"event_types"`   // every type this hub accepts
			SendBatching string   `json:"send_batching"` // io_uring, or off (setting off or io_uring unavailable)
		}{s.metrics.Snapshot(), s.types.Names(), batching})
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	mux.HandleFunc("/readyz", s.readyz)
	adminHandler := &admin.Handler{Keys: api.NewKeys(cfg.AdminKeys), Bus: s.adminBus, Logger: s.logger}
	mux.Handle("/api/admin/", adminHandler)
	mux.Handle("/metrics", s.metrics.Handler())
	mux.Handle("/", console.Handler())
	return withLength(s.accessLog(s.recoverPanics(limitHeaders(mux))))
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if s.checker.Draining() {
		protocol.WriteError(w, http.StatusServiceUnavailable, "not_ready", "shutting down", 0)
		return
	}
	if err := s.log.Ping(ctx); err != nil {
		protocol.WriteError(w, http.StatusServiceUnavailable, "not_ready", "event log unreachable: "+err.Error(), 0)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"status":"ready"}` + "\n"))
}

// Drain makes the node refuse what starts from now on, as the first step of
// a shutdown: handshakes and publishes get 503 with Retry-After, /readyz
// turns 503 so a load balancer stops sending, while open connections go on.
func (s *Server) Drain() { s.checker.Drain() }

// Run serves until ctx is done, then shuts down gracefully: new handshakes
// and publishes get 503, WebSockets are closed with 1001, SSE streams end
// with a randomized retry, and the log is flushed and closed.
func (s *Server) Run(ctx context.Context) error {
	hubDone := make(chan error, 1)
	go func() { hubDone <- s.hub.Run(s.runCtx) }()
	// Background workers of the node, stopped by runCancel.
	var background sync.WaitGroup
	background.Go(func() { s.limiter.Run(s.runCtx) })
	if s.userCounter != nil {
		background.Go(func() { s.userCounter.Run(s.runCtx) })
	}
	background.Go(func() {
		if err := s.adminBus.Run(s.runCtx, s.applyAdmin); err != nil {
			s.logger.Error("admin commands stopped", "err", err)
		}
	})
	background.Go(func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-s.runCtx.Done():
				return
			case <-t.C:
				s.revocations.Prune()
			}
		}
	})

	tlsDone := make(chan error, 1)
	err := s.engine.Start()
	if err == nil && s.tlsServer != nil {
		err = s.startTLS(tlsDone)
	}
	if err != nil {
		s.runCancel()
		<-hubDone
		background.Wait()
		_ = s.log.Close()
		return fmt.Errorf("start listener: %w", err)
	}
	s.logger.Info("knowledgehub listening", "addr", s.Addr().String(), "store", s.cfg.Store)
	if s.cfg.PprofAddr != "" {
		stopPprof, err := s.startPprof(context.Background())
		if err != nil {
			s.logger.Error("no profiles", "err", err)
		} else {
			defer stopPprof()
		}
	}
	if s.cfg.Store != "memory" || len(s.cfg.JWTSecrets) > 0 {
		s.recordURL()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-hubDone:
		runErr = err
		hubDone <- err
	}
	s.logger.Info("shutting down")
	s.Drain()
	s.hub.Shutdown()
	deadline := time.Now().Add(s.cfg.ShutdownTimeout)
	for s.hub.Count() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let the last close frames leave
	shutCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if s.tlsServer != nil {
		_ = s.tlsServer.Shutdown(shutCtx)
		<-tlsDone
	}
	_ = s.engine.Shutdown(shutCtx)
	s.runCancel()
	if err := <-hubDone; err != nil && runErr == nil {
		runErr = err
	}
	background.Wait()
	s.verifier.Close()
	if err := s.log.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("close event log: %w", err)
	}
	s.logger.Info("stopped")
	return runErr
}

// applyAdmin carries out an admin command on this node: it remembers a
// revocation and closes the live connections the command names (4003).
func (s *Server) applyAdmin(c admin.Command) {
	s.revocations.Add(c)
	n := s.hub.DisconnectWhere(c.UserID, func(cl *hub.Client) bool {
		jti, iat := cl.Token()
		return c.Matches(cl.User(), jti, iat)
	}, protocol.DisconnectRevoked)
	if n > 0 {
		s.logger.Info("admin: closed connections", "op", c.Op, "user_id", c.UserID, "connections", n)
	}
}

// recordURL stores where this server listens next to the development
// credentials, so the CLI finds it.
func (s *Server) recordURL() {
	keys, err := devkeys.Load(s.cfg.DataDir)
	if err != nil {
		return
	}
	keys.URL = "http://" + localAddr(s.Addr())
	if err := devkeys.Save(s.cfg.DataDir, keys); err != nil {
		s.logger.Warn("could not record the server address", "err", err)
	}
}

func localAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
	}
	return tcp.String()
}
