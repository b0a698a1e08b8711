// Package redistest gives tests a real Redis: a redis-server started for the
// test on a free loopback port (durable: AOF with appendfsync always), or the
// server named by KNOWLEDGEHUB_TEST_REDIS_URL. Tests never skip for want of a
// Redis: without redis-server on PATH they fail and say how to install it.
package redistest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// EnvURL names the environment variable that points tests at an existing
// Redis instead of a redis-server started for each test.
const EnvURL = "KNOWLEDGEHUB_TEST_REDIS_URL"

// startTimeout bounds how long a redis-server may take to answer PING.
const startTimeout = 15 * time.Second

// Start returns the URL of a Redis for t. When EnvURL is set it returns that
// URL: the server is then shared with other tests, which is why tests name
// their keys with Prefix. Otherwise it starts a redis-server that t.Cleanup
// stops.
func Start(t testing.TB) (url string) {
	t.Helper()
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return StartServer(t).URL()
}

// Prefix returns a key prefix unique to this call, so that tests sharing a
// Redis (EnvURL) never see each other's keys. It holds a hash tag, so the
// keys of one prefix share a slot even on a Redis Cluster. When url is the
// shared server of EnvURL, t.Cleanup deletes the keys under the prefix.
func Prefix(t testing.TB, url string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("redistest: random prefix: %v", err)
	}
	prefix := "{kht-" + hex.EncodeToString(b[:]) + "}"
	if shared := os.Getenv(EnvURL); shared != "" && shared == url {
		t.Cleanup(func() { deleteKeys(t, url, prefix) })
	}
	return prefix
}

// deleteKeys removes every key under prefix, best effort: a test that left
// the server unreachable must not fail for it.
func deleteKeys(t testing.TB, url, prefix string) {
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Logf("redistest: cleanup of %s: %v", prefix, err)
		return
	}
	opt.DisableCache = true
	client, err := rueidis.NewClient(opt)
	if err != nil {
		t.Logf("redistest: cleanup of %s: %v", prefix, err)
		return
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The hash tag's braces are glob metacharacters for MATCH: escape them.
	pattern := strings.NewReplacer("{", `\{`, "}", `\}`).Replace(prefix) + "*"
	cursor := uint64(0)
	for {
		entry, err := client.Do(ctx, client.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Logf("redistest: cleanup of %s: scan: %v", prefix, err)
			return
		}
		if len(entry.Elements) > 0 {
			if err := client.Do(ctx, client.B().Unlink().Key(entry.Elements...).Build()).Error(); err != nil {
				t.Logf("redistest: cleanup of %s: unlink: %v", prefix, err)
				return
			}
		}
		if entry.Cursor == 0 {
			return
		}
		cursor = entry.Cursor
	}
}

// Server is a redis-server process owned by one test. It keeps its port and
// data directory across Stop and Start, so an outage test can take Redis
// away and bring it back with everything it acknowledged (AOF, fsync always).
//
// Its methods call t.Fatal on failure and so must run on the test's
// goroutine.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartServer starts a redis-server for t on a free loopback port with an
// append-only file fsynced on every write, in a directory of t.TempDir(), and
// stops it in t.Cleanup. It fails the test when redis-server is not
// installed.
func StartServer(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: redis-server is not on PATH (%v): the Redis store tests need a real Redis 7 or newer. "+
			"Install it (Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis) "+
			"or point %s at one (redis://host:6379/0)", err, EnvURL)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(s.stopQuietly)
	const attempts = 5
	var lastErr error
	for i := 0; i < attempts; i++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: find a free port: %v", err)
		}
		s.port = port
		if lastErr = s.launch(); lastErr == nil {
			return s
		}
		// Most likely someone took the port between our probe and the bind:
		// try another.
	}
	t.Fatalf("redistest: start redis-server (%d attempts): %v", attempts, lastErr)
	return nil
}

// URL returns the redis:// URL of the server (database 0).
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Addr returns the host:port the server listens on.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Dir returns the server's data directory, where its AOF and log live.
func (s *Server) Dir() string { return s.dir }

// Start starts the server again after Stop or Kill, on the same port and
// with the same data directory, and waits until it answers PING (that is,
// until it has loaded its AOF).
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	running := s.cmd != nil
	s.mu.Unlock()
	if running {
		s.t.Fatalf("redistest: Start: redis-server on %s is already running", s.Addr())
	}
	// The port was ours a moment ago; retry briefly in case the kernel has
	// not released it yet.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := s.launch()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redistest: restart redis-server on %s: %v", s.Addr(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop shuts the server down gracefully (SIGTERM) and waits for it to exit.
func (s *Server) Stop() {
	s.t.Helper()
	if err := s.halt(syscall.SIGTERM); err != nil {
		s.t.Fatalf("redistest: stop redis-server on %s: %v", s.Addr(), err)
	}
}

// Kill ends the server abruptly (SIGKILL), as a crash would, and waits for
// it to exit. With appendfsync always, every write it acknowledged survives.
func (s *Server) Kill() {
	s.t.Helper()
	if err := s.halt(syscall.SIGKILL); err != nil {
		s.t.Fatalf("redistest: kill redis-server on %s: %v", s.Addr(), err)
	}
}

// Pause freezes the server (SIGSTOP), as a hung or partitioned Redis would
// behave: connections stay open and nothing is answered until Resume.
func (s *Server) Pause() {
	s.t.Helper()
	if err := s.signal(syscall.SIGSTOP); err != nil {
		s.t.Fatalf("redistest: pause redis-server on %s: %v", s.Addr(), err)
	}
}

// Resume lets a paused server run again (SIGCONT); it answers what it was
// sent meanwhile.
func (s *Server) Resume() {
	s.t.Helper()
	if err := s.signal(syscall.SIGCONT); err != nil {
		s.t.Fatalf("redistest: resume redis-server on %s: %v", s.Addr(), err)
	}
}

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return errors.New("not running")
	}
	return cmd.Process.Signal(sig)
}

func (s *Server) stopQuietly() {
	if err := s.halt(syscall.SIGTERM); err != nil {
		s.t.Logf("redistest: stop redis-server on %s: %v", s.Addr(), err)
	}
}

// halt signals a running server and waits for it to exit; SIGTERM that is
// not obeyed within 10 s becomes SIGKILL. Halting a stopped server does
// nothing.
func (s *Server) halt(sig syscall.Signal) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v: %w", sig, err)
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused server must run to obey SIGTERM
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("redis-server ignored %v for 10s and was killed", sig)
	}
}

// launch starts redis-server on s.port and waits until it answers PING.
func (s *Server) launch() error {
	logPath := s.dir + "/redis.log"
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(s.bin,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "yes",
		"--appendfsync", "always",
		"--dir", s.dir,
		"--daemonize", "no",
		"--databases", "16",
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("exec %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	// Owned by the server: it ends when the process exits, which halt and
	// the test's cleanup guarantee.
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	if err := waitPing(s.Addr(), done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%w\n--- %s (tail) ---\n%s", err, logPath, tail(logPath, 20))
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

// waitPing waits until the server at addr answers PING with PONG (not
// LOADING), or exited is closed, or startTimeout passes.
func waitPing(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("redis-server exited during start")
		default:
		}
		if last = ping(addr); last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("redis-server on %s did not answer PING within %v: %v", addr, startTimeout, last)
}

func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// tail returns the last n lines of the file at path, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
