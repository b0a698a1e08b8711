package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/rueidis"
)

// RedisBus carries commands between the nodes of a hub through Redis
// pub/sub, and keeps revocations in a Redis hash for nodes that start later
// or missed a message while Redis was away.
type RedisBus struct {
	client  rueidis.Client
	channel string
	hash    string
	logger  *slog.Logger
}

// NewRedisBus returns the bus of the hub whose keys start with prefix.
func NewRedisBus(client rueidis.Client, prefix string, logger *slog.Logger) *RedisBus {
	return &RedisBus{client: client, channel: prefix + ":admin", hash: prefix + ":revocations", logger: logger}
}

func field(c Command) string {
	if c.JTI != "" {
		return "jti:" + c.JTI
	}
	return "before:" + c.UserID
}

// Publish implements Bus.
func (b *RedisBus) Publish(ctx context.Context, cmd Command) error {
	data, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	if cmd.Op == OpRevoke {
		if err := b.client.Do(ctx, b.client.B().Hset().Key(b.hash).FieldValue().FieldValue(field(cmd), string(data)).Build()).Error(); err != nil {
			return fmt.Errorf("admin: keep revocation in redis: %w", err)
		}
	}
	if err := b.client.Do(ctx, b.client.B().Publish().Channel(b.channel).Message(string(data)).Build()).Error(); err != nil {
		return fmt.Errorf("admin: publish command to redis: %w", err)
	}
	return nil
}

// Run implements Bus: it loads the kept revocations, then follows the
// channel, reloading after every reconnect.
func (b *RedisBus) Run(ctx context.Context, apply func(Command)) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		b.reload(ctx, apply)
		err := b.client.Receive(ctx, b.client.B().Subscribe().Channel(b.channel).Build(), func(m rueidis.PubSubMessage) {
			var c Command
			if err := json.Unmarshal([]byte(m.Message), &c); err != nil {
				b.logger.Warn("admin: bad command on the redis channel", "err", err)
				return
			}
			apply(c)
		})
		if ctx.Err() != nil {
			return nil
		}
		b.logger.Warn("admin: redis channel lost; retrying", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (b *RedisBus) reload(ctx context.Context, apply func(Command)) {
	all, err := b.client.Do(ctx, b.client.B().Hgetall().Key(b.hash).Build()).AsStrMap()
	if err != nil {
		b.logger.Warn("admin: cannot load revocations from redis", "err", err)
		return
	}
	now := time.Now()
	for f, v := range all {
		var c Command
		if json.Unmarshal([]byte(v), &c) != nil {
			continue
		}
		if !now.Before(c.Until) {
			_ = b.client.Do(ctx, b.client.B().Hdel().Key(b.hash).Field(f).Build()).Error()
			continue
		}
		apply(c)
	}
}
