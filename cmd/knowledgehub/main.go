// Command knowledgehub is the KnowledgeHub Realtime gateway and its tools:
// serve runs the server; token, publish and listen talk to it; bench loads it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/knowledgehub/realtime/internal/config"
	"github.com/knowledgehub/realtime/internal/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `knowledgehub — real-time events over WebSocket and Server-Sent Events

Usage:
  knowledgehub serve [flags]      run the server (defaults: :3000, disk store in ./data)
  knowledgehub token [flags]      mint a development token
  knowledgehub publish [flags]    publish events
  knowledgehub listen [flags]     print events as they arrive
  knowledgehub bench [flags]      load-test a server on this machine
  knowledgehub version            print the version

Run "knowledgehub <command> --help" for the flags and examples of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "serve":
		err = serve(rest, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "knowledgehub", version)
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		if c, ok := commands[cmd]; ok {
			err = c(rest, stdout, stderr)
			break
		}
		fmt.Fprintf(stderr, "knowledgehub: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "knowledgehub %s: %v\n", cmd, err)
		var ec exitCoder
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

// exitCoder is an error that chooses the process exit code.
type exitCoder interface{ ExitCode() int }

// commands are the client tools, registered by their files.
var commands = map[string]func(args []string, stdout, stderr io.Writer) error{}

func serve(args []string, stderr io.Writer) error {
	cfg, err := config.Load(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	logger := newLogger(cfg.LogFormat, cfg.LogLevel, stderr)
	slog.SetDefault(logger)
	if os.Getenv("GOGC") == "" {
		// A gateway's heap is mostly long-lived connections: collecting at
		// 50 % growth instead of 100 % keeps idle memory per connection
		// about a fifth lower for a little more GC work (BENCHMARKS.md).
		debug.SetGCPercent(50)
	}
	srv, err := server.New(cfg, logger)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return srv.Run(ctx)
}

func newLogger(format, level string, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(strings.ToUpper(level)))
	opts := &slog.HandlerOptions{Level: lvl}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
