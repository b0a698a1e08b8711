package redis

import (
	"context"
	"testing"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/redistest"
	"github.com/knowledgehub/realtime/internal/store"
)

// BenchmarkAppend measures single-event Appends from concurrent publishers:
// rueidis pipelines their scripts on shared connections.
func BenchmarkAppend(b *testing.B) {
	url := redistest.Start(b)
	l := openLog(b, url, redistest.Prefix(b, url), store.Retention{MaxEvents: 10000})
	data := []byte(`{"file":"api/app.py","lines":12}`)
	ctx := context.Background()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := &event.Event{Type: "CODE_CHANGE", Data: data}
			if _, _, err := l.Append(ctx, "", []*event.Event{e}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
