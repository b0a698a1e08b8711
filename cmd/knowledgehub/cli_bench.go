package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/knowledgehub/realtime/internal/bench"
)

// bench: `knowledgehub bench <idle|fanout|publish|resume>` load-tests a
// server on this machine (with --target centrifugo, idle and fanout load a
// Centrifugo v6 server for comparison). Ctrl-C or SIGTERM ends the run
// early; what was measured so far is still printed.
func init() {
	commands["bench"] = func(args []string, stdout, stderr io.Writer) error {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return bench.RunCommand(ctx, args, stdout, stderr, os.Getenv)
	}
}
