//! The help texts of the embedded queue's metrics, registered once where the metrics recorder
//! is installed.

/// Registers the descriptions (help text and units) of the queue's metrics with the installed
/// [`metrics`] recorder. Call it once after installing a recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "kubetrail_queue_events_published_total",
        Unit::Count,
        "Audit events published to the queue, by queue."
    );
    describe_counter!(
        "kubetrail_queue_full_total",
        Unit::Count,
        "Publishes refused because the queue was full (the receiver answers 429), by queue."
    );
    describe_gauge!(
        "kubetrail_queue_depth_events",
        Unit::Count,
        "Audit events in the queue now, by queue."
    );
    describe_gauge!(
        "kubetrail_queue_depth_bytes",
        Unit::Bytes,
        "Bytes of audit events in the queue now, by queue."
    );
}
