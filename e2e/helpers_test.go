package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/syncbuf"
)

// Timeouts. Every wait in these tests is bounded by one of them.
const (
	waitTimeout   = 10 * time.Second // one expected report from a driver
	scriptTimeout = 60 * time.Second // a whole driver process
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// repoDir returns the repository root (the tests run in e2e/).
func repoDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("e2e: cannot locate the test sources")
	}
	return filepath.Dir(filepath.Dir(file))
}

// nodeDir returns e2e/node after checking that node and the packages are
// installed. A missing install fails the test: it is a setup step, not a
// reason to skip.
func nodeDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(repoDir(t), "e2e", "node")
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("e2e: node is not installed (need Node.js >= 20 on PATH): %v", err)
	}
	for _, pkg := range []string{"ws", "eventsource", "playwright-core"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("e2e: %s is missing from e2e/node/node_modules: run `npm ci --prefix e2e/node` first (%v)", pkg, err)
		}
	}
	return dir
}

// nodeCommand prepares `node <script> args...` to run under ctx, in dir,
// with env added to the environment. Cancelling ctx sends SIGTERM (so that
// playwright closes its browser) and SIGKILL 5 s later.
func nodeCommand(ctx context.Context, dir, script string, env map[string]string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = dir
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// RunNode runs a Node script to completion within timeout and returns its
// stdout lines. script is relative to dir. The error tells a non-zero exit
// or the timeout, with stderr.
func RunNode(t testing.TB, timeout time.Duration, dir, script string, env map[string]string, args ...string) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := nodeCommand(ctx, dir, script, env, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	lines := splitLines(stdout.String())
	if ctx.Err() != nil {
		return lines, fmt.Errorf("node %s: no exit within %v; stderr:\n%s", script, timeout, stderr.String())
	}
	if err != nil {
		return lines, fmt.Errorf("node %s: %v; stderr:\n%s", script, err, stderr.String())
	}
	return lines, nil
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimRight(l, "\r"); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Report is one JSON line a driver printed.
type Report map[string]any

// Str returns the string at key ("" when absent or not a string).
func (r Report) Str(key string) string { s, _ := r[key].(string); return s }

// Num returns the number at key (-1 when absent).
func (r Report) Num(key string) float64 {
	if f, ok := r[key].(float64); ok {
		return f
	}
	return -1
}

// Obj returns the object at key (nil when absent).
func (r Report) Obj(key string) Report { m, _ := r[key].(map[string]any); return m }

func (r Report) String() string { b, _ := json.Marshal(map[string]any(r)); return string(b) }

// Driver is a running driver script (e2e/node/*-driver.mjs): the test sends
// it commands on stdin and waits for its reports on stdout.
type Driver struct {
	t      testing.TB
	name   string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdin  io.WriteCloser
	stderr *syncbuf.Buffer
	driver bool // speaks the driver protocol of lib.mjs (exit command)

	mu      sync.Mutex
	reports []Report
	changed chan struct{} // closed and replaced on every new report or exit
	exited  bool
	exitErr error
	seq     int
}

// StartDriver starts e2e/node/<script> with env. It is told to exit (and its
// exit status checked) when the test ends.
func StartDriver(t testing.TB, script string, env map[string]string) *Driver {
	t.Helper()
	if env == nil {
		env = map[string]string{}
	}
	env["KH_DEADLINE_MS"] = fmt.Sprint(scriptTimeout.Milliseconds() - 5000)
	d := StartNode(t, nodeDir(t), script, env)
	d.driver = true
	return d
}

// StartNode starts `node script args...` in dir and collects its stdout
// lines as reports (JSON lines as they are, other lines as
// {"ev":"stdout","text":...}). It gets SIGTERM when the test ends, and is
// killed after scriptTimeout.
func StartNode(t testing.TB, dir, script string, env map[string]string, args ...string) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	cmd := nodeCommand(ctx, dir, script, env, args...)
	d := &Driver{t: t, name: script, cmd: cmd, cancel: cancel, stderr: &syncbuf.Buffer{}, changed: make(chan struct{})}
	cmd.Stderr = d.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("e2e: %s: %v", script, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("e2e: %s: %v", script, err)
	}
	d.stdin = stdin
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("e2e: start node %s: %v", script, err)
	}
	go d.read(stdout)
	t.Cleanup(func() {
		if d.driver {
			d.Exit()
		} else {
			d.Terminate()
		}
	})
	return d
}

func (d *Driver) read(stdout io.Reader) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		var r Report
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			r = Report{"ev": "stdout", "text": line}
		}
		if os.Getenv("KH_E2E_VERBOSE") != "" {
			d.t.Logf("%s: %s", d.name, line)
		}
		d.mu.Lock()
		d.reports = append(d.reports, r)
		close(d.changed)
		d.changed = make(chan struct{})
		d.mu.Unlock()
	}
	err := d.cmd.Wait()
	d.mu.Lock()
	d.exited, d.exitErr = true, err
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
}

// Send writes one command. Every command gets a seq; the driver answers
// {"ev":"done","seq":n} once it has carried it out.
func (d *Driver) Send(cmd map[string]any) int {
	d.t.Helper()
	d.mu.Lock()
	d.seq++
	seq := d.seq
	d.mu.Unlock()
	cmd["seq"] = seq
	b, err := json.Marshal(cmd)
	if err != nil {
		d.t.Fatalf("e2e: encode command: %v", err)
	}
	if _, err := d.stdin.Write(append(b, '\n')); err != nil {
		d.t.Fatalf("e2e: %s: send %s: %v; stderr:\n%s", d.name, b, err, d.stderr)
	}
	return seq
}

// Do sends cmd and waits until the driver has carried it out.
func (d *Driver) Do(cmd map[string]any) {
	d.t.Helper()
	op := fmt.Sprint(cmd["op"])
	seq := d.Send(cmd)
	d.Wait(fmt.Sprintf("command %s (seq %d) done", op, seq), func(r Report) bool {
		return r.Str("ev") == "done" && r.Num("seq") == float64(seq)
	})
}

// Wait returns the first report that matches, waiting for it up to
// waitTimeout. A fatal report, a page error or the driver's exit fails the
// test at once.
func (d *Driver) Wait(what string, match func(Report) bool) Report {
	d.t.Helper()
	return d.WaitN(what, 1, match)[0]
}

// WaitFor is Wait with its own timeout.
func (d *Driver) WaitFor(timeout time.Duration, what string, match func(Report) bool) Report {
	d.t.Helper()
	return d.waitN(what, 1, timeout, match)[0]
}

// WaitN waits until n reports match and returns all that match.
func (d *Driver) WaitN(what string, n int, match func(Report) bool) []Report {
	d.t.Helper()
	return d.waitN(what, n, waitTimeout, match)
}

func (d *Driver) waitN(what string, n int, timeout time.Duration, match func(Report) bool) []Report {
	d.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		var found []Report
		for _, r := range d.reports {
			switch r.Str("ev") {
			case "fatal", "pageerror":
				d.mu.Unlock()
				d.t.Fatalf("e2e: %s reported %s while waiting for %s; stderr:\n%s", d.name, r, what, d.stderr)
			}
			if match(r) {
				found = append(found, r)
			}
		}
		exited, exitErr, changed := d.exited, d.exitErr, d.changed
		d.mu.Unlock()
		if len(found) >= n {
			return found
		}
		if exited {
			d.t.Fatalf("e2e: %s exited (%v) before %s (%d of %d seen); stderr:\n%s", d.name, exitErr, what, len(found), n, d.stderr)
		}
		select {
		case <-changed:
		case <-deadline.C:
			d.t.Fatalf("e2e: %s: no %s within %v (%d of %d seen); reports:\n%s\nstderr:\n%s", d.name, what, timeout, len(found), n, d.dump(), d.stderr)
		}
	}
}

// Reports returns the reports so far that match.
func (d *Driver) Reports(match func(Report) bool) []Report {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Report
	for _, r := range d.reports {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

func (d *Driver) dump() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	start := max(0, len(d.reports)-60)
	for _, r := range d.reports[start:] {
		b.WriteString("  " + r.String() + "\n")
	}
	return b.String()
}

// Exit asks the driver to exit and checks that it exits 0.
func (d *Driver) Exit() {
	d.t.Helper()
	d.mu.Lock()
	exited := d.exited
	d.mu.Unlock()
	if !exited {
		b, _ := json.Marshal(map[string]any{"op": "exit"})
		_, _ = d.stdin.Write(append(b, '\n'))
		_ = d.stdin.Close()
	}
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		exited, exitErr, changed := d.exited, d.exitErr, d.changed
		d.mu.Unlock()
		if exited {
			d.cancel()
			if exitErr != nil && !d.t.Failed() {
				var ee *exec.ExitError
				if errors.As(exitErr, &ee) {
					d.t.Errorf("e2e: %s exited with %v; reports:\n%s\nstderr:\n%s", d.name, exitErr, d.dump(), d.stderr)
				} else {
					d.t.Errorf("e2e: %s: %v", d.name, exitErr)
				}
			}
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			d.cancel() // SIGTERM, then SIGKILL after WaitDelay
			d.t.Errorf("e2e: %s did not exit within 15s of exit; killed", d.name)
			deadline.Reset(10 * time.Second)
		}
	}
}

// Terminate sends SIGTERM and checks that the process exits 0 within 10 s.
func (d *Driver) Terminate() {
	d.t.Helper()
	d.mu.Lock()
	if !d.exited {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
	}
	d.mu.Unlock()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		exited, exitErr, changed := d.exited, d.exitErr, d.changed
		d.mu.Unlock()
		if exited {
			d.cancel()
			if exitErr != nil && !d.t.Failed() {
				d.t.Errorf("e2e: %s: exit after SIGTERM: %v; stderr:\n%s", d.name, exitErr, d.stderr)
			}
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			d.t.Fatalf("e2e: %s: no exit within 10 s of SIGTERM", d.name)
		}
	}
}

// Matchers.

// ev matches reports of kind ev on conn.
func ev(kind, conn string) func(Report) bool {
	return func(r Report) bool { return r.Str("ev") == kind && r.Str("conn") == conn }
}

// wsMsg matches a WebSocket message on conn whose JSON type is typ.
func wsMsg(conn, typ string) func(Report) bool {
	return func(r Report) bool {
		return r.Str("ev") == "message" && r.Str("conn") == conn && r.Obj("msg").Str("type") == typ
	}
}

// wsEventID matches the WebSocket message on conn that is the event id.
func wsEventID(conn, id string) func(Report) bool {
	return func(r Report) bool {
		return r.Str("ev") == "message" && r.Str("conn") == conn && r.Obj("msg").Str("id") == id
	}
}

// isEventType reports whether typ is an event type (upper case) rather than
// a control message type (SPEC §1).
func isEventType(typ string) bool { return typ != "" && typ[0] >= 'A' && typ[0] <= 'Z' }

// eventIDs returns the ids of the events (not control messages) in msgs, in order.
func eventIDs(msgs []Report) []string {
	var ids []string
	for _, m := range msgs {
		if isEventType(m.Str("type")) {
			ids = append(ids, m.Str("id"))
		}
	}
	return ids
}

// wsMessages returns the decoded JSON messages conn received so far.
func wsMessages(d *Driver, conn string) []Report {
	var out []Report
	for _, r := range d.Reports(ev("message", conn)) {
		out = append(out, r.Obj("msg"))
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
