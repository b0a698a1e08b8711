//go:build linux

package uring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

func open(t testing.TB) *Ring {
	t.Helper()
	r, err := Open()
	if errors.Is(err, ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// pairs returns n connected loopback TCP pairs: the server side's
// descriptor (non-blocking, as the event loop keeps it) and the client.
func pairs(t testing.TB, n int) ([]int32, []net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fds := make([]int32, n)
	clients := make([]net.Conn, n)
	for i := range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fds[i] = accept(t, ln)
		clients[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return fds, clients
}

// accept takes the next connection of ln and returns its descriptor; the
// connection is closed when the test ends.
func accept(t testing.TB, ln net.Listener) int32 {
	t.Helper()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	rc, err := s.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int32
	_ = rc.Control(func(x uintptr) { fd = int32(x) })
	return fd
}

func TestSendDeliversEachBufferToItsSocket(t *testing.T) {
	r := open(t)
	fds, clients := pairs(t, 3)
	bufs := [][]byte{[]byte("first"), []byte("second socket"), bytes.Repeat([]byte("x"), 70000)}
	res := make([]int32, 3)
	if err := r.Send(fds, bufs, res); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		if int(res[i]) != len(bufs[i]) {
			t.Fatalf("socket %d: sent %d of %d", i, res[i], len(bufs[i]))
		}
		got := make([]byte, len(bufs[i]))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("socket %d: %v", i, err)
		}
		if !bytes.Equal(got, bufs[i]) {
			t.Fatalf("socket %d received other bytes", i)
		}
	}
}

func TestSendReportsShortSendsFullBuffersAndBadDescriptors(t *testing.T) {
	r := open(t)
	fds, _ := pairs(t, 1)
	if err := syscall.SetsockoptInt(int(fds[0]), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 8<<20) // the peer reads nothing: the buffers fill
	res := make([]int32, 2)
	if err := r.Send([]int32{fds[0], -1}, [][]byte{big, {1}}, res); err != nil {
		t.Fatal(err)
	}
	if res[0] <= 0 || int(res[0]) >= len(big) {
		t.Fatalf("a send larger than the socket takes: got %d, want a short send", res[0])
	}
	if syscall.Errno(-res[1]) != syscall.EBADF {
		t.Fatalf("send on descriptor -1: got %d, want -EBADF", res[1])
	}
	for range 100 { // the buffers are full: the next send must not block
		if err := r.Send(fds, [][]byte{big}, res); err != nil {
			t.Fatal(err)
		}
		if syscall.Errno(-res[0]) == syscall.EAGAIN {
			return
		}
	}
	t.Fatalf("sends on a full socket never reported EAGAIN (last %d)", res[0])
}

func TestSendRejectsMalformedBatches(t *testing.T) {
	r := open(t)
	if err := r.Send(make([]int32, MaxBatch+1), make([][]byte, MaxBatch+1), make([]int32, MaxBatch+1)); err == nil {
		t.Fatal("a batch over MaxBatch was accepted")
	}
	if err := r.Send([]int32{1, 2}, [][]byte{{1}}, make([]int32, 2)); err == nil {
		t.Fatal("fewer buffers than sockets was accepted")
	}
}

// TestSendKeepsEachStreamInOrder sends numbered messages in many rounds to
// many sockets and checks that every socket received its own sequence,
// complete and in order.
func TestSendKeepsEachStreamInOrder(t *testing.T) {
	r := open(t)
	const conns, rounds = 100, 300
	fds, clients := pairs(t, conns)
	errc := make(chan error, conns)
	for i, c := range clients {
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			msg := make([]byte, 12)
			for k := range rounds {
				if _, err := io.ReadFull(c, msg); err != nil {
					errc <- err
					return
				}
				if got, gotK := binary.BigEndian.Uint32(msg), binary.BigEndian.Uint64(msg[4:]); got != uint32(i) || gotK != uint64(k) {
					errc <- errors.New("out of order or misrouted message")
					return
				}
			}
			errc <- nil
		}()
	}
	bufs := make([][]byte, conns)
	res := make([]int32, conns)
	for k := range rounds {
		for i := range bufs {
			b := make([]byte, 12)
			binary.BigEndian.PutUint32(b, uint32(i))
			binary.BigEndian.PutUint64(b[4:], uint64(k))
			bufs[i] = b
		}
		if err := r.Send(fds, bufs, res); err != nil {
			t.Fatal(err)
		}
		for i := range res {
			if res[i] != 12 {
				t.Fatalf("round %d socket %d: sent %d of 12", k, i, res[i])
			}
		}
	}
	for range conns {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}
