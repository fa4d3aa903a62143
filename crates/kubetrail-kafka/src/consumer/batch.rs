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
