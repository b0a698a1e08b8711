package hub

import (
	"fmt"
	"testing"
	"time"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/protocol"
)

// countSink counts bytes like a socket would take them, without I/O.
type countSink struct{ bytes int }

func (s *countSink) WriteEvents(evs []*event.Event) error {
	for _, e := range evs {
		s.bytes += len(e.WS)
	}
	return nil
}
func (s *countSink) WriteControl(string, []byte) error { return nil }
func (s *countSink) Ping() error                       { return nil }
func (s *countSink) Backlog() (int64, int64)           { return 0, 1 << 20 }
func (s *countSink) Close(protocol.Disconnect)         {}

// benchShard builds one shard with n clients, a share of them on a job and
// a share authenticated, as a worker would see it.
func benchShard(b *testing.B, n int) (*shard, *event.Types) {
	types, _ := event.NewTypes(nil)
	h := New(Config{Shards: 1}, nil, nil, nil)
	s := h.shards[0]
	for i := 0; i < n; i++ {
		var jobs []string
		user := ""
		if i%10 == 0 {
			jobs = []string{"job-1"}
		}
		if i%4 == 0 {
			user = fmt.Sprintf("user-%d", i%100)
		}
		c := h.NewClient("websocket", NewSubscription(user, 0, jobs), time.Time{}, &countSink{})
		c.shard = s
		s.add(c)
	}
	return s, types
}

func sealed(types *event.Types, user, job string) *event.Event {
	e := &event.Event{ID: event.ID{Ms: 1, Seq: 1}, Type: "CODE_CHANGE", TypeIndex: types.Index("CODE_CHANGE"),
		Data:   []byte(`{"file":"api/app.py","lines":12,"pad":"` + string(make([]byte, 0)) + `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`),
		UserID: user, JobID: job, Time: time.Now()}
	e.Seal()
	return e
}

// BenchmarkBroadcast routes one public event to 10,000 clients; ns/op
// divided by 10,000 is the cost of one delivery, and allocs/op must be 0.
func BenchmarkBroadcast(b *testing.B) {
	s, types := benchShard(b, 10000)
	evs := []*event.Event{sealed(types, "", "")}
	s.deliver(evs) // warm the per-client batch slices
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		evs[0].ID.Seq++
		s.deliver(evs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/10000, "ns/delivery")
}

// BenchmarkBroadcastBatch routes batches of 10 events: the frames of a
// batch go to each client as one write.
func BenchmarkBroadcastBatch(b *testing.B) {
	s, types := benchShard(b, 10000)
	evs := make([]*event.Event, 10)
	for i := range evs {
		evs[i] = sealed(types, "", "")
	}
	s.deliver(evs)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, e := range evs {
			e.ID.Seq++
		}
		s.deliver(evs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/100000, "ns/delivery")
}

// BenchmarkTargeted routes a private job event: the job index narrows
// 10,000 clients to the 1,000 on the job instead of scanning everyone.
func BenchmarkTargeted(b *testing.B) {
	s, types := benchShard(b, 10000)
	evs := []*event.Event{sealed(types, "", "job-1")}
	s.deliver(evs)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		evs[0].ID.Seq++
		s.deliver(evs)
	}
}

// BenchmarkSeal is the once-per-event encoding cost.
func BenchmarkSeal(b *testing.B) {
	types, _ := event.NewTypes(nil)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sealed(types, "alice", "job-1")
	}
}
