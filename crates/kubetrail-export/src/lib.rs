//! Delivery of finished spans: the sinks, and the task that batches, retries and backpressures
//! on their behalf.
//!
//! # Why not the OpenTelemetry SDK's exporter
//!
//! kubetrail's spans are not produced by instrumented code: they are rebuilt from audit events,
//! so every span carries its own actor, and the ids are derived deterministically (see
//! [`kubetrail_model::ids`]). The SDK exporter takes one `Resource` per provider and makes its
//! own ids; we need a `Resource` per span (`service.name` = the acting component — kubelet,
//! kube-scheduler, kubectl … — so Jaeger colours the timeline by who acted) and exact control
//! of trace and span ids. So [`to_export_request`] builds the OTLP
//! `ExportTraceServiceRequest` itself, and [`OtlpSink`] sends it with tonic's generated client
//! (gRPC) or as an HTTP/protobuf POST.
//!
//! # Pieces
//!
//! * [`SpanSink`]: one destination. [`OtlpSink`] (OTLP gRPC or HTTP/protobuf),
//!   [`OtlpJsonFileSink`] (one OTLP/JSON request per line, the OpenTelemetry Collector file
//!   exporter's format), [`TreeSink`] (a human-readable tree in the terminal), [`HtmlReportSink`] (one
//!   self-contained HTML page of Gantt timelines, for people without Jaeger).
//! * [`ExportConfig`]: the `export:` section of the config file (the main OTLP destination,
//!   a list of more sinks, batching, retries, the start-up health check), which
//!   [builds](ExportConfig::build_sinks) the sinks.
//! * [`Exporter`]: the delivery task every run mode shares. It coalesces submissions into
//!   batches, delivers each batch to every sink, retries what is retryable with exponential
//!   backoff (honouring `Retry-After`), and applies backpressure through a bounded queue, so a
//!   slow or down receiver slows the pipeline down instead of losing spans. What is dropped on
//!   purpose (a permanent rejection, or a retry policy that gives up) is logged, counted in
//!   metrics and in the [`ExportReport`], and reported to the submitter through its
//!   [`Delivery`].
//!
//! # Metrics
//!
//! Recorded through the [`metrics`] facade (install a recorder to see them; see
//! [`describe_metrics`]): `kubetrail_spans_exported_total{sink}`,
//! `kubetrail_export_batches_total{sink}`, `kubetrail_export_retries_total{sink}`,
//! `kubetrail_export_errors_total{sink,kind}`, `kubetrail_spans_dropped_total{sink,reason}`,
//! `kubetrail_spans_rejected_total{sink}` (OTLP partial success) and the gauge
//! `kubetrail_export_queue_batches`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod convert;
mod error;
mod exporter;
mod html;
mod json_file;
mod metric_names;
mod otlp;
mod sink;
mod tree;

pub use config::{
    BatchConfig, ExportConfig, FileSinkConfig, OtlpSinkConfig, RunKind, SinkConfig,
    SinkConfigError, SinkFlags, spawn_health_check,
};
pub use convert::{SCOPE_NAME, to_export_request};
pub use error::{ExportError, error_chain};
pub use exporter::{
    Delivery, DeliveryError, ExportHealth, ExportReport, Exporter, ExporterClosed, ExporterConfig,
    ExporterHandle, RetryPolicy,
};
pub use html::{HTML_DATA_VERSION, HtmlOptions, HtmlReport, HtmlReportSink, read_report_data};
pub use json_file::OtlpJsonFileSink;
pub use metric_names::describe_metrics;
pub use otlp::{OtlpConfig, OtlpProtocol, OtlpSink, ParseProtocolError};
pub use sink::SpanSink;
pub use tree::{TreeOptions, TreeSink, render_tree};
