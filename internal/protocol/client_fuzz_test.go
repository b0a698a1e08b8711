package protocol_test

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
)

// FuzzParseClientMessage: no input panics; an accepted message is a valid
// UTF-8 JSON object of a known type with what that type needs; a rejected
// one has a message to send back.
func FuzzParseClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"ping"}`,
		`{"type":"subscribe","job_id":"job-1"}`,
		`{"type":"unsubscribe","job_id":"a.b:c_d-e"}`,
		`{"type":"refresh","token":"x.y.z"}`,
		`{"type":"subscribe"}`,
		`{"type":"subscribe","job_id":"bad id"}`,
		`{"type":"subscribe","job_id":"a\r\nb"}`,
		`{"type":7}`,
		`{"type":"ping","job_id":5}`,
		`{"type":"dance"}`,
		`{}`, `[]`, `null`, `"ping"`, ``, `nonsense`,
		"{\"type\":\"ping\xff\"}",
		`{"type":"ping","type":"subscribe"}`,
		`{"TYPE":"ping"}`,
		`{"type":"ping"} trailing`,
		`{"type":"subscribe","job_id":"` + string(make([]byte, 200)) + `"}`,
		`{"type":"\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"}`,
		`{"type":"ping","x":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := protocol.ParseClientMessage(b)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("empty error for %q", b)
			}
			// The error becomes the message of a bad_message; it must
			// encode (json.Marshal replaces invalid UTF-8, never fails).
			if _, jerr := json.Marshal(err.Error()); jerr != nil {
				t.Fatalf("error message does not encode: %v", jerr)
			}
			return
		}
		if !utf8.Valid(b) {
			t.Fatalf("accepted invalid UTF-8 %q", b)
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(b, &obj) != nil {
			t.Fatalf("accepted a non-object %q", b)
		}
		switch m.Type {
		case "subscribe", "unsubscribe":
			if !event.ValidJobID(m.JobID) {
				t.Fatalf("accepted %s with job id %q", m.Type, m.JobID)
			}
		case "refresh":
			if m.Token == "" {
				t.Fatalf("accepted refresh without token: %q", b)
			}
		case "ping":
		default:
			t.Fatalf("accepted type %q from %q", m.Type, b)
		}
		// The answer built from an accepted message is valid JSON.
		if m.Type == "subscribe" || m.Type == "unsubscribe" {
			if !json.Valid(protocol.JobMessage(m.Type+"d", m.JobID)) {
				t.Fatalf("answer is not JSON for %q", b)
			}
		}
	})
}
