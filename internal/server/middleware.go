package server

import (
	"bufio"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/knowledgehub/realtime/internal/protocol"
)

// RedactURL returns the request URI with the token parameter's value
// replaced, so that no log line holds a token.
func RedactURL(u *url.URL) string {
	if u.RawQuery == "" {
		return u.Path
	}
	parts := strings.Split(u.RawQuery, "&")
	for i, p := range parts {
		name, _, _ := strings.Cut(p, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if strings.EqualFold(name, "token") || strings.EqualFold(name, "access_token") {
			parts[i] = name + "=REDACTED"
		}
	}
	return u.Path + "?" + strings.Join(parts, "&")
}

// statusRecorder remembers the status of a response and keeps the
// connection hijackable.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response cannot be hijacked")
	}
	if r.status == 0 {
		r.status = http.StatusSwitchingProtocols
	}
	return hj.Hijack()
}

// accessLog writes one line per handshake and API request with its outcome.
// Tokens are redacted from the URL; headers are not logged.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if r.URL.Path == "/metrics" || r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/api/realtime/stats" {
			return
		}
		level := slog.LevelInfo
		if r.URL.Path == "/api/realtime/events" && r.Method == http.MethodPost && rec.status < 400 {
			level = slog.LevelDebug // one line per publish is too many at info
		}
		s.logger.Log(r.Context(), level, "http",
			"method", r.Method, "url", RedactURL(r.URL), "status", rec.status,
			"remote", r.RemoteAddr, "duration_ms", time.Since(start).Milliseconds())
	})
}

// recoverPanics turns a panic in a handler into a logged, counted 500.
func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				s.metrics.PanicRecovered()
				s.logger.Error("panic in handler", "panic", v, "url", RedactURL(r.URL), "stack", string(debug.Stack()))
				protocol.WriteError(w, http.StatusInternalServerError, "internal", "internal error", 0)
			}
		}()
		next.ServeHTTP(w, r)
	})
}
