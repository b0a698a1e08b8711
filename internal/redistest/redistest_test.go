package redistest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

func client(t *testing.T, url string) rueidis.Client {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestStartAnswers(t *testing.T) {
	url := Start(t)
	c := client(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		t.Fatalf("PING %s: %v", url, err)
	}
}

func TestServerKeepsDataAcrossKillAndStart(t *testing.T) {
	s := StartServer(t)
	c := client(t, s.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := Prefix(t, s.URL()) + ":k"
	if err := c.Do(ctx, c.B().Set().Key(key).Value("v1").Build()).Error(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	s.Kill()
	if err := ping(s.Addr()); err == nil {
		t.Fatal("PING answered after Kill")
	}
	s.Start()
	// The client reconnects by itself; the acknowledged write survived the
	// crash (AOF, appendfsync always).
	var got string
	var err error
	for i := 0; i < 50; i++ {
		if got, err = c.Do(ctx, c.B().Get().Key(key).Build()).ToString(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || got != "v1" {
		t.Fatalf("GET after restart = %q, %v; want v1", got, err)
	}
	s.Stop()
	s.Stop() // stopping a stopped server does nothing
	s.Start()
	if err := ping(s.Addr()); err != nil {
		t.Fatalf("PING after Stop and Start: %v", err)
	}
}

func TestPrefixUnique(t *testing.T) {
	a, b := Prefix(t, ""), Prefix(t, "")
	if a == b {
		t.Fatalf("two prefixes are equal: %s", a)
	}
}

func TestPauseResume(t *testing.T) {
	s := StartServer(t)
	s.Pause()
	if err := ping(s.Addr()); err == nil {
		t.Fatal("PING answered while paused")
	}
	s.Resume()
	if err := waitPing(s.Addr(), nil); err != nil {
		t.Fatalf("PING after Resume: %v", err)
	}
	s.Pause() // cleanup must stop a paused server
}
