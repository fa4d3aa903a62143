# Developer tasks. Nothing here is needed to build or test: README.md's commands use cargo only
# (the tests install the real Jaeger and Kafka they need themselves, through scripts/).

# List recipes.
default:
    @just --list

# Replay the example rollout, print the trees, write OTLP/JSON.
demo:
    cargo run --release -- replay --tree --otlp-json out/rollout.otlp.jsonl examples/rollout.audit.log

# The whole test suite (what CI runs after fmt and clippy; README's test command).
test:
    cargo test --workspace --locked

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

# A local Apache Kafka broker (KRaft, single node) on 127.0.0.1:9092 for development.
kafka:
    bash scripts/run-kafka.sh

# A local Jaeger v2 all-in-one (OTLP on 4317/4318, UI and query API on 16686), in memory.
jaeger:
    "$(bash scripts/install-jaeger.sh)"

# A real control plane (2 kube-apiservers, controller manager, scheduler, a node) sending its
# audit webhook to `kubetrail serve`, exporting to Jaeger (http://127.0.0.1:16686).
cluster:
    bash scripts/cluster-demo.sh

# Only the end-to-end tests on a real control plane (kube-apiserver ×2, controller manager,
# scheduler, etcd, a node agent, built from source by scripts/install-k8s.sh the first time);
# they are part of `cargo test --workspace` too.
cluster-test:
    bash scripts/install-k8s.sh
    cargo test --workspace --locked --test e2e_cluster --test e2e_cluster_client --test cluster_capture -- --nocapture

# Coverage-guided fuzzing (cargo fuzz, nightly): every target for SECONDS (CI: 60).
fuzz SECONDS="60":
    bash scripts/fuzz.sh {{SECONDS}}
