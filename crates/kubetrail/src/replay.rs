//! `kubetrail replay`: audit files → pipeline → sinks, on the events' own clock.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use kubetrail_export::{
    ExportReport, Exporter, HtmlOptions, HtmlReportSink, SpanSink, TreeOptions, TreeSink,
};
use kubetrail_model::AuditEvent;
use kubetrail_pipeline::{Pipeline, PipelineStats};
use kubetrail_queue::AuditBatch;
use kubetrail_queue::embedded::EmbeddedProducer;
use kubetrail_source::Malformed;
use kubetrail_source::inputs::{self, InputChain};
use kubetrail_source::merge::{ChainReader, Record, TimeMerge};
use kubetrail_worker::{Worker, WorkerConfig};

use crate::cli::{PipelineArgs, ReplayArgs, ReportArgs};
use crate::config::{Config, DEFAULT_CLUSTER, export_sinks};

/// Events per batch published into the queue.
const BATCH_EVENTS: usize = 1024;
/// Events the replay queue holds (bounds memory between reading and processing).
const QUEUE_EVENTS: usize = 32 * BATCH_EVENTS;
/// Malformed records listed in the summary.
const SHOWN_MALFORMED: usize = 10;

/// Exit code when some spans could not be exported.
const EXIT_EXPORT_FAILED: u8 = 3;
/// Exit code when the input held no audit event at all.
const EXIT_NO_EVENTS: u8 = 4;

/// The config file with the flags and environment applied.
pub(crate) fn effective_config(args: &PipelineArgs) -> anyhow::Result<(Config, String)> {
    let mut cfg = Config::load(args.config.as_deref())?;
    crate::config::resolve_redact_salt(&mut cfg, crate::config::SaltEnv::from_process())?;
    if let Some(w) = args.window {
        cfg.aggregate.window = w;
    }
    if let Some(l) = args.linger {
        cfg.aggregate.linger = l;
    }
    if let Some(l) = args.lateness {
        cfg.time.lateness = l;
    }
    if cfg.aggregate.window.is_zero() {
        anyhow::bail!("the window must be longer than zero");
    }
    if let Some(n) = args.max_trace_spans {
        cfg.aggregate.max_trace_spans = n;
    }
    if cfg.aggregate.max_trace_spans < kubetrail_aggregate::MIN_TRACE_SPANS {
        anyhow::bail!(
            "aggregate.max_trace_spans (--max-trace-spans) is {}: it must be at least {} (a part trace holds its stand-in and a few objects)",
            cfg.aggregate.max_trace_spans,
            kubetrail_aggregate::MIN_TRACE_SPANS
        );
    }
    let cluster = args
        .cluster
        .clone()
        .or(cfg.cluster.clone())
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_owned());
    Ok((cfg, cluster))
}

#[derive(Default)]
struct ReadOutcome {
    events: u64,
    malformed: u64,
    shown: Vec<Malformed>,
    /// Records that are not Kubernetes audit records (cloud log entries of other services,
    /// control messages): skipped on purpose, not malformed.
    skipped: u64,
    shown_skipped: Vec<Malformed>,
    read_errors: Vec<String>,
    stats: PipelineStats,
    /// Events out of order by more than the look-ahead within their input.
    out_of_order: u64,
    order: kubetrail_pipeline::watermark::OrderStats,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let json_to_stdout = args
        .otlp_json
        .as_deref()
        .is_some_and(|p| p.as_os_str() == "-");
    if args.tree && json_to_stdout {
        anyhow::bail!("--tree and --otlp-json - both write to stdout: give --otlp-json a file");
    }
    let make_sinks = |cfg: &Config| -> anyhow::Result<Vec<Box<dyn SpanSink>>> {
        let mut sinks = export_sinks(
            cfg,
            &args.pipeline,
            args.otlp_json.as_deref(),
            kubetrail_export::RunKind::Finite,
        )?;
        if args.tree {
            let color = std::io::stdout().is_terminal();
            sinks.push(Box::new(TreeSink::new(
                Box::new(std::io::stdout()),
                TreeOptions { color },
            )));
        }
        if let Some(path) = &args.report.html {
            sinks.push(Box::new(html_sink(path, &args.report, &args.files, cfg)?));
        }
        crate::config::require_sinks(sinks, "--otlp-endpoint, --otlp-json, --tree or --html")
    };
    let read = ReadOrder {
        sequential: args.sequential,
        lookahead: args.lookahead,
    };
    let run = run_files(
        &args.files,
        read,
        &args.pipeline,
        make_sinks,
        args.export_timeout,
        !args.no_progress,
    )
    .await?;
    run.finish("replay")
}

/// The options of the HTML report: titled by the input files, linked to Jaeger when a URL is
/// given (flag, environment, or `server.jaeger_url` in the config file).
pub(crate) fn html_options(report: &ReportArgs, files: &[String], cfg: &Config) -> HtmlOptions {
    let names: Vec<&str> = files
        .iter()
        .map(|f| {
            std::path::Path::new(f)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(f)
        })
        .collect();
    HtmlOptions {
        title: format!("kubetrail report: {}", names.join(", ")),
        jaeger_url: report
            .jaeger_url
            .clone()
            .or_else(|| cfg.server.jaeger_url.clone()),
    }
}

fn html_sink(
    path: &std::path::Path,
    report: &ReportArgs,
    files: &[String],
    cfg: &Config,
) -> anyhow::Result<HtmlReportSink> {
    HtmlReportSink::create(path, html_options(report, files, cfg))
        .with_context(|| format!("--html {}", path.display()))
}

/// What reading files through the pipeline did.
pub(crate) struct FileRun {
    outcome: ReadOutcome,
    report: ExportReport,
    elapsed: Duration,
}

impl FileRun {
    /// Prints the summary and turns the outcome into an exit code.
    pub(crate) fn finish(self, command: &str) -> anyhow::Result<ExitCode> {
        print_summary(command, &self.outcome, &self.report, self.elapsed);
        if !self.outcome.read_errors.is_empty() {
            return Ok(ExitCode::FAILURE);
        }
        if self.report.spans_dropped > 0 || !self.report.finish_errors.is_empty() {
            return Ok(ExitCode::from(EXIT_EXPORT_FAILED));
        }
        if self.outcome.events == 0 {
            // Almost certainly the wrong file (binary data, another log, an empty capture):
            // say so rather than report a successful replay of nothing.
            eprintln!(
                "kubetrail {command}: error: the input holds no audit event ({} malformed records); \
                 expected audit.k8s.io Events as JSON lines, EventLists or arrays (gzip allowed)",
                self.outcome.malformed
            );
            return Ok(ExitCode::from(EXIT_NO_EVENTS));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// How replay inputs are read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadOrder {
    /// One after the other (one stream cut in pieces), not merged by time.
    pub sequential: bool,
    /// Events held in total to merge by time.
    pub lookahead: usize,
}

impl Default for ReadOrder {
    fn default() -> Self {
        ReadOrder {
            sequential: false,
            lookahead: crate::cli::DEFAULT_LOOKAHEAD,
        }
    }
}

/// Reads `files` through the pipeline into the sinks `make_sinks` builds (after every input
/// was listed and checked, so a typo fails before anything is created or sent).
pub(crate) async fn run_files(
    files: &[String],
    read: ReadOrder,
    pipeline: &PipelineArgs,
    make_sinks: impl FnOnce(&Config) -> anyhow::Result<Vec<Box<dyn SpanSink>>>,
    export_timeout: Duration,
    progress: bool,
) -> anyhow::Result<FileRun> {
    let started = Instant::now();
    let (cfg, cluster) = effective_config(pipeline)?;
    let mut chains = inputs::expand(files)?;
    if read.sequential {
        // One stream cut in pieces: every file in the order given (rotated ones in their
        // time order within each log).
        chains = vec![InputChain {
            files: chains.into_iter().flat_map(|c| c.files).collect(),
        }];
    }
    // Fail on an unreadable input before anything is created or sent.
    for f in chains.iter().flat_map(|c| &c.files) {
        if f != "-" {
            std::fs::File::open(f).with_context(|| format!("cannot open {f}"))?;
        }
    }
    let sinks = make_sinks(&cfg)?;
    let mut exporter_cfg = cfg.exporter();
    exporter_cfg.retry.max_elapsed = (!export_timeout.is_zero()).then_some(export_timeout);
    let (handle, exporter) = Exporter::spawn(sinks, exporter_cfg);

    let total: Option<u64> = chains
        .iter()
        .flat_map(|c| &c.files)
        .map(|f| std::fs::metadata(f).ok().map(|m| m.len()))
        .sum();
    let bar = if progress && std::io::stderr().is_terminal() {
        let bar = total.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    // The same path as a live server: a source publishes batches into the embedded queue and
    // one worker runs the pipeline and exports. Replays do not tick: time is the events' own.
    let queue_bytes = cfg.queue.bytes.max(1);
    let (producer, consumer) =
        kubetrail_queue::embedded::channel_bounded(QUEUE_EVENTS, queue_bytes);
    let worker = Worker::new(
        consumer,
        Pipeline::new(cfg.pipeline()),
        handle,
        WorkerConfig {
            tick: None,
            order: cfg.time.clone(),
        },
    );
    let worker = tokio::spawn(worker.run(std::future::pending()));

    let rt = tokio::runtime::Handle::current();
    let reader_bar = bar.clone();
    let mut outcome = tokio::task::spawn_blocking(move || {
        let max_record = cfg.source.max_record_bytes;
        let readers = chains
            .iter()
            .map(|c| ChainReader::new(c).with_max_record_bytes(max_record))
            .collect();
        // Sequential: as read, no look-ahead (the behaviour before merging by time).
        let lookahead = if read.sequential { 1 } else { read.lookahead };
        read_all(
            TimeMerge::new(readers, lookahead),
            &cluster,
            producer,
            queue_bytes,
            &rt,
            &reader_bar,
        )
    })
    .await
    .context("the replay reader stopped unexpectedly")??;
    let (worker_report, report) = crate::finish::finish_pipeline(worker, exporter).await?;
    outcome.stats = worker_report.pipeline;
    outcome.order = worker_report.order;
    bar.finish_and_clear();
    Ok(FileRun {
        outcome,
        report,
        elapsed: started.elapsed(),
    })
}
/// Reads the inputs merged by event time (one chain: in order) and publishes the events in
/// batches, waiting for room in the queue (backpressure from the pipeline and the exporter).
fn read_all(
    mut merged: TimeMerge<ChainReader>,
    cluster: &str,
    producer: EmbeddedProducer,
    queue_bytes: usize,
    rt: &tokio::runtime::Handle,
    bar: &ProgressBar,
) -> anyhow::Result<ReadOutcome> {
    let mut o = ReadOutcome::default();
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    // A batch is also cut by size, so a few huge events never make a batch larger than the
    // queue's byte bound (a quarter of it, so the pipeline always has work queued).
    let batch_bytes_limit = (queue_bytes / 4).max(1);
    let mut batch_bytes = 0usize;
    let publish = |events: Vec<AuditEvent>| -> anyhow::Result<()> {
        let batch = AuditBatch {
            cluster: cluster.to_owned(),
            // One merged stream: a single source for the pipeline's sequencer.
            source: Some("replay".to_owned()),
            events,
            ..Default::default()
        };
        rt.block_on(producer.publish_wait(batch))
            .context("the pipeline stopped")
    };
    while let Some(rec) = merged.next() {
        let rec: Record = rec;
        match rec {
            Ok(Ok(event)) => {
                o.events += 1;
                let size = kubetrail_queue::embedded::event_bytes(&event);
                if size > queue_bytes {
                    // Could never be queued: counted and reported like a malformed record.
                    o.malformed += 1;
                    let m = Malformed {
                        input: "(merged inputs)".to_owned(),
                        line: 0,
                        item: None,
                        skipped: false,
                        reason: format!(
                            "event {} holds about {size} bytes, more than queue.bytes ({queue_bytes})",
                            event.audit_id
                        ),
                    };
                    tracing::warn!(%m, "audit event too large for the queue skipped");
                    if o.shown.len() < SHOWN_MALFORMED {
                        o.shown.push(m);
                    }
                    continue;
                }
                if !batch.is_empty() && batch_bytes + size > batch_bytes_limit {
                    publish(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH_EVENTS),
                    ))?;
                    batch_bytes = 0;
                }
                batch_bytes += size;
                batch.push(event);
                if batch.len() >= BATCH_EVENTS {
                    batch_bytes = 0;
                    publish(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH_EVENTS),
                    ))?;
                    bar.set_position(merged.inputs().map(ChainReader::bytes_read).sum());
                    bar.set_message(format!("{} events", o.events));
                }
            }
            Ok(Err(m)) if m.skipped => {
                o.skipped += 1;
                tracing::debug!(input = %m.input, line = m.line, reason = %m.reason, "record without a Kubernetes audit event skipped");
                if o.shown_skipped.len() < SHOWN_MALFORMED {
                    o.shown_skipped.push(m);
                }
            }
            Ok(Err(m)) => {
                o.malformed += 1;
                tracing::debug!(input = %m.input, line = m.line, reason = %m.reason, "malformed audit record skipped");
                if o.shown.len() < SHOWN_MALFORMED {
                    o.shown.push(m);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "input unreadable");
                o.read_errors.push(kubetrail_export::error_chain(&e));
            }
        }
    }
    if !batch.is_empty() {
        publish(batch)?;
    }
    o.out_of_order = merged.out_of_order();
    Ok(o)
}

fn print_summary(command: &str, o: &ReadOutcome, r: &ExportReport, elapsed: Duration) {
    let s = &o.stats;
    let a = &s.aggregate;
    let filtered: Vec<String> = s.filtered.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "kubetrail {command}: {} events read in {:.2?}",
        o.events, elapsed
    );
    eprintln!(
        "  filtered out: {}{}",
        s.filtered_total(),
        if filtered.is_empty() {
            String::new()
        } else {
            format!(" ({})", filtered.join(", "))
        }
    );
    eprintln!(
        "  requests: {} spans ({} earlier stages merged, {} repeats dropped, {} without a final stage, {} on collections, {} with owners inferred from names, {} without timestamps, {} Kubernetes Events placed on their objects, {} not placeable)",
        a.request_spans,
        s.stages_merged,
        s.duplicates,
        s.incomplete,
        s.on_collection,
        s.inferred_owners,
        s.untimed,
        s.kube_events,
        s.kube_events_unplaced
    );
    if s.owner_chains_cut + s.owner_cycles > 0 {
        eprintln!(
            "  owners: {} requests about objects whose owner chain is longer than link.max_depth (each its own trace, linked to its owner), {} about objects in owner cycles (rooted at the cycle's least member)",
            s.owner_chains_cut, s.owner_cycles
        );
    }
    eprintln!(
        "  objects: {} spans in {} family segments ({} continued, {} recreated objects)",
        a.object_spans, a.families_emitted, a.continuations, a.recreations
    );
    if a.parts > 0 {
        eprintln!(
            "  parts: {} traces cut off families above aggregate.max_trace_spans ({} stand-in spans, {} requests under stand-ins)",
            a.parts, a.stand_in_spans, a.requests_under_stand_ins
        );
    }
    let per_sink: Vec<String> = r.per_sink.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "  exported: {} spans in {} batches ({}), {} retries, {} dropped",
        r.spans_exported,
        r.batches,
        per_sink.join(", "),
        r.retries,
        r.spans_dropped
    );
    let t = &o.order;
    if s.late + t.ahead + t.ahead_dropped + t.forced + o.out_of_order > 0 {
        eprintln!(
            "  time order: {} late requests (marked kubetrail.late), {} events beyond the look-ahead in their input, {} far ahead set aside ({} dropped), {} released early (memory bound), {} jumps followed",
            s.late, o.out_of_order, t.ahead, t.ahead_dropped, t.forced, t.jumps
        );
    }
    print_records(
        "skipped (not Kubernetes audit records)",
        o.skipped,
        &o.shown_skipped,
    );
    print_records("malformed records skipped", o.malformed, &o.shown);
    for e in &o.read_errors {
        eprintln!("  error: {e}");
    }
    for (sink, e) in &r.finish_errors {
        eprintln!("  error: {sink} could not finish: {e}");
    }
}

/// One line of the summary: how many records of a kind, the first few of them, and how many
/// more were not shown.
fn print_records(what: &str, count: u64, shown: &[Malformed]) {
    if count == 0 {
        return;
    }
    eprintln!("  {what}: {count}");
    for m in shown {
        eprintln!("    {m}");
    }
    let hidden = count.saturating_sub(shown.len() as u64);
    if hidden > 0 {
        eprintln!("    … and {hidden} more (--log-level debug lists them all)");
    }
}
