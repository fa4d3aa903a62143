# Developer tasks. Nothing here is needed to build or test: README.md's commands use cargo only.

# List recipes.
default:
    @just --list

# Replay the example rollout, print the trees, write OTLP/JSON.
demo:
    cargo run --release -- replay --tree --otlp-json out/rollout.otlp.jsonl examples/rollout.audit.log

# The whole test suite (what CI runs after fmt and clippy).
test:
    cargo test --workspace

# Format and lint as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# What CI runs.
ci:
    bash .ci/run

# Benchmarks (criterion), then a summary of the figures.
bench:
    cargo bench -p kubetrail-benches
    cargo build --release -p kubetrail
    cargo run --release -p kubetrail-benches --bin bench-summary

# Regenerate the example dump from the generator.
example-dump:
    cargo run -p kubetrail-gen --example write_rollout > examples/rollout.audit.log

# A local Kafka-protocol broker (tansu, in memory) on 127.0.0.1:19092 for development.
kafka:
    bash scripts/install-tansu.sh
    .tools/bin/tansu broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/

# A real control plane (2 kube-apiservers, controller manager, scheduler, a node) sending its
# audit webhook to `kubetrail serve`, exporting to Jaeger (http://127.0.0.1:16686).
cluster:
    bash scripts/cluster-demo.sh
