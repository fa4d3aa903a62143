//! A self-contained HTML report: the families of a dump as Gantt timelines, for people who
//! hold an audit log but no Jaeger (a support bundle, a CI artifact, an incident's logs).
//!
//! [`HtmlReportSink`] is a [`SpanSink`] like the others, fed by the same spans after the same
//! redaction, so nothing reaches the file that would not reach Jaeger. It writes **one file**
//! with the page's script, styles and data inline (no network access when opened: it works
//! from a mail attachment or an air-gapped laptop).
//!
//! # Data
//!
//! Spans are reduced as they arrive to compact records (every string interned in one table,
//! times in microseconds since the earliest span), so memory and the file grow with what the
//! report shows, not with the spans' full attribute lists. At finish they are arranged for the
//! page:
//!
//! * **objects**, one per (cluster, `kubetrail.object.ref`) — all the segments and windows of an
//!   object are one row, with every (trace id, span id) pair it had;
//! * **families**, one per (cluster, `kubetrail.family.root`) — so a family cut into several
//!   traces (windows, segments, parts) is still one tree;
//! * **requests**, sorted by object then time, each on its object's row (found through its
//!   parent span, else through its own `kubetrail.object.ref`).
//!
//! The page (`html/report.js`, `html/report.css`, hand-written, no dependencies) renders only
//! the rows in view, so a 1,200-replica rollout scrolls smoothly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kubetrail_model::ids::{SpanId, TraceId};
use kubetrail_model::{AttrValue, SpanKind, SpanRecord, SpanStatus, UnixNanos};
use serde_json::{Value, json};

use crate::{ExportError, SpanSink};

const SINK: &str = "html";
const TEMPLATE: &str = include_str!("html/report.html");
const SCRIPT: &str = include_str!("html/report.js");
const STYLE: &str = include_str!("html/report.css");
/// Version of the embedded data layout (read by `report.js`).
pub const HTML_DATA_VERSION: u32 = 1;

/// Request flag bits in the embedded data (mirrored in `report.js`).
mod flag {
    pub const ERROR: u32 = 1;
    pub const WARNING: u32 = 2;
    pub const STATUS: u32 = 4;
    pub const NOOP: u32 = 8;
    pub const INCOMPLETE: u32 = 16;
    pub const KUBE_EVENT: u32 = 32;
}

/// How [`HtmlReportSink`] renders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtmlOptions {
    /// The page title (e.g. the input file names).
    pub title: String,
    /// Jaeger UI base URL: when set, every object and request links to its trace there.
    pub jaeger_url: Option<String>,
}

/// Writes the spans it is given as one self-contained HTML report on
/// [`finish`](SpanSink::finish).
///
/// The file is created (truncated) by [`create`](Self::create), so an unwritable path fails
/// before any work is done. Memory: a compact copy of every span until finish (see the module
/// docs) — meant for dumps, not for a long-running server. Spans given twice (same trace and
/// span id) are kept once, the last copy winning.
pub struct HtmlReportSink {
    path: PathBuf,
    file: Option<std::fs::File>,
    report: HtmlReport,
}

impl std::fmt::Debug for HtmlReportSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HtmlReportSink")
            .field("path", &self.path)
            .field("spans", &self.report.len())
            .finish_non_exhaustive()
    }
}

impl HtmlReportSink {
    /// Creates (or truncates) the report file at `path`.
    pub fn create(path: impl AsRef<Path>, options: HtmlOptions) -> Result<Self, ExportError> {
        let path = path.as_ref().to_owned();
        let file = std::fs::File::create(&path).map_err(|e| {
            ExportError::permanent(SINK, format!("cannot create {}: {e}", path.display()))
        })?;
        Ok(HtmlReportSink {
            path,
            file: Some(file),
            report: HtmlReport::new(options),
        })
    }
}

#[async_trait::async_trait]
impl SpanSink for HtmlReportSink {
    /// Keeps a compact copy of the spans for [`finish`](SpanSink::finish); never fails.
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        self.report.add(batch);
        Ok(())
    }

    /// Renders the report and writes it (once: a second call does nothing).
    async fn finish(&mut self) -> Result<(), ExportError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let html = self.report.render();
        let path = self.path.clone();
        let joined = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = file;
            file.write_all(html.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        })
        .await;
        match joined {
            Ok(result) => result.map_err(|m| ExportError::permanent(SINK, m)),
            Err(e) => Err(ExportError::permanent(
                SINK,
                format!("the report writer failed: {e}"),
            )),
        }
    }

    fn name(&self) -> &'static str {
        SINK
    }
}

/// String table: every string once, referred to by index (0 is the empty string = none).
#[derive(Default)]
struct Strings {
    index: HashMap<String, u32>,
    list: Vec<String>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.id("");
        s
    }

    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.list.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    fn get(&self, i: u32) -> &str {
        self.list.get(i as usize).map_or("", String::as_str)
    }
}

/// What the report keeps of an object span.
struct ObjSpan {
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    cluster: u32,
    oref: u32,
    kind: u32,
    namespace: u32,
    name: u32,
    uid: u32,
    root: u32,
    start: UnixNanos,
    end: UnixNanos,
    deleted: bool,
}

/// A change of a diff: (0 added | 1 changed | 2 removed, path, old, new).
type Change = (u8, u32, u32, u32);

/// What the report keeps of a request span.
struct Req {
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    cluster: u32,
    oref: u32,
    namespace: u32,
    obj_name: u32,
    start: UnixNanos,
    end: UnixNanos,
    actor: u32,
    name: u32,
    verb: u32,
    code: i64,
    flags: u32,
    user: u32,
    user_agent: u32,
    audit_id: u32,
    error: u32,
    event_message: u32,
    changes: Vec<Change>,
    more_changes: u32,
    /// Changes counted by the pipeline (`kubetrail.diff.changes`); -1 = no prior state.
    diff_count: i64,
    snapshot: u32,
}

#[derive(Clone, Copy)]
enum Slot {
    Object(usize),
    Request(usize),
}

/// The report under construction: spans in, HTML out. [`HtmlReportSink`] is this plus a file;
/// `kubetrail timeline --html` uses it directly on the spans it selected.
pub struct HtmlReport {
    options: HtmlOptions,
    strings: Strings,
    objects: Vec<Option<ObjSpan>>,
    requests: Vec<Option<Req>>,
    seen: HashMap<(TraceId, SpanId), Slot>,
}

impl std::fmt::Debug for HtmlReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HtmlReport")
            .field("spans", &self.len())
            .finish_non_exhaustive()
    }
}

fn str_attr<'a>(s: &'a SpanRecord, key: &str) -> &'a str {
    s.attr_str(key).unwrap_or("")
}

fn int_attr(s: &SpanRecord, key: &str) -> Option<i64> {
    match s.attr(key)? {
        AttrValue::Int(i) => Some(*i),
        AttrValue::Str(v) => v.parse().ok(),
        _ => None,
    }
}

fn bool_attr(s: &SpanRecord, key: &str) -> bool {
    matches!(s.attr(key), Some(AttrValue::Bool(true)))
}

impl HtmlReport {
    /// An empty report.
    pub fn new(options: HtmlOptions) -> Self {
        HtmlReport {
            options,
            strings: Strings::new(),
            objects: Vec::new(),
            requests: Vec::new(),
            seen: HashMap::new(),
        }
    }

    /// Spans kept (after de-duplication).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no span was added.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Adds spans; a span already added (same trace and span id) is replaced.
    pub fn add(&mut self, batch: &[SpanRecord]) {
        for s in batch {
            let key = (s.trace_id, s.span_id);
            match s.kind {
                SpanKind::Object => {
                    let o = self.object_span(s);
                    match self.seen.get(&key) {
                        Some(Slot::Object(i)) => self.objects[*i] = Some(o),
                        other => {
                            if let Some(Slot::Request(i)) = other {
                                self.requests[*i] = None;
                            }
                            self.seen.insert(key, Slot::Object(self.objects.len()));
                            self.objects.push(Some(o));
                        }
                    }
                }
                SpanKind::Request => {
                    let r = self.request_span(s);
                    match self.seen.get(&key) {
                        Some(Slot::Request(i)) => self.requests[*i] = Some(r),
                        other => {
                            if let Some(Slot::Object(i)) = other {
                                self.objects[*i] = None;
                            }
                            self.seen.insert(key, Slot::Request(self.requests.len()));
                            self.requests.push(Some(r));
                        }
                    }
                }
            }
        }
    }

    fn object_span(&mut self, s: &SpanRecord) -> ObjSpan {
        let st = &mut self.strings;
        let oref = match s.attr_str("kubetrail.object.ref") {
            Some(r) => r,
            None => &s.name,
        };
        ObjSpan {
            trace: s.trace_id,
            span: s.span_id,
            parent: s.parent_span_id,
            cluster: st.id(&s.cluster),
            oref: st.id(oref),
            kind: st.id(str_attr(s, "kubetrail.object.kind")),
            namespace: st.id(str_attr(s, "k8s.namespace.name")),
            name: st.id(str_attr(s, "kubetrail.object.name")),
            uid: st.id(str_attr(s, "kubetrail.object.uid")),
            root: st.id(str_attr(s, "kubetrail.family.root")),
            start: s.start,
            end: s.end.max(s.start),
            deleted: bool_attr(s, "kubetrail.object.deleted"),
        }
    }

    fn request_span(&mut self, s: &SpanRecord) -> Req {
        let st = &mut self.strings;
        let mut flags = 0;
        let code = int_attr(s, "http.response.status_code").unwrap_or(0);
        let warning = str_attr(s, "kubetrail.event.type") == "Warning";
        let error = match &s.status {
            SpanStatus::Error(m) => m.as_str(),
            SpanStatus::Unset => "",
        };
        if code >= 400 || (!error.is_empty() && !warning) {
            flags |= flag::ERROR;
        }
        if warning {
            flags |= flag::WARNING;
        }
        if str_attr(s, "kubetrail.audit.subresource") == "status" {
            flags |= flag::STATUS;
        }
        if bool_attr(s, "kubetrail.diff.noop") {
            flags |= flag::NOOP;
        }
        if bool_attr(s, "kubetrail.audit.incomplete") {
            flags |= flag::INCOMPLETE;
        }
        let event_message = match s.attr_str("kubetrail.event.message") {
            Some(m) => {
                flags |= flag::KUBE_EVENT;
                st.id(m)
            }
            None => 0,
        };
        let mut changes = Vec::new();
        let mut more_changes = 0;
        let mut snapshot = 0;
        for e in &s.events {
            let attr = |k: &str| {
                e.attributes
                    .iter()
                    .find(|(key, _)| key == k)
                    .and_then(|(_, v)| match v {
                        AttrValue::Str(s) => Some(s.as_str()),
                        _ => None,
                    })
            };
            let kind = match e.name.as_str() {
                "added" => 0,
                "changed" => 1,
                "removed" => 2,
                n if n.starts_with("snapshot") => {
                    snapshot = st.id(attr("object").unwrap_or(""));
                    continue;
                }
                n if n.starts_with("… and ") => {
                    more_changes = n
                        .trim_start_matches("… and ")
                        .split(' ')
                        .next()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    continue;
                }
                _ => continue,
            };
            let path = st.id(attr("path").unwrap_or(""));
            let old = st.id(attr("old").unwrap_or(""));
            let new = st.id(attr("new").unwrap_or(""));
            changes.push((kind, path, old, new));
        }
        Req {
            trace: s.trace_id,
            span: s.span_id,
            parent: s.parent_span_id,
            cluster: st.id(&s.cluster),
            oref: st.id(str_attr(s, "kubetrail.object.ref")),
            namespace: st.id(str_attr(s, "k8s.namespace.name")),
            obj_name: st.id(str_attr(s, "kubetrail.object.name")),
            start: s.start,
            end: s.end.max(s.start),
            actor: st.id(&s.service),
            name: st.id(&s.name),
            verb: st.id(str_attr(s, "kubetrail.audit.verb")),
            code,
            flags,
            user: st.id(str_attr(s, "user.name")),
            user_agent: st.id(str_attr(s, "user_agent.original")),
            audit_id: st.id(str_attr(s, "kubetrail.audit.id")),
            error: st.id(error),
            event_message,
            changes,
            more_changes,
            diff_count: int_attr(s, "kubetrail.diff.changes").unwrap_or(-1),
            snapshot,
        }
    }

    /// The data the page is built from (see the module docs), as JSON.
    pub fn data(&self) -> Value {
        Layout::build(self).to_json(self)
    }

    /// The whole HTML page.
    pub fn render(&self) -> String {
        let data = encode_data(&self.data().to_string());
        let title = html_escape(if self.options.title.is_empty() {
            "kubetrail report"
        } else {
            &self.options.title
        });
        let script = SCRIPT.replace("</", "<\\/");
        fill(
            TEMPLATE,
            &[
                ("{{TITLE}}", &title),
                ("{{STYLE}}", STYLE),
                ("{{DATA}}", &data),
                ("{{SCRIPT}}", &script),
            ],
        )
    }
}

/// Replaces each placeholder, in the order they appear in the template, in one pass (so a
/// value can never be taken for a later placeholder).
fn fill(template: &str, parts: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + parts.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    for (key, value) in parts {
        match rest.find(key) {
            Some(at) => {
                out.push_str(&rest[..at]);
                out.push_str(value);
                rest = &rest[at + key.len()..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// The data as embedded: gzip (the page inflates it with the browser's own
/// `DecompressionStream`), then base64 — which holds no `<`, so it cannot end its script.
/// Snapshots and diffs repeat a lot: this makes the file 5–7 times smaller.
fn encode_data(json: &str) -> String {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(json.len() / 4),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let bytes = gz
        .write_all(json.as_bytes())
        .and_then(|()| gz.finish())
        .unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The data embedded in a report this module wrote (for tests and tools that read reports):
/// `None` when `html` is not such a report.
pub fn read_report_data(html: &str) -> Option<Value> {
    use base64::Engine as _;
    use std::io::Read as _;
    const OPEN: &str = "id=\"kubetrail-data\">";
    let start = html.find(OPEN)? + OPEN.len();
    let end = start + html[start..].find("</script>")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(html[start..end].trim())
        .ok()?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .read_to_string(&mut json)
        .ok()?;
    serde_json::from_str(&json).ok()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One row of the report: an object with every span it had.
struct Row {
    cluster: u32,
    oref: u32,
    kind: u32,
    namespace: u32,
    name: u32,
    uids: Vec<u32>,
    root: u32,
    parent: Option<usize>,
    family: usize,
    spans: Vec<(TraceId, SpanId)>,
    deleted: bool,
    /// Requests on this row: a range of the sorted request list.
    requests: (usize, usize),
    start: UnixNanos,
    end: UnixNanos,
}

struct Family {
    cluster: u32,
    root: u32,
    /// The root's row, when the root object is among the rows.
    root_row: Option<usize>,
    rows: Vec<usize>,
}

/// Rows, families and requests arranged for the page.
struct Layout<'a> {
    rows: Vec<Row>,
    families: Vec<Family>,
    /// (row, request) sorted by row then time.
    requests: Vec<(usize, &'a Req)>,
    t0: UnixNanos,
}

impl<'a> Layout<'a> {
    fn build(r: &'a HtmlReport) -> Self {
        let mut rows: Vec<Row> = Vec::new();
        let mut by_ref: HashMap<(u32, u32), usize> = HashMap::new();
        let mut by_span: HashMap<(TraceId, SpanId), usize> = HashMap::new();
        let mut objects: Vec<&ObjSpan> = r.objects.iter().flatten().collect();
        objects.sort_by_key(|o| (o.start, o.trace, o.span));
        for o in &objects {
            let i = *by_ref.entry((o.cluster, o.oref)).or_insert_with(|| {
                rows.push(Row {
                    cluster: o.cluster,
                    oref: o.oref,
                    kind: o.kind,
                    namespace: o.namespace,
                    name: o.name,
                    uids: Vec::new(),
                    root: o.root,
                    parent: None,
                    family: 0,
                    spans: Vec::new(),
                    deleted: false,
                    requests: (0, 0),
                    start: o.start,
                    end: o.end,
                });
                rows.len() - 1
            });
            let row = &mut rows[i];
            if row.kind == 0 {
                row.kind = o.kind;
            }
            if row.root == 0 {
                row.root = o.root;
            }
            if o.uid != 0 && !row.uids.contains(&o.uid) {
                row.uids.push(o.uid);
            }
            row.spans.push((o.trace, o.span));
            row.deleted = o.deleted;
            row.start = row.start.min(o.start);
            row.end = row.end.max(o.end);
            by_span.insert((o.trace, o.span), i);
        }
        // Parents: the first segment whose parent span is known names the parent row.
        for o in &objects {
            let Some(&i) = by_span.get(&(o.trace, o.span)) else {
                continue;
            };
            if rows[i].parent.is_some() {
                continue;
            }
            if let Some(&p) = o.parent.and_then(|p| by_span.get(&(o.trace, p)))
                && p != i
            {
                rows[i].parent = Some(p);
            }
        }
        // Requests: on their parent's row, else on a row for their own object.
        let mut requests: Vec<(usize, &Req)> = Vec::with_capacity(r.requests.len());
        for q in r.requests.iter().flatten() {
            let row = match q.parent.and_then(|p| by_span.get(&(q.trace, p))) {
                Some(&i) => i,
                None => {
                    let oref = if q.oref == 0 { q.name } else { q.oref };
                    *by_ref.entry((q.cluster, oref)).or_insert_with(|| {
                        rows.push(Row {
                            cluster: q.cluster,
                            oref,
                            kind: 0,
                            namespace: q.namespace,
                            name: q.obj_name,
                            uids: Vec::new(),
                            root: 0,
                            parent: None,
                            family: 0,
                            spans: Vec::new(),
                            deleted: false,
                            requests: (0, 0),
                            start: q.start,
                            end: q.end,
                        });
                        rows.len() - 1
                    })
                }
            };
            rows[row].start = rows[row].start.min(q.start);
            rows[row].end = rows[row].end.max(q.end);
            requests.push((row, q));
        }
        requests.sort_by_key(|(row, q)| (*row, q.start, q.span));
        let mut at = 0;
        for (i, row) in rows.iter_mut().enumerate() {
            let begin = at;
            while at < requests.len() && requests[at].0 == i {
                at += 1;
            }
            row.requests = (begin, at);
        }
        // Families: by (cluster, family root); rows without a root attribute take their top
        // ancestor's (a parent chain that loops is cut where it loops).
        for i in 0..rows.len() {
            if rows[i].root != 0 {
                continue;
            }
            let mut top = i;
            let mut hops = 0;
            while let Some(p) = rows[top].parent {
                hops += 1;
                if hops > rows.len() || rows[p].root != 0 {
                    if rows[p].root != 0 {
                        top = p;
                    }
                    break;
                }
                top = p;
            }
            rows[i].root = if rows[top].root != 0 {
                rows[top].root
            } else {
                rows[top].oref
            };
        }
        let mut families: Vec<Family> = Vec::new();
        let mut family_of: HashMap<(u32, u32), usize> = HashMap::new();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| (rows[i].start, i));
        for &i in &order {
            let key = (rows[i].cluster, rows[i].root);
            let f = *family_of.entry(key).or_insert_with(|| {
                families.push(Family {
                    cluster: key.0,
                    root: key.1,
                    root_row: None,
                    rows: Vec::new(),
                });
                families.len() - 1
            });
            rows[i].family = f;
            families[f].rows.push(i);
            if rows[i].oref == rows[i].root {
                families[f].root_row = Some(i);
            }
        }
        // A parent in another family (or a loop) is no parent in the tree.
        for i in 0..rows.len() {
            if let Some(p) = rows[i].parent
                && rows[p].family != rows[i].family
            {
                rows[i].parent = None;
            }
        }
        for i in 0..rows.len() {
            let mut seen = 0;
            let mut cur = rows[i].parent;
            while let Some(p) = cur {
                seen += 1;
                if p == i || seen > rows.len() {
                    rows[i].parent = None;
                    break;
                }
                cur = rows[p].parent;
            }
        }
        families.sort_by_key(|f| {
            let start = f.rows.iter().map(|&i| rows[i].start).min().unwrap_or(0);
            (start, f.cluster, f.root)
        });
        let t0 = rows.iter().map(|r| r.start).min().unwrap_or(0);
        let t0 = t0 - t0 % 1_000_000; // a whole millisecond, so the page can show it exactly
        Layout {
            rows,
            families,
            requests,
            t0,
        }
    }

    fn us(&self, t: UnixNanos) -> i64 {
        t.saturating_sub(self.t0) / 1000
    }

    fn to_json(&self, r: &HtmlReport) -> Value {
        // Strings used by the page, renumbered in first-use order (the interner also holds
        // strings of spans that were replaced).
        let mut out = Strings::new();
        let mut s = |i: u32| out.id(r.strings.get(i));
        let mut ids: Strings = Strings::default();
        let mut id = |v: String| ids.id(&v);

        // Families in their sorted order; rows renumbered family by family, parents first.
        let mut row_order: Vec<usize> = Vec::with_capacity(self.rows.len());
        let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, row) in self.rows.iter().enumerate() {
            if let Some(p) = row.parent {
                children.entry(p).or_default().push(i);
            }
        }
        for list in children.values_mut() {
            list.sort_by_key(|&i| (self.rows[i].start, self.rows[i].oref, i));
        }
        let mut fams = Vec::with_capacity(self.families.len());
        for f in &self.families {
            let mut tops: Vec<usize> = f
                .rows
                .iter()
                .copied()
                .filter(|&i| self.rows[i].parent.is_none())
                .collect();
            tops.sort_by_key(|&i| (Some(i) != f.root_row, self.rows[i].start, i));
            let first = row_order.len();
            let mut stack: Vec<usize> = tops.iter().rev().copied().collect();
            while let Some(i) = stack.pop() {
                row_order.push(i);
                if let Some(c) = children.get(&i) {
                    stack.extend(c.iter().rev());
                }
            }
            fams.push((f, first, row_order.len()));
        }
        let mut new_index = vec![0usize; self.rows.len()];
        for (n, &i) in row_order.iter().enumerate() {
            new_index[i] = n;
        }

        let mut rows_json = Vec::with_capacity(self.rows.len());
        let mut reqs_json = Vec::with_capacity(self.requests.len());
        let mut details = Vec::new();
        let mut family_json = Vec::with_capacity(fams.len());
        let mut row_family = vec![0usize; self.rows.len()];
        for (fi, (_, first, end)) in fams.iter().enumerate() {
            row_family[*first..*end].fill(fi);
        }
        for (f, first, end) in &fams {
            let mut requests = 0usize;
            let mut errors = 0usize;
            let mut warnings = 0usize;
            let mut start = i64::MAX;
            let mut stop = 0i64;
            for &i in &row_order[*first..*end] {
                let row = &self.rows[i];
                let (a, b) = row.requests;
                requests += b - a;
                for (_, q) in &self.requests[a..b] {
                    if q.flags & flag::ERROR != 0 {
                        errors += 1;
                    }
                    if q.flags & flag::WARNING != 0 {
                        warnings += 1;
                    }
                }
                start = start.min(self.us(row.start));
                stop = stop.max(self.us(row.end));
            }
            if start == i64::MAX {
                start = 0;
            }
            family_json.push(json!([
                s(f.cluster),
                s(f.root),
                first,
                end,
                requests,
                errors,
                warnings,
                start,
                stop
            ]));
        }
        for &i in &row_order {
            let row = &self.rows[i];
            let (a, b) = row.requests;
            let req_first = reqs_json.len();
            for (_, q) in &self.requests[a..b] {
                let detail = if q.changes.is_empty()
                    && q.snapshot == 0
                    && q.event_message == 0
                    && q.error == 0
                    && q.diff_count < 0
                    && q.more_changes == 0
                {
                    -1
                } else {
                    let changes: Vec<Value> = q
                        .changes
                        .iter()
                        .map(|&(k, p, o, n)| json!([k, s(p), s(o), s(n)]))
                        .collect();
                    details.push(json!([
                        changes,
                        q.more_changes,
                        q.diff_count,
                        s(q.snapshot),
                        s(q.event_message),
                        s(q.error)
                    ]));
                    i64::try_from(details.len() - 1).unwrap_or(-1)
                };
                let start = self.us(q.start);
                reqs_json.push(json!([
                    start,
                    self.us(q.end) - start,
                    s(q.actor),
                    s(q.name),
                    s(q.verb),
                    q.code,
                    q.flags,
                    s(q.user),
                    s(q.user_agent),
                    id(q.trace.to_string()),
                    q.span.to_string(),
                    s(q.audit_id),
                    detail
                ]));
            }
            let spans: Vec<Value> = row
                .spans
                .iter()
                .flat_map(|(t, sp)| [json!(id(t.to_string())), json!(sp.to_string())])
                .collect();
            let uids: Vec<u32> = row.uids.iter().map(|&u| s(u)).collect();
            rows_json.push(json!([
                s(row.oref),
                s(row.kind),
                s(row.namespace),
                s(row.name),
                row.parent.map_or(-1, |p| new_index[p] as i64),
                row_family[new_index[i]],
                req_first,
                reqs_json.len(),
                self.us(row.start),
                self.us(row.end),
                u8::from(row.deleted),
                uids,
                spans
            ]));
        }
        json!({
            "version": HTML_DATA_VERSION,
            "generator": concat!("kubetrail ", env!("CARGO_PKG_VERSION")),
            "title": r.options.title,
            "jaeger": r.options.jaeger_url.as_deref().map(|u| u.trim_end_matches('/')),
            "t0ms": self.t0 / 1_000_000,
            "strings": out.list,
            "ids": ids.list,
            "families": family_json,
            "rows": rows_json,
            "requests": reqs_json,
            "details": details,
        })
    }
}

#[cfg(test)]
mod tests {
    use kubetrail_model::{AttrKey, SpanEventRecord};

    use super::*;

    const S: UnixNanos = 1_714_557_600_000_000_000;
    const MS: UnixNanos = 1_000_000;

    fn attr(k: &'static str, v: impl Into<AttrValue>) -> (AttrKey, AttrValue) {
        (AttrKey::Borrowed(k), v.into())
    }

    fn object(trace: u8, span: u8, parent: Option<u8>, oref: &str, root: &str) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([span; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            name: oref.split('/').next().unwrap_or("").to_owned(),
            kind: SpanKind::Object,
            start: S,
            end: S + 100 * MS,
            service: "kubetrail".into(),
            cluster: "prod".into(),
            attributes: vec![
                attr("kubetrail.object.ref", oref),
                attr(
                    "kubetrail.object.name",
                    oref.rsplit('/').next().unwrap_or(""),
                ),
                attr("k8s.namespace.name", "shop"),
                attr("kubetrail.family.root", root),
            ],
            events: vec![],
            links: vec![],
            status: SpanStatus::Unset,
        }
    }

    fn request(trace: u8, span: u8, parent: u8, actor: &str, at_ms: i64) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([span; 8]),
            parent_span_id: Some(SpanId([parent; 8])),
            name: "patch pods/status".into(),
            kind: SpanKind::Request,
            start: S + at_ms * MS,
            end: S + at_ms * MS + 3 * MS,
            service: actor.into(),
            cluster: "prod".into(),
            attributes: vec![
                attr("kubetrail.audit.verb", "patch"),
                attr("kubetrail.audit.subresource", "status"),
                attr("http.response.status_code", 200i64),
                attr("user.name", "system:node:worker-1"),
                attr("kubetrail.audit.id", format!("audit-{span}")),
            ],
            events: vec![SpanEventRecord {
                time: S + at_ms * MS,
                name: "changed".into(),
                attributes: vec![
                    attr("path", "status.phase"),
                    attr("old", "Pending"),
                    attr("new", "Running"),
                ],
            }],
            links: vec![],
            status: SpanStatus::Unset,
        }
    }

    fn family() -> Vec<SpanRecord> {
        let root = "deployments.apps/shop/web";
        vec![
            object(1, 1, None, root, root),
            object(1, 2, Some(1), "replicasets.apps/shop/web-1", root),
            object(1, 3, Some(2), "pods/shop/web-1-a", root),
            request(1, 10, 3, "kubelet", 5),
            request(1, 11, 3, "kubelet", 1),
        ]
    }

    fn strings(d: &Value) -> Vec<String> {
        d["strings"]
            .as_array()
            .expect("strings")
            .iter()
            .map(|v| v.as_str().expect("str").to_owned())
            .collect()
    }

    #[test]
    fn rows_follow_the_owner_chain_and_requests_sit_on_their_object() {
        let mut r = HtmlReport::new(HtmlOptions::default());
        r.add(&family());
        let d = r.data();
        let st = strings(&d);
        let rows = d["rows"].as_array().expect("rows");
        let refs: Vec<&str> = rows
            .iter()
            .map(|row| st[row[0].as_u64().expect("ref") as usize].as_str())
            .collect();
        assert_eq!(
            refs,
            [
                "deployments.apps/shop/web",
                "replicasets.apps/shop/web-1",
                "pods/shop/web-1-a"
            ]
        );
        let parents: Vec<i64> = rows.iter().map(|r| r[4].as_i64().expect("p")).collect();
        assert_eq!(parents, [-1, 0, 1]);
        // The pod has both requests, in time order.
        assert_eq!(
            (rows[2][6].as_u64(), rows[2][7].as_u64()),
            (Some(0), Some(2))
        );
        let reqs = d["requests"].as_array().expect("requests");
        assert_eq!(reqs[0][0], 1000, "µs since t0");
        assert_eq!(reqs[1][0], 5000);
        assert_eq!(reqs[0][1], 3000, "duration µs");
        assert_eq!(st[reqs[0][2].as_u64().expect("a") as usize], "kubelet");
        assert_eq!(reqs[0][6], flag::STATUS);
        let detail = &d["details"][reqs[0][12].as_u64().expect("detail") as usize];
        let change = &detail[0][0];
        assert_eq!(change[0], 1, "changed");
        assert_eq!(
            st[change[1].as_u64().expect("path") as usize],
            "status.phase"
        );
        assert_eq!(st[change[2].as_u64().expect("old") as usize], "Pending");
        assert_eq!(st[change[3].as_u64().expect("new") as usize], "Running");
        let fam = &d["families"][0];
        assert_eq!(
            st[fam[1].as_u64().expect("root") as usize],
            "deployments.apps/shop/web"
        );
        assert_eq!(
            (fam[2].as_u64(), fam[3].as_u64(), fam[4].as_u64()),
            (Some(0), Some(3), Some(2))
        );
    }

    #[test]
    fn a_family_split_over_traces_is_one_tree() {
        // The same family in a second window (another trace): one family, one row per object,
        // each row with both its spans.
        let root = "deployments.apps/shop/web";
        let mut spans = family();
        let mut later = vec![
            object(2, 21, None, root, root),
            object(2, 23, Some(21), "pods/shop/web-1-a", root),
            request(2, 30, 23, "kubelet", 40 * 60 * 1000),
        ];
        for s in &mut later {
            s.start += 40 * 60 * 1000 * MS;
            s.end += 40 * 60 * 1000 * MS;
        }
        spans.extend(later);
        let mut r = HtmlReport::new(HtmlOptions::default());
        r.add(&spans);
        let d = r.data();
        assert_eq!(d["families"].as_array().map(Vec::len), Some(1));
        let rows = d["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[2][12].as_array().map(Vec::len),
            Some(4),
            "two (trace, span) pairs"
        );
        assert_eq!(
            (rows[2][6].as_u64(), rows[2][7].as_u64()),
            (Some(0), Some(3))
        );
        assert_eq!(d["ids"].as_array().map(Vec::len), Some(2), "two trace ids");
    }

    #[test]
    fn duplicates_are_kept_once_and_orphans_get_their_own_row() {
        let mut spans = family();
        spans.push(spans[3].clone());
        let mut orphan = request(9, 40, 99, "kubectl", 2);
        orphan
            .attributes
            .push(attr("kubetrail.object.ref", "configmaps/shop/cfg"));
        orphan.status = SpanStatus::Error("403 Forbidden: denied".into());
        orphan.attributes[2] = attr("http.response.status_code", 403i64);
        spans.push(orphan);
        let mut r = HtmlReport::new(HtmlOptions::default());
        r.add(&spans);
        assert_eq!(r.len(), 6);
        let d = r.data();
        let st = strings(&d);
        assert_eq!(d["requests"].as_array().map(Vec::len), Some(3));
        let fams = d["families"].as_array().expect("families");
        assert_eq!(fams.len(), 2);
        let cfg = fams
            .iter()
            .find(|f| st[f[1].as_u64().expect("root") as usize] == "configmaps/shop/cfg")
            .expect("the orphan's own family");
        assert_eq!(cfg[5], 1, "one error");
        let req = &d["requests"][cfg[2].as_u64().map_or(0, |row| {
            d["rows"][row as usize][6].as_u64().unwrap_or(0) as usize
        })];
        assert_eq!(
            req[6].as_u64().map(|f| f as u32 & flag::ERROR),
            Some(flag::ERROR)
        );
        let detail = &d["details"][req[12].as_u64().expect("detail") as usize];
        assert_eq!(
            st[detail[5].as_u64().expect("err") as usize],
            "403 Forbidden: denied"
        );
    }

    #[test]
    fn warnings_are_marked_but_not_errors() {
        let mut w = request(1, 12, 3, "kubelet", 7);
        w.name = "event BackOff".into();
        w.attributes.push(attr("kubetrail.event.type", "Warning"));
        w.attributes
            .push(attr("kubetrail.event.message", "Back-off restarting"));
        w.status = SpanStatus::Error("Warning BackOff: Back-off restarting".into());
        let mut spans = family();
        spans.push(w);
        let mut r = HtmlReport::new(HtmlOptions::default());
        r.add(&spans);
        let d = r.data();
        let reqs = d["requests"].as_array().expect("requests");
        let f = reqs[2][6].as_u64().expect("flags") as u32;
        assert_eq!(
            f & (flag::WARNING | flag::ERROR | flag::KUBE_EVENT),
            flag::WARNING | flag::KUBE_EVENT
        );
        assert_eq!(d["families"][0][6], 1);
        assert_eq!(d["families"][0][5], 0);
    }

    #[test]
    fn the_page_is_self_contained_and_its_data_cannot_close_the_script() {
        let mut spans = family();
        spans[3].events[0].attributes[2] = attr("new", "</script><script>alert(1)</script>");
        let mut r = HtmlReport::new(HtmlOptions {
            title: "a <b> & c".into(),
            jaeger_url: Some("http://jaeger:16686/".into()),
        });
        r.add(&spans);
        let html = r.render();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(
            html.matches("</script>").count(),
            2,
            "the page's two scripts only"
        );
        assert!(html.contains("a &lt;b&gt; &amp; c"));
        assert!(
            !html.contains("http://jaeger:16686/\""),
            "the base URL is trimmed"
        );
        for forbidden in ["src=\"http", "href=\"http", "@import", "url(http"] {
            assert!(!html.contains(forbidden), "{forbidden} would fetch");
        }
        // The data reads back.
        let d = read_report_data(&html).expect("the data");
        assert_eq!(d, r.data());
        assert!(!html.contains("alert(1)"), "data is encoded");
        assert_eq!(d["version"], HTML_DATA_VERSION);
        assert_eq!(d["jaeger"], "http://jaeger:16686");
        assert!(strings(&d).contains(&"</script><script>alert(1)</script>".to_owned()));
    }

    #[tokio::test]
    async fn the_sink_writes_the_file_on_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.html");
        let mut sink = HtmlReportSink::create(&path, HtmlOptions::default()).expect("create");
        assert_eq!(sink.name(), "html");
        let spans = family();
        sink.export(&spans[..2]).await.expect("export");
        sink.export(&spans[2..]).await.expect("export");
        sink.finish().await.expect("finish");
        let html = std::fs::read_to_string(&path).expect("read");
        let mut r = HtmlReport::new(HtmlOptions::default());
        r.add(&spans);
        assert_eq!(html, r.render());
        let err =
            HtmlReportSink::create(dir.path().join("no/such/dir.html"), HtmlOptions::default())
                .expect_err("unwritable");
        assert!(err.to_string().contains("no/such"), "{err}");
    }
}
