//! Scale-out on Kafka: `kubetrail receive` (webhook → Kafka) and `kubetrail consume`
//! (Kafka → pipeline → OTLP), the two halves of `serve` in separate processes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kubetrail_export::{Exporter, SpanSink};
use kubetrail_kafka::{
    KafkaConfig, KafkaPartitionedConsumer, KafkaProducer, Repartitioner, minimum_lookback,
};
use kubetrail_queue::AuditProducer;
use kubetrail_receiver::Receiver;
use kubetrail_worker::{PartitionedWorker, WorkerConfig};

use crate::cli::{ConsumeArgs, KafkaArgs, ReceiveArgs};
use crate::config::{Config, DEFAULT_CLUSTER, long_running_sinks};
use crate::replay::effective_config;
use crate::serve::{receiver_config, shutdown_signal};

const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Redacts secrets (the `decorate.redact` settings) before events are published, so no Secret
/// value is ever written to the topic. The consumer redacts again (idempotent).
pub(crate) struct RedactingProducer<P> {
    pub(crate) inner: P,
    pub(crate) decorator: kubetrail_decorate::Decorator,
}

#[async_trait::async_trait]
impl<P: AuditProducer> AuditProducer for RedactingProducer<P> {
    async fn publish(
        &self,
        mut batch: kubetrail_queue::AuditBatch,
    ) -> Result<(), kubetrail_queue::PublishError> {
        let (mut redacted, mut whole) = (0, 0);
        for e in &mut batch.events {
            let r = self.decorator.redact_report(e);
            redacted += r.values;
            whole += r.whole_bodies;
        }
        if redacted > 0 {
            metrics::counter!("kubetrail_values_redacted_total").increment(redacted as u64);
        }
        if whole > 0 {
            tracing::warn!(
                bodies = whole,
                "replaced audit bodies whole: they had to be redacted but could not be parsed"
            );
            metrics::counter!("kubetrail_bodies_redacted_whole_total").increment(whole as u64);
        }
        self.inner.publish(batch).await
    }

    fn health(&self) -> kubetrail_queue::QueueHealth {
        self.inner.health()
    }
}

/// The `kafka:` section with the flags and environment applied.
pub(crate) fn kafka_config(
    cfg: &Config,
    args: &KafkaArgs,
    group: Option<&str>,
) -> anyhow::Result<KafkaConfig> {
    let mut k = cfg.kafka.clone();
    if let Some(b) = &args.kafka_brokers {
        k.brokers = b.clone();
    }
    if let Some(t) = &args.kafka_topic {
        k.topic = t.clone();
    }
    if let Some(g) = group {
        k.group = g.to_owned();
    }
    for p in &args.kafka_properties {
        let (key, value) = p
            .split_once('=')
            .with_context(|| format!("--kafka-property {p:?}: expected KEY=VALUE"))?;
        k.properties
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(k)
}

pub async fn receive(args: ReceiveArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    let cfg = Config::load(args.config.as_deref())?;
    let cluster = args
        .cluster
        .clone()
        .or(cfg.cluster.clone())
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_owned());
    let metrics = crate::telemetry::install_metrics()?;
    let kafka = kafka_config(&cfg, &args.kafka, None)?;
    let producer = Arc::new(RedactingProducer {
        inner: KafkaProducer::new(&kafka).context("cannot create the Kafka producer")?,
        decorator: kubetrail_decorate::Decorator::new(cfg.decorate.clone()),
    });
    let rc = receiver_config(&args.webhook, &cfg, &cluster)?;
    let receiver = Receiver::bind(
        rc,
        producer.clone() as Arc<dyn AuditProducer>,
        Arc::new(|| Ok(())),
        Some(metrics),
    )
    .await
    .context("cannot start the audit webhook")?;
    eprintln!(
        "kubetrail receive: listening on {} (POST /audit, /audit/{{cluster}}), producing to {} on {}",
        receiver.local_addr(),
        kafka.topic,
        kafka.brokers
    );
    // `follow:` in the config: audit log files followed into the same topic.
    let mut followers = if cfg.follow.paths.is_empty() {
        None
    } else {
        let (f, _) = crate::follow::Followers::start(
            &cfg.follow,
            &cluster,
            crate::follow::Downstream::Producer(producer.clone() as Arc<dyn AuditProducer>),
            crate::follow::lookback(&cfg, true),
            cfg.source.max_record_bytes,
        )?;
        eprintln!(
            "kubetrail receive: following {} audit log file(s)",
            cfg.follow.paths.len()
        );
        Some(f)
    };
    receiver
        .serve(shutdown)
        .await
        .context("the audit webhook failed")?;
    if let Some(f) = followers.as_mut() {
        f.stop_reading().await;
    }
    // Every batch answered 200 was acknowledged by the brokers already; flush what is left.
    let deadline = args
        .shutdown_timeout
        .or(cfg.shutdown_timeout)
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let flushed = tokio::task::spawn_blocking(move || producer.inner.flush(deadline)).await?;
    if let Some(f) = &followers {
        f.write_final_state(flushed.is_ok() && f.undelivered() == 0)?;
    }
    if let Err(e) = flushed {
        eprintln!("kubetrail receive: the producer could not flush before the deadline: {e}");
        return Ok(ExitCode::from(3));
    }
    eprintln!("kubetrail receive: stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn consume(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    let (cfg, _cluster) = effective_config(&args.pipeline)?;
    let kafka = kafka_config(&cfg, &args.kafka, args.kafka_group.as_deref())?;
    let pipeline = cfg.pipeline();
    let minimum = minimum_lookback(&pipeline);
    if kafka.lookback < minimum {
        tracing::warn!(
            lookback = ?kafka.lookback,
            minimum = ?minimum,
            "kafka.lookback is shorter than the window plus linger: after a restart, families that were open may be split"
        );
    }
    let metrics = crate::telemetry::install_metrics()?;
    let sinks = consume_sinks(&cfg, &args)?;
    let (exporter, exporter_task) = Exporter::spawn(sinks, cfg.exporter());
    let worker_config = WorkerConfig {
        order: cfg.time.clone(),
        ..Default::default()
    };
    // Repartitioning by family (the crate doc of kubetrail-kafka): this process routes its
    // share of the input topic's partitions into the family topic, and runs the pipelines of
    // its share of the family topic's partitions.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut progress = None;
    let router = if kafka.repartition {
        let r = Repartitioner::new(&kafka, pipeline.link.clone())
            .context("cannot join the Kafka routing group")?;
        progress = Some(r.progress());
        eprintln!(
            "kubetrail consume: routing topic {} (group {}) into {} by family",
            kafka.topic,
            kafka.route_stage().group,
            kafka.family_topic_name()
        );
        Some(tokio::spawn(r.run(stopped(stop_rx.clone()))))
    } else {
        None
    };
    let kafka = kafka.pipeline_stage();
    let mut consumer =
        KafkaPartitionedConsumer::new(&kafka).context("cannot join the Kafka consumer group")?;
    if let Some(p) = progress {
        consumer = consumer.with_upstream(p);
    }
    let worker = PartitionedWorker::new(consumer, pipeline, exporter, worker_config);
    if let Some(addr) = args.metrics_listen.or(cfg.server.listen) {
        crate::telemetry::serve_metrics("consume", addr, move || metrics.render())?;
    }
    eprintln!(
        "kubetrail consume: joined group {} on topic {} at {}",
        kafka.group, kafka.topic, kafka.brokers
    );
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = on_signal.send(true);
    });
    let report = worker.run(stopped(stop_rx)).await;
    // The pipelines ended (a signal, or the exporter failed): the routing stage ends too.
    let _ = stop_tx.send(true);
    if let Some(router) = router {
        match router.await {
            Ok(Ok(r)) => eprintln!(
                "kubetrail consume: routed {} events ({} by namespace, {} in the cluster scope, {} of them namespaced members of cluster-scoped families)",
                r.events, r.namespace, r.cluster, r.crossing
            ),
            Ok(Err(e)) => {
                return Err(anyhow::Error::new(e).context("the Kafka routing stage failed"));
            }
            Err(e) => return Err(anyhow::anyhow!("the Kafka routing stage failed: {e}")),
        }
    }
    let export = exporter_task
        .await
        .context("the exporter stopped unexpectedly")?;
    match report {
        Ok(r) => {
            let events: u64 = r.partitions.iter().map(|(_, w)| w.pipeline.events_in).sum();
            eprintln!(
                "kubetrail consume: stopped: {events} events from {} partition assignments, {} spans exported, {} dropped",
                r.partitions.len(),
                export.spans_exported,
                export.spans_dropped
            );
            Ok(if export.spans_dropped > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context("the Kafka consumer failed (nothing unexported was committed)")),
    }
}

fn consume_sinks(cfg: &Config, args: &ConsumeArgs) -> anyhow::Result<Vec<Box<dyn SpanSink>>> {
    long_running_sinks(
        cfg,
        &args.pipeline,
        args.otlp_json.as_deref(),
        "--otlp-endpoint or --otlp-json",
    )
}
