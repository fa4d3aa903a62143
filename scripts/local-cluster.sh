#!/usr/bin/env bash
# A local Kubernetes control plane for kubetrail's end-to-end tests and demo: etcd, N
# kube-apiservers on the same etcd (an HA control plane: the same port on 127.0.0.1, 127.0.0.2,
# ...), kube-controller-manager, kube-scheduler and a fake kubelet (one Node, node-1), all built
# from source by scripts/install-k8s.sh. No root-only paths, free ports, everything under DIR.
#
#   scripts/local-cluster.sh up --dir DIR [--apiservers N]
#                               [--webhook-url URL --webhook-token TOKEN [--webhook-ca FILE]]
#   scripts/local-cluster.sh down --dir DIR
#
# Every API server gets audit-policy/policy.yaml and the log backend writing
# DIR/audit/apiserver-I/audit.log; with --webhook-url also the webhook backend in batch mode with
# README's flags and a webhook kubeconfig shaped like deploy/apiserver/webhook-kubeconfig.yaml
# per API server (DIR/webhook-kubeconfig-apiserver-I.yaml; token in DIR/webhook-token), whose
# URL gets `source=apiserver-I` as README's HA section asks (kubetrail orders events per API
# server and waits for the slowest). DIR/kubeconfig is an admin
# kubeconfig: context "apiserver-I" names API server I, the current context is apiserver-1.
# kube-controller-manager talks to apiserver-1, kube-scheduler and the kubelet to apiserver-N (as
# on an HA control plane, where each node's components use their local API server).
# Loopback advertise addresses need --endpoint-reconciler-type=none (the kubernetes Service has
# no endpoints; nothing here runs in a Pod). Logs: DIR/logs/*.log. `up` prints `ready` on its last line once every API server answers
# /readyz and node-1 is Ready.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

usage() {
    sed -n '7,8p' "$0" | sed 's/^# *//' >&2
    exit 2
}

cmd="${1:-}"
[[ -n "$cmd" ]] || usage
shift
dir="" apiservers=1 webhook_url="" webhook_token="" webhook_ca=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        --apiservers) apiservers="${2:?--apiservers needs a value}"; shift 2 ;;
        --webhook-url) webhook_url="${2:?--webhook-url needs a value}"; shift 2 ;;
        --webhook-token) webhook_token="${2:?--webhook-token needs a value}"; shift 2 ;;
        --webhook-ca) webhook_ca="${2:?--webhook-ca needs a value}"; shift 2 ;;
        -h | --help) usage ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ -n "$dir" ]] || die "--dir DIR is required"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

# Stops the processes recorded in DIR/pids in reverse start order (the node agent and the
# controllers first, etcd last), each with SIGTERM and, after 20 s, SIGKILL: the API servers
# flush their audit webhook buffers while shutting down.
down() {
    [[ -f "$dir/pids" ]] || return 0
    local name pid
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "local-cluster: $name (pid $pid) ignored SIGTERM for 20s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done < <(tac "$dir/pids")
    rm -f "$dir/pids"
}

if [[ "$cmd" == down ]]; then
    down
    echo "stopped"
    exit 0
fi
[[ "$cmd" == up ]] || usage
[[ "$apiservers" =~ ^[1-9]$ ]] || die "--apiservers must be 1..9, got $apiservers"
if [[ -n "$webhook_url" && -z "$webhook_token" ]]; then die "--webhook-url needs --webhook-token"; fi
if [[ -z "$webhook_url" && ( -n "$webhook_token" || -n "$webhook_ca" ) ]]; then
    die "--webhook-token and --webhook-ca need --webhook-url"
fi
if [[ -n "$webhook_ca" ]]; then
    [[ -f "$webhook_ca" ]] || die "--webhook-ca $webhook_ca: no such file"
    webhook_ca="$(cd "$(dirname "$webhook_ca")" && pwd)/$(basename "$webhook_ca")"
fi
if [[ -f "$dir/pids" ]]; then
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null && die "$dir already runs a cluster ($name pid $pid); run down first"
    done <"$dir/pids"
    rm -f "$dir/pids"
fi

bin="$("$repo/scripts/install-k8s.sh" | tail -n1)"
command -v openssl >/dev/null || die "openssl is needed"
command -v curl >/dev/null || die "curl is needed"
command -v python3 >/dev/null || die "python3 is needed (free ports)"

# A fresh cluster each time: state from an earlier run would mix into the audit logs.
rm -rf "$dir/etcd" "$dir/audit" "$dir/logs" "$dir/pki"
mkdir -p "$dir/pki" "$dir/logs" "$dir/etcd"
chmod 700 "$dir/etcd"

# ---- ports: N+4 free ports; the API servers' port must be free on every 127.0.0.I ----------
read -r port_etcd port_peer port_kcm port_sched port_api < <(python3 - "$apiservers" <<'EOF'
import socket, sys
n = int(sys.argv[1])
held, out = [], []
def take(ips):
    while True:
        s = socket.socket(); s.bind((ips[0], 0)); port = s.getsockname()[1]
        extra = []
        try:
            for ip in ips[1:]:
                t = socket.socket(); t.bind((ip, port)); extra.append(t)
        except OSError:
            for t in extra: t.close()
            s.close(); continue
        held.extend([s] + extra); return port
for _ in range(4): out.append(take(["127.0.0.1"]))
out.append(take(["127.0.0.%d" % i for i in range(1, n + 1)]))
print(*out)
EOF
)

# ---- PKI: one CA for serving and client certificates, a service-account key pair ------------
pki="$dir/pki"
openssl_quiet() { openssl "$@" 2>/dev/null; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kubetrail-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt"
openssl_quiet genrsa -out "$pki/sa.key" 2048
openssl_quiet rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
# cert NAME SUBJECT [SAN]
cert() {
    local name="$1" subj="$2" san="${3:-}" ext="$pki/$1.ext"
    openssl_quiet req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$pki/$name.key" -out "$pki/$name.csr"
    if [[ -n "$san" ]]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$ext"
    else
        printf 'extendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl_quiet x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 30 -extfile "$ext" -out "$pki/$name.crt"
    rm -f "$pki/$name.csr" "$ext"
}
san="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
san+=",DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1"
for i in $(seq 1 "$apiservers"); do san+=",IP:127.0.0.$i"; done
cert apiserver "/CN=kube-apiserver" "$san"
cert admin "/O=system:masters/CN=kubernetes-admin"
cert kube-controller-manager "/CN=system:kube-controller-manager"
cert kube-scheduler "/CN=system:kube-scheduler"
cert node-1 "/O=system:nodes/CN=system:node:node-1"

# kubeconfig FILE USER SERVER_INDEX [all contexts]
kubeconfig() {
    local file="$1" user="$2" idx="$3" all="${4:-}"
    {
        echo "apiVersion: v1"
        echo "kind: Config"
        echo "clusters:"
        for i in $(seq 1 "$apiservers"); do
            echo "  - name: apiserver-$i"
            echo "    cluster:"
            echo "      server: https://127.0.0.$i:$port_api"
            echo "      certificate-authority: $pki/ca.crt"
        done
        echo "users:"
        echo "  - name: $user"
        echo "    user:"
        echo "      client-certificate: $pki/$user.crt"
        echo "      client-key: $pki/$user.key"
        echo "contexts:"
        for i in $(seq 1 "$apiservers"); do
            if [[ -n "$all" || "$i" == "$idx" ]]; then
                echo "  - name: apiserver-$i"
                echo "    context: {cluster: apiserver-$i, user: $user}"
            fi
        done
        echo "current-context: apiserver-$idx"
    } >"$file"
    chmod 600 "$file"
}
kubeconfig "$dir/kubeconfig" admin 1 all
kubeconfig "$dir/kube-controller-manager.kubeconfig" kube-controller-manager 1
kubeconfig "$dir/kube-scheduler.kubeconfig" kube-scheduler "$apiservers"
kubeconfig "$dir/node-1.kubeconfig" node-1 "$apiservers"

# ---- the webhook backend (deploy/apiserver/webhook-kubeconfig.yaml's shape) ------------------
webhook_flags=()
if [[ -n "$webhook_url" ]]; then
    umask 077
    printf '%s\n' "$webhook_token" >"$dir/webhook-token"
    umask 022
    # One kubeconfig per API server: its URL names the server (`?source=apiserver-I`).
    sep="?"
    [[ "$webhook_url" == *\?* ]] && sep="&"
    for i in $(seq 1 "$apiservers"); do
        {
            echo "apiVersion: v1"
            echo "kind: Config"
            echo "clusters:"
            echo "  - name: kubetrail"
            echo "    cluster:"
            echo "      server: ${webhook_url}${sep}source=apiserver-$i"
            [[ -n "$webhook_ca" ]] && echo "      certificate-authority: $webhook_ca"
            echo "users:"
            echo "  - name: kube-apiserver"
            echo "    user:"
            echo "      tokenFile: $dir/webhook-token"
            echo "contexts:"
            echo "  - name: default"
            echo "    context:"
            echo "      cluster: kubetrail"
            echo "      user: kube-apiserver"
            echo "current-context: default"
        } >"$dir/webhook-kubeconfig-apiserver-$i.yaml"
    done
    # README.md "Wiring the API server".
    webhook_flags=(
        --audit-webhook-mode=batch
        --audit-webhook-batch-max-size=400
        --audit-webhook-batch-max-wait=1s
        --audit-webhook-batch-buffer-size=10000
        --audit-webhook-initial-backoff=1s
    )
fi

# start NAME COMMAND...: in its own session, output in DIR/logs/NAME.log, pid in DIR/pids.
start() {
    local name="$1"
    shift
    setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    echo "$name $!" >>"$dir/pids"
}
# Stop what was started if `up` fails half way.
trap 'rc=$?; if [[ $rc != 0 ]]; then echo "local-cluster: up failed; logs in $dir/logs" >&2; down; fi' EXIT

# wait_for WHAT SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local what="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then die "$what not up after ${secs}s (logs in $dir/logs)"; fi
        while read -r name pid; do
            kill -0 "$pid" 2>/dev/null || die "$name exited (see $dir/logs/$name.log)"
        done <"$dir/pids"
        sleep 0.2
    done
}

# etcd: local test data only, so fsync is skipped (--unsafe-no-fsync).
start etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$port_etcd" --advertise-client-urls "http://127.0.0.1:$port_etcd" \
    --listen-peer-urls "http://127.0.0.1:$port_peer" --initial-advertise-peer-urls "http://127.0.0.1:$port_peer" \
    --initial-cluster "default=http://127.0.0.1:$port_peer" --unsafe-no-fsync --log-level warn
wait_for etcd 60 curl -sf "http://127.0.0.1:$port_etcd/health"

for i in $(seq 1 "$apiservers"); do
    mkdir -p "$dir/audit/apiserver-$i"
    own_webhook=()
    [[ -n "$webhook_url" ]] && own_webhook=(--audit-webhook-config-file="$dir/webhook-kubeconfig-apiserver-$i.yaml")
    start "apiserver-$i" "$bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$port_etcd" \
        --bind-address="127.0.0.$i" --advertise-address="127.0.0.$i" --secure-port="$port_api" \
        --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --profiling=false \
        --audit-policy-file="$repo/audit-policy/policy.yaml" \
        --audit-log-path="$dir/audit/apiserver-$i/audit.log" --audit-log-format=json \
        "${webhook_flags[@]}" "${own_webhook[@]}"
done
for i in $(seq 1 "$apiservers"); do
    wait_for "apiserver-$i" 120 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.$i:$port_api/readyz"
done

for c in kube-controller-manager kube-scheduler; do
    port="$port_kcm"
    [[ "$c" == kube-scheduler ]] && port="$port_sched"
    extra=()
    if [[ "$c" == kube-controller-manager ]]; then
        extra=(--use-service-account-credentials=true --service-account-private-key-file="$pki/sa.key"
            --root-ca-file="$pki/ca.crt" --cluster-signing-cert-file="$pki/ca.crt"
            --cluster-signing-key-file="$pki/ca.key" --cluster-name=kubetrail-local)
    fi
    start "$c" "$bin/$c" --kubeconfig="$dir/$c.kubeconfig" \
        --authentication-kubeconfig="$dir/$c.kubeconfig" --authorization-kubeconfig="$dir/$c.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$port" --leader-elect=true "${extra[@]}"
done
start fake-kubelet "$bin/fake-kubelet" --kubeconfig="$dir/node-1.kubeconfig" --node-name=node-1

kubectl_() { kubectl --kubeconfig "$dir/kubeconfig" "$@"; }
node_ready() {
    [[ "$(kubectl_ get node node-1 -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_for node-1 120 node_ready
# Pods need the default ServiceAccount, which the controller manager creates.
wait_for "default ServiceAccount" 120 kubectl_ get serviceaccount default -n default
for i in $(seq 1 "$apiservers"); do
    wait_for "apiserver-$i" 60 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.$i:$port_api/readyz"
done
{
    echo "apiservers=$apiservers"
    echo "apiserver_port=$port_api"
    echo "etcd=http://127.0.0.1:$port_etcd"
    echo "bin=$bin"
} >"$dir/cluster.env"
trap - EXIT
echo "ready"
