//! One worker — one pipeline — per partition of a [`PartitionedConsumer`].
//!
//! Why per partition: the pipeline's clock is event time, and a family is emitted once it has
//! been quiet for `linger` of it. One pipeline fed by several partitions would move its clock
//! with all of them, so when a family is emitted (and whether its later events start a new
//! segment with new ids) would depend on which partitions this process holds. With one
//! pipeline per partition, N consumers produce the same spans as one, and as a replay of
//! the same events. The queue backend (Kafka) only hands out partitions; this module runs
//! them.

use std::future::Future;
use std::ops::ControlFlow;

use tracing::Instrument as _;

use kubetrail_export::{ExporterClosed, ExporterHandle};
use kubetrail_pipeline::{Pipeline, PipelineConfig};
use kubetrail_queue::{PartitionLease, PartitionedConsumer, run_partitions};

use crate::{Worker, WorkerConfig, WorkerReport};

/// What a [`PartitionedWorker`] did.
#[derive(Debug, Clone, Default)]
pub struct PartitionedReport {
    /// One report per partition assignment that ran, in the order they ended.
    pub partitions: Vec<(i32, WorkerReport)>,
}

/// Why a [`PartitionedWorker`] stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum PartitionedError {
    /// The span exporter stopped: nothing more can be exported (or acknowledged).
    #[error("a partition worker stopped: {0}")]
    Exporter(#[source] ExporterClosed),
    /// A partition worker panicked.
    #[error("a partition worker failed: {0}")]
    Worker(#[source] tokio::task::JoinError),
    /// The consumer failed for good.
    #[error("the consumer of {source_name} failed: {reason}")]
    Consumer {
        /// What was consumed (the topic).
        source_name: String,
        /// Its failure.
        reason: String,
    },
}

/// Runs one [`Worker`] — one [`Pipeline`] — per assigned partition, all exporting through
/// one exporter.
///
/// A partition's pipeline sees only that partition's events, in order: its clock does not
/// depend on which other partitions this process holds. On revocation the partition's
/// worker stops taking batches, finishes its pipeline (emits the open families), waits until
/// what it exported is acknowledged, and only then finishes the lease (the queue commits and
/// hands the partition over).
pub struct PartitionedWorker<P> {
    consumer: P,
    pipeline: PipelineConfig,
    exporter: ExporterHandle,
    worker: WorkerConfig,
}

impl<P> std::fmt::Debug for PartitionedWorker<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedWorker")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl<P: PartitionedConsumer> PartitionedWorker<P> {
    /// Runs a pipeline built from `pipeline` on each partition `consumer` is assigned.
    pub fn new(
        consumer: P,
        pipeline: PipelineConfig,
        exporter: ExporterHandle,
        worker: WorkerConfig,
    ) -> Self {
        PartitionedWorker {
            consumer,
            pipeline,
            exporter,
            worker,
        }
    }

    /// Processes assigned partitions until `stop` resolves, then closes gracefully: every
    /// partition's pipeline is finished (open families emitted), its spans exported and
    /// acknowledged, its lease finished, and the consumer closed.
    ///
    /// Errors when the exporter stops (the process should exit and be restarted: nothing
    /// unexported was acknowledged), a worker panics, or the consumer fails for good.
    pub async fn run(
        mut self,
        stop: impl Future<Output = ()>,
    ) -> Result<PartitionedReport, PartitionedError> {
        let mut report = PartitionedReport::default();
        let mut failure: Option<PartitionedError> = None;
        let source = self.consumer.source().to_owned();
        let (pipeline, exporter, config) = (&self.pipeline, &self.exporter, &self.worker);
        let start = |lease: PartitionLease<P::Partition>| {
            let PartitionLease {
                partition,
                consumer,
                done,
            } = lease;
            let worker = Worker::new(
                consumer,
                Pipeline::new(pipeline.clone()),
                exporter.clone(),
                config.clone(),
            )
            .gauge_partition(partition);
            // What the partition's worker logs carries its source and partition (at warn
            // level, so that the default filter keeps the context).
            let span = tracing::warn_span!("partition_worker", topic = %source, partition);
            async move {
                let result = worker.run(std::future::pending()).await;
                done.finish().await;
                (partition, result)
            }
            .instrument(span)
        };
        let ended = |joined| match record(&mut report, joined) {
            Some(e) => {
                failure.get_or_insert(e);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        };
        run_partitions(&mut self.consumer, stop, start, ended).await;
        if let Some(reason) = self.consumer.failure() {
            return Err(PartitionedError::Consumer {
                source_name: source,
                reason,
            });
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

fn record(
    report: &mut PartitionedReport,
    joined: Result<(i32, Result<WorkerReport, ExporterClosed>), tokio::task::JoinError>,
) -> Option<PartitionedError> {
    match joined {
        Ok((partition, Ok(r))) => {
            tracing::debug!(partition, batches = r.batches, "partition worker finished");
            report.partitions.push((partition, r));
            None
        }
        Ok((partition, Err(e))) => {
            tracing::error!(partition, "the exporter stopped");
            Some(PartitionedError::Exporter(e))
        }
        Err(e) => {
            tracing::error!(error = %e, "a partition worker failed");
            Some(PartitionedError::Worker(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kubetrail_export::{ExportError, Exporter, ExporterConfig, SpanSink};
    use kubetrail_model::SpanRecord;
    use kubetrail_queue::embedded::EmbeddedConsumer;
    use kubetrail_queue::{AuditBatch, AuditProducer, PartitionDone};
    use tokio::sync::mpsc;

    use super::*;

    /// Hands out the leases a test queues, as a consumer group would.
    struct FakeGroup {
        leases: mpsc::UnboundedReceiver<PartitionLease<EmbeddedConsumer>>,
        closing: Arc<Mutex<bool>>,
        failure: Option<String>,
    }

    #[async_trait::async_trait]
    impl PartitionedConsumer for FakeGroup {
        type Partition = EmbeddedConsumer;
        async fn next_partition(&mut self) -> Option<PartitionLease<EmbeddedConsumer>> {
            self.leases.recv().await
        }
        fn begin_close(&self) {
            *self.closing.lock().unwrap() = true;
        }
        fn failure(&self) -> Option<String> {
            self.failure.clone()
        }
        fn source(&self) -> &str {
            "audit"
        }
    }

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanRecord>>>);

    #[async_trait::async_trait]
    impl SpanSink for Collect {
        async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
            self.0.lock().unwrap().extend_from_slice(batch);
            Ok(())
        }
        async fn finish(&mut self) -> Result<(), ExportError> {
            Ok(())
        }
        fn name(&self) -> &'static str {
            "collect"
        }
    }

    fn event(name: &str) -> kubetrail_model::AuditEvent {
        let t = "2024-05-01T10:00:00Z";
        serde_json::from_str(&format!(
            r#"{{"level":"Metadata","auditID":"{name}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/n/configmaps/{name}","verb":"update","user":{{"username":"u"}},"objectRef":{{"resource":"configmaps","namespace":"n","name":"{name}"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}"}}"#
        ))
        .unwrap()
    }

    /// A lease of `partition` holding one event about `name` (its queue already closed), and
    /// what its `done` reports: how many spans had been delivered when it was finished.
    async fn lease(
        partition: i32,
        name: &str,
        delivered: Collect,
    ) -> (
        PartitionLease<EmbeddedConsumer>,
        tokio::sync::oneshot::Receiver<usize>,
    ) {
        let (producer, consumer) = kubetrail_queue::embedded::channel(10);
        let batch = AuditBatch {
            cluster: "c1".into(),
            events: vec![event(name)],
            ..AuditBatch::default()
        };
        producer.publish(batch).await.unwrap();
        producer.close();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = PartitionDone::new(async move {
            let _ = tx.send(delivered.0.lock().unwrap().len());
        });
        (
            PartitionLease {
                partition,
                consumer,
                done,
            },
            rx,
        )
    }

    fn replay_worker() -> WorkerConfig {
        WorkerConfig {
            tick: None,
            ..WorkerConfig::default()
        }
    }

    #[tokio::test]
    async fn every_partition_gets_a_pipeline_and_its_lease_ends_after_its_spans_are_delivered() {
        let sink = Collect::default();
        let config = ExporterConfig {
            max_batch_delay: std::time::Duration::from_millis(1),
            ..Default::default()
        };
        let (exporter, exporter_task) = Exporter::spawn(vec![Box::new(sink.clone())], config);
        let (tx, leases) = mpsc::unbounded_channel();
        let (one, done_one) = lease(0, "a", sink.clone()).await;
        let (two, done_two) = lease(3, "b", sink.clone()).await;
        tx.send(one).unwrap();
        tx.send(two).unwrap();
        drop(tx); // the group closes once both were handed out
        let group = FakeGroup {
            leases,
            closing: Arc::default(),
            failure: None,
        };
        let worker =
            PartitionedWorker::new(group, PipelineConfig::default(), exporter, replay_worker());
        let report = worker.run(std::future::pending()).await.unwrap();

        let mut partitions: Vec<(i32, u64)> = report
            .partitions
            .iter()
            .map(|(p, r)| (*p, r.pipeline.events_in))
            .collect();
        partitions.sort_unstable();
        assert_eq!(
            partitions,
            vec![(0, 1), (3, 1)],
            "one pipeline per partition"
        );
        // Each lease was finished only after its own object's spans (request + object) were
        // delivered.
        let (a, b) = (done_one.await.unwrap(), done_two.await.unwrap());
        assert!(
            a >= 2 && b >= 2,
            "delivered before the leases ended: {a}, {b}"
        );
        let exported = exporter_task.await.unwrap();
        assert_eq!(
            exported.spans_exported as usize,
            sink.0.lock().unwrap().len()
        );
        let traces: std::collections::BTreeSet<String> = sink
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.trace_id.to_string())
            .collect();
        assert_eq!(
            traces.len(),
            2,
            "both partitions' objects were exported: {traces:?}"
        );
    }

    #[tokio::test]
    async fn stop_closes_the_consumer_and_a_failed_consumer_is_an_error() {
        let (exporter, _task) = Exporter::spawn(Vec::new(), ExporterConfig::default());
        let (tx, leases) = mpsc::unbounded_channel::<PartitionLease<EmbeddedConsumer>>();
        let closing = Arc::new(Mutex::new(false));
        let group = FakeGroup {
            leases,
            closing: closing.clone(),
            failure: Some("the brokers are gone".into()),
        };
        let worker =
            PartitionedWorker::new(group, PipelineConfig::default(), exporter, replay_worker());
        // Stop at once; the fake group ends (its sender dropped) once it was asked to close.
        let closing_seen = closing.clone();
        let stop = async move {
            // Runs inside the worker's select: the group is not closing yet.
            assert!(!*closing_seen.lock().unwrap());
        };
        let run = tokio::spawn(worker.run(stop));
        // The worker asked the group to close; the group's end is the sender's drop.
        while !*closing.lock().unwrap() {
            tokio::task::yield_now().await;
        }
        drop(tx);
        match run.await.unwrap() {
            Err(PartitionedError::Consumer {
                source_name,
                reason,
            }) => {
                assert_eq!(source_name, "audit");
                assert_eq!(reason, "the brokers are gone");
            }
            other => panic!("expected the consumer's failure, got {other:?}"),
        }
    }
}
