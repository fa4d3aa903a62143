//! The help texts of the worker's metrics (the pipeline's counters and sizes, the order
//! stage's), registered once where the metrics recorder is installed.

/// Registers the descriptions (help text and units) of the worker's metrics with the installed
/// [`metrics`] recorder (a Prometheus exporter shows them as `# HELP`). Call it once after
/// installing a recorder; the metrics are recorded either way.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    let counters: [(&'static str, &'static str); 15] = [
        (
            "kubetrail_events_processed_total",
            "Audit events offered to the pipeline.",
        ),
        (
            "kubetrail_events_filtered_total",
            "Audit events the filter dropped, by reason (reads, leases, dry runs, …).",
        ),
        (
            "kubetrail_requests_duplicate_total",
            "Stages of a request that was already turned into a span (repeats, later stages).",
        ),
        (
            "kubetrail_requests_incomplete_total",
            "Requests released without a final stage (exported, marked incomplete).",
        ),
        (
            "kubetrail_requests_untimed_total",
            "Requests with no usable timestamp: counted, not exported.",
        ),
        (
            "kubetrail_spans_request_total",
            "Request spans produced (one per request, or per deletecollection item).",
        ),
        (
            "kubetrail_spans_object_total",
            "Object spans produced (one per object per window and segment).",
        ),
        (
            "kubetrail_families_emitted_total",
            "Object families whose object spans were emitted (each segment counts).",
        ),
        (
            "kubetrail_families_forced_total",
            "Families emitted before their linger because aggregate.max_open_objects was reached.",
        ),
        (
            "kubetrail_events_late_total",
            "Events that arrived at or before the watermark (processed at once, marked late).",
        ),
        (
            "kubetrail_events_ahead_total",
            "Events set aside because they were far ahead of every source.",
        ),
        (
            "kubetrail_events_ahead_dropped_total",
            "Far-ahead events dropped because the set-aside buffer was full (logged).",
        ),
        (
            "kubetrail_events_reordered_total",
            "Events released later than they arrived because an earlier one had to go first.",
        ),
        (
            "kubetrail_events_order_forced_total",
            "Events released before the watermark reached them because order.max_held was reached.",
        ),
        (
            "kubetrail_sources_idle_total",
            "Sources forgotten by the order stage after order.idle_timeout of silence.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_counter!(
        "kubetrail_spans_suppressed_total",
        Unit::Count,
        "Spans not exported again after a restart: the durable log recorded them as delivered."
    );
    let gauges: [(&'static str, &'static str); 6] = [
        (
            "kubetrail_linker_objects",
            "Objects in the linker's learned owner graph (bounded by link.max_objects), by partition where several pipelines run.",
        ),
        (
            "kubetrail_open_families",
            "Object families held open (not yet emitted), by partition where several pipelines run.",
        ),
        (
            "kubetrail_open_objects",
            "Objects held open (bounded by aggregate.max_open_objects), by partition where several pipelines run.",
        ),
        (
            "kubetrail_pending_requests",
            "Requests waiting for their final stage, by partition where several pipelines run.",
        ),
        (
            "kubetrail_order_held_events",
            "Events held by the order stage until the watermark passes them (bounded by order.max_held).",
        ),
        (
            "kubetrail_order_sources",
            "Sources (API servers) the order stage tracks.",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, Unit::Count, help);
    }
    describe_gauge!(
        "kubetrail_watermark_seconds",
        Unit::Seconds,
        "The order stage's watermark (event time every source has passed), Unix seconds."
    );
}
