package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"unicode/utf8"
)

// Limits bound what a publisher may send.
type Limits struct {
	MaxDataBytes int // an event's encoded data (max_event_bytes)
	MaxBatch     int // events in one batch
}

// Error is a rejected publish: the HTTP status and a message that names what
// was wrong. Code is the machine-readable error of the JSON error body.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

func badField(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "invalid_event", Message: fmt.Sprintf(format, args...)}
}

// ValidJobID reports whether s has the syntax of a job id: [A-Za-z0-9._:-]{1,128}.
func ValidJobID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// ValidUserID reports whether s can be a user id: 1 to 256 bytes of UTF-8
// without control characters.
func ValidUserID(s string) bool {
	if len(s) == 0 || len(s) > 256 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// draft is the publish body of one event (SPEC §4).
type draft struct {
	Type   *string         `json:"type"`
	Data   json.RawMessage `json:"data"`
	UserID *string         `json:"user_id"`
	JobID  *string         `json:"job_id"`
}

// ParsePublish validates a publish body: one event object or an array of
// them. It returns unsealed events (no ID, no Time) and whether the body was
// a batch. Every error is an *Error naming the bad field.
func ParsePublish(body []byte, types *Types, lim Limits) (evs []*Event, batch bool, err error) {
	if !utf8.Valid(body) {
		return nil, false, badField("body is not valid UTF-8")
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, false, badField("body is empty: want an event object or an array of them")
	}
	if trimmed[0] == '[' {
		var raws []json.RawMessage
		if err := strictUnmarshal(body, &raws); err != nil {
			return nil, true, badField("body: %s", jsonProblem(err))
		}
		if len(raws) == 0 {
			return nil, true, badField("batch is empty")
		}
		if lim.MaxBatch > 0 && len(raws) > lim.MaxBatch {
			return nil, true, &Error{Status: http.StatusRequestEntityTooLarge, Code: "batch_too_large", Message: fmt.Sprintf("batch has %d events, at most %d are accepted", len(raws), lim.MaxBatch)}
		}
		evs = make([]*Event, 0, len(raws))
		for i, raw := range raws {
			e, err := parseOne(raw, types, lim, fmt.Sprintf("[%d].", i))
			if err != nil {
				return nil, true, err
			}
			evs = append(evs, e)
		}
		return evs, true, nil
	}
	e, err := parseOne(body, types, lim, "")
	if err != nil {
		return nil, false, err
	}
	return []*Event{e}, false, nil
}

func parseOne(raw []byte, types *Types, lim Limits, prefix string) (*Event, error) {
	var d draft
	if err := strictUnmarshal(raw, &d); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return nil, badField("%s%s: must be a %s", prefix, typeErr.Field, wantKind(typeErr.Field))
		}
		return nil, badField("%sevent: %s", prefix, jsonProblem(err))
	}
	if d.Type == nil {
		return nil, badField("%stype: missing (known: %s)", prefix, joinNames(types))
	}
	ti := types.Index(*d.Type)
	if ti < 0 {
		return nil, badField("%stype: unknown event type %s (known: %s)", prefix, quote(*d.Type), joinNames(types))
	}
	e := &Event{Type: *d.Type, TypeIndex: ti}
	if len(d.Data) == 0 {
		e.Data = json.RawMessage("null")
	} else {
		var buf bytes.Buffer
		buf.Grow(len(d.Data))
		if err := json.Compact(&buf, d.Data); err != nil {
			return nil, badField("%sdata: %s", prefix, jsonProblem(err))
		}
		if lim.MaxDataBytes > 0 && buf.Len() > lim.MaxDataBytes {
			return nil, &Error{Status: http.StatusRequestEntityTooLarge, Code: "data_too_large", Message: fmt.Sprintf("%sdata: %d bytes encoded, at most %d are accepted", prefix, buf.Len(), lim.MaxDataBytes)}
		}
		e.Data = buf.Bytes()
	}
	if d.UserID != nil {
		if !ValidUserID(*d.UserID) {
			return nil, badField("%suser_id: must be 1 to 256 characters without control characters", prefix)
		}
		e.UserID = *d.UserID
	}
	if d.JobID != nil {
		if !ValidJobID(*d.JobID) {
			return nil, badField("%sjob_id: %s must match [A-Za-z0-9._:-]{1,128}", prefix, quote(*d.JobID))
		}
		e.JobID = *d.JobID
	}
	return e, nil
}

func wantKind(field string) string {
	if field == "data" {
		return "JSON value"
	}
	return "string"
}

func joinNames(t *Types) string {
	var b bytes.Buffer
	for i, n := range t.names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(n)
	}
	return b.String()
}

// strictUnmarshal decodes one JSON value into v, refusing unknown fields and
// trailing data.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

func jsonProblem(err error) string {
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		return fmt.Sprintf("malformed JSON at byte %d: %v", syntax.Offset, err)
	}
	return err.Error()
}
