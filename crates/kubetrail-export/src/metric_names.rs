//! Metric names, in one place so that the code and [`describe_metrics`] agree.

pub(crate) const SPANS_EXPORTED: &str = "kubetrail_spans_exported_total";
pub(crate) const BATCHES: &str = "kubetrail_export_batches_total";
pub(crate) const RETRIES: &str = "kubetrail_export_retries_total";
pub(crate) const ERRORS: &str = "kubetrail_export_errors_total";
pub(crate) const SPANS_DROPPED: &str = "kubetrail_spans_dropped_total";
pub(crate) const SPANS_REJECTED: &str = "kubetrail_spans_rejected_total";
pub(crate) const QUEUE_BATCHES: &str = "kubetrail_export_queue_batches";

/// Registers the descriptions (help text and units) of this crate's metrics with the
/// installed [`metrics`] recorder. Optional: the metrics are recorded either way; call it once
/// after installing a recorder (a Prometheus exporter shows the descriptions as `# HELP`).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        SPANS_EXPORTED,
        Unit::Count,
        "Spans a sink accepted, by sink."
    );
    describe_counter!(BATCHES, Unit::Count, "Batches a sink accepted, by sink.");
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Delivery attempts that were retried after a retryable error, by sink."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "Failed delivery attempts, by sink and kind (retryable, permanent)."
    );
    describe_counter!(
        SPANS_DROPPED,
        Unit::Count,
        "Spans a sink did not deliver, by sink and reason (rejected: permanent error; retry_exhausted: the retry policy gave up)."
    );
    describe_counter!(
        SPANS_REJECTED,
        Unit::Count,
        "Spans an OTLP receiver reported as rejected in a partial success response, by sink."
    );
    describe_gauge!(
        QUEUE_BATCHES,
        Unit::Count,
        "Submissions waiting in the exporter's queue."
    );
}
