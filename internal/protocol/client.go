package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/knowledgehub/realtime/internal/event"
)

// ClientMessage is a message a WebSocket client sends (SPEC §2).
type ClientMessage struct {
	Type  string `json:"type"`
	JobID string `json:"job_id"`
	Token string `json:"token"`
}

// ParseClientMessage validates a client message. The error text is sent back
// as the message of a bad_message error.
func ParseClientMessage(b []byte) (ClientMessage, error) {
	var m ClientMessage
	if !utf8.Valid(b) {
		return m, errors.New("message is not valid UTF-8")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return m, errors.New("message is not a JSON object")
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"type", &m.Type}, {"job_id", &m.JobID}, {"token", &m.Token}} {
		v, ok := raw[f.name]
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, f.dst); err != nil {
			return m, fmt.Errorf("%s must be a string", f.name)
		}
	}
	switch m.Type {
	case "subscribe", "unsubscribe":
		if m.JobID == "" {
			return m, fmt.Errorf("%s needs job_id", m.Type)
		}
		if !event.ValidJobID(m.JobID) {
			return m, fmt.Errorf("job_id %q is not a job id ([A-Za-z0-9._:-]{1,128})", clip(m.JobID))
		}
	case "ping":
	case "refresh":
		if m.Token == "" {
			return m, errors.New("refresh needs token")
		}
	case "":
		return m, errors.New("message has no type")
	default:
		return m, fmt.Errorf("unknown message type %q (want subscribe, unsubscribe, ping or refresh)", clip(m.Type))
	}
	return m, nil
}
