#!/usr/bin/env bash
# Benchmark for issue 11 (BENCHMARKS.md "Time order"): the latency of a request span in
# `kubetrail serve` from the POST of its audit event (stamped with the wall clock, as a live
# API server does) until the span is in the OTLP/JSON output, at a given lateness (the
# default 5 s, and 0 s to compare). Needs the release build of kubetrail.
# Usage: scripts/bench-serve-latency.sh [samples] [lateness ...]
set -euo pipefail
cd "$(dirname "$0")/.."
samples=${1:-5}
shift || true
latenesses=("$@")
[ ${#latenesses[@]} -gt 0 ] || latenesses=(5s 0s)
bin=target/release/kubetrail
dir=$(mktemp -d /tmp/kubetrail-latency.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
event() { # auditID, timestamp
  printf '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"%s","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/bench/configmaps","verb":"create","user":{"username":"bench"},"userAgent":"kubectl/v1.30.0","sourceIPs":["127.0.0.1"],"objectRef":{"resource":"configmaps","namespace":"bench","name":"%s","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"responseObject":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"%s","namespace":"bench","uid":"uid-%s"}},"requestReceivedTimestamp":"%s","stageTimestamp":"%s"}]}' "$1" "$1" "$1" "$1" "$2" "$2"
}
# A minimal OTLP/HTTP receiver (the OTLP/JSON file sink writes at the end only): appends
# every protobuf body it is sent to $dir/received (auditIDs are plain strings in it).
cat >"$dir/sink.py" <<'PY'
import http.server, sys
out = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
python3 "$dir/sink.py" "$dir/received" >"$dir/sink.port" &
sink=$!
trap 'kill $sink 2>/dev/null; cleanup' EXIT
until [ -s "$dir/sink.port" ]; do sleep 0.1; done
port=$(cat "$dir/sink.port")
for lateness in "${latenesses[@]}"; do
  out="$dir/received"
  "$bin" serve --listen 127.0.0.1:0 --cluster bench --otlp-endpoint "http://127.0.0.1:$port" \
    --otlp-protocol http --lateness "$lateness" 2>"$dir/serve-$lateness.log" &
  pid=$!
  until grep -q 'listening on' "$dir/serve-$lateness.log"; do sleep 0.1; done
  addr=$(grep -o 'listening on [^ ]*' "$dir/serve-$lateness.log" | awk '{print $3}')
  all=()
  for i in $(seq "$samples"); do
    id="latency-$lateness-$i-$RANDOM"
    now=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
    t0=$(date +%s%N)
    event "$id" "$now" | curl -sf -o /dev/null -H 'Content-Type: application/json' \
      --data-binary @- "http://$addr/audit/bench"
    until grep -aq "$id" "$out" 2>/dev/null; do sleep 0.02; done
    t1=$(date +%s%N)
    all+=($(((t1 - t0) / 1000000)))
    sleep 1
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "lateness $lateness: request span after POST (ms): ${all[*]}"
done
