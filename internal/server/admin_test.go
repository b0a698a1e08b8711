package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

func adminPost(t *testing.T, n *servertest.Node, path, key, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, n.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// tokenWith mints a token with a chosen jti and iat.
func tokenWith(t *testing.T, user, jti string, iat time.Time) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user, "jti": jti, "iat": iat.Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(servertest.Secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestAdminDisconnect(t *testing.T) {
	n := servertest.Start(t)
	a1 := mustDialWS(t, n, "token="+servertest.Token(t, "alice", time.Hour))
	a1.welcome()
	a2 := mustDialWS(t, n, "token="+servertest.Token(t, "alice", time.Hour))
	a2.welcome()
	sse, _ := openSSE(t, n, "token="+servertest.Token(t, "alice", time.Hour), nil)
	sse.connected()
	bob := mustDialWS(t, n, "token="+servertest.Token(t, "bob", time.Hour))
	bob.welcome()

	if status, body := adminPost(t, n, "/api/admin/disconnect", "", `{"user_id":"alice"}`); status != 401 {
		t.Fatalf("without key: %d %s", status, body)
	}
	if status, body := adminPost(t, n, "/api/admin/disconnect", servertest.PublishKey, `{"user_id":"alice"}`); status != 401 {
		t.Fatalf("with the publish key: %d %s", status, body)
	}
	if status, body := adminPost(t, n, "/api/admin/disconnect", servertest.AdminKey, `{"user":"alice"}`); status != 400 {
		t.Fatalf("bad body: %d %s", status, body)
	}
	if status, body := adminPost(t, n, "/api/admin/disconnect", servertest.AdminKey, `{"user_id":"alice"}`); status != 200 {
		t.Fatalf("disconnect: %d %s", status, body)
	}
	for _, c := range []*wsClient{a1, a2} {
		if code, _ := c.expectClose(5 * time.Second); code != 4003 {
			t.Fatalf("alice closed with %d, want 4003", code)
		}
	}
	for {
		f, ok := sse.next(5 * time.Second)
		if !ok {
			break
		}
		if f.ID != "" {
			t.Fatalf("alice's stream got an event after the disconnect: %+v", f)
		}
	}
	bob.send(map[string]any{"type": "ping"})
	if m := bob.read(5 * time.Second); m["type"] != "pong" {
		t.Fatalf("bob was affected: %v", m)
	}
	// A disconnect is not a revocation: alice may come back.
	mustDialWS(t, n, "token="+servertest.Token(t, "alice", time.Hour)).welcome()
}

func TestAdminRevoke(t *testing.T) {
	n := servertest.Start(t)
	old := tokenWith(t, "alice", "jti-old", time.Now().Add(-time.Hour))
	other := tokenWith(t, "alice", "jti-other", time.Now())
	live := mustDialWS(t, n, "token="+old)
	live.welcome()
	keep := mustDialWS(t, n, "token="+other)
	keep.welcome()

	if status, body := adminPost(t, n, "/api/admin/revoke", servertest.AdminKey, `{"user_id":"alice"}`); status != 400 {
		t.Fatalf("revoke without jti or issued_before: %d %s", status, body)
	}
	if status, body := adminPost(t, n, "/api/admin/revoke", servertest.AdminKey, `{"user_id":"alice","jti":"jti-old"}`); status != 200 {
		t.Fatalf("revoke: %d %s", status, body)
	}
	if code, _ := live.expectClose(5 * time.Second); code != 4003 {
		t.Fatalf("revoked connection closed with %d, want 4003", code)
	}
	// The revoked token is refused at connect (WebSocket 4001, SSE 401)...
	again := mustDialWS(t, n, "token="+old)
	if m := again.read(5 * time.Second); m["code"] != "invalid_token" || m["message"] != "revoked" {
		t.Fatalf("revoked token at connect: %v", m)
	}
	if code, _ := again.expectClose(5 * time.Second); code != 4001 {
		t.Fatalf("close %d, want 4001", code)
	}
	if _, resp := openSSE(t, n, "token="+old, nil); resp.StatusCode != 401 {
		t.Fatalf("SSE with a revoked token: %d", resp.StatusCode)
	}
	// ...and at refresh; the other token of alice is untouched.
	keep.send(map[string]any{"type": "refresh", "token": old})
	if m := keep.read(5 * time.Second); m["code"] != "invalid_token" || m["message"] != "revoked" {
		t.Fatalf("refresh with a revoked token: %v", m)
	}

	// Revoking by issue time closes and refuses older tokens only.
	cut := time.Now().Add(-30 * time.Minute).UTC().Format(time.RFC3339)
	older := tokenWith(t, "alice", "jti-older", time.Now().Add(-2*time.Hour))
	victim := mustDialWS(t, n, "token="+older)
	victim.welcome()
	if status, body := adminPost(t, n, "/api/admin/revoke", servertest.AdminKey, `{"user_id":"alice","issued_before":"`+cut+`"}`); status != 200 {
		t.Fatalf("revoke issued_before: %d %s", status, body)
	}
	if code, _ := victim.expectClose(5 * time.Second); code != 4003 {
		t.Fatalf("older token's connection closed with %d, want 4003", code)
	}
	keep.send(map[string]any{"type": "ping"})
	if m := keep.read(5 * time.Second); m["type"] != "pong" {
		t.Fatalf("a token issued after the cut was affected: %v", m)
	}
	mustDialWS(t, n, "token="+tokenWith(t, "alice", "jti-new", time.Now())).welcome()
}
