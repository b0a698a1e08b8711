package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/lesismal/nbio/logging"
)

// engineLogger sends the I/O engine's log lines to slog, one level down:
// the engine's start-up chatter is debug detail for our users, and what it
// calls errors (a peer resetting its connection) are warnings at most.
type engineLogger struct{ logger *slog.Logger }

func (l engineLogger) log(level slog.Level, format string, v []any) {
	if l.logger.Enabled(context.Background(), level) {
		l.logger.Log(context.Background(), level, fmt.Sprintf(format, v...), "component", "nbio")
	}
}

func (l engineLogger) Debug(format string, v ...any) { l.log(slog.LevelDebug-4, format, v) }
func (l engineLogger) Info(format string, v ...any)  { l.log(slog.LevelDebug, format, v) }
func (l engineLogger) Warn(format string, v ...any)  { l.log(slog.LevelDebug, format, v) }
func (l engineLogger) Error(format string, v ...any) { l.log(slog.LevelWarn, format, v) }

var engineLogOnce sync.Once

// routeEngineLogs installs the engine logger; the engine's logger is
// process-wide, so the first server's logger wins.
func routeEngineLogs(logger *slog.Logger) {
	engineLogOnce.Do(func() { logging.SetLogger(engineLogger{logger: logger}) })
}
