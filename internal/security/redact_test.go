package security_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/knowledgehub/realtime/internal/server"
)

// TestRedactURL: no spelling of a token parameter that a client may send
// reaches a log line (SPEC §2: "A token never appears in any log line").
func TestRedactURL(t *testing.T) {
	const secret = "eyJSECRET"
	for _, raw := range []string{
		"token=" + secret,
		"a=1&token=" + secret + "&b=2",
		"TOKEN=" + secret,
		"Token=" + secret,
		"access_token=" + secret,
		"%74oken=" + secret,
		"tok%65n=" + secret,
		"token=" + secret + "&token=" + secret,
		"token=" + secret + "%26x%3Dy",
		"token=" + secret + "#frag",
		"job_ids=a&token=" + secret + "&last_event_id=1-0",
		"a=1;token=" + secret, // ';' was a query separator before Go 1.17 and still is for many clients
		"token=" + secret + ";a=1",
	} {
		u := &url.URL{Path: "/ws/notifications", RawQuery: raw}
		got := server.RedactURL(u)
		if strings.Contains(got, secret) {
			t.Errorf("RedactURL(?%s) = %q: the token is in the log line", raw, got)
		}
		if !strings.HasPrefix(got, "/ws/notifications") {
			t.Errorf("RedactURL(?%s) = %q: path lost", raw, got)
		}
	}
	// Nothing else is redacted.
	u := &url.URL{Path: "/api/realtime/stream", RawQuery: "job_ids=a,b&event_types=CODE_CHANGE"}
	if got := server.RedactURL(u); got != "/api/realtime/stream?job_ids=a,b&event_types=CODE_CHANGE" {
		t.Errorf("RedactURL changed a URL without token: %q", got)
	}
}
