//! The state one consumer shares between its polling thread, the tasks that receive its
//! batches and the acknowledgements of those batches: [`ConsumerShared`] for the consumer,
//! [`PartitionShared`] for one assignment of one partition.
//!
//! It exists apart from the polling thread so that batches, acknowledgements and statistics
//! are built (and tested) without a librdkafka client.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use kubetrail_model::ratelimit::LogLimiter;

use super::lock;
use super::stats::{self, Counters};
use crate::tracker::Tracker;

/// State shared by the polling thread, the consumers and acknowledgements of one Kafka
/// consumer.
#[derive(Debug)]
pub(crate) struct ConsumerShared {
    pub(super) topic: String,
    pub(super) counters: Counters,
    /// An acknowledgement moved some partition's committable offset.
    pub(super) commit_dirty: AtomicBool,
    pub(super) committed: Mutex<BTreeMap<i32, i64>>,
    pub(super) taken: Mutex<BTreeMap<i32, i64>>,
    pub(super) assigned: Mutex<BTreeMap<i32, Arc<PartitionShared>>>,
    /// Why the consumer stopped, if it failed.
    pub(super) fatal: Mutex<Option<String>>,
    pub(super) closed: AtomicBool,
    /// Bounds the lines about malformed messages (each is counted either way).
    pub(super) malformed_log: Mutex<LogLimiter>,
}

impl ConsumerShared {
    /// The state of a consumer of `topic` that did nothing yet.
    pub(super) fn new(topic: String) -> ConsumerShared {
        ConsumerShared {
            topic,
            counters: Counters::default(),
            commit_dirty: AtomicBool::new(false),
            committed: Mutex::new(BTreeMap::new()),
            taken: Mutex::new(BTreeMap::new()),
            assigned: Mutex::new(BTreeMap::new()),
            fatal: Mutex::new(None),
            closed: AtomicBool::new(false),
            malformed_log: Mutex::new(LogLimiter::for_items()),
        }
    }

    /// Why the consumer failed for good, if it did.
    pub(crate) fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    /// Records a successful commit of `partition` at `offset`; counted when it moved the
    /// partition's committed offset forward.
    pub(super) fn record_commit(&self, partition: i32, offset: i64) {
        let mut c = lock(&self.committed);
        if !stats::record_newer(&mut c, partition, offset) {
            return;
        }
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kubetrail_kafka_commits_total", "result" => "ok").increment(1);
    }

    /// Counts a failed commit.
    pub(super) fn count_commit_error(&self) {
        self.counters.commit_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kubetrail_kafka_commits_total", "result" => "error").increment(1);
    }
}

/// One assignment of one partition: shared by the polling thread, the partition's consumer
/// and the acknowledgements of its batches. A new assignment gets a new one.
#[derive(Debug)]
pub(crate) struct PartitionShared {
    pub(crate) partition: i32,
    pub(crate) revoked: AtomicBool,
    /// librdkafka reported the end of the partition and no message arrived since.
    pub(super) at_eof: AtomicBool,
    /// Batches formed on the polling thread and not yet in the channel.
    pub(super) local_batches: AtomicUsize,
    pub(super) tracker: Mutex<Tracker>,
    /// Batches handed to a consumer and neither acknowledged nor dropped.
    pub(crate) outstanding: watch::Sender<usize>,
    pub(super) consumer: Arc<ConsumerShared>,
}

impl PartitionShared {
    /// A new assignment of `partition`, whose committed offset is `committed`.
    pub(super) fn new(
        partition: i32,
        committed: Option<i64>,
        consumer: Arc<ConsumerShared>,
    ) -> PartitionShared {
        PartitionShared {
            partition,
            revoked: AtomicBool::new(false),
            at_eof: AtomicBool::new(false),
            local_batches: AtomicUsize::new(0),
            tracker: Mutex::new(Tracker::new(committed)),
            outstanding: watch::Sender::new(0),
            consumer,
        }
    }

    /// Everything the partition held was received: at its end, nothing waiting locally.
    pub(crate) fn drained(&self) -> bool {
        self.at_eof.load(Ordering::Acquire) && self.local_batches.load(Ordering::Acquire) == 0
    }
}

/// Some partition is assigned, and every assigned one is [`drained`](PartitionShared::drained).
pub(super) fn all_drained(assigned: &BTreeMap<i32, Arc<PartitionShared>>) -> bool {
    !assigned.is_empty() && assigned.values().all(|p| p.drained())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(consumer: &Arc<ConsumerShared>, p: i32) -> Arc<PartitionShared> {
        Arc::new(PartitionShared::new(p, None, consumer.clone()))
    }

    #[test]
    fn a_partition_is_drained_at_its_end_with_no_batch_waiting() {
        let consumer = Arc::new(ConsumerShared::new("t".to_owned()));
        let p = partition(&consumer, 0);
        assert!(!p.drained(), "not at its end yet");
        p.at_eof.store(true, Ordering::Release);
        assert!(p.drained());
        p.local_batches.store(1, Ordering::Release);
        assert!(!p.drained(), "a batch formed but not handed over");
    }

    #[test]
    fn no_partition_is_not_caught_up_and_one_behind_is_enough_to_not_be() {
        let consumer = Arc::new(ConsumerShared::new("t".to_owned()));
        let mut assigned = BTreeMap::new();
        assert!(!all_drained(&assigned), "nothing assigned: not caught up");
        let (a, b) = (partition(&consumer, 0), partition(&consumer, 1));
        a.at_eof.store(true, Ordering::Release);
        assigned.insert(0, a);
        assigned.insert(1, b.clone());
        assert!(!all_drained(&assigned));
        b.at_eof.store(true, Ordering::Release);
        assert!(all_drained(&assigned));
    }

    #[test]
    fn a_new_assignment_starts_from_its_committed_offset() {
        let consumer = Arc::new(ConsumerShared::new("t".to_owned()));
        let p = PartitionShared::new(3, Some(100), consumer);
        let mut t = lock(&p.tracker);
        let slot = t.hand_out(100); // a batch re-read by the lookback
        t.ack(slot);
        assert_eq!(t.to_commit(), None, "re-read messages commit nothing new");
        assert_eq!(*p.outstanding.borrow(), 0);
        assert!(!p.revoked.load(Ordering::Acquire));
    }

    #[test]
    fn commit_errors_are_counted() {
        let consumer = ConsumerShared::new("t".to_owned());
        consumer.count_commit_error();
        consumer.count_commit_error();
        assert_eq!(consumer.stats().commit_errors, 2);
        assert_eq!(consumer.stats().commits, 0);
    }
}
