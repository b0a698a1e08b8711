package storetest_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/store"
	"github.com/knowledgehub/realtime/internal/store/storetest"
)

// The suite must catch broken logs: each mutation below breaks the memory
// log in one way, and the subtest named with it must fail. Each case runs
// the suite in a child process (a failing subtest cannot be observed from
// inside the same test binary).

const mutationEnv = "STORETEST_MUTATION"

var mutations = map[string]string{ // mutation -> subtest that must fail
	"swap-batch-ids":     "IDsStrictlyIncrease",
	"unsealed":           "AppendSeals",
	"limit-off-by-one":   "ReadSlices",
	"zero-skips-first":   "ReadFromZero",
	"bounds-last-zero":   "BoundsLast",
	"bounds-lags-commit": "BoundsCoverWhatReadSees",
	"keep-one-more":      "RetentionByCount",
	"age-too-long":       "RetentionByAge",
	"ignore-key":         "IdempotencyKey",
	"keys-never-expire":  "IdempotencyKeyExpires",
	"ignore-ctx":         "BatchAllOrNothing",
	"follow-drops-third": "FollowDeliversInOrder",
	"follow-async":       "FollowConcurrentAppenders",
	"follow-no-replay":   "FollowAfterReplaysRetained",
	"close-noop":         "CloseThenAppend",
}

func TestSuiteCatchesBrokenLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite in child processes")
	}
	for mutation, subtest := range mutations {
		t.Run(mutation, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestMutatedMemory$/^"+subtest+"$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), mutationEnv+"="+mutation)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("subtest %s passed on a log broken by %q:\n%s", subtest, mutation, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestMutatedMemory/"+subtest) {
				t.Fatalf("mutation %q: subtest %s did not fail:\n%s", mutation, subtest, out)
			}
		})
	}
}

// TestMutatedMemory is the child of TestSuiteCatchesBrokenLogs.
func TestMutatedMemory(t *testing.T) {
	m := os.Getenv(mutationEnv)
	if m == "" {
		t.Skip("run by TestSuiteCatchesBrokenLogs only")
	}
	storetest.Run(t, func(t *testing.T, r store.Retention) store.Log {
		switch m {
		case "keep-one-more":
			r.MaxEvents++
		case "age-too-long", "keys-never-expire":
			r.MaxAge *= 10
		}
		return &mutant{Memory: store.NewMemory(r), m: m}
	})
}

// mutant is a memory log with one defect.
type mutant struct {
	*store.Memory
	m string
}

func (l *mutant) Append(ctx context.Context, key string, evs []*event.Event) ([]event.ID, bool, error) {
	switch l.m {
	case "ignore-key":
		key = ""
	case "ignore-ctx":
		ctx = context.Background()
	}
	ids, replayed, err := l.Memory.Append(ctx, key, evs)
	if err != nil {
		return ids, replayed, err
	}
	switch l.m {
	case "swap-batch-ids":
		if len(ids) > 1 && !replayed {
			ids[0], ids[1] = ids[1], ids[0]
			evs[0].ID, evs[1].ID = ids[0], ids[1]
		}
	case "unsealed":
		for _, e := range evs {
			e.WS = nil
		}
	}
	return ids, replayed, err
}

func (l *mutant) Read(ctx context.Context, after event.ID, limit int) ([]*event.Event, error) {
	switch l.m {
	case "limit-off-by-one":
		if limit > 1 {
			limit--
		}
	case "zero-skips-first":
		if after.IsZero() {
			evs, err := l.Memory.Read(ctx, after, 0)
			if err != nil || len(evs) == 0 {
				return evs, err
			}
			evs = evs[1:]
			if limit > 0 && len(evs) > limit {
				evs = evs[:limit]
			}
			return evs, nil
		}
	}
	return l.Memory.Read(ctx, after, limit)
}

func (l *mutant) Bounds(ctx context.Context) (store.Bounds, error) {
	b, err := l.Memory.Bounds(ctx)
	switch l.m {
	case "bounds-last-zero":
		b.Last = event.ID{}
	case "bounds-lags-commit": // as if Last moved after the commit
		if b.Last.Seq > 0 {
			b.Last.Seq--
		} else if b.Last.Ms > 0 {
			b.Last = event.ID{Ms: b.Last.Ms - 1}
		}
	}
	return b, err
}

func (l *mutant) Follow(ctx context.Context, after event.ID, fn func([]*event.Event)) error {
	switch l.m {
	case "follow-drops-third":
		n := 0
		return l.Memory.Follow(ctx, after, func(evs []*event.Event) {
			var keep []*event.Event
			for _, e := range evs {
				n++
				if n != 3 {
					keep = append(keep, e)
				}
			}
			if len(keep) > 0 {
				fn(keep)
			}
		})
	case "follow-async":
		var wg sync.WaitGroup
		defer wg.Wait()
		return l.Memory.Follow(ctx, after, func(evs []*event.Event) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Millisecond)
				fn(evs)
			}()
		})
	case "follow-no-replay":
		b, _ := l.Memory.Bounds(ctx)
		if after.Less(b.Last) {
			after = b.Last
		}
	}
	return l.Memory.Follow(ctx, after, fn)
}

func (l *mutant) Close() error {
	if l.m == "close-noop" {
		return nil
	}
	return l.Memory.Close()
}
