//! Shared helpers of the Kafka integration tests: every test starts its own Apache Kafka broker
//! (`kubetrail_testkit::KafkaBroker`) and uses its own topic and group names.

#![allow(dead_code, unused_imports)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kubetrail_export::{
    ExportReport, Exporter, ExporterConfig, ExporterHandle, OtlpConfig, OtlpProtocol, OtlpSink,
};
use kubetrail_kafka::{KafkaConfig, KafkaPartitionedConsumer, KafkaProducer, StatsHandle};
use kubetrail_model::AuditEvent;
use kubetrail_queue::{AuditBatch, AuditProducer};
use kubetrail_testkit::{KafkaBroker, OtlpReceiver, ReceivedSpan};
use kubetrail_worker::{PartitionedWorker, WorkerConfig};
use tokio::task::JoinHandle;

/// SPAN_KIND_INTERNAL: object spans.
pub const OBJECT_KIND: i32 = 1;
/// SPAN_KIND_SERVER: request spans.
pub const REQUEST_KIND: i32 = 2;
/// How long any one condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Logs to the test output with `RUST_LOG=…`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A name no other test of this process uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A broker with a fresh topic of `partitions` partitions.
pub fn broker_with_topic(partitions: u32) -> (KafkaBroker, String) {
    let broker = KafkaBroker::start().expect("start Apache Kafka (scripts/install-kafka.sh)");
    let topic = unique("audit");
    broker.create_topic(&topic, partitions).unwrap();
    (broker, topic)
}

/// Test settings: fast commits; the default session timeout.
pub fn config(broker: &KafkaBroker, topic: &str, group: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: broker.addr(),
        topic: topic.to_owned(),
        group: group.to_owned(),
        produce_timeout: Duration::from_secs(5),
        commit_interval: Duration::from_millis(100),
        lookback: kubetrail_kafka::minimum_lookback(&pipeline_config()),
        ..KafkaConfig::default()
    }
}

/// The events of a generated stream, parsed as the pipeline parses them.
pub fn events(stream: &kubetrail_gen::GeneratedStream) -> Vec<AuditEvent> {
    stream
        .to_json_lines()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A generated stream spread over four namespaces (families on several partitions).
pub fn volume() -> kubetrail_gen::GeneratedStream {
    kubetrail_gen::VolumeScenario {
        seed: 7,
        namespaces: 4,
        deployments_per_namespace: 2,
        replicas: 2,
        rollouts_per_deployment: 1,
        with_noise: true,
    }
    .generate()
}

/// Publishes `events` from `cluster` in batches of `batch`, as the webhook would.
pub async fn publish_all(
    producer: &KafkaProducer,
    cluster: &str,
    events: &[AuditEvent],
    batch: usize,
) {
    for (i, chunk) in events.chunks(batch).enumerate() {
        producer
            .publish(AuditBatch {
                cluster: cluster.to_owned(),
                received_at: now_nanos(),
                source: Some("10.0.0.1:4242".to_owned()),
                events: chunk.to_vec(),
            })
            .await
            .unwrap_or_else(|e| panic!("publishing batch {i}: {e}"));
    }
}

pub use kubetrail_model::now_unix_nanos as now_nanos;

/// An exporter to `receiver` over OTLP/gRPC.
pub fn exporter(receiver: &OtlpReceiver) -> (ExporterHandle, JoinHandle<ExportReport>) {
    let sink = OtlpSink::new(OtlpConfig {
        endpoint: receiver.grpc_endpoint(),
        protocol: OtlpProtocol::Grpc,
        ..OtlpConfig::default()
    })
    .unwrap();
    Exporter::spawn(
        vec![Box::new(sink)],
        ExporterConfig {
            max_batch_delay: Duration::from_millis(20),
            ..ExporterConfig::default()
        },
    )
}

/// Polls `condition` until it holds, failing after [`DEADLINE`] with `what`.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The highest committed offset per partition, over several consumers.
pub fn committed(handles: &[&StatsHandle]) -> BTreeMap<i32, i64> {
    let mut all = BTreeMap::new();
    for h in handles {
        for (p, o) in h.get().committed {
            let e = all.entry(p).or_insert(o);
            *e = (*e).max(o);
        }
    }
    all
}

/// Waits until the consumers together committed `total` messages (a fresh topic: offsets
/// from 0, so the committed offsets add up to the messages consumed and acknowledged).
pub async fn wait_committed(handles: &[&StatsHandle], total: i64) {
    wait_until(&format!("{total} messages committed"), || {
        committed(handles).values().sum::<i64>() >= total
    })
    .await;
}

pub use kubetrail_testkit::{SpanIds, id_set};

/// The auditIDs of the request spans.
pub fn audit_ids(spans: &[ReceivedSpan]) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|s| s.kind == REQUEST_KIND)
        .filter_map(|s| s.attributes.get("kubetrail.audit.id").cloned())
        .collect()
}

/// The pipeline settings of the end-to-end tests: a linger longer than the gaps between a
/// generated Deployment's rollouts (20–90 s), so every object gets exactly one span.
pub fn pipeline_config() -> kubetrail_pipeline::PipelineConfig {
    let mut c = kubetrail_pipeline::PipelineConfig::default();
    c.aggregate.linger = Duration::from_secs(600);
    c
}

/// The spans a single `Pipeline` makes of `events` (a direct replay), as received over OTLP.
pub async fn direct_replay(cluster: &str, events: &[AuditEvent]) -> Vec<ReceivedSpan> {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (handle, join) = exporter(&receiver);
    let mut pipeline = kubetrail_pipeline::Pipeline::new(pipeline_config());
    let mut out = Vec::new();
    for e in events {
        pipeline.push(cluster, e.clone(), &mut out);
    }
    pipeline.finish(&mut out);
    let n = out.len();
    let delivery = handle.submit(out).await.unwrap();
    delivery.await.unwrap();
    drop(handle);
    join.await.unwrap();
    let spans = receiver.wait_for_spans(n, DEADLINE).await.unwrap();
    receiver.shutdown().await;
    spans
}

/// Runs `f` with a timeout of [`DEADLINE`].
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?}: {what}"))
}

/// A `consume`-like pipeline stage: one pipeline per partition of `cfg`'s topic, exporting
/// through `exporter`; with a handle to its consumer's statistics.
#[allow(dead_code)] // not every test binary runs pipelines
pub fn partitioned_worker(
    cfg: &KafkaConfig,
    pipeline: kubetrail_pipeline::PipelineConfig,
    exporter: ExporterHandle,
    worker: WorkerConfig,
) -> (PartitionedWorker<KafkaPartitionedConsumer>, StatsHandle) {
    let consumer = KafkaPartitionedConsumer::new(cfg).unwrap();
    let stats = consumer.stats_handle();
    (
        PartitionedWorker::new(consumer, pipeline, exporter, worker),
        stats,
    )
}
