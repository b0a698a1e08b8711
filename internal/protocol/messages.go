package protocol

import (
	"encoding/json"
	"time"
)

// Connected is the welcome message (SPEC §2, §3).
type Connected struct {
	Type          string  `json:"type"`
	ClientID      string  `json:"client_id"`
	UserID        *string `json:"user_id"`
	Authenticated bool    `json:"authenticated"`
	Message       string  `json:"message"`
	ExpiresAt     string  `json:"expires_at,omitempty"`
}

// Welcome builds the welcome message for a connection.
func Welcome(clientID, user string, expires time.Time, message string) []byte {
	m := Connected{Type: "connected", ClientID: clientID, Authenticated: user != "", Message: message}
	if user != "" {
		m.UserID = &user
	}
	if !expires.IsZero() {
		m.ExpiresAt = FormatTime(expires)
	}
	return mustJSON(m)
}

// FormatTime is the wire form of times in control messages.
func FormatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// ErrorMessage is {"type":"error","code":...,"message":...}.
func ErrorMessage(code, message string) []byte {
	return mustJSON(struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}{"error", code, message})
}

// JobMessage is {"type":"subscribed"|"unsubscribed","job_id":...}.
func JobMessage(typ, jobID string) []byte {
	return mustJSON(struct {
		Type  string `json:"type"`
		JobID string `json:"job_id"`
	}{typ, jobID})
}

// Pong answers a client ping.
var Pong = []byte(`{"type":"pong"}`)

// Refreshed answers a successful token refresh.
func Refreshed(user string, expires time.Time) []byte {
	m := struct {
		Type      string `json:"type"`
		UserID    string `json:"user_id"`
		ExpiresAt string `json:"expires_at,omitempty"`
	}{Type: "refreshed", UserID: user}
	if !expires.IsZero() {
		m.ExpiresAt = FormatTime(expires)
	}
	return mustJSON(m)
}

// TokenExpiring warns that the token expires soon.
func TokenExpiring(expires time.Time) []byte {
	return mustJSON(struct {
		Type      string `json:"type"`
		ExpiresAt string `json:"expires_at"`
	}{"token_expiring", FormatTime(expires)})
}

// TokenExpired tells an SSE client why its stream ends.
func TokenExpired(expires time.Time) []byte {
	return mustJSON(struct {
		Type      string `json:"type"`
		ExpiresAt string `json:"expires_at"`
	}{"token_expired", FormatTime(expires)})
}

// Gap tells a resuming client that events after lastEventID were pruned
// before it came back; oldest is the first event it will receive.
func Gap(lastEventID, oldest string) []byte {
	return mustJSON(struct {
		Type   string `json:"type"`
		Last   string `json:"last_event_id"`
		Oldest string `json:"oldest_available_id"`
	}{"gap", lastEventID, oldest})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("protocol: encode control message: " + err.Error())
	}
	return b
}
