//! Metric names and the Prometheus recorder.

use std::sync::{Mutex, PoisonError};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::ReceiverError;

/// HTTP requests by route template (`path`) and status `code`.
pub(crate) const HTTP_REQUESTS: &str = "kubetrail_http_requests_total";
/// Request latency by route template (`path`), in seconds.
pub(crate) const HTTP_DURATION: &str = "kubetrail_http_request_duration_seconds";
/// Items received in `EventList` bodies (valid or not), by `cluster`.
pub(crate) const EVENTS_RECEIVED: &str = "kubetrail_events_received_total";
/// Events published to the queue, by `cluster`.
pub(crate) const EVENTS_ACCEPTED: &str = "kubetrail_events_accepted_total";
/// Events not published, by `cluster` and `reason`.
pub(crate) const EVENTS_REJECTED: &str = "kubetrail_events_rejected_total";
/// Non-2xx answers to `POST /audit…`, by status `code`.
pub(crate) const BATCHES_REJECTED: &str = "kubetrail_batches_rejected_total";

/// Records of cloud push deliveries (Firehose, Pub/Sub) that carry no Kubernetes audit
/// event (CloudWatch control messages, GKE cluster-operation entries): skipped, not errors.
pub(crate) const RECORDS_SKIPPED: &str = "kubetrail_cloud_records_skipped_total";
/// Connections open now (gauge).
pub(crate) const CONNECTIONS_OPEN: &str = "kubetrail_connections_open";
/// Connections closed at once because `max_connections` were open.
pub(crate) const CONNECTIONS_REFUSED: &str = "kubetrail_connections_refused_total";
/// Request-body bytes held now over all requests (gauge), bounded by `max_inflight_bytes`.
pub(crate) const INFLIGHT_BYTES: &str = "kubetrail_inflight_body_bytes";
/// `POST /audit` requests being received or processed now (gauge).
pub(crate) const INFLIGHT_REQUESTS: &str = "kubetrail_inflight_requests";

/// Latency buckets (seconds) of [`HTTP_DURATION`]: the p99 target is 50 ms.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs a Prometheus recorder as the process-wide `metrics` recorder and returns its
/// handle (pass it to [`Receiver::bind`](crate::Receiver::bind) to serve `GET /metrics`).
///
/// Idempotent: later calls return the handle of the recorder installed by the first. Fails if
/// a different `metrics` recorder was installed first. The returned handle's
/// [`run_upkeep`](PrometheusHandle::run_upkeep) should be called periodically; a serving
/// [`Receiver`](crate::Receiver) given the handle does it.
pub fn install_prometheus() -> Result<PrometheusHandle, ReceiverError> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), DURATION_BUCKETS)
        .map_err(|e| ReceiverError::Metrics(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| {
        ReceiverError::Metrics(format!(
            "another metrics recorder is already installed ({e})"
        ))
    })?;
    describe_metrics();
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Registers the descriptions (help text and units) of the receiver's metrics with the
/// installed [`metrics`] recorder (only effective once a recorder is installed;
/// [`install_prometheus`] calls it).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests answered, by route template and status code."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by route template."
    );
    describe_counter!(
        EVENTS_RECEIVED,
        Unit::Count,
        "Audit events received in EventList bodies (valid or not), by cluster."
    );
    describe_counter!(
        EVENTS_ACCEPTED,
        Unit::Count,
        "Audit events accepted into the queue, by cluster."
    );
    describe_counter!(
        EVENTS_REJECTED,
        Unit::Count,
        "Audit events not accepted, by cluster and reason (malformed_item, queue_full, \
         unavailable, too_large, closed, publish_timeout, too_many_items, inflight_bytes)."
    );
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Connections open now.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connections closed at once because server.max_connections were open."
    );
    describe_gauge!(
        INFLIGHT_BYTES,
        Unit::Bytes,
        "Request-body bytes held now over all requests (bounded by server.max_inflight_bytes)."
    );
    describe_gauge!(
        INFLIGHT_REQUESTS,
        Unit::Count,
        "POST /audit requests being received or processed now."
    );
    describe_counter!(
        BATCHES_REJECTED,
        Unit::Count,
        "Audit webhook requests answered with a non-2xx status, by status code."
    );
    describe_counter!(
        RECORDS_SKIPPED,
        Unit::Count,
        "Records of cloud push deliveries (Firehose, Pub/Sub) that carry no Kubernetes audit event: skipped, not errors."
    );
}
