package main

import (
	"context"
	"io"

	"github.com/knowledgehub/realtime/internal/cli"
)

// token: `knowledgehub token --user alice` prints a development token.
func init() {
	commands["token"] = func(args []string, stdout, stderr io.Writer) error {
		return cli.RunToken(context.Background(), args, cli.NewIO(stdout, stderr))
	}
}
