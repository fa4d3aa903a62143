//! Pins down the OTLP/JSON encoding produced and accepted by
//! `opentelemetry-proto`'s serde support, and the file-exporter reader.

use kubetrail_testkit::opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use kubetrail_testkit::opentelemetry_proto::tonic::common::v1::any_value::Value;
use kubetrail_testkit::opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use kubetrail_testkit::opentelemetry_proto::tonic::resource::v1::Resource;
use kubetrail_testkit::opentelemetry_proto::tonic::trace::v1::span::Link;
use kubetrail_testkit::opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status,
};
use kubetrail_testkit::{Protocol, flatten, parse_otlp_json, parse_otlp_json_lines};
use serde_json::json;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn request() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("svc".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: (1..=16).collect(),
                    span_id: vec![0xab; 8],
                    name: "s".into(),
                    kind: 3,
                    start_time_unix_nano: 1_700_000_000_123_456_789,
                    end_time_unix_nano: u64::MAX,
                    attributes: vec![
                        kv("n", Value::IntValue(42)),
                        kv("b", Value::BytesValue(vec![1, 2, 255])),
                    ],
                    links: vec![Link {
                        trace_id: vec![0xff; 16],
                        span_id: vec![0x01; 8],
                        ..Default::default()
                    }],
                    status: Some(Status {
                        message: "boom".into(),
                        code: 2,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn serde_round_trip_and_wire_shape() {
    let original = request();
    let text = serde_json::to_string(&original).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let span = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][0];

    // Ids: lowercase hex strings (not base64 as in proto3's canonical JSON).
    assert_eq!(span["traceId"], "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(span["spanId"], "abababababababab");
    // An empty parent id is still written, as "".
    assert_eq!(span["parentSpanId"], "");
    assert_eq!(
        span["links"][0]["traceId"],
        "ffffffffffffffffffffffffffffffff"
    );
    // 64-bit integers: decimal strings.
    assert_eq!(span["startTimeUnixNano"], "1700000000123456789");
    assert_eq!(span["endTimeUnixNano"], "18446744073709551615");
    assert_eq!(
        span["attributes"][0],
        json!({"key": "n", "value": {"intValue": "42"}})
    );
    // Bytes attribute values: base64.
    assert_eq!(
        span["attributes"][1],
        json!({"key": "b", "value": {"bytesValue": "AQL/"}})
    );
    // Enums: integers, not names.
    assert_eq!(span["kind"], 3);
    assert_eq!(span["status"], json!({"message": "boom", "code": 2}));
    // Default-valued fields are not omitted.
    assert_eq!(span["droppedAttributesCount"], 0);
    assert_eq!(span["traceState"], "");

    let back: ExportTraceServiceRequest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, original);
    assert_eq!(parse_otlp_json(&text).unwrap(), original);
}

/// A line as the OpenTelemetry Collector's file exporter writes it: default
/// fields omitted, `intValue` as a string, times as strings.
const COLLECTOR_LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"kubetrail"}},{"key":"k8s.cluster.name","value":{"stringValue":"kind"}}]},"scopeSpans":[{"scope":{"name":"kubetrail","version":"0.1.0"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173","name":"update pods","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","attributes":[{"key":"http.status_code","value":{"intValue":"409"}},{"key":"verbs","value":{"arrayValue":{"values":[{"stringValue":"get"},{"intValue":"1"}]}}}],"events":[{"timeUnixNano":"1544712660500000000","name":"retry","attributes":[{"key":"attempt","value":{"intValue":"2"}}]}],"status":{"code":2,"message":"conflict"}}]}]}]}"#;

#[test]
fn parses_collector_file_exporter_lines() {
    let text = format!("{COLLECTOR_LINE}\n\n{COLLECTOR_LINE}\n");
    let spans = parse_otlp_json_lines(&text).unwrap();
    assert_eq!(spans.len(), 2);
    let span = &spans[0];
    assert_eq!(span.via, Protocol::File);
    assert_eq!(span.service_name, "kubetrail");
    assert_eq!(span.resource_attributes["k8s.cluster.name"], "kind");
    assert_eq!(span.scope_name, "kubetrail");
    assert_eq!(span.trace_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(span.span_id, "eee19b7ec3c1b174");
    assert_eq!(span.parent_span_id.as_deref(), Some("eee19b7ec3c1b173"));
    assert_eq!(span.name, "update pods");
    assert_eq!(span.kind, 2);
    assert_eq!(span.start_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.end_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(span.attributes["http.status_code"], "409");
    assert_eq!(span.attributes["verbs"], r#"["get",1]"#);
    assert_eq!(span.events.len(), 1);
    assert_eq!(span.events[0].0, "retry");
    assert_eq!(span.events[0].1["attempt"], "2");
    assert!(span.links.is_empty());
    assert_eq!(span.status_code, 2);
    assert_eq!(span.status_message, "conflict");
}

#[test]
fn accepts_numbers_for_64_bit_fields_and_missing_fields() {
    let spans = parse_otlp_json_lines(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","name":"x","startTimeUnixNano":5,"endTimeUnixNano":6,"attributes":[{"key":"i","value":{"intValue":7}}]}]}]}]}"#,
    )
    .unwrap();
    let span = &spans[0];
    // No resource at all: empty service name.
    assert_eq!(span.service_name, "");
    assert!(span.resource_attributes.is_empty());
    // Uppercase hex is accepted on input; output is lowercase.
    assert_eq!(span.trace_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(span.parent_span_id, None);
    assert_eq!((span.start_unix_nano, span.end_unix_nano), (5, 6));
    assert_eq!(span.attributes["i"], "7");
    assert_eq!((span.kind, span.status_code), (0, 0));
}

#[test]
fn rejects_what_opentelemetry_proto_does_not_support() {
    // Enum names (allowed by proto3's JSON mapping, forbidden by OTLP/JSON).
    let by_name = COLLECTOR_LINE.replace(r#""kind":2"#, r#""kind":"SPAN_KIND_SERVER""#);
    assert!(parse_otlp_json_lines(&by_name).is_err());
    // base64 ids (proto3's canonical JSON for bytes; OTLP/JSON uses hex).
    let base64_id = COLLECTOR_LINE.replace(
        "5b8efff798038103d269b633813fc60c",
        "W47/95gDgQPSabYzgT/GDA==",
    );
    assert!(parse_otlp_json_lines(&base64_id).is_err());
}

#[test]
fn snake_case_field_names_are_ignored_not_rejected() {
    // Unknown fields are skipped, so snake_case names silently yield
    // empty values instead of an error.
    let snake = COLLECTOR_LINE
        .replace("traceId", "trace_id")
        .replace("startTimeUnixNano", "start_time_unix_nano");
    let spans = parse_otlp_json_lines(&snake).unwrap();
    assert_eq!(spans[0].trace_id, "");
    assert_eq!(spans[0].start_unix_nano, 0);
}

#[test]
fn flatten_handles_multiple_resources_and_scopes() {
    let mut req = request();
    let mut second = req.resource_spans[0].clone();
    second.resource = None;
    second.scope_spans.push(second.scope_spans[0].clone());
    req.resource_spans.push(second);
    let spans = flatten(&req, Protocol::Grpc);
    assert_eq!(spans.len(), 3);
    assert_eq!(spans[0].service_name, "svc");
    assert_eq!(spans[1].service_name, "");
    assert_eq!(spans[2].service_name, "");
    assert!(spans.iter().all(|s| s.via == Protocol::Grpc));
    assert_eq!(spans[0].attributes["b"], "0102ff");
    assert_eq!(spans[0].end_unix_nano, u64::MAX);
    assert_eq!(spans[0].links, [("ff".repeat(16), "01".repeat(8))]);
}
