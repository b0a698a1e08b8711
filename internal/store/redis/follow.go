package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/rueidis"

	"github.com/knowledgehub/realtime/internal/event"
	"github.com/knowledgehub/realtime/internal/store"
)

const (
	// followBlock is how long one XREAD waits for new entries.
	followBlock = 5 * time.Second
	// followGrace is added to followBlock for the deadline of one XREAD:
	// a Redis that does not even answer the timeout is unreachable.
	followGrace = 3 * time.Second
	// followBatch bounds the entries one XREAD returns, and so the events
	// of one call of fn.
	followBatch = 1000
	// followMinBackoff and followMaxBackoff bound the wait between attempts
	// while Redis is unreachable.
	followMinBackoff = 100 * time.Millisecond
	followMaxBackoff = 2 * time.Second
)

// Follow implements store.Log: it reads the stream with XREAD BLOCK from the
// last delivered id, on a connection of its own, and calls fn with each
// batch, in id order. Events of every node sharing the Redis arrive here.
//
// While Redis is unreachable Follow keeps trying, with a backoff from 100 ms
// up to 2 s, and resumes after the last delivered id when Redis is back: no
// event Redis acknowledged is skipped or delivered twice (unless retention
// removed it during the outage, which is logged). It returns ctx.Err() when
// ctx is done, and store.ErrClosed when the log is closed.
func (l *Log) Follow(ctx context.Context, after event.ID, fn func([]*event.Event)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopWatchingClose := context.AfterFunc(l.closing, cancel)
	defer stopWatchingClose()
	last := after
	backoff := followMinBackoff
	var failingSince time.Time
	for {
		if l.closed.Load() {
			return store.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		evs, err := l.readAfter(ctx, last)
		if err != nil {
			if l.closed.Load() || errors.Is(err, rueidis.ErrClosing) {
				return store.ErrClosed
			}
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			if failingSince.IsZero() {
				failingSince = time.Now()
				l.logger.Warn("redis follow: cannot read the event stream; retrying", "err", err, "resume_after", last.String())
			} else {
				l.logger.Debug("redis follow: still failing", "err", err, "retry_in", backoff)
			}
			if !sleep(ctx, jitter(backoff)) {
				continue // the checks at the top say why
			}
			backoff = min(backoff*2, followMaxBackoff)
			continue
		}
		if !failingSince.IsZero() {
			l.logger.Info("redis follow: reading the event stream again", "down_for", time.Since(failingSince).Round(time.Millisecond), "resume_after", last.String())
			failingSince = time.Time{}
			backoff = followMinBackoff
			l.checkMissed(ctx, last)
		}
		if len(evs) == 0 {
			continue
		}
		fn(evs)
		last = evs[len(evs)-1].ID
	}
}

// readAfter waits up to followBlock for entries after last.
func (l *Log) readAfter(ctx context.Context, last event.ID) ([]*event.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, followBlock+followGrace)
	defer cancel()
	cmd := l.client.B().Xread().Count(followBatch).Block(followBlock.Milliseconds()).
		Streams().Key(l.streamKey).Id(last.String()).Build()
	// When ctx ends the server is told CLIENT UNBLOCK, so the connection can
	// be reused instead of being torn down.
	res := l.client.Do(ctx, cmd.UnblockOnCancel())
	streams, err := res.AsXRead()
	if rueidis.IsRedisNil(err) {
		return nil, nil // the block timed out: nothing new
	}
	if err != nil {
		return nil, fmt.Errorf("redis follow: XREAD: %w", err)
	}
	return l.decode(streams[l.streamKey])
}

// checkMissed logs when retention removed events after last while Follow
// could not read: this node's connections will not receive them live (a
// resuming client still learns of the gap from Bounds).
func (l *Log) checkMissed(ctx context.Context, last event.ID) {
	b, err := l.Bounds(ctx)
	if err != nil {
		return
	}
	if last.Less(b.Pruned) {
		l.logger.Error("redis follow: retention removed events before this node delivered them",
			"last_delivered", last.String(), "pruned_through", b.Pruned.String())
	}
}

// sleep waits for d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// jitter spreads d by ±20 %, so that nodes do not reconnect in step.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}
