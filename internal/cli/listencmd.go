package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/config"
	"github.com/knowledgehub/realtime/internal/event"
)

const listenSummary = `
Usage: knowledgehub listen [--ws | --sse] [flags]

Connects to the server and prints each event as it arrives. On a terminal the
lines are readable and coloured (time, type, job, user, compact data); with
--json, or when standard output is not a terminal, each event is printed as
its raw JSON, one per line. Notes about the connection (connected, gap,
reconnecting, ...) go to standard error.

After a drop, listen reconnects and resumes after the last event it printed
(last_event_id for WebSocket, Last-Event-ID for SSE), obeying the close codes
of the server: 40xx stop (exit 1), 41xx back off, 42xx and 1001 reconnect at
once or after a short random delay; other drops back off exponentially. The
first connection must succeed.

--user mints a token for that user with the secret that "knowledgehub token"
uses (--secret, $KNOWLEDGEHUB_JWT_SECRET or the development credentials) and
refreshes it before it expires; --token uses the given token as is.

Exit status: 0 after --max events, at the end of --timeout without --max, or
on Ctrl-C; 1 when the server refused the connection or cannot be reached, or
--timeout ended before --max events; 2 bad command line.
`

const listenExamples = `
  knowledgehub listen
  knowledgehub listen --sse --types CODE_CHANGE,ERROR_OCCURRED
  knowledgehub listen --user alice --job job-42
  knowledgehub listen --token "$TOKEN" --server https://rt.example.com --json | jq .data
  knowledgehub listen --max 10 --timeout 30s --json > events.ndjson
`

// RunListen is the listen command.
func RunListen(ctx context.Context, args []string, o IO) error {
	c := newCommand("listen", listenSummary, listenExamples)
	ws := c.fs.Bool("ws", false, "use the WebSocket /ws/notifications (the default)")
	sse := c.fs.Bool("sse", false, "use Server-Sent Events /api/realtime/stream")
	types := c.fs.String("types", "", "only these event types, comma-separated (event_types)")
	jobs := c.fs.String("job", "", "subscribe to these jobs, comma-separated (job_ids)")
	user := c.fs.String("user", "", "connect as this user with a token minted from the development secret")
	token := c.fs.String("token", "", "connect with this token")
	secret := c.fs.String("secret", "", "with --user: HMAC secret (default: first of $KNOWLEDGEHUB_JWT_SECRET, else the dev credentials)")
	server := c.fs.String("server", "", "server URL (default: $KNOWLEDGEHUB_URL, else the dev credentials' url, else "+DefaultServer+")")
	dir := c.fs.String("data-dir", "", "data directory holding dev-credentials.json (default: $KNOWLEDGEHUB_DATA_DIR or ./data)")
	jsonOut := c.fs.Bool("json", false, "print each event as raw JSON, one per line (the default when stdout is not a terminal)")
	maxEvents := c.fs.Int("max", 0, "exit 0 after this many events (0: no limit)")
	timeout := c.fs.Duration("timeout", 0, "exit after this long (0: no limit); with --max, exit 1 if fewer events came")
	lastID := c.fs.String("last-event-id", "", "start by resuming after this event id")
	if err := c.parse(args, o.Stdout); err != nil {
		return err
	}
	if *ws && *sse {
		return usageError("--ws and --sse: choose one")
	}
	if *user != "" && *token != "" {
		return usageError("--user and --token: choose one")
	}
	if *secret != "" && *user == "" {
		return usageError("--secret only applies with --user")
	}
	if *maxEvents < 0 || *timeout < 0 {
		return usageError("--max and --timeout must not be negative")
	}
	if *lastID != "" {
		if _, err := event.ParseID(*lastID); err != nil {
			return usageError("--last-event-id %q: %v", *lastID, err)
		}
	}
	d := dataDir(*dir, o)
	base, err := ResolveServer(*server, d, o)
	if err != nil {
		return err
	}
	lo := ListenOptions{
		Server: base, SSE: *sse, Types: splitList(*types), Jobs: splitList(*jobs), Token: *token,
		LastEventID: *lastID, Raw: *jsonOut || !o.StdoutTTY, Max: *maxEvents,
		Out: o.Stdout, Notes: o.Stderr,
	}
	lo.Color = !lo.Raw && o.getenv("NO_COLOR") == "" && o.getenv("TERM") != "dumb"
	if *user != "" {
		key, err := ResolveSecret(*secret, d, o)
		if err != nil {
			return err
		}
		opts := auth.MintOptions{Subject: *user, TTL: time.Hour, Issuer: o.getenv(config.EnvName("jwt_issuer")), Audience: o.getenv(config.EnvName("jwt_audience"))}
		lo.Mint = func() (string, error) { return auth.MintWith(key, opts) }
		if lo.Token, err = lo.Mint(); err != nil {
			return usageError("%v", err)
		}
	}

	errTimeout := errors.New("timeout")
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, *timeout, errTimeout)
		defer cancel()
	}
	var counted countingWriter
	counted.w = lo.Out
	lo.Out = &counted
	err = Listen(ctx, lo)
	switch {
	case err == nil:
		return nil
	case errors.Is(context.Cause(ctx), errTimeout):
		if *maxEvents > 0 {
			return fmt.Errorf("timed out after %s with %d of %d events", *timeout, counted.lines, *maxEvents)
		}
		return nil
	case errors.Is(err, context.Canceled):
		return nil // interrupted
	}
	return err
}

// countingWriter counts the writes (one per event) that go through it.
type countingWriter struct {
	w     io.Writer
	lines int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.lines++
	return c.w.Write(p)
}
