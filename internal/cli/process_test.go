package cli_test

// These tests run the real knowledgehub binary: a server process with the
// memory store and development credentials in a temporary data directory,
// and token, publish and listen as processes talking to it over sockets.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/knowledgehub/realtime/internal/devkeys"
	"github.com/knowledgehub/realtime/internal/proctest"
	"github.com/knowledgehub/realtime/internal/syncbuf"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "knowledgehub-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = proctest.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build the knowledgehub binary:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running knowledgehub process.
type proc struct {
	cmd    *exec.Cmd
	stdout *syncbuf.Buffer
	stderr *syncbuf.Buffer
	done   chan struct{}
	err    error
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = proctest.Env()
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%v still running after %s\nstdout:\n%s\nstderr:\n%s", p.cmd.Args[1:], d, p.stdout, p.stderr)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// run runs a command to completion.
func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	p := start(t, args...)
	code = p.wait(t, 30*time.Second)
	return p.stdout.String(), p.stderr.String(), code
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// server is a `knowledgehub serve` process.
type server struct {
	*proc
	addr, url, dir string
}

// startServer runs serve with the memory store on addr, with development
// credentials in dir, and waits for /healthz.
func startServer(t *testing.T, addr, dir string) *server {
	t.Helper()
	p := start(t, "serve", "--addr", addr, "--store", "memory", "--data-dir", dir)
	s := &server{proc: p, addr: addr, url: "http://" + addr, dir: dir}
	eventually(t, 15*time.Second, "the server's /healthz", func() bool {
		if !p.running() {
			t.Fatalf("serve exited:\n%s", p.stderr)
		}
		resp, err := http.Get(s.url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

func newServer(t *testing.T) *server {
	t.Helper()
	return startServer(t, freePort(t), t.TempDir())
}

// listen starts a listen process and waits until it is connected.
func (s *server) listen(t *testing.T, args ...string) *proc {
	t.Helper()
	p := start(t, append([]string{"listen", "--data-dir", s.dir}, args...)...)
	eventually(t, 10*time.Second, "listen to connect", func() bool {
		if !p.running() {
			t.Fatalf("listen exited:\nstdout:\n%s\nstderr:\n%s", p.stdout, p.stderr)
		}
		return strings.Contains(p.stderr.String(), "listen: connected")
	})
	return p
}

// publish publishes one event and returns its id.
func (s *server) publish(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := run(t, append([]string{"publish", "--data-dir", s.dir}, args...)...)
	if code != 0 {
		t.Fatalf("publish %v: exit %d\n%s", args, code, errOut)
	}
	return strings.TrimSpace(out)
}

type wireEvent struct {
	ID     string          `json:"id"`
	Type   string          `json:"type"`
	Data   json.RawMessage `json:"data"`
	UserID string          `json:"user_id"`
	JobID  string          `json:"job_id"`
}

func parseLines(t *testing.T, s string) []wireEvent {
	t.Helper()
	var out []wireEvent
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		var e wireEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %q is not an event: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func TestProcessToken(t *testing.T) {
	s := newServer(t)
	out, errOut, code := run(t, "token", "--data-dir", s.dir, "--user", "alice")
	if code != 0 {
		t.Fatalf("token: exit %d: %s", code, errOut)
	}
	keys, err := devkeys.Load(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var claims jwt.RegisteredClaims
	tok, err := jwt.ParseWithClaims(strings.TrimSpace(out), &claims, func(*jwt.Token) (any, error) { return []byte(keys.JWTSecret), nil }, jwt.WithValidMethods([]string{"HS256"}))
	if err != nil || !tok.Valid {
		t.Fatalf("token does not verify with the dev secret: %v", err)
	}
	if claims.Subject != "alice" || claims.ExpiresAt == nil || time.Until(claims.ExpiresAt.Time) > time.Hour || time.Until(claims.ExpiresAt.Time) < 59*time.Minute {
		t.Errorf("claims %+v", claims)
	}

	// The server accepts it: the history API answers with the token.
	resp, err := http.Get(s.url + "/api/realtime/events?token=" + strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("history with the token: %d", resp.StatusCode)
	}

	out, _, code = run(t, "token", "--secret", "s3cret", "--user", "bob", "--ttl", "0")
	if code != 0 {
		t.Fatalf("token --secret: exit %d", code)
	}
	claims = jwt.RegisteredClaims{}
	if _, err := jwt.ParseWithClaims(strings.TrimSpace(out), &claims, func(*jwt.Token) (any, error) { return []byte("s3cret"), nil }); err != nil || claims.ExpiresAt != nil || claims.Subject != "bob" {
		t.Errorf("--ttl 0 token: %+v %v", claims, err)
	}

	_, errOut, code = run(t, "token", "--data-dir", t.TempDir(), "--user", "alice")
	if code != 1 || !strings.Contains(errOut, "no JWT secret") || !strings.Contains(errOut, "--secret") {
		t.Errorf("no secret: exit %d: %s", code, errOut)
	}
	_, errOut, code = run(t, "token", "--user", "alice", "--frobnicate")
	if code != 2 || !strings.Contains(errOut, "frobnicate") {
		t.Errorf("unknown flag: exit %d: %s", code, errOut)
	}
	out, _, code = run(t, "token", "--help")
	if code != 0 || !strings.Contains(out, "Examples:") {
		t.Errorf("--help: exit %d: %s", code, out)
	}
}

func TestProcessListenPublish(t *testing.T) {
	s := newServer(t)
	for _, transport := range []string{"--ws", "--sse"} {
		t.Run(transport, func(t *testing.T) {
			l := s.listen(t, transport, "--max", "2", "--json")
			id1 := s.publish(t, "--type", "CODE_CHANGE", "--data", `{"file":"a.go"}`)
			id2 := s.publish(t, "--type", "ERROR_OCCURRED", "--data", `"boom"`)
			if code := l.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("listen: exit %d\n%s", code, l.stderr)
			}
			evs := parseLines(t, l.stdout.String())
			if len(evs) != 2 || evs[0].ID != id1 || evs[1].ID != id2 {
				t.Fatalf("listen printed %+v, want %s and %s", evs, id1, id2)
			}
			if evs[0].Type != "CODE_CHANGE" || string(evs[0].Data) != `{"file":"a.go"}` || string(evs[1].Data) != `"boom"` {
				t.Errorf("events %+v", evs)
			}
		})
	}
}

func TestProcessPrivateEvents(t *testing.T) {
	s := newServer(t)
	for _, transport := range []string{"--ws", "--sse"} {
		t.Run(transport, func(t *testing.T) {
			alice := s.listen(t, transport, "--user", "alice", "--max", "2")
			anon := s.listen(t, transport, "--max", "1")
			private := s.publish(t, "--type", "DECISION_MADE", "--data", `{"secret":true}`, "--user", "alice")
			marker := s.publish(t, "--type", "MEMORY_CREATED", "--data", `"marker"`)
			for _, p := range []*proc{alice, anon} {
				if code := p.wait(t, 10*time.Second); code != 0 {
					t.Fatalf("listen: exit %d\n%s", code, p.stderr)
				}
			}
			// stdout is not a terminal: raw JSON lines even without --json.
			a := parseLines(t, alice.stdout.String())
			if len(a) != 2 || a[0].ID != private || a[0].UserID != "alice" || a[1].ID != marker {
				t.Errorf("alice got %+v", a)
			}
			n := parseLines(t, anon.stdout.String())
			if len(n) != 1 || n[0].ID != marker {
				t.Errorf("anonymous got %+v, want only the marker %s", n, marker)
			}
			if !strings.Contains(alice.stderr.String(), "user alice") {
				t.Errorf("alice notes: %s", alice.stderr)
			}
		})
	}
}

func TestProcessPublishFile(t *testing.T) {
	s := newServer(t)
	var b strings.Builder
	for i := 1; i <= 250; i++ {
		fmt.Fprintf(&b, `{"type":"CODE_CHANGE","data":{"n":%d},"job_id":"job-%d"}`+"\n", i, i%3)
	}
	path := filepath.Join(t.TempDir(), "events.ndjson")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, "publish", "--data-dir", s.dir, "--file", path, "--batch", "100")
	if code != 0 {
		t.Fatalf("publish --file: exit %d: %s", code, errOut)
	}
	if errOut != "" {
		t.Errorf("stderr is not a terminal, yet: %q", errOut)
	}
	history := func() []wireEvent {
		resp, err := http.Get(s.url + "/api/realtime/events?limit=1000&job_ids=job-0,job-1,job-2")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var evs []wireEvent
		if err := json.NewDecoder(resp.Body).Decode(&evs); err != nil {
			t.Fatal(err)
		}
		return evs
	}
	evs := history()
	if len(evs) != 250 {
		t.Fatalf("history has %d events, want 250", len(evs))
	}
	want := fmt.Sprintf("published 250 events; last id %s\n", evs[249].ID)
	if out != want {
		t.Errorf("stdout %q, want %q", out, want)
	}

	// A re-run (as after a failure) publishes nothing twice.
	out, _, code = run(t, "publish", "--data-dir", s.dir, "--file", path, "--batch", "100")
	if code != 0 || !strings.Contains(out, "250 of them were already published") {
		t.Errorf("re-run: exit %d: %q", code, out)
	}
	if n := len(history()); n != 250 {
		t.Errorf("history has %d events after the re-run, want 250", n)
	}

	// --ids prints every id.
	other := filepath.Join(t.TempDir(), "more.ndjson")
	_ = os.WriteFile(other, []byte("{\"data\":1}\n{\"data\":2}\n{\"data\":3}\n"), 0o600)
	out, errOut, code = run(t, "publish", "--data-dir", s.dir, "--file", other, "--type", "PATTERN_DETECTED", "--ids", "--batch", "2")
	ids := strings.Fields(out)
	if code != 0 || len(ids) != 3 || !strings.Contains(errOut, "published 3 events; last id "+ids[2]) {
		t.Errorf("--ids: exit %d: %q %q", code, out, errOut)
	}
}

func TestProcessErrors(t *testing.T) {
	s := newServer(t)
	_, errOut, code := run(t, "publish", "--data-dir", s.dir, "--type", "NOT_A_TYPE", "--data", "1")
	if code != 1 || !strings.Contains(errOut, `unknown event type "NOT_A_TYPE" (known: CODE_CHANGE`) || !strings.Contains(errOut, "400") {
		t.Errorf("bad type: exit %d: %s", code, errOut)
	}
	_, errOut, code = run(t, "publish", "--data-dir", s.dir, "--key", "wrong", "--type", "CODE_CHANGE")
	if code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("wrong key: exit %d: %s", code, errOut)
	}
	closed := freePort(t)
	began := time.Now()
	_, errOut, code = run(t, "publish", "--server", "http://"+closed, "--key", "k", "--type", "CODE_CHANGE")
	if code != 1 || !strings.Contains(errOut, "cannot reach the server at http://"+closed) {
		t.Errorf("no server: exit %d: %s", code, errOut)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("no server: took %v; a refused connection is not retried", took)
	}
	_, errOut, code = run(t, "listen", "--server", "http://"+closed)
	if code != 1 || !strings.Contains(errOut, "cannot reach the server") {
		t.Errorf("listen, no server: exit %d: %s", code, errOut)
	}
	_, errOut, code = run(t, "publish", "--data-dir", t.TempDir(), "--server", s.url, "--type", "CODE_CHANGE")
	if code != 1 || !strings.Contains(errOut, "no publish key") {
		t.Errorf("no key: exit %d: %s", code, errOut)
	}
	for _, args := range [][]string{
		{"publish", "--nope"},
		{"publish", "--type", "CODE_CHANGE", "--data", "{not json"},
		{"listen", "--ws", "--sse"},
		{"listen", "--max", "x"},
		{"token"},
	} {
		_, errOut, code := run(t, args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errOut)
		}
	}
	_, errOut, code = run(t, "listen", "--data-dir", s.dir, "--token", "garbage")
	if code != 1 || !strings.Contains(errOut, "4001") || !strings.Contains(errOut, "invalid_token") {
		t.Errorf("listen with a bad token: exit %d: %s", code, errOut)
	}
	_, errOut, code = run(t, "listen", "--data-dir", s.dir, "--sse", "--token", "garbage")
	if code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("listen --sse with a bad token: exit %d: %s", code, errOut)
	}
	_, errOut, code = run(t, "listen", "--data-dir", s.dir, "--max", "1", "--timeout", "300ms")
	if code != 1 || !strings.Contains(errOut, "timed out after 300ms with 0 of 1 events") {
		t.Errorf("listen --timeout: exit %d: %s", code, errOut)
	}
	_, errOut, code = run(t, "listen", "--data-dir", s.dir, "--timeout", "300ms")
	if code != 0 {
		t.Errorf("listen --timeout without --max: exit %d: %s", code, errOut)
	}
}

// TestProcessReconnect kills the server while listen runs and starts a new
// one on the same port; listen must not exit and must print the events
// published after the restart. The first restart follows a SIGKILL (the
// connection just drops), the second a SIGTERM (WebSocket close 1001, SSE
// stream ended after a randomized retry).
func TestProcessReconnect(t *testing.T) {
	for _, transport := range []string{"--ws", "--sse"} {
		t.Run(transport, func(t *testing.T) {
			s := newServer(t)
			l := s.listen(t, transport, "--json")
			var want []string
			want = append(want, s.publish(t, "--type", "CODE_CHANGE", "--data", "0"))
			eventually(t, 5*time.Second, "the first event", func() bool { return strings.Contains(l.stdout.String(), want[0]) })
			for i, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
				_ = s.cmd.Process.Signal(sig)
				s.wait(t, 20*time.Second)
				time.Sleep(300 * time.Millisecond) // listen sees the server gone
				s = startServer(t, s.addr, s.dir)
				eventually(t, 20*time.Second, "listen to reconnect", func() bool {
					return strings.Count(l.stderr.String(), "listen: connected") == i+2
				})
				want = append(want, s.publish(t, "--type", "CODE_CHANGE", "--data", fmt.Sprint(i+1)))
				eventually(t, 5*time.Second, "the event after the restart", func() bool { return strings.Contains(l.stdout.String(), want[i+1]) })
				if !l.running() {
					t.Fatalf("listen exited:\n%s", l.stderr)
				}
			}
			var got []string
			for _, e := range parseLines(t, l.stdout.String()) {
				got = append(got, e.ID)
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("listen printed %v, want %v\nnotes:\n%s", got, want, l.stderr)
			}
			// Ctrl-C ends listen with exit 0.
			_ = l.cmd.Process.Signal(os.Interrupt)
			if code := l.wait(t, 5*time.Second); code != 0 {
				t.Errorf("listen after SIGINT: exit %d", code)
			}
			t.Logf("notes:\n%s", l.stderr)
		})
	}
}

// TestProcessDevURL checks that publish and listen find the server through
// the url recorded in the development credentials: no --server given.
func TestProcessDevURL(t *testing.T) {
	s := newServer(t)
	keys, err := devkeys.Load(s.dir)
	if err != nil || keys.URL != s.url {
		t.Fatalf("dev credentials url %q (%v), want %q", keys.URL, err, s.url)
	}
	l := s.listen(t, "--max", "1", "--types", "PATTERN_DETECTED")
	s.publish(t, "--type", "CODE_CHANGE")
	id := s.publish(t, "--type", "PATTERN_DETECTED", "--data", `{"p":1}`)
	if code := l.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("listen: exit %d: %s", code, l.stderr)
	}
	if evs := parseLines(t, l.stdout.String()); len(evs) != 1 || evs[0].ID != id {
		t.Errorf("listen --types printed %s", l.stdout)
	}
}
