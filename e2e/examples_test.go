package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/server/servertest"
)

// TestExamplesNode runs examples/node: listen.mjs prints the events that
// publish.mjs publishes, one JSON object a line, within its visibility.
func TestExamplesNode(t *testing.T) {
	nodeDir(t)
	dir := filepath.Join(repoDir(t), "examples", "node")
	n := servertest.Start(t)
	env := map[string]string{"KH_URL": n.URL}
	if out, err := exec.Command("node", "-p", "typeof WebSocket").Output(); err == nil && strings.TrimSpace(string(out)) == "undefined" {
		env["NODE_OPTIONS"] = "--experimental-websocket" // Node 20: WebSocket is behind a flag
	}
	env["KH_TOKEN"] = servertest.Token(t, "alice", time.Hour)
	listen := StartNode(t, dir, "listen.mjs", env, "--jobs", "job-42")
	// listen.mjs prints control messages to stderr: wait for the welcome there.
	waitStderr(t, listen, `"type":"connected"`)

	publish := func(args ...string) string {
		t.Helper()
		lines, err := RunNode(t, 20*time.Second, dir, "publish.mjs",
			map[string]string{"KH_URL": n.URL, "KH_PUBLISH_KEY": servertest.PublishKey}, args...)
		if err != nil {
			t.Fatalf("publish.mjs %v: %v", args, err)
		}
		var out struct{ ID string }
		if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &out) != nil || out.ID == "" {
			t.Fatalf("publish.mjs %v printed %q, want one line {\"id\": ...}", args, lines)
		}
		return out.ID
	}
	public := publish("CODE_CHANGE", `{"file":"api/app.py","lines":12}`)
	private := publish("DECISION_MADE", `"use Redis"`, "--user", "alice", "--job", "job-42")
	hidden := publish("DECISION_MADE", `"not for alice"`, "--user", "bob")
	otherJob := publish("MEMORY_CREATED", `null`, "--job", "job-7")
	last := publish("PATTERN_DETECTED", `{"pattern":"retry loop"}`)
	names := map[string]string{public: "public", private: "alice job-42", hidden: "bob", otherJob: "job-7", last: "last"}

	listen.Wait("listen.mjs printing the last event", func(r Report) bool { return r.Str("id") == last })
	var ids []string
	for _, r := range listen.Reports(func(r Report) bool { return r.Str("id") != "" }) {
		ids = append(ids, r.Str("id"))
		if r.Str("id") == private && (r.Str("type") != "DECISION_MADE" || r["data"] != "use Redis" || r.Str("user_id") != "alice" || r.Str("job_id") != "job-42") {
			t.Errorf("listen.mjs printed %s for the private event", r)
		}
	}
	expectIDs(t, "listen.mjs", ids, []string{public, private, last}, names)
	if other := listen.Reports(func(r Report) bool { return r.Str("id") == "" }); len(other) > 0 {
		t.Errorf("listen.mjs printed lines that are not events on stdout: %v", other)
	}

	// A bad publish key: exit 1, and the server's error on stderr.
	_, err := RunNode(t, 20*time.Second, dir, "publish.mjs",
		map[string]string{"KH_URL": n.URL, "KH_PUBLISH_KEY": "wrong"}, "CODE_CHANGE", "1")
	if err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("publish.mjs with a wrong key: %v, want a failure naming HTTP 401", err)
	}
	listen.Terminate()
}

// waitStderr waits until the process wrote want to stderr.
func waitStderr(t *testing.T, d *Driver, want string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(d.stderr.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s on stderr within %v; stderr:\n%s", d.name, want, waitTimeout, d.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
