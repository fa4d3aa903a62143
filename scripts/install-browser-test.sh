#!/usr/bin/env bash
# Installs what the HTML report's browser test needs (crates/kubetrail/tests/html_report_browser.rs
# runs it itself): Debian's Chromium (/usr/bin/chromium, apt package `chromium`) and the pinned
# npm package in scripts/browser-test (playwright-core, driving that Chromium; never its own
# browser download), installed with `npm ci` into .tools/browser-test-<lock hash>/.
#
# Idempotent and safe to run concurrently (flock on .tools/browser-test.lock): does nothing when
# both are already there. Needs root (or passwordless sudo) for apt the first time, Node.js ≥ 20
# with npm, and access to Debian's archive and the npm registry. Prints the directory holding
# node_modules on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
mkdir -p "$root/.tools"
exec 9>"$root/.tools/browser-test.lock"
flock 9

if [[ ! -x /usr/bin/chromium ]]; then
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo="sudo -n"; fi
    echo "install-browser-test: installing Debian's chromium (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq --no-install-recommends chromium >&2
fi
/usr/bin/chromium --version >&2

src="$root/scripts/browser-test"
key="$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)"
dest="$root/.tools/browser-test-$key"
if [[ ! -f "$dest/.installed" ]]; then
    echo "install-browser-test: npm ci into $dest" >&2
    rm -rf "$dest"
    mkdir -p "$dest"
    cp "$src/package.json" "$src/package-lock.json" "$dest/"
    # --ignore-scripts: playwright-core has no install step we need (and must not fetch a browser).
    (cd "$dest" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    touch "$dest/.installed"
fi
echo "$dest"
