package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/hub"
	"github.com/knowledgehub/realtime/internal/protocol"
	"github.com/knowledgehub/realtime/internal/store"
)

// History serves GET /api/realtime/events: retained events after an id, with
// the visibility rules of a connection holding the same token.
type History struct {
	Log      store.Log
	Types    *event.Types
	Verify   func(token string) (auth.Claims, *auth.Error)
	MaxLimit int
	CORS     func(w http.ResponseWriter, r *http.Request)
	Observer interface {
		ObserveStore(op string, d time.Duration)
	}
}

// ServeHTTP implements SPEC §5.
func (h *History) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.CORS != nil {
		h.CORS(w, r)
	}
	params, perr := protocol.ParseParams(r, h.Types, 1000, false)
	if perr != nil {
		protocol.WriteError(w, http.StatusBadRequest, "invalid_parameter", perr.Error(), 0)
		return
	}
	q, _ := url.ParseQuery(r.URL.RawQuery)
	var after event.ID
	if v := q.Get("after"); v != "" {
		id, err := event.ParseID(v)
		if err != nil {
			protocol.WriteError(w, http.StatusBadRequest, "invalid_parameter", fmt.Sprintf("after: %q: %v", v, err), 0)
			return
		}
		after = id
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > h.MaxLimit {
			protocol.WriteError(w, http.StatusBadRequest, "invalid_parameter", fmt.Sprintf("limit: want 1 to %d", h.MaxLimit), 0)
			return
		}
		limit = n
	}
	var user string
	if params.Token != "" {
		claims, aerr := h.Verify(params.Token)
		if aerr != nil {
			protocol.WriteError(w, http.StatusUnauthorized, "invalid_token", aerr.Reason, 0)
			return
		}
		user = claims.Subject
	}
	sub := hub.NewSubscription(user, params.Types, params.Jobs)
	out := make([]byte, 0, 4096)
	out = append(out, '[')
	n := 0
	deadline := time.Now().Add(5 * time.Second)
	// Read pages until limit matching events are found or the log ends.
	for n < limit && time.Now().Before(deadline) {
		start := time.Now()
		evs, err := h.Log.Read(r.Context(), after, 500)
		if h.Observer != nil {
			h.Observer.ObserveStore("read", time.Since(start))
		}
		if err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, store.ErrUnavailable) {
				status = http.StatusServiceUnavailable
			}
			protocol.WriteError(w, status, "unavailable", "reading the event log failed", 0)
			return
		}
		for _, e := range evs {
			if n == limit {
				break
			}
			if sub.Matches(e) {
				if n > 0 {
					out = append(out, ',')
				}
				out = append(out, e.JSON...)
				n++
			}
		}
		if len(evs) < 500 {
			break
		}
		after = evs[len(evs)-1].ID
	}
	out = append(out, "]\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	_, _ = w.Write(out)
}
