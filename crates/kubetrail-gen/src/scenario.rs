//! The public scenarios and the generated stream.

use crate::engine::{Engine, EngineConfig};
use crate::ids::{rng_for, streams};
use crate::json::{event_list, write_event};
use crate::plan::FamilySpec;
use crate::time::{MS, Micros, SEC};
use crate::truth::GroundTruth;
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::Value;
use std::io::Write;

/// 2024-05-01T10:00:00Z in Unix nanoseconds: the default start of every scenario.
pub const DEFAULT_CLUSTER_START: i64 = 1_714_557_600 * 1_000_000_000;

/// One Deployment created with `kubectl create`, then rolled from `nginx:1.25` to `nginx:1.27`
/// with `kubectl patch`, with everything the control plane and kubelets do in between.
///
/// See the crate documentation for the story and [`GroundTruth`] for what it promises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutScenario {
    /// Seed of every random choice (names, uids, auditIDs, timings).
    pub seed: u64,
    /// Unix nanoseconds at which the stream starts (noise begins here; kubectl acts 1.5–4 s
    /// later). Timestamps are written with microsecond precision.
    pub cluster_start: i64,
    /// Namespace of the Deployment.
    pub namespace: String,
    /// Deployment name (ReplicaSets are `<name>-<hash>`, pods `<name>-<hash>-<xxxxx>`).
    pub deployment: String,
    /// `spec.replicas`.
    pub replicas: u32,
    /// Worker node names (at least one is used: `worker-1` if empty).
    pub nodes: Vec<String>,
    /// Add reads (get/list/watch, non-resource), lease renewals, watch restarts and one
    /// 409 Conflict on `deployments/status`.
    pub with_noise: bool,
    /// Emit a `RequestReceived` line before every request's final line (an API server without
    /// `omitStages`), for every request.
    pub with_request_received_stage: bool,
}

impl Default for RolloutScenario {
    fn default() -> Self {
        RolloutScenario {
            seed: 1,
            cluster_start: DEFAULT_CLUSTER_START,
            namespace: "shop".into(),
            deployment: "web".into(),
            replicas: 3,
            nodes: vec!["worker-1".into(), "worker-2".into()],
            with_noise: true,
            with_request_received_stage: true,
        }
    }
}

fn start_micros(nanos: i64) -> Micros {
    nanos.div_euclid(1000)
}

impl RolloutScenario {
    /// Generates the stream (deterministic: same scenario, same bytes).
    pub fn generate(&self) -> GeneratedStream {
        let mut events = Vec::new();
        let truth = self
            .run(|v| {
                events.push(v);
                Ok(())
            })
            .expect("collecting into memory cannot fail");
        GeneratedStream { events, truth }
    }

    fn run<F: FnMut(Value) -> std::io::Result<()>>(&self, sink: F) -> std::io::Result<GroundTruth> {
        let t0 = start_micros(self.cluster_start);
        let nodes = if self.nodes.is_empty() {
            vec!["worker-1".to_string()]
        } else {
            self.nodes.clone()
        };
        let mut rng = rng_for(self.seed, streams::SCHEDULE);
        let start = t0 + rng.random_range(1500 * MS..=4000 * MS);
        let family = FamilySpec {
            id: 0,
            namespace: self.namespace.clone(),
            name: self.deployment.clone(),
            replicas: self.replicas,
            rollouts: 1,
            start,
            rollout_gap: (3 * SEC, 8 * SEC),
            images: vec!["nginx:1.25".into(), "nginx:1.27".into()],
            container: "nginx".into(),
            noise: self.with_noise,
        };
        let engine = Engine::new(EngineConfig {
            seed: self.seed,
            start: t0,
            node_names: nodes,
            noise: self.with_noise,
            request_received: self.with_request_received_stage,
        });
        engine.run(vec![family], sink)
    }
}

/// Many Deployments across namespaces, each created and rolled out
/// `rollouts_per_deployment` times, interleaved in time: for benchmarks and property tests.
///
/// Deployment families start 0.3–2.7 s apart in a shuffled order of namespaces; each rollout
/// starts 20–90 s after the previous one completed. Images are
/// `registry.example.com/<namespace>/<deployment>:v1.<revision>.0`. The node count grows with
/// the workload (3 to 50 nodes, `worker-01`…). With `with_noise` the stream is the unfiltered
/// firehose: reads, lease renewals, watch restarts, a 409 per Deployment, and a
/// `RequestReceived` line for every request; without it, one `ResponseComplete` line per
/// mutating request or Event write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeScenario {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of namespaces.
    pub namespaces: u32,
    /// Deployments in each namespace.
    pub deployments_per_namespace: u32,
    /// `spec.replicas` of every Deployment.
    pub replicas: u32,
    /// Image changes after each Deployment's creation (0 = create only).
    pub rollouts_per_deployment: u32,
    /// Unfiltered stream (see the type's documentation).
    pub with_noise: bool,
}

impl Default for VolumeScenario {
    fn default() -> Self {
        VolumeScenario {
            seed: 1,
            namespaces: 10,
            deployments_per_namespace: 10,
            replicas: 3,
            rollouts_per_deployment: 1,
            with_noise: true,
        }
    }
}

const NAMESPACES: &[&str] = &[
    "shop",
    "payments",
    "search",
    "checkout",
    "catalog",
    "identity",
    "billing",
    "inventory",
    "shipping",
    "analytics",
    "ads",
    "media",
    "chat",
    "reports",
    "gateway",
    "ledger",
];
const DEPLOYMENTS: &[&str] = &[
    "web",
    "api",
    "worker",
    "frontend",
    "backend",
    "auth",
    "cart",
    "notifier",
    "indexer",
    "scheduler",
    "cache",
    "gateway",
    "metrics",
    "mailer",
    "uploader",
    "renderer",
];

fn pick_name(list: &[&str], i: u32) -> String {
    let i = i as usize;
    if i < list.len() {
        list[i].to_string()
    } else {
        format!("{}-{}", list[i % list.len()], i / list.len())
    }
}

impl VolumeScenario {
    fn node_names(&self) -> Vec<String> {
        let pods = u64::from(self.namespaces)
            * u64::from(self.deployments_per_namespace)
            * u64::from(self.replicas);
        let n = pods.div_ceil(25).clamp(3, 50) as usize;
        (1..=n).map(|i| format!("worker-{i:02}")).collect()
    }

    fn families(&self) -> Vec<FamilySpec> {
        let t0 = start_micros(DEFAULT_CLUSTER_START);
        let mut rng = rng_for(self.seed, streams::SCHEDULE);
        let mut order: Vec<(u32, u32)> = (0..self.namespaces)
            .flat_map(|n| (0..self.deployments_per_namespace).map(move |d| (n, d)))
            .collect();
        order.shuffle(&mut rng);
        let mut t = t0 + rng.random_range(1500 * MS..=4000 * MS);
        let mut out = Vec::with_capacity(order.len());
        for (n, d) in order {
            let namespace = pick_name(NAMESPACES, n);
            let name = pick_name(DEPLOYMENTS, d);
            let images = (0..=self.rollouts_per_deployment)
                .map(|k| format!("registry.example.com/{namespace}/{name}:v1.{k}.0"))
                .collect();
            out.push(FamilySpec {
                id: n * self.deployments_per_namespace + d,
                container: name.clone(),
                namespace,
                name,
                replicas: self.replicas,
                rollouts: self.rollouts_per_deployment,
                start: t,
                rollout_gap: (20 * SEC, 90 * SEC),
                images,
                noise: self.with_noise,
            });
            t += rng.random_range(300 * MS..=2700 * MS);
        }
        out
    }

    fn engine(&self) -> Engine {
        Engine::new(EngineConfig {
            seed: self.seed,
            start: start_micros(DEFAULT_CLUSTER_START),
            node_names: self.node_names(),
            noise: self.with_noise,
            request_received: self.with_noise,
        })
    }

    /// Generates the whole stream in memory.
    pub fn generate(&self) -> GeneratedStream {
        let mut events = Vec::new();
        let truth = self
            .engine()
            .run(self.families(), |v| {
                events.push(v);
                Ok(())
            })
            .expect("collecting into memory cannot fail");
        GeneratedStream { events, truth }
    }

    /// Streams the audit log (one compact JSON Event per line) to `w` without holding the
    /// stream in memory: only the families in progress and a few tens of milliseconds of
    /// rendered lines are kept. Byte-identical to `self.generate().to_json_lines()`.
    pub fn write_json_lines<W: Write>(&self, w: W) -> std::io::Result<GroundTruth> {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, w);
        let mut buf = String::with_capacity(8192);
        let truth = self.engine().run(self.families(), |v| {
            buf.clear();
            write_event(&mut buf, &v);
            buf.push('\n');
            out.write_all(buf.as_bytes())
        })?;
        out.flush()?;
        Ok(truth)
    }
}

/// A generated audit stream and what a tracer should make of it.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedStream {
    /// `audit.k8s.io/v1` Events in `stageTimestamp` order (ties in the order the API server
    /// would have written them).
    pub events: Vec<Value>,
    /// Expected objects and counts.
    pub truth: GroundTruth,
}

impl GeneratedStream {
    /// The audit log as `--audit-log-path` writes it: one compact JSON Event per line, keys in
    /// the API server's order, each line ending in `\n`.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::with_capacity(self.events.len() * 2048);
        for e in &self.events {
            write_event(&mut out, e);
            out.push('\n');
        }
        out
    }

    /// Writes [`Self::to_json_lines`] to `w`.
    pub fn write_json_lines<W: Write>(&self, w: W) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(w);
        let mut buf = String::with_capacity(8192);
        for e in &self.events {
            buf.clear();
            write_event(&mut buf, e);
            buf.push('\n');
            out.write_all(buf.as_bytes())?;
        }
        out.flush()
    }

    /// The stream as audit-webhook request bodies: `EventList` JSON documents of at most
    /// `batch` events each (a `batch` of 0 is taken as 1), in order.
    pub fn to_event_lists(&self, batch: usize) -> Vec<String> {
        self.events.chunks(batch.max(1)).map(event_list).collect()
    }
}
