#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine: installs what the
# tests need when it is missing (redis-server, chromium, Node's packages of
# e2e/node from the lock file), checks formatting and vet, then runs all Go
# tests with the race detector. The tests start their own redis-server and
# servers on free 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: please install: ${missing[*]} (sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
fi

echo "test.sh: npm ci (e2e/node)"
npm ci --prefix e2e/node --no-audit --no-fund --loglevel=error

echo "test.sh: gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './e2e/node/*'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...

echo "test.sh: staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "test.sh: go test -race ./..."
go test -race -count=1 -timeout 20m "$@" ./...
