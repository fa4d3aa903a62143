#!/usr/bin/env bash
# Builds the real Jaeger v2 all-in-one (an OpenTelemetry-collector distribution: OTLP gRPC and
# HTTP receivers, in-memory storage, the HTTP query API Jaeger UI uses) from the Go module
# proxy into .tools/jaeger-<version>/jaeger, for the integration tests (kubetrail-testkit's
# `Jaeger`) and `just jaeger`. Pinned by module version; a second run builds nothing.
#
# Needs Go (1.26+) and the Go module proxy. Prints the binary's path on its last line.
# Environment: JAEGER_VERSION (default below), GOTOOLCHAIN passes through to go.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
version="${JAEGER_VERSION:-v1.76.0}"
dir="$root/.tools/jaeger-$version"
bin="$dir/jaeger"

if [[ -x "$bin" ]]; then
    echo "jaeger: $bin already built" >&2
    echo "$bin"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "install-jaeger: go is needed (Go 1.26+ with the module proxy)" >&2
    exit 1
fi
mkdir -p "$dir"
# Serialise concurrent installs (several test binaries may ask at once).
exec 9>"$dir.lock"
flock 9
if [[ -x "$bin" ]]; then echo "$bin"; exit 0; fi

start=$(date +%s)
tmp="$(mktemp -d "$dir/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# Module cache inside .tools so a fresh machine's build is self-contained and cacheable.
export GOMODCACHE="${GOMODCACHE:-$root/.tools/go/mod}"
export GOCACHE="${GOCACHE:-$root/.tools/go/cache}"
export GOFLAGS="-buildvcs=false -modcacherw"
export CGO_ENABLED=0
# `go install module@version` refuses modules with replace directives (Jaeger's go.mod has
# one), so the module's own source is built as the main module: its go.mod, replace and
# go.sum (which pins every dependency) apply exactly as in Jaeger's own release build.
src="$(go mod download -json "github.com/jaegertracing/jaeger@$version" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$src" || ! -d "$src" ]]; then
    echo "install-jaeger: could not download github.com/jaegertracing/jaeger@$version" >&2
    exit 1
fi
(cd "$src" && go build -trimpath -ldflags "-s -w" -o "$tmp/jaeger" ./cmd/jaeger) >&2
mv -f "$tmp/jaeger" "$bin"
echo "jaeger: built $bin in $(( $(date +%s) - start )) s" >&2
echo "$bin"
