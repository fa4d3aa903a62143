//! Where a newly assigned partition starts: `lookback` before the last committed message.
//!
//! The start is the first offset whose message time is at or after
//! `time(committed - 1) - lookback`: the time of the last committed message is read with a
//! group-less probe consumer ([`read_time`]), and the offset is the broker's answer to
//! `offsets_for_times` for that target ([`start_offset`]), which Kafka defines as exactly
//! "the earliest offset whose timestamp is at or after the target".
//!
//! (Before the tests ran against Apache Kafka, a Kafka-protocol re-implementation whose time
//! index always answered the earliest offset forced a verification and a binary search here;
//! Apache Kafka's answer is exact, so both went.)

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdError;
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};

/// The start offset for a partition whose lowest offset is `low` and last committed message
/// is `last` (`committed - 1`), given the broker's `offsets_for_times` answer for the target
/// time: the answer clamped to `[low, last]`; with no answer (no message at or after the
/// target — impossible while `last` exists, so a broker error) the earliest offset, because
/// starting earlier only re-reads more.
pub(crate) fn start_offset(low: i64, last: i64, answer: Option<i64>) -> i64 {
    match answer {
        Some(o) if o >= 0 => o.clamp(low, last.max(low)),
        _ => low,
    }
}

/// Reads the first message at or after `offset` of `topic`/`partition` with a group-less
/// consumer: (offset, timestamp in ms).
pub(crate) fn read_time<C: ConsumerContext>(
    probe: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Option<(i64, i64)> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .ok()?;
    if let Err(e) = probe.assign(&tpl) {
        tracing::debug!(error = %e, partition, offset, "kafka lookback probe: assign failed");
        return None;
    }
    let deadline = std::time::Instant::now() + timeout;
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break None;
        }
        match probe.poll(left) {
            Some(Ok(m)) if m.partition() == partition && m.offset() >= offset => {
                tracing::debug!(
                    partition,
                    offset,
                    found = m.offset(),
                    "kafka lookback probe: read"
                );
                break match m.timestamp() {
                    Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some((m.offset(), t)),
                    Timestamp::NotAvailable => None,
                };
            }
            Some(Ok(_)) => {}
            Some(Err(RdError::PartitionEOF(p))) if p == partition => {
                tracing::debug!(partition, offset, "kafka lookback probe: end of partition");
                break None;
            }
            Some(Err(e)) => tracing::debug!(error = %e, partition, offset, "kafka lookback probe"),
            None => {
                tracing::debug!(partition, offset, "kafka lookback probe: nothing");
                break None;
            }
        }
    };
    let _ = probe.unassign();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_brokers_answer_is_the_start_within_the_partition() {
        assert_eq!(start_offset(0, 99, Some(40)), 40);
        // An answer below the log start (deleted segments) or past the last committed
        // message cannot be: clamped.
        assert_eq!(start_offset(10, 99, Some(3)), 10);
        assert_eq!(start_offset(0, 99, Some(500)), 99);
    }

    #[test]
    fn no_answer_re_reads_from_the_earliest_offset() {
        // librdkafka reports "no such offset" as -1 (Offset::End).
        assert_eq!(start_offset(5, 100, None), 5);
        assert_eq!(start_offset(5, 100, Some(-1)), 5);
    }
}
