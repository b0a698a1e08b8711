package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/server/servertest"
	"github.com/knowledgehub/realtime/internal/syncbuf"
)

// startProgram runs bin with args as a Driver: its stdout lines are the
// reports (JSON lines as they are), its stderr is kept. It gets SIGTERM
// when the test ends and must exit 0.
func startProgram(t *testing.T, bin string, args ...string) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = os.Environ()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	d := &Driver{t: t, name: filepath.Base(bin), cmd: cmd, cancel: cancel, stderr: &syncbuf.Buffer{}, changed: make(chan struct{})}
	cmd.Stderr = d.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", bin, err)
	}
	go d.read(stdout)
	t.Cleanup(d.Terminate)
	return d
}

// TestExamplesGo builds examples/go (as `go run ./examples/go` would) and
// runs it against a node: it prints, one JSON line each, the events its
// token and jobs let through (SPEC §1), and after the node restarts under
// it (close 1001) it reconnects with last_event_id and prints the events
// published meanwhile, once each.
func TestExamplesGo(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "kh-example")
	build := exec.Command("go", "build", "-o", bin, "./examples/go")
	build.Dir = repoDir(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/go: %v\n%s", err, out)
	}

	first := servertest.Start(t)
	client := startProgram(t, bin, "-url", first.URL, "-token", servertest.Token(t, "alice", time.Hour), "-jobs", "job-7")
	waitStderr(t, client, "connected as user alice")

	public := first.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": map[string]any{"file": "api/app.py"}})
	job7 := first.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "job 7", "job_id": "job-7"})
	job8 := first.MustPublish(t, map[string]any{"type": "MEMORY_CREATED", "data": "job 8", "job_id": "job-8"})
	bob := first.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "for bob", "user_id": "bob"})
	alice := first.MustPublish(t, map[string]any{"type": "DECISION_MADE", "data": "for alice", "user_id": "alice"})
	names := map[string]string{public: "public", job7: "job-7", job8: "job-8", bob: "bob", alice: "alice"}
	client.Wait("the example printing alice's event", func(r Report) bool { return r.Str("id") == alice })
	printed := func() []string {
		var ids []string
		for _, r := range client.Reports(func(Report) bool { return true }) {
			ids = append(ids, r.Str("id"))
		}
		return ids
	}
	expectIDs(t, "examples/go", printed(), []string{public, job7, alice}, names)
	if r := client.Reports(func(r Report) bool { return r.Str("id") == public }); len(r) == 1 {
		if r[0].Str("type") != "CODE_CHANGE" || r[0].Obj("data").Str("file") != "api/app.py" || r[0].Str("timestamp") == "" {
			t.Errorf("printed %s for the public event", r[0])
		}
	}

	// The node goes away (1001) and comes back on the same address with a
	// fresh memory log; the events published before the client is back
	// come with the replay.
	if err := first.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	waitStderr(t, client, "disconnected (1001 ")
	waitStderr(t, client, "resuming after "+alice)
	second := servertest.Start(t, "--addr", first.Addr)
	missed := second.MustPublish(t, map[string]any{"type": "PATTERN_DETECTED", "data": "while away"})
	missedJob := second.MustPublish(t, map[string]any{"type": "ERROR_OCCURRED", "data": "job 7, while away", "job_id": "job-7"})
	if strings.Count(client.stderr.String(), "connected as") > 1 {
		t.Logf("the client was back before the events were published: they came live, not with the replay")
	}
	waitStderrCount(t, client, "connected as user alice", 2)
	live := second.MustPublish(t, map[string]any{"type": "CODE_CHANGE", "data": "live again"})
	names[missed], names[missedJob], names[live] = "missed", "missed job-7", "live"
	client.Wait("the example printing the live event", func(r Report) bool { return r.Str("id") == live })
	expectIDs(t, "examples/go across the restart", printed(), []string{public, job7, alice, missed, missedJob, live}, names)
	if other := client.Reports(func(r Report) bool { return r.Str("ev") == "stdout" }); len(other) > 0 {
		t.Errorf("examples/go printed lines that are not JSON events on stdout: %v", other)
	}
	for _, r := range client.Reports(func(Report) bool { return true }) {
		b, _ := json.Marshal(map[string]any(r))
		if !isEventType(r.Str("type")) {
			t.Errorf("examples/go printed a control message on stdout: %s", b)
		}
	}
	client.Terminate()
	if !strings.Contains(client.stderr.String(), "closed: 1000") {
		t.Errorf("on SIGTERM the example did not close normally; stderr:\n%s", client.stderr)
	}
}

// waitStderrCount waits until want appears n times in the process's stderr.
func waitStderrCount(t *testing.T, d *Driver, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for strings.Count(d.stderr.String(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q not %d times on stderr within %v; stderr:\n%s", d.name, want, n, waitTimeout, d.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestExamplesPython runs examples/python/publish.py (standard library
// only): it prints {"id": ...} for a stored event, exits 1 with the
// server's 401 for a wrong key and 2 for data that is not JSON.
func TestExamplesPython(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	n := servertest.Start(t)
	script := filepath.Join(repoDir(t), "examples", "python", "publish.py")
	run := func(key string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(python, append([]string{script}, args...)...)
		cmd.Env = append(os.Environ(), "KH_URL="+n.URL, "KH_PUBLISH_KEY="+key)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("publish.py: %v", err)
		}
		return stdout.String(), stderr.String(), code
	}

	ws := dialGoWS(t, n, "token="+servertest.Token(t, "alice", time.Hour)+"&job_ids=job-42")
	out, errOut, code := run(servertest.PublishKey, "DECISION_MADE", `{"decision": "use Redis"}`, "--user", "alice", "--job", "job-42")
	var res struct{ ID string }
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.ID == "" {
		t.Fatalf("publish.py: exit %d, stdout %q, stderr %q; want 0 and {\"id\": ...}", code, out, errOut)
	}
	ev := ws.nextEvent(t, 5*time.Second)
	if ev["id"] != res.ID || ev["type"] != "DECISION_MADE" || ev["user_id"] != "alice" || ev["job_id"] != "job-42" ||
		fmt.Sprint(ev["data"]) != "map[decision:use Redis]" {
		t.Errorf("the event published by publish.py arrived as %v", ev)
	}

	if out, errOut, code := run("wrong-key", "CODE_CHANGE", "1"); code != 1 || out != "" || !strings.Contains(errOut, "HTTP 401") {
		t.Errorf("publish.py with a wrong key: exit %d, stdout %q, stderr %q; want 1 and HTTP 401", code, out, errOut)
	}
	if _, errOut, code := run(servertest.PublishKey, "NOPE", "1"); code != 1 || !strings.Contains(errOut, "HTTP 400") {
		t.Errorf("publish.py with an unknown type: exit %d, stderr %q; want 1 and HTTP 400", code, errOut)
	}
	if _, errOut, code := run(servertest.PublishKey, "CODE_CHANGE", "{not json"); code != 2 || !strings.Contains(errOut, "not JSON") {
		t.Errorf("publish.py with bad data: exit %d, stderr %q; want 2", code, errOut)
	}
	if m, err := ws.tryNext(200 * time.Millisecond); err == nil {
		t.Errorf("received %v after refused publishes", m)
	}
}
