//! The durable local log behind `serve`'s webhook: acknowledged means on disk.
//!
//! Without it, `serve` answers 200 once a batch is in memory, and a `kill -9` (an OOM kill, a
//! node failure) loses what was queued or held by the watermark — and the API server does not
//! resend what it was told was accepted; request spans already exported lose their parent
//! forever. With a directory (`queue.dir`), every accepted batch is written to a **segmented
//! log of CRC-checked records** ([`format`]) before the 200 (fsync per batch by default:
//! [`FsyncPolicy`]), and also queued in memory as before ([`kubetrail_queue::embedded`]: the
//! worker never reads the disk in steady state).
//!
//! **Recovery** ([`open`]): the segments are scanned; a damaged tail (a write cut short, a bad
//! checksum) is cut at the last whole record, counted and logged, and the rest is used. Every
//! retained batch is handed to the worker again, in the order it was accepted — those not yet
//! exported, and the exported history kept for `retention` (window + linger of event time)
//! behind the last exported one, which rebuilds the open families, the stage merger and the
//! owner graph exactly as `consume` does with `kafka.lookback`. Spans the exporter had
//! delivered before the crash are recorded in the log too ([`KIND_DELIVERED`](format::KIND_DELIVERED)
//! records), and the worker does not export them again ([`Recovery::delivered`]); so an object
//! span is emitted once, with the ids the uninterrupted run gives, and a request span exported
//! before the crash gets its parent after it.
//!
//! **Bounds**: the segments never exceed `disk_bytes`. A segment whose batches were all
//! acknowledged (exported) is deleted once it is older than the retention; when the budget
//! is needed, exported segments go first even within the retention (counted); when
//! unexported batches fill it, publishing fails with [`PublishError::Unavailable`] (the
//! webhook's 503 + Retry-After).
//!
//! One writer thread owns the files: concurrent batches are written and synced together
//! (group commit), and each is handed to the in-memory queue, in sequence order, once it is
//! durable.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod format;
mod metric_names;
pub use metric_names::describe_metrics;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kubetrail_model::AuditEvent;
use kubetrail_model::ids::SpanId;
use kubetrail_queue::embedded::{EmbeddedConsumer, EmbeddedProducer};
use kubetrail_queue::{
    Ack, AuditBatch, AuditConsumer, AuditProducer, PublishError, QueueHealth, Received,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use config::{FsyncPolicy, LogConfig, QueueConfig};

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("durable log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Serialize)]
struct StoredRef<'a> {
    cluster: &'a str,
    received_at: i64,
    source: Option<&'a str>,
    events: &'a [AuditEvent],
}

#[derive(Deserialize)]
struct Stored {
    cluster: String,
    received_at: i64,
    source: Option<String>,
    events: Vec<AuditEvent>,
}

/// What opening the log found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Segments found.
    pub segments: usize,
    /// Batches found (to be processed again: not yet exported, or retained history).
    pub batches: usize,
    /// Bytes of the retained segments.
    pub bytes: u64,
    /// Spans delivered before the restart (not to be exported again).
    pub delivered: HashSet<SpanId>,
    /// Damaged places found (a segment's tail that was cut).
    pub damaged: usize,
    /// Bytes cut from damaged tails.
    pub damaged_bytes: u64,
}

/// A batch still in the log, to hand to the worker again.
#[derive(Debug, Clone)]
struct Retained {
    path: PathBuf,
    pos: format::BatchPos,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    last_seq: Option<u64>,
    max_time: i64,
}

type Then = Box<dyn FnOnce(u64) -> Result<(), PublishError> + Send>;
type Reply = oneshot::Sender<Result<(), PublishError>>;

enum Cmd {
    Append {
        body: Vec<u8>,
        max_time: i64,
        then: Then,
        reply: Reply,
    },
    Delivered(Vec<SpanId>),
    Acked(u64),
    /// Sync and stop.
    Close,
}

/// Sizes the writer shares with publishers (gauges, health).
#[derive(Default)]
struct Usage {
    bytes: AtomicU64,
    budget: AtomicU64,
}

/// Opens (or creates) the log in `dir`, recovers what it holds, and starts its writer.
///
/// `producer`/`consumer` are the in-memory queue in front of the worker (its event and byte
/// bounds still apply to batches accepted now). Returns the durable queue's two sides, a
/// [`LogHandle`] (delivered spans, shutdown) and what was recovered.
pub fn open(
    dir: &Path,
    config: &LogConfig,
    retention: Duration,
    (producer, consumer): (EmbeddedProducer, EmbeddedConsumer),
) -> Result<(DurableProducer, DurableConsumer, LogHandle, Recovery), LogError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(format::parse_segment_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    let mut recovery = Recovery::default();
    let mut segments = VecDeque::new();
    let mut retained = VecDeque::new();
    let mut outstanding = BTreeMap::new();
    let mut next_seq = 1u64;
    for (first_seq, path) in found {
        let scanned = format::scan(&path).map_err(io(&path))?;
        if let Some(why) = &scanned.damage {
            let cut = scanned.file_len - scanned.valid_len;
            recovery.damaged += 1;
            recovery.damaged_bytes += cut;
            metrics::counter!("kubetrail_log_damaged_total").increment(1);
            metrics::counter!("kubetrail_log_damaged_bytes_total").increment(cut);
            tracing::error!(
                segment = %path.display(),
                cut_bytes = cut,
                kept_bytes = scanned.valid_len,
                "durable log: damaged segment tail cut ({why}); the records before it are used"
            );
            eprintln!(
                "kubetrail: durable log segment {} is damaged ({why}): cut {cut} bytes, kept {} bytes",
                path.display(),
                scanned.valid_len
            );
        }
        if scanned.valid_len < format::MAGIC.len() as u64 {
            std::fs::remove_file(&path).map_err(io(&path))?;
            continue;
        }
        if scanned.valid_len < scanned.file_len {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            f.set_len(scanned.valid_len).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
        }
        let mut seg = Segment {
            first_seq,
            path: path.clone(),
            bytes: scanned.valid_len,
            last_seq: None,
            max_time: i64::MIN,
        };
        for pos in scanned.batches {
            seg.last_seq = Some(pos.seq);
            seg.max_time = seg.max_time.max(pos.max_time);
            next_seq = next_seq.max(pos.seq + 1);
            outstanding.insert(pos.seq, pos.max_time);
            retained.push_back(Retained {
                path: path.clone(),
                pos,
            });
        }
        recovery
            .delivered
            .extend(scanned.delivered.into_iter().map(SpanId));
        recovery.bytes += seg.bytes;
        segments.push_back(seg);
    }
    recovery.segments = segments.len();
    recovery.batches = retained.len();
    metrics::counter!("kubetrail_log_recovered_batches_total").increment(retained.len() as u64);

    let usage = Arc::new(Usage::default());
    usage.budget.store(config.disk_bytes, Ordering::Relaxed);
    let mut writer = Writer {
        dir: dir.to_owned(),
        policy: config.fsync,
        interval: config.fsync_interval,
        budget: config.disk_bytes,
        segment_bytes: config.effective_segment_bytes(),
        retention: i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX),
        segments,
        active: None,
        total: recovery.bytes,
        next_seq,
        outstanding,
        acked_time: i64::MIN,
        dirty: false,
        last_sync: Instant::now(),
        usage: usage.clone(),
    };
    writer.start_segment()?;
    writer.publish_gauges();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("kubetrail-log".into())
        .spawn(move || writer.run(rx))
        .map_err(io(dir))?;
    Ok((
        DurableProducer {
            inner: producer,
            tx: tx.clone(),
            usage,
        },
        DurableConsumer {
            inner: consumer,
            retained,
            reader: None,
            tx: tx.clone(),
        },
        LogHandle {
            tx,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
        },
        recovery,
    ))
}

struct Writer {
    dir: PathBuf,
    policy: FsyncPolicy,
    interval: Duration,
    budget: u64,
    segment_bytes: u64,
    retention: i64,
    /// Closed segments, oldest first.
    segments: VecDeque<Segment>,
    active: Option<(Segment, File)>,
    total: u64,
    next_seq: u64,
    /// Batches written and not yet acknowledged, with their latest event time.
    outstanding: BTreeMap<u64, i64>,
    /// Latest event time of an acknowledged batch.
    acked_time: i64,
    dirty: bool,
    last_sync: Instant,
    usage: Arc<Usage>,
}

/// Largest group of appends written (and synced) together.
const GROUP_BYTES: usize = 32 << 20;

impl Writer {
    fn start_segment(&mut self) -> Result<(), LogError> {
        let path = self.dir.join(format::segment_name(self.next_seq));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(format::MAGIC).map_err(io(&path))?;
        if self.policy != FsyncPolicy::None {
            file.sync_all().map_err(io(&path))?;
            // The new name itself must survive a power loss.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        self.total += format::MAGIC.len() as u64;
        self.active = Some((
            Segment {
                first_seq: self.next_seq,
                path,
                bytes: format::MAGIC.len() as u64,
                last_seq: None,
                max_time: i64::MIN,
            },
            file,
        ));
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            let first = if self.dirty && self.policy == FsyncPolicy::Interval {
                let wait = self.interval.saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(c) => Some(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                }
            };
            let mut group = Vec::new();
            let mut bytes = 0;
            if matches!(first, Some(Cmd::Close)) {
                break;
            }
            if let Some(c) = first {
                group.push(c);
                while bytes < GROUP_BYTES {
                    match rx.try_recv() {
                        Ok(Cmd::Close) => {
                            self.handle(group);
                            self.sync("shutdown");
                            self.publish_gauges();
                            return;
                        }
                        Ok(c) => {
                            if let Cmd::Append { body, .. } = &c {
                                bytes += body.len();
                            }
                            group.push(c);
                        }
                        Err(_) => break,
                    }
                }
            }
            self.handle(group);
        }
        self.sync("shutdown");
        self.publish_gauges();
    }

    fn handle(&mut self, group: Vec<Cmd>) {
        let mut buf = Vec::new();
        let mut done: Vec<(u64, Then, Reply)> = Vec::new();
        let mut refused = Vec::new();
        let mut appended: Vec<(u64, i64)> = Vec::new();
        for cmd in group {
            match cmd {
                Cmd::Close => {}
                Cmd::Acked(seq) => self.acked(seq),
                Cmd::Delivered(ids) => {
                    let mut payload = Vec::with_capacity(1 + ids.len() * 8);
                    payload.push(format::KIND_DELIVERED);
                    for id in &ids {
                        payload.extend_from_slice(&id.0);
                    }
                    format::encode(&mut buf, &[&payload]);
                }
                Cmd::Append {
                    body,
                    max_time,
                    then,
                    reply,
                } => {
                    let need = (format::HEADER + 17 + body.len()) as u64;
                    if !self.make_room(buf.len() as u64 + need) {
                        metrics::counter!("kubetrail_log_full_total").increment(1);
                        refused.push(reply);
                        continue;
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    format::encode(
                        &mut buf,
                        &[
                            &[format::KIND_BATCH],
                            &seq.to_le_bytes(),
                            &max_time.to_le_bytes(),
                            &body,
                        ],
                    );
                    appended.push((seq, max_time));
                    done.push((seq, then, reply));
                }
            }
        }
        let full = || {
            PublishError::Unavailable {
            reason: "the durable log's disk budget (queue.durable.disk_bytes) is full of batches not yet exported".into(),
            // 55 × this is kube-apiserver's patience (kubetrail-receiver's docs).
            retry_after: Duration::from_secs(5),
        }
        };
        for reply in refused {
            let _ = reply.send(Err(full()));
        }
        if buf.is_empty() {
            self.maybe_sync();
            return;
        }
        let Some((seg, file)) = self.active.as_mut() else {
            for (_, _, reply) in done {
                let _ = reply.send(Err(PublishError::Unavailable {
                    reason: "the durable log has no open segment".into(),
                    retry_after: Duration::from_secs(5),
                }));
            }
            return;
        };
        let before = seg.bytes;
        let written = file.write_all(&buf).and_then(|()| {
            if self.policy == FsyncPolicy::Batch && !done.is_empty() {
                metrics::counter!("kubetrail_log_fsyncs_total").increment(1);
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Nothing of this group counts: cut the file back to where it was.
            metrics::counter!("kubetrail_log_write_errors_total").increment(1);
            tracing::error!(segment = %seg.path.display(), error = %e, "durable log: write failed; the batches are refused (503)");
            let _ = file.set_len(before);
            let _ = file.seek(SeekFrom::Start(before));
            for (_, _, reply) in done {
                let _ = reply.send(Err(PublishError::Unavailable {
                    reason: format!("the durable log cannot write: {e}"),
                    retry_after: Duration::from_secs(5),
                }));
            }
            return;
        }
        if self.policy == FsyncPolicy::Batch {
            self.last_sync = Instant::now();
        } else {
            self.dirty = true;
        }
        seg.bytes += buf.len() as u64;
        self.total += buf.len() as u64;
        for (seq, t) in appended {
            seg.last_seq = Some(seq);
            seg.max_time = seg.max_time.max(t);
            self.outstanding.insert(seq, t);
        }
        metrics::counter!("kubetrail_log_appends_total").increment(done.len() as u64);
        // Durable (per the policy): queue in memory, in sequence order, then answer.
        for (seq, then, reply) in done {
            let r = then(seq);
            if r.is_err() {
                // Not queued (shutting down): not processed in this run, so it stays
                // outstanding and is processed after the restart.
                tracing::debug!(seq, "durable log: batch written but the queue is closed");
            }
            let _ = reply.send(r);
        }
        self.maybe_sync();
        let roll = self
            .active
            .as_ref()
            .is_some_and(|(s, _)| s.bytes >= self.segment_bytes);
        if roll {
            self.roll();
        }
        self.trim();
        self.publish_gauges();
    }

    fn maybe_sync(&mut self) {
        if self.dirty
            && self.policy == FsyncPolicy::Interval
            && self.last_sync.elapsed() >= self.interval
        {
            self.sync("interval");
        }
    }

    fn sync(&mut self, why: &str) {
        if let Some((seg, file)) = &self.active
            && self.dirty
        {
            metrics::counter!("kubetrail_log_fsyncs_total").increment(1);
            if let Err(e) = file.sync_data() {
                tracing::error!(segment = %seg.path.display(), error = %e, why, "durable log: fsync failed");
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    fn roll(&mut self) {
        self.sync("segment roll");
        if let Some((seg, _file)) = self.active.take() {
            self.segments.push_back(seg);
        }
        if let Err(e) = self.start_segment() {
            tracing::error!(error = %e, "durable log: cannot start a new segment");
        }
    }

    fn acked(&mut self, seq: u64) {
        if let Some(t) = self.outstanding.remove(&seq) {
            self.acked_time = self.acked_time.max(t);
        }
    }

    /// Whether every batch of `seg` was acknowledged.
    fn exported(&self, seg: &Segment) -> bool {
        match (seg.last_seq, self.outstanding.first_key_value()) {
            (None, _) | (_, None) => true,
            (Some(last), Some((&first, _))) => first > last,
        }
    }

    /// Deletes exported segments older than the retention.
    fn trim(&mut self) {
        while let Some(seg) = self.segments.front() {
            let old = seg.max_time < self.acked_time.saturating_sub(self.retention);
            if !(self.exported(seg) && old) {
                break;
            }
            self.delete_front(false);
        }
    }

    /// Makes room for `need` more bytes, deleting exported segments (within the retention
    /// if it must); false when unexported batches fill the budget.
    fn make_room(&mut self, need: u64) -> bool {
        while self.total + need > self.budget {
            let Some(seg) = self.segments.front() else {
                return false;
            };
            if !self.exported(seg) {
                return false;
            }
            let within = seg.max_time >= self.acked_time.saturating_sub(self.retention);
            self.delete_front(within);
        }
        true
    }

    fn delete_front(&mut self, within_retention: bool) {
        let Some(seg) = self.segments.pop_front() else {
            return;
        };
        if within_retention {
            metrics::counter!("kubetrail_log_retention_cut_total").increment(1);
            tracing::warn!(
                segment = %seg.path.display(),
                "durable log: disk budget reached, an exported segment within the retention is deleted (a restart can no longer rebuild families from it; raise queue.durable.disk_bytes)"
            );
        }
        match std::fs::remove_file(&seg.path) {
            Ok(()) => {
                self.total = self.total.saturating_sub(seg.bytes);
                tracing::debug!(segment = %seg.path.display(), first_seq = seg.first_seq, "durable log: segment deleted");
            }
            Err(e) => {
                tracing::error!(segment = %seg.path.display(), error = %e, "durable log: cannot delete a segment");
                self.total = self.total.saturating_sub(seg.bytes);
            }
        }
    }

    fn publish_gauges(&self) {
        self.usage.bytes.store(self.total, Ordering::Relaxed);
        metrics::gauge!("kubetrail_log_bytes").set(self.total as f64);
        metrics::gauge!("kubetrail_log_budget_bytes").set(self.budget as f64);
        metrics::gauge!("kubetrail_log_segments")
            .set((self.segments.len() + usize::from(self.active.is_some())) as f64);
        metrics::gauge!("kubetrail_log_unexported_batches").set(self.outstanding.len() as f64);
    }
}

/// The accepting side: writes a batch to the log, then queues it in memory.
#[derive(Clone)]
pub struct DurableProducer {
    inner: EmbeddedProducer,
    tx: mpsc::Sender<Cmd>,
    usage: Arc<Usage>,
}

impl DurableProducer {
    /// Stops accepting (as [`EmbeddedProducer::close`]).
    pub fn close(&self) {
        self.inner.close();
    }
}

#[async_trait::async_trait]
impl AuditProducer for DurableProducer {
    async fn publish(&self, batch: AuditBatch) -> Result<(), PublishError> {
        // Room in memory first: a batch on disk is always also queued.
        let reservation = self.inner.try_reserve(&batch)?;
        let max_time = batch
            .events
            .iter()
            .filter_map(AuditEvent::end_time)
            .max()
            .unwrap_or(i64::MIN);
        let body = serde_json::to_vec(&StoredRef {
            cluster: &batch.cluster,
            received_at: batch.received_at,
            source: batch.source.as_deref(),
            events: &batch.events,
        })
        .map_err(|e| PublishError::Unavailable {
            reason: format!("cannot encode the batch for the durable log: {e}"),
            retry_after: Duration::from_secs(5),
        })?;
        let (reply, rx) = oneshot::channel();
        let inner = self.inner.clone();
        let then: Then = Box::new(move |seq| inner.send_reserved(batch, reservation, seq));
        self.tx
            .send(Cmd::Append {
                body,
                max_time,
                then,
                reply,
            })
            .map_err(|_| PublishError::Closed)?;
        rx.await.unwrap_or(Err(PublishError::Closed))
    }

    fn health(&self) -> QueueHealth {
        let mut h = self.inner.health();
        let used = self.usage.bytes.load(Ordering::Relaxed);
        let budget = self.usage.budget.load(Ordering::Relaxed);
        if h.ready && used >= budget.saturating_sub(budget / 64) {
            h.reason = Some(format!(
                "the durable log is at its disk budget ({used} of {budget} bytes)"
            ));
        }
        h
    }
}

/// The consuming side: first every batch the log retained (in the order it was accepted),
/// then what is accepted now.
pub struct DurableConsumer {
    inner: EmbeddedConsumer,
    retained: VecDeque<Retained>,
    reader: Option<(PathBuf, File)>,
    tx: mpsc::Sender<Cmd>,
}

impl DurableConsumer {
    fn read(&mut self, r: &Retained) -> std::io::Result<AuditBatch> {
        if self.reader.as_ref().is_none_or(|(p, _)| *p != r.path) {
            self.reader = Some((r.path.clone(), File::open(&r.path)?));
        }
        let Some((_, file)) = self.reader.as_mut() else {
            return Err(std::io::Error::other("no reader"));
        };
        file.seek(SeekFrom::Start(r.pos.offset))?;
        let mut buf = vec![0u8; r.pos.len];
        file.read_exact(&mut buf)?;
        let s: Stored = serde_json::from_slice(&buf).map_err(std::io::Error::other)?;
        Ok(AuditBatch {
            cluster: s.cluster,
            received_at: s.received_at,
            source: s.source,
            events: s.events,
        })
    }

    fn ack(&self, seq: u64, mut inner: Option<Ack>) -> Ack {
        let tx = self.tx.clone();
        let room = inner.as_mut().and_then(Ack::take_room);
        // Explicit: a batch whose processing was abandoned (the exporter stopped) stays in
        // the log as not exported. The in-memory room is given back either way (and early:
        // once the worker took the batch over).
        let ack = Ack::explicit(move || {
            let _ = tx.send(Cmd::Acked(seq));
            drop(inner);
        });
        match room {
            Some(room) => ack.with_room(room),
            None => ack,
        }
    }
}

#[async_trait::async_trait]
impl AuditConsumer for DurableConsumer {
    async fn recv(&mut self) -> Option<Received> {
        while let Some(r) = self.retained.pop_front() {
            match self.read(&r) {
                Ok(batch) => {
                    let ack = self.ack(r.pos.seq, None);
                    return Some(Received { batch, ack });
                }
                Err(e) => {
                    // The record's checksum was right: the file changed under us. Counted,
                    // logged; the batch cannot be processed.
                    metrics::counter!("kubetrail_log_unreadable_batches_total").increment(1);
                    tracing::error!(segment = %r.path.display(), seq = r.pos.seq, error = %e, "durable log: a retained batch cannot be read");
                    let _ = self.tx.send(Cmd::Acked(r.pos.seq));
                }
            }
        }
        self.reader = None;
        let (received, seq) = self.inner.recv_tagged().await?;
        let ack = self.ack(seq, Some(received.ack));
        Some(Received {
            batch: received.batch,
            ack,
        })
    }

    fn caught_up(&self) -> bool {
        // While the retained history is processed, its own event time drives the clock.
        self.retained.is_empty()
    }
}

/// Records delivered spans, and waits for the writer at shutdown.
#[derive(Clone)]
pub struct LogHandle {
    tx: mpsc::Sender<Cmd>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl LogHandle {
    /// Records that these spans were delivered (not to be exported again after a restart).
    pub fn delivered(&self, ids: &[SpanId]) {
        if !ids.is_empty() {
            let _ = self.tx.send(Cmd::Delivered(ids.to_vec()));
        }
    }

    /// Stops the writer (after what was sent before) and waits until it has synced. Later
    /// appends are refused; later acknowledgements are not needed (they are not persisted:
    /// after a restart, everything retained is processed again).
    pub fn close(self) {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let _ = self.tx.send(Cmd::Close);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: &str, body_bytes: usize) -> AuditBatch {
        let e: AuditEvent = serde_json::from_str(&format!(
            r#"{{"level":"Request","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/n/configmaps/c","verb":"update","user":{{"username":"u"}},"requestObject":{{"data":"{}"}},"requestReceivedTimestamp":"2024-01-01T00:00:00Z","stageTimestamp":"2024-01-01T00:00:00Z"}}"#,
            "x".repeat(body_bytes)
        ))
        .unwrap();
        AuditBatch {
            cluster: "c".into(),
            received_at: 7,
            source: Some("apiserver-1".into()),
            events: vec![e],
        }
    }

    fn open_in(
        dir: &Path,
        config: &LogConfig,
    ) -> (DurableProducer, DurableConsumer, LogHandle, Recovery) {
        let embedded = kubetrail_queue::embedded::channel(1_000);
        open(dir, config, Duration::from_secs(60), embedded).unwrap()
    }

    #[tokio::test]
    async fn batches_and_delivered_spans_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::default();
        {
            let (p, mut c, log, rec) = open_in(dir.path(), &config);
            assert_eq!(rec.batches, 0);
            for id in ["a", "b", "c"] {
                p.publish(batch(id, 10)).await.unwrap();
            }
            let first = c.recv().await.unwrap();
            assert_eq!(first.batch.events[0].audit_id, "a");
            first.ack.done();
            log.delivered(&[SpanId([1; 8]), SpanId([2; 8])]);
            // A crash: nothing is closed or flushed beyond what publish already did.
            log.close();
        }
        let (_p, mut c, _log, rec) = open_in(dir.path(), &config);
        // Acknowledged or not, everything retained is handed over again, in order.
        assert_eq!(rec.batches, 3);
        assert_eq!(rec.damaged, 0);
        assert_eq!(
            rec.delivered,
            HashSet::from([SpanId([1; 8]), SpanId([2; 8])])
        );
        assert!(!c.caught_up());
        let mut ids = Vec::new();
        for _ in 0..3 {
            let r = c.recv().await.unwrap();
            assert_eq!(r.batch.source.as_deref(), Some("apiserver-1"));
            assert_eq!(r.batch.received_at, 7);
            ids.push(r.batch.events[0].audit_id.clone());
        }
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(c.caught_up());
    }

    #[tokio::test]
    async fn a_full_budget_refuses_until_acknowledged_segments_can_go() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            disk_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let (p, mut c, log, _) = open_in(dir.path(), &config);
        let mut accepted = 0;
        let err = loop {
            match p.publish(batch(&format!("e{accepted}"), 20_000)).await {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 1_000, "never full");
        };
        assert!(
            matches!(&err, PublishError::Unavailable { reason, .. } if reason.contains("disk budget")),
            "{err:?}"
        );
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 1 << 20, "{on_disk}");
        // Exported: the segments can go (within the retention, as the budget needs them).
        for _ in 0..accepted {
            c.recv().await.unwrap().ack.done();
        }
        p.publish(batch("after", 20_000)).await.unwrap();
        log.close();
    }
}
