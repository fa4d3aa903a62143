//! Kafka produce throughput: kubetrail's `KafkaProducer` (what `receive` publishes through,
//! 400-event batches, idempotent, acks=all, each batch awaited) against a bare rdkafka producer
//! with the same settings sending the same messages as fast as it can — the broker's own
//! produce limit on this machine. Runs against an Apache Kafka broker it starts itself
//! (`kubetrail_testkit::KafkaBroker`).

use std::time::{Duration, Instant};

use kubetrail_kafka::{KafkaConfig, KafkaProducer};
use kubetrail_model::AuditEvent;
use kubetrail_queue::{AuditBatch, AuditProducer};
use kubetrail_testkit::KafkaBroker;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Events per second of both producers.
pub struct KafkaFigures {
    /// Bare rdkafka producer, all messages in flight, then every delivery awaited.
    pub raw_events_per_sec: f64,
    /// `KafkaProducer::publish` of 400-event batches, 4 batches in flight (like 4 webhook
    /// connections).
    pub kubetrail_events_per_sec: f64,
}

/// Runs both producers over `events` on a fresh Apache Kafka broker.
pub async fn run(events: Vec<AuditEvent>) -> anyhow::Result<KafkaFigures> {
    let broker = KafkaBroker::start()?;
    broker.create_topic("raw", 4)?;
    broker.create_topic("kubetrail", 4)?;

    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let payloads: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            let ns = e
                .object_ref
                .as_ref()
                .and_then(|r| r.namespace.clone())
                .unwrap_or_default();
            Ok((format!("bench/{ns}"), serde_json::to_vec(e)?))
        })
        .collect::<anyhow::Result<_>>()?;
    // The first idempotent produce waits for a producer id and the topic's leaders: not timed.
    let warm = FutureRecord::to("raw").key("warm-up").payload("{}");
    raw.send(warm, Duration::from_secs(60))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("raw warm-up failed: {e}"))?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, value) in &payloads {
        // `send_result` enqueues now (`send` would only enqueue when awaited: one at a time).
        let record = FutureRecord::to("raw").key(key).payload(value);
        pending.push(
            raw.send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("raw enqueue failed: {e}"))?,
        );
    }
    for p in pending {
        p.await
            .map_err(|_| anyhow::anyhow!("raw produce cancelled"))?
            .map_err(|(e, _)| anyhow::anyhow!("raw produce failed: {e}"))?;
    }
    let raw_rate = payloads.len() as f64 / started.elapsed().as_secs_f64();

    let config = KafkaConfig {
        brokers: broker.addr(),
        topic: "kubetrail".into(),
        produce_timeout: Duration::from_secs(30),
        ..KafkaConfig::default()
    };
    let producer = std::sync::Arc::new(KafkaProducer::new(&config)?);
    let batches: Vec<Vec<AuditEvent>> = events.chunks(400).map(<[AuditEvent]>::to_vec).collect();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let batches = std::sync::Arc::new(batches);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (producer, batches, next) = (producer.clone(), batches.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(events) = batches.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let batch = AuditBatch {
                    cluster: "bench".into(),
                    events: events.clone(),
                    ..Default::default()
                };
                producer
                    .publish(batch)
                    .await
                    .map_err(|e| anyhow::anyhow!("publish failed: {e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ours = events.len() as f64 / started.elapsed().as_secs_f64();
    Ok(KafkaFigures {
        raw_events_per_sec: raw_rate,
        kubetrail_events_per_sec: ours,
    })
}
