package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/knowledgehub/realtime/internal/auth"
	"github.com/knowledgehub/realtime/internal/config"
)

const tokenSummary = `
Usage: knowledgehub token --user ID [flags]

Prints a development token (an HS256 JWT whose "sub" is the user id) for
listen --token, ?token= of the WebSocket and SSE endpoints, or the history API.

The secret is --secret, else the first of $KNOWLEDGEHUB_JWT_SECRET, else the
development credentials that a local "knowledgehub serve" with no credentials
configured writes into its data directory (--data-dir, $KNOWLEDGEHUB_DATA_DIR,
default ./data).
`

const tokenExamples = `
  knowledgehub token --user alice
  knowledgehub token --user alice --ttl 24h --data-dir /var/lib/knowledgehub
  KNOWLEDGEHUB_JWT_SECRET=s3cret knowledgehub token --user bob --ttl 0
  wscat -c "ws://127.0.0.1:3000/ws/notifications?token=$(knowledgehub token --user alice)"
`

// RunToken is the token command: it parses args and prints a token on
// o.Stdout.
func RunToken(_ context.Context, args []string, o IO) error {
	c := newCommand("token", tokenSummary, tokenExamples)
	user := c.fs.String("user", "", "user id: the token's \"sub\" (required)")
	ttl := c.fs.Duration("ttl", time.Hour, "lifetime; 0 mints a token that never expires")
	secret := c.fs.String("secret", "", "HMAC secret (default: first of $KNOWLEDGEHUB_JWT_SECRET, else the development credentials)")
	dir := c.fs.String("data-dir", "", "data directory holding dev-credentials.json (default: $KNOWLEDGEHUB_DATA_DIR or ./data)")
	issuer := c.fs.String("issuer", "", "\"iss\" claim, for a server with jwt_issuer (default: $KNOWLEDGEHUB_JWT_ISSUER)")
	audience := c.fs.String("audience", "", "\"aud\" claim, for a server with jwt_audience (default: $KNOWLEDGEHUB_JWT_AUDIENCE)")
	if err := c.parse(args, o.Stdout); err != nil {
		return err
	}
	if *user == "" {
		return usageError("--user is required (run \"knowledgehub token --help\" for usage)")
	}
	if *ttl < 0 {
		return usageError("--ttl must not be negative")
	}
	key, err := ResolveSecret(*secret, dataDir(*dir, o), o)
	if err != nil {
		return err
	}
	opts := auth.MintOptions{Subject: *user, TTL: *ttl, Issuer: *issuer, Audience: *audience}
	if opts.Issuer == "" {
		opts.Issuer = o.getenv(config.EnvName("jwt_issuer"))
	}
	if opts.Audience == "" {
		opts.Audience = o.getenv(config.EnvName("jwt_audience"))
	}
	tok, err := auth.MintWith(key, opts)
	if err != nil {
		return usageError("%v", err)
	}
	_, err = fmt.Fprintln(o.Stdout, tok)
	return err
}
