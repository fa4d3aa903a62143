//! The help texts of the durable log's metrics, registered once where the metrics recorder is
//! installed.

/// Registers the descriptions (help text and units) of the durable log's metrics with the
/// installed [`metrics`] recorder. Call it once after installing a recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "kubetrail_log_damaged_total",
        Unit::Count,
        "Segments found damaged at start-up (a torn or corrupt tail), cut back to their last whole record."
    );
    describe_counter!(
        "kubetrail_log_damaged_bytes_total",
        Unit::Bytes,
        "Bytes cut off damaged segments at start-up."
    );
    describe_counter!(
        "kubetrail_log_recovered_batches_total",
        Unit::Count,
        "Unexported batches found in the log at start-up and processed again."
    );
    describe_counter!(
        "kubetrail_log_full_total",
        Unit::Count,
        "Appends refused because the log reached its byte budget (the receiver answers 503)."
    );
    describe_counter!(
        "kubetrail_log_fsyncs_total",
        Unit::Count,
        "fsync calls on log segments."
    );
    describe_counter!(
        "kubetrail_log_write_errors_total",
        Unit::Count,
        "Failed writes to the log (the append is refused, the file cut back)."
    );
    describe_counter!(
        "kubetrail_log_appends_total",
        Unit::Count,
        "Batches appended to the log."
    );
    describe_counter!(
        "kubetrail_log_retention_cut_total",
        Unit::Count,
        "Segments deleted by retention (everything in them exported, or past the budget)."
    );
    describe_counter!(
        "kubetrail_log_unreadable_batches_total",
        Unit::Count,
        "Batches whose record could not be read back (the file changed under the log): logged, not processed."
    );
    describe_gauge!(
        "kubetrail_log_bytes",
        Unit::Bytes,
        "Bytes the log's segments hold now."
    );
    describe_gauge!(
        "kubetrail_log_budget_bytes",
        Unit::Bytes,
        "The log's byte budget (durable.max_bytes)."
    );
    describe_gauge!(
        "kubetrail_log_segments",
        Unit::Count,
        "Segment files of the log, the active one included."
    );
    describe_gauge!(
        "kubetrail_log_unexported_batches",
        Unit::Count,
        "Batches in the log not yet exported and acknowledged."
    );
}
