// Package cli implements the client commands of the knowledgehub binary:
// token (mint a development token), publish (POST events) and listen (print
// events as they arrive over WebSocket or Server-Sent Events, reconnecting
// with the last id). Each command is a function that takes its arguments, a
// context and an IO, so it can be tested without a process; cmd/knowledgehub
// only wires them to os.Stdout, os.Stderr and the signals.
//
// Credentials and the server address are looked up the same way by every
// command: a flag, else a KNOWLEDGEHUB_* environment variable, else the
// development credentials a local `knowledgehub serve` writes into its data
// directory (see package devkeys).
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/knowledgehub/realtime/internal/config"
	"github.com/knowledgehub/realtime/internal/devkeys"
)

// DefaultServer is the server URL used when no flag, variable or development
// credentials name one.
const DefaultServer = "http://127.0.0.1:3000"

// DefaultDataDir is the data directory used when neither --data-dir nor
// $KNOWLEDGEHUB_DATA_DIR is set; it is the server's default too.
const DefaultDataDir = "./data"

// IO is where a command writes and how it sees its environment.
type IO struct {
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads environment variables; nil means os.Getenv.
	Getenv func(string) string
	// StdoutTTY and StderrTTY report whether Stdout and Stderr are terminals:
	// listen prints readable coloured lines, and publish a progress bar, only
	// on terminals.
	StdoutTTY bool
	StderrTTY bool
}

// NewIO returns an IO writing to stdout and stderr, detecting terminals when
// they are *os.File.
func NewIO(stdout, stderr io.Writer) IO {
	return IO{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, StdoutTTY: IsTerminal(stdout), StderrTTY: IsTerminal(stderr)}
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (o IO) getenv(name string) string {
	if o.Getenv == nil {
		return os.Getenv(name)
	}
	return o.Getenv(name)
}

// ExitError is an error that chooses the process exit code: 2 for usage
// errors (bad flags or arguments), 1 for everything else.
type ExitError struct {
	Code int
	Err  error
}

// Error returns the message of the underlying error.
func (e *ExitError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode returns the process exit code.
func (e *ExitError) ExitCode() int { return e.Code }

// usageError is an error in the command line: exit code 2.
func usageError(format string, args ...any) error {
	return &ExitError{Code: 2, Err: fmt.Errorf(format, args...)}
}

// command is the flag set of one command, with its help text.
type command struct {
	name    string
	summary string // usage line and description, before the flags
	example string // examples, after the flags
	fs      *flag.FlagSet
}

func newCommand(name, summary, example string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &command{name: name, summary: summary, example: example, fs: fs}
}

// help writes the full help of the command.
func (c *command) help(w io.Writer) {
	fmt.Fprint(w, strings.TrimLeft(c.summary, "\n"))
	fmt.Fprint(w, "\nFlags:\n")
	c.fs.SetOutput(w)
	c.fs.PrintDefaults()
	c.fs.SetOutput(io.Discard)
	fmt.Fprint(w, "\nExamples:\n")
	fmt.Fprint(w, strings.TrimLeft(c.example, "\n"))
}

// parse parses args. --help prints the help on stdout and returns
// flag.ErrHelp (exit 0); anything wrong is a usage error (exit 2).
func (c *command) parse(args []string, stdout io.Writer) error {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.help(stdout)
			return flag.ErrHelp
		}
		return usageError("%v (run \"knowledgehub %s --help\" for usage)", err, c.name)
	}
	if c.fs.NArg() > 0 {
		return usageError("unexpected argument %q (run \"knowledgehub %s --help\" for usage)", c.fs.Arg(0), c.name)
	}
	return nil
}

// set reports whether the flag was given on the command line.
func (c *command) set(name string) bool {
	found := false
	c.fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			found = true
		}
	})
	return found
}

// dataDir returns the data directory: the flag, else $KNOWLEDGEHUB_DATA_DIR,
// else ./data.
func dataDir(flagValue string, o IO) string {
	if flagValue != "" {
		return flagValue
	}
	if v := o.getenv(config.EnvName("data_dir")); v != "" {
		return v
	}
	return DefaultDataDir
}

// devCredentials reads the development credentials of dir; ok is false when
// the file does not exist. Other problems (unreadable, malformed) are errors.
func devCredentials(dir string) (k devkeys.Keys, ok bool, err error) {
	k, err = devkeys.Load(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return k, false, nil
	}
	if err != nil {
		return k, false, err
	}
	return k, true, nil
}

// ResolveSecret returns the HS256 secret to mint tokens with: flagValue, else
// the first of $KNOWLEDGEHUB_JWT_SECRET, else the development credentials in
// dir.
func ResolveSecret(flagValue, dir string, o IO) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if list := config.SplitList(o.getenv(config.EnvName("jwt_secret"))); len(list) > 0 {
		return list[0], nil
	}
	k, ok, err := devCredentials(dir)
	if err != nil {
		return "", err
	}
	if !ok || k.JWTSecret == "" {
		return "", fmt.Errorf("no JWT secret: pass --secret, set $KNOWLEDGEHUB_JWT_SECRET, or start `knowledgehub serve` once with no credentials configured so that it creates %s (use --data-dir when the server runs with another data directory)", devkeys.Path(dir))
	}
	return k.JWTSecret, nil
}

// ResolvePublishKey returns the publish key: flagValue, else
// $KNOWLEDGEHUB_PUBLISH_KEY, else the first of $KNOWLEDGEHUB_PUBLISH_KEYS,
// else the development credentials in dir.
func ResolvePublishKey(flagValue, dir string, o IO) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if v := strings.TrimSpace(o.getenv("KNOWLEDGEHUB_PUBLISH_KEY")); v != "" {
		return v, nil
	}
	if list := config.SplitList(o.getenv(config.EnvName("publish_keys"))); len(list) > 0 {
		return list[0], nil
	}
	k, ok, err := devCredentials(dir)
	if err != nil {
		return "", err
	}
	if !ok || k.PublishKey == "" {
		return "", fmt.Errorf("no publish key: pass --key, set $KNOWLEDGEHUB_PUBLISH_KEY, or start `knowledgehub serve` once with no credentials configured so that it creates %s (use --data-dir when the server runs with another data directory)", devkeys.Path(dir))
	}
	return k.PublishKey, nil
}

// ResolveServer returns the server base URL: flagValue, else
// $KNOWLEDGEHUB_URL, else the url recorded in the development credentials of
// dir, else DefaultServer. It must be an http or https URL; a trailing slash
// is removed.
func ResolveServer(flagValue, dir string, o IO) (string, error) {
	raw := flagValue
	if raw == "" {
		raw = strings.TrimSpace(o.getenv("KNOWLEDGEHUB_URL"))
	}
	if raw == "" {
		if k, ok, err := devCredentials(dir); err == nil && ok && k.URL != "" {
			raw = k.URL
		}
	}
	if raw == "" {
		raw = DefaultServer
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usageError("server URL %q: want http://host:port or https://host", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(v string) []string { return config.SplitList(v) }
