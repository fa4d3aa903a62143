#!/usr/bin/env bash
# Builds the local Kubernetes control plane used by scripts/local-cluster.sh and the end-to-end
# tests (crates/kubetrail/tests/e2e_cluster.rs): kube-apiserver, kube-controller-manager and
# kube-scheduler from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3 and the fake kubelet,
# all from the Go module in scripts/cluster/ (versions pinned by its go.mod and go.sum).
#
# Output: .tools/k8s-<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,etcd,
# fake-kubelet}. GOMODCACHE and GOCACHE live under .tools/go so a fresh machine needs only the Go
# toolchain and the Go module proxy. Idempotent (does nothing when the binaries of this version
# and of this source exist) and safe when two callers run it at once (flock).
# Prints the bin directory on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
version="v1.37.2" # k8s.io/kubernetes in scripts/cluster/go.mod
minor="37"
dest="$root/.tools/k8s-$version"
bin="$dest/bin"
components=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd fake-kubelet)

# The stamp covers the module definition and our own sources: a change rebuilds.
stamp="$(cat scripts/cluster/go.mod scripts/cluster/go.sum scripts/cluster/cmd/*/*.go "$0" | sha256sum | cut -c1-16)"

installed() {
    [[ -f "$dest/stamp" && "$(cat "$dest/stamp")" == "$stamp" ]] || return 1
    for c in "${components[@]}"; do [[ -x "$bin/$c" ]] || return 1; done
}

mkdir -p "$root/.tools"
exec 9>"$root/.tools/k8s.lock"
flock 9
if installed; then
    echo "install-k8s: $bin already built" >&2
    echo "$bin"
    exit 0
fi

export GOTOOLCHAIN=local
export GOMODCACHE="$root/.tools/go/mod"
export GOCACHE="$root/.tools/go/cache"
export GOFLAGS="-mod=readonly"
export CGO_ENABLED=0
mkdir -p "$bin"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
    ldflags+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000"
done
ldflags+=" -X main.kubeletVersion=$version"

cd scripts/cluster
for c in "${components[@]}"; do
    case "$c" in
        etcd | fake-kubelet) pkg="./cmd/$c" ;;
        *) pkg="k8s.io/kubernetes/cmd/$c" ;;
    esac
    start=$(date +%s)
    go build -trimpath -ldflags "$ldflags" -o "$bin/$c.tmp" "$pkg"
    mv "$bin/$c.tmp" "$bin/$c"
    echo "install-k8s: built $c in $(($(date +%s) - start))s" >&2
done
echo "$stamp" >"$dest/stamp"
echo "$bin"
