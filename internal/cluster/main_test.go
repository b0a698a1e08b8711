// Package cluster_test runs several `knowledgehub serve` processes on one
// real Redis (store: redis) and checks that they behave as one hub: every
// node delivers every event in the same order with the same ids, clients
// resume on another node, a Redis restart loses nothing that was
// acknowledged, the per-user connection limit counts across nodes, and the
// history API answers the same everywhere.
//
// The nodes are real processes built from ./cmd/knowledgehub (with -race
// when the tests run with -race, so that a data race inside a node fails
// the test); Redis is a redis-server started by internal/redistest. The
// clients are gorilla WebSocket connections and raw SSE streams.
package cluster_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binary is the knowledgehub executable the nodes run.
var binary string

// EnvBinary names the environment variable that gives the tests a
// knowledgehub binary built beforehand instead of building one (for a run
// against a fixed build while the tree is being edited).
const EnvBinary = "KNOWLEDGEHUB_CLUSTER_BINARY"

func TestMain(m *testing.M) {
	if b := os.Getenv(EnvBinary); b != "" {
		binary = b
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "knowledgehub-cluster-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "knowledgehub")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		// A race inside a node then prints "WARNING: DATA RACE", which
		// the node's cleanup turns into a test failure.
		args = append(args, "-race")
	}
	args = append(args, "github.com/knowledgehub/realtime/cmd/knowledgehub")
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the knowledgehub binary:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}
