package security_test

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestSlowlorisClosed: a client that sends a request header one byte at a
// time, never finishing it, is cut off. The engine's read deadline for a
// request (KeepaliveTime, 60 s in server.go) is set when the connection is
// accepted and is not pushed back by partial data, so trickling does not
// keep the connection alive. The test waits for it, so it runs in parallel
// with the other parallel tests and is skipped in -short mode.
func TestSlowlorisClosed(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 60 s request deadline")
	}
	t.Parallel()
	n := start(t)
	c := rawConn(t, n)
	began := time.Now()
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(80 * time.Second))
		b := make([]byte, 512)
		for {
			k, err := c.Read(b)
			if k > 0 {
				closed <- errors.New("server answered a request that was never finished: " + string(b[:k]))
				return
			}
			if err != nil {
				closed <- err
				return
			}
		}
	}()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-closed:
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("slowloris connection still open after %v", time.Since(began).Round(time.Second))
			case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err):
				t.Logf("slowloris connection closed by the server after %v", time.Since(began).Round(time.Second))
				if time.Since(began) > 75*time.Second {
					t.Errorf("closed only after %v", time.Since(began))
				}
				return
			default:
				t.Fatalf("slowloris: %v", err)
			}
		case <-tick.C:
			_, _ = c.Write([]byte("X")) // one more byte of a header line
		}
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read"
}
