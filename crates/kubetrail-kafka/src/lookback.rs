//! Where a newly assigned partition starts: `lookback` before the last committed message.
//!
//! The start is the first offset whose message time is at or after
//! `time(committed - 1) - lookback`. The broker's time index (`offsets_for_times`) is asked
//! first, but only as a hint: it is checked by reading the messages around it, and when it is
//! wrong (tansu 0.6 always answers the earliest offset) the offset is found by binary search,
//! reading one message per step. A step that cannot read a message stops the search at the
//! lower bound found so far: starting earlier only re-reads more.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdError;
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};

/// The most messages read to find one start offset.
const MAX_STEPS: usize = 64;

/// Finds the first offset in `[lo, hi]` whose message time is at or after `target`, given
/// that the message at `hi` is (it is the last processed one). `read(o)` returns the first
/// message at or after offset `o` as (offset, time), or `None` when it cannot be read.
pub(crate) fn first_offset_at_or_after(
    mut lo: i64,
    mut hi: i64,
    target: i64,
    hint: Option<i64>,
    mut read: impl FnMut(i64) -> Option<(i64, i64)>,
) -> i64 {
    if lo >= hi {
        return hi.min(lo);
    }
    let mut steps = 0;
    if let Some(h) = hint.filter(|h| (lo..=hi).contains(h)) {
        steps += 1;
        match read(h) {
            Some((_, t)) if t >= target => {
                hi = h;
                if h > lo {
                    steps += 1;
                    match read(h - 1) {
                        // The message just before the hint is older: the hint is exact.
                        Some((o, t)) if o < h && t < target => return h,
                        // Younger, or a gap before the hint: search below it.
                        Some(_) => {}
                        None => return lo,
                    }
                }
            }
            Some((o, _)) => lo = o.saturating_add(1).min(hi),
            None => return lo,
        }
    }
    while lo < hi && steps < MAX_STEPS {
        steps += 1;
        let mid = lo + (hi - lo) / 2;
        match read(mid) {
            // Offsets in [mid, o) are gaps: starting at mid is starting at o.
            Some((_, t)) if t >= target => hi = mid,
            Some((o, _)) => lo = o.saturating_add(1).min(hi),
            None => return lo,
        }
    }
    lo
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

    /// A log of (offset, time) with gaps.
    fn log() -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        let mut t = 1000;
        for o in 0..200 {
            if o % 7 == 3 {
                continue; // gaps (transaction markers, compaction)
            }
            t += if o % 5 == 0 { 0 } else { 10 };
            v.push((o, t));
        }
        v
    }

    fn reader(log: &[(i64, i64)], reads: &mut usize) -> impl FnMut(i64) -> Option<(i64, i64)> {
        move |o| {
            *reads += 1;
            log.iter().copied().find(|(x, _)| *x >= o)
        }
    }

    fn expected(log: &[(i64, i64)], target: i64) -> i64 {
        log.iter()
            .find(|(_, t)| *t >= target)
            .map(|(o, _)| *o)
            .unwrap()
    }

    #[test]
    fn finds_the_first_offset_at_or_after_a_time_with_or_without_a_good_hint() {
        let log = log();
        let last = log.last().unwrap().0;
        for target in [0, 1000, 1015, 1500, 1999, log.last().unwrap().1] {
            let want = expected(&log, target);
            // No hint, a wrong hint (tansu: always 0), the exact hint, a late hint.
            for hint in [None, Some(0), Some(want), Some(last)] {
                let mut reads = 0;
                let got = first_offset_at_or_after(0, last, target, hint, reader(&log, &mut reads));
                // A start in a gap just before `want` is equivalent to `want`.
                let first_message_from_got = log.iter().find(|(o, _)| *o >= got).unwrap().0;
                assert_eq!(
                    first_message_from_got, want,
                    "target {target} hint {hint:?}"
                );
                assert!(reads <= 12, "{reads} reads");
                if hint == Some(want) && log.iter().any(|(o, _)| *o == want - 1) {
                    assert!(reads <= 2, "an exact hint costs two reads, not {reads}");
                }
            }
        }
    }

    #[test]
    fn unreadable_messages_fall_back_to_the_lower_bound() {
        assert_eq!(first_offset_at_or_after(5, 100, 50, None, |_| None), 5);
        assert_eq!(first_offset_at_or_after(5, 100, 50, Some(40), |_| None), 5);
        assert_eq!(first_offset_at_or_after(9, 9, 50, None, |_| None), 9);
    }
}
