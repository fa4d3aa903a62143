//! `kubetrail timeline`: one object's family, from a dump, in the terminal — triage with no
//! Jaeger at all.

use std::collections::{BTreeSet, HashMap};
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use kubetrail_export::{ExportError, HtmlOptions, HtmlReport, SpanSink, TreeOptions, render_tree};
use kubetrail_model::ids::TraceId;
use kubetrail_model::{ObjectRef, SpanKind, SpanRecord, UnixNanos, parse_rfc3339_nanos};

use crate::cli::TimelineArgs;
use crate::replay::{html_options, run_files};

/// Keeps the spans of the traces that contain the object, and prints them on finish.
struct TimelineSink {
    target: ObjectRef,
    since: Option<UnixNanos>,
    until: Option<UnixNanos>,
    spans: Vec<SpanRecord>,
    color: bool,
    /// Write these spans as an HTML report instead of printing the tree.
    html: Option<(std::path::PathBuf, HtmlOptions)>,
    found: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TimelineSink {
    fn matches(&self, s: &SpanRecord) -> bool {
        s.kind == SpanKind::Object
            && s.attr_str("kubetrail.object.ref") == Some(self.target.to_string().as_str())
    }
}

#[async_trait::async_trait]
impl SpanSink for TimelineSink {
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        self.spans.extend_from_slice(batch);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), ExportError> {
        // A family cut into parts (aggregate.max_trace_spans) is one family: each part's
        // stand-in root names the family's main trace.
        let main_of: HashMap<TraceId, TraceId> = self
            .spans
            .iter()
            .filter_map(|s| {
                let main = TraceId::from_hex(s.attr_str("kubetrail.part.main_trace")?)?;
                Some((s.trace_id, main))
            })
            .collect();
        let family = |t: TraceId| main_of.get(&t).copied().unwrap_or(t);
        let traces: BTreeSet<TraceId> = self
            .spans
            .iter()
            .filter(|s| self.matches(s))
            .map(|s| family(s.trace_id))
            .collect();
        let in_range = |s: &SpanRecord| {
            s.kind == SpanKind::Object
                || (self.since.is_none_or(|t| s.end >= t)
                    && self.until.is_none_or(|t| s.start <= t))
        };
        let selected: Vec<SpanRecord> = self
            .spans
            .iter()
            .filter(|s| traces.contains(&family(s.trace_id)) && in_range(s))
            .cloned()
            .collect();
        self.found
            .store(!selected.is_empty(), std::sync::atomic::Ordering::Relaxed);
        if let Some((path, options)) = self.html.take() {
            let mut report = HtmlReport::new(options);
            report.add(&selected);
            let html = report.render();
            return tokio::fs::write(&path, html).await.map_err(|e| {
                ExportError::permanent("html", format!("cannot write {}: {e}", path.display()))
            });
        }
        let text = render_tree(&selected, TreeOptions { color: self.color });
        print!("{text}");
        Ok(())
    }

    fn name(&self) -> &'static str {
        "timeline"
    }
}

fn parse_time(flag: &str, v: Option<&str>) -> anyhow::Result<Option<UnixNanos>> {
    v.map(|s| {
        parse_rfc3339_nanos(s).with_context(|| {
            format!("{flag} {s:?}: expected an RFC 3339 time such as 2024-05-01T10:00:00Z")
        })
    })
    .transpose()
}

pub async fn run(args: TimelineArgs) -> anyhow::Result<ExitCode> {
    let target: ObjectRef = args.object.parse()?;
    let since = parse_time("--since", args.since.as_deref())?;
    let until = parse_time("--until", args.until.as_deref())?;
    let found = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let report = &args.report;
    let files = &args.files;
    let make_sink = |cfg: &crate::config::Config| -> anyhow::Result<Vec<Box<dyn SpanSink>>> {
        let html = match &report.html {
            Some(path) => {
                // Created now, so an unwritable path fails before the input is read.
                std::fs::File::create(path)
                    .with_context(|| format!("--html {}: cannot create it", path.display()))?;
                Some((path.clone(), html_options(report, files, cfg)))
            }
            None => None,
        };
        Ok(vec![Box::new(TimelineSink {
            target: target.clone(),
            since,
            until,
            spans: Vec::new(),
            color: std::io::stdout().is_terminal(),
            html,
            found: found.clone(),
        }) as Box<dyn SpanSink>])
    };
    let run = run_files(
        &args.files,
        crate::replay::ReadOrder::default(),
        &args.pipeline,
        make_sink,
        std::time::Duration::ZERO,
        false,
    )
    .await?;
    let code = run.finish("timeline")?;
    if !found.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("kubetrail timeline: {target} has no mutating requests in these files");
        return Ok(ExitCode::from(4));
    }
    Ok(code)
}
