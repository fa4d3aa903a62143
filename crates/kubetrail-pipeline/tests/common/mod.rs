//! Helpers shared by the pipeline's integration tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use kubetrail_model::{AuditEvent, SpanKind, SpanRecord};
use kubetrail_pipeline::{Pipeline, PipelineConfig};
use kubetrail_source::EventReader;

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/audit-samples")
}

pub fn read_events(path: &Path) -> Vec<AuditEvent> {
    EventReader::open(path.to_str().unwrap())
        .unwrap()
        .map(|r| r.unwrap().unwrap())
        .collect()
}

pub fn run(events: impl IntoIterator<Item = AuditEvent>) -> (Vec<SpanRecord>, Pipeline) {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut out = vec![];
    for e in events {
        p.push("test", e, &mut out);
    }
    p.finish(&mut out);
    (out, p)
}

/// A compact, order-independent outline of the traces: each trace's spans as an indented
/// tree, children sorted by (start, name). Ids are left out (they are hashes), but the tree
/// they form is exactly what is shown.
pub fn outline(spans: &[SpanRecord]) -> String {
    let mut by_trace: BTreeMap<String, Vec<&SpanRecord>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.to_string()).or_default().push(s);
    }
    let mut traces: Vec<(i64, String)> = vec![];
    for spans in by_trace.values() {
        let ids: HashMap<_, _> = spans.iter().map(|s| (s.span_id, *s)).collect();
        let mut children: HashMap<Option<kubetrail_model::ids::SpanId>, Vec<&SpanRecord>> =
            HashMap::new();
        for s in spans {
            let parent = s.parent_span_id.filter(|p| ids.contains_key(p));
            children.entry(parent).or_default().push(s);
        }
        for v in children.values_mut() {
            v.sort_by_key(|s| (s.start, s.name.clone(), s.span_id));
        }
        let mut text = String::new();
        fn walk(
            out: &mut String,
            s: &SpanRecord,
            depth: usize,
            children: &HashMap<Option<kubetrail_model::ids::SpanId>, Vec<&SpanRecord>>,
        ) {
            let indent = "  ".repeat(depth);
            match s.kind {
                SpanKind::Object => {
                    let r = s.attr_str("kubetrail.object.ref").unwrap_or("?");
                    let _ = writeln!(
                        out,
                        "{indent}{r} [{}]",
                        s.attr("kubetrail.object.requests")
                            .map(|v| format!("{v:?}"))
                            .unwrap_or_default()
                    );
                }
                SpanKind::Request => {
                    let code = s
                        .attr("http.response.status_code")
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default();
                    let err = match &s.status {
                        kubetrail_model::SpanStatus::Error(m) => format!(" ERROR {m}"),
                        _ => String::new(),
                    };
                    let _ = writeln!(out, "{indent}- {} by {} {code}{err}", s.name, s.service);
                }
            }
            for c in children.get(&Some(s.span_id)).into_iter().flatten() {
                walk(out, c, depth + 1, children);
            }
        }
        let roots = children.get(&None).cloned().unwrap_or_default();
        for r in &roots {
            if r.parent_span_id.is_some() {
                let _ = writeln!(text, "(orphan, parent not in output)");
            }
            walk(&mut text, r, 0, &children);
        }
        traces.push((roots.first().map_or(0, |r| r.start), text));
    }
    traces.sort();
    traces
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join("\n")
}
