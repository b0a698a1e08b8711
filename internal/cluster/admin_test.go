package cluster_test

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

const adminKey = "cluster-admin-key"

func adminPost(t *testing.T, nd *node, path, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, nd.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// closeCode reads until the connection ends and returns its close code.
func closeCode(t *testing.T, w *wsConn) int {
	t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := w.c.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			t.Fatalf("connection ended without a close frame: %v", err)
		}
	}
}

// TestAdminAcrossNodes: an admin command sent to one node acts on every
// node: a disconnect closes the user's connections elsewhere (4003), and a
// revoked token is refused by the other nodes, also by one started later.
func TestAdminAcrossNodes(t *testing.T) {
	c := newCluster(t, 2, "--admin-keys", adminKey)
	a, b := c.nodes[0], c.nodes[1]

	onB, _, err := dialWS(b, url.Values{"token": {token(t, "alice")}})
	if err != nil {
		t.Fatal(err)
	}
	bob, _, err := dialWS(b, url.Values{"token": {token(t, "bob")}})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.close()
	if code := adminPost(t, a, "/api/admin/disconnect", `{"user_id":"alice"}`); code != 200 {
		t.Fatalf("disconnect on A: %d", code)
	}
	if code := closeCode(t, onB); code != 4003 {
		t.Fatalf("alice on B closed with %d, want 4003", code)
	}

	revoked, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "alice", "jti": "stolen-1", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	live, _, err := dialWS(b, url.Values{"token": {revoked}})
	if err != nil {
		t.Fatal(err)
	}
	if code := adminPost(t, a, "/api/admin/revoke", `{"user_id":"alice","jti":"stolen-1"}`); code != 200 {
		t.Fatalf("revoke on A: %d", code)
	}
	if code := closeCode(t, live); code != 4003 {
		t.Fatalf("revoked token's connection on B closed with %d, want 4003", code)
	}
	// B refuses the token from now on; so does a node that starts later
	// (the revocation is kept in Redis).
	refused := func(nd *node) bool {
		w, _, err := dialWS(nd, url.Values{"token": {revoked}})
		if err == nil {
			w.close()
			return false
		}
		return strings.Contains(err.Error(), "revoked")
	}
	eventually(t, 5*time.Second, "B refusing the revoked token", func() bool { return refused(b) })
	late := &node{name: "C", store: b.store}
	late.configure(t, []string{"--admin-keys", adminKey})
	late.launch(t)
	c.nodes = append(c.nodes, late)
	c.waitUp(late, []string{"--admin-keys", adminKey})
	eventually(t, 5*time.Second, "a node started later refusing the revoked token", func() bool { return refused(late) })
	// Bob was never touched.
	if err := bob.send(map[string]string{"type": "ping"}); err != nil {
		t.Fatal(err)
	}
	_ = bob.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := bob.next()
	if err != nil || m.ctlType != "pong" {
		t.Fatalf("bob: %v %v", m, err)
	}
}
