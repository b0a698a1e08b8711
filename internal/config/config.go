// Package config reads the server settings of SPEC §8 from flags,
// KNOWLEDGEHUB_* environment variables and an optional YAML file, in that
// order of precedence, and holds every default in one table.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the effective configuration of a server.
type Config struct {
	Addr              string
	Store             string // disk, memory or redis
	DataDir           string
	RedisURL          string
	RedisPrefix       string
	JWTSecrets        []string
	JWKS              string
	JWTIssuer         string
	JWTAudience       string
	PublishKeys       []string
	AdminKeys         []string
	AllowedOrigins    []string // empty: the server's own localhost origins
	SSEAllowedOrigins []string
	EventTypes        []string // extra types besides the defaults
	HistorySize       int
	HistoryTTL        time.Duration
	MaxConnections    int
	MaxConnsPerUser   int
	MaxConnsPerIP     int
	ConnectRatePerIP  float64
	ConnectRatePerUsr float64
	TrustedProxies    []string
	TLSCertFile       string
	TLSKeyFile        string
	MaxEventBytes     int
	MaxMessageBytes   int
	MaxBodyBytes      int
	MaxBatch          int
	MaxSubscriptions  int
	MaxQueueBytes     int
	MessageRate       float64
	PingInterval      time.Duration
	SSEKeepalive      time.Duration
	SSERetry          time.Duration
	ShutdownTimeout   time.Duration
	PprofAddr         string
	SendBatching      string
	LogFormat         string
	LogLevel          string
	ConfigFile        string
}

// setting is one row of the configuration table.
type setting struct {
	key  string
	def  string
	help string
	set  func(c *Config, v string) error
}

func str(dst func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *dst(c) = v; return nil }
}

func list(dst func(*Config) *[]string) func(*Config, string) error {
	return func(c *Config, v string) error { *dst(c) = SplitList(v); return nil }
}

func integer(dst func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return fmt.Errorf("want a whole number >= 0, got %q", v)
		}
		*dst(c) = n
		return nil
	}
}

func number(dst func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || n < 0 {
			return fmt.Errorf("want a number >= 0, got %q", v)
		}
		*dst(c) = n
		return nil
	}
}

func duration(dst func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < 0 {
			return fmt.Errorf("want a duration such as 30s, 15m or 24h, got %q", v)
		}
		*dst(c) = d
		return nil
	}
}

// settings is the configuration table: every key, its default and meaning.
var settings = []setting{
	{"addr", ":3000", "listen address", str(func(c *Config) *string { return &c.Addr })},
	{"store", "disk", "event log: disk (embedded, in data_dir), memory, or redis", str(func(c *Config) *string { return &c.Store })},
	{"data_dir", "./data", "where the disk store and the development keys live", str(func(c *Config) *string { return &c.DataDir })},
	{"redis_url", "", "Redis for store: redis (redis://host:6379/0); every node on the same Redis forms one hub", str(func(c *Config) *string { return &c.RedisURL })},
	{"redis_prefix", "knowledgehub", "prefix of the Redis keys of this hub", str(func(c *Config) *string { return &c.RedisPrefix })},
	{"jwt_secret", "", "HMAC secret(s) for HS256 tokens, comma-separated for rotation", list(func(c *Config) *[]string { return &c.JWTSecrets })},
	{"jwks", "", "JWKS document (file path or http(s) URL) with RSA/ECDSA/EdDSA keys", str(func(c *Config) *string { return &c.JWKS })},
	{"jwt_issuer", "", "required iss claim, when set", str(func(c *Config) *string { return &c.JWTIssuer })},
	{"jwt_audience", "", "required aud claim, when set", str(func(c *Config) *string { return &c.JWTAudience })},
	{"publish_keys", "", "API keys accepted by the publish API", list(func(c *Config) *[]string { return &c.PublishKeys })},
	{"admin_keys", "", "API keys accepted by the admin API (disconnect, revoke)", list(func(c *Config) *[]string { return &c.AdminKeys })},
	{"allowed_origins", "", "WebSocket origins: exact, https://*.example.com patterns, or *; default: the server's own localhost origins", list(func(c *Config) *[]string { return &c.AllowedOrigins })},
	{"sse_allowed_origins", "*", "value(s) for the SSE CORS headers", list(func(c *Config) *[]string { return &c.SSEAllowedOrigins })},
	{"event_types", "", "extra event types to accept besides the five defaults", list(func(c *Config) *[]string { return &c.EventTypes })},
	{"history_size", "10000", "events the store keeps for resume and history", integer(func(c *Config) *int { return &c.HistorySize })},
	{"history_ttl", "24h", "how long the store keeps events", duration(func(c *Config) *time.Duration { return &c.HistoryTTL })},
	{"max_connections", "100000", "all connections of this node", integer(func(c *Config) *int { return &c.MaxConnections })},
	{"max_connections_per_user", "100", "concurrent connections of one user", integer(func(c *Config) *int { return &c.MaxConnsPerUser })},
	{"max_connections_per_ip", "1000", "concurrent connections from one IP", integer(func(c *Config) *int { return &c.MaxConnsPerIP })},
	{"connect_rate_per_ip", "20", "new connections per second from one IP (burst of twice that)", number(func(c *Config) *float64 { return &c.ConnectRatePerIP })},
	{"connect_rate_per_user", "10", "new connections per second of one user (burst of twice that)", number(func(c *Config) *float64 { return &c.ConnectRatePerUsr })},
	{"trusted_proxies", "", "proxies (IPs or CIDRs) whose X-Forwarded-For / Forwarded headers are believed", list(func(c *Config) *[]string { return &c.TrustedProxies })},
	{"tls_cert_file", "", "serve HTTPS and WSS with this certificate", str(func(c *Config) *string { return &c.TLSCertFile })},
	{"tls_key_file", "", "private key of tls_cert_file", str(func(c *Config) *string { return &c.TLSKeyFile })},
	{"max_event_bytes", "65536", "an event's encoded data", integer(func(c *Config) *int { return &c.MaxEventBytes })},
	{"max_message_bytes", "4096", "an inbound WebSocket message", integer(func(c *Config) *int { return &c.MaxMessageBytes })},
	{"max_body_bytes", "4194304", "a publish request body", integer(func(c *Config) *int { return &c.MaxBodyBytes })},
	{"max_batch", "1000", "events in one publish batch", integer(func(c *Config) *int { return &c.MaxBatch })},
	{"max_subscriptions", "100", "job subscriptions per connection", integer(func(c *Config) *int { return &c.MaxSubscriptions })},
	{"max_queue_bytes", "1048576", "bytes queued for one connection before it is a slow consumer", integer(func(c *Config) *int { return &c.MaxQueueBytes })},
	{"message_rate", "20", "inbound WebSocket messages per second per connection (burst of twice that)", number(func(c *Config) *float64 { return &c.MessageRate })},
	{"ping_interval", "25s", "WebSocket ping interval; a peer silent for 2.5 intervals is closed", duration(func(c *Config) *time.Duration { return &c.PingInterval })},
	{"sse_keepalive", "15s", "SSE keepalive comment interval", duration(func(c *Config) *time.Duration { return &c.SSEKeepalive })},
	{"sse_retry", "3s", "the retry: the SSE stream advises browsers", duration(func(c *Config) *time.Duration { return &c.SSERetry })},
	{"shutdown_timeout", "10s", "how long a graceful shutdown may take", duration(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
	{"pprof_addr", "", "serve Go's /debug/pprof profiles on this address (e.g. 127.0.0.1:6060); off when empty", str(func(c *Config) *string { return &c.PprofAddr })},
	{"send_batching", "auto", "auto: send each fan-out round's writes with one io_uring submission where the kernel allows it; off: one write(2) per delivery", str(func(c *Config) *string { return &c.SendBatching })},
	{"log_format", "text", "text or json", str(func(c *Config) *string { return &c.LogFormat })},
	{"log_level", "info", "debug, info, warn or error", str(func(c *Config) *string { return &c.LogLevel })},
}

// FlagName returns the flag of a key: jwt_secret -> jwt-secret.
func FlagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

// EnvName returns the environment variable of a key.
func EnvName(key string) string { return "KNOWLEDGEHUB_" + strings.ToUpper(key) }

// SplitList splits a comma-separated list, dropping blanks.
func SplitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Load parses args (the flags after "serve"), the environment and the file
// named by --config (or KNOWLEDGEHUB_CONFIG). Any setting that makes no
// sense is an error that names it.
func Load(args []string, getenv func(string) string, usage io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(usage)
	values := make(map[string]*string, len(settings))
	for _, s := range settings {
		values[s.key] = fs.String(FlagName(s.key), s.def, s.help+" ($"+EnvName(s.key)+")")
	}
	configFile := fs.String("config", getenv("KNOWLEDGEHUB_CONFIG"), "YAML file with settings ($KNOWLEDGEHUB_CONFIG)")
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage: knowledgehub serve [flags]\n\nRuns the gateway. Every flag can also be set as an environment variable or a key of the --config YAML file;\nflags win over the environment, the environment over the file.\n\nExample:\n  knowledgehub serve --addr :3000 --store disk --data-dir ./data\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	raw := make(map[string]string, len(settings))
	for _, s := range settings {
		raw[s.key] = s.def
	}
	if *configFile != "" {
		fileValues, err := readFile(*configFile)
		if err != nil {
			return nil, err
		}
		for k, v := range fileValues {
			raw[k] = v
		}
	}
	for _, s := range settings {
		if v, ok := lookupEnv(getenv, EnvName(s.key)); ok {
			raw[s.key] = v
		}
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "config" {
			raw[strings.ReplaceAll(f.Name, "-", "_")] = *values[strings.ReplaceAll(f.Name, "-", "_")]
		}
	})
	c := &Config{ConfigFile: *configFile}
	for _, s := range settings {
		if err := s.set(c, raw[s.key]); err != nil {
			return nil, fmt.Errorf("setting %s: %w", s.key, err)
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func lookupEnv(getenv func(string) string, name string) (string, bool) {
	if getenv == nil {
		return "", false
	}
	v := getenv(name)
	return v, v != ""
}

func readFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	known := make(map[string]bool, len(settings))
	for _, s := range settings {
		known[s.key] = true
	}
	out := make(map[string]string, len(doc))
	for k, v := range doc {
		if !known[k] {
			return nil, fmt.Errorf("config file %s: unknown setting %q", path, k)
		}
		switch t := v.(type) {
		case []any:
			parts := make([]string, len(t))
			for i, p := range t {
				parts[i] = fmt.Sprint(p)
			}
			out[k] = strings.Join(parts, ",")
		case nil:
			out[k] = ""
		default:
			out[k] = fmt.Sprint(t)
		}
	}
	return out, nil
}

func (c *Config) validate() error {
	switch c.Store {
	case "disk", "memory":
	case "redis":
		if c.RedisURL == "" {
			return errors.New("setting redis_url: required with store: redis")
		}
	default:
		return fmt.Errorf("setting store: unknown store %q (want disk, memory or redis)", c.Store)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("setting addr: %q is not host:port: %v", c.Addr, err)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("settings tls_cert_file and tls_key_file: set both or neither")
	}
	switch c.SendBatching {
	case "auto", "off":
	default:
		return fmt.Errorf("setting send_batching: %q (want auto or off)", c.SendBatching)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("setting log_format: %q (want text or json)", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("setting log_level: %q (want debug, info, warn or error)", c.LogLevel)
	}
	if c.HistorySize == 0 {
		return errors.New("setting history_size: must be at least 1")
	}
	if c.MaxEventBytes == 0 || c.MaxMessageBytes == 0 || c.MaxBodyBytes == 0 || c.MaxQueueBytes == 0 {
		return errors.New("settings max_event_bytes, max_message_bytes, max_body_bytes, max_queue_bytes: must be positive")
	}
	if c.PingInterval < time.Second || c.SSEKeepalive < time.Second {
		return errors.New("settings ping_interval and sse_keepalive: at least 1s")
	}
	return nil
}

// Port returns the port of Addr.
func (c *Config) Port() string {
	_, port, _ := net.SplitHostPort(c.Addr)
	return port
}

// Keys returns the setting keys with defaults and help, for documentation.
func Keys() [][3]string {
	out := make([][3]string, len(settings))
	for i, s := range settings {
		out[i] = [3]string{s.key, s.def, s.help}
	}
	return out
}
