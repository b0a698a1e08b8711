package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/knowledgehub/realtime/internal/cli"
)

// listen: `knowledgehub listen` prints events as they arrive until Ctrl-C,
// SIGTERM, --max or --timeout.
func init() {
	commands["listen"] = func(args []string, stdout, stderr io.Writer) error {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return cli.RunListen(ctx, args, cli.NewIO(stdout, stderr))
	}
}
