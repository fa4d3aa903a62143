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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, RebalanceProtocol,
};
use rdkafka::error::{KafkaError as RdError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};

use kubetrail_model::ratelimit::LogLimiter;
use kubetrail_queue::{Ack, AuditBatch, AuditConsumer, Received};

use crate::message::RawMessage;
use crate::tracker::Tracker;
use crate::{Error, KafkaConfig, lookback};

/// How long one poll waits for a message; also the latency of stop and commits.
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// How long one poll waits while batches wait for room in a channel.
const POLL_TIMEOUT_BACKLOG: Duration = Duration::from_millis(2);
/// Blocking metadata requests (committed offsets, watermarks, offsets for times) wait at most.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches queued per partition channel (per-partition workers).
const PARTITION_CHANNEL_BATCHES: usize = 4;
/// Batches queued in the channel of a [`KafkaConsumer`].
const SHARED_CHANNEL_BATCHES: usize = 8;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a consumer did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages received from Kafka (re-read ones included).
    pub messages: u64,
    /// Of `messages`, those re-read below the committed offset to rebuild state (lookback).
    pub replayed: u64,
    /// Messages that were not a valid event: skipped, counted, acknowledged.
    pub malformed: u64,
    /// Batches handed to workers.
    pub batches: u64,
    /// Successful offset commits (one per partition committed).
    pub commits: u64,
    /// Failed offset commits (retried).
    pub commit_errors: u64,
    /// Partition assignments and revocations received.
    pub rebalances: u64,
    /// Times a partition was paused because its worker was behind.
    pub pauses: u64,
    /// The partitions assigned now.
    pub assigned: Vec<i32>,
    /// The last offset this consumer committed, per partition (the next offset to read).
    pub committed: BTreeMap<i32, i64>,
    /// Per partition, the offset after the last message a worker took from this consumer.
    /// A taken batch is the worker's: its events are processed (and, when the worker ends,
    /// emitted) even if the partition is revoked now. Commits trail it by what the
    /// watermark still holds, so this — not `committed` — says "everything up to here has
    /// reached a pipeline".
    pub taken: BTreeMap<i32, i64>,
    /// The consumer has closed: it left the group and its polling thread ended.
    pub closed: bool,
}

#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    replayed: AtomicU64,
    malformed: AtomicU64,
    batches: AtomicU64,
    commits: AtomicU64,
    commit_errors: AtomicU64,
    rebalances: AtomicU64,
    pauses: AtomicU64,
}

/// State shared by the polling thread, the consumers and acknowledgements of one Kafka
/// consumer.
#[derive(Debug)]
pub(crate) struct ConsumerShared {
    topic: String,
    counters: Counters,
    /// An acknowledgement moved some partition's committable offset.
    commit_dirty: AtomicBool,
    committed: Mutex<BTreeMap<i32, i64>>,
    taken: Mutex<BTreeMap<i32, i64>>,
    assigned: Mutex<BTreeMap<i32, Arc<PartitionShared>>>,
    /// Why the consumer stopped, if it failed.
    fatal: Mutex<Option<String>>,
    closed: AtomicBool,
    /// Bounds the lines about malformed messages (each is counted either way).
    malformed_log: Mutex<LogLimiter>,
}

impl ConsumerShared {
    pub(crate) fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            messages: get(&c.messages),
            replayed: get(&c.replayed),
            malformed: get(&c.malformed),
            batches: get(&c.batches),
            commits: get(&c.commits),
            commit_errors: get(&c.commit_errors),
            rebalances: get(&c.rebalances),
            pauses: get(&c.pauses),
            assigned: lock(&self.assigned).keys().copied().collect(),
            committed: lock(&self.committed).clone(),
            taken: lock(&self.taken).clone(),
            closed: self.closed.load(Ordering::Acquire),
        }
    }

    pub(crate) fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    fn record_commit(&self, partition: i32, offset: i64) {
        let mut c = lock(&self.committed);
        if c.get(&partition).is_some_and(|&o| o >= offset) {
            return;
        }
        c.insert(partition, offset);
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kubetrail_kafka_commits_total", "result" => "ok").increment(1);
    }
}

/// One assignment of one partition: shared by the polling thread, the partition's consumer
/// and the acknowledgements of its batches. A new assignment gets a new one.
#[derive(Debug)]
pub(crate) struct PartitionShared {
    pub(crate) partition: i32,
    pub(crate) revoked: AtomicBool,
    /// librdkafka reported the end of the partition and no message arrived since.
    at_eof: AtomicBool,
    /// Batches formed on the polling thread and not yet in the channel.
    local_batches: AtomicUsize,
    tracker: Mutex<Tracker>,
    /// Batches handed to a consumer and neither acknowledged nor dropped.
    pub(crate) outstanding: watch::Sender<usize>,
    consumer: Arc<ConsumerShared>,
}

impl PartitionShared {
    /// Everything the partition held was received: at its end, nothing waiting locally.
    pub(crate) fn drained(&self) -> bool {
        self.at_eof.load(Ordering::Acquire) && self.local_batches.load(Ordering::Acquire) == 0
    }
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
    /// Parses the messages (skipping and counting malformed ones) into a batch with an
    /// acknowledgement that marks its offsets committable. `None` when no message was an
    /// event (the batch is then acknowledged at once).
    /// Whether the batch was re-read by the lookback (before the committed offset).
    pub(crate) fn replayed(&self) -> bool {
        self.replayed
    }

    /// Records that a worker took the batch ([`ConsumerStats::taken`]).
    pub(crate) fn mark_taken(&self) {
        let Some(last) = self.messages.last() else {
            return;
        };
        let mut taken = lock(&self.partition.consumer.taken);
        let next = taken.entry(self.partition.partition).or_insert(0);
        *next = (*next).max(last.offset + 1);
    }

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
        let received_at = first
            .and_then(|m| {
                m.received_at
                    .or_else(|| m.timestamp_ms.map(|t| t.saturating_mul(1_000_000)))
            })
            .unwrap_or(0);
        partition
            .consumer
            .counters
            .batches
            .fetch_add(1, Ordering::Relaxed);
        Some(Received {
            batch: AuditBatch {
                cluster: cluster.unwrap_or_default(),
                received_at,
                source: first.and_then(|m| m.source.clone()),
                events,
            },
            ack,
        })
    }
}

/// Signals the polling thread, when dropped, that a revoked partition's worker is done.
#[derive(Debug)]
pub(crate) struct FinishGuard(#[allow(dead_code)] std_mpsc::Sender<()>);

/// A newly assigned partition, for per-partition workers.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) partition: Arc<PartitionShared>,
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

struct PartitionState {
    shared: Arc<PartitionShared>,
    tx: mpsc::Sender<RawBatch>,
    building: Option<RawBatch>,
    ready: VecDeque<RawBatch>,
    paused: bool,
    /// Per-partition workers: resolves (disconnects) when the worker finished.
    finished: Option<std_mpsc::Receiver<()>>,
    /// Messages below this offset are re-read (lookback).
    replay_until: Option<i64>,
}

struct PollerState {
    routing: Option<Routing>,
    partitions: BTreeMap<i32, PartitionState>,
    /// The lookback's group-less consumer, created when first needed.
    probe: Option<BaseConsumer<DefaultConsumerContext>>,
    last_error: Option<(String, Instant)>,
}

/// The consumer's context: rebalance callback, commit callback, statistics, logs.
pub(crate) struct ConsumerCtx {
    config: KafkaConfig,
    shared: Arc<ConsumerShared>,
    state: Mutex<PollerState>,
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
            if p.partition >= 0 && p.desired && p.consumer_lag >= 0 {
                metrics::gauge!("kubetrail_kafka_consumer_lag", "partition" => p.partition.to_string())
                    .set(p.consumer_lag as f64);
            }
        }
    }
}

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
                let parts = self.partitions_of(tpl);
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
                self.shared
                    .counters
                    .commit_errors
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kubetrail_kafka_commits_total", "result" => "error")
                    .increment(1);
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

impl ConsumerCtx {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.config.topic)
            .map(|e| e.partition())
            .collect()
    }

    /// Creates the state of newly assigned partitions and sets where each starts: `lookback`
    /// before its committed offset.
    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let parts = self.partitions_of(tpl);
        tracing::info!(topic = %self.config.topic, partitions = ?parts, "kafka: partitions assigned");
        let committed: BTreeMap<i32, i64> = match consumer
            .committed_offsets(tpl.clone(), METADATA_TIMEOUT)
        {
            Ok(c) => c
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) if e.topic() == self.config.topic => Some((e.partition(), o)),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "kafka: reading committed offsets failed; starting at them without lookback");
                BTreeMap::new()
            }
        };
        {
            let mut known = lock(&self.shared.committed);
            for (p, o) in &committed {
                let e = known.entry(*p).or_insert(*o);
                *e = (*e).max(*o);
            }
        }
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
        let mut state = lock(&self.state);
        if state.probe.is_none() {
            match self
                .config
                .probe_config()
                .set_log_level(crate::librdkafka_log_level())
                .create::<BaseConsumer<DefaultConsumerContext>>()
            {
                Ok(probe) => state.probe = Some(probe),
                Err(e) => {
                    tracing::warn!(error = %e, "kafka: cannot create the lookback probe; no lookback");
                    return None;
                }
            }
        }
        let probe = state.probe.as_ref()?;
        let Some((_, last_time)) = lookback::read_time(probe, topic, p, c - 1, METADATA_TIMEOUT)
        else {
            tracing::warn!(
                partition = p,
                offset = c - 1,
                "kafka: cannot read the last committed message; re-reading from the earliest offset"
            );
            return Some(low);
        };
        let lookback_ms = i64::try_from(self.config.lookback.as_millis()).unwrap_or(i64::MAX);
        let target = last_time.saturating_sub(lookback_ms);
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
        let shared = Arc::new(PartitionShared {
            partition: p,
            revoked: AtomicBool::new(false),
            at_eof: AtomicBool::new(false),
            local_batches: AtomicUsize::new(0),
            tracker: Mutex::new(Tracker::new(committed)),
            outstanding: watch::Sender::new(0),
            consumer: self.shared.clone(),
        });
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
        let replay_until = match (committed, start) {
            (Some(c), Some(s)) if s < c => Some(c),
            _ => None,
        };
        state.partitions.insert(
            p,
            PartitionState {
                shared: shared.clone(),
                tx,
                building: None,
                ready: VecDeque::new(),
                paused: false,
                finished,
                replay_until,
            },
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
                self.shared
                    .counters
                    .commit_errors
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kubetrail_kafka_commits_total", "result" => "error")
                    .increment(1);
                tracing::warn!(error = %e, offsets = ?sent, "kafka: committing offsets failed");
                let committed = lock(&self.shared.committed).clone();
                for p in partitions {
                    lock(&p.tracker).unsent(committed.get(&p.partition).copied());
                }
                self.shared.commit_dirty.store(true, Ordering::Release);
            }
        }
    }

    fn commit_assigned(&self, consumer: &BaseConsumer<Self>, mode: CommitMode) {
        self.shared.commit_dirty.store(false, Ordering::Release);
        let parts: Vec<Arc<PartitionShared>> = lock(&self.state)
            .partitions
            .values()
            .map(|p| p.shared.clone())
            .collect();
        self.commit(consumer, &parts, mode);
    }

    /// Adds a message to its partition's batch.
    fn absorb(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        use rdkafka::Message as _;
        let mut state = lock(&self.state);
        let Some(ps) = state.partitions.get_mut(&m.partition()) else {
            return; // revoked meanwhile
        };
        let raw = RawMessage::from_kafka(m);
        let c = &self.shared.counters;
        c.messages.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kubetrail_kafka_messages_consumed_total").increment(1);
        let replayed = ps.replay_until.is_some_and(|until| raw.offset < until);
        if replayed {
            c.replayed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("kubetrail_kafka_messages_replayed_total").increment(1);
        }
        ps.shared.at_eof.store(false, Ordering::Release);
        let full = ps.building.as_ref().is_some_and(|b| {
            // One batch is one cluster and one source (API server): the worker orders events
            // by event time per source (see `kubetrail_pipeline::watermark`).
            b.messages.len() >= self.config.max_batch_events
                || b.cluster != raw.cluster
                || b.messages.first().is_some_and(|m| m.source != raw.source)
                || b.replayed != replayed
        });
        if full {
            close_batch(ps);
        }
        let b = ps.building.get_or_insert_with(|| {
            ps.shared.local_batches.fetch_add(1, Ordering::AcqRel);
            RawBatch {
                cluster: raw.cluster.clone(),
                messages: Vec::new(),
                slot: 0,
                partition: ps.shared.clone(),
                replayed,
            }
        });
        b.messages.push(raw);
    }

    fn eof(&self, partition: i32) {
        let mut state = lock(&self.state);
        if let Some(ps) = state.partitions.get_mut(&partition) {
            close_batch(ps);
            ps.shared.at_eof.store(true, Ordering::Release);
        }
    }

    /// Closes every batch being formed and hands batches to the channels; pauses partitions
    /// whose channel is full and that hold `max_buffered_bytes` waiting, resumes those that
    /// drained. Returns whether batches are still waiting for room.
    fn pump(&self, consumer: &BaseConsumer<Self>) -> bool {
        let mut waiting = false;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        {
            let mut state = lock(&self.state);
            for (p, ps) in state.partitions.iter_mut() {
                close_batch(ps);
                while let Some(b) = ps.ready.pop_front() {
                    match ps.tx.try_send(b) {
                        Ok(()) => {
                            ps.shared.local_batches.fetch_sub(1, Ordering::AcqRel);
                        }
                        Err(mpsc::error::TrySendError::Full(b)) => {
                            ps.ready.push_front(b);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            // No one reads this partition any more (its worker ended): what is
                            // not acknowledged is read again by the partition's next owner.
                            ps.ready.clear();
                            ps.shared.local_batches.store(0, Ordering::Release);
                            break;
                        }
                    }
                }
                waiting |= !ps.ready.is_empty();
                let held: usize = ps
                    .ready
                    .iter()
                    .flat_map(|b| &b.messages)
                    .map(|m| m.value.len())
                    .sum();
                if held >= self.config.max_buffered_bytes && !ps.paused {
                    ps.paused = true;
                    self.shared.counters.pauses.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("kubetrail_kafka_partitions_paused_total").increment(1);
                    let _ = pause.add_partition_offset(&self.config.topic, *p, Offset::Invalid);
                } else if ps.ready.is_empty() && ps.paused {
                    ps.paused = false;
                    let _ = resume.add_partition_offset(&self.config.topic, *p, Offset::Invalid);
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
    fn consumer_error(&self, e: &RdError) {
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
    fn close_all(&self) {
        let mut state = lock(&self.state);
        for ps in state.partitions.values() {
            ps.shared.revoked.store(true, Ordering::Release);
        }
        state.partitions.clear();
        state.routing = None;
        state.probe = None;
        drop(state);
        lock(&self.shared.assigned).clear();
    }
}

/// Moves the batch being formed to the ready queue, registering it with the tracker.
fn close_batch(ps: &mut PartitionState) {
    if let Some(mut b) = ps.building.take() {
        let end = b.messages.last().map_or(0, |m| m.offset.saturating_add(1));
        b.slot = lock(&ps.shared.tracker).hand_out(end);
        ps.ready.push_back(b);
    }
}

/// The polling thread of one consumer, and how to stop it.
pub(crate) struct Poller {
    pub(crate) shared: Arc<ConsumerShared>,
    stop: Arc<AtomicBool>,
    closed: Option<oneshot::Receiver<()>>,
    close_timeout: Duration,
}

impl Poller {
    /// Creates the consumer, subscribes to the topic and starts the polling thread.
    pub(crate) fn start(config: &KafkaConfig, routing: Routing) -> Result<Poller, Error> {
        config.validate()?;
        let shared = Arc::new(ConsumerShared {
            topic: config.topic.clone(),
            counters: Counters::default(),
            commit_dirty: AtomicBool::new(false),
            committed: Mutex::new(BTreeMap::new()),
            taken: Mutex::new(BTreeMap::new()),
            assigned: Mutex::new(BTreeMap::new()),
            fatal: Mutex::new(None),
            closed: AtomicBool::new(false),
            malformed_log: Mutex::new(LogLimiter::for_items()),
        });
        let ctx = ConsumerCtx {
            config: config.clone(),
            shared: shared.clone(),
            state: Mutex::new(PollerState {
                routing: Some(routing),
                partitions: BTreeMap::new(),
                probe: None,
                last_error: None,
            }),
        };
        let consumer: BaseConsumer<ConsumerCtx> = config
            .consumer_config()
            .set_log_level(crate::librdkafka_log_level())
            .create_with_context(ctx)
            .map_err(|source| Error::Client {
                what: "consumer",
                brokers: config.brokers.clone(),
                source,
            })?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(|source| Error::Subscribe {
                topic: config.topic.clone(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (closed_tx, closed) = oneshot::channel();
        let commit_interval = config.commit_interval;
        let max_batch = config.max_batch_events;
        std::thread::Builder::new()
            .name("kubetrail-kafka-poll".to_owned())
            .spawn({
                let stop = stop.clone();
                move || poll_loop(consumer, &stop, commit_interval, max_batch, closed_tx)
            })
            .map_err(Error::Thread)?;
        Ok(Poller {
            shared,
            stop,
            closed: Some(closed),
            close_timeout: config
                .revoke_timeout
                .saturating_add(Duration::from_secs(15)),
        })
    }

    /// Starts closing: commit what is acknowledged, give up the partitions (revocation:
    /// per-partition workers finish), leave the group.
    pub(crate) fn begin_close(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Closes and waits until the consumer left the group (bounded).
    pub(crate) async fn close(&mut self) {
        self.begin_close();
        if let Some(closed) = self.closed.take()
            && tokio::time::timeout(self.close_timeout, closed)
                .await
                .is_err()
        {
            tracing::warn!("kafka: the consumer did not close in time");
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // The thread commits what is acknowledged and leaves the group by itself.
        self.begin_close();
    }
}

fn poll_loop(
    consumer: BaseConsumer<ConsumerCtx>,
    stop: &AtomicBool,
    commit_interval: Duration,
    max_batch: usize,
    closed: oneshot::Sender<()>,
) {
    let ctx = consumer.context().clone();
    let mut last_commit = Instant::now();
    let drain_limit = max_batch.saturating_mul(8).max(64);
    while !stop.load(Ordering::Acquire) {
        let backlog = ctx.pump(&consumer);
        if ctx.shared.commit_dirty.load(Ordering::Acquire)
            && last_commit.elapsed() >= commit_interval
        {
            ctx.commit_assigned(&consumer, CommitMode::Sync);
            last_commit = Instant::now();
        }
        let mut next = consumer.poll(if backlog {
            POLL_TIMEOUT_BACKLOG
        } else {
            POLL_TIMEOUT
        });
        let mut taken = 0;
        while let Some(result) = next {
            match result {
                Ok(m) => ctx.absorb(&m),
                Err(RdError::PartitionEOF(p)) => ctx.eof(p),
                Err(e @ RdError::MessageConsumptionFatal(_)) => {
                    tracing::error!(error = %e, "kafka consumer: fatal error");
                    *lock(&ctx.shared.fatal) = Some(e.to_string());
                    stop.store(true, Ordering::Release);
                    break;
                }
                Err(e) => ctx.consumer_error(&e),
            }
            taken += 1;
            if taken >= drain_limit {
                break;
            }
            // Only what is already here: a batch is what is available now.
            next = consumer.poll(Duration::ZERO);
        }
    }
    // Closing: commit what is acknowledged, then close (the revocation in there lets
    // per-partition workers finish and commits again), then end every channel.
    ctx.commit_assigned(&consumer, CommitMode::Sync);
    drop(consumer);
    ctx.close_all();
    ctx.shared.closed.store(true, Ordering::Release);
    tracing::info!(topic = %ctx.config.topic, "kafka: consumer closed");
    let _ = closed.send(());
}

/// Consumes audit events from Kafka: every assigned partition's batches through one
/// [`AuditConsumer`].
///
/// Each [`Received`] batch holds consecutive messages of **one** partition (at most
/// [`max_batch_events`](KafkaConfig::max_batch_events), those available now) from one
/// cluster. Its [`Ack`] is explicit: offsets are committed (every
/// [`commit_interval`](KafkaConfig::commit_interval)) up to the end of the longest run of
/// acknowledged batches of a partition; dropping an `Ack` without `done` leaves its messages
/// to be read again by the partition's next owner.
///
/// With more than one partition, prefer [`PartitionedWorker`](crate::PartitionedWorker):
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
            if batch.partition.revoked.load(Ordering::Acquire) {
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
        !assigned.is_empty() && assigned.values().all(|p| p.drained()) && self.rx.is_empty()
    }
}

/// A cloneable handle to a consumer's [`ConsumerStats`].
#[derive(Debug, Clone)]
pub struct StatsHandle(pub(crate) Arc<ConsumerShared>);

impl StatsHandle {
    /// The statistics now.
    pub fn get(&self) -> ConsumerStats {
        self.0.stats()
    }
}
