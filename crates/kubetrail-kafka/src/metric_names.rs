//! The help texts of the Kafka queue backend's metrics (consumer, producer, family router),
//! registered once where the metrics recorder is installed.

/// Registers the descriptions (help text and units) of the Kafka backend's metrics with the
/// installed [`metrics`] recorder. Call it once after installing a recorder.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    let counters: [(&'static str, &'static str); 12] = [
        (
            "kubetrail_kafka_commits_total",
            "Offset commits, by result (ok, error).",
        ),
        (
            "kubetrail_kafka_messages_malformed_total",
            "Consumed messages that are not a kubetrail audit event: logged, committed past.",
        ),
        (
            "kubetrail_kafka_rebalances_total",
            "Consumer group rebalances, by kind (assign, revoke).",
        ),
        (
            "kubetrail_kafka_messages_consumed_total",
            "Messages consumed (re-read history included).",
        ),
        (
            "kubetrail_kafka_messages_replayed_total",
            "Messages consumed again from the lookback after an assignment, to rebuild open families.",
        ),
        (
            "kubetrail_kafka_partitions_paused_total",
            "Times a partition was paused because its buffered messages reached kafka.max_buffered_bytes.",
        ),
        (
            "kubetrail_kafka_produce_errors_total",
            "Failed produce attempts, by kind.",
        ),
        (
            "kubetrail_kafka_producer_recreated_total",
            "Times the producer was recreated after a fatal error.",
        ),
        (
            "kubetrail_kafka_events_bodies_dropped_total",
            "Audit events too large for kafka.max_event_bytes, published without their request and response bodies.",
        ),
        (
            "kubetrail_kafka_messages_produced_total",
            "Messages (audit events) produced.",
        ),
        (
            "kubetrail_kafka_events_crossing_total",
            "Events the family router placed across a namespace boundary (an owner in another namespace).",
        ),
        (
            "kubetrail_kafka_events_routed_total",
            "Events the family router routed, by scope (namespace, cluster).",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    describe_gauge!(
        "kubetrail_kafka_consumer_lag",
        Unit::Count,
        "Messages between the committed offset and the end of the partition, by partition (from librdkafka statistics)."
    );
}
