//! Webhook throughput: concurrent clients POST 400-event EventList bodies (the API server's
//! recommended batch size) to a real receiver on loopback, as kube-apiserver's batch backend
//! does, and the latency of each request and the overall event rate are measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kubetrail_export::{ExportError, Exporter, SpanSink};
use kubetrail_model::SpanRecord;
use kubetrail_pipeline::{Pipeline, PipelineConfig};
use kubetrail_queue::{AuditConsumer, AuditProducer};
use kubetrail_receiver::{Receiver, ReceiverConfig};
use kubetrail_worker::{Worker, WorkerConfig};

/// What a webhook run measured.
pub struct WebhookFigures {
    /// Events accepted per second, over the whole run.
    pub events_per_sec: f64,
    /// Request latency percentiles (p50, p99, max).
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Requests that were not answered 200.
    pub non_200: usize,
}

/// A sink that encodes spans as OTLP protobuf (the exporter's CPU cost) and discards them.
struct DiscardSink;

#[async_trait::async_trait]
impl SpanSink for DiscardSink {
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        use prost::Message;
        std::hint::black_box(kubetrail_export::to_export_request(batch).encode_to_vec());
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), ExportError> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "discard"
    }
}

/// Runs `bodies` (EventList JSON) through a receiver on the embedded queue with `clients`
/// concurrent senders. With `full_pipeline`, a worker runs the pipeline and encodes the spans
/// (what `serve` does); otherwise batches are acknowledged as soon as they are queued.
pub async fn run(
    bodies: Vec<Vec<u8>>,
    events_per_body: usize,
    clients: usize,
    full_pipeline: bool,
) -> anyhow::Result<WebhookFigures> {
    run_on(
        bodies,
        events_per_body,
        clients,
        full_pipeline,
        BenchQueue::Memory,
    )
    .await
}

/// The queue behind the receiver.
pub enum BenchQueue {
    /// The in-memory embedded queue (`serve` without `queue.dir`).
    Memory,
    /// The durable log in this (empty) directory with this fsync policy.
    Durable {
        /// Log directory.
        dir: std::path::PathBuf,
        /// When writes are forced to disk.
        fsync: kubetrail_log::FsyncPolicy,
    },
}

/// [`run`] on the given queue.
pub async fn run_on(
    bodies: Vec<Vec<u8>>,
    events_per_body: usize,
    clients: usize,
    full_pipeline: bool,
    queue: BenchQueue,
) -> anyhow::Result<WebhookFigures> {
    let embedded = kubetrail_queue::embedded::channel(200_000);
    match queue {
        BenchQueue::Memory => {
            let (producer, consumer) = embedded;
            let p = producer.clone();
            drive(
                Arc::new(producer),
                Box::new(move || p.close()),
                consumer,
                bodies,
                events_per_body,
                clients,
                full_pipeline,
            )
            .await
        }
        BenchQueue::Durable { dir, fsync } => {
            let config = kubetrail_log::LogConfig {
                fsync,
                ..Default::default()
            };
            let (producer, consumer, log, _) =
                kubetrail_log::open(&dir, &config, Duration::from_secs(1830), embedded)?;
            let p = producer.clone();
            let f = drive(
                Arc::new(producer),
                Box::new(move || p.close()),
                consumer,
                bodies,
                events_per_body,
                clients,
                full_pipeline,
            )
            .await;
            log.close();
            f
        }
    }
}

async fn drive<C: AuditConsumer + 'static>(
    producer: Arc<dyn AuditProducer>,
    close: Box<dyn Fn() + Send>,
    mut consumer: C,
    bodies: Vec<Vec<u8>>,
    events_per_body: usize,
    clients: usize,
    full_pipeline: bool,
) -> anyhow::Result<WebhookFigures> {
    let config = ReceiverConfig {
        listen: "127.0.0.1:0".parse()?,
        ..ReceiverConfig::default()
    };
    let receiver = Receiver::bind(config, producer.clone(), Arc::new(|| Ok(())), None).await?;
    let addr = receiver.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(receiver.serve(async move {
        let _ = stop_rx.await;
    }));
    let consumer_task = if full_pipeline {
        let (exporter, exporter_task) =
            Exporter::spawn(vec![Box::new(DiscardSink)], Default::default());
        let worker = Worker::new(
            consumer,
            Pipeline::new(PipelineConfig::default()),
            exporter,
            WorkerConfig::default(),
        );
        tokio::spawn(async move {
            let _ = worker.run(std::future::pending()).await;
            let _ = exporter_task.await;
        })
    } else {
        tokio::spawn(async move {
            while let Some(r) = consumer.recv().await {
                r.ack.done();
            }
        })
    };

    let client = reqwest::Client::builder().build()?;
    let url = format!("http://{addr}/audit/bench");
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut non_200 = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                // Like the API server: retry until accepted (a 503 means the queue is full).
                loop {
                    let t = Instant::now();
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let ok = matches!(&resp, Ok(r) if r.status() == 200);
                    if let Ok(r) = resp {
                        let _ = r.bytes().await;
                    }
                    latencies.push(t.elapsed());
                    if ok {
                        break;
                    }
                    non_200 += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (latencies, non_200)
        }));
    }
    let mut latencies = Vec::new();
    let mut non_200 = 0;
    for t in tasks {
        let (l, n) = t.await?;
        latencies.extend(l);
        non_200 += n;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(());
    server.await??;
    close();
    drop(close);
    drop(producer);
    consumer_task.await?;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok(WebhookFigures {
        events_per_sec: (bodies.len() * events_per_body) as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or_default(),
        non_200,
    })
}
