//! A flat, assertion-friendly view of OTLP spans, and OTLP/JSON readers.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// How a span reached the test: which listener of an [`OtlpReceiver`]
/// received it, or that it was read from a file.
///
/// [`OtlpReceiver`]: crate::OtlpReceiver
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    Grpc,
    /// OTLP/HTTP (`POST /v1/traces`, protobuf or JSON body).
    Http,
    /// Read from OTLP/JSON text by [`parse_otlp_json_lines`] or
    /// [`parse_otlp_json`], not received over the network.
    File,
    /// Read back from Jaeger's query API ([`JaegerTrace::received_spans`](crate::JaegerTrace::received_spans)).
    JaegerQuery,
}

/// One received span together with its resource's attributes, in a
/// convenient, string-based form.
///
/// Attribute values are stringified by [`any_value_to_string`]: strings as
/// they are, ints, doubles and bools with `to_string`, bytes as lowercase hex,
/// arrays and key-value lists as compact JSON (`["a","b"]`, `[1,2]`,
/// `{"k":"v"}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource attribute `service.name` (empty when absent).
    pub service_name: String,
    /// All resource attributes, stringified.
    pub resource_attributes: BTreeMap<String, String>,
    /// Name of the instrumentation scope the span was reported under (empty
    /// when absent).
    pub scope_name: String,
    /// Trace id, lowercase hex (32 characters for a valid id).
    pub trace_id: String,
    /// Span id, lowercase hex (16 characters for a valid id).
    pub span_id: String,
    /// Parent span id, lowercase hex; `None` when the span is a root (the
    /// field is empty on the wire).
    pub parent_span_id: Option<String>,
    /// Span name.
    pub name: String,
    /// `SpanKind` as its protobuf number (0 unspecified, 1 internal,
    /// 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Start time, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End time, nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// Span attributes, stringified.
    pub attributes: BTreeMap<String, String>,
    /// Events as `(name, stringified attributes)`, in order.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// Links as `(trace id hex, span id hex)`, in order.
    pub links: Vec<(String, String)>,
    /// Status code as its protobuf number (0 unset, 1 ok, 2 error); 0 when the
    /// span has no status.
    pub status_code: i32,
    /// Status message (empty when none).
    pub status_message: String,
    /// How the span arrived.
    pub via: Protocol,
}

/// Flattens every span of `req` into [`ReceivedSpan`]s, in request order,
/// each carrying its resource's attributes and the given `via`.
pub fn flatten(req: &ExportTraceServiceRequest, via: Protocol) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in &req.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes_to_map(&r.attributes))
            .unwrap_or_default();
        let service_name = resource_attributes
            .get("service.name")
            .cloned()
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            let scope_name = scope_spans
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for span in &scope_spans.spans {
                let (status_code, status_message) = span
                    .status
                    .as_ref()
                    .map(|s| (s.code, s.message.clone()))
                    .unwrap_or_default();
                out.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex::encode(&span.parent_span_id)),
                    name: span.name.clone(),
                    kind: span.kind,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: attributes_to_map(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes_to_map(&e.attributes)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                    status_code,
                    status_message,
                    via,
                });
            }
        }
    }
    out
}

/// Turns OTLP key-values into a map of stringified values (see
/// [`any_value_to_string`]). A later duplicate key wins.
pub fn attributes_to_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = kv
                .value
                .as_ref()
                .map(any_value_to_string)
                .unwrap_or_default();
            (kv.key.clone(), value)
        })
        .collect()
}

/// Stringifies an OTLP attribute value: strings as they are, ints, doubles
/// and bools with `to_string`, bytes as lowercase hex, arrays and key-value
/// lists as compact JSON (see [`any_value_to_json`]); an empty value is `""`.
pub fn any_value_to_string(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BytesValue(b)) => hex::encode(b),
        Some(Value::StringValueStrindex(i)) => i.to_string(),
        Some(Value::ArrayValue(_) | Value::KvlistValue(_)) => any_value_to_json(value).to_string(),
    }
}

/// Converts an OTLP attribute value to plain JSON: strings, bools and ints as
/// such, doubles as numbers (non-finite ones as their string form), bytes as
/// a lowercase hex string, arrays as arrays, key-value lists as objects, an
/// empty value as `null`.
pub fn any_value_to_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.value {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(J::Number)
            .unwrap_or_else(|| J::String(d.to_string())),
        Some(Value::BytesValue(b)) => J::String(hex::encode(b)),
        Some(Value::StringValueStrindex(i)) => J::from(*i),
        Some(Value::ArrayValue(array)) => {
            J::Array(array.values.iter().map(any_value_to_json).collect())
        }
        Some(Value::KvlistValue(list)) => J::Object(
            list.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map(any_value_to_json).unwrap_or(J::Null);
                    (kv.key.clone(), v)
                })
                .collect(),
        ),
    }
}

/// Parses one OTLP/JSON `ExportTraceServiceRequest` document (the body of an
/// OTLP/HTTP JSON request) into a request, using `opentelemetry-proto`'s
/// serde support.
///
/// That support expects lowerCamelCase field names (`traceId`,
/// `startTimeUnixNano`, ...), ids as hex strings, 64-bit integers as decimal
/// strings or numbers, and enums (`kind`, `status.code`) as integers.
pub fn parse_otlp_json(text: &str) -> anyhow::Result<ExportTraceServiceRequest> {
    serde_json::from_str(text).context("invalid OTLP/JSON ExportTraceServiceRequest")
}

/// Parses text in the OpenTelemetry Collector file-exporter format (each
/// non-blank line one OTLP/JSON `ExportTraceServiceRequest`) and returns all
/// spans, flattened, with `via` set to [`Protocol::File`].
///
/// Errors name the 1-based line that failed to parse.
pub fn parse_otlp_json_lines(text: &str) -> anyhow::Result<Vec<ReceivedSpan>> {
    let mut spans = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let request = parse_otlp_json(line).with_context(|| format!("line {}", index + 1))?;
        spans.extend(flatten(&request, Protocol::File));
    }
    Ok(spans)
}

/// (trace id, span id, parent span id) of a span: what "the same traces" means when runs,
/// replicas or restarts are compared.
pub type SpanIds = (String, String, Option<String>);

/// The [`SpanIds`] of every span, duplicates (at-least-once delivery) removed.
pub fn id_set(spans: &[ReceivedSpan]) -> BTreeSet<SpanIds> {
    spans
        .iter()
        .map(|s| {
            (
                s.trace_id.clone(),
                s.span_id.clone(),
                s.parent_span_id.clone(),
            )
        })
        .collect()
}

/// The trace ids of the spans whose `kubetrail.audit.id` starts with `prefix`: the traces a
/// set of planted requests (auditIDs `tenant-…`, say) ended up in. Only request spans carry
/// an audit ID, so these are the traces of those requests; a family kept whole is one.
pub fn audit_id_traces(spans: &[ReceivedSpan], prefix: &str) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|s| {
            s.attributes
                .get("kubetrail.audit.id")
                .is_some_and(|a| a.starts_with(prefix))
        })
        .map(|s| s.trace_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn av(value: Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    #[test]
    fn stringifies_every_value_kind() {
        assert_eq!(
            any_value_to_string(&av(Value::StringValue("x".into()))),
            "x"
        );
        assert_eq!(any_value_to_string(&av(Value::IntValue(-7))), "-7");
        assert_eq!(any_value_to_string(&av(Value::BoolValue(true))), "true");
        assert_eq!(any_value_to_string(&av(Value::DoubleValue(1.5))), "1.5");
        assert_eq!(
            any_value_to_string(&av(Value::BytesValue(vec![0xde, 0xad]))),
            "dead"
        );
        assert_eq!(any_value_to_string(&AnyValue { value: None }), "");
        let array = av(Value::ArrayValue(ArrayValue {
            values: vec![av(Value::StringValue("a".into())), av(Value::IntValue(2))],
        }));
        assert_eq!(any_value_to_string(&array), r#"["a",2]"#);
        let kvlist = av(Value::KvlistValue(KeyValueList {
            values: vec![KeyValue {
                key: "k".into(),
                value: Some(av(Value::BoolValue(false))),
                key_strindex: 0,
            }],
        }));
        assert_eq!(any_value_to_string(&kvlist), r#"{"k":false}"#);
    }

    #[test]
    fn json_lines_report_the_bad_line() {
        let text = "{\"resourceSpans\":[]}\n\nnot json\n";
        let err = parse_otlp_json_lines(text).unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
    }
}
