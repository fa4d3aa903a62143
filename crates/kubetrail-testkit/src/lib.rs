//! Test support for kubetrail.
//!
//! kubetrail's whole job is to emit OTLP traces, so its tests need something
//! that *receives* OTLP the way a real collector does. This crate provides:
//!
//! * [`OtlpReceiver`]: an in-process OTLP trace receiver built from the
//!   official protocol definitions (`opentelemetry-proto`). It listens on
//!   127.0.0.1 with ephemeral ports for gRPC (`TraceService/Export`, gzip
//!   accepted) and for OTLP/HTTP (`POST /v1/traces`, protobuf or JSON body,
//!   optionally gzip-encoded), stores every span it receives, and can be told
//!   to fail requests on purpose so exporters' retry logic can be tested.
//! * [`ReceivedSpan`] and [`flatten`]: a flat, string-keyed view of the spans
//!   in an `ExportTraceServiceRequest`, convenient for assertions.
//! * [`parse_otlp_json_lines`]: reads the OpenTelemetry Collector
//!   file-exporter format (one OTLP/JSON request per line), so tests of file
//!   output can make the same assertions as tests of network output.
//! * [`ApiServerClient`]: the other end of the audit webhook — a client that
//!   behaves like kube-apiserver's batch webhook backend (EventList batches,
//!   retries with exponential backoff on non-2xx, bearer token, TLS with a
//!   custom CA and client certificate, gzip), so the receiver is tested
//!   against the retry behaviour it is designed for.
//! * [`KafkaBroker`]: a real Apache Kafka 4.x broker (KRaft, single node, data
//!   on disk in a temporary directory) started as a child process on free
//!   ports, with topic creation, crash (`stop`) and restart on the same data.
//! * [`Jaeger`] and [`JaegerQuery`]: the real Jaeger v2 all-in-one (in-memory
//!   storage) on free ports, and a client of its HTTP query API that reads
//!   traces back as Jaeger UI does.
//!
//! It also holds the small helpers more than one crate's tests need, so that none is copied
//! from crate to crate (and drifts): [`append`] to an audit log as its writer does (and
//! [`truncate`] it as `copytruncate` does), [`get_text`] to read a page,
//! [`prometheus_value`] and [`prometheus_sum`] to read a `/metrics` page, [`reachable`] to walk
//! a family's span graph, [`audit_id_traces`] to find the traces of planted requests, and
//! [`base64`] to plant a Secret's data.
//!
//! Jaeger and Kafka are built or fetched by the pinned scripts under
//! `scripts/` (`install-jaeger.sh`, `install-kafka.sh`) into `.tools/`; the
//! harnesses run them on first use (once, under a lock).
//!
//! It is a test library: never a dependency of production code.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod encode;
mod files;
mod graph;
mod http;
mod jaeger;
mod kafka;
mod pki;
mod proc;
mod prometheus;
mod receiver;
mod span;
mod tools;
mod webhook;

pub use encode::base64;
pub use files::{append, truncate};
pub use graph::reachable;
pub use http::get_text;
pub use jaeger::{
    JAEGER_ENV, Jaeger, JaegerLog, JaegerProcess, JaegerQuery, JaegerReference, JaegerSpan,
    JaegerTag, JaegerTrace, TraceQuery, percent_encode,
};
pub use kafka::{KAFKA_HOME_ENV, KafkaBroker};
pub use pki::Pki;
pub use proc::rss_bytes;
pub use prometheus::{prometheus_sum, prometheus_value};
pub use receiver::{OtlpReceiver, ReceivedRequest};
pub use span::{
    Protocol, ReceivedSpan, SpanIds, any_value_to_json, any_value_to_string, attributes_to_map,
    audit_id_traces, flatten, id_set, parse_otlp_json, parse_otlp_json_lines,
};
pub use tools::{audit_sample, workspace_root};

pub use webhook::{
    ApiServerClient, BatchOutcome, DEFAULT_BATCH_SIZE, DEFAULT_INITIAL_BACKOFF,
    DEFAULT_MAX_RETRIES, RawResponse, SendReport, event_list,
};

/// Re-export of the protocol crate this receiver is built on, so tests can
/// build requests with exactly the same types (and versions) the receiver
/// decodes.
pub use opentelemetry_proto;
