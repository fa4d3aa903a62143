//! The Kafka scale-out queue: `kubetrail receive` (webhook → Kafka) and `kubetrail consume`
//! (Kafka → pipeline → OTLP) on top of [`kubetrail_queue`]'s traits.
//!
//! * [`KafkaProducer`] implements [`AuditProducer`](kubetrail_queue::AuditProducer): an
//!   idempotent producer (`enable.idempotence=true`, `acks=all`) whose `publish` returns `Ok`
//!   only once every message of the batch was acknowledged by the brokers.
//! * [`KafkaConsumer`] implements [`AuditConsumer`](kubetrail_queue::AuditConsumer) over every
//!   partition the group assigns it.
//! * [`KafkaPartitionedConsumer`] implements
//!   [`PartitionedConsumer`](kubetrail_queue::PartitionedConsumer): each assigned partition
//!   is a consumer of its own, on which `kubetrail_worker::PartitionedWorker` runs one
//!   pipeline per partition — what `consume` uses.
//!
//! The crate is only a queue backend: it moves batches in and out of Kafka. What runs the
//! pipelines lives in `kubetrail-worker`; the one stage here that looks into events is the
//! [`Repartitioner`], which links them (`kubetrail-link` through the pipeline's
//! `FamilyRouter`) to choose their family's partition.
//!
//! # Message format (version 1)
//!
//! One Kafka message per audit event:
//!
//! | part | content |
//! |---|---|
//! | key | [`partition_key`]: `cluster + "/" + namespace`; `cluster + "/"` for cluster-scoped objects and non-resource requests |
//! | value | the event's JSON (`audit.k8s.io/v1` `Event` as [`AuditEvent`](kubetrail_model::AuditEvent) writes it); without `requestObject`/`responseObject` and annotated [`BODIES_DROPPED_ANNOTATION`] when larger than [`KafkaConfig::max_event_bytes`] |
//! | timestamp | when the batch was accepted (`AuditBatch::received_at`), ms |
//! | header [`HEADER_FORMAT`] | [`FORMAT_VERSION`] (`1`): the value's format. A consumer skips (and counts) messages of a version it does not know; a new format gets a new version, and consumers are upgraded before producers |
//! | header [`HEADER_CLUSTER`] | the cluster name |
//! | header [`HEADER_RECEIVED_AT`] | `received_at`, Unix nanoseconds, decimal |
//! | header [`HEADER_SOURCE`] | who sent the batch (the API server: the webhook's authenticated identity, `?source=`, or client IP), when known; kept by the routing stage |
//!
//! # Keys and partitions
//!
//! The key puts an object family on one partition, in order: a Deployment, its ReplicaSets
//! and their Pods share a namespace, and so do the Kubernetes Events about them. A partition's
//! pipeline therefore sees whole families and links them as a single process would.
//!
//! Families whose owner is **cluster-scoped** while their members are namespaced (a Node
//! owning mirror Pods, a cluster-scoped custom resource owning namespaced objects) would span
//! partitions of this topic; see the next section.
//!
//! # Repartitioning by family
//!
//! With [`KafkaConfig::repartition`] (default), `consume` runs two stages: a
//! [`Repartitioner`] (consumer group `<group>-route` on [`KafkaConfig::topic`]) links each
//! partition's events with a [`FamilyRouter`](kubetrail_pipeline::family::FamilyRouter) and
//! republishes every event into the family topic ([`KafkaConfig::family_topic_name`]) keyed by
//! [`family_key`]: `cluster/namespace` for a family rooted in a namespace, `cluster/` for every
//! family whose root is (or may be) cluster-scoped, and for cluster-scoped objects. The
//! pipelines (`PartitionedWorker` on [`KafkaConfig::pipeline_stage`]) read the family
//! topic, so each sees whole families, however many namespaces they span. Values, headers
//! (the source too: the watermark orders per API server after the shuffle) and message
//! timestamps are kept; input offsets are committed once the family topic acknowledged the
//! republished batch (at least once; repeats are dropped by the pipelines' stage merger).
//! After an assignment, what the lookback re-reads before the committed offset only rebuilds
//! the router's owner graph and is not republished.
//! Design and cost: ARCHITECTURE.md, "Repartitioning by family".
//!
//! # Commit rule
//!
//! A consumer hands out batches of consecutive messages of one partition. A batch's
//! [`Ack`](kubetrail_queue::Ack) is explicit ([`Ack::explicit`](kubetrail_queue::Ack::explicit)):
//! the worker calls it once the spans derived from the batch were exported. Per partition,
//! the offset after the longest run of acknowledged batches (in offset order) is committed
//! (synchronously, from the polling thread) every [`KafkaConfig::commit_interval`], when a
//! partition is revoked, and on close — never past a batch that is not acknowledged, whatever
//! order acknowledgements come in. A consumer that dies commits nothing more: its
//! unacknowledged batches are read again by the partition's next owner. A message
//! that is not a valid event (not JSON, not an audit event, no or an unknown format version)
//! is skipped, logged with its partition and offset, counted
//! (`kubetrail_kafka_messages_malformed_total`) and acknowledged with its batch: it never
//! blocks its partition.
//!
//! # Per-partition pipelines
//!
//! The pipeline's clock is event time: families are emitted once they have been quiet for
//! `linger` of it. One pipeline fed by several partitions would move its clock with all of
//! them, so when a family is emitted — and whether later events of it start a new segment
//! with new ids — would depend on which partitions the process holds. `PartitionedWorker`
//! gives each assigned partition its own `Worker` and
//! [`Pipeline`](kubetrail_pipeline::Pipeline): each pipeline sees exactly its partition's
//! events, in offset order, so N consumers produce the same spans as one, and as a replay of
//! the same events. The worker's wall-clock tick only moves a partition's clock while that
//! partition is caught up (at its end, nothing waiting:
//! [`AuditConsumer::caught_up`](kubetrail_queue::AuditConsumer::caught_up)); a backlog is
//! processed on its events' own time.
//!
//! On revocation (a rebalance, or shutdown) the partition's consumer stops handing out
//! batches, its worker finishes the pipeline (emits the open families) and waits for the
//! export; the rebalance callback waits for that (at most [`KafkaConfig::revoke_timeout`]),
//! commits what is acknowledged, and only then gives the partition up.
//!
//! # Threads and backpressure
//!
//! A consumer owns one OS thread that polls librdkafka (whose consumer API blocks, and whose
//! rebalance callback runs on the polling thread): it copies messages out and reads their
//! headers, groups them into batches, hands them to workers over bounded channels, commits,
//! and runs the rebalance callback. Values are parsed on the workers' tasks. A partition
//! whose worker is behind (a slow or down exporter blocks the worker) keeps at most
//! [`KafkaConfig::max_buffered_bytes`] of messages waiting, then is paused until its worker
//! caught up: consumption slows down, nothing is dropped. A producer owns one thread that
//! probes the brokers' metadata for [`health`](kubetrail_queue::AuditProducer::health).
//!
//! # Restarts: the lookback
//!
//! Offsets are committed once a batch's *request* spans are exported, but a family's *object*
//! spans are emitted later (after `linger`), from state built from every event of the family
//! in the window, and the owner graph is learned from earlier events. A consumer that is
//! killed (`kill -9`) loses that state; a partition that moves loses it too. So when a
//! partition is assigned, its consumer does not start at the committed offset `C` but
//! re-reads from `lookback` before it:
//!
//! 1. `T` = the timestamp of message `C - 1`, the last one committed (read by a second
//!    consumer that assigns partitions itself and never joins the group or commits);
//! 2. `S` = the first offset whose message timestamp is at or after `T - lookback`: the
//!    broker's answer to `offsets_for_times` (Kafka's time index);
//! 3. the partition is assigned at `S`. Messages in `[S, C)` go through the pipeline like
//!    any other (counted as `kubetrail_kafka_messages_replayed_total`): they rebuild the
//!    open families, the segment counters and the learned owner graph. The request spans
//!    they produce are exact duplicates of spans already exported (ids are derived from the
//!    input), which OTLP back ends store as the same span; acknowledging them commits
//!    nothing new.
//!
//! `lookback` must cover a window and the linger, [`minimum_lookback`] (default 30 min
//! 30 s): every family still open at `T` started after `T - window - linger`. Message
//! timestamps are acceptance times, which track event times for a live webhook; a topic
//! filled from old dumps should be consumed before it is shared, or with a larger
//! `lookback`. So every accepted event ends up exported (at least once) and families are not
//! split, whoever consumes a partition after whatever crash. A family whose partition is
//! revoked while it is still active is emitted by the old owner at revocation and again,
//! complete, by the new one — same ids; a back end shows the later copy.
//!
//! # Metrics
//!
//! `kubetrail_kafka_messages_produced_total`, `kubetrail_kafka_produce_errors_total{kind}`,
//! `kubetrail_kafka_events_bodies_dropped_total`, `kubetrail_kafka_messages_consumed_total`,
//! `kubetrail_kafka_messages_replayed_total`, `kubetrail_kafka_messages_malformed_total`,
//! `kubetrail_kafka_commits_total{result}`, `kubetrail_kafka_rebalances_total{kind}` and the
//! gauge `kubetrail_kafka_consumer_lag{partition}` (from librdkafka's statistics: the high
//! watermark minus the committed offset).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod consumer;
mod lookback;
mod message;
mod metric_names;
pub use metric_names::describe_metrics;
mod partitioned;
mod producer;
mod route;
mod tracker;

pub(crate) use kubetrail_model::now_unix_nanos as wall_now;

use rdkafka::config::RDKafkaLogLevel;

pub use config::{KafkaConfig, minimum_lookback};
pub use consumer::{ConsumerStats, KafkaConsumer, StatsHandle};
pub use message::{
    BODIES_DROPPED_ANNOTATION, FORMAT_VERSION, HEADER_CLUSTER, HEADER_FORMAT, HEADER_RECEIVED_AT,
    HEADER_SOURCE, partition_key,
};
pub use partitioned::{KafkaPartitionedConsumer, PartitionConsumer};
pub use producer::KafkaProducer;
pub use route::{Repartitioner, RouteProgress, RouteStats, RouteStatsHandle, family_key};

/// What can go wrong setting up or running the Kafka queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    /// librdkafka refused to create a client (a bad property, most likely).
    #[error("creating the Kafka {what} for brokers {brokers}: {source}")]
    Client {
        /// `producer` or `consumer`.
        what: &'static str,
        /// The bootstrap brokers.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Subscribing to the topic failed.
    #[error("subscribing to Kafka topic {topic}: {source}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Flushing the producer did not finish.
    #[error("flushing the Kafka producer: {source}")]
    Flush {
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A background thread could not be started.
    #[error("starting a Kafka client thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The consumer failed for good.
    #[error("the Kafka consumer failed: {0}")]
    Fatal(String),
}

/// The librdkafka log level that lets through what the `tracing` subscriber would show
/// (target `librdkafka`).
pub(crate) fn librdkafka_log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    }
}

/// librdkafka's log lines, through `tracing`.
pub(crate) fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{fac}: {message}");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
    }
}
