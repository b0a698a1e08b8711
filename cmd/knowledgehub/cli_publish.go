package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/knowledgehub/realtime/internal/cli"
)

// publish: `knowledgehub publish --type T --data JSON` or `--file F` posts
// events; Ctrl-C stops between requests.
func init() {
	commands["publish"] = func(args []string, stdout, stderr io.Writer) error {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return cli.RunPublish(ctx, args, cli.NewIO(stdout, stderr))
	}
}
