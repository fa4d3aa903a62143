//! The consumer's librdkafka context ([`ConsumerCtx`]) and what the polling thread does with
//! what it polls: a message joins its partition's batch ([`PartitionState::absorb`]), the
//! end of a partition closes it, and each round hands batches over and pauses or resumes
//! partitions ([`PartitionState::pump`]). The rebalance and commit callbacks are in
//! [`rebalance`](super::rebalance).
//!
//! [`PartitionState`] is what the polling thread keeps per assigned partition; its rules
//! run without a librdkafka client.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::KafkaError as RdError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::batch::{Batches, RawBatch};
use super::flow::{Flow, FlowChange};
use super::shared::{ConsumerShared, PartitionShared};
use super::stats::Counters;
use super::{Routing, lock};
use crate::KafkaConfig;
use crate::message::RawMessage;

/// What the polling thread keeps of one assigned partition.
pub(super) struct PartitionState {
    pub(super) shared: Arc<PartitionShared>,
    tx: mpsc::Sender<RawBatch>,
    batches: Batches,
    flow: Flow,
    /// Per-partition workers: resolves (disconnects) when the worker finished.
    pub(super) finished: Option<std_mpsc::Receiver<()>>,
    /// Messages below this offset are re-read (lookback).
    replay_until: Option<i64>,
}

impl PartitionState {
    /// A partition just assigned, whose batches go to `tx`.
    pub(super) fn new(
        shared: Arc<PartitionShared>,
        tx: mpsc::Sender<RawBatch>,
        finished: Option<std_mpsc::Receiver<()>>,
        replay_until: Option<i64>,
    ) -> PartitionState {
        PartitionState {
            shared,
            tx,
            batches: Batches::default(),
            flow: Flow::default(),
            finished,
            replay_until,
        }
    }

    /// Counts a message and adds it to the partition's batch.
    fn absorb(&mut self, raw: RawMessage, counters: &Counters, max_batch_events: usize) {
        counters.messages.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kubetrail_kafka_messages_consumed_total").increment(1);
        let replayed = self.replay_until.is_some_and(|until| raw.offset < until);
        if replayed {
            counters.replayed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("kubetrail_kafka_messages_replayed_total").increment(1);
        }
        self.shared.at_eof.store(false, Ordering::Release);
        self.batches
            .push(&self.shared, raw, replayed, max_batch_events);
    }

    /// The end of the partition: closes the batch being formed.
    fn eof(&mut self) {
        self.batches.close(&self.shared);
        self.shared.at_eof.store(true, Ordering::Release);
    }

    /// Closes the batch being formed and hands batches to the channel. Returns whether
    /// batches still wait for room, and whether to pause or resume the partition.
    fn pump(&mut self, max_buffered_bytes: usize) -> (bool, Option<FlowChange>) {
        self.batches.close(&self.shared);
        self.batches.send_ready(&self.tx, &self.shared);
        let waiting = self.batches.waiting();
        let change = self
            .flow
            .update(self.batches.held_bytes(), !waiting, max_buffered_bytes);
        (waiting, change)
    }
}

/// What the polling thread (and the callbacks it runs) keeps.
pub(super) struct PollerState {
    pub(super) routing: Option<Routing>,
    pub(super) partitions: BTreeMap<i32, PartitionState>,
    last_error: Option<(String, Instant)>,
}

/// The consumer's context: rebalance callback, commit callback, statistics, logs.
pub(crate) struct ConsumerCtx {
    pub(super) config: KafkaConfig,
    pub(super) shared: Arc<ConsumerShared>,
    pub(super) state: Mutex<PollerState>,
    /// The lookback's group-less consumer, created when first needed. Its own lock, not
    /// `state`'s: the lookback's broker calls (seconds, at worst) hold it, and the commit
    /// callback and the batches need `state` meanwhile.
    pub(super) probe: Mutex<Option<BaseConsumer<DefaultConsumerContext>>>,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        crate::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: RdError, reason: &str) {
        // The end of a partition is reported as an error event too: not one.
        if !matches!(error, RdError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        {
            tracing::warn!(error = %error, reason, "kafka consumer error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.config.topic) else {
            return;
        };
        for p in topic.partitions.values() {
            if let Some(lag) = reported_lag(p.partition, p.desired, p.consumer_lag) {
                metrics::gauge!("kubetrail_kafka_consumer_lag", "partition" => p.partition.to_string())
                    .set(lag);
            }
        }
    }
}

/// The lag gauge's value for a partition in librdkafka's statistics: only for a real
/// partition (not the internal `-1`) this consumer wants, with a known lag (`-1`: unknown).
fn reported_lag(partition: i32, desired: bool, consumer_lag: i64) -> Option<f64> {
    (partition >= 0 && desired && consumer_lag >= 0).then_some(consumer_lag as f64)
}

impl ConsumerCtx {
    /// The context of a consumer that sends its batches by `routing`.
    pub(super) fn new(
        config: KafkaConfig,
        shared: Arc<ConsumerShared>,
        routing: Routing,
    ) -> ConsumerCtx {
        ConsumerCtx {
            config,
            shared,
            state: Mutex::new(PollerState {
                routing: Some(routing),
                partitions: BTreeMap::new(),
                last_error: None,
            }),
            probe: Mutex::new(None),
        }
    }

    /// Adds a message to its partition's batch.
    pub(super) fn absorb(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        use rdkafka::Message as _;
        let mut state = lock(&self.state);
        let Some(ps) = state.partitions.get_mut(&m.partition()) else {
            return; // revoked meanwhile
        };
        let raw = RawMessage::from_kafka(m);
        ps.absorb(raw, &self.shared.counters, self.config.max_batch_events);
    }

    /// librdkafka reached the end of `partition`.
    pub(super) fn eof(&self, partition: i32) {
        let mut state = lock(&self.state);
        if let Some(ps) = state.partitions.get_mut(&partition) {
            ps.eof();
        }
    }

    /// Closes every batch being formed and hands batches to the channels; pauses partitions
    /// whose channel is full and that hold `max_buffered_bytes` waiting, resumes those that
    /// drained. Returns whether batches are still waiting for room.
    pub(super) fn pump(&self, consumer: &BaseConsumer<Self>) -> bool {
        let mut waiting = false;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        {
            let mut state = lock(&self.state);
            for (p, ps) in state.partitions.iter_mut() {
                let (w, change) = ps.pump(self.config.max_buffered_bytes);
                waiting |= w;
                match change {
                    Some(FlowChange::Pause) => {
                        self.shared.counters.pauses.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("kubetrail_kafka_partitions_paused_total").increment(1);
                        let _ = pause.add_partition_offset(&self.config.topic, *p, Offset::Invalid);
                    }
                    Some(FlowChange::Resume) => {
                        let _ =
                            resume.add_partition_offset(&self.config.topic, *p, Offset::Invalid);
                    }
                    None => {}
                }
            }
        }
        if pause.count() > 0
            && let Err(e) = consumer.pause(&pause)
        {
            tracing::warn!(error = %e, "kafka: pausing partitions failed");
        }
        if resume.count() > 0
            && let Err(e) = consumer.resume(&resume)
        {
            tracing::warn!(error = %e, "kafka: resuming partitions failed");
        }
        waiting
    }

    /// Logs a consumer error, the same one at most every 30 s.
    pub(super) fn consumer_error(&self, e: &RdError) {
        let text = e.to_string();
        let mut state = lock(&self.state);
        let repeat = state
            .last_error
            .as_ref()
            .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(30));
        if !repeat {
            tracing::warn!(error = %text, "kafka consumer error");
            state.last_error = Some((text, Instant::now()));
        }
    }

    /// Drops every channel: consumers see the end.
    pub(super) fn close_all(&self) {
        let mut state = lock(&self.state);
        for ps in state.partitions.values() {
            ps.shared.revoked.store(true, Ordering::Release);
        }
        state.partitions.clear();
        state.routing = None;
        drop(state);
        *lock(&self.probe) = None;
        lock(&self.shared.assigned).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::batch::tests::{message, partition};
    use super::*;

    /// Absorbs a message at `offset` whose value is `bytes` long (one message per batch).
    fn absorb(ps: &mut PartitionState, offset: i64, bytes: usize) {
        let raw = RawMessage {
            value: vec![b' '; bytes],
            ..message(offset)
        };
        let c = &ps.shared.consumer.clone();
        ps.absorb(raw, &c.counters, 1);
    }

    #[test]
    fn a_partition_behind_is_paused_at_the_byte_limit_and_resumed_once_drained() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut ps = PartitionState::new(partition(0, None), tx, None, None);
        absorb(&mut ps, 0, 6);
        absorb(&mut ps, 1, 6);
        // One batch fits the channel; 6 bytes wait.
        assert_eq!(ps.pump(10), (true, None));
        absorb(&mut ps, 2, 6);
        assert_eq!(
            ps.pump(10),
            (true, Some(FlowChange::Pause)),
            "12 bytes wait"
        );
        assert_eq!(ps.pump(10), (true, None), "paused once");
        assert!(rx.try_recv().is_ok());
        assert_eq!(
            ps.pump(10),
            (true, None),
            "6 bytes still wait: stays paused"
        );
        assert!(ps.flow.paused());
        assert!(rx.try_recv().is_ok());
        assert_eq!(ps.pump(10), (false, Some(FlowChange::Resume)));
        assert!(rx.try_recv().is_ok());
        assert_eq!(ps.pump(10), (false, None));
        assert!(rx.try_recv().is_err(), "three batches in all");
    }

    #[test]
    fn messages_below_the_replay_offset_are_counted_and_batched_apart() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut ps = PartitionState::new(partition(0, Some(3)), tx, None, Some(3));
        let c = ps.shared.consumer.clone();
        for o in 1..6 {
            ps.absorb(message(o), &c.counters, 100);
        }
        ps.pump(usize::MAX);
        let first = rx.try_recv().expect("the re-read batch");
        let second = rx.try_recv().expect("the new batch");
        assert!(first.replayed());
        assert!(!second.replayed());
        assert_eq!(first.into_received().map(|r| r.batch.events.len()), Some(2));
        let s = c.stats();
        assert_eq!((s.messages, s.replayed), (5, 2));
    }

    #[test]
    fn the_end_of_a_partition_closes_its_batch_and_a_message_reopens_it() {
        let (tx, _rx) = mpsc::channel(8);
        let mut ps = PartitionState::new(partition(0, None), tx, None, None);
        let c = ps.shared.consumer.clone();
        ps.absorb(message(0), &c.counters, 100);
        ps.eof();
        assert!(ps.batches.waiting(), "closed at the end of the partition");
        assert!(!ps.shared.drained(), "but not handed over yet");
        ps.pump(usize::MAX);
        assert!(ps.shared.drained());
        ps.absorb(message(1), &c.counters, 100);
        ps.pump(usize::MAX);
        assert!(
            !ps.shared.drained(),
            "handed over, but no longer known to be at the end"
        );
        ps.eof();
        assert!(ps.shared.drained(), "nothing was formed since");
    }

    #[test]
    fn a_partition_no_one_reads_holds_nothing_and_is_not_paused() {
        let (tx, rx) = mpsc::channel(1);
        let mut ps = PartitionState::new(partition(0, None), tx, None, None);
        drop(rx);
        absorb(&mut ps, 0, 50);
        absorb(&mut ps, 1, 50);
        assert_eq!(ps.pump(10), (false, None));
        assert_eq!(ps.shared.local_batches.load(Ordering::Acquire), 0);
    }

    #[test]
    fn only_known_lags_of_wanted_partitions_are_reported() {
        assert_eq!(reported_lag(0, true, 12), Some(12.0));
        assert_eq!(reported_lag(0, true, 0), Some(0.0));
        assert_eq!(
            reported_lag(-1, true, 12),
            None,
            "librdkafka's internal partition"
        );
        assert_eq!(
            reported_lag(3, false, 12),
            None,
            "not assigned to this consumer"
        );
        assert_eq!(reported_lag(3, true, -1), None, "unknown");
    }
}
