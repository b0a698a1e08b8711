package server_test

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/server/servertest"
	"github.com/knowledgehub/realtime/internal/syncbuf"
)

// TestTokensNeverLogged: at the most verbose level, with JSON logs, no
// token given in a URL (valid, invalid, refused, with ";" separators) or
// in a header, and no key, appears in any log line (SPEC §2).
func TestTokensNeverLogged(t *testing.T) {
	var logs syncbuf.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug - 8}))
	n := servertest.StartLogged(t, servertest.Config(t), logger)

	good := servertest.Token(t, "alice", time.Hour)
	bad := good[:len(good)-4] + "AAAA"
	c := mustDialWS(t, n, "token="+good)
	c.welcome()
	mustDialWS(t, n, "token="+bad).read(5 * time.Second)
	s, _ := openSSE(t, n, "token="+good+"&event_types=CODE_CHANGE", nil)
	s.connected()
	openSSE(t, n, "token="+bad, nil)
	for _, q := range []string{"a=1;token=" + good, "token=" + good + "&token=" + good, "event_types=NOPE&token=" + good} {
		resp, err := http.Get(n.URL + "/api/realtime/stream?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	h := http.Header{"Authorization": {"Bearer " + good}}
	if c, _, err := dialWS(t, n, "", h); err == nil {
		c.welcome()
	}
	n.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": 1})
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "/ws/notifications") || !strings.Contains(out, "REDACTED") {
		t.Fatalf("the access log did not record the handshakes:\n%s", out)
	}
	for name, secret := range map[string]string{"token": good, "bad token": bad, "signature": good[strings.LastIndex(good, ".")+1:], "publish key": servertest.PublishKey, "jwt secret": servertest.Secret} {
		if strings.Contains(out, secret) {
			t.Errorf("the %s appears in the logs", name)
		}
	}
}
