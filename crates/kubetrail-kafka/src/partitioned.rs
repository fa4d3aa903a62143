//! One pipeline per partition: [`PartitionedConsumer`] hands out assigned partitions as
//! [`PartitionLease`]s, and [`PartitionedWorker`] runs a [`Worker`] on each.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::Instrument as _;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use kubetrail_export::{ExporterClosed, ExporterHandle};
use kubetrail_pipeline::{Pipeline, PipelineConfig};
use kubetrail_queue::{AuditConsumer, Received};
use kubetrail_worker::{Worker, WorkerConfig, WorkerReport};

use crate::consumer::{
    ConsumerStats, FinishGuard, Lease, PartitionShared, Poller, RawBatch, Routing, StatsHandle,
};
use crate::{Error, KafkaConfig};

/// A consumer-group member that gives each assigned partition its own consumer.
///
/// Every assignment of a partition becomes a [`PartitionLease`], returned by
/// [`next_partition`](Self::next_partition): run one pipeline on its
/// [`PartitionConsumer`] until that ends (the partition was revoked, or the consumer is
/// closing), then [`finish`](PartitionDone::finish) the lease. The revocation waits for that
/// (at most [`revoke_timeout`](KafkaConfig::revoke_timeout)) before it commits and hands the
/// partition over. [`PartitionedWorker`] does all of this.
pub struct PartitionedConsumer {
    poller: Poller,
    leases: mpsc::UnboundedReceiver<Lease>,
    settle_timeout: Duration,
}

impl std::fmt::Debug for PartitionedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedConsumer")
            .finish_non_exhaustive()
    }
}

impl PartitionedConsumer {
    /// Joins the consumer group and subscribes to the topic.
    pub fn new(config: &KafkaConfig) -> Result<PartitionedConsumer, Error> {
        let (tx, leases) = mpsc::unbounded_channel();
        let poller = Poller::start(config, Routing::PerPartition(tx))?;
        Ok(PartitionedConsumer {
            poller,
            leases,
            settle_timeout: config.revoke_timeout,
        })
    }

    /// The next newly assigned partition; `None` once the consumer has closed.
    pub async fn next_partition(&mut self) -> Option<PartitionLease> {
        let Lease {
            partition,
            rx,
            guard,
        } = self.leases.recv().await?;
        Some(PartitionLease {
            partition: partition.partition,
            consumer: PartitionConsumer {
                rx,
                shared: partition.clone(),
                upstream: None,
            },
            done: PartitionDone {
                shared: partition,
                guard,
                settle_timeout: self.settle_timeout,
            },
        })
    }

    /// Starts closing: commit what is acknowledged, revoke every partition (their consumers
    /// end; the revocation waits for their leases to finish), leave the group. Keep calling
    /// [`next_partition`](Self::next_partition) until it returns `None`.
    pub fn begin_close(&self) {
        self.poller.begin_close();
    }

    /// What the consumer did so far.
    pub fn stats(&self) -> ConsumerStats {
        self.poller.shared.stats()
    }

    /// A handle to the consumer's statistics.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.poller.shared.clone())
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        self.poller.shared.fatal()
    }
}

/// One assignment of one partition: its consumer, and what to do when that ended.
#[derive(Debug)]
pub struct PartitionLease {
    /// The partition.
    pub partition: i32,
    /// Its batches, in offset order, starting `lookback` before the committed offset.
    pub consumer: PartitionConsumer,
    /// Finish it once the consumer ended and its pipeline was finished.
    pub done: PartitionDone,
}

/// The batches of one assigned partition. Ends (`recv` returns `None`) when the partition is
/// revoked or the consumer closes; batches not yet received are then left to the next owner.
#[derive(Debug)]
pub struct PartitionConsumer {
    rx: mpsc::Receiver<RawBatch>,
    shared: Arc<PartitionShared>,
    /// The routing stage feeding this topic, in this process: the partition counts as caught
    /// up only while it is too.
    upstream: Option<crate::route::RouteProgress>,
}

impl PartitionConsumer {
    /// The partition.
    pub fn partition(&self) -> i32 {
        self.shared.partition
    }

    /// Like [`recv`](AuditConsumer::recv), saying whether the batch was re-read by the
    /// lookback (all of it before the offset committed at assignment).
    pub(crate) async fn recv_marked(&mut self) -> Option<(Received, bool)> {
        loop {
            if self.shared.revoked.load(Ordering::Acquire) {
                return None;
            }
            let batch = self.rx.recv().await?;
            if self.shared.revoked.load(Ordering::Acquire) {
                return None;
            }
            let replayed = batch.replayed();
            batch.mark_taken();
            if let Some(r) = batch.into_received() {
                return Some((r, replayed));
            }
        }
    }

    /// Whether the partition was revoked (its batches are left to the next owner).
    pub(crate) fn revoked(&self) -> bool {
        self.shared.revoked.load(Ordering::Acquire)
    }
}

#[async_trait::async_trait]
impl AuditConsumer for PartitionConsumer {
    async fn recv(&mut self) -> Option<Received> {
        loop {
            if self.shared.revoked.load(Ordering::Acquire) {
                return None;
            }
            let batch = self.rx.recv().await?;
            if self.shared.revoked.load(Ordering::Acquire) {
                return None;
            }
            batch.mark_taken();
            if let Some(r) = batch.into_received() {
                return Some(r);
            }
        }
    }

    /// At the end of the partition, with nothing waiting (and the routing stage feeding it
    /// caught up, when there is one): the worker may tick.
    fn caught_up(&self) -> bool {
        self.shared.drained()
            && self.rx.is_empty()
            && self.upstream.as_ref().is_none_or(|u| u.idle())
    }
}

/// The end of a [`PartitionLease`].
#[derive(Debug)]
pub struct PartitionDone {
    shared: Arc<PartitionShared>,
    guard: FinishGuard,
    settle_timeout: Duration,
}

impl PartitionDone {
    /// Waits until every batch received from the partition was acknowledged or dropped (the
    /// worker acknowledges after export; at most `revoke_timeout`), then lets the revocation
    /// commit. Dropping the `PartitionDone` lets it commit at once.
    pub async fn finish(self) {
        let mut outstanding = self.shared.outstanding.subscribe();
        let settled = tokio::time::timeout(self.settle_timeout, outstanding.wait_for(|n| *n == 0));
        if settled.await.is_err() {
            tracing::warn!(
                partition = self.shared.partition,
                "kafka: batches of a revoked partition were not acknowledged in time"
            );
        }
        drop(self.guard);
    }
}

/// What a [`PartitionedWorker`] did.
#[derive(Debug, Clone, Default)]
pub struct PartitionedReport {
    /// One report per partition assignment that ran, in the order they ended.
    pub partitions: Vec<(i32, WorkerReport)>,
    /// The consumer's statistics at the end.
    pub consumer: ConsumerStats,
}

/// Runs one [`Worker`] — one [`Pipeline`] — per assigned partition, all exporting through
/// one exporter.
///
/// A partition's pipeline sees only that partition's events, in offset order, from
/// `lookback` before the committed offset: its clock, and so when its families are emitted
/// and which ids they get, does not depend on which other partitions this process holds, so
/// any number of consumers produce the same spans as one. On revocation the partition's
/// worker stops taking batches, finishes its pipeline (emits the open families), waits until
/// what it exported is acknowledged, and only then are the offsets committed and the
/// partition handed over.
pub struct PartitionedWorker {
    consumer: PartitionedConsumer,
    pipeline: PipelineConfig,
    exporter: ExporterHandle,
    worker: WorkerConfig,
    upstream: Option<crate::route::RouteProgress>,
    /// The topic consumed (the `topic` of each partition worker's span).
    topic: String,
}

impl std::fmt::Debug for PartitionedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedWorker")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl PartitionedWorker {
    /// Joins the consumer group; [`run`](Self::run) processes what is assigned.
    pub fn new(
        kafka: &KafkaConfig,
        pipeline: PipelineConfig,
        exporter: ExporterHandle,
        worker: WorkerConfig,
    ) -> Result<PartitionedWorker, Error> {
        Ok(PartitionedWorker {
            consumer: PartitionedConsumer::new(kafka)?,
            pipeline,
            exporter,
            worker,
            upstream: None,
            topic: kafka.topic.clone(),
        })
    }

    /// Reads the family topic of a [`Repartitioner`](crate::Repartitioner) running in this
    /// process: the pipelines move their clocks with wall time only while its routing is caught
    /// up too, so a routing stall (a rebalance of the routing group, a backlog) is not taken
    /// for quiet and does not emit families early or make the next events late.
    pub fn with_upstream(mut self, progress: crate::route::RouteProgress) -> Self {
        self.upstream = Some(progress);
        self
    }

    /// A handle to the consumer's statistics (assigned partitions, committed offsets …).
    pub fn stats_handle(&self) -> StatsHandle {
        self.consumer.stats_handle()
    }

    /// Processes assigned partitions until `stop` resolves, then closes gracefully: every
    /// partition's pipeline is finished (open families emitted), its spans exported and
    /// acknowledged, the offsets committed, and the group left.
    ///
    /// Errors when the exporter stops (the process should exit and be restarted: nothing
    /// unexported was committed) or the consumer fails fatally.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<PartitionedReport, Error> {
        let mut tasks: JoinSet<(i32, Result<WorkerReport, ExporterClosed>)> = JoinSet::new();
        let mut report = PartitionedReport::default();
        let mut failure: Option<Error> = None;
        let mut stopping = false;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop, if !stopping => {
                    stopping = true;
                    self.consumer.begin_close();
                }
                lease = self.consumer.next_partition() => {
                    let Some(lease) = lease else { break };
                    let pipeline = Pipeline::new(self.pipeline.clone());
                    let mut consumer = lease.consumer;
                    consumer.upstream = self.upstream.clone();
                    let (partition, done) = (lease.partition, lease.done);
                    let worker = Worker::new(consumer, pipeline, self.exporter.clone(), self.worker.clone())
                        .gauge_partition(partition);
                    // What the partition's worker logs carries its topic and partition (at warn
                    // level, so that the default filter keeps the context).
                    let span = tracing::warn_span!("partition_worker", topic = %self.topic, partition);
                    tasks.spawn(async move {
                        let result = worker.run(std::future::pending()).await;
                        done.finish().await;
                        (partition, result)
                    }.instrument(span));
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(e) = record(&mut report, joined) && failure.is_none() {
                        failure = Some(e);
                        stopping = true;
                        self.consumer.begin_close();
                    }
                }
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Some(e) = record(&mut report, joined) {
                failure.get_or_insert(e);
            }
        }
        report.consumer = self.consumer.stats();
        if let Some(reason) = self.consumer.fatal() {
            return Err(Error::Fatal(reason));
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
) -> Option<Error> {
    match joined {
        Ok((partition, Ok(r))) => {
            tracing::debug!(
                partition,
                batches = r.batches,
                "kafka: partition worker finished"
            );
            report.partitions.push((partition, r));
            None
        }
        Ok((partition, Err(e))) => {
            tracing::error!(partition, "kafka: the exporter stopped");
            Some(Error::Exporter(e))
        }
        Err(e) => {
            tracing::error!(error = %e, "kafka: a partition worker failed");
            Some(Error::Worker(e.to_string()))
        }
    }
}
