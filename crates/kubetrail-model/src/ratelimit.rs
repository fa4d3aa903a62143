//! A bound on log lines about per-item problems.
//!
//! One bad item costs one counted metric increment and, at most, one log line: a 10,000-item
//! EventList of bad items, or a log file of broken lines, must not write 10,000 lines (the log
//! pipeline of the cluster would pay for it, and the one useful line drowns). So such lines go
//! through a [`LogLimiter`]: the first `max` of an interval are written, the rest are counted
//! and written as one summary line when the next interval begins (and callers add one summary
//! line per batch for what they held back). The metrics count every item either way.
//!
//! It takes the time as an argument (no clock of its own), so it is deterministic under test.

use std::time::{Duration, Instant};

/// What [`LogLimiter::check`] decided for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogVerdict {
    /// Write the line.
    pub log: bool,
    /// Lines held back in the interval that just ended (write them as one summary line
    /// before this one); 0 when none were, or the interval goes on.
    pub suppressed_before: u64,
}

/// Lets through at most `max` lines per `interval`; counts the rest.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    max: u32,
    interval: Duration,
    window: Option<Instant>,
    shown: u32,
    suppressed: u64,
}

/// Lines about bad items kubetrail writes at most per [`ITEM_LOG_INTERVAL`] (webhook items,
/// followed log lines, Kafka messages: each place its own limiter).
pub const ITEM_LOG_MAX: u32 = 20;
/// See [`ITEM_LOG_MAX`].
pub const ITEM_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl LogLimiter {
    /// The limiter of per-item problems: [`ITEM_LOG_MAX`] lines per [`ITEM_LOG_INTERVAL`].
    pub fn for_items() -> Self {
        LogLimiter::new(ITEM_LOG_MAX, ITEM_LOG_INTERVAL)
    }

    /// At most `max` lines per `interval`.
    pub fn new(max: u32, interval: Duration) -> Self {
        LogLimiter {
            max,
            interval,
            window: None,
            shown: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be written at `now`.
    pub fn check(&mut self, now: Instant) -> LogVerdict {
        let mut suppressed_before = 0;
        let expired = self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= self.interval);
        if expired {
            suppressed_before = std::mem::take(&mut self.suppressed);
            self.window = Some(now);
            self.shown = 0;
        }
        let log = self.shown < self.max;
        if log {
            self.shown += 1;
        } else {
            self.suppressed += 1;
        }
        LogVerdict {
            log,
            suppressed_before,
        }
    }

    /// Lines held back so far in the current interval.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lines_of_an_interval_pass_the_rest_are_counted_and_reported_once() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, Duration::from_secs(10));
        let first: Vec<bool> = (0..10).map(|_| l.check(t0).log).collect();
        assert_eq!(
            first,
            [
                true, true, true, false, false, false, false, false, false, false
            ]
        );
        assert_eq!(l.suppressed(), 7);
        // Still the same interval: nothing more passes, nothing is reported yet.
        let v = l.check(t0 + Duration::from_secs(9));
        assert_eq!(
            v,
            LogVerdict {
                log: false,
                suppressed_before: 0
            }
        );
        // The next interval: the count of the last one is handed over once, lines pass again.
        let v = l.check(t0 + Duration::from_secs(10));
        assert_eq!(
            v,
            LogVerdict {
                log: true,
                suppressed_before: 8
            }
        );
        assert_eq!(l.suppressed(), 0);
        assert_eq!(l.check(t0 + Duration::from_secs(11)).suppressed_before, 0);
    }

    #[test]
    fn ten_thousand_bad_items_write_a_bounded_number_of_lines() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(10, Duration::from_secs(10));
        let written = (0..10_000).filter(|_| l.check(t0).log).count();
        assert_eq!(written, 10);
        assert_eq!(l.suppressed(), 9_990);
    }
}
