#!/usr/bin/env bash
# Runs kubetrail's coverage-guided fuzz targets (fuzz/, cargo fuzz + libFuzzer) for a bounded
# time each, from the committed corpus (fuzz/corpus/<target>, seeded with the real audit
# samples). CI runs it with the default 60 s per target; run it longer by hand:
#
#   bash scripts/fuzz.sh 3600            # an hour per target
#   bash scripts/fuzz.sh 600 redact      # one target
#
# New inputs libFuzzer finds go to .tools/fuzz-corpus/<target> (not the committed corpus;
# copy interesting ones into fuzz/corpus/ by hand, after `cargo fuzz cmin`). A crash or a
# hang (-timeout, 10 s per input) fails the run and leaves the input in fuzz/artifacts/<target>/;
# turn it into a regression test in the crate it broke. Needs the nightly toolchain (rustup
# installs it here when missing) and cargo-fuzz (installed into .tools/, keyed by version).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode_input webhook_body redact)
fi

CARGO_FUZZ_VERSION=0.13.2
tools="$PWD/.tools"
fuzz_home="$tools/cargo-fuzz-$CARGO_FUZZ_VERSION"
mkdir -p "$tools"
exec 9>"$tools/cargo-fuzz.lock"
flock 9
if [ ! -x "$fuzz_home/bin/cargo-fuzz" ]; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $fuzz_home" >&2
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$fuzz_home"
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain (libFuzzer's instrumentation needs it)" >&2
    rustup toolchain install nightly --profile minimal
fi
flock -u 9
export PATH="$fuzz_home/bin:$PATH"

cd fuzz
# No sanitizer: the code is #![forbid(unsafe_code)], so AddressSanitizer would find nothing
# libFuzzer's own checks do not, at several times the cost. Debug assertions stay on.
log_dir="$tools/fuzz-logs"
mkdir -p "$log_dir"
if ! cargo +nightly fuzz build --sanitizer none >"$log_dir/build.log" 2>&1; then
    tail -n 40 "$log_dir/build.log" >&2
    echo "fuzz: build failed (log: $log_dir/build.log)" >&2
    exit 1
fi
for t in "${targets[@]}"; do
    scratch="$tools/fuzz-corpus/$t"
    mkdir -p "$scratch"
    echo "== fuzz $t for ${seconds}s (corpus: fuzz/corpus/$t, $(ls "corpus/$t" | wc -l) seeds)"
    # The scratch directory first: libFuzzer writes what it finds into the first one.
    rc=0
    cargo +nightly fuzz run --sanitizer none "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log_dir/$t.log" 2>&1 || rc=$?
    grep -E "^(#[0-9]+.*DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added)" \
        "$log_dir/$t.log" || true
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log_dir/$t.log" >&2
        echo "fuzz: $t failed (exit $rc); the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
