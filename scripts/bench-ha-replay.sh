#!/usr/bin/env bash
# Benchmark for issue 11 (BENCHMARKS.md "Time order"): `kubetrail replay` of one large
# generated input vs the same events dealt by auditID to three API servers' logs (merged by
# event time on replay): wall time, CPU and peak RSS from /usr/bin/time -v. Needs the release
# builds (`cargo build --release -p kubetrail -p kubetrail-gen --examples`). Big files go to
# a temporary directory under /tmp and are deleted at the end.
# Usage: scripts/bench-ha-replay.sh [namespaces (61 ≈ 400 MB)] [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
ns=${1:-61}
runs=${2:-2}
bin=target/release/kubetrail
gen=target/release/examples/dump
dir=$(mktemp -d /tmp/kubetrail-ha-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$gen" volume 42 "$ns" 5 3 2 1 >"$dir/merged.log" 2>"$dir/truth.txt"
mkdir -p "$dir"/node0 "$dir"/node1 "$dir"/node2
# Server = last hex digit of the auditID mod 3: every stage of a request on one server, each
# file in time order (as each kube-apiserver writes its own log).
awk -v d="$dir" '{
  s = 0
  if (match($0, /"auditID":"[^"]*"/)) {
    id = substr($0, RSTART + 11, RLENGTH - 12)
    n = index("0123456789abcdef", tolower(substr(id, length(id), 1)))
    if (n > 0) s = (n - 1) % 3
  }
  print > (d "/node" s "/audit.log")
}' "$dir/merged.log"
echo "input: $(wc -c <"$dir/merged.log") bytes, $(wc -l <"$dir/merged.log") lines; $(cat "$dir/truth.txt")"
for f in "$dir"/node*/audit.log; do echo "  $f: $(wc -c <"$f") bytes"; done
measure() {
  local label=$1
  shift
  /usr/bin/time -v "$bin" replay --cluster bench --otlp-json "$dir/out.jsonl" "$@" \
    2>"$dir/time.txt" >/dev/null || { cat "$dir/time.txt"; exit 1; }
  local wall rss user sys spans
  wall=$(grep 'Elapsed (wall clock)' "$dir/time.txt" | awk '{print $NF}')
  user=$(grep 'User time' "$dir/time.txt" | awk '{print $NF}')
  sys=$(grep 'System time' "$dir/time.txt" | awk '{print $NF}')
  rss=$(grep 'Maximum resident' "$dir/time.txt" | awk '{print $NF}')
  spans=$(wc -l <"$dir/out.jsonl")
  grep -E 'time order|spans' "$dir/time.txt" | head -3 | sed 's/^/    /'
  echo "$label: wall $wall, user ${user}s, sys ${sys}s, peak RSS $((rss / 1024)) MiB, $spans OTLP/JSON lines"
  rm -f "$dir/out.jsonl"
}
for r in $(seq "$runs"); do
  echo "run $r"
  measure "one input        " "$dir/merged.log"
  measure "three inputs     " "$dir"/node0/audit.log "$dir"/node1/audit.log "$dir"/node2/audit.log
  measure "three, sequential" --sequential "$dir"/node0/audit.log "$dir"/node1/audit.log "$dir"/node2/audit.log
done
