//go:build linux

package uring

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The paced benchmark's subscribers live in a second process (this test
// binary started again with readerEnv set), so that the sender's CPU time
// is its own, as a server's is measured.
const readerEnv = "URING_BENCH_READER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(readerEnv); spec != "" {
		os.Exit(runReader(spec))
	}
	os.Exit(m.Run())
}

// runReader dials n connections to addr ("n@addr"), reads them all until
// its standard input closes (or a minute passed), and reports "ready".
func runReader(spec string) int {
	var n int
	var addr string
	if _, err := fmt.Sscanf(spec, "%d@%s", &n, &addr); err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		return 2
	}
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "reader:", err)
			return 1
		}
		go func() { _, _ = io.Copy(io.Discard, c) }()
	}
	fmt.Println("ready")
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
	}
	return 0
}

// BenchmarkSendPaced sends one 200-byte message to each of 5,000 loopback
// sockets ten times a second (an op is one round), as a gateway fans out
// a low event rate, with one write(2) per socket or in io_uring batches.
// cpu-ns/send is this process's CPU time (user + system) per message:
// the kernel's TCP work included, the subscribers' reading not.
//
//	go test -run '^$' -bench SendPaced -benchtime 30x ./internal/uring/
func BenchmarkSendPaced(b *testing.B) {
	for _, mode := range []string{"write", "uring"} {
		b.Run(mode, func(b *testing.B) {
			const conns = 5000
			var r *Ring
			if mode == "uring" {
				r = open(b)
			}
			fds := readerProcess(b, conns)
			msg := make([]byte, 200)
			bufs := make([][]byte, MaxBatch)
			for i := range bufs {
				bufs[i] = msg
			}
			res := make([]int32, MaxBatch)
			refused := 0
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			var before, after syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			b.ResetTimer()
			for range b.N {
				<-tick.C
				if r == nil {
					for _, fd := range fds {
						if _, err := syscall.Write(int(fd), msg); err != nil {
							refused++
						}
					}
					continue
				}
				for start := 0; start < conns; start += MaxBatch {
					chunk := fds[start:min(conns, start+MaxBatch)]
					if err := r.Send(chunk, bufs[:len(chunk)], res); err != nil {
						b.Fatal(err)
					}
					for _, n := range res[:len(chunk)] {
						if n != int32(len(msg)) {
							refused++
						}
					}
				}
			}
			b.StopTimer()
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			cpu := after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano()
			b.ReportMetric(float64(cpu)/float64(b.N*conns), "cpu-ns/send")
			b.ReportMetric(float64(refused)/float64(b.N*conns), "refused/send")
		})
	}
}

// readerProcess starts the subscribers' process with n connections and
// returns this side's descriptors.
func readerProcess(b *testing.B, n int) []int32 {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), readerEnv+"="+strconv.Itoa(n)+"@"+ln.Addr().String())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = stdin.Close(); _ = cmd.Wait() })
	fds := make([]int32, 0, n)
	for len(fds) < n {
		fds = append(fds, accept(b, ln))
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		b.Fatalf("reader process: %q, %v", line, err)
	}
	return fds
}
