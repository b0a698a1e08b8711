// Package disk is the durable embedded event log (store: disk): one bbolt
// file in data_dir. An Append returns only once its events are fsynced; a
// single writer goroutine commits every Append waiting at that moment in one
// transaction with one fsync (group commit), so durable throughput grows with
// the number of concurrent publishers.
//
// Layout of the file (FileName in the data directory):
//
//	events  16-byte big-endian (ms, seq) id -> event JSON (SPEC §1)
//	meta    "version", "last" (last id assigned), "pruned" (retention
//	        watermark), "count" (events retained)
//	keys    idempotency key -> 8-byte acceptance time (unix ms) + its ids
//	keyidx  last id of a key (16 bytes) + key -> empty: keys in id order,
//	        so that expired keys are pruned from the front
//
// Retention (history_size, history_ttl) is applied by a background goroutine
// in small transactions, so publishers are not stalled by it.
package disk

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/store"
)

// FileName is the name of the store file inside the data directory.
const FileName = "events.db"

// formatVersion is the layout version written in the meta bucket; Open
// refuses files of another version.
const formatVersion = 1

// lockTimeout bounds the wait for the file lock held by another process.
const lockTimeout = 2 * time.Second

var (
	bucketEvents   = []byte("events")
	bucketMeta     = []byte("meta")
	bucketKeys     = []byte("keys")
	bucketKeyIndex = []byte("keyidx")

	metaVersion = []byte("version")
	metaLast    = []byte("last")
	metaPruned  = []byte("pruned")
	metaCount   = []byte("count")
)

// Log is the disk event log. It implements store.Log; all its methods are
// safe for concurrent use.
type Log struct {
	path      string
	db        *bolt.DB
	types     *event.Types
	retention store.Retention
	logger    *slog.Logger
	now       func() time.Time
	opt       options

	// The queue of Appends waiting for the writer.
	qmu     sync.Mutex
	queue   []*request
	closing bool          // set by Close: no more Appends are queued
	wake    chan struct{} // wakes the writer; capacity 1

	// State shared with readers.
	smu    sync.Mutex
	last   event.ID // last id committed
	failed error    // sticky: a commit failed, the log refuses writes

	// The retention watermark. The pruner holds pmu across its commit, so
	// that a reader who saw events removed sees the watermark that covers
	// them (Read, then Bounds).
	pmu    sync.RWMutex
	pruned event.ID

	count atomic.Int64 // events retained (a hint for the pruner)

	// The follower, called by Follow's catch-up and then by the writer.
	fmu        sync.Mutex
	follower   func([]*event.Event)
	followLast event.ID // last id handed to follower
	following  bool

	closed     atomic.Bool   // Close began
	stop       chan struct{} // closed when the writer has drained: stops the pruner and Follow
	pruneWake  chan struct{} // capacity 1
	writerDone chan struct{}
	prunerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error
}

// options are settings for tests and benchmarks.
type options struct {
	now        func() time.Time // the clock; time.Now when nil
	pruneChunk int              // events or keys removed per prune transaction
	pruneDelay time.Duration    // how long the pruner lets work accumulate after a wake
	commitErr  func() error     // tests: a non-nil result fails the commit as an fsync error would
}

// request is one Append waiting for the writer.
type request struct {
	ctx   context.Context
	key   string
	evs   []*event.Event
	state atomic.Int32 // reqPending, then reqTaken by the writer or reqWithdrawn by Append
	done  chan struct{}

	ids      []event.ID
	replayed bool
	err      error
	replayOf *request // an earlier request of the same group with the same key
}

const (
	reqPending int32 = iota
	reqTaken
	reqWithdrawn
)

// Open opens the log stored in dir, creating dir and the file when missing.
// types resolves the type index of stored events; r bounds what is kept;
// logger receives the log's messages (slog.Default() when nil).
//
// A file that is corrupt, unreadable or of another format, or held by another
// process, is an error that names the file.
func Open(dir string, types *event.Types, r store.Retention, logger *slog.Logger) (*Log, error) {
	return open(dir, types, r, logger, options{})
}

func open(dir string, types *event.Types, r store.Retention, logger *slog.Logger, o options) (*Log, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if types == nil {
		var err error
		if types, err = event.NewTypes(nil); err != nil {
			return nil, fmt.Errorf("disk store %s: %w", dir, err)
		}
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.pruneChunk <= 0 {
		o.pruneChunk = 2000
	}
	if o.pruneDelay <= 0 {
		o.pruneDelay = 10 * time.Millisecond
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("disk store %s: create the data directory: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	start := time.Now()
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	l := &Log{
		path:       path,
		db:         db,
		types:      types,
		retention:  r,
		logger:     logger.With("store", "disk", "path", path),
		now:        o.now,
		opt:        o,
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		pruneWake:  make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		prunerDone: make(chan struct{}),
	}
	if err := l.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	l.logger.Info("disk store opened", "events", l.count.Load(), "last_id", l.last.String(),
		"pruned_id", l.pruned.String(), "took", time.Since(start).Round(time.Millisecond))
	go l.writer()
	go l.pruner()
	l.wakePruner()
	return l, nil
}

// openDB opens the bbolt file, turning a lock held elsewhere, a corrupt file
// and a panic of bbolt into errors that name the file.
func openDB(path string) (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("disk store %s: the file is corrupt (bbolt: %v); move it away to start with an empty store", path, p)
		}
	}()
	if info, statErr := os.Stat(path); statErr == nil && !info.Mode().IsRegular() {
		return nil, fmt.Errorf("disk store %s: not a regular file", path)
	}
	opts := &bolt.Options{
		Timeout:      lockTimeout,
		FreelistType: bolt.FreelistMapType,
		// NoFreelistSync stays false: with it bbolt rebuilds the free list at
		// open in a goroutine that panics unrecoverably on a corrupt file.
	}
	if strconv.IntSize == 64 {
		// Reserve address space so that the file rarely needs a new mapping:
		// a remap waits for every open read transaction.
		opts.InitialMmapSize = 1 << 30
	}
	db, err = bolt.Open(path, 0o600, opts)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("disk store %s: the file is locked by another process (is another knowledgehub using the same data_dir?): %w", path, err)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
		return nil, fmt.Errorf("disk store %s: the file is corrupt or not an event store; move it away to start with an empty store: %w", path, err)
	default:
		return nil, fmt.Errorf("disk store %s: open: %w", path, err)
	}
}

// load creates the buckets of a new file, checks the file and reads the
// meta data: the last id, the pruned watermark and the count.
func (l *Log) load() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("disk store %s: the file is corrupt (bbolt: %v); move it away to start with an empty store", l.path, p)
		}
	}()
	// A full consistency check: it reads every page, so that a damaged file
	// stops the start here rather than failing a publish or a replay later.
	if err := l.db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			return cerr
		}
		return nil
	}); err != nil {
		return fmt.Errorf("disk store %s: the file is corrupt; move it away to start with an empty store: %w", l.path, err)
	}
	err = l.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			// A new file: it must be empty, not some other bbolt database.
			if k, _ := tx.Cursor().First(); k != nil {
				return fmt.Errorf("the file holds a bucket %q but no event store meta data", k)
			}
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if err := meta.Put(metaVersion, binary.BigEndian.AppendUint64(nil, formatVersion)); err != nil {
				return err
			}
		}
		v := meta.Get(metaVersion)
		if len(v) != 8 {
			return errors.New("the file is not an event store (no format version)")
		}
		if got := binary.BigEndian.Uint64(v); got != formatVersion {
			return fmt.Errorf("format version %d, this build reads version %d", got, formatVersion)
		}
		for _, name := range [][]byte{bucketEvents, bucketKeys, bucketKeyIndex} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		var err error
		if l.last, err = getID(meta, metaLast); err != nil {
			return err
		}
		if l.pruned, err = getID(meta, metaPruned); err != nil {
			return err
		}
		if c := meta.Get(metaCount); c != nil {
			if len(c) != 8 {
				return errors.New("meta count: bad length")
			}
			l.count.Store(int64(binary.BigEndian.Uint64(c)))
		}
		// The last stored event bounds the last id too, should the meta data
		// ever lag.
		if k, _ := tx.Bucket(bucketEvents).Cursor().Last(); k != nil {
			id, err := decodeKey(k)
			if err != nil {
				return err
			}
			if l.last.Less(id) {
				l.last = id
			}
		}
		if l.last.Less(l.pruned) {
			l.last = l.pruned
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("disk store %s: the file is corrupt or not an event store: %w", l.path, err)
	}
	return nil
}

// Append implements store.Log. It returns once the events are fsynced, or
// with an error and nothing stored. An Append whose ctx is done before the
// writer takes it stores nothing and returns ctx's error.
func (l *Log) Append(ctx context.Context, key string, evs []*event.Event) ([]event.ID, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if len(evs) == 0 && key == "" {
		return []event.ID{}, false, nil
	}
	if err := l.failure(); err != nil {
		return nil, false, err
	}
	r := &request{ctx: ctx, key: key, evs: evs, done: make(chan struct{})}
	l.qmu.Lock()
	if l.closing {
		l.qmu.Unlock()
		return nil, false, fmt.Errorf("disk store %s: %w", l.path, store.ErrClosed)
	}
	l.queue = append(l.queue, r)
	l.qmu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqPending, reqWithdrawn) {
			return nil, false, ctx.Err()
		}
		<-r.done // taken by the writer: its outcome is the answer
	}
	return r.ids, r.replayed, r.err
}

// writer is the single goroutine that commits Appends.
func (l *Log) writer() {
	defer close(l.writerDone)
	for range l.wake {
		l.qmu.Lock()
		batch, closing := l.queue, l.closing
		l.queue = nil
		l.qmu.Unlock()
		if len(batch) > 0 {
			l.commit(batch)
		}
		if closing {
			return // nothing can be queued after closing was set
		}
	}
}

// commit stores the requests of one group in one transaction, hands the new
// events to the follower and answers every request.
func (l *Log) commit(batch []*request) {
	// Take the requests; one withdrawn or cancelled before now is dropped.
	live := batch[:0]
	for _, r := range batch {
		if !r.state.CompareAndSwap(reqPending, reqTaken) {
			continue // Append returned the ctx error already
		}
		if err := r.ctx.Err(); err != nil {
			r.err = err
			close(r.done)
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	answer := func(err error) {
		for _, r := range live {
			if err != nil {
				r.ids, r.replayed, r.err = nil, false, err
			} else if r.replayOf != nil {
				r.ids, r.replayed = append([]event.ID(nil), r.replayOf.ids...), true
			}
			close(r.done)
		}
	}
	if err := l.failure(); err != nil {
		answer(err)
		return
	}

	now := l.now()
	ms := unixMilli(now)
	ts := time.UnixMilli(int64(ms)).UTC()
	last := l.lastID()
	var fresh []*event.Event
	added := 0
	err := l.update(func(tx *bolt.Tx) (bool, error) {
		events := tx.Bucket(bucketEvents)
		events.FillPercent = 1.0 // keys only ever grow: pack pages full
		var group map[string]*request
		wrote := false
		for _, r := range live {
			var name []byte
			if r.key != "" {
				if prev := group[r.key]; prev != nil {
					r.replayOf = prev
					continue
				}
				name = keyName(r.key)
				if ids, ok := l.lookupKey(tx, name, now); ok {
					r.ids, r.replayed = ids, true
					continue
				}
			}
			ids := make([]event.ID, len(r.evs))
			keys := make([]byte, 16*len(r.evs)) // bbolt keeps the key slices until commit
			for i, e := range r.evs {
				last = event.NextAt(last, ms)
				e.ID, e.Time = last, ts
				e.Seal()
				ids[i] = last
				k := keys[16*i : 16*i+16 : 16*i+16]
				putKey(k, last)
				if err := events.Put(k, e.JSON); err != nil {
					return false, fmt.Errorf("store event %s: %w", last, err)
				}
			}
			added += len(r.evs)
			fresh = append(fresh, r.evs...)
			r.ids = ids
			wrote = true
			if name != nil {
				if group == nil {
					group = make(map[string]*request)
				}
				group[r.key] = r
				at := last
				if len(ids) == 0 {
					at = event.ID{Ms: ms}
				}
				if err := l.putIdempotencyKey(tx, name, ms, ids, at); err != nil {
					return false, err
				}
			}
		}
		if !wrote {
			return false, nil
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(metaLast, encodeID(last)); err != nil {
			return false, err
		}
		count, err := getCount(meta)
		if err != nil {
			return false, err
		}
		if err := meta.Put(metaCount, binary.BigEndian.AppendUint64(nil, uint64(count+int64(added)))); err != nil {
			return false, err
		}
		// Last moves before the commit makes the events readable: Bounds
		// is never behind an event a Read (a replay) already returned, or
		// a client resuming from it at once would be told of a reset.
		l.setLast(last)
		return true, nil
	})
	if err != nil {
		// Ids handed out in the failed transaction are never reused.
		l.setLast(last)
		answer(err)
		return
	}
	l.setLast(last)
	l.count.Add(int64(added))
	if len(fresh) > 0 {
		l.deliver(fresh)
	}
	answer(nil)
	if l.retention.MaxEvents > 0 && l.count.Load() > int64(l.retention.MaxEvents) {
		l.wakePruner()
	}
}

// update runs fn in a write transaction and commits it when fn reports
// writes. A failed commit (or a bbolt panic) makes the log refuse further
// writes: after a failed fsync the state of the file is unknown until the
// next open recovers it.
func (l *Log) update(fn func(tx *bolt.Tx) (bool, error)) (err error) {
	tx, err := l.db.Begin(true)
	if err != nil {
		return l.fail(fmt.Errorf("disk store %s: begin transaction: %w", l.path, err))
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			err = l.fail(fmt.Errorf("disk store %s: write failed (bbolt: %v)", l.path, p))
		}
	}()
	wrote, err := fn(tx)
	if err != nil {
		_ = tx.Rollback()
		return fmt.Errorf("disk store %s: %w", l.path, err)
	}
	if !wrote {
		return tx.Rollback()
	}
	if l.opt.commitErr != nil {
		if err := l.opt.commitErr(); err != nil {
			_ = tx.Rollback()
			return l.fail(fmt.Errorf("disk store %s: commit: %w", l.path, err))
		}
	}
	if err := tx.Commit(); err != nil {
		return l.fail(fmt.Errorf("disk store %s: commit: %w", l.path, err))
	}
	return nil
}

// fail records err as the log's sticky failure and returns it.
func (l *Log) fail(err error) error {
	l.smu.Lock()
	if l.failed == nil {
		l.failed = err
		l.logger.Error("disk store failed: refusing writes until restarted", "err", err)
	}
	l.smu.Unlock()
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// failure returns the sticky failure, if any, as an ErrUnavailable error.
func (l *Log) failure() error {
	l.smu.Lock()
	defer l.smu.Unlock()
	if l.failed != nil {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, l.failed)
	}
	return nil
}

func (l *Log) lastID() event.ID {
	l.smu.Lock()
	defer l.smu.Unlock()
	return l.last
}

func (l *Log) setLast(id event.ID) {
	l.smu.Lock()
	if l.last.Less(id) {
		l.last = id
	}
	l.smu.Unlock()
}

// lookupKey returns the ids remembered for an idempotency key, when the key
// is known and not older than the retention's MaxAge.
func (l *Log) lookupKey(tx *bolt.Tx, name []byte, now time.Time) ([]event.ID, bool) {
	v := tx.Bucket(bucketKeys).Get(name)
	if len(v) < 8 || (len(v)-8)%16 != 0 {
		return nil, false
	}
	at := time.UnixMilli(int64(binary.BigEndian.Uint64(v)))
	if l.retention.MaxAge > 0 && now.Sub(at) >= l.retention.MaxAge {
		return nil, false
	}
	ids := make([]event.ID, (len(v)-8)/16)
	for i := range ids {
		ids[i], _ = decodeKey(v[8+16*i : 8+16*i+16])
	}
	return ids, true
}

// putIdempotencyKey remembers ids for name, indexed by the id at.
func (l *Log) putIdempotencyKey(tx *bolt.Tx, name []byte, ms uint64, ids []event.ID, at event.ID) error {
	keys, index := tx.Bucket(bucketKeys), tx.Bucket(bucketKeyIndex)
	if old := keys.Get(name); len(old) >= 8 {
		// An expired key used again: drop its old index entry.
		oldAt := event.ID{Ms: binary.BigEndian.Uint64(old)}
		if len(old) >= 24 {
			oldAt, _ = decodeKey(old[len(old)-16:])
		}
		if err := index.Delete(indexKey(oldAt, name)); err != nil {
			return fmt.Errorf("idempotency key: %w", err)
		}
	}
	v := make([]byte, 8, 8+16*len(ids))
	binary.BigEndian.PutUint64(v, ms)
	for _, id := range ids {
		v = append(v, encodeID(id)...)
	}
	if err := keys.Put(name, v); err != nil {
		return fmt.Errorf("idempotency key: %w", err)
	}
	if err := index.Put(indexKey(at, name), []byte{}); err != nil {
		return fmt.Errorf("idempotency key: %w", err)
	}
	return nil
}

// deliver hands evs (in id order) to the follower, skipping what its
// catch-up already delivered.
func (l *Log) deliver(evs []*event.Event) {
	l.fmu.Lock()
	defer l.fmu.Unlock()
	if l.follower == nil {
		return
	}
	i := 0
	for i < len(evs) && !l.followLast.Less(evs[i].ID) {
		i++
	}
	if i == len(evs) {
		return
	}
	l.follower(evs[i:])
	l.followLast = evs[len(evs)-1].ID
}

// Read implements store.Log. A limit of zero or less reads every retained
// event after `after`.
func (l *Log) Read(ctx context.Context, after event.ID, limit int) ([]*event.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.closed.Load() {
		return nil, fmt.Errorf("disk store %s: %w", l.path, store.ErrClosed)
	}
	var out []*event.Event
	err := l.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		start := encodeID(after)
		k, v := c.Seek(start)
		if k != nil && string(k) == string(start) {
			k, v = c.Next()
		}
		for ; k != nil; k, v = c.Next() {
			e, err := event.Decode(v, l.types)
			if err != nil {
				id, _ := decodeKey(k)
				return fmt.Errorf("event %s: %w", id, err)
			}
			out = append(out, e)
			if limit > 0 && len(out) >= limit {
				break
			}
			if len(out)%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// view runs fn in a read transaction, turning a bbolt panic (a corrupt page)
// and a closed database into errors.
func (l *Log) view(fn func(tx *bolt.Tx) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("disk store %s: read failed, the file may be corrupt (bbolt: %v)", l.path, p)
		}
	}()
	err = l.db.View(fn)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, bolterrors.ErrDatabaseNotOpen):
		return fmt.Errorf("disk store %s: %w", l.path, store.ErrClosed)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	default:
		return fmt.Errorf("disk store %s: read: %w", l.path, err)
	}
}

// Bounds implements store.Log.
func (l *Log) Bounds(ctx context.Context) (store.Bounds, error) {
	l.pmu.RLock()
	pruned := l.pruned
	l.pmu.RUnlock()
	return store.Bounds{Last: l.lastID(), Pruned: pruned}, nil
}

// Follow implements store.Log. The retained events after `after` are
// delivered first (from Follow's goroutine), then every committed group (from
// the writer, before the Appends are acknowledged); calls of fn never overlap
// and never repeat an event. Follow returns ctx's error when ctx is done and
// an error wrapping store.ErrClosed when the log is closed.
func (l *Log) Follow(ctx context.Context, after event.ID, fn func([]*event.Event)) error {
	l.fmu.Lock()
	if l.following {
		l.fmu.Unlock()
		return fmt.Errorf("disk store %s: the log is already followed", l.path)
	}
	for {
		if err := ctx.Err(); err != nil {
			l.fmu.Unlock()
			return err
		}
		evs, err := l.Read(ctx, after, 1024)
		if err != nil {
			l.fmu.Unlock()
			return err
		}
		if len(evs) == 0 {
			break
		}
		fn(evs)
		after = evs[len(evs)-1].ID
	}
	l.follower, l.followLast, l.following = fn, after, true
	l.fmu.Unlock()

	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-l.stop:
		err = fmt.Errorf("disk store %s: %w", l.path, store.ErrClosed)
	}
	l.fmu.Lock()
	l.follower, l.following = nil, false
	l.fmu.Unlock()
	return err
}

// Ping implements store.Log: it fails once the log is closed or has failed.
func (l *Log) Ping(ctx context.Context) error {
	if l.closed.Load() {
		return fmt.Errorf("disk store %s: %w", l.path, store.ErrClosed)
	}
	if err := l.failure(); err != nil {
		return err
	}
	return l.view(func(tx *bolt.Tx) error { return nil })
}

// Close implements store.Log: Appends already queued are committed and
// answered, later ones fail with store.ErrClosed; the pruner and Follow stop
// and the file is closed. Close is safe to call more than once.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		l.qmu.Lock()
		l.closing = true
		l.qmu.Unlock()
		select {
		case l.wake <- struct{}{}:
		default:
		}
		<-l.writerDone
		close(l.stop)
		<-l.prunerDone
		if err := l.db.Close(); err != nil {
			l.closeErr = fmt.Errorf("disk store %s: close: %w", l.path, err)
			return
		}
		l.logger.Info("disk store closed", "last_id", l.lastID().String())
	})
	return l.closeErr
}

// Path returns the path of the store file.
func (l *Log) Path() string { return l.path }

// wakePruner asks the pruner for a pass, without waiting.
func (l *Log) wakePruner() {
	if l.retention.MaxEvents <= 0 && l.retention.MaxAge <= 0 {
		return
	}
	select {
	case l.pruneWake <- struct{}{}:
	default:
	}
}

// pruner applies the retention: after appends (history_size) and on a timer
// (history_ttl).
func (l *Log) pruner() {
	defer close(l.prunerDone)
	var tick <-chan time.Time
	if l.retention.MaxAge > 0 {
		every := min(max(l.retention.MaxAge/50, 10*time.Millisecond), time.Second)
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	delay := time.NewTimer(time.Hour)
	delay.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick:
		case <-l.pruneWake:
			// Let appends accumulate a little, so that one prune
			// transaction serves many commits.
			delay.Reset(l.opt.pruneDelay)
			select {
			case <-l.stop:
				return
			case <-delay.C:
			}
		}
		for {
			more, err := l.pruneOnce()
			if err != nil {
				l.logger.Error("disk store: retention failed", "err", err)
				break
			}
			if !more {
				break
			}
			select {
			case <-l.stop:
				return
			default:
			}
		}
	}
}

// pruneOnce removes up to pruneChunk expired events and expired idempotency
// keys in one transaction. It reports whether more remain.
func (l *Log) pruneOnce() (more bool, err error) {
	if l.failure() != nil {
		return false, nil
	}
	now := l.now()
	var cutoff uint64 // events and keys with an id below (cutoff, 0) are too old
	if l.retention.MaxAge > 0 {
		if c := unixMilli(now.Add(-l.retention.MaxAge)); c > 0 {
			cutoff = c
		}
	}
	var dropped int64
	var pruned event.ID
	chunk := l.opt.pruneChunk
	locked := false
	defer func() {
		if locked {
			l.pmu.Unlock()
		}
	}()
	err = l.update(func(tx *bolt.Tx) (bool, error) {
		meta := tx.Bucket(bucketMeta)
		count, err := getCount(meta)
		if err != nil {
			return false, err
		}
		pruned, err = getID(meta, metaPruned)
		if err != nil {
			return false, err
		}
		excess := 0
		if l.retention.MaxEvents > 0 && count > int64(l.retention.MaxEvents) {
			excess = int(count - int64(l.retention.MaxEvents))
		}
		// Collect first, then delete: deleting under a moving cursor skips keys.
		var drop [][]byte
		c := tx.Bucket(bucketEvents).Cursor()
		for k, _ := c.First(); k != nil && len(drop) < chunk; k, _ = c.Next() {
			if len(drop) >= excess && binary.BigEndian.Uint64(k) >= cutoff {
				break
			}
			drop = append(drop, append([]byte(nil), k...))
		}
		if len(drop) == chunk {
			more = true
		}
		events := tx.Bucket(bucketEvents)
		for _, k := range drop {
			if err := events.Delete(k); err != nil {
				return false, err
			}
		}
		wrote := len(drop) > 0
		if wrote {
			if pruned, err = decodeKey(drop[len(drop)-1]); err != nil {
				return false, err
			}
			count -= int64(len(drop))
			if err := meta.Put(metaPruned, encodeID(pruned)); err != nil {
				return false, err
			}
			if err := meta.Put(metaCount, binary.BigEndian.AppendUint64(nil, uint64(count))); err != nil {
				return false, err
			}
		}
		dropped = int64(len(drop))

		// Idempotency keys: by age when history_ttl is set, otherwise
		// together with the events they name.
		if l.retention.MaxAge > 0 || l.retention.MaxEvents > 0 {
			var dropKeys [][]byte
			ic := tx.Bucket(bucketKeyIndex).Cursor()
			for k, _ := ic.First(); k != nil && len(dropKeys) < chunk; k, _ = ic.Next() {
				at, err := decodeKey(k[:min(len(k), 16)])
				if err != nil {
					return false, err
				}
				if l.retention.MaxAge > 0 && at.Ms >= cutoff || l.retention.MaxAge <= 0 && pruned.Less(at) {
					break
				}
				dropKeys = append(dropKeys, append([]byte(nil), k...))
			}
			if len(dropKeys) == chunk {
				more = true
			}
			keys, index := tx.Bucket(bucketKeys), tx.Bucket(bucketKeyIndex)
			for _, k := range dropKeys {
				if err := keys.Delete(k[16:]); err != nil {
					return false, err
				}
				if err := index.Delete(k); err != nil {
					return false, err
				}
			}
			wrote = wrote || len(dropKeys) > 0
		}
		if wrote {
			// Hold the watermark across the commit: Bounds waits for it,
			// so that whoever saw events gone sees the watermark too.
			l.pmu.Lock()
			locked = true
		}
		return wrote, nil
	})
	if err != nil {
		return false, err
	}
	l.count.Add(-dropped)
	if locked && l.pruned.Less(pruned) {
		l.pruned = pruned
	}
	return more, nil
}

// keyName is the bucket key of an idempotency key: the key itself, or a
// digest of a long one (bbolt keys are bounded).
func keyName(key string) []byte {
	if len(key) <= 256 {
		return []byte(key)
	}
	sum := sha256.Sum256([]byte(key))
	return append([]byte("\x00sha256:"), sum[:]...)
}

func indexKey(at event.ID, name []byte) []byte {
	k := make([]byte, 16, 16+len(name))
	putKey(k, at)
	return append(k, name...)
}

// putKey writes the 16-byte big-endian form of id into k.
func putKey(k []byte, id event.ID) {
	binary.BigEndian.PutUint64(k[:8], id.Ms)
	binary.BigEndian.PutUint64(k[8:16], id.Seq)
}

func encodeID(id event.ID) []byte {
	k := make([]byte, 16)
	putKey(k, id)
	return k
}

func decodeKey(k []byte) (event.ID, error) {
	if len(k) != 16 {
		return event.ID{}, fmt.Errorf("bad event key of %d bytes", len(k))
	}
	return event.ID{Ms: binary.BigEndian.Uint64(k[:8]), Seq: binary.BigEndian.Uint64(k[8:])}, nil
}

func getID(meta *bolt.Bucket, name []byte) (event.ID, error) {
	v := meta.Get(name)
	if v == nil {
		return event.ID{}, nil
	}
	id, err := decodeKey(v)
	if err != nil {
		return event.ID{}, fmt.Errorf("meta %s: %w", name, err)
	}
	return id, nil
}

func getCount(meta *bolt.Bucket) (int64, error) {
	v := meta.Get(metaCount)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, errors.New("meta count: bad length")
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

// unixMilli is t in unix milliseconds, zero before 1970.
func unixMilli(t time.Time) uint64 {
	ms := t.UnixMilli()
	if ms < 0 {
		return 0
	}
	return uint64(ms)
}
