//! End-to-end tests of the OTLP receiver over real sockets, with real OTLP
//! clients: tonic's generated `TraceServiceClient` for gRPC and reqwest for
//! OTLP/HTTP (protobuf and JSON, plain and gzip).

use std::io::Write as _;
use std::time::Duration;

use kubetrail_testkit::opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use kubetrail_testkit::opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use kubetrail_testkit::opentelemetry_proto::tonic::common::v1::any_value::Value;
use kubetrail_testkit::opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use kubetrail_testkit::opentelemetry_proto::tonic::resource::v1::Resource;
use kubetrail_testkit::opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use kubetrail_testkit::opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status,
};
use kubetrail_testkit::{OtlpReceiver, Protocol, ReceivedSpan};
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(10);

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const ROOT_ID: &str = "eee19b7ec3c1b173";
const CHILD_ID: &str = "eee19b7ec3c1b174";
const LINKED_TRACE: &str = "0102030405060708090a0b0c0d0e0f10";
const LINKED_SPAN: &str = "1112131415161718";

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// A request with one resource, one scope and two spans (a root server span
/// and a child with attributes of every common type, an event, a link and an
/// error status). `tag` is put into the service name so requests differ.
fn sample_request(tag: &str) -> ExportTraceServiceRequest {
    let root = Span {
        trace_id: hex::decode(TRACE_ID).unwrap(),
        span_id: hex::decode(ROOT_ID).unwrap(),
        name: "PATCH deployments".into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_500_000_000,
        status: Some(Status {
            message: String::new(),
            code: 1,
        }),
        ..Default::default()
    };
    let child = Span {
        trace_id: hex::decode(TRACE_ID).unwrap(),
        span_id: hex::decode(CHILD_ID).unwrap(),
        parent_span_id: hex::decode(ROOT_ID).unwrap(),
        name: "replicaset scale".into(),
        kind: 1,
        // Above 2^53, so a JSON number would lose precision.
        start_time_unix_nano: 1_700_000_000_100_000_001,
        end_time_unix_nano: 1_700_000_000_400_000_003,
        attributes: vec![
            kv("k8s.namespace.name", s("default")),
            kv("replicas", Value::IntValue(3)),
            kv("big", Value::IntValue(i64::MAX)),
            kv("dry_run", Value::BoolValue(false)),
            kv("ratio", Value::DoubleValue(0.25)),
            kv(
                "verbs",
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(s("get")),
                        },
                        AnyValue {
                            value: Some(s("patch")),
                        },
                    ],
                }),
            ),
        ],
        events: vec![Event {
            time_unix_nano: 1_700_000_000_200_000_000,
            name: "conflict".into(),
            attributes: vec![kv("attempt", Value::IntValue(2))],
            dropped_attributes_count: 0,
        }],
        links: vec![Link {
            trace_id: hex::decode(LINKED_TRACE).unwrap(),
            span_id: hex::decode(LINKED_SPAN).unwrap(),
            ..Default::default()
        }],
        status: Some(Status {
            message: "the object has been modified".into(),
            code: 2,
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s(&format!("kubetrail-{tag}"))),
                    kv("k8s.cluster.name", s("kind")),
                ],
                dropped_attributes_count: 0,
                entity_refs: vec![],
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "kubetrail".into(),
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                spans: vec![root, child],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Asserts that `spans` are exactly the two spans of `sample_request(tag)`.
fn assert_sample_spans(spans: &[ReceivedSpan], tag: &str, via: Protocol) {
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for span in spans {
        assert_eq!(span.service_name, format!("kubetrail-{tag}"));
        assert_eq!(span.resource_attributes["k8s.cluster.name"], "kind");
        assert_eq!(
            span.resource_attributes["service.name"],
            format!("kubetrail-{tag}")
        );
        assert_eq!(span.scope_name, "kubetrail");
        assert_eq!(span.trace_id, TRACE_ID);
        assert_eq!(span.via, via);
    }

    let root = &spans[0];
    assert_eq!(root.span_id, ROOT_ID);
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.name, "PATCH deployments");
    assert_eq!(root.kind, 2);
    assert_eq!(root.start_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(root.end_unix_nano, 1_700_000_000_500_000_000);
    assert!(root.attributes.is_empty());
    assert!(root.events.is_empty());
    assert!(root.links.is_empty());
    assert_eq!((root.status_code, root.status_message.as_str()), (1, ""));

    let child = &spans[1];
    assert_eq!(child.span_id, CHILD_ID);
    assert_eq!(child.parent_span_id.as_deref(), Some(ROOT_ID));
    assert_eq!(child.name, "replicaset scale");
    assert_eq!(child.kind, 1);
    assert_eq!(child.start_unix_nano, 1_700_000_000_100_000_001);
    assert_eq!(child.end_unix_nano, 1_700_000_000_400_000_003);
    let attrs: Vec<(&str, &str)> = child
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        attrs,
        [
            ("big", "9223372036854775807"),
            ("dry_run", "false"),
            ("k8s.namespace.name", "default"),
            ("ratio", "0.25"),
            ("replicas", "3"),
            ("verbs", r#"["get","patch"]"#),
        ]
    );
    assert_eq!(child.events.len(), 1);
    assert_eq!(child.events[0].0, "conflict");
    assert_eq!(child.events[0].1["attempt"], "2");
    assert_eq!(
        child.links,
        [(LINKED_TRACE.to_owned(), LINKED_SPAN.to_owned())]
    );
    assert_eq!(child.status_code, 2);
    assert_eq!(child.status_message, "the object has been modified");
}

fn http_client() -> reqwest::Client {
    // No proxy: the receiver is on loopback and must be reached directly.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Body {
    Protobuf,
    Json,
}

async fn post(
    receiver: &OtlpReceiver,
    request: &ExportTraceServiceRequest,
    body: Body,
    gzipped: bool,
) -> reqwest::Response {
    let (content_type, bytes) = match body {
        Body::Protobuf => ("application/x-protobuf", request.encode_to_vec()),
        Body::Json => ("application/json", serde_json::to_vec(request).unwrap()),
    };
    let mut builder = http_client()
        .post(format!("{}/v1/traces", receiver.http_endpoint()))
        .header("content-type", content_type)
        .header("x-test-header", "yes");
    let bytes = if gzipped {
        builder = builder.header("content-encoding", "gzip");
        gzip(&bytes)
    } else {
        bytes
    };
    builder.body(bytes).send().await.unwrap()
}

async fn grpc_client(receiver: &OtlpReceiver) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(receiver.grpc_endpoint())
        .await
        .unwrap()
}

#[tokio::test]
async fn endpoints_are_loopback_with_distinct_ports() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let grpc = receiver.grpc_endpoint();
    let http = receiver.http_endpoint();
    assert!(grpc.starts_with("http://127.0.0.1:"), "{grpc}");
    assert!(http.starts_with("http://127.0.0.1:"), "{http}");
    assert_ne!(grpc, http);
    assert_eq!(receiver.http_traces_url(), format!("{http}/v1/traces"));
    assert!(receiver.spans().is_empty());
    assert_eq!(receiver.request_count(), 0);
    receiver.shutdown().await;
}

#[tokio::test]
async fn grpc_export_stores_spans() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut client = grpc_client(&receiver).await;
    let response = client.export(sample_request("grpc")).await.unwrap();
    assert_eq!(response.into_inner().partial_success, None);

    let spans = receiver.wait_for_spans(2, WAIT).await.unwrap();
    assert_sample_spans(&spans, "grpc", Protocol::Grpc);
    assert_eq!(receiver.request_count(), 1);
    assert_eq!(receiver.failed_count(), 0);
    let requests = receiver.requests();
    assert_eq!(requests[0].via, Protocol::Grpc);
    assert_eq!(requests[0].request, sample_request("grpc"));
    assert!(
        requests[0].headers["content-type"].starts_with("application/grpc"),
        "{:?}",
        requests[0].headers
    );
    receiver.shutdown().await;
}

#[tokio::test]
async fn grpc_export_accepts_gzip() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut client = grpc_client(&receiver)
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client.export(sample_request("grpc-gzip")).await.unwrap();
    let spans = receiver.spans();
    assert_sample_spans(&spans, "grpc-gzip", Protocol::Grpc);
    assert_eq!(receiver.requests()[0].headers["grpc-encoding"], "gzip");
    receiver.shutdown().await;
}

async fn http_round_trip(body: Body, gzipped: bool) {
    let receiver = OtlpReceiver::start().await.unwrap();
    let tag = format!("{body:?}-{gzipped}");
    let response = post(&receiver, &sample_request(&tag), body, gzipped).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = response.bytes().await.unwrap();
    match body {
        Body::Protobuf => {
            assert_eq!(content_type, "application/x-protobuf");
            let decoded =
                kubetrail_testkit::opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(bytes)
                    .unwrap();
            assert_eq!(decoded.partial_success, None);
        }
        Body::Json => {
            assert_eq!(content_type, "application/json");
            let _: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        }
    }

    // The response has arrived, so the spans are already stored.
    assert_sample_spans(&receiver.spans(), &tag, Protocol::Http);
    assert_eq!(receiver.request_count(), 1);
    let request = &receiver.requests()[0];
    assert_eq!(request.via, Protocol::Http);
    assert_eq!(request.request, sample_request(&tag));
    assert_eq!(request.headers["x-test-header"], "yes");
    receiver.shutdown().await;
}

#[tokio::test]
async fn http_protobuf_plain() {
    http_round_trip(Body::Protobuf, false).await;
}

#[tokio::test]
async fn http_protobuf_gzip() {
    http_round_trip(Body::Protobuf, true).await;
}

#[tokio::test]
async fn http_json_plain() {
    http_round_trip(Body::Json, false).await;
}

#[tokio::test]
async fn http_json_gzip() {
    http_round_trip(Body::Json, true).await;
}

#[tokio::test]
async fn http_accepts_content_type_parameters() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let response = http_client()
        .post(receiver.http_traces_url())
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(serde_json::to_vec(&sample_request("params")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(receiver.spans().len(), 2);
    receiver.shutdown().await;
}

#[tokio::test]
async fn http_rejects_bad_requests_without_counting_them() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.fail_next(1);
    let client = http_client();

    let wrong_type = client
        .post(receiver.http_traces_url())
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);

    let bad_json = client
        .post(receiver.http_traces_url())
        .header("content-type", "application/json")
        .body("{\"resourceSpans\": 7}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);

    let bad_gzip = client
        .post(receiver.http_traces_url())
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_gzip.status(), 400);

    let wrong_path = client
        .post(format!("{}/v1/logs", receiver.http_endpoint()))
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_path.status(), 404);

    assert_eq!(receiver.request_count(), 0);
    // The pending injected failure was not used up by malformed requests.
    assert_eq!(receiver.failed_count(), 0);
    let response = post(&receiver, &sample_request("x"), Body::Protobuf, false).await;
    assert_eq!(response.status(), 503);
    assert_eq!(receiver.failed_count(), 1);
    receiver.shutdown().await;
}

#[tokio::test]
async fn fail_next_grpc_unavailable_then_success() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut client = grpc_client(&receiver).await;
    receiver.fail_next(1);

    let status = client.export(sample_request("fail")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(receiver.failed_count(), 1);
    assert_eq!(receiver.request_count(), 0);
    assert!(receiver.spans().is_empty());

    client.export(sample_request("ok")).await.unwrap();
    assert_eq!(receiver.failed_count(), 1);
    assert_eq!(receiver.request_count(), 1);
    assert_sample_spans(&receiver.spans(), "ok", Protocol::Grpc);
    receiver.shutdown().await;
}

#[tokio::test]
async fn fail_next_http_503_then_success() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.fail_next(1);

    let failed = post(&receiver, &sample_request("fail"), Body::Json, true).await;
    assert_eq!(failed.status(), 503);
    assert_eq!(receiver.failed_count(), 1);
    assert!(receiver.spans().is_empty());

    let ok = post(&receiver, &sample_request("ok"), Body::Json, true).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(receiver.request_count(), 1);
    assert_sample_spans(&receiver.spans(), "ok", Protocol::Http);
    receiver.shutdown().await;
}

#[tokio::test]
async fn fail_next_counts_across_protocols() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut client = grpc_client(&receiver).await;
    receiver.fail_next(2);

    let status = client.export(sample_request("a")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let response = post(&receiver, &sample_request("b"), Body::Protobuf, false).await;
    assert_eq!(response.status(), 503);
    assert_eq!(receiver.failed_count(), 2);

    client.export(sample_request("c")).await.unwrap();
    let response = post(&receiver, &sample_request("d"), Body::Protobuf, false).await;
    assert_eq!(response.status(), 200);

    let spans = receiver.wait_for_spans(4, WAIT).await.unwrap();
    let services: Vec<_> = spans.iter().map(|s| s.service_name.as_str()).collect();
    assert_eq!(
        services,
        ["kubetrail-c", "kubetrail-c", "kubetrail-d", "kubetrail-d"]
    );
    assert_eq!(receiver.request_count(), 2);
    assert_eq!(receiver.failed_count(), 2);
    receiver.shutdown().await;
}

#[tokio::test]
async fn wait_for_spans_times_out_saying_how_many_arrived() {
    let receiver = OtlpReceiver::start().await.unwrap();
    post(&receiver, &sample_request("few"), Body::Protobuf, false).await;
    let err = receiver
        .wait_for_spans(3, Duration::from_millis(200))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("waiting for 3 spans: 2 arrived"), "{err}");
    receiver.shutdown().await;
}

#[tokio::test]
async fn wait_for_spans_wakes_when_spans_arrive() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut client = grpc_client(&receiver).await;
    // `join!` polls the waiter first, so it is already waiting (with 0 spans
    // stored) when the exports start.
    let (waited, ()) = tokio::join!(receiver.wait_for_spans(4, WAIT), async {
        client.export(sample_request("one")).await.unwrap();
        assert_eq!(receiver.spans().len(), 2);
        post(&receiver, &sample_request("two"), Body::Json, false).await;
    });
    let spans = waited.unwrap();
    assert_eq!(spans.len(), 4);
    assert_eq!(spans[0].via, Protocol::Grpc);
    assert_eq!(spans[3].via, Protocol::Http);
    // Already satisfied: returns at once.
    assert_eq!(receiver.wait_for_spans(0, WAIT).await.unwrap().len(), 4);
    receiver.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_both_listeners() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let http = receiver.http_traces_url();
    let grpc = receiver.grpc_endpoint();
    // An open gRPC connection must not keep shutdown from finishing.
    let mut client = grpc_client(&receiver).await;
    client.export(sample_request("before")).await.unwrap();
    receiver.shutdown().await;

    assert!(
        http_client()
            .post(&http)
            .header("content-type", "application/x-protobuf")
            .body(Vec::new())
            .send()
            .await
            .is_err()
    );
    assert!(TraceServiceClient::connect(grpc).await.is_err());
}
