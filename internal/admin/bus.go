package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// LocalBus is the Bus of a single node. When path is set, revocations are
// kept in that file (next to the disk store) so a restart keeps them.
type LocalBus struct {
	path string
	mu   sync.Mutex
	kept []Command
	ch   chan Command
}

// NewLocalBus returns a bus for one node; path may be "".
func NewLocalBus(path string) *LocalBus {
	return &LocalBus{path: path, ch: make(chan Command, 64)}
}

// Publish implements Bus.
func (b *LocalBus) Publish(ctx context.Context, cmd Command) error {
	if cmd.Op == OpRevoke {
		b.mu.Lock()
		b.kept = append(live(b.kept), cmd)
		err := b.save()
		b.mu.Unlock()
		if err != nil {
			return err
		}
	}
	select {
	case b.ch <- cmd:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run implements Bus.
func (b *LocalBus) Run(ctx context.Context, apply func(Command)) error {
	b.mu.Lock()
	err := b.load()
	kept := append([]Command(nil), b.kept...)
	b.mu.Unlock()
	if err != nil {
		return err
	}
	for _, c := range kept {
		apply(c)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-b.ch:
			apply(c)
		}
	}
}

func (b *LocalBus) load() error {
	if b.path == "" {
		return nil
	}
	data, err := os.ReadFile(b.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("revocations %s: %w", b.path, err)
	}
	if err := json.Unmarshal(data, &b.kept); err != nil {
		return fmt.Errorf("revocations %s: %w", b.path, err)
	}
	b.kept = live(b.kept)
	return nil
}

func (b *LocalBus) save() error {
	if b.path == "" {
		return nil
	}
	data, _ := json.MarshalIndent(b.kept, "", "  ")
	tmp := b.path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return fmt.Errorf("revocations: %w", err)
	}
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("revocations: %w", err)
	}
	if err := os.Rename(tmp, b.path); err != nil {
		return fmt.Errorf("revocations: %w", err)
	}
	return nil
}

// live drops revocations past their Until.
func live(cmds []Command) []Command {
	out := cmds[:0]
	now := time.Now()
	for _, c := range cmds {
		if now.Before(c.Until) {
			out = append(out, c)
		}
	}
	return out
}
