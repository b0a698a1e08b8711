package event_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
)

// FuzzParsePublish: no body panics; every accepted event, once sealed, is
// valid JSON whose data is the compacted data of the input, and its SSE
// frame is exactly "id: <id>\ndata: <json>\n\n" with no CR or LF inside.
func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{
		`{"type":"CODE_CHANGE","data":{"file":"api/app.py","lines":12}}`,
		`{"type":"CODE_CHANGE"}`,
		`{"type":"MEMORY_CREATED","data":"a\nb\r\nc","user_id":"alice","job_id":"job-42"}`,
		`[{"type":"CODE_CHANGE","data":1},{"type":"ERROR_OCCURRED","data":[1,2,{"a":null}]}]`,
		`[]`, `[[]]`, `null`, ``, `  `, `{}`, `"x"`, `5`,
		`{"type":5}`, `{"type":"NOPE"}`, `{"type":"CODE_CHANGE","user_id":5}`,
		`{"type":"CODE_CHANGE","user_id":"bob\nevent: x"}`,
		`{"type":"CODE_CHANGE","job_id":"a b"}`,
		`{"type":"CODE_CHANGE","data": { "spaced" : [ 1 , 2 ] } }`,
		`{"type":"CODE_CHANGE","data":"\u2028\u2029\u0000"}`,
		`{"type":"CODE_CHANGE","data":1,"extra":2}`,
		`{"type":"CODE_CHANGE","Data":1}`,
		`{"type":"CODE_CHANGE","data":1,"data":2}`,
		`{"type":"CODE_CHANGE","data":1} {"type":"CODE_CHANGE"}`,
		"{\"type\":\"CODE_CHANGE\",\"data\":\"\xff\"}",
		`{"type":"CODE_CHANGE","data":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `}`,
		`{"type":"CODE_CHANGE","data":"` + strings.Repeat("x", 200) + `"}`,
		`{"type":"CODE_CHANGE","data":1e400}`,
		`{"type":"CODE_CHANGE","data":-0.0e-0}`,
		`{"type":"CODE_CHANGE","user_id":"\u00e9l\u00e8ve\u2028"}`,
		// Found by fuzzing: trailing "]" or "}" after the value was accepted.
		" {\"tYpe\":\"CODE_CHANGE\"}  ]",
		`[{"type":"CODE_CHANGE"}]]`,
		`{"type":"CODE_CHANGE","data":1}}`,
	} {
		f.Add([]byte(s))
	}
	types, err := event.NewTypes(nil)
	if err != nil {
		f.Fatal(err)
	}
	lim := event.Limits{MaxDataBytes: 256, MaxBatch: 8}
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, batch, err := event.ParsePublish(body, types, lim)
		if err != nil {
			var pe *event.Error
			if !asEventError(err, &pe) || pe.Status < 400 || pe.Status > 499 || pe.Code == "" || pe.Message == "" {
				t.Fatalf("error %#v is not a complete *event.Error", err)
			}
			return
		}
		// An accepted body is exactly one JSON value: nothing may follow it.
		if !json.Valid(body) {
			t.Fatalf("accepted a body that is not one JSON value (trailing data?): %q", body)
		}
		// The input's data values, decoded the way the parser does.
		var inputs []json.RawMessage
		if batch {
			var items []struct {
				Data json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal(body, &items); err != nil {
				t.Fatalf("accepted batch does not decode: %v", err)
			}
			for _, it := range items {
				inputs = append(inputs, it.Data)
			}
		} else {
			var it struct {
				Data json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal(body, &it); err != nil {
				t.Fatalf("accepted event does not decode: %v", err)
			}
			inputs = append(inputs, it.Data)
		}
		if len(inputs) != len(evs) || len(evs) == 0 || len(evs) > lim.MaxBatch {
			t.Fatalf("%d events from %d inputs", len(evs), len(inputs))
		}
		for i, e := range evs {
			want := []byte("null")
			if len(inputs[i]) > 0 {
				var buf bytes.Buffer
				if err := json.Compact(&buf, inputs[i]); err != nil {
					t.Fatalf("accepted data that does not compact: %v", err)
				}
				want = buf.Bytes()
			}
			if !bytes.Equal(e.Data, want) {
				t.Fatalf("event %d data %q, want %q", i, e.Data, want)
			}
			if len(e.Data) > lim.MaxDataBytes {
				t.Fatalf("event %d data of %d bytes accepted", i, len(e.Data))
			}
			if !event.ValidTypeName(e.Type) || types.Index(e.Type) != e.TypeIndex {
				t.Fatalf("event %d type %q index %d", i, e.Type, e.TypeIndex)
			}
			if e.UserID != "" && !event.ValidUserID(e.UserID) {
				t.Fatalf("event %d user_id %q", i, e.UserID)
			}
			if e.JobID != "" && !event.ValidJobID(e.JobID) {
				t.Fatalf("event %d job_id %q", i, e.JobID)
			}
			e.ID = event.ID{Ms: 1733325600123, Seq: uint64(i)}
			e.Time = time.UnixMilli(1733325600123)
			e.Seal()
			var got struct {
				ID        string          `json:"id"`
				Type      string          `json:"type"`
				Data      json.RawMessage `json:"data"`
				UserID    *string         `json:"user_id"`
				JobID     *string         `json:"job_id"`
				Timestamp string          `json:"timestamp"`
			}
			if !json.Valid(e.JSON) {
				t.Fatalf("sealed JSON is invalid: %q", e.JSON)
			}
			if err := json.Unmarshal(e.JSON, &got); err != nil {
				t.Fatalf("sealed JSON %q: %v", e.JSON, err)
			}
			if got.ID != e.ID.String() || got.Type != e.Type || !bytes.Equal(got.Data, want) || got.Timestamp != "2024-12-04T15:20:00.123Z" {
				t.Fatalf("sealed %q from %q", e.JSON, body)
			}
			if (got.UserID == nil) != (e.UserID == "") || got.UserID != nil && *got.UserID != e.UserID {
				t.Fatalf("sealed user_id %v, want %q", got.UserID, e.UserID)
			}
			if (got.JobID == nil) != (e.JobID == "") || got.JobID != nil && *got.JobID != e.JobID {
				t.Fatalf("sealed job_id %v, want %q", got.JobID, e.JobID)
			}
			if bytes.ContainsAny(e.JSON, "\r\n") {
				t.Fatalf("raw CR/LF in the event JSON %q", e.JSON)
			}
			wantSSE := "id: " + e.ID.String() + "\ndata: " + string(e.JSON) + "\n\n"
			if string(e.SSE) != wantSSE {
				t.Fatalf("SSE frame %q, want %q", e.SSE, wantSSE)
			}
			if !bytes.HasSuffix(e.WS, e.JSON) || e.WS[0] != 0x81 {
				t.Fatalf("WebSocket frame does not hold the JSON")
			}
			// The stored form decodes back to the same event.
			d, err := event.Decode(e.JSON, types)
			if err != nil || !bytes.Equal(d.JSON, e.JSON) {
				t.Fatalf("Decode(%q) = %v, %v", e.JSON, d, err)
			}
		}
	})
}

func asEventError(err error, target **event.Error) bool {
	pe, ok := err.(*event.Error)
	if ok {
		*target = pe
	}
	return ok
}

// FuzzParseID: no input panics, and an accepted id has one spelling:
// String(ParseID(s)) == s.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{"0-0", "1733325600123-0", "1-1", "18446744073709551615-18446744073709551615",
		"18446744073709551616-0", "01-0", "1-01", "-1", "1-", "-", "", "1-2-3", "+1-0", " 1-0", "1-0 ", "1_0", "١-٠", "0x1-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := event.ParseID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q) = %s", s, id)
		}
		if again, err := event.ParseID(id.String()); err != nil || again != id {
			t.Fatalf("re-parse of %s: %v %v", id, again, err)
		}
	})
}
