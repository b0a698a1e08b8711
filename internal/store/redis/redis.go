// Package redis keeps the event log in a Redis stream (store: redis), so
// that every node sharing one Redis (or Valkey) forms one hub: Redis assigns
// the ids, strictly increasing across nodes, and every node follows the same
// stream.
//
// Keys, under a prefix ("knowledgehub" by default):
//
//	<prefix>:events        the stream; one entry per event, fields type,
//	                       data, user_id, job_id; the entry id is the event id
//	<prefix>:idem:<key>    the ids of an Append with idempotency key <key>,
//	                       remembered for history_ttl
//	<prefix>:conns:<user>  the user's live connections on every node (ConnCounter)
//
// On Redis Cluster the stream and the idempotency keys must share a slot:
// give the prefix a hash tag, such as "{knowledgehub}".
//
// An event is acknowledged once Redis has answered the Append script. How
// durable that is depends on the server: with appendonly yes and appendfsync
// always it is on disk; see docs/deploy.md.
package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/store"
)

// DefaultPrefix prefixes every key when Open is given none.
const DefaultPrefix = "knowledgehub"

const (
	// opTimeout bounds Append, Read and Bounds when the caller's context
	// has no deadline: a Redis that does not answer must turn into a 503,
	// not a hung publish.
	opTimeout = 3 * time.Second
	// pingTimeout bounds Ping when the caller's context has no deadline.
	pingTimeout = 2 * time.Second
	// dialTimeout bounds connecting to Redis.
	dialTimeout = 3 * time.Second
	// defaultKeyTTL is how long idempotency keys are remembered when the
	// retention has no age bound: Redis must not keep them forever.
	defaultKeyTTL = 24 * time.Hour
	// retries is how often a read-only command is retried after a network
	// error: enough to get past a connection broken by a Redis restart, few
	// enough that an unreachable Redis is reported at once (Follow has a
	// retry loop of its own).
	retries = 2
	// readPage is how many entries one XRANGE fetches when Read has no
	// limit, so that no single reply holds the whole history.
	readPage = 1000
)

// Log is a store.Log kept in a Redis stream. It is safe for concurrent use;
// its commands share auto-pipelined connections, except Follow, which blocks
// on a connection of its own.
type Log struct {
	client    rueidis.Client
	types     *event.Types
	retention store.Retention
	logger    *slog.Logger

	prefix     string
	streamKey  string
	idemPrefix string
	// maxLen, maxAgeMs and keyTTLMs are the script arguments of the
	// retention, formatted once.
	maxLen, maxAgeMs, keyTTLMs string

	closed    atomic.Bool
	closeOnce sync.Once
	// closing is cancelled by Close, so that a Follow blocked in XREAD
	// returns at once instead of when its block times out.
	closing     context.Context
	closeFollow context.CancelFunc
}

var _ store.Log = (*Log)(nil)

// Open connects to the Redis at redisURL (redis://, rediss:// or unix://, as
// rueidis.ParseURL reads them) and returns the log kept under prefix
// (DefaultPrefix when empty). types resolves the TypeIndex of events read
// back; r bounds what the stream keeps. A bad or unreachable URL is an error
// that names redis_url (with any password redacted), as is a Redis older
// than 7. A nil logger means slog.Default().
func Open(ctx context.Context, redisURL string, prefix string, types *event.Types, r store.Retention, logger *slog.Logger) (*Log, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if types == nil {
		return nil, errors.New("redis store: no event types registry")
	}
	if redisURL == "" {
		return nil, errors.New("redis_url is not set: store: redis needs the URL of a Redis (redis://host:6379/0)")
	}
	shown := redactURL(redisURL)
	opt, err := rueidis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("redis_url %s: %w", shown, err)
	}
	if opt.Dialer.Timeout == 0 {
		opt.Dialer.Timeout = dialTimeout
	}
	// The log reads what other nodes write: client-side caching has nothing
	// to offer and would only enable CLIENT TRACKING.
	opt.DisableCache = true
	opt.RetryDelay = retryDelay
	if opt.ClientName == "" {
		opt.ClientName = "knowledgehub"
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("redis_url %s: connect: %w: %w", shown, store.ErrUnavailable, err)
	}
	l := newLog(client, prefix, types, r, logger)
	if err := l.checkServer(ctx, shown); err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}

func newLog(client rueidis.Client, prefix string, types *event.Types, r store.Retention, logger *slog.Logger) *Log {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	keyTTL := r.MaxAge
	if keyTTL <= 0 {
		keyTTL = defaultKeyTTL
	}
	maxLen := max(r.MaxEvents, 0)
	maxAge := max(r.MaxAge.Milliseconds(), 0)
	closing, closeFollow := context.WithCancel(context.Background())
	return &Log{
		closing:     closing,
		closeFollow: closeFollow,
		client:      client,
		types:       types,
		retention:   r,
		logger:      logger,
		prefix:      prefix,
		streamKey:   prefix + ":events",
		idemPrefix:  prefix + ":idem:",
		maxLen:      strconv.Itoa(maxLen),
		maxAgeMs:    strconv.FormatInt(maxAge, 10),
		keyTTLMs:    strconv.FormatInt(max(keyTTL.Milliseconds(), 1), 10),
	}
}

// checkServer refuses a Redis older than 7 (the scripts need shebang flags
// and max-deleted-entry-id) and warns when acknowledged writes would not be
// on disk.
func (l *Log) checkServer(ctx context.Context, shown string) error {
	ctx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	info, err := l.client.Do(ctx, l.client.B().Info().Section("server").Build()).ToString()
	if err != nil {
		return fmt.Errorf("redis_url %s: INFO server: %w: %w", shown, store.ErrUnavailable, err)
	}
	version := infoField(info, "redis_version")
	major, _, _ := strings.Cut(version, ".")
	if n, err := strconv.Atoi(major); err != nil || n < 7 {
		return fmt.Errorf("redis_url %s: Redis %q is too old: the Redis store needs Redis 7 or newer (or Valkey)", shown, version)
	}
	// Managed services often refuse CONFIG GET; the warning is then skipped.
	cfg, err := l.client.Do(ctx, l.client.B().ConfigGet().Parameter("appendonly", "appendfsync").Build()).AsStrMap()
	if err != nil {
		l.logger.Debug("redis store: cannot read the persistence settings", "err", err)
		return nil
	}
	if cfg["appendonly"] != "yes" || cfg["appendfsync"] != "always" {
		l.logger.Warn("redis store: acknowledged events may be lost if Redis crashes; for durable acknowledgements run Redis with appendonly yes and appendfsync always (see docs/deploy.md)",
			"redis_url", shown, "appendonly", cfg["appendonly"], "appendfsync", cfg["appendfsync"])
	}
	return nil
}

// Client returns the log's Redis client, so that other parts of the node
// (ConnCounter) share its connections. It is closed by Close.
func (l *Log) Client() rueidis.Client { return l.client }

// Prefix returns the key prefix of the log.
func (l *Log) Prefix() string { return l.prefix }

// Append implements store.Log with one atomic script: it replays a known
// idempotency key, or adds every event with an id Redis assigns (so ids
// increase across all nodes), applies the retention and remembers the key.
//
// An error wraps store.ErrUnavailable when Redis could not be reached or
// did not answer in time. After a timeout the script may still have run:
// a publisher that retries with the same idempotency key then gets the ids
// of the events that were stored instead of storing them twice.
func (l *Log) Append(ctx context.Context, key string, evs []*event.Event) ([]event.ID, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("redis append: %w", err)
	}
	if l.closed.Load() {
		return nil, false, fmt.Errorf("redis append: %w", store.ErrClosed)
	}
	keys := []string{l.streamKey}
	if key != "" {
		keys = append(keys, l.idemPrefix+key)
	}
	args := make([]string, 0, 4+4*len(evs))
	args = append(args, l.maxLen, l.maxAgeMs, l.keyTTLMs, strconv.Itoa(len(evs)))
	for _, e := range evs {
		// Data is immutable once parsed: no copy is needed for the call.
		args = append(args, e.Type, rueidis.BinaryString(e.Data), e.UserID, e.JobID)
	}
	opCtx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	reply, err := appendScript.Exec(opCtx, l.client, keys, args).ToArray()
	if err != nil {
		return nil, false, l.fail("append", ctx, err)
	}
	if len(reply) != 2 {
		return nil, false, fmt.Errorf("redis append: script answered %d values, want 2", len(reply))
	}
	replayed, err := reply[0].AsInt64()
	if err != nil {
		return nil, false, fmt.Errorf("redis append: script reply: %w", err)
	}
	joined, err := reply[1].ToString()
	if err != nil {
		return nil, false, fmt.Errorf("redis append: script reply: %w", err)
	}
	ids, err := parseIDs(joined)
	if err != nil {
		return nil, false, fmt.Errorf("redis append: %w", err)
	}
	if replayed == 1 {
		return ids, true, nil
	}
	if len(ids) != len(evs) {
		return nil, false, fmt.Errorf("redis append: stored %d events, got %d ids", len(evs), len(ids))
	}
	for i, e := range evs {
		e.ID = ids[i]
		e.Time = idTime(ids[i])
		e.Seal()
	}
	return ids, false, nil
}

// Read implements store.Log with XRANGE from the exclusive start "(after".
func (l *Log) Read(ctx context.Context, after event.ID, limit int) ([]*event.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("redis read: %w", err)
	}
	if l.closed.Load() {
		return nil, fmt.Errorf("redis read: %w", store.ErrClosed)
	}
	opCtx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	var out []*event.Event
	for limit <= 0 || len(out) < limit {
		if after.Ms == ^uint64(0) && after.Seq == ^uint64(0) {
			break // nothing can follow the greatest id
		}
		count := readPage
		if limit > 0 {
			count = min(limit-len(out), readPage)
		}
		cmd := l.client.B().Xrange().Key(l.streamKey).Start("(" + after.String()).End("+").Count(int64(count)).Build()
		entries, err := l.client.Do(opCtx, cmd).AsXRange()
		if err != nil {
			return nil, l.fail("read", ctx, err)
		}
		evs, err := l.decode(entries)
		if err != nil {
			return nil, fmt.Errorf("redis read: %w", err)
		}
		out = append(out, evs...)
		if len(entries) < count {
			break
		}
		after = evs[len(evs)-1].ID
	}
	return out, nil
}

// Bounds implements store.Log: the stream's last-generated-id and its
// max-deleted-entry-id, which the Append script advances when it trims.
func (l *Log) Bounds(ctx context.Context) (store.Bounds, error) {
	if err := ctx.Err(); err != nil {
		return store.Bounds{}, fmt.Errorf("redis bounds: %w", err)
	}
	if l.closed.Load() {
		return store.Bounds{}, fmt.Errorf("redis bounds: %w", store.ErrClosed)
	}
	opCtx, cancel := withTimeout(ctx, opTimeout)
	defer cancel()
	reply, err := boundsScript.Exec(opCtx, l.client, []string{l.streamKey}, nil).AsStrSlice()
	if err != nil {
		return store.Bounds{}, l.fail("bounds", ctx, err)
	}
	if len(reply) != 2 {
		return store.Bounds{}, fmt.Errorf("redis bounds: script answered %d values, want 2", len(reply))
	}
	last, err := event.ParseID(reply[0])
	if err != nil {
		return store.Bounds{}, fmt.Errorf("redis bounds: last-generated-id %q: %w", reply[0], err)
	}
	pruned, err := event.ParseID(reply[1])
	if err != nil {
		return store.Bounds{}, fmt.Errorf("redis bounds: max-deleted-entry-id %q: %w", reply[1], err)
	}
	return store.Bounds{Last: last, Pruned: pruned}, nil
}

// Ping implements store.Log: Redis answers PING within the context's
// deadline, or 2 s.
func (l *Log) Ping(ctx context.Context) error {
	if l.closed.Load() {
		return fmt.Errorf("redis ping: %w", store.ErrClosed)
	}
	opCtx, cancel := withTimeout(ctx, pingTimeout)
	defer cancel()
	if err := l.client.Do(opCtx, l.client.B().Ping().Build()).Error(); err != nil {
		return l.fail("ping", ctx, err)
	}
	return nil
}

// Close implements store.Log: it closes the client, which ends a running
// Follow with store.ErrClosed. Every acknowledged event is already in Redis,
// so there is nothing to flush. Closing twice is harmless.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		l.closeFollow()
		l.client.Close()
	})
	return nil
}

// fail wraps an error of a Redis command of op. A caller that gave up gets
// its context error; a closed log store.ErrClosed; anything else means Redis
// cannot serve the request now, store.ErrUnavailable (a 503 for the
// publisher).
func (l *Log) fail(op string, caller context.Context, err error) error {
	if l.closed.Load() || errors.Is(err, rueidis.ErrClosing) {
		return fmt.Errorf("redis %s: %w", op, store.ErrClosed)
	}
	if cerr := caller.Err(); errors.Is(cerr, context.Canceled) {
		return fmt.Errorf("redis %s: %w", op, cerr)
	}
	return fmt.Errorf("redis %s: %w: %w", op, store.ErrUnavailable, err)
}

// decode builds sealed events from stream entries: the id is the entry id
// and the timestamp its millisecond part, the time Redis accepted it.
func (l *Log) decode(entries []rueidis.XRangeEntry) ([]*event.Event, error) {
	evs := make([]*event.Event, 0, len(entries))
	for _, en := range entries {
		id, err := event.ParseID(en.ID)
		if err != nil {
			return nil, fmt.Errorf("stream entry id %q: %w", en.ID, err)
		}
		e := &event.Event{
			ID:     id,
			Type:   en.FieldValues["type"],
			UserID: en.FieldValues["user_id"],
			JobID:  en.FieldValues["job_id"],
			Time:   idTime(id),
		}
		if d := en.FieldValues["data"]; d != "" {
			e.Data = []byte(d)
		}
		e.TypeIndex = l.types.Index(e.Type)
		e.Seal()
		evs = append(evs, e)
	}
	return evs, nil
}

// idTime returns the acceptance time an id carries.
func idTime(id event.ID) time.Time { return time.UnixMilli(int64(id.Ms)).UTC() }

// parseIDs parses the comma-separated ids the Append script returns.
func parseIDs(joined string) ([]event.ID, error) {
	if joined == "" {
		return []event.ID{}, nil
	}
	parts := strings.Split(joined, ",")
	ids := make([]event.ID, len(parts))
	for i, p := range parts {
		id, err := event.ParseID(p)
		if err != nil {
			return nil, fmt.Errorf("stored id %q: %w", p, err)
		}
		ids[i] = id
	}
	return ids, nil
}

// retryDelay is the rueidis.RetryDelayFn of the log's client: a short pause
// before each of `retries` retries, then none.
func retryDelay(attempts int, _ rueidis.Completed, _ error) time.Duration {
	if attempts > retries {
		return -1
	}
	return time.Duration(attempts) * 50 * time.Millisecond
}

// withTimeout bounds ctx by d.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	// An earlier deadline of the caller stays; a later one is cut to d, so
	// a hung Redis is reported within d whatever the caller allowed.
	return context.WithTimeout(ctx, d)
}

// infoField returns the value of name in an INFO reply.
func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// redactURL returns raw with its password hidden, for error messages and
// logs.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return strconv.Quote(u.Redacted())
}
