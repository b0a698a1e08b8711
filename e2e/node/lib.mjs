// Shared plumbing of the drivers the Go tests in ../ run (go test ./e2e/).
//
// A driver reads commands from stdin, one JSON object per line ({"op": ...}),
// runs them one at a time, and reports everything it sees on stdout, one
// JSON object per line ({"ev": ...}). The Go test decides what is right;
// a driver only fails on its own (exit 1, after an {"ev":"fatal"} line) when
// a command cannot be carried out, and a watchdog (KH_DEADLINE_MS) ends it
// if the Go side never says exit.
import readline from 'node:readline';

/** Writes one JSON line to stdout (synchronous on a pipe). */
export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

/** Reports a fatal error and exits non-zero. */
export function fail(message) {
  emit({ev: 'fatal', message: String(message)});
  process.exit(1);
}

/**
 * Runs handler(cmd) for every command line, strictly in order. The handler
 * returns true to stop reading (exit). End of stdin counts as {"op":"exit"}.
 */
export function serveCommands(handler) {
  const deadline = Number(process.env.KH_DEADLINE_MS || 60000);
  const watchdog = setTimeout(() => fail(`watchdog: still running after ${deadline} ms`), deadline);
  watchdog.unref();
  process.on('unhandledRejection', (err) => fail(`unhandled rejection: ${err?.stack || err}`));
  process.on('uncaughtException', (err) => fail(`uncaught exception: ${err?.stack || err}`));

  let chain = Promise.resolve();
  let stopped = false;
  const run = (cmd) => {
    chain = chain.then(async () => {
      if (stopped) return;
      try {
        if (await handler(cmd)) stopped = true;
      } catch (err) {
        fail(`command ${JSON.stringify(cmd)}: ${err?.stack || err}`);
      }
      if (cmd.seq !== undefined) emit({ev: 'done', seq: cmd.seq});
    });
  };
  const rl = readline.createInterface({input: process.stdin, crlfDelay: Infinity});
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch {
      fail(`not a JSON command: ${line}`);
    }
    run(cmd);
  });
  rl.on('close', () => run({op: 'exit'}));
}

/** Parses text as JSON, or returns undefined. */
export function tryJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
