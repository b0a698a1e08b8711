package protocol

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/knowledgehub/realtime/internal/event"
)

// Params are the connection parameters of SPEC §2 and §3.
type Params struct {
	Token       string
	Types       event.TypeSet // empty: every type
	Jobs        []string      // subscribed from the start
	Resume      bool          // a last event id was given
	ResumeID    event.ID
	ResumeRaw   string
	ResumeParam string // where it came from: last_event_id, lastEventId or Last-Event-ID
}

// ParamError names a bad connection parameter; the handshake answers 400.
type ParamError struct {
	Param   string
	Message string
}

func (e *ParamError) Error() string { return e.Param + ": " + e.Message }

// Limits on connection parameters.
const (
	MaxTokenBytes = 8 << 10
	MaxListBytes  = 4 << 10
)

// ParseParams reads the connection parameters of r. maxJobs bounds job_ids.
// For SSE (lastEventIDHeader true) the Last-Event-ID header, which browsers
// send on reconnect, wins over the query parameters.
func ParseParams(r *http.Request, types *event.Types, maxJobs int, lastEventIDHeader bool) (Params, *ParamError) {
	var p Params
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return p, &ParamError{"query", "malformed query string: " + err.Error()}
	}
	for name, values := range q {
		if len(values) > 1 {
			if name == "" {
				return p, &ParamError{"query", "a parameter without a name is given more than once"}
			}
			return p, &ParamError{name, "given more than once"}
		}
	}

	p.Token = q.Get("token")
	if r.Header.Get("Authorization") != "" {
		tok, ok := Bearer(r)
		if !ok {
			return p, &ParamError{"Authorization", "want \"Bearer <token>\""}
		}
		if _, inQuery := q["token"]; inQuery {
			return p, &ParamError{"token", "given both as ?token= and in the Authorization header"}
		}
		p.Token = tok
	}
	if len(p.Token) > MaxTokenBytes {
		return p, &ParamError{"token", fmt.Sprintf("longer than %d bytes", MaxTokenBytes)}
	}

	if v := q.Get("event_types"); v != "" {
		if len(v) > MaxListBytes {
			return p, &ParamError{"event_types", fmt.Sprintf("longer than %d bytes", MaxListBytes)}
		}
		set, err := types.ParseTypeSet(v)
		if err != nil {
			return p, &ParamError{"event_types", err.Error()}
		}
		p.Types = set
	}

	if v := q.Get("job_ids"); v != "" {
		if len(v) > MaxListBytes+maxJobs*130 {
			return p, &ParamError{"job_ids", "too long"}
		}
		seen := make(map[string]bool)
		for _, j := range strings.Split(v, ",") {
			j = strings.TrimSpace(j)
			if j == "" || seen[j] {
				continue
			}
			if !event.ValidJobID(j) {
				return p, &ParamError{"job_ids", fmt.Sprintf("%q is not a job id ([A-Za-z0-9._:-]{1,128})", clip(j))}
			}
			seen[j] = true
			p.Jobs = append(p.Jobs, j)
		}
		if len(p.Jobs) > maxJobs {
			return p, &ParamError{"job_ids", fmt.Sprintf("%d jobs, at most %d per connection", len(p.Jobs), maxJobs)}
		}
	}

	raw, param := q.Get("last_event_id"), "last_event_id"
	if alt := q.Get("lastEventId"); alt != "" {
		if raw != "" {
			return p, &ParamError{"lastEventId", "given together with last_event_id"}
		}
		raw, param = alt, "lastEventId"
	}
	if lastEventIDHeader {
		if h := r.Header.Get("Last-Event-ID"); h != "" {
			raw, param = h, "Last-Event-ID"
		}
	}
	if raw != "" {
		id, err := event.ParseID(raw)
		if err != nil {
			return p, &ParamError{param, fmt.Sprintf("%q: %v", clip(raw), err)}
		}
		p.Resume, p.ResumeID, p.ResumeRaw, p.ResumeParam = true, id, raw, param
	}
	return p, nil
}

// Bearer returns the token of an "Authorization: Bearer <token>" header;
// ok is false when there is none or the header has another form. It is the
// one reader of that header, for streams, publishing and the admin API.
func Bearer(r *http.Request) (token string, ok bool) {
	a := r.Header.Get("Authorization")
	if len(a) > 7 && strings.EqualFold(a[:7], "Bearer ") {
		token = strings.TrimSpace(a[7:])
	}
	return token, token != ""
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
