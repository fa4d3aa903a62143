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
