//! [`KafkaProducer`]: the accepting side of the Kafka queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use kubetrail_queue::{AuditBatch, AuditProducer, PublishError, QueueHealth};

use crate::message::{encode_event, headers, partition_key};
use crate::{Error, KafkaConfig, wall_now};

/// How long to suggest waiting after the local queue was full: 5 s, like every "not now"
/// answer that can last (kube-apiserver retries a 503 with `Retry-After` up to 55 times in
/// all, so this gives it ≈ 5 min of patience before it drops the batch; see the receiver's
/// crate docs).
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long to suggest waiting after the brokers failed.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Metadata requests of the health probe wait at most this long.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A producer that looks stuck is replaced at most this often.
const REPLACE_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// The health probe's period while healthy, and while not.
const PROBE_EVERY_HEALTHY: Duration = Duration::from_secs(5);
const PROBE_EVERY_FAILING: Duration = Duration::from_secs(1);

/// Broker reachability as last observed (delivery outcomes, metadata probes, librdkafka's
/// error callback).
#[derive(Debug)]
struct Health {
    ready: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Health {
    fn up(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("kafka: the brokers are reachable");
        }
        *lock(&self.reason) = None;
    }

    fn down(&self, reason: String) {
        if self.ready.swap(false, Ordering::AcqRel) {
            tracing::warn!(%reason, "kafka: the queue is unavailable");
        }
        *lock(&self.reason) = Some(reason);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Routes librdkafka's logs to `tracing` and notices "all brokers down".
struct ProducerContext {
    health: Arc<Health>,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        crate::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: RdError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health
                .down(format!("all Kafka brokers are down: {reason}"));
        } else {
            tracing::warn!(error = %error, reason, "kafka producer error");
        }
    }
}

type RdProducer = FutureProducer<ProducerContext>;

struct Inner {
    config: KafkaConfig,
    producer: RwLock<RdProducer>,
    /// When the producer was last replaced.
    replaced_at: Mutex<Option<Instant>>,
    /// A check whether the producer is stuck is running.
    checking: AtomicBool,
    health: Arc<Health>,
    capacity: usize,
    /// Dropping it stops the health probe thread.
    _stop_probe: std_mpsc::Sender<()>,
}

/// Publishes audit batches to Kafka: one message per event, keyed by cluster and namespace,
/// with an idempotent, `acks=all` producer. Cheap to clone.
///
/// [`publish`](AuditProducer::publish) returns `Ok` only once the brokers acknowledged every
/// message of the batch (all in-sync replicas have it), and within
/// [`produce_timeout`](KafkaConfig::produce_timeout) either way. A batch that failed may
/// still be partly in Kafka: the API server retries it, and the consumers' deterministic ids
/// and duplicate detection make the repeats harmless (at-least-once).
///
/// [`health`](AuditProducer::health) never blocks: it reports what the last delivery, the
/// last metadata probe (every 5 s, every second while failing; from a background thread) and
/// librdkafka's "all brokers down" event said.
#[derive(Clone)]
pub struct KafkaProducer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("brokers", &self.inner.config.brokers)
            .field("topic", &self.inner.config.topic)
            .finish_non_exhaustive()
    }
}

fn create(config: &KafkaConfig, health: &Arc<Health>) -> Result<RdProducer, Error> {
    config
        .producer_config()
        .set_log_level(crate::librdkafka_log_level())
        .create_with_context(ProducerContext {
            health: health.clone(),
        })
        .map_err(|source| Error::Client {
            what: "producer",
            brokers: config.brokers.clone(),
            source,
        })
}

impl KafkaProducer {
    /// Creates the producer (it connects in the background) and its health probe.
    pub fn new(config: &KafkaConfig) -> Result<KafkaProducer, Error> {
        config.validate()?;
        let health = Arc::new(Health {
            ready: AtomicBool::new(false),
            reason: Mutex::new(Some(format!(
                "connecting to the Kafka brokers {}",
                config.brokers
            ))),
        });
        let producer = create(config, &health)?;
        let (stop, stopped) = std_mpsc::channel();
        let inner = Arc::new(Inner {
            config: config.clone(),
            producer: RwLock::new(producer),
            replaced_at: Mutex::new(None),
            checking: AtomicBool::new(false),
            health,
            capacity: config.producer_capacity(),
            _stop_probe: stop,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("kubetrail-kafka-health".to_owned())
            .spawn(move || probe_loop(&weak, &stopped))
            .map_err(Error::Thread)?;
        Ok(KafkaProducer { inner })
    }

    /// Waits until every message handed to librdkafka was delivered or failed, at most
    /// `timeout` (on shutdown). Blocking: call it from a blocking context.
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        self.inner
            .current()
            .flush(timeout)
            .map_err(|source| Error::Flush { source })
    }
}

impl Inner {
    fn current(&self) -> RdProducer {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn queued(&self) -> usize {
        usize::try_from(self.current().in_flight_count()).unwrap_or(0)
    }

    /// Maps a librdkafka error to what the webhook answers, updating health; replaces the
    /// producer after a fatal error (an idempotent producer whose sequence the brokers lost).
    fn failed(&self, error: &RdError, producer: &RdProducer) -> PublishError {
        let code = error.rdkafka_error_code();
        let kind = match code {
            Some(RDKafkaErrorCode::QueueFull) => "queue_full",
            Some(RDKafkaErrorCode::MessageTimedOut) | Some(RDKafkaErrorCode::RequestTimedOut) => {
                "timeout"
            }
            _ => "other",
        };
        metrics::counter!("kubetrail_kafka_produce_errors_total", "kind" => kind).increment(1);
        if let Some((fatal, reason)) = producer.client().fatal_error() {
            tracing::error!(code = ?fatal, %reason, "kafka producer: fatal error; recreating the producer");
            self.replace(producer);
        }
        if code == Some(RDKafkaErrorCode::QueueFull) {
            return PublishError::Full {
                queued: self.queued(),
                capacity: self.capacity,
                retry_after: FULL_RETRY_AFTER,
            };
        }
        let reason = format!("publishing to Kafka topic {}: {error}", self.config.topic);
        self.health.down(reason.clone());
        PublishError::Unavailable {
            reason,
            retry_after: UNAVAILABLE_RETRY_AFTER,
        }
    }

    /// Replaces `failed` with a new producer, unless someone already did. The old one is
    /// dropped on a thread of its own once the publishes using it are over (dropping a
    /// producer purges its queue and waits for librdkafka a little).
    fn replace(&self, failed: &RdProducer) {
        let mut slot = self
            .producer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !std::ptr::eq(slot.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match create(&self.config, &self.health) {
            Ok(p) => {
                let old = std::mem::replace(&mut *slot, p);
                *lock(&self.replaced_at) = Some(Instant::now());
                let grace = self
                    .config
                    .produce_timeout
                    .saturating_add(Duration::from_secs(1));
                let _ = std::thread::Builder::new()
                    .name("kubetrail-kafka-retire".to_owned())
                    .spawn(move || {
                        std::thread::sleep(grace);
                        drop(old);
                    });
            }
            Err(e) => tracing::error!(error = %e, "kafka producer: could not be recreated"),
        }
    }

    /// A batch was not acknowledged in time although the brokers answer metadata requests:
    /// the producer may be stuck (an idempotent producer whose id a restarted broker forgot,
    /// retrying for ever). Replaces it, at most every [`REPLACE_AT_MOST_EVERY`].
    fn stuck(&self, producer: &RdProducer) {
        let recent = lock(&self.replaced_at).is_some_and(|t| t.elapsed() < REPLACE_AT_MOST_EVERY);
        if recent
            || producer
                .client()
                .fetch_metadata(Some(&self.config.topic), PROBE_TIMEOUT)
                .is_err()
        {
            return;
        }
        tracing::warn!(
            "kafka producer: brokers reachable but nothing acknowledged; recreating the producer"
        );
        metrics::counter!("kubetrail_kafka_producer_recreated_total").increment(1);
        self.replace(producer);
    }

    /// One metadata request for the topic.
    fn probe(&self) {
        let producer = self.current();
        match producer
            .client()
            .fetch_metadata(Some(&self.config.topic), PROBE_TIMEOUT)
        {
            Ok(md) => match md.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => self.health.up(),
                Some(t) => self.health.down(format!(
                    "Kafka topic {} is not available: {:?}",
                    self.config.topic,
                    t.error().map(RDKafkaErrorCode::from)
                )),
                None => self.health.down(format!(
                    "Kafka topic {} is not in the brokers' metadata",
                    self.config.topic
                )),
            },
            Err(e) => self.health.down(format!(
                "the Kafka brokers {} are unreachable: {e}",
                self.config.brokers
            )),
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::error!(?code, %reason, "kafka producer: fatal error; recreating the producer");
            self.replace(&producer);
        }
    }
}

fn probe_loop(inner: &Weak<Inner>, stopped: &std_mpsc::Receiver<()>) {
    loop {
        let every = {
            let Some(inner) = inner.upgrade() else { return };
            inner.probe();
            if inner.health.ready.load(Ordering::Acquire) {
                PROBE_EVERY_HEALTHY
            } else {
                PROBE_EVERY_FAILING
            }
        };
        match stopped.recv_timeout(every) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

impl KafkaProducer {
    /// Publishes `batch` with the message key of each event given by `key` (the
    /// repartitioning stage's family keys); otherwise as [`publish`](AuditProducer::publish):
    /// `Ok` once the brokers acknowledged every message.
    pub async fn publish_keyed(
        &self,
        batch: &AuditBatch,
        key: impl Fn(usize, &kubetrail_model::AuditEvent) -> String,
    ) -> Result<(), PublishError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.config.produce_timeout;
        let producer = inner.current();
        let received_at = if batch.received_at > 0 {
            batch.received_at
        } else {
            wall_now()
        };
        let headers = headers(&batch.cluster, received_at, batch.source.as_deref());
        let mut pending = Vec::with_capacity(batch.events.len());
        for (i, event) in batch.events.iter().enumerate() {
            let key = key(i, event);
            let (value, dropped) =
                encode_event(event, inner.config.max_event_bytes).map_err(|e| {
                    PublishError::Unavailable {
                        reason: format!("encoding audit event {}: {e}", event.audit_id),
                        retry_after: UNAVAILABLE_RETRY_AFTER,
                    }
                })?;
            if dropped {
                metrics::counter!("kubetrail_kafka_events_bodies_dropped_total").increment(1);
                tracing::warn!(audit_id = %event.audit_id, "kafka: event too large, published without its bodies");
            }
            let record = FutureRecord::to(&inner.config.topic)
                .key(&key)
                .payload(&value)
                .headers(headers.clone())
                .timestamp(received_at.div_euclid(1_000_000));
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                // Queue full, or a fatal producer: what was enqueued is still delivered (and
                // redelivered by the API server's retry: at-least-once).
                Err((e, _)) => return Err(inner.failed(&e, &producer)),
            }
        }
        let total = pending.len();
        let mut first_error = None;
        for (i, delivery) in pending.into_iter().enumerate() {
            match tokio::time::timeout_at(deadline, delivery).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((e, _)))) => {
                    if first_error.is_none() {
                        first_error = Some(inner.failed(&e, &producer));
                    }
                }
                Ok(Err(_canceled)) => {
                    first_error.get_or_insert_with(|| PublishError::Unavailable {
                        reason: "the Kafka producer was closed before delivery".to_owned(),
                        retry_after: UNAVAILABLE_RETRY_AFTER,
                    });
                }
                Err(_elapsed) => {
                    metrics::counter!("kubetrail_kafka_produce_errors_total", "kind" => "timeout")
                        .increment(1);
                    let reason = format!(
                        "the Kafka brokers did not acknowledge {} of {total} messages within {:?}",
                        total - i,
                        inner.config.produce_timeout
                    );
                    inner.health.down(reason.clone());
                    if !inner.checking.swap(true, Ordering::AcqRel) {
                        let (inner, producer) = (self.inner.clone(), producer.clone());
                        // A blocking metadata request: not on the async worker.
                        drop(tokio::task::spawn_blocking(move || {
                            inner.stuck(&producer);
                            inner.checking.store(false, Ordering::Release);
                        }));
                    }
                    return Err(PublishError::Unavailable {
                        reason,
                        retry_after: UNAVAILABLE_RETRY_AFTER,
                    });
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        inner.health.up();
        metrics::counter!("kubetrail_kafka_messages_produced_total").increment(total as u64);
        Ok(())
    }
}

#[async_trait::async_trait]
impl AuditProducer for KafkaProducer {
    async fn publish(&self, batch: AuditBatch) -> Result<(), PublishError> {
        let cluster = batch.cluster.clone();
        self.publish_keyed(&batch, |_, e| partition_key(&cluster, e))
            .await
    }

    fn health(&self) -> QueueHealth {
        let ready = self.inner.health.ready.load(Ordering::Acquire);
        QueueHealth {
            ready,
            queued_events: self.inner.queued(),
            capacity_events: self.inner.capacity,
            reason: if ready {
                None
            } else {
                lock(&self.inner.health.reason).clone()
            },
        }
    }
}
