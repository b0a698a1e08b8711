package disk

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/store"
	"github.com/knowledgehub/realtime/internal/store/storetest"
)

var quiet = slog.New(slog.DiscardHandler)

func openT(t testing.TB, dir string, r store.Retention, o options) *Log {
	t.Helper()
	l, err := open(dir, storetest.Types(), r, quiet, o)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, r store.Retention) store.Log {
		return openT(t, t.TempDir(), r, options{})
	})
}

func newEvents(tag string, n int) []*event.Event {
	types := storetest.Types()
	evs := make([]*event.Event, n)
	for i := range evs {
		data, _ := json.Marshal(map[string]any{"tag": tag, "i": i})
		evs[i] = &event.Event{Type: "CODE_CHANGE", TypeIndex: types.Index("CODE_CHANGE"), Data: data}
	}
	return evs
}

func mustAppend(t testing.TB, l *Log, key string, evs []*event.Event) []event.ID {
	t.Helper()
	ids, _, err := l.Append(context.Background(), key, evs)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return ids
}

func readAll(t testing.TB, l *Log) []*event.Event {
	t.Helper()
	evs, err := l.Read(context.Background(), event.ID{}, 0)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return evs
}

func TestReopenKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	r := store.Retention{MaxEvents: 10, MaxAge: time.Hour}
	l, err := Open(dir, storetest.Types(), r, quiet)
	if err != nil {
		t.Fatal(err)
	}
	keyed := mustAppend(t, l, "key-1", newEvents("keyed", 2))
	for i := 0; i < 5; i++ {
		mustAppend(t, l, "", newEvents("bulk", 3))
	}
	var before store.Bounds
	deadline := time.Now().Add(5 * time.Second)
	for {
		before, _ = l.Bounds(context.Background())
		if before.Pruned == readAll(t, l)[0].ID {
			t.Fatalf("Pruned %s is a retained id", before.Pruned)
		}
		if n := len(readAll(t, l)); n == 10 && !before.Pruned.IsZero() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention did not settle: %+v", before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	events := readAll(t, l)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	l2 := openT(t, dir, r, options{})
	after, _ := l2.Bounds(context.Background())
	if after != before {
		t.Fatalf("Bounds after reopen = %+v, before = %+v", after, before)
	}
	again := readAll(t, l2)
	if len(again) != len(events) {
		t.Fatalf("after reopen %d events, before %d", len(again), len(events))
	}
	for i := range again {
		if string(again[i].JSON) != string(events[i].JSON) || string(again[i].SSE) != string(events[i].SSE) {
			t.Fatalf("event %d after reopen %s, before %s", i, again[i].JSON, events[i].JSON)
		}
		if again[i].TypeIndex != events[i].TypeIndex || !again[i].Time.Equal(events[i].Time) {
			t.Fatalf("event %d after reopen %+v, before %+v", i, again[i], events[i])
		}
	}
	ids, replayed, err := l2.Append(context.Background(), "key-1", newEvents("again", 2))
	if err != nil || !replayed || len(ids) != 2 || ids[0] != keyed[0] || ids[1] != keyed[1] {
		t.Fatalf("idempotency key after reopen: ids %v replayed %v err %v, want %v", ids, replayed, err, keyed)
	}
	next := mustAppend(t, l2, "", newEvents("next", 1))
	if !before.Last.Less(next[0]) {
		t.Fatalf("id after reopen %s not after the last id %s", next[0], before.Last)
	}
}

func TestIDsIncreaseWhenClockGoesBack(t *testing.T) {
	dir := t.TempDir()
	var clock atomic.Int64
	clock.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	o := options{now: func() time.Time { return time.UnixMilli(clock.Load()) }}
	l := openT(t, dir, store.Retention{}, o)
	first := mustAppend(t, l, "", newEvents("a", 3))
	clock.Add(-60_000) // a minute back
	second := mustAppend(t, l, "", newEvents("b", 2))
	if !first[2].Less(second[0]) {
		t.Fatalf("after the clock went back: %s not after %s", second[0], first[2])
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	clock.Add(-3_600_000) // an hour further back, across a restart
	l2 := openT(t, dir, store.Retention{}, o)
	third := mustAppend(t, l2, "", newEvents("c", 2))
	if !second[1].Less(third[0]) || !third[0].Less(third[1]) {
		t.Fatalf("after reopen with the clock back: %v not after %s", third, second[1])
	}
	all := readAll(t, l2)
	if len(all) != 7 {
		t.Fatalf("%d events, want 7", len(all))
	}
	for i := 1; i < len(all); i++ {
		if !all[i-1].ID.Less(all[i].ID) {
			t.Fatalf("ids not increasing: %s then %s", all[i-1].ID, all[i].ID)
		}
	}
}

func TestCorruptFile(t *testing.T) {
	garbage := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rand.IntN(256))
		}
		return b
	}
	cases := map[string]func(t *testing.T, path string){
		"all garbage": func(t *testing.T, path string) {
			if err := os.WriteFile(path, garbage(64<<10), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"text file": func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("not a database\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"meta pages overwritten": func(t *testing.T, path string) { overwrite(t, path, 0, garbage(8192)) },
		"data pages overwritten": func(t *testing.T, path string) {
			info, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			overwrite(t, path, 8192, garbage(int(info.Size())-8192))
		},
		"a branch page's type changed": func(t *testing.T, path string) {
			overwrite(t, path, pageOfType(t, path, "branch")*4096+8, []byte{0x77, 0x00})
		},
		"a leaf page's type changed": func(t *testing.T, path string) {
			overwrite(t, path, pageOfType(t, path, "leaf")*4096+8, []byte{0x77, 0x00})
		},
		"one byte of a leaf changed": func(t *testing.T, path string) {
			// A leaf of the events bucket: its first element header.
			info, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			for p := int64(2); p < info.Size()/4096; p++ {
				overwrite(t, path, p*4096+8, []byte{0xff, 0xff}) // page flags: no valid page type
			}
		},
		"truncated": func(t *testing.T, path string) {
			if err := os.Truncate(path, 5000); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := Open(dir, storetest.Types(), store.Retention{}, quiet)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				mustAppend(t, l, fmt.Sprint("k", i), newEvents("x", 50))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, FileName)
			corrupt(t, path)
			l, err = Open(dir, storetest.Types(), store.Retention{}, quiet)
			if err == nil {
				l.Close()
				t.Fatal("Open of a corrupt file succeeded")
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file %s", err, path)
			}
			t.Logf("%s: %v", name, err)
		})
	}
	t.Run("directory in the way", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, FileName)
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, storetest.Types(), store.Retention{}, quiet)
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("Open with a directory as the file: %v, want an error naming %s", err, path)
		}
	})
	t.Run("data dir is a file", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(dir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(dir, storetest.Types(), store.Retention{}, quiet)
		if err == nil || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Open in a file: %v, want an error naming %s", err, dir)
		}
	})
}

// pageOfType returns the id of a page of the given bbolt type ("leaf",
// "branch") that is in use.
func pageOfType(t *testing.T, path, typ string) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for id := 2; ; id++ {
		info, err := tx.Page(id)
		if err != nil {
			t.Fatal(err)
		}
		if info == nil {
			t.Fatalf("no %s page in %s", typ, path)
		}
		if info.Type == typ {
			return int64(id)
		}
	}
}

func TestDamagedEventIsAnError(t *testing.T) {
	l := openT(t, t.TempDir(), store.Retention{}, options{})
	ids := mustAppend(t, l, "", newEvents("x", 3))
	if err := l.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).Put(encodeID(ids[1]), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	_, err := l.Read(context.Background(), event.ID{}, 0)
	if err == nil || !strings.Contains(err.Error(), l.Path()) || !strings.Contains(err.Error(), ids[1].String()) {
		t.Fatalf("Read of a damaged event: %v, want an error naming the file and the event", err)
	}
	if got, err := l.Read(context.Background(), ids[1], 0); err != nil || len(got) != 1 {
		t.Fatalf("Read after the damaged event: %v %v", got, err)
	}
}

func TestFailedCommitStopsWrites(t *testing.T) {
	dir := t.TempDir()
	fsyncErr := errors.New("input/output error")
	var failing atomic.Bool
	o := options{commitErr: func() error {
		if failing.Load() {
			return fsyncErr
		}
		return nil
	}}
	l, err := open(dir, storetest.Types(), store.Retention{}, quiet, o)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	good := mustAppend(t, l, "", newEvents("good", 2))
	failing.Store(true)
	_, _, err = l.Append(context.Background(), "k", newEvents("lost", 3))
	if !errors.Is(err, store.ErrUnavailable) || !errors.Is(err, fsyncErr) || !strings.Contains(err.Error(), l.Path()) {
		t.Fatalf("Append with a failing commit: %v", err)
	}
	failing.Store(false)
	// Sticky: the state of the file is unknown until reopened.
	if _, _, err := l.Append(context.Background(), "", newEvents("after", 1)); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Append after a failed commit: %v", err)
	}
	if err := l.Ping(context.Background()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Ping after a failed commit: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2 := openT(t, dir, store.Retention{}, options{})
	all := readAll(t, l2)
	if len(all) != 2 || all[0].ID != good[0] || all[1].ID != good[1] {
		t.Fatalf("after reopen: %d events, want the 2 acknowledged", len(all))
	}
	ids, replayed, err := l2.Append(context.Background(), "k", newEvents("again", 1))
	if err != nil || replayed || !good[1].Less(ids[0]) {
		t.Fatalf("Append after reopen: %v %v %v", ids, replayed, err)
	}
}

func overwrite(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestLockedByAnotherOpener(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, store.Retention{}, options{})
	start := time.Now()
	_, err := Open(dir, storetest.Types(), store.Retention{}, quiet)
	if err == nil {
		t.Fatal("second Open of a locked file succeeded")
	}
	path := filepath.Join(dir, FileName)
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("error %q does not say the file %s is locked", err, path)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("second Open took %v", d)
	}
	mustAppend(t, l, "", newEvents("still", 1))
}

func TestCancelledWhileQueued(t *testing.T) {
	l := openT(t, t.TempDir(), store.Retention{}, options{})
	// Hold the writer inside the follower, so that Appends queue up.
	release := make(chan struct{})
	var once sync.Once
	entered := make(chan struct{})
	fctx, fcancel := context.WithCancel(context.Background())
	defer fcancel()
	go l.Follow(fctx, event.ID{}, func(evs []*event.Event) {
		once.Do(func() { close(entered) })
		<-release
	})
	// Wait until the follower is registered, then block the writer.
	blocker := make(chan error, 1)
	go func() {
		for {
			l.fmu.Lock()
			ok := l.following
			l.fmu.Unlock()
			if ok {
				break
			}
			time.Sleep(time.Millisecond)
		}
		_, _, err := l.Append(context.Background(), "", newEvents("blocker", 1))
		blocker <- err
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, _, err := l.Append(ctx, "queued-key", newEvents("queued", 5))
		res <- err
	}()
	// Let the Append queue, then cancel it: it returns at once.
	for {
		l.qmu.Lock()
		n := len(l.queue)
		l.qmu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled queued Append: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled queued Append did not return")
	}
	close(release)
	if err := <-blocker; err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, "", newEvents("after", 1))
	if n := len(readAll(t, l)); n != 2 {
		t.Fatalf("%d events stored, want 2 (the cancelled batch stored nothing)", n)
	}
	ids, replayed, err := l.Append(context.Background(), "queued-key", newEvents("queued", 5))
	if err != nil || replayed || len(ids) != 5 {
		t.Fatalf("key of the cancelled Append: ids %v replayed %v err %v", ids, replayed, err)
	}
}

func TestCloseDrainsQueuedAppends(t *testing.T) {
	l, err := Open(t.TempDir(), storetest.Types(), store.Retention{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var acked, refused atomic.Int64
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				_, _, err := l.Append(context.Background(), "", newEvents("c", 2))
				switch {
				case err == nil:
					acked.Add(2)
				case errors.Is(err, store.ErrClosed):
					refused.Add(1)
					return
				default:
					t.Errorf("Append: %v", err)
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	l2 := openT(t, l.dir(), store.Retention{}, options{})
	if n := int64(len(readAll(t, l2))); n != acked.Load() {
		t.Fatalf("%d events stored, %d acknowledged", n, acked.Load())
	}
	if err := l.Ping(context.Background()); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
	if _, err := l.Read(context.Background(), event.ID{}, 0); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
}

func (l *Log) dir() string { return filepath.Dir(l.path) }

func TestFollowEndsOnClose(t *testing.T) {
	l, err := Open(t.TempDir(), storetest.Types(), store.Retention{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Follow(context.Background(), event.ID{}, func([]*event.Event) {}) }()
	mustAppend(t, l, "", newEvents("x", 1))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, store.ErrClosed) {
			t.Fatalf("Follow after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return after Close")
	}
}

func TestSecondFollowRefused(t *testing.T) {
	l := openT(t, t.TempDir(), store.Retention{}, options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Follow(ctx, event.ID{}, func([]*event.Event) {})
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.fmu.Lock()
		ok := l.following
		l.fmu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Follow did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if err := l.Follow(ctx, event.ID{}, func([]*event.Event) {}); err == nil || !strings.Contains(err.Error(), "already followed") {
		t.Fatalf("second Follow: %v", err)
	}
}

func TestRetentionKeepsKeysWithoutTTL(t *testing.T) {
	// Without history_ttl, an idempotency key lives as long as its events.
	l := openT(t, t.TempDir(), store.Retention{MaxEvents: 3}, options{})
	old := mustAppend(t, l, "old-key", newEvents("old", 1))
	for i := 0; i < 4; i++ {
		mustAppend(t, l, "", newEvents("fill", 1))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n int
		l.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketKeys).Stats().KeyN; return nil })
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the key of a pruned event was not pruned")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ids, replayed, err := l.Append(context.Background(), "old-key", newEvents("new", 1))
	if err != nil || replayed || !old[0].Less(ids[0]) {
		t.Fatalf("Append with the pruned key: %v %v %v", ids, replayed, err)
	}
}

// Crash test: a child process appends with 16 goroutines and prints every
// acknowledged id; the parent kills it with SIGKILL at a random moment and
// checks that every acknowledged event survived, exactly once, in order.

const crashEnv = "DISK_STORE_CRASH_CHILD_DIR"

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test re-executes the test binary")
	}
	dir := t.TempDir()
	const rounds = 8
	var before []event.ID // every id stored after the previous round
	total := 0
	start := time.Now()
	for round := 0; round < rounds && time.Since(start) < 25*time.Second; round++ {
		acked := crashRound(t, dir)
		total += len(acked)

		l, err := Open(dir, storetest.Types(), store.Retention{}, quiet)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		all, err := l.Read(context.Background(), event.ID{}, 0)
		if err != nil {
			t.Fatalf("round %d: Read: %v", round, err)
		}
		b, _ := l.Bounds(context.Background())
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		present := make(map[event.ID]bool, len(all))
		batches := make(map[string]int)
		for i, e := range all {
			if i > 0 && !all[i-1].ID.Less(e.ID) {
				t.Fatalf("round %d: stored ids not strictly increasing: %s then %s", round, all[i-1].ID, e.ID)
			}
			present[e.ID] = true
			var d struct {
				Batch string `json:"batch"`
			}
			if err := json.Unmarshal(e.Data, &d); err != nil || d.Batch == "" {
				t.Fatalf("round %d: stored event %s has data %s", round, e.ID, e.Data)
			}
			batches[d.Batch]++
		}
		if len(all) > 0 && b.Last.Less(all[len(all)-1].ID) {
			t.Fatalf("round %d: Bounds.Last %s before the last stored id %s", round, b.Last, all[len(all)-1].ID)
		}
		for _, id := range before {
			if !present[id] {
				t.Fatalf("round %d: id %s stored before this round is gone", round, id)
			}
		}
		var prevMax event.ID
		if len(before) > 0 {
			prevMax = before[len(before)-1]
		}
		for _, id := range acked {
			if !present[id] {
				t.Fatalf("round %d: acknowledged id %s lost after SIGKILL (%d acknowledged, %d stored)", round, id, len(acked), len(all))
			}
			if !prevMax.Less(id) {
				t.Fatalf("round %d: id %s not after the ids of the earlier rounds (%s)", round, id, prevMax)
			}
		}
		// Batches are atomic: every stored batch is whole, acknowledged or not.
		for name, n := range batches {
			var pid, g, i, size int
			if _, err := fmt.Sscanf(name, "%d/%d/%d/%d", &pid, &g, &i, &size); err != nil {
				t.Fatalf("round %d: batch name %q: %v", round, name, err)
			}
			if n != size {
				t.Fatalf("round %d: batch %s has %d of its %d events stored", round, name, n, size)
			}
		}
		t.Logf("round %d: %d ids acknowledged before SIGKILL, %d events stored in all", round, len(acked), len(all))
		before = before[:0]
		for _, e := range all {
			before = append(before, e.ID)
		}
	}
	if total == 0 {
		t.Fatal("no child acknowledged any event: the test proved nothing")
	}
}

// crashRound runs one child until SIGKILL and returns the ids it
// acknowledged.
func crashRound(t *testing.T, dir string) []event.ID {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	var acked []event.ID
	readDone := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		readyOnce := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "READY":
				readyOnce.Do(func() { close(ready) })
			case strings.HasPrefix(line, "ACK "):
				f := strings.Fields(line)
				for _, s := range f[2:] {
					id, err := event.ParseID(s)
					if err != nil {
						readDone <- fmt.Errorf("child printed %q: %v", line, err)
						return
					}
					acked = append(acked, id)
				}
			}
		}
		readDone <- sc.Err()
	}()
	select {
	case <-ready:
	case err := <-readDone:
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child ended before it was ready: %v", err)
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("child not ready within 20 s")
	}
	time.Sleep(time.Duration(100+rand.IntN(500)) * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-readDone; err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
		t.Fatalf("reading the child: %v", err)
	}
	_ = cmd.Wait()
	return acked
}

// TestCrashChild is the child of TestCrash; it does nothing unless started
// by it.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("run by TestCrash only")
	}
	l, err := Open(dir, storetest.Types(), store.Retention{}, quiet)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(w, "READY")
	w.Flush()
	pid := os.Getpid()
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				n := 1
				if g%4 == 0 {
					n = 1 + i%7 // some batches, of several sizes
				}
				name := fmt.Sprintf("%d/%d/%d/%d", pid, g, i, n)
				evs := newEvents(name, n)
				for _, e := range evs {
					e.Data, _ = json.Marshal(map[string]any{"batch": name})
				}
				ids, _, err := l.Append(context.Background(), "", evs)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child: append:", err)
					os.Exit(4)
				}
				mu.Lock()
				w.WriteString("ACK " + name)
				for _, id := range ids {
					w.WriteString(" " + id.String())
				}
				w.WriteString("\n")
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}
