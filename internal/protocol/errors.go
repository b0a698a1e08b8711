package protocol

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// ErrorBody is the JSON body of every HTTP error (SPEC §2–§4).
type ErrorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// WriteError answers an HTTP request with status and the JSON error body.
// retryAfter, when positive, sets Retry-After in whole seconds (at least 1).
func WriteError(w http.ResponseWriter, status int, code, message string, retryAfter time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		secs := int((retryAfter + time.Second - 1) / time.Second)
		h.Set("Retry-After", strconv.Itoa(secs))
	}
	w.WriteHeader(status)
	b, _ := json.Marshal(ErrorBody{Error: code, Message: message})
	_, _ = w.Write(append(b, '\n'))
}
