//! `kubetrail follow`: kube-apiserver audit log files, followed as they are written, into
//! the pipeline (or into Kafka); and the same source as the `follow:` section of `serve`
//! and `receive`.
//!
//! One blocking task per log runs a [`Tailer`] (rotation, gzip backups, truncation, partial
//! lines: see `kubetrail_source::follow`) and publishes each chunk of complete lines as a
//! batch whose source is the log's path, so several API servers' logs are merged by event
//! time by the worker's watermark sequencer, as `serve` merges its webhook clients.
//!
//! Delivery decides the state file: a batch counts as delivered when the worker acknowledges
//! it (its spans exported) or, towards Kafka, when the brokers acknowledged it. The state
//! file is rewritten (atomically) every `state_interval` and at shutdown; see
//! `kubetrail_source::follow::state` for why a crash re-reads a lookback and a clean stop
//! does not.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use kubetrail_export::Exporter;
use kubetrail_pipeline::Pipeline;
use kubetrail_queue::{Ack, AuditBatch, AuditConsumer, AuditProducer, PublishError, Received};
use kubetrail_source::follow::state::{LogState, STATE_VERSION, StateFile, Tracker};
use kubetrail_source::follow::{FollowConfig, StartAt, Tailer};
use kubetrail_worker::{Worker, WorkerConfig};

use crate::cli::FollowArgs;
use crate::config::{Config, long_running_sinks};
use crate::replay::effective_config;
use crate::serve::shutdown_signal;

const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Batches in flight between the followers and the worker (each at most ~1 MiB of lines).
const CHANNEL_BATCHES: usize = 64;

/// Where followed batches go.
#[derive(Clone)]
pub(crate) enum Downstream {
    /// The in-process worker: delivered when it acknowledges the batch (spans exported).
    Worker(mpsc::Sender<Received>),
    /// A durable queue (Kafka): delivered when `publish` returns.
    Producer(Arc<dyn AuditProducer>),
}

/// The consumer side of [`Downstream::Worker`]: what the worker reads.
pub(crate) struct FollowConsumer {
    rx: mpsc::Receiver<Received>,
    caught_up: Vec<Arc<AtomicBool>>,
}

#[async_trait::async_trait]
impl AuditConsumer for FollowConsumer {
    async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    /// Caught up once every log was read to its end and nothing waits in the channel: until
    /// then (a re-read after a restart) the events' own time drives the pipeline's clock.
    fn caught_up(&self) -> bool {
        self.rx.is_empty() && self.caught_up.iter().all(|c| c.load(Ordering::Relaxed))
    }
}

/// The webhook's queue and the followers' channel read as one (`serve` with `follow:`).
pub(crate) struct JoinedConsumer<A> {
    pub webhook: Option<A>,
    pub follow: Option<FollowConsumer>,
}

#[async_trait::async_trait]
impl<A: AuditConsumer> AuditConsumer for JoinedConsumer<A> {
    async fn recv(&mut self) -> Option<Received> {
        loop {
            match (&mut self.webhook, &mut self.follow) {
                (None, None) => return None,
                (Some(w), None) => return w.recv().await,
                (None, Some(f)) => return f.recv().await,
                (Some(w), Some(f)) => {
                    tokio::select! {
                        r = w.recv() => match r {
                            Some(r) => return Some(r),
                            None => self.webhook = None,
                        },
                        r = f.recv() => match r {
                            Some(r) => return Some(r),
                            None => self.follow = None,
                        },
                    }
                }
            }
        }
    }

    fn caught_up(&self) -> bool {
        self.webhook.as_ref().is_none_or(|w| w.caught_up())
            && self.follow.as_ref().is_none_or(|f| f.caught_up())
    }
}

/// One followed log's shared state.
struct LogShared {
    path: String,
    tracker: Mutex<Tracker>,
    caught_up: Arc<AtomicBool>,
}

/// The running followers.
pub(crate) struct Followers {
    logs: Vec<Arc<LogShared>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    state_file: Option<PathBuf>,
    state_task: Option<tokio::task::JoinHandle<()>>,
}

fn lumberjack_stamp_now() -> String {
    // 2024-07-15T09:00:00.000Z → 2024-07-15T09-00-00.000 (lumberjack's backup stamp, UTC).
    let t = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    t.trim_end_matches('Z').replace(':', "-")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a state file says, without its time stamp.
fn positions(
    s: &StateFile,
) -> Vec<(
    &String,
    &Option<kubetrail_source::follow::Position>,
    &Option<kubetrail_source::follow::Position>,
)> {
    s.logs
        .iter()
        .map(|(k, l)| (k, &l.committed, &l.resume))
        .collect()
}

fn snapshot(logs: &[Arc<LogShared>], clean: bool) -> StateFile {
    let mut s = StateFile {
        version: STATE_VERSION,
        ..Default::default()
    };
    let saved_at = lumberjack_stamp_now();
    for log in logs {
        let t = lock(&log.tracker);
        s.logs.insert(
            log.path.clone(),
            LogState {
                committed: t.committed(),
                resume: if clean { t.committed() } else { t.resume() },
                saved_at: saved_at.clone(),
                clean,
            },
        );
    }
    s
}

impl Followers {
    /// Starts following every path of `section`: each from its saved position (the state
    /// file), else from `section.start_at`. Returns the followers and, for
    /// [`Downstream::Worker`], nothing else: the caller owns the channel's receiver.
    pub(crate) fn start(
        section: &FollowConfig,
        cluster: &str,
        downstream: Downstream,
        lookback: Duration,
        max_record: usize,
    ) -> anyhow::Result<(Followers, Vec<Arc<AtomicBool>>)> {
        let saved = match &section.state_file {
            Some(p) => StateFile::load(p)?,
            None => None,
        };
        if let Some(p) = &section.state_file
            && let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let lookback_nanos = i64::try_from(lookback.as_nanos()).unwrap_or(i64::MAX);
        let mut logs = Vec::new();
        let mut tasks = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for path in &section.paths {
            let key = path.display().to_string();
            if !seen.insert(key.clone()) {
                continue;
            }
            let prior = saved.as_ref().and_then(|s| s.logs.get(&key)).cloned();
            let (resume, saved_at, committed) = match &prior {
                Some(p) => (
                    p.resume.clone(),
                    Some(p.saved_at.clone()),
                    p.committed.clone(),
                ),
                None => (None, None, None),
            };
            let tailer = Tailer::resume(
                path,
                resume.as_ref(),
                saved_at.as_deref(),
                section.start_at,
                max_record,
            )
            .with_context(|| format!("cannot follow {key}"))?;
            match (&prior, &resume) {
                (Some(p), Some(r)) => eprintln!(
                    "kubetrail follow: {key}: resuming at {}:{} (line {}){}",
                    r.path,
                    r.offset,
                    r.line,
                    if p.clean {
                        ""
                    } else {
                        " — the last run did not stop cleanly: re-reading its lookback (the spans it exports again are identical)"
                    }
                ),
                _ => eprintln!(
                    "kubetrail follow: {key}: no saved position, starting at the {} of the live file",
                    match section.start_at {
                        StartAt::Beginning => "beginning",
                        StartAt::End => "end",
                    }
                ),
            }
            // Delivered so far, as far as this run knows: up to where reading starts.
            let _ = committed;
            let tracker = Tracker::new(resume.clone(), lookback_nanos);
            let shared = Arc::new(LogShared {
                path: key,
                tracker: Mutex::new(tracker),
                caught_up: Arc::new(AtomicBool::new(false)),
            });
            logs.push(shared.clone());
            let rt = tokio::runtime::Handle::current();
            let downstream = downstream.clone();
            let cluster = cluster.to_owned();
            let poll = section.poll_interval.max(Duration::from_millis(1));
            let stop_rx = stop_rx.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                follow_log(tailer, shared, &cluster, downstream, poll, stop_rx, &rt)
            }));
        }
        let caught_up = logs.iter().map(|l| l.caught_up.clone()).collect();
        let state_task = section.state_file.clone().map(|path| {
            let logs = logs.clone();
            let every = section.state_interval.max(Duration::from_millis(10));
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                let mut last: Option<StateFile> = None;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop_rx.changed() => return,
                    }
                    let mut s = snapshot(&logs, false);
                    let changed = last.as_ref().is_none_or(|l| positions(l) != positions(&s));
                    if changed {
                        let p = path.clone();
                        let to_write = s.clone();
                        match tokio::task::spawn_blocking(move || to_write.save(&p)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "cannot write the follow state file");
                                metrics::counter!("kubetrail_follow_state_write_errors_total")
                                    .increment(1);
                            }
                            Err(e) => tracing::error!(error = %e, "state writer stopped"),
                        }
                        s.version = STATE_VERSION;
                        last = Some(s);
                    }
                }
            })
        });
        Ok((
            Followers {
                logs,
                tasks,
                stop,
                state_file: section.state_file.clone(),
                state_task,
            },
            caught_up,
        ))
    }

    /// Stops reading: every follower finishes the batch in hand and ends (dropping its
    /// sender, so the worker's channel closes once drained).
    pub(crate) async fn stop_reading(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(t) = self.state_task.take() {
            let _ = t.await;
        }
    }

    /// Batches read but not delivered (a stop interrupted the retries towards a queue).
    pub(crate) fn undelivered(&self) -> usize {
        self.logs.iter().map(|l| lock(&l.tracker).in_flight()).sum()
    }

    /// Writes the final state: `clean` once everything read was delivered (then a restart
    /// reads nothing twice), else the running state (a restart re-reads the lookback).
    pub(crate) fn write_final_state(&self, clean: bool) -> anyhow::Result<()> {
        if clean {
            for log in &self.logs {
                lock(&log.tracker).all_delivered();
            }
        }
        if let Some(path) = &self.state_file {
            snapshot(&self.logs, clean).save(path)?;
        }
        Ok(())
    }
}

/// Follows one log until `stop`; runs on a blocking thread.
fn follow_log(
    mut tailer: Tailer,
    shared: Arc<LogShared>,
    cluster: &str,
    downstream: Downstream,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
    rt: &tokio::runtime::Handle,
) {
    let path = shared.path.clone();
    let labels = [("path", path.clone())];
    let mut published = kubetrail_source::follow::TailStats::default();
    let mut malformed_log = kubetrail_model::ratelimit::LogLimiter::for_items();
    loop {
        if *stop.borrow() {
            return;
        }
        let polled = tailer.poll();
        // Counters of the tailer as deltas.
        let s = tailer.stats().clone();
        if s.rotations > published.rotations {
            metrics::counter!("kubetrail_follow_rotations_total", &labels)
                .increment(s.rotations - published.rotations);
        }
        if s.truncations > published.truncations {
            metrics::counter!("kubetrail_follow_truncations_total", &labels)
                .increment(s.truncations - published.truncations);
        }
        if s.positions_lost > published.positions_lost {
            metrics::counter!("kubetrail_follow_positions_lost_total", &labels)
                .increment(s.positions_lost - published.positions_lost);
        }
        published = s;
        match polled {
            Ok(Some(chunk)) => {
                let mut events = Vec::with_capacity(chunk.records.len());
                let (mut malformed, mut not_logged) = (0u64, 0u64);
                for r in chunk.records {
                    match r {
                        Ok(e) => events.push(e),
                        Err(m) if m.skipped => {
                            tracing::debug!(%m, "record without a Kubernetes audit event skipped");
                            metrics::counter!("kubetrail_follow_records_skipped_total", &labels)
                                .increment(1);
                        }
                        Err(m) => {
                            malformed += 1;
                            if malformed_log.check(std::time::Instant::now()).log {
                                tracing::warn!(%m, "malformed audit line skipped");
                            } else {
                                not_logged += 1;
                            }
                            metrics::counter!("kubetrail_follow_malformed_total", &labels)
                                .increment(1);
                        }
                    }
                }
                if not_logged > 0 {
                    tracing::warn!(
                        path = %path,
                        malformed,
                        not_logged,
                        "skipped more malformed audit lines than are logged one by one (log rate limit); all are counted in kubetrail_follow_malformed_total"
                    );
                }
                let max_time = events
                    .iter()
                    .filter_map(|e| kubetrail_source::merge::merge_key(e).map(|k| k.0))
                    .max();
                let n = events.len() as u64;
                let seq = lock(&shared.tracker).published(chunk.start, chunk.end, max_time);
                if events.is_empty() {
                    lock(&shared.tracker).acked(seq);
                } else {
                    let batch = AuditBatch {
                        cluster: cluster.to_owned(),
                        received_at: kubetrail_model::now_unix_nanos(),
                        source: Some(path.clone()),
                        events,
                    };
                    if !deliver(batch, seq, &shared, &downstream, &mut stop, rt) {
                        return;
                    }
                    metrics::counter!("kubetrail_follow_events_total", &labels).increment(n);
                }
                shared.caught_up.store(false, Ordering::Relaxed);
            }
            Ok(None) => {
                shared
                    .caught_up
                    .store(tailer.caught_up(), Ordering::Relaxed);
                if let Some(p) = tailer.position() {
                    metrics::gauge!("kubetrail_follow_read_bytes", &labels).set(p.offset as f64);
                }
                // The poll interval, cut short by a stop.
                if rt
                    .block_on(async { tokio::time::timeout(poll, stop.changed()).await })
                    .is_ok()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path, "cannot read the audit log; trying again");
                metrics::counter!("kubetrail_follow_read_errors_total", &labels).increment(1);
                if rt
                    .block_on(async { tokio::time::timeout(poll * 10, stop.changed()).await })
                    .is_ok()
                {
                    return;
                }
            }
        }
    }
}

/// Hands a batch downstream, waiting (and retrying a durable queue that is full or down)
/// until it is taken. `false` when stopped (or the worker is gone) before it was.
fn deliver(
    batch: AuditBatch,
    seq: u64,
    shared: &Arc<LogShared>,
    downstream: &Downstream,
    stop: &mut watch::Receiver<bool>,
    rt: &tokio::runtime::Handle,
) -> bool {
    match downstream {
        Downstream::Worker(tx) => {
            let s = shared.clone();
            let ack = Ack::explicit(move || lock(&s.tracker).acked(seq));
            // Waiting for room is backpressure: a stop does not interrupt a batch in hand
            // (the worker drains the channel before stopping).
            rt.block_on(tx.send(Received { batch, ack })).is_ok()
        }
        Downstream::Producer(p) => loop {
            match rt.block_on(p.publish(batch.clone())) {
                Ok(()) => {
                    lock(&shared.tracker).acked(seq);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %shared.path, "the queue did not take a batch; retrying");
                    let wait = match &e {
                        PublishError::Closed => return false,
                        e => e.retry_after().min(Duration::from_secs(5)),
                    };
                    if rt
                        .block_on(async { tokio::time::timeout(wait, stop.changed()).await })
                        .is_ok()
                    {
                        return false;
                    }
                }
            }
        },
    }
}

/// The lookback re-read after a crash: configured, else window + linger.
pub(crate) fn lookback(cfg: &Config, towards_kafka: bool) -> Duration {
    match cfg.follow.lookback {
        Some(l) => l,
        None if towards_kafka => Duration::ZERO,
        None => kubetrail_kafka::minimum_lookback(&cfg.pipeline()),
    }
}

/// Declares every followed log as a source the sequencer waits for: a log read in a backlog
/// (the first start, a re-read after a crash) must not let time run ahead of another log
/// that has not been read yet, or the second log's events arrive late.
pub(crate) fn expect_sources(cfg: &mut Config) {
    for p in &cfg.follow.paths {
        let key = p.display().to_string();
        if !cfg.time.expect_sources.contains(&key) {
            cfg.time.expect_sources.push(key);
        }
    }
}

/// A worker channel for the followers: the sender for [`Downstream::Worker`] and the
/// consumer, once the caught-up flags are known.
pub(crate) fn worker_channel() -> (mpsc::Sender<Received>, mpsc::Receiver<Received>) {
    mpsc::channel(CHANNEL_BATCHES)
}

/// The consumer over the followers' channel.
pub(crate) fn consumer(
    rx: mpsc::Receiver<Received>,
    caught_up: Vec<Arc<AtomicBool>>,
) -> FollowConsumer {
    FollowConsumer { rx, caught_up }
}

/// `kubetrail follow`.
pub async fn run(args: FollowArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    let (mut cfg, cluster) = effective_config(&args.pipeline)?;
    let mut section = cfg.follow.clone();
    if !args.paths.is_empty() {
        section.paths = args.paths.clone();
    }
    if section.paths.is_empty() {
        anyhow::bail!("nothing to follow: give the audit log paths (or follow.paths in --config)");
    }
    if let Some(s) = &args.state_file {
        section.state_file = Some(s.clone());
    }
    if let Some(p) = args.poll_interval {
        section.poll_interval = p;
    }
    if let Some(s) = args.start_at {
        section.start_at = s.into();
    }
    cfg.follow = section.clone();
    expect_sources(&mut cfg);
    let metrics = crate::telemetry::install_metrics()?;
    if let Some(addr) = args.metrics_listen {
        crate::telemetry::serve_metrics("follow", addr, move || metrics.render())?;
    }
    let deadline = args
        .shutdown_timeout
        .or(cfg.shutdown_timeout)
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
    let max_record = cfg.source.max_record_bytes;

    if let Some(url) = &args.forward_url {
        // Towards a central webhook: delivered once it answered 200 (the batch is queued
        // there); its pipeline merges every node's log.
        let source = match &args.forward_source {
            Some(s) => s.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "follow".to_owned()),
        };
        let keys: Vec<String> = section
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let forwarder = Arc::new(crate::forward::WebhookForwarder::new(
            url,
            args.forward_token_file.as_deref(),
            args.forward_ca.as_deref(),
            &source,
            &keys,
        )?);
        let (mut followers, _) = Followers::start(
            &section,
            &cluster,
            Downstream::Producer(forwarder as Arc<dyn AuditProducer>),
            lookback(&cfg, true),
            max_record,
        )?;
        eprintln!(
            "kubetrail follow: following {} log(s), forwarding to {url} as source {source}",
            section.paths.len()
        );
        shutdown.await;
        followers.stop_reading().await;
        let undelivered = followers.undelivered();
        followers.write_final_state(undelivered == 0)?;
        if undelivered > 0 {
            eprintln!(
                "kubetrail follow: stopped with {undelivered} batches not taken by {url}: the state file keeps them, a restart sends them"
            );
            return Ok(ExitCode::from(3));
        }
        eprintln!("kubetrail follow: stopped");
        return Ok(ExitCode::SUCCESS);
    }

    if args.kafka.kafka_brokers.is_some() {
        // Towards Kafka: the consumers run the pipeline; a batch is delivered once the
        // brokers acknowledged it.
        let kafka = crate::scaleout::kafka_config(&cfg, &args.kafka, None)?;
        let producer = Arc::new(crate::scaleout::RedactingProducer {
            inner: kubetrail_kafka::KafkaProducer::new(&kafka)
                .context("cannot create the Kafka producer")?,
            decorator: kubetrail_decorate::Decorator::new(cfg.decorate.clone()),
        });
        let (mut followers, _) = Followers::start(
            &section,
            &cluster,
            Downstream::Producer(producer.clone() as Arc<dyn AuditProducer>),
            lookback(&cfg, true),
            max_record,
        )?;
        eprintln!(
            "kubetrail follow: following {} log(s), producing to {} on {}",
            section.paths.len(),
            kafka.topic,
            kafka.brokers
        );
        shutdown.await;
        followers.stop_reading().await;
        let flushed = tokio::task::spawn_blocking(move || producer.inner.flush(deadline)).await?;
        let clean = flushed.is_ok() && followers.undelivered() == 0;
        followers.write_final_state(clean)?;
        if let Err(e) = flushed {
            eprintln!("kubetrail follow: the producer could not flush before the deadline: {e}");
            return Ok(ExitCode::from(3));
        }
        eprintln!("kubetrail follow: stopped");
        return Ok(ExitCode::SUCCESS);
    }

    let sinks = long_running_sinks(
        &cfg,
        &args.pipeline,
        args.otlp_json.as_deref(),
        "--otlp-endpoint, --otlp-json or --kafka-brokers",
    )?;
    let (exporter, exporter_task) = Exporter::spawn(sinks, cfg.exporter());
    let (tx, rx) = worker_channel();
    let (mut followers, caught_up) = Followers::start(
        &section,
        &cluster,
        Downstream::Worker(tx),
        lookback(&cfg, false),
        max_record,
    )?;
    let worker = Worker::new(
        consumer(rx, caught_up),
        Pipeline::new(cfg.pipeline()),
        exporter,
        WorkerConfig {
            order: cfg.time.clone(),
            ..Default::default()
        },
    );
    let worker = tokio::spawn(worker.run(std::future::pending()));
    eprintln!(
        "kubetrail follow: following {} log(s) for cluster {cluster}",
        section.paths.len()
    );
    shutdown.await;
    // Stop reading; the worker drains the channel, emits every open family and flushes.
    followers.stop_reading().await;
    let drained = tokio::time::timeout(
        deadline,
        crate::finish::finish_pipeline(worker, exporter_task),
    )
    .await;
    match drained {
        Ok(Ok((report, export))) => {
            let clean = export.spans_dropped == 0 && export.finish_errors.is_empty();
            followers.write_final_state(clean)?;
            eprintln!(
                "kubetrail follow: stopped: {} events processed, {} spans exported, {} dropped",
                report.pipeline.events_in, export.spans_exported, export.spans_dropped
            );
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Ok(Err(e)) => {
            followers.write_final_state(false)?;
            Err(e)
        }
        Err(_) => {
            followers.write_final_state(false)?;
            eprintln!(
                "kubetrail follow: shutdown deadline of {}s passed before the exporter flushed; \
                 the state file keeps the lookback, so a restart reads it again",
                deadline.as_secs()
            );
            Ok(ExitCode::from(3))
        }
    }
}
