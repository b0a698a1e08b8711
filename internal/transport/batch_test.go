//go:build linux

package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lesismal/nbio"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/uring"
)

// engine starts an event loop whose connections' sessions are Writers, as
// the server's are.
func engine(t *testing.T) *nbio.Engine {
	t.Helper()
	g := nbio.NewEngine(nbio.Config{})
	g.OnWrittenSize(func(c *nbio.Conn, _ []byte, n int) {
		if w, ok := c.Session().(*Writer); ok {
			w.Written(n)
		}
	})
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	return g
}

// connect returns a Writer on a new event-loop connection and its peer.
func connect(t *testing.T, g *nbio.Engine) (*Writer, *nbio.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := g.AddConn(sc)
	if err != nil {
		t.Fatal(err)
	}
	w := &Writer{}
	w.Init(nc, nc, 1<<20)
	nc.SetSession(w)
	if w.engine == nil {
		t.Fatal("the writer did not find the engine's descriptor")
	}
	return w, nc, peer
}

func batch(t *testing.T) *Batch {
	t.Helper()
	b, err := NewBatch()
	if errors.Is(err, uring.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func ev(s string) *event.Event { return &event.Event{WS: []byte(s)} }

// expect reads exactly want from peer.
func expect(t *testing.T, peer net.Conn, want []byte) {
	t.Helper()
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatalf("reading %d bytes: %v", len(want), err)
	}
	if !bytes.Equal(got, want) {
		if len(want) > 80 {
			t.Fatalf("received other bytes than sent (%d bytes)", len(want))
		}
		t.Fatalf("received %q, want %q", got, want)
	}
}

func waitDrained(t *testing.T, w *Writer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for w.Queued() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("queued bytes never returned to 0: %d", w.Queued())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBatchKeepsEachConnectionsOrder stages single and multi-event writes,
// writes directly while they wait, and checks every peer receives its own
// bytes in the order they were handed over.
func TestBatchKeepsEachConnectionsOrder(t *testing.T) {
	g, b := engine(t), batch(t)
	w1, _, p1 := connect(t, g)
	w2, _, p2 := connect(t, g)
	e1, e2, e3 := ev("one;"), ev("two;"), ev("three;")
	if err := w1.Stage(b, []*event.Event{e1}, WSFrame); err != nil {
		t.Fatal(err)
	}
	if err := w2.Stage(b, []*event.Event{e2, e3}, WSFrame); err != nil {
		t.Fatal(err)
	}
	if err := w1.Write([]byte("direct-while-staged;")); err != nil {
		t.Fatal(err)
	}
	if got := w1.Queued(); got != int64(len("one;direct-while-staged;")) {
		t.Fatalf("queued while staged: %d", got)
	}
	b.Flush()
	if err := w1.Write([]byte("after;")); err != nil {
		t.Fatal(err)
	}
	expect(t, p1, []byte("one;direct-while-staged;after;"))
	expect(t, p2, []byte("two;three;"))
	if string(e1.WS) != "one;" {
		t.Fatalf("an event's shared frame was written to: %q", e1.WS)
	}
	waitDrained(t, w1)
	waitDrained(t, w2)
}

// TestBatchHandsWhatTheSocketRefusesToTheEngine fills a socket whose peer
// reads nothing, so the batched send is short (or refused); the rest, the
// next round's staged write and a direct write must all arrive whole and in
// order once the peer reads.
func TestBatchHandsWhatTheSocketRefusesToTheEngine(t *testing.T) {
	g, b := engine(t), batch(t)
	w, nc, peer := connect(t, g)
	if err := nc.SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), ChunkBytes/16/2) // 128 KiB
	var want []byte
	for round := range 3 {
		frame := append([]byte{byte('A' + round)}, big...)
		if err := w.Stage(b, []*event.Event{{WS: frame}}, WSFrame); err != nil {
			t.Fatal(err)
		}
		b.Flush()
		want = append(want, frame...)
		if round == 0 && w.Queued() == 0 {
			t.Fatal("a 128 KiB send into a 4 KiB socket buffer was complete at once: the test cannot see a short send")
		}
	}
	if err := w.Write([]byte("tail")); err != nil {
		t.Fatal(err)
	}
	want = append(want, "tail"...)
	expect(t, peer, want)
	waitDrained(t, w)
}

// TestBatchSkipsClosedConnections closes one connection between staging
// and flushing: its bytes are dropped, the others' are sent.
func TestBatchSkipsClosedConnections(t *testing.T) {
	g, b := engine(t), batch(t)
	w1, nc1, p1 := connect(t, g)
	w2, _, p2 := connect(t, g)
	if err := w1.Stage(b, []*event.Event{ev("lost")}, WSFrame); err != nil {
		t.Fatal(err)
	}
	if err := w2.Stage(b, []*event.Event{ev("kept")}, WSFrame); err != nil {
		t.Fatal(err)
	}
	_ = nc1.Close()
	b.Flush()
	expect(t, p2, []byte("kept"))
	_ = p1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := p1.Read(make([]byte, 16)); err == nil {
		t.Fatalf("the closed connection's peer read %d bytes", n)
	}
	if w1.staged != nil || w2.staged != nil {
		t.Fatal("a writer still points at a flushed stage")
	}
	if q := w1.Queued(); q != 0 {
		t.Fatalf("the closed connection still counts %d queued bytes", q)
	}
}

// TestBatchClosesAConnectionWhoseSendFails resets the peer: the batched
// send fails (or the engine saw the reset first) and the connection ends.
func TestBatchClosesAConnectionWhoseSendFails(t *testing.T) {
	g, b := engine(t), batch(t)
	w, nc, peer := connect(t, g)
	_ = peer.(*net.TCPConn).SetLinger(0)
	_ = peer.Close() // RST
	time.Sleep(50 * time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := w.Stage(b, []*event.Event{ev("to a reset peer")}, WSFrame); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Fatal(err)
		}
		b.Flush()
		if closed, _ := nc.IsClosed(); closed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a connection reset by its peer was never closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestBatchQueuesBehindTheEngine streams rounds larger than the socket
// takes to a peer that reads all the while: the engine often holds the
// rest of one round when the next is flushed, and that round must then go
// behind it, not onto the socket first.
func TestBatchQueuesBehindTheEngine(t *testing.T) {
	g, b := engine(t), batch(t)
	w, nc, peer := connect(t, g)
	if err := nc.SetWriteBuffer(8192); err != nil {
		t.Fatal(err)
	}
	const rounds, size = 300, 24 << 10
	frame := func(round int) []byte {
		f := bytes.Repeat([]byte{byte(round)}, size)
		return f
	}
	done := make(chan error, 1)
	go func() {
		_ = peer.SetReadDeadline(time.Now().Add(30 * time.Second))
		got := make([]byte, size)
		for round := range rounds {
			if _, err := io.ReadFull(peer, got); err != nil {
				done <- err
				return
			}
			if !bytes.Equal(got, frame(round)) {
				done <- errors.New("bytes of two rounds were interleaved or reordered")
				return
			}
		}
		done <- nil
	}()
	deadline := time.Now().Add(30 * time.Second)
	for round := range rounds {
		for w.Queued() > 128<<10 { // as a client that keeps up would allow
			select {
			case err := <-done:
				t.Fatalf("the peer stopped at round %d: %v", round, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatal("the peer stopped reading")
			}
			time.Sleep(time.Millisecond)
		}
		if err := w.Stage(b, []*event.Event{{WS: frame(round)}}, WSFrame); err != nil {
			t.Fatal(err)
		}
		b.Flush()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestBatchDoesNotAllocate checks the steady state of a round larger than
// one submission: staging single-event writes for 300 connections and
// flushing them allocates nothing.
func TestBatchDoesNotAllocate(t *testing.T) {
	g, b := engine(t), batch(t)
	const conns = 300
	ws := make([]*Writer, conns)
	for i := range ws {
		w, _, peer := connect(t, g)
		ws[i] = w
		go func() { _, _ = io.Copy(io.Discard, peer) }()
	}
	evs := []*event.Event{ev("a frame of a typical event, sent to every connection")}
	round := func() {
		for _, w := range ws {
			if err := w.Stage(b, evs, WSFrame); err != nil {
				t.Fatal(err)
			}
		}
		b.Flush()
	}
	if allocs := testing.AllocsPerRun(20, round); allocs != 0 {
		t.Fatalf("a round of %d staged writes allocated %.1f times", conns, allocs)
	}
}
