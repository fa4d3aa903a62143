//! Per-partition batching: how the polling thread groups a partition's messages into
//! [`RawBatch`]es ([`Batches`]), and what a batch becomes for a worker
//! ([`RawBatch::into_received`]: parsed events and an acknowledgement that marks its offsets
//! committable).
//!
//! A batch is consecutive messages of one partition, one cluster and one source, at most
//! `max_batch_events`, never mixing messages re-read by the lookback with new ones. It is
//! registered with the partition's [`Tracker`](crate::tracker::Tracker) when it is closed,
//! so the tracker knows every batch in offset order. None of this needs a librdkafka client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use kubetrail_model::UnixNanos;
use kubetrail_queue::{Ack, AuditBatch, Received};

use super::shared::PartitionShared;
use super::{lock, stats};
use crate::message::RawMessage;

/// A batch of consecutive messages of one partition, one cluster and one source, not yet
/// parsed.
#[derive(Debug)]
pub(crate) struct RawBatch {
    cluster: Option<String>,
    messages: Vec<RawMessage>,
    slot: u64,
    partition: Arc<PartitionShared>,
    /// Every message is before the offset committed when the partition was assigned: re-read
    /// by the lookback (a batch never mixes re-read and new messages).
    replayed: bool,
}

impl RawBatch {
    fn new(partition: Arc<PartitionShared>, cluster: Option<String>, replayed: bool) -> RawBatch {
        RawBatch {
            cluster,
            messages: Vec::new(),
            slot: 0,
            partition,
            replayed,
        }
    }

    /// Whether the batch was re-read by the lookback (before the committed offset).
    pub(crate) fn replayed(&self) -> bool {
        self.replayed
    }

    /// Whether the batch's partition was revoked (its messages are the next owner's).
    pub(super) fn is_revoked(&self) -> bool {
        self.partition.revoked.load(Ordering::Acquire)
    }

    /// Whether `next` (re-read by the lookback or not: `replayed`) must start a new batch.
    fn closed_by(&self, next: &RawMessage, replayed: bool, max_batch_events: usize) -> bool {
        // One batch is one cluster and one source (API server): the worker orders events
        // by event time per source (see `kubetrail_pipeline::watermark`).
        self.messages.len() >= max_batch_events
            || self.cluster != next.cluster
            || self
                .messages
                .first()
                .is_some_and(|m| m.source != next.source)
            || self.replayed != replayed
    }

    /// The offset after the batch's last message (0 for an empty batch).
    fn end(&self) -> i64 {
        self.messages
            .last()
            .map_or(0, |m| m.offset.saturating_add(1))
    }

    /// The bytes of the messages' values.
    fn value_bytes(&self) -> usize {
        self.messages.iter().map(|m| m.value.len()).sum()
    }

    /// Records that a worker took the batch ([`ConsumerStats::taken`](super::ConsumerStats::taken)).
    pub(crate) fn mark_taken(&self) {
        let Some(last) = self.messages.last() else {
            return;
        };
        let mut taken = lock(&self.partition.consumer.taken);
        stats::advance_taken(&mut taken, self.partition.partition, last.offset + 1);
    }

    /// Parses the messages (skipping and counting malformed ones) into a batch with an
    /// acknowledgement that marks its offsets committable. `None` when no message was an
    /// event (the batch is then acknowledged at once).
    pub(crate) fn into_received(self) -> Option<Received> {
        let RawBatch {
            cluster,
            messages,
            slot,
            partition,
            replayed: _,
        } = self;
        let outstanding = Outstanding::new(partition.clone());
        let ack = Ack::explicit(move || {
            let p = &outstanding.0;
            if lock(&p.tracker).ack(slot) {
                p.consumer.commit_dirty.store(true, Ordering::Release);
            }
        });
        let mut events = Vec::with_capacity(messages.len());
        let (mut malformed, mut not_logged) = (0u64, 0u64);
        for m in &messages {
            match m.decode() {
                Ok(e) => events.push(e),
                Err(reason) => {
                    partition
                        .consumer
                        .counters
                        .malformed
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("kubetrail_kafka_messages_malformed_total").increment(1);
                    malformed += 1;
                    let log = lock(&partition.consumer.malformed_log)
                        .check(std::time::Instant::now())
                        .log;
                    if log {
                        tracing::warn!(
                            topic = %partition.consumer.topic,
                            partition = partition.partition,
                            offset = m.offset,
                            %reason,
                            "kafka: skipping a message that is not a valid audit event"
                        );
                    } else {
                        not_logged += 1;
                    }
                }
            }
        }
        if not_logged > 0 {
            tracing::warn!(
                topic = %partition.consumer.topic,
                partition = partition.partition,
                malformed,
                not_logged,
                "kafka: skipped more malformed messages in this batch than are logged one by one (log rate limit); all are counted in kubetrail_kafka_messages_malformed_total"
            );
        }
        if events.is_empty() {
            ack.done();
            return None;
        }
        let first = messages.first();
        partition
            .consumer
            .counters
            .batches
            .fetch_add(1, Ordering::Relaxed);
        Some(Received {
            batch: AuditBatch {
                cluster: cluster.unwrap_or_default(),
                received_at: received_at(first),
                source: first.and_then(|m| m.source.clone()),
                events,
            },
            ack,
        })
    }
}

/// When a batch starting with `first` was accepted: its `received-at` header, else its
/// message timestamp (ms), else 0.
fn received_at(first: Option<&RawMessage>) -> UnixNanos {
    first
        .and_then(|m| {
            m.received_at
                .or_else(|| m.timestamp_ms.map(|t| t.saturating_mul(1_000_000)))
        })
        .unwrap_or(0)
}

/// Counts a batch as outstanding until dropped.
struct Outstanding(Arc<PartitionShared>);

impl Outstanding {
    fn new(p: Arc<PartitionShared>) -> Self {
        p.outstanding.send_modify(|n| *n += 1);
        Outstanding(p)
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One partition's batches on the polling thread: the one being formed, and the closed ones
/// waiting for room in the partition's channel. The partition's
/// [`local_batches`](PartitionShared::local_batches) counts both.
#[derive(Debug, Default)]
pub(super) struct Batches {
    building: Option<RawBatch>,
    ready: VecDeque<RawBatch>,
}

impl Batches {
    /// Adds a message of `partition` to the batch being formed, closing that first when the
    /// message cannot join it.
    pub(super) fn push(
        &mut self,
        partition: &Arc<PartitionShared>,
        raw: RawMessage,
        replayed: bool,
        max_batch_events: usize,
    ) {
        if self
            .building
            .as_ref()
            .is_some_and(|b| b.closed_by(&raw, replayed, max_batch_events))
        {
            self.close(partition);
        }
        let b = self.building.get_or_insert_with(|| {
            partition.local_batches.fetch_add(1, Ordering::AcqRel);
            RawBatch::new(partition.clone(), raw.cluster.clone(), replayed)
        });
        b.messages.push(raw);
    }

    /// Moves the batch being formed to the ready queue, registering it with the tracker.
    pub(super) fn close(&mut self, partition: &PartitionShared) {
        if let Some(mut b) = self.building.take() {
            b.slot = lock(&partition.tracker).hand_out(b.end());
            self.ready.push_back(b);
        }
    }

    /// Hands ready batches to `tx` while it has room. When no one reads it any more (its
    /// worker ended), drops them: what is not acknowledged is read again by the partition's
    /// next owner.
    pub(super) fn send_ready(&mut self, tx: &mpsc::Sender<RawBatch>, partition: &PartitionShared) {
        while let Some(b) = self.ready.pop_front() {
            match tx.try_send(b) {
                Ok(()) => {
                    partition.local_batches.fetch_sub(1, Ordering::AcqRel);
                }
                Err(mpsc::error::TrySendError::Full(b)) => {
                    self.ready.push_front(b);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.ready.clear();
                    partition.local_batches.store(0, Ordering::Release);
                    break;
                }
            }
        }
    }

    /// Whether closed batches wait for room in the channel.
    pub(super) fn waiting(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The bytes the closed batches hold (message values; the batch being formed is not
    /// counted).
    pub(super) fn held_bytes(&self) -> usize {
        self.ready.iter().map(RawBatch::value_bytes).sum()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::ConsumerShared;
    use super::*;

    const EVENT: &str = r#"{"level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n1","verb":"patch","user":{},"objectRef":{"resource":"nodes","name":"n1"}}"#;

    /// A valid message (an audit event of cluster `c`, source `s`) at `offset`.
    pub(in crate::consumer) fn message(offset: i64) -> RawMessage {
        RawMessage {
            offset,
            timestamp_ms: None,
            format: Some(crate::FORMAT_VERSION.to_owned()),
            cluster: Some("c".to_owned()),
            received_at: None,
            source: Some("s".to_owned()),
            value: EVENT.as_bytes().to_vec(),
        }
    }

    pub(in crate::consumer) fn partition(p: i32, committed: Option<i64>) -> Arc<PartitionShared> {
        let consumer = Arc::new(ConsumerShared::new("t".to_owned()));
        Arc::new(PartitionShared::new(p, committed, consumer))
    }

    fn offsets(b: &RawBatch) -> Vec<i64> {
        b.messages.iter().map(|m| m.offset).collect()
    }

    fn ready_offsets(batches: &Batches) -> Vec<Vec<i64>> {
        batches.ready.iter().map(offsets).collect()
    }

    #[test]
    fn a_batch_closes_at_max_events() {
        let p = partition(0, None);
        let mut b = Batches::default();
        for o in 0..5 {
            b.push(&p, message(o), false, 2);
        }
        assert_eq!(ready_offsets(&b), [vec![0, 1], vec![2, 3]]);
        assert_eq!(b.building.as_ref().map(offsets), Some(vec![4]));
        b.close(&p);
        assert_eq!(ready_offsets(&b), [vec![0, 1], vec![2, 3], vec![4]]);
        assert!(b.building.is_none());
    }

    #[test]
    fn a_batch_is_one_cluster_one_source_and_replayed_or_not() {
        let p = partition(0, None);
        let mut b = Batches::default();
        b.push(&p, message(0), true, 100);
        b.push(&p, message(1), true, 100);
        b.push(&p, message(2), false, 100); // past the committed offset
        b.push(&p, message(3), false, 100);
        let other_source = RawMessage {
            source: Some("s2".to_owned()),
            ..message(4)
        };
        b.push(&p, other_source, false, 100);
        let no_source = RawMessage {
            source: None,
            ..message(5)
        };
        b.push(&p, no_source, false, 100);
        let other_cluster = RawMessage {
            cluster: Some("d".to_owned()),
            source: None,
            ..message(6)
        };
        b.push(&p, other_cluster, false, 100);
        b.close(&p);
        assert_eq!(
            ready_offsets(&b),
            [vec![0, 1], vec![2, 3], vec![4], vec![5], vec![6]]
        );
        let replayed: Vec<bool> = b.ready.iter().map(RawBatch::replayed).collect();
        assert_eq!(replayed, [true, false, false, false, false]);
        assert_eq!(b.ready[4].cluster.as_deref(), Some("d"));
    }

    #[test]
    fn closing_nothing_registers_nothing() {
        let p = partition(0, None);
        let mut b = Batches::default();
        b.close(&p);
        assert!(!b.waiting());
        b.push(&p, message(0), false, 10);
        b.close(&p);
        b.close(&p);
        assert_eq!(b.ready.len(), 1);
        // One slot was handed out: acknowledging it commits up to offset 1.
        let mut t = lock(&p.tracker);
        assert!(t.ack(b.ready[0].slot));
        assert_eq!(t.to_commit(), Some(1));
        assert!(!t.ack(1), "no second slot");
    }

    #[test]
    fn closed_batches_are_registered_in_offset_order_with_their_ends() {
        let p = partition(0, Some(10));
        let mut b = Batches::default();
        for o in 10..15 {
            b.push(&p, message(o), false, 2);
        }
        b.close(&p);
        let slots: Vec<u64> = b.ready.iter().map(|r| r.slot).collect();
        assert_eq!(slots, [0, 1, 2]);
        let mut t = lock(&p.tracker);
        assert!(!t.ack(slots[1]), "the first batch is not acknowledged yet");
        assert!(t.ack(slots[0]));
        assert_eq!(t.to_commit(), Some(14), "after 10, 11 | 12, 13");
        assert!(t.ack(slots[2]));
        assert_eq!(t.to_commit(), Some(15));
    }

    #[test]
    fn local_batches_count_what_is_formed_and_not_in_the_channel() {
        let p = partition(0, None);
        let mut b = Batches::default();
        let local = || p.local_batches.load(Ordering::Acquire);
        b.push(&p, message(0), false, 1);
        assert_eq!(local(), 1, "the batch being formed counts");
        b.push(&p, message(1), false, 1);
        b.push(&p, message(2), false, 1);
        b.close(&p);
        assert_eq!(local(), 3);
        let (tx, mut rx) = mpsc::channel(2);
        b.send_ready(&tx, &p);
        assert_eq!(local(), 1, "two fit the channel");
        assert!(b.waiting());
        assert_eq!(ready_offsets(&b), [vec![2]]);
        let first = rx.try_recv().map(|r| offsets(&r));
        assert_eq!(first.ok(), Some(vec![0]), "in offset order");
        b.send_ready(&tx, &p);
        assert_eq!(local(), 0);
        assert!(!b.waiting());
    }

    #[test]
    fn batches_for_a_channel_no_one_reads_are_dropped() {
        let p = partition(0, None);
        let mut b = Batches::default();
        b.push(&p, message(0), false, 1);
        b.push(&p, message(1), false, 1);
        b.close(&p);
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        b.send_ready(&tx, &p);
        assert!(!b.waiting());
        assert_eq!(p.local_batches.load(Ordering::Acquire), 0);
    }

    #[test]
    fn only_closed_batches_count_as_held_bytes() {
        let p = partition(0, None);
        let mut b = Batches::default();
        b.push(&p, message(0), false, 2);
        assert_eq!(b.held_bytes(), 0, "the batch being formed is not held");
        b.push(&p, message(1), false, 2);
        b.push(&p, message(2), false, 2);
        assert_eq!(b.held_bytes(), 2 * EVENT.len());
        b.close(&p);
        assert_eq!(b.held_bytes(), 3 * EVENT.len());
    }

    #[test]
    fn a_batch_was_accepted_at_its_header_time_else_its_timestamp() {
        assert_eq!(received_at(None), 0);
        let mut m = message(0);
        assert_eq!(received_at(Some(&m)), 0);
        m.timestamp_ms = Some(1_700);
        assert_eq!(received_at(Some(&m)), 1_700_000_000);
        m.received_at = Some(42);
        assert_eq!(received_at(Some(&m)), 42);
        m.received_at = None;
        m.timestamp_ms = Some(i64::MAX);
        assert_eq!(received_at(Some(&m)), i64::MAX, "saturates");
    }

    fn one_batch(p: &Arc<PartitionShared>, messages: Vec<RawMessage>) -> RawBatch {
        let mut b = Batches::default();
        for m in messages {
            b.push(p, m, false, usize::MAX);
        }
        b.close(p);
        b.ready.pop_front().expect("a batch")
    }

    #[test]
    fn malformed_messages_are_skipped_and_counted() {
        let p = partition(2, None);
        let mut first = message(7);
        first.received_at = Some(99);
        let bad = RawMessage {
            value: b"{not json".to_vec(),
            ..message(8)
        };
        let no_format = RawMessage {
            format: None,
            ..message(9)
        };
        let r = one_batch(&p, vec![first, bad, no_format, message(10)])
            .into_received()
            .expect("two events");
        assert_eq!(r.batch.events.len(), 2);
        assert_eq!(r.batch.cluster, "c");
        assert_eq!(r.batch.source.as_deref(), Some("s"));
        assert_eq!(r.batch.received_at, 99);
        let s = p.consumer.stats();
        assert_eq!((s.malformed, s.batches), (2, 1));
    }

    #[test]
    fn a_batch_of_malformed_messages_is_acknowledged_at_once() {
        let p = partition(0, None);
        let bad = |o| RawMessage {
            format: Some("9".to_owned()),
            ..message(o)
        };
        assert!(
            one_batch(&p, vec![bad(0), bad(1)])
                .into_received()
                .is_none()
        );
        assert_eq!(lock(&p.tracker).to_commit(), Some(2));
        assert!(p.consumer.commit_dirty.load(Ordering::Acquire));
        assert_eq!(*p.outstanding.borrow(), 0);
        let s = p.consumer.stats();
        assert_eq!((s.malformed, s.batches), (2, 0));
    }

    #[test]
    fn a_batch_is_outstanding_until_its_ack_is_done_or_dropped() {
        let p = partition(0, None);
        let a = one_batch(&p, vec![message(0), message(1)]);
        let b = one_batch(&p, vec![message(2)]);
        let ra = a.into_received().expect("events");
        let rb = b.into_received().expect("events");
        assert_eq!(*p.outstanding.borrow(), 2);
        drop(rb); // abandoned: not acknowledged
        assert_eq!(*p.outstanding.borrow(), 1);
        assert!(!p.consumer.commit_dirty.load(Ordering::Acquire));
        assert_eq!(lock(&p.tracker).to_commit(), None);
        ra.ack.done();
        assert_eq!(*p.outstanding.borrow(), 0);
        assert!(p.consumer.commit_dirty.load(Ordering::Acquire));
        assert_eq!(
            lock(&p.tracker).to_commit(),
            Some(2),
            "never past the abandoned batch"
        );
    }

    #[test]
    fn an_ack_that_moves_nothing_leaves_the_commit_clean() {
        let p = partition(0, None);
        let a = one_batch(&p, vec![message(0)]);
        let b = one_batch(&p, vec![message(1)]);
        let (ra, rb) = (a.into_received(), b.into_received());
        rb.expect("events").ack.done(); // after an unacknowledged batch
        assert!(!p.consumer.commit_dirty.load(Ordering::Acquire));
        ra.expect("events").ack.done();
        assert!(p.consumer.commit_dirty.load(Ordering::Acquire));
        assert_eq!(lock(&p.tracker).to_commit(), Some(2));
    }

    #[test]
    fn taking_a_batch_records_the_offset_after_its_last_message() {
        let p = partition(5, None);
        one_batch(&p, vec![message(3), message(4)]).mark_taken();
        assert_eq!(p.consumer.stats().taken.get(&5), Some(&5));
        RawBatch::new(p.clone(), None, false).mark_taken(); // empty: nothing
        one_batch(&p, vec![message(1)]).mark_taken(); // an older batch
        assert_eq!(p.consumer.stats().taken.get(&5), Some(&5));
    }

    #[test]
    fn a_revoked_partitions_batches_say_so() {
        let p = partition(0, None);
        let b = one_batch(&p, vec![message(0)]);
        assert!(!b.is_revoked());
        p.revoked.store(true, Ordering::Release);
        assert!(b.is_revoked());
    }
}
