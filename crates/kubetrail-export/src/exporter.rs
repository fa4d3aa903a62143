//! The delivery task: batching, retry with backoff, backpressure, and the accounting of what
//! was delivered and what was dropped.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use kubetrail_model::SpanRecord;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metric_names::{BATCHES, ERRORS, QUEUE_BATCHES, RETRIES, SPANS_DROPPED, SPANS_EXPORTED};
use crate::{ExportError, SpanSink};

/// How the [`Exporter`] batches and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    /// The most spans in one batch (one export call per sink). Default 512.
    pub max_batch_spans: usize,
    /// How long the first span of a batch waits for more before the batch is sent anyway.
    /// Default 200 ms. [`ExporterHandle::flush`] never waits for it.
    pub max_batch_delay: Duration,
    /// Bound of the submission queue, in submissions ([`ExporterHandle::submit`] calls): when
    /// it is full, `submit` waits. Default 64.
    pub queue_batches: usize,
    /// What to do when a sink fails.
    pub retry: RetryPolicy,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            max_batch_spans: 512,
            max_batch_delay: Duration::from_millis(200),
            queue_batches: 64,
            retry: RetryPolicy::default(),
        }
    }
}

/// Retries of a batch after a [retryable](ExportError::Retryable) error: exponential backoff
/// with jitter, never sooner than the receiver's `Retry-After`. The `export.retry:` section
/// of the config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// The first delay. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The delay stops doubling here. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// `None` (default): retry forever — no silent loss; a receiver that stays down stops
    /// the pipeline through backpressure. `Some(d)`: give up on a batch once the next attempt
    /// would start more than `d` after the first, then drop it (logged, counted, and reported
    /// to its submitters).
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Option<Duration>,
}

impl RetryPolicy {
    /// The longest `Retry-After` honoured; a longer one (a misbehaving or hostile receiver)
    /// is cut to this.
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_elapsed: None,
        }
    }
}

/// Counts of a finished exporter run, returned by its task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportReport {
    /// Spans that every sink accepted.
    pub spans_exported: u64,
    /// Batches formed (each delivered to every sink).
    pub batches: u64,
    /// Retried attempts, summed over sinks.
    pub retries: u64,
    /// Spans that at least one sink did not deliver (permanently rejected, or given up on).
    /// `spans_exported + spans_dropped` is the number of spans submitted.
    pub spans_dropped: u64,
    /// Spans each sink accepted, by sink name, in the order the sinks were given.
    pub per_sink: Vec<(String, u64)>,
    /// Sinks whose [`finish`](SpanSink::finish) failed, with the error: what they accepted
    /// may not be durable.
    pub finish_errors: Vec<(String, String)>,
}

/// The delivery health, for callers that want to refuse work before they would lose it (a
/// webhook answering 503 while the receiver is down).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportHealth {
    /// Whether the last delivery attempt of some sink failed (it is retrying, or dropped).
    pub last_attempt_failed: bool,
    /// How long deliveries have been failing: since the first failure after the last
    /// success, of the sink failing longest. `None` when healthy.
    pub failing_for: Option<Duration>,
    /// The last error, when failing.
    pub last_error: Option<String>,
    /// Submissions waiting in the queue.
    pub queued_batches: usize,
}

/// The exporter task has stopped (it panicked or was aborted): nothing can be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the span exporter has stopped")]
pub struct ExporterClosed;

/// Why a [`Delivery`] did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Some of the submitted spans were dropped by at least one sink (a permanent error, or
    /// the retry policy gave up); the rest were delivered.
    #[error("{dropped} of {submitted} spans were dropped by sink(s) {}: {reason}", sinks.join(", "))]
    Dropped {
        /// Spans of this submission that at least one sink did not deliver.
        dropped: u64,
        /// Spans in the submission.
        submitted: u64,
        /// The sinks that dropped them.
        sinks: Vec<&'static str>,
        /// The last error that caused a drop.
        reason: String,
    },
    /// The exporter task stopped (panicked or was aborted) before settling these spans.
    #[error("the span exporter stopped before these spans were delivered")]
    ExporterStopped,
}

/// The outcome of one [`ExporterHandle::submit`]: await it (it is a `Future`) to learn when
/// the spans were delivered by every sink (`Ok`), or that some were dropped
/// ([`DeliveryError::Dropped`]). Dropping it without awaiting is fine: delivery goes on.
#[derive(Debug)]
#[must_use = "await the Delivery to learn the outcome, or drop it explicitly"]
pub struct Delivery(oneshot::Receiver<Result<(), DeliveryError>>);

impl Delivery {
    fn settled(result: Result<(), DeliveryError>) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        Delivery(rx)
    }

    /// Waits for the outcome (the same as awaiting the `Delivery`).
    pub async fn wait(self) -> Result<(), DeliveryError> {
        self.await
    }
}

impl Future for Delivery {
    type Output = Result<(), DeliveryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(DeliveryError::ExporterStopped)))
    }
}

enum Command {
    Submit {
        spans: Vec<SpanRecord>,
        done: oneshot::Sender<Result<(), DeliveryError>>,
    },
    Flush {
        done: oneshot::Sender<()>,
    },
}

/// State shared by the handles and the task.
#[derive(Debug)]
struct Shared {
    queued: AtomicUsize,
    health: Mutex<Vec<SinkHealth>>,
}

#[derive(Debug, Clone, Default)]
struct SinkHealth {
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

impl Shared {
    fn health(&self) -> MutexGuard<'_, Vec<SinkHealth>> {
        // A panic while holding this lock leaves plain data behind: still usable.
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn queued_one(&self) {
        let n = self
            .queued
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        metrics::gauge!(QUEUE_BATCHES).set(n as f64);
    }

    fn dequeued_one(&self) {
        let n = self
            .queued
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(QUEUE_BATCHES).set(n as f64);
    }

    fn attempt_failed(&self, sink: usize, error: &ExportError) {
        if let Some(h) = self.health().get_mut(sink) {
            h.failing_since.get_or_insert_with(Instant::now);
            h.last_error = Some(error.to_string());
        }
    }

    fn attempt_succeeded(&self, sink: usize) {
        if let Some(h) = self.health().get_mut(sink) {
            *h = SinkHealth::default();
        }
    }
}

/// The batching, retrying, backpressured delivery task shared by every run mode.
///
/// Created with [`Exporter::spawn`]; fed through cloneable [`ExporterHandle`]s.
///
/// * **Batching**: submissions are coalesced into batches of up to
///   [`max_batch_spans`](ExporterConfig::max_batch_spans), sent when full, when the first span
///   has waited [`max_batch_delay`](ExporterConfig::max_batch_delay), or at once on
///   [`flush`](ExporterHandle::flush). A larger submission is split.
/// * **Delivery**: each batch goes to every sink, concurrently, and the next batch waits until
///   every sink has settled this one (accepted, rejected, or given up on). So a sink that is
///   down holds back the others too: nothing overtakes, nothing is lost.
/// * **Backpressure**: while a batch is being delivered, submissions queue up to
///   [`queue_batches`](ExporterConfig::queue_batches); then `submit` waits.
/// * **Retry**: retryable errors are retried with exponential backoff and jitter, never sooner
///   than the receiver's `Retry-After`, until [`RetryPolicy::max_elapsed`]. A permanent error
///   drops the batch for that sink at once. Drops are logged at error level, counted in
///   `kubetrail_spans_dropped_total{sink,reason}` and the [`ExportReport`], and reported to the
///   submitters through their [`Delivery`].
/// * **Closing**: when every handle is dropped, the task delivers what is queued, calls
///   [`finish`](SpanSink::finish) on every sink, and returns the [`ExportReport`].
#[derive(Debug)]
pub struct Exporter;

impl Exporter {
    /// Starts the delivery task on the current Tokio runtime.
    ///
    /// Zero-valued settings are raised to the smallest useful value (1 span, 1 queued
    /// submission, 1 ms of backoff).
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime, like [`tokio::spawn`].
    pub fn spawn(
        sinks: Vec<Box<dyn SpanSink>>,
        config: ExporterConfig,
    ) -> (ExporterHandle, JoinHandle<ExportReport>) {
        let config = sanitize(config);
        let (tx, rx) = mpsc::channel(config.queue_batches);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            health: Mutex::new(vec![SinkHealth::default(); sinks.len()]),
        });
        let hasher = RandomState::new();
        let report = ExportReport {
            per_sink: sinks.iter().map(|s| (s.name().to_owned(), 0)).collect(),
            ..ExportReport::default()
        };
        let sinks = sinks
            .into_iter()
            .enumerate()
            .map(|(index, sink)| SinkSlot {
                name: sink.name(),
                sink,
                index,
                // Per-sink jitter state, seeded differently per process and sink.
                rng: hasher.hash_one(index) | 1,
            })
            .collect();
        let task = Task {
            rx,
            sinks,
            config,
            shared: Arc::clone(&shared),
            tickets: HashMap::new(),
            next_ticket: 0,
            pending: Vec::new(),
            pending_parts: Vec::new(),
            batch_started: None,
            report,
        };
        let join = tokio::spawn(task.run());
        (ExporterHandle { tx, shared }, join)
    }
}

fn sanitize(mut c: ExporterConfig) -> ExporterConfig {
    c.max_batch_spans = c.max_batch_spans.max(1);
    c.queue_batches = c.queue_batches.max(1);
    c.retry.initial_backoff = c.retry.initial_backoff.max(Duration::from_millis(1));
    c.retry.max_backoff = c.retry.max_backoff.max(c.retry.initial_backoff);
    c
}

/// Submits spans to an [`Exporter`]. Cheap to clone; the exporter closes when the last handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct ExporterHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl ExporterHandle {
    /// Queues spans; waits when the queue is full (backpressure). Returns a Delivery that
    /// resolves once these spans were delivered by every sink, or were dropped after the retry
    /// policy gave up (Err with the count).
    ///
    /// A permanent error of a sink also resolves the `Delivery` with
    /// [`DeliveryError::Dropped`]. Cancel-safe: if the returned future is dropped before it
    /// completes, nothing was queued.
    pub async fn submit(&self, spans: Vec<SpanRecord>) -> Result<Delivery, ExporterClosed> {
        if spans.is_empty() {
            return if self.tx.is_closed() {
                Err(ExporterClosed)
            } else {
                Ok(Delivery::settled(Ok(())))
            };
        }
        let (done, rx) = oneshot::channel();
        // Reserve first so that the queue gauge counts only what is really queued.
        let permit = self.tx.reserve().await.map_err(|_| ExporterClosed)?;
        self.shared.queued_one();
        permit.send(Command::Submit { spans, done });
        Ok(Delivery(rx))
    }

    /// Resolves once everything submitted before this call is delivered (or dropped).
    ///
    /// It does not wait for the batch delay; it does wait for queue space, like `submit`.
    pub async fn flush(&self) -> Result<(), ExporterClosed> {
        let (done, rx) = oneshot::channel();
        let permit = self.tx.reserve().await.map_err(|_| ExporterClosed)?;
        self.shared.queued_one();
        permit.send(Command::Flush { done });
        rx.await.map_err(|_| ExporterClosed)
    }

    /// Whether the last delivery attempt failed and for how long deliveries have been failing
    /// (so a webhook can answer 503 before it would lose data).
    pub fn health(&self) -> ExportHealth {
        let now = Instant::now();
        let sinks = self.shared.health();
        let worst = sinks
            .iter()
            .filter_map(|h| h.failing_since.map(|t| (t, h)))
            .min_by_key(|(t, _)| *t);
        ExportHealth {
            last_attempt_failed: worst.is_some(),
            failing_for: worst.map(|(t, _)| now.saturating_duration_since(t)),
            last_error: worst.and_then(|(_, h)| h.last_error.clone()),
            queued_batches: self.shared.queued.load(Ordering::Relaxed),
        }
    }
}

/// One submission being delivered: settled when all its spans are.
struct Ticket {
    submitted: u64,
    unsettled: usize,
    dropped: u64,
    sinks: Vec<&'static str>,
    reason: String,
    done: oneshot::Sender<Result<(), DeliveryError>>,
}

struct SinkSlot {
    sink: Box<dyn SpanSink>,
    name: &'static str,
    index: usize,
    rng: u64,
}

/// How one sink settled one batch.
enum Outcome {
    Delivered { retries: u64 },
    Dropped { retries: u64, reason: String },
}

struct Task {
    rx: mpsc::Receiver<Command>,
    sinks: Vec<SinkSlot>,
    config: ExporterConfig,
    shared: Arc<Shared>,
    tickets: HashMap<u64, Ticket>,
    next_ticket: u64,
    /// The batch being formed, and which submissions its spans came from (ticket, count).
    pending: Vec<SpanRecord>,
    pending_parts: Vec<(u64, usize)>,
    /// When the first span of the pending batch arrived.
    batch_started: Option<Instant>,
    report: ExportReport,
}

impl Task {
    async fn run(mut self) -> ExportReport {
        loop {
            // No deadline without a pending batch (or with a delay too long to represent).
            let deadline = self
                .batch_started
                .and_then(|t| t.checked_add(self.config.max_batch_delay));
            let command = match deadline {
                None => self.rx.recv().await,
                Some(deadline) => {
                    tokio::select! {
                        biased;
                        command = self.rx.recv() => command,
                        () = tokio::time::sleep_until(deadline) => {
                            self.deliver_pending().await;
                            continue;
                        }
                    }
                }
            };
            let Some(command) = command else { break };
            self.shared.dequeued_one();
            match command {
                Command::Submit { spans, done } => self.add(spans, done).await,
                Command::Flush { done } => {
                    self.deliver_pending().await;
                    let _ = done.send(());
                }
            }
        }
        // Every handle is gone and the queue is drained.
        self.deliver_pending().await;
        for slot in &mut self.sinks {
            if let Err(e) = slot.sink.finish().await {
                tracing::error!(sink = slot.name, error = %e, "finishing the sink failed");
                self.report
                    .finish_errors
                    .push((slot.name.to_owned(), e.to_string()));
            }
        }
        self.report
    }

    /// Adds a submission to the pending batch, delivering every batch it fills.
    async fn add(
        &mut self,
        spans: Vec<SpanRecord>,
        done: oneshot::Sender<Result<(), DeliveryError>>,
    ) {
        let id = self.next_ticket;
        self.next_ticket += 1;
        let total = spans.len();
        self.tickets.insert(
            id,
            Ticket {
                submitted: total as u64,
                unsettled: total,
                dropped: 0,
                sinks: Vec::new(),
                reason: String::new(),
                done,
            },
        );
        let mut rest = spans.into_iter();
        let mut left = total;
        while left > 0 {
            if self.pending.is_empty() {
                self.batch_started = Some(Instant::now());
            }
            let n = (self.config.max_batch_spans - self.pending.len()).min(left);
            self.pending.extend(rest.by_ref().take(n));
            self.pending_parts.push((id, n));
            left -= n;
            if self.pending.len() >= self.config.max_batch_spans {
                self.deliver_pending().await;
            }
        }
    }

    /// Delivers the pending batch to every sink and settles its submissions.
    async fn deliver_pending(&mut self) {
        self.batch_started = None;
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let parts = std::mem::take(&mut self.pending_parts);
        let n = batch.len() as u64;
        self.report.batches += 1;

        let policy = &self.config.retry;
        let shared = &self.shared;
        let outcomes = futures::future::join_all(
            self.sinks
                .iter_mut()
                .map(|slot| deliver(slot, &batch, policy, shared)),
        )
        .await;

        let mut dropped_by: Vec<&'static str> = Vec::new();
        let mut reason = String::new();
        for (slot, outcome) in self.sinks.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered { retries } => {
                    self.report.retries += retries;
                    if let Some((_, count)) = self.report.per_sink.get_mut(slot.index) {
                        *count += n;
                    }
                }
                Outcome::Dropped { retries, reason: r } => {
                    self.report.retries += retries;
                    dropped_by.push(slot.name);
                    reason = r;
                }
            }
        }
        if dropped_by.is_empty() {
            self.report.spans_exported += n;
        } else {
            self.report.spans_dropped += n;
        }
        for (id, count) in parts {
            let Some(ticket) = self.tickets.get_mut(&id) else {
                continue;
            };
            ticket.unsettled = ticket.unsettled.saturating_sub(count);
            if !dropped_by.is_empty() {
                ticket.dropped += count as u64;
                for s in &dropped_by {
                    if !ticket.sinks.contains(s) {
                        ticket.sinks.push(s);
                    }
                }
                ticket.reason.clone_from(&reason);
            }
            if ticket.unsettled == 0
                && let Some(t) = self.tickets.remove(&id)
            {
                let result = if t.dropped == 0 {
                    Ok(())
                } else {
                    Err(DeliveryError::Dropped {
                        dropped: t.dropped,
                        submitted: t.submitted,
                        sinks: t.sinks,
                        reason: t.reason,
                    })
                };
                // The submitter may have stopped listening: fine.
                let _ = t.done.send(result);
            }
        }
    }
}

/// Delivers one batch to one sink, retrying per the policy.
async fn deliver(
    slot: &mut SinkSlot,
    batch: &[SpanRecord],
    policy: &RetryPolicy,
    shared: &Shared,
) -> Outcome {
    let sink = slot.name;
    let started = Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut retries = 0;
    loop {
        let error = match slot.sink.export(batch).await {
            Ok(()) => {
                shared.attempt_succeeded(slot.index);
                metrics::counter!(SPANS_EXPORTED, "sink" => sink).increment(batch.len() as u64);
                metrics::counter!(BATCHES, "sink" => sink).increment(1);
                return Outcome::Delivered { retries };
            }
            Err(e) => e,
        };
        shared.attempt_failed(slot.index, &error);
        metrics::counter!(ERRORS, "sink" => sink, "kind" => error.kind()).increment(1);
        if !error.is_retryable() {
            tracing::error!(
                sink,
                spans = batch.len(),
                error = %error,
                "dropping a batch the destination rejected"
            );
            metrics::counter!(SPANS_DROPPED, "sink" => sink, "reason" => "rejected")
                .increment(batch.len() as u64);
            return Outcome::Dropped {
                retries,
                reason: error.to_string(),
            };
        }
        let delay = jitter(backoff, &mut slot.rng).max(
            error
                .retry_after()
                .unwrap_or_default()
                .min(RetryPolicy::MAX_RETRY_AFTER),
        );
        let elapsed = started.elapsed();
        if let Some(max) = policy.max_elapsed
            && elapsed.saturating_add(delay) > max
        {
            tracing::error!(
                sink,
                spans = batch.len(),
                attempts = retries + 1,
                "dropping a batch after retrying for {elapsed:?}: {error}"
            );
            metrics::counter!(SPANS_DROPPED, "sink" => sink, "reason" => "retry_exhausted")
                .increment(batch.len() as u64);
            return Outcome::Dropped {
                retries,
                reason: error.to_string(),
            };
        }
        tracing::warn!(
            sink,
            spans = batch.len(),
            attempt = retries + 1,
            "export failed, retrying in {delay:?}: {error}"
        );
        retries += 1;
        metrics::counter!(RETRIES, "sink" => sink).increment(1);
        // The backoff itself: the retry mechanism, not synchronisation.
        tokio::time::sleep(delay).await;
        backoff = backoff.saturating_mul(2).min(policy.max_backoff);
    }
}

/// A delay uniformly in [backoff/2, backoff] ("equal jitter"), from a xorshift generator: good
/// enough to keep many exporters from retrying in lockstep.
fn jitter(backoff: Duration, rng: &mut u64) -> Duration {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let half = backoff / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half.saturating_add(Duration::from_nanos(*rng % span.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Waker;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::convert::tests::span;

    /// Records every batch and attempt; fails per its script; optionally blocks each call
    /// until the test releases it.
    #[derive(Clone, Default)]
    struct Fake {
        name: &'static str,
        state: Arc<Mutex<FakeState>>,
        gate: Option<Arc<Semaphore>>,
        entered: Option<mpsc::UnboundedSender<usize>>,
    }

    #[derive(Default)]
    struct FakeState {
        /// Errors for the next calls, in order.
        script: VecDeque<ExportError>,
        /// Fail forever with this once the script is empty.
        always: Option<ExportError>,
        attempts: Vec<(Instant, usize)>,
        delivered: Vec<Vec<u8>>,
        finished: bool,
    }

    impl Fake {
        fn named(name: &'static str) -> Self {
            Fake {
                name,
                ..Fake::default()
            }
        }
        fn state(&self) -> MutexGuard<'_, FakeState> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }
        /// Batch sizes accepted so far.
        fn batch_sizes(&self) -> Vec<usize> {
            self.state().delivered.iter().map(Vec::len).collect()
        }
        /// First byte of every accepted span id, in order.
        fn delivered_ids(&self) -> Vec<u8> {
            self.state().delivered.iter().flatten().copied().collect()
        }
    }

    #[async_trait::async_trait]
    impl SpanSink for Fake {
        async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
            if let Some(tx) = &self.entered {
                let _ = tx.send(batch.len());
            }
            if let Some(gate) = &self.gate {
                gate.acquire()
                    .await
                    .map_err(|e| ExportError::permanent("fake", e.to_string()))?
                    .forget();
            }
            let mut state = self.state();
            state.attempts.push((Instant::now(), batch.len()));
            if let Some(e) = state.script.pop_front() {
                return Err(e);
            }
            if let Some(e) = &state.always {
                return Err(e.clone());
            }
            state
                .delivered
                .push(batch.iter().map(|s| s.span_id.0[0]).collect());
            Ok(())
        }
        async fn finish(&mut self) -> Result<(), ExportError> {
            self.state().finished = true;
            Ok(())
        }
        fn name(&self) -> &'static str {
            self.name
        }
    }

    fn spans(ids: std::ops::Range<u8>) -> Vec<SpanRecord> {
        ids.map(|i| span(1, i, None, "kubelet", "c")).collect()
    }

    fn config(
        max_batch_spans: usize,
        max_batch_delay: Duration,
        queue_batches: usize,
    ) -> ExporterConfig {
        ExporterConfig {
            max_batch_spans,
            max_batch_delay,
            queue_batches,
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                max_elapsed: None,
            },
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    fn is_pending<F: Future>(f: Pin<&mut F>) -> bool {
        f.poll(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    #[tokio::test]
    async fn coalesces_small_submissions_into_batches() {
        let fake = Fake::named("fake");
        let (handle, join) = Exporter::spawn(vec![Box::new(fake.clone())], config(10, LONG, 64));
        let mut deliveries = Vec::new();
        for i in 0..25 {
            deliveries.push(handle.submit(spans(i..i + 1)).await.expect("submit"));
        }
        handle.flush().await.expect("flush");
        assert_eq!(
            fake.batch_sizes(),
            vec![10, 10, 5],
            "two full batches, then the flushed rest"
        );
        assert_eq!(
            fake.delivered_ids(),
            (0..25).collect::<Vec<u8>>(),
            "in submission order"
        );
        for d in deliveries {
            d.await.expect("delivered");
        }
        // A submission larger than a batch is split, and settles once all its parts are sent.
        let big = handle.submit(spans(100..123)).await.expect("submit");
        handle.flush().await.expect("flush");
        big.await.expect("delivered");
        assert_eq!(fake.batch_sizes(), vec![10, 10, 5, 10, 10, 3]);
        drop(handle);
        let report = join.await.expect("task");
        assert_eq!(report.spans_exported, 48);
        assert_eq!(report.batches, 6);
        assert_eq!(report.per_sink, vec![("fake".to_owned(), 48)]);
        assert_eq!((report.spans_dropped, report.retries), (0, 0));
        assert!(fake.state().finished);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_goes_out_after_the_batch_delay() {
        let fake = Fake::named("fake");
        let (handle, join) = Exporter::spawn(
            vec![Box::new(fake.clone())],
            config(100, Duration::from_millis(200), 8),
        );
        let started = Instant::now();
        let delivery = handle.submit(spans(0..3)).await.expect("submit");
        // No flush: the (virtual) clock runs to the batch deadline.
        delivery.await.expect("delivered");
        assert_eq!(fake.batch_sizes(), vec![3]);
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(handle);
        join.await.expect("task");
    }

    #[tokio::test]
    async fn a_full_queue_makes_submit_wait() {
        let gate = Arc::new(Semaphore::new(0));
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let fake = Fake {
            name: "slow",
            gate: Some(Arc::clone(&gate)),
            entered: Some(entered_tx),
            ..Fake::default()
        };
        let (handle, join) = Exporter::spawn(vec![Box::new(fake.clone())], config(1, LONG, 2));
        let first = handle.submit(spans(0..1)).await.expect("submit");
        // The task took the first submission and is blocked in the sink.
        assert_eq!(entered.recv().await, Some(1));
        // Two more fill the queue…
        let second = handle.submit(spans(1..2)).await.expect("submit");
        let third = handle.submit(spans(2..3)).await.expect("submit");
        assert_eq!(handle.health().queued_batches, 2);
        // …and the next one waits.
        let mut fourth = Box::pin(handle.submit(spans(3..4)));
        assert!(
            is_pending(fourth.as_mut()),
            "submit must wait while the queue is full"
        );
        assert!(is_pending(fourth.as_mut()));
        // Release the sink: everything drains, and the waiting submit gets in.
        gate.add_permits(4);
        let fourth = fourth.await.expect("submit");
        for d in [first, second, third, fourth] {
            d.await.expect("delivered");
        }
        assert_eq!(fake.delivered_ids(), vec![0, 1, 2, 3]);
        drop(handle);
        assert_eq!(join.await.expect("task").spans_exported, 4);
    }

    #[tokio::test]
    async fn flush_resolves_only_after_delivery() {
        let gate = Arc::new(Semaphore::new(0));
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let fake = Fake {
            name: "slow",
            gate: Some(Arc::clone(&gate)),
            entered: Some(entered_tx),
            ..Fake::default()
        };
        let (handle, join) = Exporter::spawn(vec![Box::new(fake.clone())], config(100, LONG, 8));
        let _delivery = handle.submit(spans(0..5)).await.expect("submit");
        let mut flush = Box::pin(handle.flush());
        assert!(is_pending(flush.as_mut()));
        // The flush did not wait for the (hour-long) batch delay: the batch reached the sink…
        assert_eq!(entered.recv().await, Some(5));
        // …but the sink has not accepted it yet, so the flush is still pending.
        assert!(is_pending(flush.as_mut()));
        assert!(fake.batch_sizes().is_empty());
        gate.add_permits(1);
        flush.await.expect("flush");
        assert_eq!(fake.batch_sizes(), vec![5]);
        drop(handle);
        join.await.expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_then_succeeds_honouring_retry_after() {
        let fake = Fake::named("flaky");
        fake.state().script = VecDeque::from([
            ExportError::retryable("flaky", "connection refused"),
            ExportError::Retryable {
                sink: "flaky",
                message: "429".into(),
                retry_after: Some(Duration::from_secs(5)),
            },
        ]);
        let (handle, join) = Exporter::spawn(vec![Box::new(fake.clone())], config(100, LONG, 8));
        let delivery = handle.submit(spans(0..4)).await.expect("submit");
        handle.flush().await.expect("flush");
        delivery.await.expect("delivered after retries");
        assert_eq!(fake.batch_sizes(), vec![4]);
        let attempts: Vec<Instant> = fake.state().attempts.iter().map(|(t, _)| *t).collect();
        assert_eq!(attempts.len(), 3);
        // Virtual time: the first retry waited a jittered backoff in [50ms, 100ms] (the timer
        // rounds up to its 1 ms tick), the second the 5 s the receiver asked for.
        let first_gap = attempts[1] - attempts[0];
        assert!(
            first_gap >= Duration::from_millis(50) && first_gap <= Duration::from_millis(101),
            "{first_gap:?}"
        );
        assert!(attempts[2] - attempts[1] >= Duration::from_secs(5));
        assert!(
            !handle.health().last_attempt_failed,
            "healthy again after the success"
        );
        drop(handle);
        let report = join.await.expect("task");
        assert_eq!(
            (report.retries, report.spans_exported, report.spans_dropped),
            (2, 4, 0)
        );
    }

    #[tokio::test]
    async fn permanent_errors_drop_the_batch_and_are_reported() {
        let fake = Fake::named("strict");
        fake.state().script = VecDeque::from([ExportError::permanent("strict", "400 Bad Request")]);
        let (handle, join) = Exporter::spawn(vec![Box::new(fake.clone())], config(100, LONG, 8));
        let rejected = handle.submit(spans(0..3)).await.expect("submit");
        handle.flush().await.expect("flush");
        let accepted = handle.submit(spans(3..5)).await.expect("submit");
        handle.flush().await.expect("flush");
        match rejected.await {
            Err(DeliveryError::Dropped {
                dropped,
                submitted,
                sinks,
                reason,
            }) => {
                assert_eq!((dropped, submitted, sinks), (3, 3, vec!["strict"]));
                assert!(reason.contains("400 Bad Request"), "{reason}");
            }
            other => panic!("expected a drop, got {other:?}"),
        }
        accepted.await.expect("delivered");
        assert_eq!(
            fake.state().attempts.len(),
            2,
            "a permanent error is not retried"
        );
        drop(handle);
        let report = join.await.expect("task");
        assert_eq!(
            (report.spans_dropped, report.spans_exported, report.retries),
            (3, 2, 0)
        );
        assert_eq!(report.per_sink, vec![("strict".to_owned(), 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_gives_up_and_reports_the_drop() {
        let fake = Fake::named("down");
        fake.state().always = Some(ExportError::retryable("down", "connection refused"));
        let mut cfg = config(100, LONG, 8);
        cfg.retry.max_elapsed = Some(Duration::from_secs(2));
        let (handle, join) = Exporter::spawn(vec![Box::new(fake.clone())], cfg);
        let delivery = handle.submit(spans(0..7)).await.expect("submit");
        let mut flush = Box::pin(handle.flush());
        // While it retries, health says so.
        while !handle.health().last_attempt_failed {
            assert!(is_pending(flush.as_mut()));
            tokio::task::yield_now().await;
        }
        let health = handle.health();
        assert!(
            health
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("connection refused")),
            "{health:?}"
        );
        assert!(health.failing_for.is_some());
        flush.await.expect("flush");
        let err = delivery.await.expect_err("given up");
        assert!(
            matches!(
                err,
                DeliveryError::Dropped {
                    dropped: 7,
                    submitted: 7,
                    ..
                }
            ),
            "{err:?}"
        );
        let attempts = fake.state().attempts.clone();
        assert!(attempts.len() > 1, "it retried before giving up");
        let last_attempt = attempts.last().map(|(t, _)| *t).expect("attempts");
        assert!(
            last_attempt - attempts[0].0 <= Duration::from_secs(2),
            "no attempt after max_elapsed"
        );
        drop(handle);
        let report = join.await.expect("task");
        assert_eq!(report.spans_dropped, 7);
        assert_eq!(report.spans_exported, 0);
        assert_eq!(report.retries, attempts.len() as u64 - 1);
    }

    #[tokio::test]
    async fn every_sink_gets_every_batch_and_a_drop_by_one_is_reported() {
        let good = Fake::named("good");
        let bad = Fake::named("bad");
        bad.state().script = VecDeque::from([ExportError::permanent("bad", "nope")]);
        let (handle, join) = Exporter::spawn(
            vec![Box::new(good.clone()), Box::new(bad.clone())],
            config(100, LONG, 8),
        );
        let first = handle.submit(spans(0..2)).await.expect("submit");
        handle.flush().await.expect("flush");
        let second = handle.submit(spans(2..5)).await.expect("submit");
        handle.flush().await.expect("flush");
        assert!(
            matches!(first.await, Err(DeliveryError::Dropped { dropped: 2, ref sinks, .. }) if *sinks == ["bad"])
        );
        second.await.expect("both sinks accepted");
        assert_eq!(good.delivered_ids(), vec![0, 1, 2, 3, 4]);
        assert_eq!(bad.delivered_ids(), vec![2, 3, 4]);
        drop(handle);
        let report = join.await.expect("task");
        assert_eq!(
            report.per_sink,
            vec![("good".to_owned(), 5), ("bad".to_owned(), 3)]
        );
        assert_eq!(
            (report.spans_exported, report.spans_dropped, report.batches),
            (3, 2, 2)
        );
        assert!(good.state().finished && bad.state().finished);
    }

    #[tokio::test]
    async fn closing_drains_the_queue_and_finishes_the_sinks() {
        let gate = Arc::new(Semaphore::new(0));
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let fake = Fake {
            name: "slow",
            gate: Some(Arc::clone(&gate)),
            entered: Some(entered_tx),
            ..Fake::default()
        };
        let (handle, join) = Exporter::spawn(vec![Box::new(fake.clone())], config(2, LONG, 16));
        let other = handle.clone();
        let mut deliveries = Vec::new();
        for i in 0..6 {
            deliveries.push(handle.submit(spans(i..i + 1)).await.expect("submit"));
        }
        assert_eq!(entered.recv().await, Some(2));
        // Every handle goes away while batches are still queued.
        drop(handle);
        drop(other);
        gate.add_permits(100);
        let report = join.await.expect("task");
        assert_eq!(report.spans_exported, 6);
        assert_eq!(fake.delivered_ids(), vec![0, 1, 2, 3, 4, 5]);
        assert!(fake.state().finished);
        for d in deliveries {
            d.await.expect("delivered");
        }
    }

    #[tokio::test]
    async fn finish_errors_are_reported() {
        struct BadFinish;
        #[async_trait::async_trait]
        impl SpanSink for BadFinish {
            async fn export(&mut self, _: &[SpanRecord]) -> Result<(), ExportError> {
                Ok(())
            }
            async fn finish(&mut self) -> Result<(), ExportError> {
                Err(ExportError::permanent("bad-finish", "fsync: I/O error"))
            }
            fn name(&self) -> &'static str {
                "bad-finish"
            }
        }
        let (handle, join) = Exporter::spawn(vec![Box::new(BadFinish)], ExporterConfig::default());
        let delivery = handle.submit(spans(0..1)).await.expect("submit");
        drop(handle);
        let report = join.await.expect("task");
        delivery.await.expect("delivered");
        assert_eq!(report.finish_errors.len(), 1);
        assert!(report.finish_errors[0].1.contains("fsync"));
    }

    #[tokio::test]
    async fn empty_submissions_and_a_stopped_task() {
        let (handle, join) = Exporter::spawn(Vec::new(), ExporterConfig::default());
        handle
            .submit(Vec::new())
            .await
            .expect("submit")
            .await
            .expect("nothing to deliver");
        let delivery = handle.submit(spans(0..3)).await.expect("submit");
        handle.flush().await.expect("flush");
        delivery.await.expect("no sinks: trivially delivered");
        join.abort();
        let _ = join.await;
        assert_eq!(handle.submit(spans(0..1)).await.err(), Some(ExporterClosed));
        assert_eq!(handle.flush().await, Err(ExporterClosed));
    }

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        let mut rng = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(100), &mut rng);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
        assert_eq!(jitter(Duration::from_nanos(1), &mut rng), Duration::ZERO);
    }

    #[test]
    fn zero_settings_are_sanitized() {
        let c = sanitize(ExporterConfig {
            max_batch_spans: 0,
            max_batch_delay: Duration::ZERO,
            queue_batches: 0,
            retry: RetryPolicy {
                initial_backoff: Duration::ZERO,
                max_backoff: Duration::ZERO,
                max_elapsed: None,
            },
        });
        assert_eq!((c.max_batch_spans, c.queue_batches), (1, 1));
        assert_eq!(
            (c.retry.initial_backoff, c.retry.max_backoff),
            (Duration::from_millis(1), Duration::from_millis(1))
        );
    }
}
