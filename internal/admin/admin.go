// Package admin is the admin API of the free core: disconnect every
// connection of a user, on every node, and revoke a user's tokens by jti or
// by "issued before" until they expire. Revoked tokens are refused at connect
// and at refresh. Commands travel between nodes on a Bus (Redis pub/sub for
// store: redis) and are kept in a Journal so a restarted node still knows
// them.
package admin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/event"
)

// Operations of a Command.
const (
	OpDisconnect = "disconnect"
	OpRevoke     = "revoke"
)

// DefaultRevocationTTL is how long a revocation is kept when the request
// does not say: longer than the tokens of a typical identity provider live.
const DefaultRevocationTTL = 24 * time.Hour

// Command is one admin action, as it travels between nodes.
type Command struct {
	Op           string    `json:"op"`
	UserID       string    `json:"user_id"`
	JTI          string    `json:"jti,omitempty"`
	IssuedBefore time.Time `json:"issued_before,omitzero"`
	Until        time.Time `json:"until,omitzero"` // a revocation is forgotten after this
}

// Validate checks a command received from a client.
func (c *Command) Validate() error {
	if !event.ValidUserID(c.UserID) {
		return errors.New("user_id: required, 1 to 256 characters without control characters")
	}
	switch c.Op {
	case OpDisconnect:
	case OpRevoke:
		if (c.JTI == "") == c.IssuedBefore.IsZero() {
			return errors.New("revoke needs exactly one of jti and issued_before")
		}
		if len(c.JTI) > 256 {
			return errors.New("jti: at most 256 characters")
		}
	default:
		return fmt.Errorf("unknown op %q", c.Op)
	}
	return nil
}

// Bus carries commands to every node, this one included.
type Bus interface {
	// Publish sends cmd to every node and keeps revocations for nodes that
	// start later.
	Publish(ctx context.Context, cmd Command) error
	// Run delivers every command published by any node, and the kept
	// revocations at start, to apply until ctx is done.
	Run(ctx context.Context, apply func(Command)) error
}

// Revocations is the set of revoked tokens a node checks at connect and
// refresh. It is safe for concurrent use.
type Revocations struct {
	mu     sync.RWMutex
	jti    map[string]time.Time     // jti -> until
	before map[string]revokedBefore // user -> tokens issued before this are revoked
	now    func() time.Time
}

type revokedBefore struct{ at, until time.Time }

// NewRevocations returns an empty set.
func NewRevocations() *Revocations {
	return &Revocations{jti: map[string]time.Time{}, before: map[string]revokedBefore{}, now: time.Now}
}

// Add records a revoke command.
func (r *Revocations) Add(c Command) {
	if c.Op != OpRevoke {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.JTI != "" {
		r.jti[c.JTI] = c.Until
		return
	}
	if old, ok := r.before[c.UserID]; !ok || old.at.Before(c.IssuedBefore) {
		r.before[c.UserID] = revokedBefore{at: c.IssuedBefore, until: c.Until}
	}
}

// Revoked reports whether a verified token is revoked.
func (r *Revocations) Revoked(c auth.Claims) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	now := r.now()
	if c.ID != "" {
		if until, ok := r.jti[c.ID]; ok && now.Before(until) {
			return true
		}
	}
	if b, ok := r.before[c.Subject]; ok && now.Before(b.until) {
		// A token without iat cannot show it was issued after the cut.
		return c.IssuedAt.IsZero() || c.IssuedAt.Before(b.at)
	}
	return false
}

// Matches reports whether a live connection of user, whose token has the
// jti hash jtiHash (auth.JTIHash) and issue time issuedAt, falls under c.
func (c *Command) Matches(user string, jtiHash uint64, issuedAt time.Time) bool {
	if user != c.UserID {
		return false
	}
	switch {
	case c.Op == OpDisconnect:
		return true
	case c.JTI != "":
		return jtiHash == auth.JTIHash(c.JTI)
	default:
		return issuedAt.IsZero() || issuedAt.Before(c.IssuedBefore)
	}
}

// Prune forgets revocations past their Until.
func (r *Revocations) Prune() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for k, until := range r.jti {
		if !now.Before(until) {
			delete(r.jti, k)
		}
	}
	for k, b := range r.before {
		if !now.Before(b.until) {
			delete(r.before, k)
		}
	}
}
