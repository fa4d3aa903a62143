//! The queue between accepting audit events and processing them.
//!
//! The webhook answers the API server as soon as a batch is *in the queue*; consumer workers
//! take batches out, run the pipeline and export. One pair of traits, two implementations:
//! [`embedded`] (in-process, bounded, the default: one binary does everything) and Kafka (for
//! scale-out). Capacity is counted in events and is only given back when a batch is
//! acknowledged, after its spans were exported: a slow or down exporter fills the queue, and
//! a full queue makes the webhook answer 503 with `Retry-After`, which the API server retries.
//! Backpressure reaches all the way back; nothing is dropped silently.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod embedded;
mod metric_names;
pub use metric_names::describe_metrics;

use std::time::Duration;

use kubetrail_model::{AuditEvent, UnixNanos};

/// Events accepted together (one webhook request, or one chunk of a replayed file).
#[derive(Debug, Clone, Default)]
pub struct AuditBatch {
    /// The cluster the events came from.
    pub cluster: String,
    /// When the batch was accepted (wall clock), in Unix nanoseconds.
    pub received_at: UnixNanos,
    /// Who sent it (remote address), when known.
    pub source: Option<String>,
    /// The events, in the order the API server sent them.
    pub events: Vec<AuditEvent>,
}

/// Why a batch was not accepted. Every variant is one the API server should retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The queue is full; try again after the given delay.
    #[error("the queue is full ({queued} of {capacity} events)")]
    Full {
        /// Events queued.
        queued: usize,
        /// Capacity in events.
        capacity: usize,
        /// Suggested delay.
        retry_after: Duration,
    },
    /// The batch alone is larger than the queue can ever hold.
    #[error("a batch of {events} events is larger than the queue ({capacity} events)")]
    TooLarge {
        /// Events in the batch.
        events: usize,
        /// Capacity in events.
        capacity: usize,
    },
    /// The queue's backend is unreachable or failing (Kafka down).
    #[error("the queue is unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
        /// Suggested delay.
        retry_after: Duration,
    },
    /// The queue is shutting down.
    #[error("the queue is closed")]
    Closed,
}

impl PublishError {
    /// The delay to suggest to the client (`Retry-After`).
    pub fn retry_after(&self) -> Duration {
        match self {
            PublishError::Full { retry_after, .. }
            | PublishError::Unavailable { retry_after, .. } => *retry_after,
            PublishError::TooLarge { .. } | PublishError::Closed => Duration::from_secs(5),
        }
    }
}

/// A snapshot of the queue's state, for readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueHealth {
    /// Whether a publish would be attempted now (not closed, backend reachable).
    pub ready: bool,
    /// Events waiting or being processed.
    pub queued_events: usize,
    /// Capacity in events (0 when unbounded or unknown).
    pub capacity_events: usize,
    /// Why it is not ready.
    pub reason: Option<String>,
}

/// The accepting side of a queue.
#[async_trait::async_trait]
pub trait AuditProducer: Send + Sync {
    /// Accepts a batch: `Ok` only once it is durably in the queue.
    async fn publish(&self, batch: AuditBatch) -> Result<(), PublishError>;
    /// The queue's state.
    fn health(&self) -> QueueHealth;
}

/// Acknowledges a received batch once everything derived from it is safe (exported). Dropping
/// an acknowledgement made with [`Ack::new`] without calling [`Ack::done`] also acknowledges
/// (the batch is not redelivered in-process); one made with [`Ack::explicit`] does not.
///
/// An acknowledgement may also hold the batch's *room* in an in-memory queue
/// ([`Ack::with_room`]): given back as soon as the consumer has taken the batch over
/// ([`Ack::release_room`]: its events are in the pipeline's own bounded buffers), and at the
/// latest when the acknowledgement is done or dropped. Acknowledging waits for the spans;
/// the room must not, or a queue full of batches whose last events wait for later ones would
/// never take those later ones.
pub struct Ack {
    on_done: Option<Box<dyn FnOnce() + Send>>,
    on_drop: bool,
    room: Option<Box<dyn FnOnce() + Send>>,
}

impl Ack {
    /// An acknowledgement that runs `f` when done, or when dropped.
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Ack {
            on_done: Some(Box::new(f)),
            on_drop: true,
            room: None,
        }
    }

    /// An acknowledgement that runs `f` only when [`done`](Ack::done) is called. Dropping it
    /// leaves the batch unacknowledged, so a durable queue (Kafka) delivers it again later
    /// instead of treating a batch whose processing was abandoned as exported.
    pub fn explicit(f: impl FnOnce() + Send + 'static) -> Self {
        Ack {
            on_done: Some(Box::new(f)),
            on_drop: false,
            room: None,
        }
    }

    /// An acknowledgement that does nothing.
    pub fn noop() -> Self {
        Ack {
            on_done: None,
            on_drop: false,
            room: None,
        }
    }

    /// Adds the batch's room in an in-memory queue: `f` gives it back, at
    /// [`release_room`](Ack::release_room), [`done`](Ack::done) or drop, whichever is first.
    pub fn with_room(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.room = Some(Box::new(f));
        self
    }

    /// Gives the batch's room back now (the consumer holds its events elsewhere, bounded);
    /// the acknowledgement itself is still to come.
    pub fn release_room(&mut self) {
        if let Some(f) = self.room.take() {
            f();
        }
    }

    /// Takes the room out, to be held by an acknowledgement that wraps this one.
    pub fn take_room(&mut self) -> Option<Box<dyn FnOnce() + Send>> {
        self.room.take()
    }

    /// Acknowledges.
    pub fn done(mut self) {
        self.release_room();
        if let Some(f) = self.on_done.take() {
            f();
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        // Memory is given back whatever happens to the batch.
        self.release_room();
        if self.on_drop
            && let Some(f) = self.on_done.take()
        {
            f();
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// A batch taken out of the queue, with its acknowledgement.
#[derive(Debug)]
pub struct Received {
    /// The batch.
    pub batch: AuditBatch,
    /// To call once the batch's spans are exported.
    pub ack: Ack,
}

/// The consuming side of a queue.
#[async_trait::async_trait]
pub trait AuditConsumer: Send {
    /// The next batch, or `None` once the queue is closed and drained.
    async fn recv(&mut self) -> Option<Received>;

    /// Whether everything the queue held has been received, so that silence means nothing is
    /// happening. A worker moves its pipeline's clock with wall time (its `tick`) only then:
    /// a backlog (a consumer catching up, or re-reading after a restart) is processed on its
    /// events' own time, so object families are not emitted before their later events are
    /// read. Default `true` (an in-process queue never has a backlog the worker cannot see).
    fn caught_up(&self) -> bool {
        true
    }
}

/// A consumer that hands out each partition it is assigned as a consumer of its own, so
/// that one pipeline can run per partition (see `kubetrail_worker::PartitionedWorker`).
///
/// A partition's events are a stream in their own order (a Kafka partition's offsets): a
/// pipeline fed by exactly one partition moves its event-time clock with that partition
/// alone, so which families it emits when — and which ids they get — does not depend on
/// which other partitions the process holds. Assignments come and go (a rebalance): every
/// assignment is a [`PartitionLease`], whose consumer ends when the partition is taken
/// away, and whose [`PartitionDone`] tells the queue that everything received from it was
/// processed, so that the partition can be handed over.
#[async_trait::async_trait]
pub trait PartitionedConsumer: Send {
    /// The consumer of one assigned partition.
    type Partition: AuditConsumer + 'static;

    /// The next newly assigned partition; `None` once the consumer has closed.
    async fn next_partition(&mut self) -> Option<PartitionLease<Self::Partition>>;

    /// Starts closing: every partition's consumer ends (their leases should be finished),
    /// then [`next_partition`](Self::next_partition) returns `None`.
    fn begin_close(&self);

    /// Why the consumer failed for good, if it did (checked once it has closed).
    fn failure(&self) -> Option<String>;

    /// What is consumed, for logs and spans (a Kafka topic).
    fn source(&self) -> &str;
}

/// The loop of every per-partition stage: `start` runs each newly assigned partition's lease
/// as a task; `ended` hears how each task ended and may ask to stop
/// ([`ControlFlow::Break`](std::ops::ControlFlow::Break)). Once `stop` resolves or `ended`
/// asks, the consumer is closed ([`PartitionedConsumer::begin_close`]); the loop returns
/// when the consumer has handed out its last lease and every task ended (each reported to
/// `ended`).
///
/// `kubetrail_worker::PartitionedWorker` runs a pipeline per partition with it; Kafka's
/// routing stage republishes per partition with it.
pub async fn run_partitions<P, T, F>(
    consumer: &mut P,
    stop: impl std::future::Future<Output = ()>,
    mut start: impl FnMut(PartitionLease<P::Partition>) -> F,
    mut ended: impl FnMut(Result<T, tokio::task::JoinError>) -> std::ops::ControlFlow<()>,
) where
    P: PartitionedConsumer,
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopping = false;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop, if !stopping => {
                stopping = true;
                consumer.begin_close();
            }
            lease = consumer.next_partition() => {
                let Some(lease) = lease else { break };
                tasks.spawn(start(lease));
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if ended(joined).is_break() && !stopping {
                    stopping = true;
                    consumer.begin_close();
                }
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let _ = ended(joined);
    }
}

/// One assignment of one partition: its consumer, and what to do once that ended.
pub struct PartitionLease<C> {
    /// The partition.
    pub partition: i32,
    /// Its batches, in order; ends when the partition is revoked or the consumer closes.
    pub consumer: C,
    /// Finish it once the consumer ended and its pipeline was finished.
    pub done: PartitionDone,
}

impl<C> std::fmt::Debug for PartitionLease<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLease")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

/// The end of a [`PartitionLease`]: a future that waits until the queue may hand the
/// partition over (what was received from it is acknowledged or dropped). Dropping it
/// without [`finish`](Self::finish) lets the partition go at once.
pub struct PartitionDone(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl PartitionDone {
    /// The end of a lease, as `finish` runs it.
    pub fn new(finish: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        PartitionDone(Box::pin(finish))
    }

    /// Waits as the queue asks (a bounded time), then lets the partition go.
    pub async fn finish(self) {
        self.0.await;
    }
}

impl std::fmt::Debug for PartitionDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartitionDone")
    }
}

#[cfg(test)]
mod tests {
    use super::Ack;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            m.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn implicit_acks_run_on_drop_explicit_ones_only_when_done() {
        let (n, f) = counting();
        drop(Ack::new(f));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let (n, f) = counting();
        Ack::new(f).done();
        assert_eq!(n.load(Ordering::SeqCst), 1, "once, not again on drop");
        let (n, f) = counting();
        drop(Ack::explicit(f));
        assert_eq!(n.load(Ordering::SeqCst), 0);
        let (n, f) = counting();
        Ack::explicit(f).done();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
