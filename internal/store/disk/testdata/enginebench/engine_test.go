// Throwaway comparison of bbolt and Pebble under the disk store's write
// pattern: one writer goroutine, group commit (every queued append in one
// durable write), 16-byte big-endian keys, ~250-byte JSON values.
package enginebench

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"
	bolt "go.etcd.io/bbolt"
)

type engine interface {
	commit(keys, vals [][]byte) error                            // durable (fsync) before return
	scan(from []byte, limit int) (n int, last []byte, err error) // from is inclusive
	close() error
}

// ---- bbolt
type boltEngine struct{ db *bolt.DB }

var bkt = []byte("events")

func openBolt(b *testing.B) engine {
	db, err := bolt.Open(b.TempDir()+"/events.db", 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType, InitialMmapSize: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists(bkt); return err })
	return &boltEngine{db}
}
func (e *boltEngine) commit(keys, vals [][]byte) error {
	return e.db.Update(func(tx *bolt.Tx) error {
		bu := tx.Bucket(bkt)
		bu.FillPercent = 1.0
		for i := range keys {
			if err := bu.Put(keys[i], vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
}
func (e *boltEngine) scan(from []byte, limit int) (n int, last []byte, err error) {
	err = e.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bkt).Cursor()
		for k, v := c.Seek(from); k != nil && n < limit; k, v = c.Next() {
			_ = append([]byte(nil), v...)
			last = append(last[:0], k...)
			n++
		}
		return nil
	})
	return n, last, err
}
func (e *boltEngine) close() error { return e.db.Close() }

// ---- pebble
type pebbleEngine struct{ db *pebble.DB }

func openPebble(b *testing.B) engine {
	db, err := pebble.Open(b.TempDir(), &pebble.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return &pebbleEngine{db}
}
func (e *pebbleEngine) commit(keys, vals [][]byte) error {
	batch := e.db.NewBatch()
	for i := range keys {
		batch.Set(keys[i], vals[i], nil)
	}
	return batch.Commit(pebble.Sync)
}
func (e *pebbleEngine) scan(from []byte, limit int) (n int, last []byte, err error) {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: from})
	if err != nil {
		return 0, nil, err
	}
	for ok := it.First(); ok && n < limit; ok = it.Next() {
		_ = append([]byte(nil), it.Value()...)
		last = append(last[:0], it.Key()...)
		n++
	}
	return n, last, it.Close()
}
func (e *pebbleEngine) close() error { return e.db.Close() }

// ---- group commit, as in the disk store
type req struct {
	n    int
	done chan error
}

type log struct {
	eng   engine
	mu    sync.Mutex
	q     []*req
	wake  chan struct{}
	seq   uint64
	quit  chan struct{}
	value []byte
}

func newLog(eng engine) *log {
	l := &log{eng: eng, wake: make(chan struct{}, 1), quit: make(chan struct{}),
		value: []byte(`{"id":"1733325600123-0","type":"CODE_CHANGE","data":{"file":"api/app.py","lines":12,"author":"alice","message":"refactor the publish path","sha":"3f2a9c0e5b7d4a1f8e6c2b9d0a7f3e1c5b8d2a4f"},"job_id":"job-42","timestamp":"2026-12-04T15:20:00.123Z"}`)}
	go l.writer()
	return l
}

func (l *log) append(n int) error {
	r := &req{n: n, done: make(chan error, 1)}
	l.mu.Lock()
	l.q = append(l.q, r)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return <-r.done
}

func (l *log) writer() {
	for {
		select {
		case <-l.quit:
			return
		case <-l.wake:
		}
		l.mu.Lock()
		batch := l.q
		l.q = nil
		l.mu.Unlock()
		var keys, vals [][]byte
		ms := uint64(time.Now().UnixMilli())
		for _, r := range batch {
			for i := 0; i < r.n; i++ {
				l.seq++
				k := make([]byte, 16)
				binary.BigEndian.PutUint64(k, ms)
				binary.BigEndian.PutUint64(k[8:], l.seq)
				keys = append(keys, k)
				vals = append(vals, l.value)
			}
		}
		err := l.eng.commit(keys, vals)
		for _, r := range batch {
			r.done <- err
		}
	}
}

var engines = []struct {
	name string
	open func(*testing.B) engine
}{{"bbolt", openBolt}, {"pebble", openPebble}}

func BenchmarkAppend(b *testing.B) {
	for _, e := range engines {
		for _, c := range []struct{ appenders, batch int }{{1, 1}, {16, 1}, {256, 1}, {1, 100}, {16, 100}} {
			b.Run(fmt.Sprintf("%s/appenders=%d/batch=%d", e.name, c.appenders, c.batch), func(b *testing.B) {
				eng := e.open(b)
				l := newLog(eng)
				defer func() { close(l.quit); eng.close() }()
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for g := 0; g < c.appenders; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							if err := l.append(c.batch); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N*c.batch)/time.Since(start).Seconds(), "events/s")
			})
		}
	}
}

func BenchmarkRead(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			eng := e.open(b)
			l := newLog(eng)
			defer func() { close(l.quit); eng.close() }()
			for i := 0; i < 20; i++ {
				if err := l.append(1000); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			start := time.Now()
			read := 0
			from := []byte{}
			for i := 0; i < b.N; i++ {
				n, last, err := eng.scan(from, 1000)
				if err != nil {
					b.Fatal(err)
				}
				read += n
				if n < 1000 {
					from = []byte{} // wrap around
				} else {
					from = append(last, 0) // the smallest key after last
				}
			}
			b.ReportMetric(float64(read)/time.Since(start).Seconds(), "events/s")
		})
	}
}
