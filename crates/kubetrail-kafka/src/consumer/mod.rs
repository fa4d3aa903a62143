//! The consuming side: a polling thread that owns the librdkafka consumer, and
//! [`KafkaConsumer`], the [`AuditConsumer`] over all assigned partitions.
//!
//! librdkafka's consumer API is blocking and its rebalance callback runs on the thread that
//! polls, so one OS thread per consumer does all of it: polls messages (copying them out and
//! reading their headers, not parsing their values), groups them into per-partition batches,
//! hands the batches to workers through bounded channels (pausing a partition whose channel
//! is full, resuming it once there is room), commits acknowledged offsets, and runs the
//! rebalance callback — which may block: on assignment to find where each partition starts
//! (the lookback), on revocation to let per-partition workers finish before committing.
//!
//! The pieces, each in its own file:
//!
//! * [`poll`]: the polling thread ([`Poller`]) and its loop;
//! * [`context`]: the librdkafka context ([`ConsumerCtx`](context::ConsumerCtx)) and what the
//!   loop does with each message, end of partition and round (the per-partition state);
//! * [`rebalance`]: the rebalance and commit callbacks — assignment with the lookback,
//!   revocation waiting for the partitions' workers, committing what is acknowledged;
//! * [`batch`]: per-partition batching ([`RawBatch`]) and a batch's acknowledgement;
//! * [`flow`]: when a partition is paused and resumed (`max_buffered_bytes`);
//! * [`shared`]: the state shared with the tasks receiving batches and the acknowledgements;
//! * [`stats`]: [`ConsumerStats`] and the offset bookkeeping behind it.
//!
//! Everything but [`poll`], [`context`]'s callbacks and [`rebalance`]'s broker calls works
//! without a librdkafka client, and is unit-tested that way.

use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;

use kubetrail_queue::{AuditConsumer, Received};

use crate::{Error, KafkaConfig};

mod batch;
mod context;
mod flow;
mod poll;
mod rebalance;
mod shared;
mod stats;

pub(crate) use batch::RawBatch;
pub(crate) use poll::Poller;
pub(crate) use shared::{ConsumerShared, PartitionShared};
pub use stats::{ConsumerStats, StatsHandle};

/// Batches queued in the channel of a [`KafkaConsumer`].
const SHARED_CHANNEL_BATCHES: usize = 8;

/// Locks `m`, ignoring poisoning (the data is counters and offsets: still usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Signals the polling thread, when dropped, that a revoked partition's worker is done.
#[derive(Debug)]
pub(crate) struct FinishGuard(#[allow(dead_code)] std_mpsc::Sender<()>);

/// A newly assigned partition, for per-partition workers.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) partition: std::sync::Arc<PartitionShared>,
    pub(crate) rx: mpsc::Receiver<RawBatch>,
    pub(crate) guard: FinishGuard,
}

/// Where batches go.
pub(crate) enum Routing {
    /// Every partition into one channel ([`KafkaConsumer`]).
    Shared(mpsc::Sender<RawBatch>),
    /// A channel per partition, announced as a [`Lease`].
    PerPartition(mpsc::UnboundedSender<Lease>),
}

/// Consumes audit events from Kafka: every assigned partition's batches through one
/// [`AuditConsumer`].
///
/// Each [`Received`] batch holds consecutive messages of **one** partition (at most
/// [`max_batch_events`](KafkaConfig::max_batch_events), those available now) from one
/// cluster. Its [`Ack`](kubetrail_queue::Ack) is explicit: offsets are committed (every
/// [`commit_interval`](KafkaConfig::commit_interval)) up to the end of the longest run of
/// acknowledged batches of a partition; dropping an `Ack` without `done` leaves its messages
/// to be read again by the partition's next owner.
///
/// With more than one partition, prefer [`KafkaPartitionedConsumer`](crate::KafkaPartitionedConsumer)
/// under `kubetrail_worker::PartitionedWorker`:
/// one pipeline over several partitions has a clock that depends on which partitions it
/// holds (see the crate documentation).
pub struct KafkaConsumer {
    poller: Poller,
    rx: mpsc::Receiver<RawBatch>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.poller.shared.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Joins the consumer group and subscribes to the topic (partitions are assigned in the
    /// background, on the polling thread).
    pub fn new(config: &KafkaConfig) -> Result<KafkaConsumer, Error> {
        let (tx, rx) = mpsc::channel(SHARED_CHANNEL_BATCHES);
        let poller = Poller::start(config, Routing::Shared(tx))?;
        Ok(KafkaConsumer { poller, rx })
    }

    /// What the consumer did so far.
    pub fn stats(&self) -> ConsumerStats {
        self.poller.shared.stats()
    }

    /// A handle to the consumer's statistics that outlives borrows of the consumer.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.poller.shared.clone())
    }

    /// Commits what is acknowledged, gives the partitions up and leaves the group, waiting
    /// (a bounded time) until it is done. Dropping the consumer does the same without
    /// waiting.
    pub async fn close(mut self) {
        self.poller.close().await;
    }
}

#[async_trait::async_trait]
impl AuditConsumer for KafkaConsumer {
    async fn recv(&mut self) -> Option<Received> {
        loop {
            let batch = self.rx.recv().await?;
            if batch.is_revoked() {
                continue; // the partition's next owner reads it again
            }
            batch.mark_taken();
            if let Some(r) = batch.into_received() {
                return Some(r);
            }
        }
    }

    fn caught_up(&self) -> bool {
        let assigned = lock(&self.poller.shared.assigned);
        shared::all_drained(&assigned) && self.rx.is_empty()
    }
}
