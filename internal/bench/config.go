// Package bench load-tests a KnowledgeHub Realtime server on this machine:
// `knowledgehub bench idle|fanout|publish|resume`. Each scenario is a
// function taking a Config and a progress writer and returning a Result;
// the command in cmd.go parses flags and prints the result as a table or
// JSON. With Config.Target "centrifugo", idle and fanout load a Centrifugo
// v6 server the same way, for comparisons (centrifugo.go).
//
// Only loopback servers are accepted: the tool opens thousands of
// connections and publishes as fast as asked, which is not something to
// point at a machine by accident.
package bench

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Scenarios are the names of the scenarios.
var Scenarios = []string{"idle", "fanout", "publish", "resume"}

// The servers the bench can load: TargetKnowledgeHub (every scenario) and
// TargetCentrifugo, a Centrifugo v6 server spoken to with its JSON
// WebSocket protocol and its HTTP API, for side-by-side comparisons (idle
// and fanout).
const (
	TargetKnowledgeHub = "knowledgehub"
	TargetCentrifugo   = "centrifugo"
)

// Targets are the names of the targets.
var Targets = []string{TargetKnowledgeHub, TargetCentrifugo}

// CentrifugoScenarios are the scenarios that --target centrifugo runs.
var CentrifugoScenarios = []string{"idle", "fanout"}

// Config describes one run.
type Config struct {
	// Scenario is idle, fanout, publish or resume.
	Scenario string
	// Target is the kind of server: knowledgehub (default) or centrifugo.
	Target string
	// Server is the base URL, http://127.0.0.1:3000. Loopback only.
	Server string
	// Transport of the connections: ws, sse or both (alternating).
	Transport string
	// N is the number of connections (idle, fanout, resume).
	N int

	// Secret and TokenUser: when TokenUser is set, every connection is
	// authenticated with an HS256 token for that user minted with Secret;
	// a "%d" in TokenUser is replaced by the connection's index, so that
	// every connection is its own user. TokenTTL > 0 sets exp.
	Secret    string
	TokenUser string
	TokenTTL  time.Duration
	// PublishKey authenticates the publish API (fanout, publish, resume).
	PublishKey string

	// Centrifugo target: CentrifugoAPIKey is its http_api.key (sent as
	// X-API-Key; empty for a server with http_api.insecure), Channel the
	// channel every connection subscribes to and every event is published
	// to. Secret, when TokenUser is set, is its
	// client.token.hmac_secret_key.
	CentrifugoAPIKey string
	Channel          string

	// ServerPID is the server process, for RSS and CPU; 0 finds the process
	// listening on the server's port, -1 disables.
	ServerPID int

	// ConnectConcurrency dials this many connections at a time;
	// ConnectRate, when > 0, caps new connections per second.
	ConnectConcurrency int
	ConnectRate        float64
	// ConnectTimeout bounds one dial + handshake + welcome.
	ConnectTimeout time.Duration
	// ConnectAttempts is how many times one connection is tried (429
	// answers wait their Retry-After, capped at 5 s).
	ConnectAttempts int
	// SourceAddrs are the loopback source addresses the connections rotate
	// over; empty: 127.0.0.1, or 127.0.0.2.. when N exceeds what one
	// address has ephemeral ports for.
	SourceAddrs []netip.Addr

	// RSSBaseline, when > 0, is the server's RSS before any bench process
	// connected (bytes): idle then also reports (RSS - RSSBaseline) divided
	// by the server's connection gauge, which stays right when several
	// bench processes load one server together.
	RSSBaseline int64

	// Settle is the wait after the last welcome before memory is sampled
	// (idle), or before the replay clock is read (resume).
	Settle time.Duration
	// Hold keeps the idle connections open this long after the sample.
	Hold time.Duration
	// Duration is how long fanout and publish publish.
	Duration time.Duration
	// Drain is how long fanout waits after the last publish for the
	// deliveries still in flight, and resume for the replays.
	Drain time.Duration
	// Timeout stops the whole run, whatever phase it is in.
	Timeout time.Duration

	// Rate is the events published per second (fanout).
	Rate float64
	// Batch is the events per publish request.
	Batch int
	// Concurrency is the number of concurrent publish requests.
	Concurrency int
	// Events is the number of events published while the clients are
	// away (resume).
	Events int
	// EventSize is the approximate size of one event's JSON in bytes.
	EventSize int
	// EventType is the type of the published events.
	EventType string
	// JobID, when set, publishes the events to this job and subscribes the
	// connections to it (job_ids).
	JobID string

	// ProgressTTY says the progress writer is a terminal: the status line
	// is rewritten in place once a second; otherwise a line is written
	// every ten seconds.
	ProgressTTY bool
}

// Defaults fills the zero fields with the defaults.
func (c *Config) Defaults() {
	if c.Target == "" {
		c.Target = TargetKnowledgeHub
	}
	if c.Channel == "" {
		c.Channel = "bench"
	}
	if c.Transport == "" {
		c.Transport = "ws"
	}
	if c.N == 0 {
		c.N = 100
	}
	if c.ConnectConcurrency == 0 {
		c.ConnectConcurrency = 64
		if c.Scenario == "resume" {
			c.ConnectConcurrency = 1000 // "all at once", within reason
		}
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 15 * time.Second
	}
	if c.ConnectAttempts == 0 {
		c.ConnectAttempts = 5
	}
	if c.Settle == 0 {
		c.Settle = 3 * time.Second
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Drain == 0 {
		c.Drain = 15 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Rate == 0 {
		c.Rate = 100
	}
	if c.Batch == 0 {
		c.Batch = 1
		if c.Scenario == "resume" {
			c.Batch = 100
		}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 2
		if c.Scenario == "publish" {
			c.Concurrency = 8
		}
	}
	if c.Events == 0 {
		c.Events = 100
	}
	if c.EventSize == 0 {
		c.EventSize = 200
	}
	if c.EventType == "" {
		c.EventType = "CODE_CHANGE"
	}
}

// Validate checks the configuration, including that the server and the
// source addresses are on this machine.
func (c *Config) Validate() error {
	known := false
	for _, s := range Scenarios {
		known = known || s == c.Scenario
	}
	if !known {
		return fmt.Errorf("unknown scenario %q: want one of %s", c.Scenario, strings.Join(Scenarios, ", "))
	}
	if _, _, err := serverAddr(c.Server); err != nil {
		return err
	}
	switch c.Target {
	case TargetKnowledgeHub:
	case TargetCentrifugo:
		if !slices.Contains(CentrifugoScenarios, c.Scenario) {
			return fmt.Errorf("--target centrifugo runs %s, not %s", strings.Join(CentrifugoScenarios, " and "), c.Scenario)
		}
		if c.Transport != "ws" {
			return fmt.Errorf("--target centrifugo: --transport %q: only ws (Centrifugo's bidirectional JSON protocol)", c.Transport)
		}
		if c.JobID != "" {
			return errors.New("--job is for knowledgehub: Centrifugo connections subscribe to --channel")
		}
		if err := validChannel(c.Channel); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--target %q: want %s", c.Target, strings.Join(Targets, " or "))
	}
	switch c.Transport {
	case "ws", "sse", "both":
	default:
		return fmt.Errorf("--transport %q: want ws, sse or both", c.Transport)
	}
	if c.Scenario != "publish" && c.N < 1 {
		return errors.New("--n must be at least 1")
	}
	if c.TokenUser != "" && c.Secret == "" {
		return errors.New("--token-user needs a secret: --secret, $KNOWLEDGEHUB_JWT_SECRET or the development credentials")
	}
	if c.Target == TargetKnowledgeHub && c.Scenario != "idle" && c.PublishKey == "" {
		return errors.New("no publish key: --key, $KNOWLEDGEHUB_PUBLISH_KEY or the development credentials")
	}
	for _, a := range c.SourceAddrs {
		if !a.IsLoopback() {
			return fmt.Errorf("source address %s is not a loopback address", a)
		}
	}
	if c.Batch < 1 || c.Batch > 10000 {
		return fmt.Errorf("--batch %d: want 1..10000", c.Batch)
	}
	if c.Concurrency < 1 || c.ConnectConcurrency < 1 {
		return errors.New("--concurrency and --connect-concurrency must be at least 1")
	}
	if c.Rate <= 0 {
		return errors.New("--rate must be > 0")
	}
	if c.Events < 1 {
		return errors.New("--events must be at least 1")
	}
	if c.EventSize < 0 || c.EventSize > 60000 {
		return fmt.Errorf("--size %d: want 0..60000", c.EventSize)
	}
	if c.Duration <= 0 || c.Timeout <= 0 || c.ConnectTimeout <= 0 {
		return errors.New("--duration, --timeout and --connect-timeout must be > 0")
	}
	return nil
}

// validChannel accepts what Centrifugo's default channel options accept
// and the bench can put in JSON and a frame without escaping surprises.
func validChannel(ch string) error {
	if ch == "" || len(ch) > 255 {
		return fmt.Errorf("--channel %q: want 1 to 255 bytes", ch)
	}
	for _, r := range ch {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return fmt.Errorf("--channel %q: no quotes, backslashes or control characters", ch)
		}
	}
	return nil
}

// serverAddr checks that raw is an http URL of a loopback address and
// returns its host:port and IP.
func serverAddr(raw string) (hostPort string, ip netip.Addr, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", ip, fmt.Errorf("server URL %q: want http://127.0.0.1:PORT", raw)
	}
	if u.Scheme != "http" {
		return "", ip, fmt.Errorf("server URL %q: bench speaks plain http to a server on this machine (loopback); terminate TLS elsewhere", raw)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	if strings.EqualFold(host, "localhost") {
		host = "127.0.0.1"
	}
	ip, err = netip.ParseAddr(host)
	if err != nil {
		return "", ip, fmt.Errorf("server %q: bench only loads this machine: give a loopback IP such as 127.0.0.1 or ::1", host)
	}
	ip = ip.Unmap()
	if !ip.IsLoopback() {
		return "", ip, fmt.Errorf("server %s is not a loopback address: bench only loads this machine (127.0.0.0/8 or ::1)", ip)
	}
	return net.JoinHostPort(ip.String(), port), ip, nil
}

// ParseSourceAddrs parses "127.0.0.2-127.0.0.9,127.0.0.20" into addresses.
func ParseSourceAddrs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("source address %q: %v", lo, err)
		}
		b := a
		if isRange {
			if b, err = netip.ParseAddr(strings.TrimSpace(hi)); err != nil {
				return nil, fmt.Errorf("source address %q: %v", hi, err)
			}
		}
		if b.Less(a) {
			return nil, fmt.Errorf("source range %q: end before start", part)
		}
		for x := a; ; x = x.Next() {
			if !x.IsLoopback() {
				return nil, fmt.Errorf("source address %s is not a loopback address", x)
			}
			out = append(out, x)
			if x == b {
				break
			}
			if len(out) >= 4096 {
				return nil, fmt.Errorf("source range %q: more than 4096 addresses", part)
			}
		}
	}
	return out, nil
}

// sources returns the source addresses to rotate over: the configured ones,
// else none (the kernel picks 127.0.0.1) while N fits in one address's
// ephemeral ports, else 127.0.0.2 onwards, each carrying at most 85 % of
// the port range.
func (c *Config) sources(serverIP netip.Addr) []netip.Addr {
	if len(c.SourceAddrs) > 0 {
		return c.SourceAddrs
	}
	perAddr := localPortRange() * 85 / 100
	if c.N <= perAddr || serverIP.Is6() {
		return nil
	}
	k := (c.N + perAddr - 1) / perAddr
	out := make([]netip.Addr, 0, k)
	a := netip.AddrFrom4([4]byte{127, 0, 0, 2})
	for range k {
		out = append(out, a)
		a = a.Next()
	}
	return out
}
