//! A terminal rendering of traces as indented trees.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;

use kubetrail_model::ids::{SpanId, TraceId};
use kubetrail_model::{
    AttrValue, SpanEventRecord, SpanKind, SpanRecord, SpanStatus, UnixNanos, format_rfc3339,
};

use crate::{ExportError, SpanSink};

const SINK: &str = "tree";
/// Attribute values longer than this are cut in event lines.
const MAX_VALUE_CHARS: usize = 120;

/// How [`TreeSink`] renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeOptions {
    /// Use ANSI colours (for a terminal; off for files and pipes).
    pub color: bool,
}

/// Prints every trace as an indented tree when the run finishes: for a person reading a
/// replay in the terminal.
///
/// Memory: it holds every span it is given until [`finish`](SpanSink::finish), so it is meant
/// for human-sized dumps, not for a long-running server. Spans given twice (same trace and
/// span id, as at-least-once delivery may do) are shown once, the last copy winning.
///
/// See [`render_tree`] for the layout.
pub struct TreeSink {
    writer: Option<Box<dyn Write + Send>>,
    options: TreeOptions,
    spans: Vec<SpanRecord>,
}

impl std::fmt::Debug for TreeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeSink")
            .field("options", &self.options)
            .field("spans", &self.spans.len())
            .finish()
    }
}

impl TreeSink {
    /// A sink that renders into `writer` (usually standard output) on finish.
    pub fn new(writer: Box<dyn Write + Send>, options: TreeOptions) -> Self {
        TreeSink {
            writer: Some(writer),
            options,
            spans: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl SpanSink for TreeSink {
    /// Keeps the spans for [`finish`](SpanSink::finish); never fails.
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        self.spans.extend_from_slice(batch);
        Ok(())
    }

    /// Renders everything collected so far, writes and flushes it; the collected spans are
    /// then released (a second call prints only what arrived in between).
    async fn finish(&mut self) -> Result<(), ExportError> {
        let spans = std::mem::take(&mut self.spans);
        if spans.is_empty() {
            return Ok(());
        }
        let text = render_tree(&spans, self.options);
        let Some(mut writer) = self.writer.take() else {
            return Err(ExportError::permanent(
                SINK,
                "the output was lost after an earlier failure",
            ));
        };
        // Writing to a terminal or pipe blocks: keep it off the async workers.
        let joined = tokio::task::spawn_blocking(move || {
            let result = writer
                .write_all(text.as_bytes())
                .and_then(|()| writer.flush());
            (writer, result)
        })
        .await;
        match joined {
            Ok((writer, result)) => {
                self.writer = Some(writer);
                result.map_err(|e| {
                    ExportError::permanent(SINK, format!("cannot write the trace tree: {e}"))
                })
            }
            Err(e) => Err(ExportError::permanent(
                SINK,
                format!("the trace tree writer failed: {e}"),
            )),
        }
    }

    fn name(&self) -> &'static str {
        SINK
    }
}

/// Renders spans as one indented tree per trace.
///
/// * Traces are ordered by the start of their root (ties by trace id); within a span, child
///   spans and span events are ordered by time.
/// * An object span ([`SpanKind::Object`]) is a line like
///   `deployments.apps/shop/web  [10:00:00.000 → 10:03:12.345]` (its `kubetrail.object.ref`
///   attribute, or else its name, and its time range).
/// * A request span is a line like `10:00:00.123  +12ms  kubectl  create  201`: start time,
///   duration, service (the actor), name, and `http.response.status_code` when present.
/// * A span event is a line like `10:00:05.000  • Scheduled  key=value …`.
/// * Error spans end with `ERROR <message>`.
/// * Root-level lines show the date with the first time and end with the full trace id. A
///   span whose parent is not among the spans is shown at the root level of its trace, marked
///   `(orphan)` (`(cycle)` for spans whose parent chain loops).
/// * **Parts**: a family too big for one trace is cut into part traces (see
///   `kubetrail-aggregate`'s `parts`). A part's root span (attribute `kubetrail.part.stand_in`)
///   links to its owner's span (link attribute `kubetrail.link.rule = part-owner`); when that
///   span is among the spans, the part is shown under it, as
///   `… (part 2 of 9: 250 objects, 1750 requests)  trace <part trace id>`, so the whole family
///   reads as one tree.
///
/// All times are UTC. Nothing else is assumed about attributes.
pub fn render_tree(spans: &[SpanRecord], options: TreeOptions) -> String {
    let paint = Painter(options.color);
    // Deduplicate: the last copy of a (trace, span) wins.
    let mut latest: HashMap<(TraceId, SpanId), usize> = HashMap::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        latest.insert((s.trace_id, s.span_id), i);
    }
    let mut by_trace: HashMap<TraceId, Vec<&SpanRecord>> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if latest.get(&(s.trace_id, s.span_id)) == Some(&i) {
            by_trace.entry(s.trace_id).or_default().push(s);
        }
    }
    let traces: HashMap<TraceId, Trace<'_>> = by_trace
        .into_iter()
        .map(|(id, spans)| (id, Trace::new(id, spans)))
        .collect();
    // Parts go under their owner's span, when it is there.
    let mut grafts: HashMap<(TraceId, SpanId), Vec<&SpanRecord>> = HashMap::new();
    let mut grafted: HashSet<(TraceId, SpanId)> = HashSet::new();
    for t in traces.values() {
        for (root, mark) in &t.roots {
            if *mark != RootMark::Root {
                continue;
            }
            let Some(owner) = part_owner(root) else {
                continue;
            };
            if owner.0 != root.trace_id && latest.contains_key(&owner) {
                grafts.entry(owner).or_default().push(root);
                grafted.insert((root.trace_id, root.span_id));
            }
        }
    }
    let mut order: Vec<&Trace<'_>> = traces.values().collect();
    order.sort_by_key(|t| (t.order_key(), t.id));
    let forest = Forest {
        traces: &traces,
        grafts,
    };
    let mut out = String::new();
    let mut visited: HashSet<(TraceId, SpanId)> = HashSet::new();
    for trace in &order {
        for (root, mark) in &trace.roots {
            if !grafted.contains(&(root.trace_id, root.span_id)) {
                forest.render(root, *mark, &paint, &mut visited, &mut out);
            }
        }
    }
    // Parts whose owner was never reached (parts linking to each other in a loop): shown at
    // the root level, so that nothing is silently left out.
    for trace in &order {
        for (root, mark) in &trace.roots {
            if !visited.contains(&(root.trace_id, root.span_id)) {
                forest.render(root, *mark, &paint, &mut visited, &mut out);
            }
        }
    }
    out
}

/// The owner span a part's root stands in for, from its `part-owner` link.
fn part_owner(s: &SpanRecord) -> Option<(TraceId, SpanId)> {
    if s.attr("kubetrail.part.stand_in") != Some(&AttrValue::Bool(true)) {
        return None;
    }
    s.links
        .iter()
        .find(|l| {
            l.attributes.iter().any(|(k, v)| {
                k == "kubetrail.link.rule" && *v == AttrValue::Str("part-owner".into())
            })
        })
        .map(|l| (l.trace_id, l.span_id))
}

/// Why a span is shown at the root level.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RootMark {
    Root,
    Orphan,
    Cycle,
}

struct Trace<'a> {
    id: TraceId,
    /// Root-level spans, sorted.
    roots: Vec<(&'a SpanRecord, RootMark)>,
    children: HashMap<SpanId, Vec<&'a SpanRecord>>,
}

fn span_order(s: &SpanRecord) -> (UnixNanos, SpanId) {
    (s.start, s.span_id)
}

impl<'a> Trace<'a> {
    fn new(id: TraceId, spans: Vec<&'a SpanRecord>) -> Self {
        let present: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
        let mut roots = Vec::new();
        let mut children: HashMap<SpanId, Vec<&SpanRecord>> = HashMap::new();
        for s in &spans {
            match s.parent_span_id {
                None => roots.push((*s, RootMark::Root)),
                Some(p) if p == s.span_id || !present.contains(&p) => {
                    roots.push((*s, RootMark::Orphan))
                }
                Some(p) => children.entry(p).or_default().push(*s),
            }
        }
        for list in children.values_mut() {
            list.sort_by_key(|s| span_order(s));
        }
        // Spans whose parent chain loops are reachable from no root: find them and show them
        // at the root level too, so that nothing is silently left out.
        let mut reachable: HashSet<SpanId> = HashSet::with_capacity(spans.len());
        let mut stack: Vec<SpanId> = roots.iter().map(|(s, _)| s.span_id).collect();
        while let Some(id) = stack.pop() {
            if reachable.insert(id) {
                stack.extend(children.get(&id).into_iter().flatten().map(|c| c.span_id));
            }
        }
        let mut unreached: Vec<&SpanRecord> = spans
            .iter()
            .copied()
            .filter(|s| !reachable.contains(&s.span_id))
            .collect();
        unreached.sort_by_key(|s| span_order(s));
        for s in unreached {
            if reachable.contains(&s.span_id) {
                continue;
            }
            // Cut the loop at this span: it becomes a root-level entry, its subtree below it.
            roots.push((s, RootMark::Cycle));
            let mut stack = vec![s.span_id];
            while let Some(id) = stack.pop() {
                if reachable.insert(id) {
                    stack.extend(children.get(&id).into_iter().flatten().map(|c| c.span_id));
                }
            }
            if let Some(parent) = s.parent_span_id
                && let Some(siblings) = children.get_mut(&parent)
            {
                siblings.retain(|c| c.span_id != s.span_id);
            }
        }
        roots.sort_by_key(|(s, _)| span_order(s));
        Trace {
            id,
            roots,
            children,
        }
    }

    fn order_key(&self) -> UnixNanos {
        // The true root if there is one, else the earliest root-level span.
        self.roots
            .iter()
            .find(|(_, m)| *m == RootMark::Root)
            .or_else(|| self.roots.first())
            .map_or(UnixNanos::MAX, |(s, _)| s.start)
    }
}

/// Every trace, and the parts shown under their owners' spans.
struct Forest<'t, 'a> {
    traces: &'t HashMap<TraceId, Trace<'a>>,
    grafts: HashMap<(TraceId, SpanId), Vec<&'a SpanRecord>>,
}

impl<'a> Forest<'_, 'a> {
    fn render(
        &self,
        root: &'a SpanRecord,
        mark: RootMark,
        paint: &Painter,
        visited: &mut HashSet<(TraceId, SpanId)>,
        out: &mut String,
    ) {
        if !visited.insert((root.trace_id, root.span_id)) {
            return;
        }
        span_line(root, Some((root.trace_id, mark)), true, paint, out);
        // Depth-first, iteratively (deep chains must not overflow the stack). Each frame is
        // a node's remaining items (reversed: the next one last) and the prefix of their lines.
        let mut stack: Vec<(Vec<Item<'_>>, String)> = vec![(self.items(root), String::new())];
        while let Some((items, prefix)) = stack.last_mut() {
            let Some(item) = items.pop() else {
                stack.pop();
                continue;
            };
            let last = items.is_empty();
            out.push_str(prefix);
            out.push_str(&paint.dim(if last { "└─ " } else { "├─ " }));
            match item {
                Item::Event(e) => event_line(e, paint, out),
                Item::Span(s) => {
                    // A part's root under its owner: its own trace id is worth showing.
                    let part = (s.trace_id != root.trace_id && s.parent_span_id.is_none())
                        .then_some((s.trace_id, RootMark::Root));
                    span_line(s, part, false, paint, out);
                    let child_items = if visited.insert((s.trace_id, s.span_id)) {
                        self.items(s)
                    } else {
                        Vec::new()
                    };
                    if !child_items.is_empty() {
                        let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
                        stack.push((child_items, child_prefix));
                    }
                }
            }
        }
    }

    /// A span's events, child spans and parts, in reverse time order (events first on ties),
    /// so that `pop` yields them in time order.
    fn items(&self, span: &'a SpanRecord) -> Vec<Item<'a>> {
        let mut items: Vec<Item<'a>> = span.events.iter().map(Item::Event).collect();
        if let Some(trace) = self.traces.get(&span.trace_id) {
            items.extend(
                trace
                    .children
                    .get(&span.span_id)
                    .into_iter()
                    .flatten()
                    .map(|s| Item::Span(s)),
            );
        }
        items.extend(
            self.grafts
                .get(&(span.trace_id, span.span_id))
                .into_iter()
                .flatten()
                .map(|s| Item::Span(s)),
        );
        items.sort_by_key(|i| match i {
            Item::Event(e) => (e.time, 0, SpanId::default()),
            Item::Span(s) => (s.start, 1, s.span_id),
        });
        items.reverse();
        items
    }
}

enum Item<'a> {
    Event(&'a SpanEventRecord),
    Span(&'a SpanRecord),
}

/// One span's line; `root` is set for lines that show their trace id (root-level lines, and
/// parts under their owner), `top` for root-level lines (which show the date).
fn span_line(
    s: &SpanRecord,
    root: Option<(TraceId, RootMark)>,
    top: bool,
    paint: &Painter,
    out: &mut String,
) {
    let start = if top {
        date_time(s.start)
    } else {
        time_of_day(s.start)
    };
    match s.kind {
        SpanKind::Object => {
            let label = s.attr_str("kubetrail.object.ref").unwrap_or(&s.name);
            let _ = write!(
                out,
                "{}  {}",
                paint.bold(&clean(label)),
                paint.dim(&format!("[{start} → {}]", time_of_day(s.end)))
            );
        }
        SpanKind::Request => {
            let _ = write!(
                out,
                "{}  {}  {}  {}",
                paint.dim(&start),
                paint.dim(&format!("+{}", duration(s.end.saturating_sub(s.start)))),
                paint.cyan(&clean(&s.service)),
                clean(&s.name)
            );
            match s.attr("http.response.status_code") {
                Some(AttrValue::Int(code)) => {
                    let _ = write!(out, "  {}", paint.status(*code, &code.to_string()));
                }
                Some(AttrValue::Str(code)) => {
                    let _ = write!(
                        out,
                        "  {}",
                        paint.status(code.parse().unwrap_or(0), &clean(code))
                    );
                }
                _ => {}
            }
        }
    }
    if let SpanStatus::Error(message) = &s.status {
        let _ = write!(out, "  {}", paint.red(&format!("ERROR {}", clean(message))));
    }
    if s.attr("kubetrail.part.stand_in") == Some(&AttrValue::Bool(true)) {
        let int = |k: &str| match s.attr(k) {
            Some(AttrValue::Int(v)) => v.to_string(),
            _ => "?".to_owned(),
        };
        let _ = write!(
            out,
            "  {}",
            paint.yellow(&format!(
                "(part {} of {}: {} objects, {} requests)",
                int("kubetrail.part.index"),
                int("kubetrail.part.count"),
                int("kubetrail.part.objects"),
                int("kubetrail.part.requests")
            ))
        );
    }
    if let Some((trace, mark)) = root {
        match mark {
            RootMark::Root => {}
            RootMark::Orphan => {
                let _ = write!(out, "  {}", paint.yellow("(orphan)"));
            }
            RootMark::Cycle => {
                let _ = write!(out, "  {}", paint.yellow("(cycle)"));
            }
        }
        let _ = write!(out, "  {}", paint.dim(&format!("trace {trace}")));
    }
    out.push('\n');
}

fn event_line(e: &SpanEventRecord, paint: &Painter, out: &mut String) {
    let _ = write!(
        out,
        "{}  • {}",
        paint.dim(&time_of_day(e.time)),
        clean(&e.name)
    );
    for (k, v) in &e.attributes {
        let _ = write!(out, "  {}={}", paint.dim(&clean(k)), value(v));
    }
    out.push('\n');
}

/// Whether a character must not reach a terminal raw: C0/C1 controls (newlines, `ESC`
/// sequences that recolour or rewrite the screen) and the Unicode bidirectional overrides
/// and isolates (text that displays in another order than it reads).
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text from the input (object names, user agents, messages, values) made safe to print:
/// unsafe characters become their Rust escape (`\n`, `\u{1b}`), so they are seen, not obeyed.
pub(crate) fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe_for_terminal) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_for_terminal(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn value(v: &AttrValue) -> String {
    let s = match v {
        AttrValue::Str(s)
            if s.is_empty()
                || s.chars()
                    .any(|c| c.is_whitespace() || is_unsafe_for_terminal(c)) =>
        {
            clean(&format!("{s:?}")).into_owned()
        }
        AttrValue::Str(s) => s.clone(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::StrList(items) => clean(&format!("[{}]", items.join(","))).into_owned(),
    };
    if s.chars().count() > MAX_VALUE_CHARS {
        let mut cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
        cut.push('…');
        cut
    } else {
        s
    }
}

/// `HH:MM:SS.mmm`, UTC.
fn time_of_day(t: UnixNanos) -> String {
    let s = format_rfc3339(t);
    s.split_once('T')
        .and_then(|(_, time)| time.get(..12))
        .unwrap_or(&s)
        .to_owned()
}

/// `YYYY-MM-DD HH:MM:SS.mmm`, UTC.
fn date_time(t: UnixNanos) -> String {
    let s = format_rfc3339(t);
    match s.split_once('T') {
        Some((date, time)) => format!("{date} {}", time.get(..12).unwrap_or(time)),
        None => s,
    }
}

/// A short human duration: `450µs`, `12ms`, `1.234s`, `3m12s`, `2h05m`.
fn duration(nanos: i64) -> String {
    let nanos = nanos.max(0);
    let ms = nanos / 1_000_000;
    if nanos < 1_000_000 {
        format!("{}µs", nanos / 1_000)
    } else if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{:03}s", ms / 1_000, ms % 1_000)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// ANSI styling, or none.
struct Painter(bool);

impl Painter {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
    fn red(&self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn cyan(&self, s: &str) -> String {
        self.wrap("36", s)
    }
    fn status(&self, code: i64, s: &str) -> String {
        match code {
            200..=399 => self.wrap("32", s),
            400..=599 => self.wrap("31", s),
            _ => s.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kubetrail_model::ids::{SpanId, TraceId};

    use super::*;

    /// 2024-05-01T10:00:00Z
    const T0: UnixNanos = 1_714_557_600_000_000_000;
    const MS: i64 = 1_000_000;

    fn object(
        trace: u8,
        id: u8,
        parent: Option<u8>,
        reference: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            name: reference.split('/').next().unwrap_or(reference).to_owned(),
            kind: SpanKind::Object,
            start: T0 + start_ms * MS,
            end: T0 + end_ms * MS,
            service: "kubetrail".into(),
            cluster: "prod".into(),
            attributes: vec![(
                "kubetrail.object.ref".into(),
                AttrValue::Str(reference.into()),
            )],
            events: Vec::new(),
            links: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    /// A request span at `(start_ms, duration_ms)` after T0.
    fn request(
        trace: u8,
        id: u8,
        parent: u8,
        actor: &str,
        name: &str,
        code: i64,
        at: (i64, i64),
    ) -> SpanRecord {
        let (start_ms, dur_ms) = at;
        SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: Some(SpanId([parent; 8])),
            name: name.into(),
            kind: SpanKind::Request,
            start: T0 + start_ms * MS,
            end: T0 + (start_ms + dur_ms) * MS,
            service: actor.into(),
            cluster: "prod".into(),
            attributes: vec![("http.response.status_code".into(), AttrValue::Int(code))],
            events: Vec::new(),
            links: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    /// Names, actors, messages and values from the input cannot write to the terminal: a
    /// newline cannot fake a line, `ESC[31m` cannot recolour, a bidi override cannot reorder.
    #[test]
    fn control_characters_from_the_input_are_escaped() {
        let mut pod = object(1, 1, None, "pods/shop/evil\n└─ fake line\u{1b}[31m", 0, 10);
        pod.events.push(SpanEventRecord {
            time: T0,
            name: "Bad\u{1b}]0;title\u{7}".into(),
            attributes: vec![(
                "k8s.event.message".into(),
                AttrValue::Str("x\u{202e}gnp.exe".into()),
            )],
        });
        let mut req = request(1, 2, 1, "kubectl\r\u{9b}2J", "patch pods\n", 500, (1, 1));
        req.status = SpanStatus::Error("boom\u{1b}[2J".into());
        let text = render_tree(&[pod, req], TreeOptions { color: false });
        for bad in ['\u{1b}', '\r', '\u{7}', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(bad), "{bad:?} in {text}");
        }
        // Each span and event is one line: no newline from the input.
        assert_eq!(
            text.lines().filter(|l| !l.trim().is_empty()).count(),
            3,
            "{text}"
        );
        assert!(text.contains(r"evil\n└─ fake line\u{1b}[31m"), "{text}");
        assert!(text.contains(r"kubectl\r\u{9b}2J"), "{text}");
    }

    /// Deployment → ReplicaSet → Pod, each with its requests, one failed; given out of order.
    fn family() -> Vec<SpanRecord> {
        let mut pod = object(0x4b, 3, Some(2), "pods/shop/web-7d4b9-x2x9q", 300, 192_345);
        pod.events.push(SpanEventRecord {
            time: T0 + 1_000 * MS,
            name: "Scheduled".into(),
            attributes: vec![(
                "k8s.event.message".into(),
                AttrValue::Str("assigned to node-1".into()),
            )],
        });
        let mut denied = request(
            0x4b,
            0x14,
            3,
            "kubelet",
            "patch pods/status",
            403,
            (2_000, 4),
        );
        denied.status = SpanStatus::Error("forbidden".into());
        vec![
            denied,
            pod,
            request(
                0x4b,
                0x13,
                3,
                "kube-scheduler",
                "create pods/binding",
                201,
                (800, 2),
            ),
            object(
                0x4b,
                2,
                Some(1),
                "replicasets.apps/shop/web-7d4b9",
                200,
                192_345,
            ),
            request(
                0x4b,
                0x12,
                2,
                "replicaset-controller",
                "create pods",
                201,
                (290, 9),
            ),
            object(0x4b, 1, None, "deployments.apps/shop/web", 0, 192_345),
            request(0x4b, 0x10, 1, "kubectl", "create", 201, (123, 12)),
            request(
                0x4b,
                0x11,
                2,
                "deployment-controller",
                "create replicasets",
                201,
                (195, 3),
            ),
        ]
    }

    #[test]
    fn renders_a_family_as_a_tree() {
        let got = render_tree(&family(), TreeOptions { color: false });
        let expected = "\
deployments.apps/shop/web  [2024-05-01 10:00:00.000 → 10:03:12.345]  trace 4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b
├─ 10:00:00.123  +12ms  kubectl  create  201
└─ replicasets.apps/shop/web-7d4b9  [10:00:00.200 → 10:03:12.345]
   ├─ 10:00:00.195  +3ms  deployment-controller  create replicasets  201
   ├─ 10:00:00.290  +9ms  replicaset-controller  create pods  201
   └─ pods/shop/web-7d4b9-x2x9q  [10:00:00.300 → 10:03:12.345]
      ├─ 10:00:00.800  +2ms  kube-scheduler  create pods/binding  201
      ├─ 10:00:01.000  • Scheduled  k8s.event.message=\"assigned to node-1\"
      └─ 10:00:02.000  +4ms  kubelet  patch pods/status  403  ERROR forbidden
";
        assert_eq!(got, expected, "\n--- got ---\n{got}");
    }

    #[test]
    fn orders_traces_marks_orphans_and_dedupes() {
        let mut spans = vec![
            // A later trace, given first.
            object(0x02, 1, None, "jobs.batch/ci/build", 60_000, 61_500),
            // Its orphan: the parent span is not in the set.
            request(0x02, 7, 9, "kubectl", "delete", 200, (60_500, 1)),
        ];
        spans.extend(family().into_iter().filter(|s| s.span_id.0[0] <= 2));
        // A duplicate with a later end: the last copy wins.
        spans.push(object(0x02, 1, None, "jobs.batch/ci/build", 60_000, 62_000));
        let got = render_tree(&spans, TreeOptions::default());
        let expected = "\
deployments.apps/shop/web  [2024-05-01 10:00:00.000 → 10:03:12.345]  trace 4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b
└─ replicasets.apps/shop/web-7d4b9  [10:00:00.200 → 10:03:12.345]
jobs.batch/ci/build  [2024-05-01 10:01:00.000 → 10:01:02.000]  trace 02020202020202020202020202020202
2024-05-01 10:01:00.500  +1ms  kubectl  delete  200  (orphan)  trace 02020202020202020202020202020202
";
        assert_eq!(got, expected, "\n--- got ---\n{got}");
    }

    #[test]
    fn cycles_are_shown_not_lost() {
        let a = object(0x05, 1, Some(2), "a", 0, 1);
        let b = object(0x05, 2, Some(1), "b", 5, 6);
        let got = render_tree(&[a, b], TreeOptions::default());
        assert_eq!(got.lines().count(), 2, "{got}");
        assert!(
            got.starts_with("a  [2024-05-01 10:00:00.000 → 10:00:00.001]  (cycle)"),
            "{got}"
        );
        assert!(got.contains("└─ b  [10:00:00.005 → 10:00:00.006]"), "{got}");
    }

    #[test]
    fn missing_attributes_are_simply_not_shown() {
        let mut s = request(0x06, 1, 1, "kube-controller-manager", "update", 0, (0, 0));
        s.parent_span_id = None;
        s.attributes.clear();
        s.kind = SpanKind::Request;
        let mut o = object(0x06, 2, Some(1), "x", 0, 1);
        o.attributes.clear();
        o.name = "configmaps".into();
        let got = render_tree(&[s, o], TreeOptions::default());
        assert_eq!(
            got,
            "2024-05-01 10:00:00.000  +0µs  kube-controller-manager  update  trace 06060606060606060606060606060606\n\
             └─ configmaps  [10:00:00.000 → 10:00:00.001]\n"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = render_tree(&family(), TreeOptions { color: false });
        let coloured = render_tree(&family(), TreeOptions { color: true });
        assert!(!plain.contains('\x1b'));
        assert!(coloured.contains("\x1b[1;31mERROR forbidden\x1b[0m"));
        let stripped: String = {
            let mut out = String::new();
            let mut rest = coloured.as_str();
            while let Some(i) = rest.find('\x1b') {
                out.push_str(&rest[..i]);
                rest = &rest[i..];
                rest = rest.find('m').map_or("", |j| &rest[j + 1..]);
            }
            out.push_str(rest);
            out
        };
        assert_eq!(stripped, plain);
    }

    #[test]
    fn parts_are_shown_under_their_owner() {
        // The main trace (0x4b): Deployment → ReplicaSet; part 1 (0x71): a stand-in for the
        // ReplicaSet linking back to it, with a Pod and its request.
        let mut spans = family()
            .into_iter()
            .filter(|s| s.span_id.0[0] <= 2)
            .collect::<Vec<_>>();
        let mut stand_in = object(
            0x71,
            0x30,
            None,
            "replicasets.apps/shop/web-7d4b9",
            250,
            900,
        );
        stand_in.attributes.extend([
            ("kubetrail.part.stand_in".into(), AttrValue::Bool(true)),
            ("kubetrail.part.index".into(), AttrValue::Int(1)),
            ("kubetrail.part.count".into(), AttrValue::Int(3)),
            ("kubetrail.part.objects".into(), AttrValue::Int(1)),
            ("kubetrail.part.requests".into(), AttrValue::Int(1)),
        ]);
        stand_in.links.push(kubetrail_model::SpanLinkRecord {
            trace_id: TraceId([0x4b; 16]),
            span_id: SpanId([2; 8]),
            attributes: vec![(
                "kubetrail.link.rule".into(),
                AttrValue::Str("part-owner".into()),
            )],
        });
        spans.push(stand_in.clone());
        spans.push(object(
            0x71,
            0x31,
            Some(0x30),
            "pods/shop/web-7d4b9-zz",
            260,
            900,
        ));
        spans.push(request(
            0x71,
            0x32,
            0x31,
            "kubelet",
            "patch pods/status",
            200,
            (300, 1),
        ));
        let got = render_tree(&spans, TreeOptions::default());
        let expected = "\
deployments.apps/shop/web  [2024-05-01 10:00:00.000 → 10:03:12.345]  trace 4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b
└─ replicasets.apps/shop/web-7d4b9  [10:00:00.200 → 10:03:12.345]
   └─ replicasets.apps/shop/web-7d4b9  [10:00:00.250 → 10:00:00.900]  (part 1 of 3: 1 objects, 1 requests)  trace 71717171717171717171717171717171
      └─ pods/shop/web-7d4b9-zz  [10:00:00.260 → 10:00:00.900]
         └─ 10:00:00.300  +1ms  kubelet  patch pods/status  200
";
        assert_eq!(got, expected, "\n--- got ---\n{got}");
        // Without the owner's trace, the part is shown on its own, marked.
        let alone = render_tree(&spans[2..], TreeOptions::default());
        assert!(
            alone.starts_with("replicasets.apps/shop/web-7d4b9  [2024-05-01 10:00:00.250 → 10:00:00.900]  (part 1 of 3: 1 objects, 1 requests)  trace 7171"),
            "{alone}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(450_000), "450µs");
        assert_eq!(duration(12 * MS), "12ms");
        assert_eq!(duration(1_234 * MS), "1.234s");
        assert_eq!(duration(192_345 * MS), "3m12s");
        assert_eq!(duration(7_500_000 * MS), "2h05m");
    }

    /// A `Write` whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn sink_prints_on_finish() {
        let out = Shared::default();
        let mut sink = TreeSink::new(Box::new(out.clone()), TreeOptions::default());
        assert_eq!(sink.name(), "tree");
        let spans = family();
        sink.export(&spans[..4]).await.expect("export");
        sink.export(&spans[4..]).await.expect("export");
        assert!(
            out.0.lock().expect("lock").is_empty(),
            "nothing before finish"
        );
        sink.finish().await.expect("finish");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text, render_tree(&spans, TreeOptions::default()));
        // Finishing again prints nothing new.
        sink.finish().await.expect("finish");
        assert_eq!(out.0.lock().expect("lock").len(), text.len());
    }
}
