//! The rebalance and commit callbacks, on the polling thread.
//!
//! * **Assignment**: reads the partitions' committed offsets, starts each `lookback` before
//!   its committed one ([`lookback`]), and creates its state (a channel,
//!   and for per-partition workers a [`Lease`]).
//! * **Revocation**: stops handing the partitions' batches out, waits (at most
//!   `revoke_timeout`) for per-partition workers to finish, then commits what is
//!   acknowledged — only then is the partition given up.
//! * **Commits**: per partition the offset after the longest run of acknowledged batches
//!   ([`Tracker`](crate::tracker::Tracker)); a failed commit is sent again.
//!
//! The bookkeeping (which offsets are this topic's, where the re-read ends, the lookback's
//! target time) is in small functions tested without a broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, RebalanceProtocol,
};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::context::{ConsumerCtx, PartitionState};
use super::shared::PartitionShared;
use super::{FinishGuard, Lease, Routing, lock, stats};
use crate::lookback;

/// Blocking metadata requests (committed offsets, watermarks, offsets for times) wait at most.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches queued per partition channel (per-partition workers).
const PARTITION_CHANNEL_BATCHES: usize = 4;

impl ConsumerContext for ConsumerCtx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        self.shared
            .counters
            .rebalances
            .fetch_add(1, Ordering::Relaxed);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                metrics::counter!("kubetrail_kafka_rebalances_total", "kind" => "assign")
                    .increment(1);
                self.on_assign(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                metrics::counter!("kubetrail_kafka_rebalances_total", "kind" => "revoke")
                    .increment(1);
                let parts = topic_partitions(tpl, &self.config.topic);
                self.on_revoke(consumer, &parts);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "kafka: rebalance error; giving up all partitions");
                let parts: Vec<i32> = lock(&self.state).partitions.keys().copied().collect();
                self.on_revoke(consumer, &parts);
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "kafka: applying a rebalance failed");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                for e in offsets.elements() {
                    if e.topic() == self.config.topic
                        && let Offset::Offset(o) = e.offset()
                        && e.error().is_ok()
                    {
                        self.shared.record_commit(e.partition(), o);
                    }
                }
            }
            Err(err) => {
                self.shared.count_commit_error();
                tracing::warn!(error = %err, "kafka: committing offsets failed; will retry");
                let committed = lock(&self.shared.committed).clone();
                let state = lock(&self.state);
                for e in offsets.elements() {
                    if let Some(ps) = state.partitions.get(&e.partition()) {
                        lock(&ps.shared.tracker).unsent(committed.get(&e.partition()).copied());
                    }
                }
                self.shared.commit_dirty.store(true, Ordering::Release);
            }
        }
    }
}

/// The partitions of `topic` in `tpl`, in its order.
fn topic_partitions(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

/// The offsets of `topic`'s partitions in `tpl` (the broker's committed offsets); a
/// partition without one (never committed) is left out.
fn topic_offsets(tpl: &TopicPartitionList, topic: &str) -> BTreeMap<i32, i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if e.topic() == topic => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Messages below the returned offset are re-read by the lookback: when the partition
/// starts (`start`) before its committed offset (`committed`).
fn replay_until(committed: Option<i64>, start: Option<i64>) -> Option<i64> {
    match (committed, start) {
        (Some(c), Some(s)) if s < c => Some(c),
        _ => None,
    }
}

/// The message time (ms) a partition whose last committed message is at `last_time_ms` is
/// re-read from.
fn lookback_target(last_time_ms: i64, lookback: Duration) -> i64 {
    let lookback_ms = i64::try_from(lookback.as_millis()).unwrap_or(i64::MAX);
    last_time_ms.saturating_sub(lookback_ms)
}

impl ConsumerCtx {
    /// Creates the state of newly assigned partitions and sets where each starts: `lookback`
    /// before its committed offset.
    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let parts = topic_partitions(tpl, &self.config.topic);
        tracing::info!(topic = %self.config.topic, partitions = ?parts, "kafka: partitions assigned");
        let committed: BTreeMap<i32, i64> = match consumer
            .committed_offsets(tpl.clone(), METADATA_TIMEOUT)
        {
            Ok(c) => topic_offsets(&c, &self.config.topic),
            Err(e) => {
                tracing::warn!(error = %e, "kafka: reading committed offsets failed; starting at them without lookback");
                BTreeMap::new()
            }
        };
        stats::merge_committed(&mut lock(&self.shared.committed), &committed);
        for p in parts {
            let c = committed.get(&p).copied();
            let start = match c {
                Some(c) if !self.config.lookback.is_zero() => self.lookback_start(consumer, p, c),
                _ => None,
            };
            if let Some(s) = start {
                if let Err(e) = tpl.set_partition_offset(&self.config.topic, p, Offset::Offset(s)) {
                    tracing::warn!(error = %e, partition = p, "kafka: cannot set the start offset");
                } else if let Some(c) = c {
                    tracing::info!(
                        partition = p,
                        committed = c,
                        start = s,
                        "kafka: re-reading {} messages before the committed offset (lookback)",
                        c - s
                    );
                }
            }
            self.add_partition(p, c, start);
        }
    }

    /// Where partition `p`, committed at `c`, starts: the first message at or after
    /// `time(c - 1) - lookback`. `None`: at the committed offset.
    fn lookback_start(&self, consumer: &BaseConsumer<Self>, p: i32, c: i64) -> Option<i64> {
        let topic = &self.config.topic;
        let (low, _high) = match consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, partition = p, "kafka: no watermarks; no lookback");
                return None;
            }
        };
        if c <= low {
            return None;
        }
        let mut probe = lock(&self.probe);
        if probe.is_none() {
            match self
                .config
                .probe_config()
                .set_log_level(crate::librdkafka_log_level())
                .create::<BaseConsumer<DefaultConsumerContext>>()
            {
                Ok(created) => *probe = Some(created),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka: cannot create the lookback probe; no lookback");
                    return None;
                }
            }
        }
        let probe = probe.as_ref()?;
        let Some((_, last_time)) = lookback::read_time(probe, topic, p, c - 1, METADATA_TIMEOUT)
        else {
            tracing::warn!(
                partition = p,
                offset = c - 1,
                "kafka: cannot read the last committed message; re-reading from the earliest offset"
            );
            return Some(low);
        };
        let target = lookback_target(last_time, self.config.lookback);
        let mut query = TopicPartitionList::new();
        let answer = match query
            .add_partition_offset(topic, p, Offset::Offset(target))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                consumer
                    .offsets_for_times(query, METADATA_TIMEOUT)
                    .map_err(|e| e.to_string())
            }) {
            Ok(r) => r.elements().iter().find_map(|e| match e.offset() {
                Offset::Offset(o) if e.partition() == p => Some(o),
                _ => None,
            }),
            Err(e) => {
                tracing::warn!(error = %e, partition = p, "kafka: offsets_for_times failed; re-reading from the earliest offset");
                None
            }
        };
        Some(lookback::start_offset(low, c - 1, answer))
    }

    fn add_partition(&self, p: i32, committed: Option<i64>, start: Option<i64>) {
        let shared = Arc::new(PartitionShared::new(p, committed, self.shared.clone()));
        let mut state = lock(&self.state);
        let (tx, finished) = match &state.routing {
            Some(Routing::Shared(tx)) => (tx.clone(), None),
            Some(Routing::PerPartition(leases)) => {
                let (tx, rx) = mpsc::channel(PARTITION_CHANNEL_BATCHES);
                let (done_tx, done_rx) = std_mpsc::channel();
                let lease = Lease {
                    partition: shared.clone(),
                    rx,
                    guard: FinishGuard(done_tx),
                };
                if leases.send(lease).is_err() {
                    tracing::debug!(partition = p, "kafka: no one takes partitions any more");
                }
                (tx, Some(done_rx))
            }
            None => return,
        };
        let replay_until = replay_until(committed, start);
        state.partitions.insert(
            p,
            PartitionState::new(shared.clone(), tx, finished, replay_until),
        );
        drop(state);
        lock(&self.shared.assigned).insert(p, shared);
    }

    /// Stops handing out the partitions' messages, lets per-partition workers finish (emit
    /// their open families, have everything exported and acknowledged), then commits what is
    /// acknowledged.
    fn on_revoke(&self, consumer: &BaseConsumer<Self>, parts: &[i32]) {
        if parts.is_empty() {
            return;
        }
        tracing::info!(topic = %self.config.topic, partitions = ?parts, "kafka: partitions revoked");
        let removed: Vec<PartitionState> = {
            let mut state = lock(&self.state);
            parts
                .iter()
                .filter_map(|p| state.partitions.remove(p))
                .collect()
        };
        {
            let mut assigned = lock(&self.shared.assigned);
            for p in parts {
                assigned.remove(p);
            }
        }
        let mut waiting = Vec::new();
        for ps in removed {
            ps.shared.revoked.store(true, Ordering::Release);
            let PartitionState {
                shared, finished, ..
            } = ps; // drops the sender and the batches not handed out
            waiting.push((shared, finished));
        }
        let deadline = Instant::now() + self.config.revoke_timeout;
        for (shared, finished) in &waiting {
            if let Some(rx) = finished {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(std_mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                    tracing::warn!(
                        partition = shared.partition,
                        timeout = ?self.config.revoke_timeout,
                        "kafka: the partition's worker did not finish in time; committing what is acknowledged"
                    );
                }
            }
        }
        let shared: Vec<Arc<PartitionShared>> = waiting.into_iter().map(|(s, _)| s).collect();
        self.commit(consumer, &shared, CommitMode::Sync);
    }

    /// Commits the acknowledged offsets of `partitions`.
    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[Arc<PartitionShared>],
        mode: CommitMode,
    ) {
        let mut tpl = TopicPartitionList::new();
        let mut sent = Vec::new();
        for p in partitions {
            let mut t = lock(&p.tracker);
            if let Some(o) = t.to_commit()
                && tpl
                    .add_partition_offset(&self.config.topic, p.partition, Offset::Offset(o))
                    .is_ok()
            {
                t.sent(o);
                sent.push((p.partition, o));
            }
        }
        if sent.is_empty() {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                if matches!(mode, CommitMode::Sync) {
                    for (p, o) in &sent {
                        self.shared.record_commit(*p, *o);
                    }
                }
                tracing::debug!(offsets = ?sent, "kafka: committed");
            }
            Err(e) => {
                // Not counted here: librdkafka hands every commit's result, a synchronous
                // one's too, to the commit callback as well (`offset_commit_cb` is always
                // set by rdkafka), which counts it once.
                tracing::warn!(error = %e, offsets = ?sent, "kafka: committing offsets failed");
                let committed = lock(&self.shared.committed).clone();
                for p in partitions {
                    lock(&p.tracker).unsent(committed.get(&p.partition).copied());
                }
                self.shared.commit_dirty.store(true, Ordering::Release);
            }
        }
    }

    /// Commits the acknowledged offsets of every assigned partition.
    pub(super) fn commit_assigned(&self, consumer: &BaseConsumer<Self>, mode: CommitMode) {
        self.shared.commit_dirty.store(false, Ordering::Release);
        let parts: Vec<Arc<PartitionShared>> = lock(&self.state)
            .partitions
            .values()
            .map(|p| p.shared.clone())
            .collect();
        self.commit(consumer, &parts, mode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(entries: &[(&str, i32, Offset)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (topic, p, o) in entries {
            tpl.add_partition_offset(topic, *p, *o)
                .expect("a valid offset");
        }
        tpl
    }

    #[test]
    fn only_the_topics_partitions_are_ours() {
        let t = tpl(&[
            ("audit", 2, Offset::Invalid),
            ("other", 0, Offset::Invalid),
            ("audit", 0, Offset::Invalid),
        ]);
        assert_eq!(topic_partitions(&t, "audit"), [2, 0]);
        assert!(topic_partitions(&t, "none").is_empty());
    }

    #[test]
    fn a_partition_never_committed_has_no_committed_offset() {
        let t = tpl(&[
            ("audit", 0, Offset::Offset(17)),
            ("audit", 1, Offset::Invalid), // never committed
            ("other", 2, Offset::Offset(5)),
            ("audit", 3, Offset::Offset(0)),
        ]);
        assert_eq!(
            topic_offsets(&t, "audit"),
            BTreeMap::from([(0, 17), (3, 0)])
        );
    }

    #[test]
    fn only_a_start_before_the_committed_offset_is_a_re_read() {
        assert_eq!(replay_until(Some(100), Some(40)), Some(100));
        assert_eq!(replay_until(Some(100), Some(100)), None);
        assert_eq!(replay_until(Some(100), None), None, "no lookback");
        assert_eq!(replay_until(None, Some(0)), None, "never committed");
    }

    #[test]
    fn the_lookback_target_is_before_the_last_committed_message() {
        assert_eq!(lookback_target(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(lookback_target(1_000, Duration::from_secs(3)), -2_000);
        assert_eq!(
            lookback_target(i64::MIN + 1, Duration::from_secs(1)),
            i64::MIN
        );
        assert_eq!(lookback_target(0, Duration::MAX), -i64::MAX);
    }
}
