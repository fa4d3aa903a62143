//! A consumer-group member that hands out each assigned partition as a consumer of its own:
//! [`KafkaPartitionedConsumer`] implements [`PartitionedConsumer`], on which
//! `kubetrail_worker::PartitionedWorker` runs one pipeline per partition.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use kubetrail_queue::{
    AuditConsumer, PartitionDone, PartitionLease, PartitionedConsumer, Received,
};

use crate::consumer::{
    ConsumerStats, FinishGuard, Lease, PartitionShared, Poller, RawBatch, Routing, StatsHandle,
};
use crate::{Error, KafkaConfig};

/// A consumer-group member that gives each assigned partition its own consumer.
///
/// Every assignment of a partition becomes a [`PartitionLease`], returned by
/// [`next_partition`](PartitionedConsumer::next_partition): its [`PartitionConsumer`] hands
/// out the partition's batches in offset order, starting `lookback` before the committed
/// offset, until the partition is revoked or the consumer closes; then
/// [`finish`](PartitionDone::finish) the lease: it waits until every batch received from the
/// partition was acknowledged or dropped (at most
/// [`revoke_timeout`](KafkaConfig::revoke_timeout)), and the revocation commits and hands the
/// partition over. `kubetrail_worker::PartitionedWorker` does all of this.
pub struct KafkaPartitionedConsumer {
    poller: Poller,
    leases: mpsc::UnboundedReceiver<Lease>,
    settle_timeout: Duration,
    topic: String,
    /// The routing stage feeding this topic, in this process.
    upstream: Option<crate::route::RouteProgress>,
}

impl std::fmt::Debug for KafkaPartitionedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPartitionedConsumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaPartitionedConsumer {
    /// Joins the consumer group and subscribes to the topic.
    pub fn new(config: &KafkaConfig) -> Result<KafkaPartitionedConsumer, Error> {
        let (tx, leases) = mpsc::unbounded_channel();
        let poller = Poller::start(config, Routing::PerPartition(tx))?;
        Ok(KafkaPartitionedConsumer {
            poller,
            leases,
            settle_timeout: config.revoke_timeout,
            topic: config.topic.clone(),
            upstream: None,
        })
    }

    /// Reads the family topic of a [`Repartitioner`](crate::Repartitioner) running in this
    /// process: a partition counts as caught up (and its pipeline moves its clock with wall
    /// time) only while the routing is caught up too, so a routing stall (a rebalance of the
    /// routing group, a backlog) is not taken for quiet and does not emit families early or
    /// make the next events late.
    pub fn with_upstream(mut self, progress: crate::route::RouteProgress) -> Self {
        self.upstream = Some(progress);
        self
    }

    /// What the consumer did so far.
    pub fn stats(&self) -> ConsumerStats {
        self.poller.shared.stats()
    }

    /// A handle to the consumer's statistics (assigned partitions, committed offsets …),
    /// readable after the consumer was moved into a worker, and after it closed.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.poller.shared.clone())
    }
}

#[async_trait::async_trait]
impl PartitionedConsumer for KafkaPartitionedConsumer {
    type Partition = PartitionConsumer;

    async fn next_partition(&mut self) -> Option<PartitionLease<PartitionConsumer>> {
        let Lease {
            partition,
            rx,
            guard,
        } = self.leases.recv().await?;
        let done = finish_lease(partition.clone(), guard, self.settle_timeout);
        Some(PartitionLease {
            partition: partition.partition,
            consumer: PartitionConsumer {
                rx,
                shared: partition,
                upstream: self.upstream.clone(),
            },
            done: PartitionDone::new(done),
        })
    }

    /// Starts closing: commit what is acknowledged, revoke every partition (their consumers
    /// end; the revocation waits for their leases to finish), leave the group. Keep calling
    /// [`next_partition`](PartitionedConsumer::next_partition) until it returns `None`.
    fn begin_close(&self) {
        self.poller.begin_close();
    }

    fn failure(&self) -> Option<String> {
        self.poller.shared.fatal()
    }

    fn source(&self) -> &str {
        &self.topic
    }
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

/// The end of a lease: waits until every batch received from the partition was
/// acknowledged or dropped (the worker acknowledges after export; at most `settle_timeout`),
/// then lets the revocation commit (drops the guard it waits on). Dropping the future
/// unpolled lets it commit at once.
async fn finish_lease(shared: Arc<PartitionShared>, guard: FinishGuard, settle_timeout: Duration) {
    let mut outstanding = shared.outstanding.subscribe();
    let settled = tokio::time::timeout(settle_timeout, outstanding.wait_for(|n| *n == 0));
    if settled.await.is_err() {
        tracing::warn!(
            partition = shared.partition,
            "kafka: batches of a revoked partition were not acknowledged in time"
        );
    }
    drop(guard);
}
