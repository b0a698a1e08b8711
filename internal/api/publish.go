// Package api serves the HTTP APIs that are not streams: publishing (SPEC §4),
// history (§5) and the operational endpoints (§7).
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
	"github.com/knowledgehub/realtime/internal/store"
)

// Observer receives publish measurements.
type Observer interface {
	Accepted(typeIndex int, n int)
	ObserveStore(op string, d time.Duration)
}

// Publisher serves POST /api/realtime/events.
type Publisher struct {
	Log          store.Log
	Types        *event.Types
	Keys         Keys
	Limits       event.Limits
	MaxBodyBytes int
	Observer     Observer
	Logger       *slog.Logger
}

// Keys is a set of API keys compared in constant time.
type Keys [][]byte

// NewKeys returns the key set of list.
func NewKeys(list []string) Keys {
	k := make(Keys, 0, len(list))
	for _, s := range list {
		k = append(k, []byte(s))
	}
	return k
}

// Match reports whether key is one of the keys. Every key is compared, in
// constant time, so timing does not reveal which prefix matched.
func (k Keys) Match(key string) bool {
	ok := 0
	for _, want := range k {
		ok |= subtle.ConstantTimeCompare([]byte(key), want)
	}
	return ok == 1
}

// ServeHTTP accepts one event or an all-or-nothing batch, answering 201 once
// the events are durable in the log.
func (p *Publisher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key, ok := protocol.Bearer(r)
	if !ok || !p.Keys.Match(key) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="knowledgehub publish"`)
		protocol.WriteError(w, http.StatusUnauthorized, "unauthorized", "publishing needs Authorization: Bearer <publish key> (setting publish_keys)", 0)
		return
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		protocol.WriteError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json", 0)
		return
	}
	idemKey := r.Header.Get("Idempotency-Key")
	if len(idemKey) > 256 {
		protocol.WriteError(w, http.StatusBadRequest, "invalid_header", "Idempotency-Key: at most 256 characters", 0)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(p.MaxBodyBytes)))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			protocol.WriteError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("body over %d bytes (setting max_body_bytes)", p.MaxBodyBytes), 0)
			return
		}
		protocol.WriteError(w, http.StatusBadRequest, "bad_body", "reading body: "+err.Error(), 0)
		return
	}
	evs, batch, err := event.ParsePublish(body, p.Types, p.Limits)
	if err != nil {
		var pe *event.Error
		if errors.As(err, &pe) {
			protocol.WriteError(w, pe.Status, pe.Code, pe.Message, 0)
			return
		}
		protocol.WriteError(w, http.StatusBadRequest, "invalid_event", err.Error(), 0)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	ids, replayed, err := p.Log.Append(ctx, idemKey, evs)
	if p.Observer != nil {
		p.Observer.ObserveStore("append", time.Since(start))
	}
	if err != nil {
		p.Logger.Warn("publish failed", "err", err, "events", len(evs))
		if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, store.ErrClosed) {
			protocol.WriteError(w, http.StatusServiceUnavailable, "unavailable", "event log unavailable: the events may or may not have been stored; retry with the same Idempotency-Key to publish them exactly once", 2*time.Second)
			return
		}
		protocol.WriteError(w, http.StatusInternalServerError, "store_error", "event log error: the events may or may not have been stored; retry with the same Idempotency-Key", 0)
		return
	}
	if p.Observer != nil && !replayed {
		for _, e := range evs {
			p.Observer.Accepted(e.TypeIndex, 1)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	w.WriteHeader(http.StatusCreated)
	var resp any
	if batch {
		strs := make([]string, len(ids))
		for i, id := range ids {
			strs[i] = id.String()
		}
		resp = map[string]any{"ids": strs}
	} else {
		resp = map[string]string{"id": ids[0].String()}
	}
	_ = json.NewEncoder(w).Encode(resp)
}
