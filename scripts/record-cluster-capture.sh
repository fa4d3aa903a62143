#!/usr/bin/env bash
# Records testdata/cluster-capture/: the audit log backends of a real HA control plane (two
# kube-apiservers, scripts/local-cluster.sh) while kubectl runs the workloads an operator runs —
# Deployments created, scaled, rolled to a new image, scaled down and deleted; Secrets and
# ConfigMaps created and patched; Jobs (one Pod failing first); namespaces deleted with their
# contents — spread over both API servers. crates/kubetrail/tests/cluster_capture.rs replays the
# result as a regression input (snapshot of the families). audit-policy/policy.yaml keeps
# Secrets at Metadata level, so no Secret value is ever written.
#
#   scripts/record-cluster-capture.sh [ROUNDS]     (default 9 rounds, ≈ 2,900 events)
#
# Needs what local-cluster.sh needs (it builds the control plane on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
rounds="${1:-9}"
work="$(mktemp -d)"
cleanup() {
    bash "$repo/scripts/local-cluster.sh" down --dir "$work/cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

bash scripts/local-cluster.sh up --dir "$work/cluster" --apiservers 2 | tail -1
bin="$(sed -n 's/^bin=//p' "$work/cluster/cluster.env")"
k() { "$bin/kubectl" --kubeconfig "$work/cluster/kubeconfig" "$@"; }

for r in $(seq 1 "$rounds"); do
    # Alternate the API server kubectl talks to (the controllers keep theirs).
    ctx="apiserver-$(((r % 2) + 1))"
    ns="shop-$r"
    kc() { k --context "$ctx" -n "$ns" "$@"; }
    k --context "$ctx" create namespace "$ns"
    kc create deployment web --image=registry.local/web:1.0 --replicas=2
    kc rollout status deployment/web --timeout=180s
    kc scale deployment/web --replicas=5
    kc rollout status deployment/web --timeout=180s
    kc set image deployment/web web=registry.local/web:1.1
    kc rollout status deployment/web --timeout=180s
    kc scale deployment/web --replicas=1
    kc rollout status deployment/web --timeout=180s
    kc create secret generic creds --from-literal=password="capture-secret-$r"
    kc patch secret creds -p "{\"stringData\":{\"password\":\"capture-rotated-$r\"}}"
    kc create configmap settings --from-literal=mode=a
    kc patch configmap settings -p '{"data":{"mode":"b"}}'
    # A Job whose first Pod fails (the fake kubelet's annotation), then succeeds on retry.
    kc apply -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
spec:
  backoffLimit: 3
  template:
    metadata:
      annotations:
        fake-kubelet.kubetrail.dev/fail-first: "1"
    spec:
      restartPolicy: Never
      containers:
        - name: migrate
          image: registry.local/migrate:1
EOF
    kc wait --for=condition=complete job/migrate --timeout=180s
    kc delete deployment web --wait=true
    if ((r % 2 == 0)); then
        # Half the namespaces go with their contents (the namespace controller's deletes).
        k --context "$ctx" delete namespace "$ns" --wait=true --timeout=180s
    fi
done

# Stopping the API servers flushes their logs.
bash scripts/local-cluster.sh down --dir "$work/cluster" >/dev/null
if grep -q "capture-secret-\|capture-rotated-" "$work"/cluster/audit/*/audit.log; then
    echo "record-cluster-capture: a Secret value reached the audit log" >&2
    exit 1
fi
wc -l "$work"/cluster/audit/*/audit.log
mkdir -p testdata/cluster-capture
rm -f testdata/cluster-capture/*.log testdata/cluster-capture/*.log.gz
for i in 1 2; do
    # gzip: kubetrail replay reads it as it is.
    gzip -9 <"$work/cluster/audit/apiserver-$i/audit.log" >"testdata/cluster-capture/apiserver-$i.audit.log.gz"
done
