//! [`SpanRecord`]s to an OTLP `ExportTraceServiceRequest`.

use std::collections::HashMap;

use kubetrail_model::{
    AttrValue, SpanEventRecord, SpanKind, SpanLinkRecord, SpanRecord, SpanStatus, UnixNanos,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link, SpanKind as OtlpSpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// The instrumentation scope name on every exported span.
pub const SCOPE_NAME: &str = "kubetrail";

/// The W3C trace-flags "sampled" bit, in the low byte of OTLP's `Span.flags`.
const W3C_SAMPLED: u32 = 0x01;

/// Builds one OTLP export request from a batch of spans.
///
/// Spans are grouped into one `ResourceSpans` per (`service`, `cluster`): the resource carries
/// `service.name` = [`SpanRecord::service`] (the acting component, which Jaeger shows as the
/// service) and `k8s.cluster.name` = [`SpanRecord::cluster`] (left out when empty). Each
/// resource has one `ScopeSpans` with scope [`SCOPE_NAME`] and this crate's version.
///
/// Object spans become `SPAN_KIND_INTERNAL`, request spans `SPAN_KIND_SERVER`;
/// [`SpanStatus::Error`] becomes `STATUS_CODE_ERROR` with its message. The output is
/// deterministic: groups appear in the order their first span appears in `spans`, and spans
/// keep their input order within a group.
pub fn to_export_request(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut groups: Vec<ResourceSpans> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for span in spans {
        let i = *index
            .entry((span.service.as_str(), span.cluster.as_str()))
            .or_insert_with(|| {
                groups.push(resource_spans(&span.service, &span.cluster));
                groups.len() - 1
            });
        if let Some(scope) = groups.get_mut(i).and_then(|g| g.scope_spans.first_mut()) {
            scope.spans.push(convert_span(span));
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups,
    }
}

fn resource_spans(service: &str, cluster: &str) -> ResourceSpans {
    let mut attributes = vec![kv("service.name", string_value(service))];
    if !cluster.is_empty() {
        attributes.push(kv("k8s.cluster.name", string_value(cluster)));
    }
    ResourceSpans {
        resource: Some(Resource {
            attributes,
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: SCOPE_NAME.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
            }),
            spans: Vec::new(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn convert_span(s: &SpanRecord) -> Span {
    let kind = match s.kind {
        SpanKind::Object => OtlpSpanKind::Internal,
        SpanKind::Request => OtlpSpanKind::Server,
    };
    let status = match &s.status {
        SpanStatus::Unset => None,
        SpanStatus::Error(message) => Some(Status {
            message: message.clone(),
            code: StatusCode::Error as i32,
        }),
    };
    Span {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        trace_state: String::new(),
        parent_span_id: s.parent_span_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        // W3C trace flags: "sampled" (the span was recorded, and is being exported).
        flags: W3C_SAMPLED,
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end.max(s.start)),
        attributes: attributes(&s.attributes),
        dropped_attributes_count: 0,
        events: s.events.iter().map(convert_event).collect(),
        dropped_events_count: 0,
        links: s.links.iter().map(convert_link).collect(),
        dropped_links_count: 0,
        status,
    }
}

fn convert_event(e: &SpanEventRecord) -> Event {
    Event {
        time_unix_nano: nanos(e.time),
        name: e.name.clone(),
        attributes: attributes(&e.attributes),
        dropped_attributes_count: 0,
    }
}

fn convert_link(l: &SpanLinkRecord) -> Link {
    Link {
        trace_id: l.trace_id.0.to_vec(),
        span_id: l.span_id.0.to_vec(),
        trace_state: String::new(),
        attributes: attributes(&l.attributes),
        dropped_attributes_count: 0,
        flags: 0,
    }
}

/// OTLP timestamps are unsigned; a (nonsensical) pre-1970 time becomes 0.
/// OTLP time: nanoseconds since the epoch, where 0 means "unset" (Jaeger shows no time).
/// The epoch itself and earlier times (1970-01-01T00:00:00Z, clamped pre-1970 input) are
/// sent as 1 ns, so a span always has a start.
fn nanos(t: UnixNanos) -> u64 {
    u64::try_from(t).unwrap_or(0).max(1)
}

fn attributes<K: AsRef<str>>(attrs: &[(K, AttrValue)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| kv(k.as_ref(), any_value(v)))
        .collect()
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        key_strindex: 0,
    }
}

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

fn any_value(v: &AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::StrList(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(|s| string_value(s)).collect(),
        }),
    };
    AnyValue { value: Some(value) }
}

#[cfg(test)]
pub(crate) mod tests {

    #[test]
    fn epoch_and_earlier_times_are_never_sent_as_unset() {
        assert_eq!(nanos(0), 1);
        assert_eq!(nanos(-5), 1);
        assert_eq!(nanos(UnixNanos::MIN), 1);
        assert_eq!(nanos(7), 7);
        assert_eq!(
            nanos(UnixNanos::MAX),
            u64::try_from(UnixNanos::MAX).unwrap()
        );
    }

    use kubetrail_model::ids::{SpanId, TraceId};

    use super::*;

    /// A span with the given identity and defaults elsewhere.
    pub(crate) fn span(
        trace: u8,
        id: u8,
        parent: Option<u8>,
        service: &str,
        cluster: &str,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            name: format!("span-{id}"),
            kind: SpanKind::Request,
            start: 1_700_000_000_000_000_000 + i64::from(id),
            end: 1_700_000_000_000_000_000 + i64::from(id) + 1_000,
            service: service.to_owned(),
            cluster: cluster.to_owned(),
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            status: SpanStatus::Unset,
        }
    }

    fn resource_attr(rs: &ResourceSpans, key: &str) -> Option<any_value::Value> {
        rs.resource
            .as_ref()?
            .attributes
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .clone()?
            .value
    }

    fn str_val(s: &str) -> Option<any_value::Value> {
        Some(any_value::Value::StringValue(s.to_owned()))
    }

    #[test]
    fn groups_by_service_and_cluster_in_first_seen_order() {
        let spans = vec![
            span(1, 1, None, "kubelet", "prod"),
            span(1, 2, Some(1), "kubectl", "prod"),
            span(1, 3, Some(1), "kubelet", "prod"),
            span(2, 4, None, "kubelet", "dev"),
            span(1, 5, Some(1), "kubectl", "prod"),
            span(3, 6, None, "kube-scheduler", ""),
        ];
        let req = to_export_request(&spans);
        let summary: Vec<(Option<any_value::Value>, Option<any_value::Value>, Vec<u8>)> = req
            .resource_spans
            .iter()
            .map(|rs| {
                assert_eq!(rs.scope_spans.len(), 1);
                let ids = rs.scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| s.span_id[0])
                    .collect();
                (
                    resource_attr(rs, "service.name"),
                    resource_attr(rs, "k8s.cluster.name"),
                    ids,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (str_val("kubelet"), str_val("prod"), vec![1, 3]),
                (str_val("kubectl"), str_val("prod"), vec![2, 5]),
                (str_val("kubelet"), str_val("dev"), vec![4]),
                (str_val("kube-scheduler"), None, vec![6]),
            ]
        );
        // An empty cluster is left out, not exported as "".
        assert_eq!(
            req.resource_spans[3]
                .resource
                .as_ref()
                .map(|r| r.attributes.len()),
            Some(1)
        );
        let scope = req.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .map(|s| (s.name.as_str(), s.version.as_str()));
        assert_eq!(scope, Some(("kubetrail", env!("CARGO_PKG_VERSION"))));
        // Deterministic: the same input gives the same bytes.
        use prost::Message;
        assert_eq!(
            req.encode_to_vec(),
            to_export_request(&spans).encode_to_vec()
        );
        assert!(to_export_request(&[]).resource_spans.is_empty());
    }

    #[test]
    fn converts_ids_kinds_status_times() {
        let mut object = span(7, 1, None, "kubetrail", "c");
        object.kind = SpanKind::Object;
        let mut request = span(7, 2, Some(1), "kubectl", "c");
        request.status = SpanStatus::Error("admission webhook denied".into());
        request.start = 10;
        request.end = 5; // clamped: end ≥ start
        let req = to_export_request(&[object, request]);
        let o = &req.resource_spans[0].scope_spans[0].spans[0];
        let r = &req.resource_spans[1].scope_spans[0].spans[0];
        assert_eq!(o.trace_id, vec![7; 16]);
        assert_eq!(o.span_id, vec![1; 8]);
        assert!(o.parent_span_id.is_empty());
        assert_eq!(o.kind, OtlpSpanKind::Internal as i32);
        assert_eq!(o.status, None);
        assert_eq!(o.name, "span-1");
        assert_eq!(o.start_time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(o.end_time_unix_nano, 1_700_000_000_000_001_001);
        assert_eq!(r.parent_span_id, vec![1; 8]);
        assert_eq!(r.kind, OtlpSpanKind::Server as i32);
        assert_eq!(
            r.status,
            Some(Status {
                message: "admission webhook denied".into(),
                code: StatusCode::Error as i32
            })
        );
        assert_eq!((r.start_time_unix_nano, r.end_time_unix_nano), (10, 10));
        assert_eq!(o.flags, 1);
    }

    #[test]
    fn converts_attribute_types_events_and_links() {
        let mut s = span(1, 1, None, "kubelet", "c");
        s.attributes = vec![
            (
                "kubetrail.object.ref".into(),
                AttrValue::Str("pods/shop/web-1".into()),
            ),
            ("http.response.status_code".into(), AttrValue::Int(201)),
            ("kubetrail.dry_run".into(), AttrValue::Bool(false)),
            (
                "user.groups".into(),
                AttrValue::StrList(vec!["system:nodes".into(), "system:authenticated".into()]),
            ),
        ];
        s.events = vec![SpanEventRecord {
            time: 42,
            name: "Scheduled".into(),
            attributes: vec![(
                "k8s.event.reason".into(),
                AttrValue::Str("Scheduled".into()),
            )],
        }];
        s.links = vec![SpanLinkRecord {
            trace_id: TraceId([9; 16]),
            span_id: SpanId([8; 8]),
            attributes: vec![(
                "kubetrail.link.source".into(),
                AttrValue::Str("annotation".into()),
            )],
        }];
        let req = to_export_request(&[s]);
        let out = &req.resource_spans[0].scope_spans[0].spans[0];
        let values: Vec<(&str, Option<&any_value::Value>)> = out
            .attributes
            .iter()
            .map(|kv| {
                (
                    kv.key.as_str(),
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                )
            })
            .collect();
        let list = any_value::Value::ArrayValue(ArrayValue {
            values: vec![
                string_value("system:nodes"),
                string_value("system:authenticated"),
            ],
        });
        assert_eq!(
            values,
            vec![
                (
                    "kubetrail.object.ref",
                    Some(&any_value::Value::StringValue("pods/shop/web-1".into()))
                ),
                (
                    "http.response.status_code",
                    Some(&any_value::Value::IntValue(201))
                ),
                (
                    "kubetrail.dry_run",
                    Some(&any_value::Value::BoolValue(false))
                ),
                ("user.groups", Some(&list)),
            ]
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(
            (out.events[0].time_unix_nano, out.events[0].name.as_str()),
            (42, "Scheduled")
        );
        assert_eq!(out.events[0].attributes[0].key, "k8s.event.reason");
        assert_eq!(out.links.len(), 1);
        assert_eq!(
            (out.links[0].trace_id.clone(), out.links[0].span_id.clone()),
            (vec![9; 16], vec![8; 8])
        );
        assert_eq!(out.links[0].attributes[0].key, "kubetrail.link.source");
    }
}
