package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/knowledgehub/realtime/internal/api"
	"github.com/knowledgehub/realtime/internal/protocol"
)

// Handler serves POST /api/admin/disconnect and POST /api/admin/revoke.
type Handler struct {
	Keys   api.Keys
	Bus    Bus
	Logger *slog.Logger
}

// request is the body of both endpoints.
type request struct {
	UserID       string    `json:"user_id"`
	JTI          string    `json:"jti"`
	IssuedBefore time.Time `json:"issued_before"`
	// TTL, in seconds, is how long a revocation is kept: as long as the
	// longest-lived token it must refuse. Default: 24 hours.
	TTL int64 `json:"ttl_seconds"`
}

// ServeHTTP implements the admin API.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		protocol.WriteError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST", 0)
		return
	}
	key, ok := protocol.Bearer(r)
	if !ok || len(h.Keys) == 0 || !h.Keys.Match(key) {
		protocol.WriteError(w, http.StatusUnauthorized, "unauthorized", "the admin API needs Authorization: Bearer <admin key> (setting admin_keys)", 0)
		return
	}
	var req request
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		err = dec.Decode(&req)
	}
	if err != nil {
		protocol.WriteError(w, http.StatusBadRequest, "invalid_body", "body: "+err.Error(), 0)
		return
	}
	cmd := Command{UserID: req.UserID, JTI: req.JTI, IssuedBefore: req.IssuedBefore}
	switch r.URL.Path {
	case "/api/admin/disconnect":
		cmd.Op = OpDisconnect
		if req.JTI != "" || !req.IssuedBefore.IsZero() {
			protocol.WriteError(w, http.StatusBadRequest, "invalid_body", "disconnect takes only user_id", 0)
			return
		}
	case "/api/admin/revoke":
		cmd.Op = OpRevoke
		ttl := DefaultRevocationTTL
		if req.TTL < 0 {
			protocol.WriteError(w, http.StatusBadRequest, "invalid_body", "ttl_seconds: must be positive", 0)
			return
		}
		if req.TTL > 0 {
			ttl = time.Duration(req.TTL) * time.Second
		}
		cmd.Until = time.Now().Add(ttl)
	default:
		protocol.WriteError(w, http.StatusNotFound, "not_found", "admin endpoints: /api/admin/disconnect, /api/admin/revoke", 0)
		return
	}
	if err := cmd.Validate(); err != nil {
		protocol.WriteError(w, http.StatusBadRequest, "invalid_body", err.Error(), 0)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := h.Bus.Publish(ctx, cmd); err != nil {
		h.Logger.Warn("admin command failed", "op", cmd.Op, "err", err)
		status := http.StatusServiceUnavailable
		if errors.Is(err, context.Canceled) {
			status = http.StatusInternalServerError
		}
		protocol.WriteError(w, status, "unavailable", "the command could not be sent to the nodes; retry", time.Second)
		return
	}
	h.Logger.Info("admin command", "op", cmd.Op, "user_id", cmd.UserID, "jti", cmd.JTI, "issued_before", cmd.IssuedBefore)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"status": "accepted", "op": cmd.Op, "user_id": cmd.UserID})
}
