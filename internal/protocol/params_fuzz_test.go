package protocol_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
)

// FuzzParseParams builds a request from a fuzzed raw query and headers: no
// input panics, and accepted parameters keep every limit of SPEC §2–§3.
func FuzzParseParams(f *testing.F) {
	seeds := []struct {
		query, authz, lastID string
		sse                  bool
	}{
		{"", "", "", false},
		{"token=abc&event_types=CODE_CHANGE,ERROR_OCCURRED&job_ids=a,b,c&last_event_id=1-0", "", "", true},
		{"lastEventId=5-3", "", "", false},
		{"last_event_id=1-0&lastEventId=2-0", "", "", false},
		{"token=a&token=b", "", "", false},
		{"event_types=NOPE", "", "", false},
		{"event_types=%zz", "", "", false},
		{"job_ids=a%20b", "", "", false},
		{"job_ids=,,a,,a,", "", "", false},
		{"token=x", "Bearer y", "", false},
		{"", "Bearer  tok ", "", false},
		{"", "Basic abc", "", false},
		{"", "Bearer", "", false},
		{"", "", "99-0", true},
		{"last_event_id=1-0", "", "nope", true},
		{"last_event_id=18446744073709551615-18446744073709551615", "", "", false},
		{"last_event_id=18446744073709551616-0", "", "", false},
		{"last_event_id=01-0", "", "", false},
		{"job_ids=" + strings.Repeat("j,", 120), "", "", false},
		{"event_types=" + strings.Repeat("CODE_CHANGE,", 400), "", "", false},
		{"a=1;b=2", "", "", false},
		{"token=" + strings.Repeat("t", 9000), "", "", false},
	}
	for _, s := range seeds {
		f.Add(s.query, s.authz, s.lastID, s.sse)
	}
	types, err := event.NewTypes([]string{"EXTRA_TYPE"})
	if err != nil {
		f.Fatal(err)
	}
	const maxJobs = 100
	f.Fuzz(func(t *testing.T, rawQuery, authz, lastID string, sse bool) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/x", RawQuery: rawQuery}, Header: http.Header{}}
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		if lastID != "" {
			r.Header.Set("Last-Event-ID", lastID)
		}
		p, perr := protocol.ParseParams(r, types, maxJobs, sse)
		if perr != nil {
			if perr.Param == "" || perr.Message == "" {
				t.Fatalf("error without a parameter name or message: %+v", perr)
			}
			return
		}
		if len(p.Token) > protocol.MaxTokenBytes {
			t.Fatalf("accepted a %d-byte token", len(p.Token))
		}
		if len(p.Jobs) > maxJobs {
			t.Fatalf("accepted %d jobs", len(p.Jobs))
		}
		seen := map[string]bool{}
		for _, j := range p.Jobs {
			if !event.ValidJobID(j) || seen[j] {
				t.Fatalf("accepted job %q (duplicate %v)", j, seen[j])
			}
			seen[j] = true
		}
		for i := 0; i < 64; i++ {
			if p.Types.Has(i) && i >= len(types.Names()) {
				t.Fatalf("type set %b has unknown index %d", p.Types, i)
			}
		}
		if p.Resume {
			if p.ResumeID.String() != p.ResumeRaw {
				t.Fatalf("resume %q parsed as %s", p.ResumeRaw, p.ResumeID)
			}
		} else if p.ResumeRaw != "" {
			t.Fatalf("resume raw %q without Resume", p.ResumeRaw)
		}
		// The query was well-formed and has no repeated parameter.
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			t.Fatalf("accepted malformed query %q", rawQuery)
		}
		for k, v := range q {
			if len(v) > 1 {
				t.Fatalf("accepted repeated %q", k)
			}
		}
		// The Last-Event-ID header wins for SSE; it is ignored otherwise.
		if sse && lastID != "" && (!p.Resume || p.ResumeRaw != lastID) {
			t.Fatalf("Last-Event-ID %q not used for SSE (resume %v %q)", lastID, p.Resume, p.ResumeRaw)
		}
	})
}
