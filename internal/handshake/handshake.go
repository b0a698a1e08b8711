// Package handshake runs the checks that come before a WebSocket upgrade or
// an SSE stream, in the order of SPEC §2: connection and rate limits (429),
// origin (403, WebSocket only), parameters (400), and the token (for SSE a
// 401; for WebSocket reported after the upgrade with close code 4001). Both
// transports call it, so the order and the answers are written once.
package handshake

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/hub"
	"github.com/knowledgehub/realtime/internal/limits"
	"github.com/knowledgehub/realtime/internal/origin"
	"github.com/knowledgehub/realtime/internal/protocol"
)

// Rejections are counted by reason.
type Observer interface {
	HandshakeRejected(reason string)
}

// Checker holds what the checks need.
type Checker struct {
	Types    *event.Types
	Hub      *hub.Hub
	Verifier *auth.Verifier
	Origins  *origin.Checker
	Limiter  *limits.Limiter
	Trusted  []netip.Prefix
	Observer Observer
	// Revoked, when set, reports whether verified claims were revoked.
	Revoked func(auth.Claims) bool

	draining atomic.Bool
}

// Drain makes every later handshake answer 503: the server is shutting down.
func (c *Checker) Drain() { c.draining.Store(true) }

// Draining reports whether Drain was called.
func (c *Checker) Draining() bool { return c.draining.Load() }

// Request is a handshake that passed the checks.
type Request struct {
	Params   protocol.Params
	IP       string
	Claims   auth.Claims // zero for anonymous connections
	TokenErr *auth.Error // a token was given and is not valid (WebSocket: close 4001 after the upgrade)
	Ticket   *limits.Ticket
}

// User returns the authenticated user, "" when anonymous.
func (r *Request) User() string { return r.Claims.Subject }

// Transports.
const (
	WebSocket = "websocket"
	SSE       = "sse"
)

// Check runs the pre-upgrade checks for transport and answers the request
// itself when one fails (ok false). On success the caller owns Ticket and
// must release it when the connection ends.
func (c *Checker) Check(w http.ResponseWriter, r *http.Request, transport string) (req *Request, ok bool) {
	if c.Draining() {
		c.reject(w, "shutdown", http.StatusServiceUnavailable, "shutting_down", "server is shutting down; reconnect to another node or retry shortly", 2*time.Second)
		return nil, false
	}
	req = &Request{IP: limits.ClientIP(r, c.Trusted)}

	// Verify early, only to learn the user for the per-user limits; a bad
	// token is reported at its own step below.
	token, ok := protocol.Bearer(r)
	if !ok {
		token = r.URL.Query().Get("token")
	}
	var tokenErr *auth.Error
	if token != "" {
		claims, err := c.verify(token)
		if err != nil {
			tokenErr = err
		} else {
			req.Claims = claims
		}
	}

	ticket, rej := c.Limiter.Admit(req.IP, req.Claims.Subject)
	if rej != nil {
		c.reject(w, "limit", http.StatusTooManyRequests, rej.Reason, rej.Message, rej.RetryAfter)
		return nil, false
	}
	req.Ticket = ticket
	fail := func() (*Request, bool) {
		ticket.Release()
		return nil, false
	}

	if transport == WebSocket {
		if o := r.Header.Get("Origin"); o != "" && !c.Origins.Allowed(o) {
			c.reject(w, "origin", http.StatusForbidden, "origin_not_allowed", fmt.Sprintf("origin %q is not allowed (setting allowed_origins)", clip(o)), 0)
			return fail()
		}
	}

	params, perr := protocol.ParseParams(r, c.Types, c.Hub.Config().MaxJobs, transport == SSE)
	if perr != nil {
		c.reject(w, "parameter", http.StatusBadRequest, "invalid_parameter", perr.Error(), 0)
		return fail()
	}
	req.Params = params
	if params.Resume {
		if err := c.Hub.CheckResume(params.ResumeID); err != nil {
			c.reject(w, "parameter", http.StatusBadRequest, "invalid_parameter", fmt.Sprintf("%s: %q %v", params.ResumeParam, params.ResumeRaw, err), 0)
			return fail()
		}
	}

	if tokenErr != nil {
		if transport == SSE {
			c.reject(w, "token", http.StatusUnauthorized, "invalid_token", tokenErr.Reason, 0)
			return fail()
		}
		if c.Observer != nil {
			c.Observer.HandshakeRejected("token")
		}
		req.TokenErr = tokenErr
	}
	return req, true
}

func (c *Checker) verify(token string) (auth.Claims, *auth.Error) {
	claims, err := c.Verifier.Verify(token)
	if err != nil {
		var ae *auth.Error
		if errors.As(err, &ae) {
			return claims, ae
		}
		return claims, &auth.Error{Reason: "malformed", Err: err}
	}
	// The verifier forgives a few seconds of clock skew on exp; a live
	// connection cannot use an expired token at all, or it would be accepted
	// and expire in the same instant, over and over.
	if !claims.ExpiresAt.IsZero() && !time.Now().Before(claims.ExpiresAt) {
		return auth.Claims{}, &auth.Error{Reason: auth.ReasonExpired}
	}
	if c.Revoked != nil && c.Revoked(claims) {
		return auth.Claims{}, &auth.Error{Reason: "revoked"}
	}
	return claims, nil
}

// Verify checks a token given on a live connection (a WebSocket refresh).
func (c *Checker) Verify(token string) (auth.Claims, *auth.Error) { return c.verify(token) }

func (c *Checker) reject(w http.ResponseWriter, reason string, status int, code, message string, retryAfter time.Duration) {
	if c.Observer != nil {
		c.Observer.HandshakeRejected(reason)
	}
	protocol.WriteError(w, status, code, message, retryAfter)
}

func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}
