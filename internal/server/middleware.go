package server

import (
	"bufio"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
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
	// Split on ";" too: some servers take it as a separator, and a request
	// using it must not carry its token into the log.
	var b strings.Builder
	b.WriteString(u.Path)
	b.WriteByte('?')
	rest := u.RawQuery
	for rest != "" {
		i := strings.IndexAny(rest, "&;")
		part, sep := rest, ""
		if i >= 0 {
			part, sep, rest = rest[:i], rest[i:i+1], rest[i+1:]
		} else {
			rest = ""
		}
		name, _, _ := strings.Cut(part, "=")
		if n, err := url.QueryUnescape(name); err == nil {
			name = n
		}
		if strings.EqualFold(strings.TrimSpace(name), "token") || strings.EqualFold(strings.TrimSpace(name), "access_token") {
			part = "token=REDACTED"
		}
		b.WriteString(part)
		b.WriteString(sep)
	}
	return b.String()
}

// statusRecorder remembers the status of a response and keeps the
// connection hijackable.
type statusRecorder struct {
	http.ResponseWriter
	status  int
	upgrade bool // a WebSocket handshake: a taken-over connection answered 101
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
		// The taken-over connection is answered by its transport: 101 for a
		// WebSocket upgrade, 200 for an SSE stream.
		r.status = http.StatusOK
		if r.upgrade {
			r.status = http.StatusSwitchingProtocols
		}
	}
	return hj.Hijack()
}

// accessLog writes one line per handshake and API request with its outcome.
// Tokens are redacted from the URL; headers are not logged.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, upgrade: r.Header.Get("Upgrade") != ""}
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

// maxHeaderBytes bounds the request head: net/http allows 1 MiB, but no
// client of this gateway needs more than a token and a few headers.
const maxHeaderBytes = 64 << 10

// limitHeaders refuses requests with oversized heads (431).
func limitHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := len(r.RequestURI)
		for k, vs := range r.Header {
			for _, v := range vs {
				n += len(k) + len(v) + 4
			}
		}
		if n > maxHeaderBytes {
			protocol.WriteError(w, http.StatusRequestHeaderFieldsTooLarge, "headers_too_large", "request head over 64 KiB", 0)
			return
		}
		next.ServeHTTP(w, r)
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

// lengthWriter gives every response a Content-Length. The event loop's
// HTTP engine (nbio v1.6.8) mishandles its own chunked encoding for bodies
// over 64 KiB written without one: it frees a pooled buffer twice, so two
// connections can end up sharing it and one request's body is read as
// another's. Responses are therefore collected and written once, with their
// length; a handler that sets Content-Length itself writes straight through.
// Streams hijack their connection and never reach the buffer.
type lengthWriter struct {
	http.ResponseWriter
	status   int
	buf      []byte
	direct   bool // the handler set Content-Length: write through
	hijacked bool
}

func (lw *lengthWriter) WriteHeader(code int) {
	if lw.status != 0 {
		return
	}
	lw.status = code
	if lw.Header().Get("Content-Length") != "" {
		lw.direct = true
		lw.ResponseWriter.WriteHeader(code)
	}
}

func (lw *lengthWriter) Write(b []byte) (int, error) {
	if lw.status == 0 {
		lw.WriteHeader(http.StatusOK)
	}
	if lw.direct {
		return lw.ResponseWriter.Write(b)
	}
	lw.buf = append(lw.buf, b...)
	return len(b), nil
}

// Flush is a no-op: the body is written whole when the handler returns.
func (lw *lengthWriter) Flush() {}

func (lw *lengthWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := lw.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response cannot be hijacked")
	}
	lw.hijacked = true
	return hj.Hijack()
}

// finish writes the collected response with its length.
func (lw *lengthWriter) finish() {
	if lw.hijacked || lw.direct {
		return
	}
	if lw.status == 0 {
		lw.status = http.StatusOK
	}
	if lw.status != http.StatusNoContent && lw.status != http.StatusNotModified && lw.status >= 200 {
		lw.Header().Set("Content-Length", strconv.Itoa(len(lw.buf)))
	}
	lw.ResponseWriter.WriteHeader(lw.status)
	if len(lw.buf) > 0 {
		_, _ = lw.ResponseWriter.Write(lw.buf)
	}
}

// withLength wraps every response in a lengthWriter.
func withLength(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lw := &lengthWriter{ResponseWriter: w}
		defer lw.finish()
		next.ServeHTTP(lw, r)
	})
}
