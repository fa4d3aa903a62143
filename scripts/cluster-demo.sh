#!/usr/bin/env bash
# `just cluster`: a demo of kubetrail on a real control plane. Starts Jaeger v2 (built by
# scripts/install-jaeger.sh; UI http://127.0.0.1:16686, OTLP gRPC 127.0.0.1:4317), `kubetrail
# serve` on 127.0.0.1:18443 (plain HTTP on loopback, bearer token) and scripts/local-cluster.sh
# with two API servers sending their audit events to it. Prints the KUBECONFIG to use; Ctrl-C
# stops everything. State and logs under DIR (default out/cluster-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
dir="${1:-$root/out/cluster-demo}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

jaeger="$(scripts/install-jaeger.sh | tail -n1)"
cargo build --release --locked -p kubetrail
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$token" >"$dir/tokens"
chmod 600 "$dir/tokens"
# The two API servers name themselves in their webhook URLs (local-cluster.sh adds
# ?source=apiserver-I); serve waits for both (README: replaying or serving an HA control plane).
printf 'time:\n  expect_sources: [apiserver-1, apiserver-2]\n' >"$dir/kubetrail.yaml"

pids=()
cleanup() {
    scripts/local-cluster.sh down --dir "$dir/cluster" >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$jaeger" >"$dir/jaeger.log" 2>&1 &
pids+=($!)
target/release/kubetrail serve --config "$dir/kubetrail.yaml" --listen 127.0.0.1:18443 --token-file "$dir/tokens" \
    --otlp-endpoint http://127.0.0.1:4317 --jaeger-url http://127.0.0.1:16686 \
    >"$dir/kubetrail.log" 2>&1 &
pids+=($!)
scripts/local-cluster.sh up --dir "$dir/cluster" --apiservers 2 \
    --webhook-url http://127.0.0.1:18443/audit/local --webhook-token "$token"
cat <<MSG

  export KUBECONFIG=$dir/cluster/kubeconfig
  kubectl create deployment web --image=registry.local/web:1.0 --replicas=3
  kubectl set image deployment/web web=registry.local/web:1.1
  open http://127.0.0.1:16686  (service kubectl, deployment-controller, kubelet …)
  (kubectl of the same release: .tools/k8s-v1.37.2/bin/kubectl)

Ctrl-C stops the cluster, kubetrail and Jaeger.
MSG
wait "${pids[@]}"
