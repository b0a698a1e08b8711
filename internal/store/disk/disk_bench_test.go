package disk

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/store"
	"github.com/knowledgehub/realtime/internal/store/storetest"
)

// benchRetention is the default retention (history_size 10000, history_ttl
// 24h), so that benchmarks include the background pruning of a full log.
var benchRetention = store.Retention{MaxEvents: 10000, MaxAge: 24 * time.Hour}

// benchData is a typical event payload (about 150 bytes).
var benchData = json.RawMessage(`{"file":"api/app.py","lines":12,"author":"alice","message":"refactor the publish path","sha":"3f2a9c0e5b7d4a1f8e6c2b9d0a7f3e1c5b8d2a4f"}`)

func benchEvents(n int) []*event.Event {
	types := storetest.Types()
	evs := make([]*event.Event, n)
	for i := range evs {
		evs[i] = &event.Event{Type: "CODE_CHANGE", TypeIndex: types.Index("CODE_CHANGE"), Data: benchData, JobID: "job-42"}
	}
	return evs
}

// BenchmarkAppend measures durable (fsynced) appends: b.N Append calls of
// `batch` events each, made by `appenders` goroutines. The events/s metric
// is the durable throughput.
func BenchmarkAppend(b *testing.B) {
	for _, c := range []struct{ appenders, batch int }{
		{1, 1}, {16, 1}, {256, 1}, {1, 100}, {16, 100},
	} {
		b.Run(fmt.Sprintf("appenders=%d/batch=%d", c.appenders, c.batch), func(b *testing.B) {
			benchAppend(b, c.appenders, c.batch)
		})
	}
}

func benchAppend(b *testing.B, appenders, batch int) {
	l := openT(b, b.TempDir(), benchRetention, options{})
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for g := 0; g < appenders; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, _, err := l.Append(context.Background(), "", benchEvents(batch)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N*batch)/elapsed.Seconds(), "events/s")
}

// BenchmarkRead measures replay: reading (and decoding) retained events in
// pages of 1000, as a resuming client or the history API does.
func BenchmarkRead(b *testing.B) {
	const total = 20000
	l := openT(b, b.TempDir(), store.Retention{}, options{})
	for i := 0; i < total/1000; i++ {
		if _, _, err := l.Append(context.Background(), "", benchEvents(1000)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	read := 0
	after := event.ID{}
	for i := 0; i < b.N; i++ {
		evs, err := l.Read(context.Background(), after, 1000)
		if err != nil {
			b.Fatal(err)
		}
		if len(evs) < 1000 {
			after = event.ID{} // wrap around
		} else {
			after = evs[len(evs)-1].ID
		}
		read += len(evs)
	}
	b.ReportMetric(float64(read)/time.Since(start).Seconds(), "events/s")
}
