//! The spans the pipeline produces, independent of any export protocol.

use std::borrow::Cow;

use crate::ids::{SpanId, TraceId};
use crate::time::UnixNanos;

/// An attribute key: usually a static semantic-convention name.
pub type AttrKey = Cow<'static, str>;

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A list of strings.
    StrList(Vec<String>),
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_owned())
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// What a span stands for, as OTLP's span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A Kubernetes object over a time window (internal span).
    Object,
    /// A request the API server served (server span).
    Request,
}

/// The outcome recorded on a span.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SpanStatus {
    /// Nothing to report.
    #[default]
    Unset,
    /// The request failed; the message says how.
    Error(String),
}

/// A timestamped annotation on a span (a diff line, a Kubernetes Event).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEventRecord {
    /// When it happened.
    pub time: UnixNanos,
    /// Short name.
    pub name: String,
    /// Details.
    pub attributes: Vec<(AttrKey, AttrValue)>,
}

/// A link from a span to a span of another trace (or of its own trace, when the span has a
/// parent there: Jaeger takes a root span's link into its own trace for its parent).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanLinkRecord {
    /// The linked trace.
    pub trace_id: TraceId,
    /// The linked span.
    pub span_id: SpanId,
    /// Why the link exists.
    pub attributes: Vec<(AttrKey, AttrValue)>,
}

/// One finished span, ready for export.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Trace the span belongs to.
    pub trace_id: TraceId,
    /// The span's id.
    pub span_id: SpanId,
    /// The parent span, `None` for a trace root.
    pub parent_span_id: Option<SpanId>,
    /// Operation name, low cardinality (`update pods/status`, `pods`).
    pub name: String,
    /// Object or request.
    pub kind: SpanKind,
    /// Start time.
    pub start: UnixNanos,
    /// End time (≥ start).
    pub end: UnixNanos,
    /// The OTLP resource's `service.name`: the acting component for request spans, the
    /// configured service for object spans.
    pub service: String,
    /// The cluster, exported as the resource attribute `k8s.cluster.name`.
    pub cluster: String,
    /// Span attributes.
    pub attributes: Vec<(AttrKey, AttrValue)>,
    /// Span events.
    pub events: Vec<SpanEventRecord>,
    /// Links to other traces.
    pub links: Vec<SpanLinkRecord>,
    /// Outcome.
    pub status: SpanStatus,
}

impl SpanRecord {
    /// The value of an attribute, if set.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The string value of an attribute, if set and a string.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attr(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }
}
