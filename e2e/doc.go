// Package e2e holds end-to-end tests: real servers (internal/server/servertest)
// driven by real clients, the Node `ws` and `eventsource` packages and
// headless Chromium through playwright-core, all run from e2e/node.
//
// Before `go test ./e2e/`, install the Node packages once:
//
//	npm ci --prefix e2e/node
//
// The browser tests use the system Chromium (/usr/bin/chromium, or
// KH_CHROMIUM); playwright never downloads a browser here.
package e2e
