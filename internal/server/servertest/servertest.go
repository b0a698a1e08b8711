// Package servertest starts real servers on 127.0.0.1 for tests: a free port,
// known credentials, and helpers to mint tokens and publish.
package servertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/config"
	"github.com/knowledgehub/realtime/internal/server"
)

// Test credentials of every node started here.
const (
	Secret     = "test-secret-0123456789abcdef0123456789"
	PublishKey = "test-publish-key"
	AdminKey   = "test-admin-key"
)

// Node is a running server.
type Node struct {
	Server *server.Server
	Config *config.Config
	URL    string // http://127.0.0.1:port
	WSURL  string // ws://127.0.0.1:port/ws/notifications
	Addr   string // 127.0.0.1:port
	cancel context.CancelFunc
	done   chan error
	stop   sync.Once
	err    error
}

// Config returns the configuration Start uses before options: memory store,
// a random port, the test credentials, and the given data dir.
func Config(t testing.TB, extra ...string) *config.Config {
	t.Helper()
	args := append([]string{
		"--addr", "127.0.0.1:0", "--store", "memory", "--data-dir", t.TempDir(),
		"--jwt-secret", Secret, "--publish-keys", PublishKey, "--admin-keys", AdminKey,
		"--allowed-origins", "http://allowed.example,https://*.good.example",
	}, extra...)
	cfg, err := config.Load(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("servertest: config: %v", err)
	}
	return cfg
}

// Start runs a node with Config(t, extra...) until the test ends.
func Start(t testing.TB, extra ...string) *Node {
	t.Helper()
	return StartConfig(t, Config(t, extra...))
}

// StartConfig runs a node with cfg until the test ends.
func StartConfig(t testing.TB, cfg *config.Config) *Node {
	t.Helper()
	level := slog.LevelWarn
	if os.Getenv("KNOWLEDGEHUB_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return StartLogged(t, cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}

// StartLogged runs a node with cfg that logs to logger.
func StartLogged(t testing.TB, cfg *config.Config, logger *slog.Logger) *Node {
	t.Helper()
	srv, err := server.New(cfg, logger)
	if err != nil {
		t.Fatalf("servertest: new server: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{Server: srv, Config: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- srv.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Addr() == nil {
		select {
		case err := <-n.done:
			t.Fatalf("servertest: server stopped at start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("servertest: server did not start listening")
		}
		time.Sleep(5 * time.Millisecond)
	}
	n.Addr = srv.Addr().String()
	n.URL = "http://" + n.Addr
	n.WSURL = "ws://" + n.Addr + "/ws/notifications"
	t.Cleanup(func() { _ = n.Stop() })
	return n
}

// Stop shuts the node down gracefully and returns Run's error.
func (n *Node) Stop() error {
	n.stop.Do(func() {
		n.cancel()
		select {
		case n.err = <-n.done:
		case <-time.After(20 * time.Second):
			n.err = fmt.Errorf("servertest: server did not stop within 20s")
		}
	})
	return n.err
}

// Token mints a token for user valid for ttl (0: no expiry).
func Token(t testing.TB, user string, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint(Secret, user, ttl)
	if err != nil {
		t.Fatalf("servertest: mint: %v", err)
	}
	return tok
}

// Publish posts body (an event object or a batch) and returns the status and
// the decoded JSON answer.
func (n *Node) Publish(t testing.TB, body any) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatalf("servertest: encode: %v", err)
	}
	return n.PublishRaw(t, b, "application/json", PublishKey)
}

// PublishRaw posts raw bytes with the given content type and key.
func (n *Node) PublishRaw(t testing.TB, body []byte, contentType, key string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, n.URL+"/api/realtime/events", bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("servertest: publish: %v", err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// MustPublish publishes one event and returns its id.
func (n *Node) MustPublish(t testing.TB, ev map[string]any) string {
	t.Helper()
	status, out := n.Publish(t, ev)
	if status != http.StatusCreated {
		t.Fatalf("servertest: publish %v: status %d %v", ev, status, out)
	}
	id, _ := out["id"].(string)
	return id
}
