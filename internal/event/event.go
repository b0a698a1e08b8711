package event

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// TimeLayout is the wire form of Event.Time: RFC 3339, milliseconds, UTC.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// Event is an accepted event. Once sealed it is immutable and shared by every
// connection that receives it, so its encoded forms are built exactly once.
type Event struct {
	ID     ID
	Type   string
	Data   json.RawMessage // compact JSON: no CR or LF, so it cannot break an SSE frame
	UserID string          // "" when the event is public
	JobID  string          // "" when the event belongs to no job
	Time   time.Time
	// TypeIndex is the position of Type in the Types registry that accepted it;
	// filters are bit sets over these positions.
	TypeIndex int

	// JSON is the event object of SPEC §1.
	JSON []byte
	// SSE is the complete Server-Sent Events frame: "id: ...\ndata: <JSON>\n\n".
	SSE []byte
	// WS is the complete unmasked WebSocket text frame holding JSON; a server
	// frame is the same for every connection, so it is framed once.
	WS []byte
}

// Seal builds the encoded forms from the fields. Call it once, after ID and
// Time are assigned and before the event is shared.
func (e *Event) Seal() {
	b := make([]byte, 0, 96+len(e.Type)+len(e.Data)+len(e.UserID)+len(e.JobID))
	b = append(b, `{"id":"`...)
	b = e.ID.AppendText(b)
	b = append(b, `","type":`...)
	b = appendJSONString(b, e.Type)
	b = append(b, `,"data":`...)
	if len(e.Data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, e.Data...)
	}
	if e.UserID != "" {
		b = append(b, `,"user_id":`...)
		b = appendJSONString(b, e.UserID)
	}
	if e.JobID != "" {
		b = append(b, `,"job_id":`...)
		b = appendJSONString(b, e.JobID)
	}
	b = append(b, `,"timestamp":"`...)
	b = e.Time.UTC().AppendFormat(b, TimeLayout)
	b = append(b, `"}`...)
	e.JSON = b

	sse := make([]byte, 0, len(b)+40)
	sse = append(sse, "id: "...)
	sse = e.ID.AppendText(sse)
	sse = append(sse, "\ndata: "...)
	sse = append(sse, b...)
	sse = append(sse, "\n\n"...)
	e.SSE = sse

	e.WS = AppendWSTextFrame(make([]byte, 0, len(b)+10), b)
}

// AppendWSTextFrame appends an unmasked, final WebSocket text frame holding
// payload to dst (RFC 6455 §5.2).
func AppendWSTextFrame(dst, payload []byte) []byte {
	n := len(payload)
	dst = append(dst, 0x81)
	switch {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, payload...)
}

// appendJSONString appends s as a JSON string. Strings in events were checked
// to be valid UTF-8 when published.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			enc, _ := json.Marshal(s)
			return append(b, enc...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// wireEvent is the JSON shape of an encoded event, used to decode stored events.
type wireEvent struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
	UserID    string          `json:"user_id,omitempty"`
	JobID     string          `json:"job_id,omitempty"`
	Timestamp string          `json:"timestamp"`
}

// Decode rebuilds a sealed event from its JSON form, as stores keep it.
// types resolves TypeIndex; a type no longer configured gets index -1, which
// only connections without a type filter receive.
func Decode(b []byte, types *Types) (*Event, error) {
	var w wireEvent
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("decode stored event: %w", err)
	}
	id, err := ParseID(w.ID)
	if err != nil {
		return nil, fmt.Errorf("decode stored event: id %q: %w", w.ID, err)
	}
	ts, err := time.Parse(time.RFC3339Nano, w.Timestamp)
	if err != nil {
		return nil, fmt.Errorf("decode stored event %s: timestamp: %w", w.ID, err)
	}
	e := &Event{ID: id, Type: w.Type, Data: w.Data, UserID: w.UserID, JobID: w.JobID, Time: ts, TypeIndex: types.Index(w.Type)}
	e.Seal()
	return e, nil
}

// Size returns the bytes an event holds in memory, for accounting.
func (e *Event) Size() int { return len(e.JSON) + len(e.SSE) + len(e.WS) + 128 }

// quote is strconv.Quote for error messages.
func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}
