//! The embedded queue: bounded, in-process, the default.
//!
//! Capacity is counted in events and in bytes (an estimate of the memory a batch holds:
//! its bodies, strings and a fixed cost per event, [`batch_bytes`]), each with a semaphore; a
//! batch holds its permits from the moment it is accepted until its [`Ack`] is done (its
//! spans exported), so queue depth includes the batches being processed. A few huge events
//! fill the byte bound long before the event bound. [`EmbeddedProducer::publish`] fails fast when full (the webhook
//! turns that into 503 + Retry-After); [`EmbeddedProducer::publish_wait`] waits instead (a
//! replay reading a file as fast as the pipeline allows).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::{Ack, AuditBatch, AuditConsumer, AuditProducer, PublishError, QueueHealth, Received};

struct Shared {
    permits: Arc<Semaphore>,
    capacity: usize,
    /// Byte permits, counted in [`BYTE_UNIT`]s.
    byte_permits: Arc<Semaphore>,
    /// Byte capacity in units.
    byte_capacity: usize,
    closed: AtomicBool,
}

/// The byte bound is counted in units of this many bytes (a semaphore takes at most
/// `u32::MAX` permits at once).
const BYTE_UNIT: usize = 1024;
/// Fixed cost of one event besides its variable-length parts (the struct, maps, vectors).
const EVENT_OVERHEAD: usize = 1024;

/// An estimate of the memory `batch` holds: its bodies, its strings and a fixed cost per
/// event.
pub fn batch_bytes(batch: &AuditBatch) -> usize {
    batch.events.iter().map(event_bytes).sum()
}

/// An estimate of the memory one event holds (see [`batch_bytes`]).
pub fn event_bytes(e: &kubetrail_model::AuditEvent) -> usize {
    EVENT_OVERHEAD
        + e.request_object.as_ref().map_or(0, |r| r.get().len())
        + e.response_object.as_ref().map_or(0, |r| r.get().len())
        + e.request_uri.len()
        + e.audit_id.len()
        + e.user.username.as_deref().map_or(0, str::len)
        + e.user_agent.as_deref().map_or(0, str::len)
        + e.annotations
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(BYTE_UNIT).max(1)
}

/// Creates an embedded queue holding at most `capacity_events` events, without a byte bound
/// (see [`channel_bounded`]).
pub fn channel(capacity_events: usize) -> (EmbeddedProducer, EmbeddedConsumer) {
    channel_bounded(capacity_events, usize::MAX)
}

/// Creates an embedded queue holding at most `capacity_events` events and about
/// `capacity_bytes` bytes of them ([`batch_bytes`]). A batch larger than either bound alone
/// is refused ([`PublishError::TooLarge`]).
pub fn channel_bounded(
    capacity_events: usize,
    capacity_bytes: usize,
) -> (EmbeddedProducer, EmbeddedConsumer) {
    let capacity = capacity_events.clamp(1, Semaphore::MAX_PERMITS);
    let byte_capacity = units(capacity_bytes).min(Semaphore::MAX_PERMITS);
    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(capacity)),
        capacity,
        byte_permits: Arc::new(Semaphore::new(byte_capacity)),
        byte_capacity,
        closed: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    (
        EmbeddedProducer {
            tx,
            shared: shared.clone(),
        },
        EmbeddedConsumer { rx, shared },
    )
}

/// The producing side; cheap to clone. The queue closes when every producer is dropped.
#[derive(Clone)]
pub struct EmbeddedProducer {
    tx: mpsc::UnboundedSender<(AuditBatch, Held, u64)>,
    shared: Arc<Shared>,
}

/// The consuming side.
pub struct EmbeddedConsumer {
    rx: mpsc::UnboundedReceiver<(AuditBatch, Held, u64)>,
    shared: Arc<Shared>,
}

fn permits_for(n: usize) -> u32 {
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

/// The permits a queued batch holds until it is acknowledged.
struct Held {
    _events: tokio::sync::OwnedSemaphorePermit,
    _bytes: tokio::sync::OwnedSemaphorePermit,
}

impl Shared {
    /// Refuses a batch that could never fit.
    fn check_size(&self, events: usize, units: usize) -> Result<(), PublishError> {
        if events > self.capacity {
            return Err(PublishError::TooLarge {
                events,
                capacity: self.capacity,
            });
        }
        if units > self.byte_capacity {
            return Err(PublishError::TooLarge {
                events,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    fn queued_bytes(&self) -> usize {
        (self.byte_capacity - self.byte_permits.available_permits()).saturating_mul(BYTE_UNIT)
    }
}

impl EmbeddedProducer {
    /// Waits for room, then queues the batch (for sources that may block, such as a replay).
    pub async fn publish_wait(&self, batch: AuditBatch) -> Result<(), PublishError> {
        let n = batch.events.len();
        let u = units(batch_bytes(&batch));
        self.shared.check_size(n, u)?;
        let events = self
            .shared
            .permits
            .clone()
            .acquire_many_owned(permits_for(n))
            .await
            .map_err(|_| PublishError::Closed)?;
        let bytes = self
            .shared
            .byte_permits
            .clone()
            .acquire_many_owned(permits_for(u))
            .await
            .map_err(|_| PublishError::Closed)?;
        self.send(
            batch,
            Held {
                _events: events,
                _bytes: bytes,
            },
            0,
        )
    }

    /// Takes room for `batch` now (or fails like [`AuditProducer::publish`] when full), to
    /// queue it later with [`send_reserved`](Self::send_reserved): a durable log writes the
    /// batch to disk in between, so a batch it accepted always fits in memory too.
    pub fn try_reserve(&self, batch: &AuditBatch) -> Result<Reservation, PublishError> {
        self.try_acquire(batch).map(Reservation)
    }

    /// Queues a batch whose room was reserved; `tag` comes back from
    /// [`EmbeddedConsumer::recv_tagged`] (a durable log's sequence number).
    pub fn send_reserved(
        &self,
        batch: AuditBatch,
        reservation: Reservation,
        tag: u64,
    ) -> Result<(), PublishError> {
        self.send(batch, reservation.0, tag)
    }

    fn send(&self, batch: AuditBatch, permit: Held, tag: u64) -> Result<(), PublishError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let n = batch.events.len();
        self.tx
            .send((batch, permit, tag))
            .map_err(|_| PublishError::Closed)?;
        metrics::counter!("kubetrail_queue_events_published_total", "queue" => "embedded")
            .increment(n as u64);
        metrics::gauge!("kubetrail_queue_depth_events", "queue" => "embedded")
            .set(self.queued() as f64);
        metrics::gauge!("kubetrail_queue_depth_bytes", "queue" => "embedded")
            .set(self.shared.queued_bytes() as f64);
        Ok(())
    }

    fn queued(&self) -> usize {
        self.shared.capacity - self.shared.permits.available_permits()
    }

    /// Stops accepting: later publishes fail with [`PublishError::Closed`]; the consumer drains
    /// what is queued and then ends.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

/// Room reserved in the queue for one batch ([`EmbeddedProducer::try_reserve`]); dropping it
/// gives the room back.
pub struct Reservation(Held);

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reservation")
    }
}

impl EmbeddedProducer {
    fn try_acquire(&self, batch: &AuditBatch) -> Result<Held, PublishError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let n = batch.events.len();
        let u = units(batch_bytes(batch));
        self.shared.check_size(n, u)?;
        let acquired = self
            .shared
            .permits
            .clone()
            .try_acquire_many_owned(permits_for(n))
            .and_then(|events| {
                let bytes = self
                    .shared
                    .byte_permits
                    .clone()
                    .try_acquire_many_owned(permits_for(u))?;
                Ok(Held {
                    _events: events,
                    _bytes: bytes,
                })
            });
        match acquired {
            Ok(permit) => Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => Err(PublishError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                metrics::counter!("kubetrail_queue_full_total", "queue" => "embedded").increment(1);
                Err(PublishError::Full {
                    queued: self.queued(),
                    capacity: self.shared.capacity,
                    // kube-apiserver's patience is 55 × this (see kubetrail-receiver's
                    // docs): ≈ 5 min for a pipeline that is behind, not 1.
                    retry_after: Duration::from_secs(5),
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl AuditProducer for EmbeddedProducer {
    async fn publish(&self, batch: AuditBatch) -> Result<(), PublishError> {
        let held = self.try_acquire(&batch)?;
        self.send(batch, held, 0)
    }

    fn health(&self) -> QueueHealth {
        let closed = self.shared.closed.load(Ordering::Acquire);
        QueueHealth {
            ready: !closed,
            queued_events: self.queued(),
            capacity_events: self.shared.capacity,
            reason: closed.then(|| "the queue is closed (shutting down)".to_owned()),
        }
    }
}

impl EmbeddedConsumer {
    /// Events queued or in processing.
    pub fn queued(&self) -> usize {
        self.shared.capacity - self.shared.permits.available_permits()
    }

    /// The next batch with the tag it was sent with
    /// ([`EmbeddedProducer::send_reserved`]; 0 otherwise).
    pub async fn recv_tagged(&mut self) -> Option<(Received, u64)> {
        let (batch, permit, tag) = self.rx.recv().await?;
        Some((self.received(batch, permit), tag))
    }

    fn received(&self, batch: AuditBatch, permit: Held) -> Received {
        let shared = self.shared.clone();
        // The permits are the batch's room: back once the worker has taken the batch over
        // (or at the acknowledgement, whichever is first).
        let ack = Ack::new(|| {}).with_room(move || {
            drop(permit);
            metrics::gauge!("kubetrail_queue_depth_events", "queue" => "embedded")
                .set((shared.capacity - shared.permits.available_permits()) as f64);
            metrics::gauge!("kubetrail_queue_depth_bytes", "queue" => "embedded")
                .set(shared.queued_bytes() as f64);
        });
        Received { batch, ack }
    }
}

#[async_trait::async_trait]
impl AuditConsumer for EmbeddedConsumer {
    async fn recv(&mut self) -> Option<Received> {
        self.recv_tagged().await.map(|(r, _)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> AuditBatch {
        let e: kubetrail_model::AuditEvent = serde_json::from_str(
            r#"{"level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/","verb":"get","user":{}}"#,
        )
        .unwrap();
        AuditBatch {
            cluster: "c".into(),
            events: vec![e; n],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn capacity_is_held_until_ack() {
        let (p, mut c) = channel(10);
        p.publish(batch(6)).await.unwrap();
        let err = p.publish(batch(6)).await.unwrap_err();
        assert!(
            matches!(
                err,
                PublishError::Full {
                    queued: 6,
                    capacity: 10,
                    ..
                }
            ),
            "{err:?}"
        );
        let r = c.recv().await.unwrap();
        assert_eq!(r.batch.events.len(), 6);
        // Received but not acknowledged: still counted.
        assert!(p.publish(batch(6)).await.is_err());
        assert_eq!(p.health().queued_events, 6);
        r.ack.done();
        p.publish(batch(6)).await.unwrap();
        assert!(matches!(
            p.publish(batch(11)).await,
            Err(PublishError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn publish_wait_waits_for_acks_and_close_drains() {
        let (p, mut c) = channel(4);
        p.publish(batch(4)).await.unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.publish_wait(batch(4)).await });
        let first = c.recv().await.unwrap();
        assert!(!waiter.is_finished());
        drop(first.ack);
        waiter.await.unwrap().unwrap();
        p.close();
        assert!(!p.health().ready);
        assert_eq!(p.publish(batch(1)).await, Err(PublishError::Closed));
        drop(p);
        assert!(
            c.recv().await.is_some(),
            "queued batches are still delivered after close"
        );
        assert!(c.recv().await.is_none(), "then the consumer ends");
    }

    fn big_batch(body_bytes: usize) -> AuditBatch {
        let body = format!("\"{}\"", "x".repeat(body_bytes));
        let e: kubetrail_model::AuditEvent = serde_json::from_str(&format!(
            r#"{{"level":"Request","auditID":"a","stage":"ResponseComplete","requestURI":"/","verb":"create","user":{{}},"requestObject":{body}}}"#,
        ))
        .unwrap();
        AuditBatch {
            cluster: "c".into(),
            events: vec![e],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_as_well_as_events() {
        // Room for 1,000 events but only ~1 MiB.
        let (p, mut c) = channel_bounded(1_000, 1 << 20);
        assert!(batch_bytes(&big_batch(600_000)) > 600_000);
        p.publish(big_batch(600_000)).await.unwrap();
        let err = p.publish(big_batch(600_000)).await.unwrap_err();
        assert!(matches!(err, PublishError::Full { .. }), "{err:?}");
        assert!(p.health().queued_events == 1, "one event, yet full");
        assert!(matches!(
            p.publish(big_batch(2 << 20)).await,
            Err(PublishError::TooLarge { .. })
        ));
        let r = c.recv().await.unwrap();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.publish_wait(big_batch(600_000)).await });
        r.ack.done();
        waiter.await.unwrap().unwrap();
    }
}
