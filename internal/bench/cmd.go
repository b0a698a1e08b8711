package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/knowledgehub/realtime/internal/cli"
	"github.com/knowledgehub/realtime/internal/config"
)

const usage = `Usage: knowledgehub bench <scenario> [flags]

Load-tests a KnowledgeHub Realtime server running on this machine (loopback
only) and prints what it measured; --json prints it for machines. With
--target centrifugo, idle and fanout load a Centrifugo v6 server instead,
with the same connections, events, checks and table (see "Comparing with
Centrifugo" below).

Scenarios:
  idle     open --n connections (--transport ws|sse|both), wait for every
           welcome, report the connect rate and the server's memory per
           connection (RSS growth / N after --settle, from /proc/<pid>/status
           and from /metrics), hold them --hold, close them.
  fanout   --n subscribers; publish --rate events/s for --duration (in
           batches of --batch, --concurrency requests at a time); every
           subscriber must receive every event exactly once, in id order.
           Reports deliveries/s, publish→receive latency, losses, and the
           server's CPU seconds per million deliveries.
  publish  --concurrency publishers post batches of --batch events back to
           back for --duration: durable events/s and request latency.
  resume   --n clients connect, disconnect; --events events are published;
           all reconnect at once with their last event id: time until every
           client holds exactly the events it missed.

The server's process (for RSS and CPU) is --server-pid, else the process
listening on the server's port (found through /proc). One process holds at
most as many connections as its open-file limit allows (raised to the hard
limit at start); for more, run several bench processes at once, each with
its own --source-addrs. Past one process: note the server's RSS first (grep VmRSS /proc/<pid>/status),
then start several processes together, e.g. six of
  bench idle --n 17000 --source-addrs 127.0.0.K --settle 60s --hold 5m --rss-baseline <bytes>
with K = 2..7; with a --settle long enough for all of them to finish
connecting, each reports (RSS - baseline) / the server's connection count.
The server's connection limits must allow the load:
run it with --connect-rate-per-ip 0 --connect-rate-per-user 0
--max-connections-per-ip 0 --max-connections-per-user 0 and --max-connections
above the total.

Comparing with Centrifugo (v6): run the same scenario against both servers,
one at a time on an otherwise idle machine, and compare the tables line by
line. Centrifugo's config (127.0.0.1:8000; checkconfig accepts it):
  {"http_server": {"address": "127.0.0.1", "port": 8000},
   "log": {"level": "warn"},
   "client": {"allow_anonymous_connect_without_token": true,
              "token": {"hmac_secret_key": "SECRET"}},
   "http_api": {"key": "APIKEY"},
   "channel": {"without_namespace": {"allow_subscribe_for_client": true,
               "allow_subscribe_for_anonymous": true,
               "history_size": 1000, "history_ttl": "300s"}},
   "prometheus": {"enabled": true}}
then
  centrifugo -c centrifugo.json &
  knowledgehub bench fanout --n 5000 --rate 200 --duration 30s --json > kh.json
  knowledgehub bench fanout --target centrifugo --server http://127.0.0.1:8000 \
      --centrifugo-api-key APIKEY --n 5000 --rate 200 --duration 30s --json > cf.json
Each connection sends connect and subscribe (--channel) in one frame; the
connect reply is the welcome. Events are published with /api/publish
(/api/batch for --batch > 1), each with an idempotency key; their data is
the same event object KnowledgeHub gets. Losses and duplicates are counted
by sequence number; the order is checked on the publication offsets, which
need the channel's history (history_size, history_ttl), else on the
sequence numbers with --concurrency 1. prometheus.enabled gives the
/metrics cross-checks (RSS, goroutines, centrifugo_node_num_clients,
push_publication frames sent). --token-user mints HS256 tokens with
--secret, which must be client.token.hmac_secret_key; without it the
connections are anonymous (allow_anonymous_connect_without_token); the
bench does not refresh tokens, so keep --token-ttl above the run's length.
Centrifugo keeps the history in memory; KnowledgeHub's default store
(disk) fsyncs every event before answering: for like-for-like, also run
KnowledgeHub with --store memory, or say which store the numbers are from.

Exit status: 0 all checks passed, 1 a check failed (the problems are listed)
or the server could not be reached, 2 bad command line.

Flags:
`

const examples = `
Examples:
  knowledgehub bench idle --n 10000 --transport both --hold 30s
  knowledgehub bench idle --n 19000 --source-addrs 127.0.0.2 --server-pid $(pgrep -n knowledgehub)
  knowledgehub bench fanout --n 5000 --rate 200 --duration 30s --json > fanout.json
  knowledgehub bench publish --concurrency 16 --batch 100 --duration 20s
  knowledgehub bench resume --n 2000 --events 500 --transport sse
  knowledgehub bench fanout --target centrifugo --server http://127.0.0.1:8000 --centrifugo-api-key APIKEY --n 5000 --rate 200
`

// RunCommand is `knowledgehub bench`.
func RunCommand(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	o := cli.IO{Stdout: stdout, Stderr: stderr, Getenv: getenv, StdoutTTY: cli.IsTerminal(stdout), StderrTTY: cli.IsTerminal(stderr)}
	var cfg Config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.Target, "target", TargetKnowledgeHub, "the server to load: knowledgehub, or centrifugo (a Centrifugo v6 server; idle and fanout)")
	server := fs.String("server", "", "server URL, loopback only (default: $KNOWLEDGEHUB_URL, else the dev credentials' url, else "+cli.DefaultServer+"; centrifugo: "+defaultCentrifugoServer+")")
	dataDir := fs.String("data-dir", "", "data directory holding dev-credentials.json (default: $KNOWLEDGEHUB_DATA_DIR or ./data)")
	secret := fs.String("secret", "", "HMAC secret for --token-user (default: $KNOWLEDGEHUB_JWT_SECRET, else the dev credentials; centrifugo: its client.token.hmac_secret_key, default $CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY)")
	key := fs.String("key", "", "publish key (default: $KNOWLEDGEHUB_PUBLISH_KEY, else the dev credentials)")
	cfKey := fs.String("centrifugo-api-key", "", "centrifugo: its http_api.key, sent as X-API-Key (default: $CENTRIFUGO_HTTP_API_KEY)")
	fs.StringVar(&cfg.Channel, "channel", "bench", "centrifugo: the channel to subscribe to and publish to")
	fs.StringVar(&cfg.TokenUser, "token-user", "", `authenticate each connection as this user; "%d" is replaced by the connection number (one user per connection)`)
	fs.DurationVar(&cfg.TokenTTL, "token-ttl", 0, "token lifetime (0: no exp claim)")
	fs.StringVar(&cfg.Transport, "transport", "ws", "ws, sse or both (alternating)")
	fs.IntVar(&cfg.N, "n", 100, "connections")
	fs.IntVar(&cfg.ServerPID, "server-pid", 0, "server process for RSS and CPU (0: the process listening on the server's port; -1: none)")
	fs.IntVar(&cfg.ConnectConcurrency, "connect-concurrency", 0, "connections dialled at a time (default 64; resume: 1000)")
	fs.Float64Var(&cfg.ConnectRate, "connect-rate", 0, "at most this many new connections per second (0: as fast as possible)")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 0, "limit of one dial + handshake + welcome (default 15s)")
	fs.IntVar(&cfg.ConnectAttempts, "connect-attempts", 0, "tries per connection; a 429 waits its Retry-After, at most 5s (default 5)")
	sources := fs.String("source-addrs", "", "loopback source addresses to rotate over, e.g. 127.0.0.2-127.0.0.5 (default: 127.0.0.1, or 127.0.0.2.. when --n exceeds one address's ephemeral ports)")
	fs.DurationVar(&cfg.Settle, "settle", 0, "idle: wait after the last welcome before sampling memory (default 3s)")
	fs.Int64Var(&cfg.RSSBaseline, "rss-baseline", 0, "idle: the server's RSS in bytes before any bench process connected; also report (RSS - baseline) / server connections, for several bench processes on one server")
	fs.DurationVar(&cfg.Hold, "hold", 0, "idle: keep the connections open this long after the sample")
	fs.DurationVar(&cfg.Duration, "duration", 0, "fanout, publish: how long to publish (default 10s)")
	fs.DurationVar(&cfg.Drain, "drain", 0, "fanout, resume: how long to wait for deliveries still in flight (default 15s)")
	fs.DurationVar(&cfg.Timeout, "timeout", 0, "hard stop of the whole run (default 10m)")
	fs.Float64Var(&cfg.Rate, "rate", 0, "fanout: events published per second (default 100)")
	fs.IntVar(&cfg.Batch, "batch", 0, "events per publish request (default 1; resume: 100)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 0, "concurrent publish requests (default 2; publish: 8)")
	fs.IntVar(&cfg.Events, "events", 0, "resume: events published while the clients are away (default 100)")
	fs.IntVar(&cfg.EventSize, "size", 0, "approximate size of one event's JSON in bytes (default 200)")
	fs.StringVar(&cfg.EventType, "type", "", "event type to publish (default CODE_CHANGE)")
	fs.StringVar(&cfg.JobID, "job", "", "publish to this job and subscribe the connections to it")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress line on standard error")

	help := func(w io.Writer) {
		fmt.Fprint(w, usage)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		fmt.Fprint(w, examples)
	}
	parseErr := func(err error) error {
		if errors.Is(err, flag.ErrHelp) {
			help(stdout)
			return flag.ErrHelp
		}
		return &cli.ExitError{Code: 2, Err: fmt.Errorf("%v (run \"knowledgehub bench --help\" for usage)", err)}
	}
	// The scenario may come before or after the flags.
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cfg.Scenario, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return parseErr(err)
	}
	if fs.NArg() > 0 {
		if cfg.Scenario != "" {
			return parseErr(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
		}
		cfg.Scenario = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return parseErr(err)
		}
		if fs.NArg() > 0 {
			return parseErr(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
		}
	}
	if cfg.Scenario == "" {
		help(stderr)
		return &cli.ExitError{Code: 2, Err: errors.New("which scenario? idle, fanout, publish or resume")}
	}
	if cfg.Scenario == "help" {
		help(stdout)
		return nil
	}

	if !slices.Contains(Scenarios, cfg.Scenario) {
		return &cli.ExitError{Code: 2, Err: fmt.Errorf("unknown scenario %q: want one of %s", cfg.Scenario, strings.Join(Scenarios, ", "))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	switch cfg.Target {
	case TargetKnowledgeHub:
		for _, name := range []string{"centrifugo-api-key", "channel"} {
			if set[name] {
				return &cli.ExitError{Code: 2, Err: fmt.Errorf("--%s is for --target centrifugo", name)}
			}
		}
		dir := *dataDir
		if dir == "" {
			dir = getenv(config.EnvName("data_dir"))
		}
		if dir == "" {
			dir = cli.DefaultDataDir
		}
		if cfg.Server, err = cli.ResolveServer(*server, dir, o); err != nil {
			return err
		}
		if cfg.TokenUser != "" {
			if cfg.Secret, err = cli.ResolveSecret(*secret, dir, o); err != nil {
				return err
			}
		}
		if cfg.Scenario != "idle" {
			if cfg.PublishKey, err = cli.ResolvePublishKey(*key, dir, o); err != nil {
				return err
			}
		}
	case TargetCentrifugo:
		for _, name := range []string{"key", "data-dir", "job"} {
			if set[name] {
				return &cli.ExitError{Code: 2, Err: fmt.Errorf("--%s is for --target knowledgehub (centrifugo: --centrifugo-api-key, --channel)", name)}
			}
		}
		cfg.Server = firstNonEmpty(*server, defaultCentrifugoServer)
		cfg.CentrifugoAPIKey = firstNonEmpty(*cfKey, strings.TrimSpace(getenv("CENTRIFUGO_HTTP_API_KEY")))
		if cfg.TokenUser != "" {
			cfg.Secret = firstNonEmpty(*secret, strings.TrimSpace(getenv("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY")))
			if cfg.Secret == "" {
				return &cli.ExitError{Code: 2, Err: errors.New("--token-user needs --secret (Centrifugo's client.token.hmac_secret_key) or $CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY")}
			}
		}
		if cfg.Scenario != "idle" && cfg.CentrifugoAPIKey == "" {
			return &cli.ExitError{Code: 2, Err: errors.New("--target centrifugo publishes with the HTTP API: pass --centrifugo-api-key (its http_api.key) or set $CENTRIFUGO_HTTP_API_KEY")}
		}
	default:
		return &cli.ExitError{Code: 2, Err: fmt.Errorf("--target %q: want %s", cfg.Target, strings.Join(Targets, " or "))}
	}
	if *sources != "" {
		if cfg.SourceAddrs, err = ParseSourceAddrs(*sources); err != nil {
			return &cli.ExitError{Code: 2, Err: err}
		}
	}
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return &cli.ExitError{Code: 2, Err: err}
	}

	var progress io.Writer
	if !*quiet {
		progress = stderr
		cfg.ProgressTTY = o.StderrTTY
	}
	res, err := Run(ctx, cfg, progress)
	if err != nil {
		return err
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		res.WriteTable(stdout)
	}
	if !res.OK {
		return &cli.ExitError{Code: 1, Err: fmt.Errorf("%s against %s: %d check(s) failed", cfg.Scenario, cfg.Target, len(res.Problems))}
	}
	return nil
}

// defaultCentrifugoServer is where Centrifugo listens by default.
const defaultCentrifugoServer = "http://127.0.0.1:8000"

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
