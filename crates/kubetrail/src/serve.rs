//! `kubetrail serve`: webhook → embedded queue → worker → exporter, in one process.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kubetrail_export::{Exporter, ExporterHandle};
use kubetrail_pipeline::Pipeline;
use kubetrail_queue::AuditProducer;
use kubetrail_receiver::{Receiver, ReceiverConfig};
use kubetrail_worker::{Worker, WorkerConfig};

use crate::cli::{ServeArgs, WebhookArgs};
use crate::config::{Config, long_running_sinks};
use crate::replay::effective_config;

/// The queue between the webhook and the worker.
enum Queue {
    /// In memory only (no `queue.dir`).
    Memory(
        kubetrail_queue::embedded::EmbeddedProducer,
        kubetrail_queue::embedded::EmbeddedConsumer,
    ),
    /// The durable log in front of the in-memory queue, with the spans delivered before.
    Durable(
        kubetrail_log::DurableProducer,
        kubetrail_log::DurableConsumer,
        kubetrail_log::LogHandle,
        std::collections::HashSet<kubetrail_model::ids::SpanId>,
    ),
}

const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The webhook settings: flags over environment over config file (`server:`) over defaults.
pub(crate) fn receiver_config(
    args: &WebhookArgs,
    cfg: &Config,
    cluster: &str,
) -> anyhow::Result<ReceiverConfig> {
    let mut server = cfg.server.clone();
    server.listen = args.listen.or(server.listen);
    let mut tls = server.tls.take().unwrap_or_default();
    tls.cert = args.tls_cert.clone().or(tls.cert);
    tls.key = args.tls_key.clone().or(tls.key);
    tls.client_ca = args.client_ca.clone().or(tls.client_ca);
    server.tls = Some(tls);
    server.token_file = args.token_file.clone().or(server.token_file);
    server.insecure |= args.insecure;
    server.jaeger_url = args.jaeger_url.clone().or(server.jaeger_url);
    Ok(server.build(cluster, cfg.aggregate.window)?)
}

/// Readiness of the export side: not ready once deliveries have been failing for longer than
/// `threshold` (accepting more would only fill the queue and, eventually, lose data).
pub(crate) fn export_readiness(
    handle: ExporterHandle,
    threshold: Duration,
) -> impl Fn() -> Result<(), kubetrail_receiver::NotReady> + Send + Sync + 'static {
    move || {
        let h = handle.health();
        match h.failing_for {
            Some(d) if d >= threshold => Err(kubetrail_receiver::NotReady::new(format!(
                "the span exporter has been failing for {}s: {}",
                d.as_secs(),
                h.last_error.unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }
}

/// Registers SIGTERM and SIGINT handlers now (so a signal arriving at any time after start-up
/// is caught) and returns a future that resolves on the first of them.
pub(crate) fn shutdown_signal()
-> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down: no longer accepting audit events"
        );
        eprintln!("kubetrail: {name} received: draining the queue and flushing the exporter");
    })
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    let (mut cfg, cluster) = effective_config(&args.pipeline)?;
    crate::follow::expect_sources(&mut cfg);
    let metrics = crate::telemetry::install_metrics()?;

    let sinks = long_running_sinks(
        &cfg,
        &args.pipeline,
        args.otlp_json.as_deref(),
        "--otlp-endpoint or --otlp-json",
    )?;
    let (exporter, exporter_task) = Exporter::spawn(sinks, cfg.exporter());

    let queue_events = args.queue_events.unwrap_or(cfg.queue.events);
    let embedded = kubetrail_queue::embedded::channel_bounded(queue_events, cfg.queue.bytes);
    let queue = match args.queue_dir.clone().or(cfg.queue.dir.clone()) {
        None => {
            tracing::warn!(
                "no queue.dir: the queue is in memory only; batches acknowledged but not yet exported are lost on a crash"
            );
            eprintln!(
                "kubetrail serve: queue in memory only (no --queue-dir / queue.dir): a crash loses what was acknowledged but not yet exported"
            );
            Queue::Memory(embedded.0, embedded.1)
        }
        Some(dir) => {
            let retention = cfg
                .queue
                .durable
                .retention
                .unwrap_or(cfg.aggregate.window + cfg.aggregate.linger);
            let (producer, consumer, log, recovery) =
                match kubetrail_log::open(&dir, &cfg.queue.durable, retention, embedded) {
                    Ok(v) => v,
                    Err(e) => {
                        drop(exporter);
                        let _ = exporter_task.await;
                        return Err(anyhow::Error::new(e).context("cannot open the durable log"));
                    }
                };
            eprintln!(
                "kubetrail serve: durable log {} (fsync {:?}, budget {} bytes): {} retained batches in {} segments ({} bytes) to process again, {} spans delivered before; {} damaged tails cut ({} bytes)",
                dir.display(),
                cfg.queue.durable.fsync,
                cfg.queue.durable.disk_bytes,
                recovery.batches,
                recovery.segments,
                recovery.bytes,
                recovery.delivered.len(),
                recovery.damaged,
                recovery.damaged_bytes
            );
            tracing::info!(
                dir = %dir.display(),
                batches = recovery.batches,
                delivered = recovery.delivered.len(),
                damaged = recovery.damaged,
                "durable log opened"
            );
            Queue::Durable(producer, consumer, log, recovery.delivered)
        }
    };
    let (producer, close, log): (Arc<dyn AuditProducer>, Box<dyn Fn() + Send>, _) = match &queue {
        Queue::Memory(p, _) => {
            let p2 = p.clone();
            (Arc::new(p.clone()), Box::new(move || p2.close()), None)
        }
        Queue::Durable(p, _, log, _) => {
            let p2 = p.clone();
            (
                Arc::new(p.clone()),
                Box::new(move || p2.close()),
                Some(log.clone()),
            )
        }
    };
    let threshold = cfg.server.export_failure_threshold;
    let rc = receiver_config(&args.webhook, &cfg, &cluster)?;
    let bound = Receiver::bind(
        rc,
        producer.clone(),
        Arc::new(export_readiness(exporter.clone(), threshold)),
        Some(metrics),
    )
    .await;
    let receiver = match bound {
        Ok(r) => r,
        Err(e) => {
            // Nothing was accepted: close the exporter cleanly before reporting.
            drop(exporter);
            let _ = exporter_task.await;
            return Err(anyhow::Error::new(e).context("cannot start the audit webhook"));
        }
    };
    let addr = receiver.local_addr();
    eprintln!(
        "kubetrail serve: listening on {addr} (POST /audit, /audit/{{cluster}}; GET /healthz, /readyz, /metrics)"
    );
    tracing::info!(%addr, cluster = %cluster, queue_events, "serving");

    // `follow:` in the config: audit log files followed into the same pipeline.
    let (mut followers, follow_consumer) = if cfg.follow.paths.is_empty() {
        (None, None)
    } else {
        let (tx, rx) = crate::follow::worker_channel();
        let (f, caught_up) = crate::follow::Followers::start(
            &cfg.follow,
            &cluster,
            crate::follow::Downstream::Worker(tx),
            crate::follow::lookback(&cfg, false),
            cfg.source.max_record_bytes,
        )?;
        eprintln!(
            "kubetrail serve: following {} audit log file(s)",
            cfg.follow.paths.len()
        );
        (Some(f), Some(crate::follow::consumer(rx, caught_up)))
    };
    let config = WorkerConfig {
        order: cfg.time.clone(),
        ..Default::default()
    };
    let pipeline = Pipeline::new(cfg.pipeline());
    let worker = match queue {
        Queue::Memory(p, consumer) => {
            // Only the receiver's handle may keep the queue open.
            drop(p);
            let consumer = crate::follow::JoinedConsumer {
                webhook: Some(consumer),
                follow: follow_consumer,
            };
            let worker = Worker::new(consumer, pipeline, exporter, config);
            tokio::spawn(worker.run(std::future::pending()))
        }
        Queue::Durable(p, consumer, log, delivered) => {
            drop(p);
            let consumer = crate::follow::JoinedConsumer {
                webhook: Some(consumer),
                follow: follow_consumer,
            };
            let worker = Worker::new(consumer, pipeline, exporter, config)
                .suppress(delivered)
                .on_delivered(Arc::new(move |ids| log.delivered(ids)));
            tokio::spawn(worker.run(std::future::pending()))
        }
    };

    receiver
        .serve(shutdown)
        .await
        .context("the audit webhook failed")?;

    // Stop accepting; the worker drains what is queued, emits every open family and waits for
    // the exporter; all within the shutdown deadline.
    let deadline = args
        .shutdown_timeout
        .or(cfg.shutdown_timeout)
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    if let Some(f) = followers.as_mut() {
        f.stop_reading().await;
    }
    let queued_at_stop = producer.health().queued_events;
    close();
    // The queue ends once every producer handle is gone.
    drop(close);
    drop(producer);
    let drained = tokio::time::timeout(
        deadline,
        crate::finish::finish_pipeline(worker, exporter_task),
    )
    .await;
    if let Some(log) = log {
        // Everything exported is recorded; the writer syncs and stops.
        log.close();
    }
    match drained {
        Ok(Ok((report, export))) => {
            if let Some(f) = &followers {
                f.write_final_state(export.spans_dropped == 0 && export.finish_errors.is_empty())?;
            }
            eprintln!(
                "kubetrail serve: stopped after draining {queued_at_stop} queued events: {} events processed, {} spans exported, {} dropped",
                report.pipeline.events_in, export.spans_exported, export.spans_dropped
            );
            if export.spans_dropped > 0 {
                return Ok(ExitCode::from(3));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => {
            if let Some(f) = &followers {
                f.write_final_state(false)?;
            }
            Err(e)
        }
        Err(_) => {
            if let Some(f) = &followers {
                f.write_final_state(false)?;
            }
            eprintln!(
                "kubetrail serve: shutdown deadline of {}s passed before the queue was drained and the exporter flushed; \
                 {queued_at_stop} events were queued at shutdown and what was not exported is lost",
                deadline.as_secs()
            );
            Ok(ExitCode::from(3))
        }
    }
}
