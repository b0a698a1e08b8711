// Package proctest runs the knowledgehub binary as a child process for
// tests: built from the module, started with a clean environment, ready
// when /readyz answers 200, killed when the test ends.
package proctest

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/syncbuf"
)

// Build builds cmd/knowledgehub into dir and returns the binary's path;
// the error holds the compiler's output.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "knowledgehub")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/knowledgehub/realtime/cmd/knowledgehub")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
}

// Env is the environment for a child process: the caller's, without any
// KNOWLEDGEHUB_* setting, so that only the arguments configure it.
func Env() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KNOWLEDGEHUB_") {
			out = append(out, kv)
		}
	}
	return out
}

// Proc is a running `knowledgehub` process.
type Proc struct {
	Cmd  *exec.Cmd
	Out  *syncbuf.Buffer // its stdout and stderr (the first 4 MiB)
	Done chan struct{}   // closed when it has exited
	Err  error           // what Wait returned, once Done is closed
}

// Serve starts bin with args (`serve ...` listening at base) and waits up
// to 15 s for base/readyz to answer 200. The process is killed when the
// test ends.
func Serve(t testing.TB, bin, base string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Cmd: exec.Command(bin, args...), Out: &syncbuf.Buffer{Max: 4 << 20}, Done: make(chan struct{})}
	p.Cmd.Env = Env()
	p.Cmd.Stdout, p.Cmd.Stderr = p.Out, p.Out
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.Err = p.Cmd.Wait(); close(p.Done) }()
	t.Cleanup(func() { p.Kill(t) })
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-p.Done:
			t.Fatalf("serve exited at start (%v):\n%s", p.Err, p.Out)
		default:
		}
		if resp, err := client.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready within 15s:\n%s", p.Out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill sends SIGKILL and waits until the process is gone.
func (p *Proc) Kill(t testing.TB) {
	select {
	case <-p.Done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.Done:
	case <-time.After(10 * time.Second):
		t.Errorf("serve (pid %d) still running 10s after SIGKILL", p.Cmd.Process.Pid)
	}
}
