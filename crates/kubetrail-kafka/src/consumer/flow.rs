//! Backpressure: when a partition is paused and resumed.
//!
//! A partition whose worker is behind keeps closed batches waiting for room in its channel.
//! Once they hold [`max_buffered_bytes`](crate::KafkaConfig::max_buffered_bytes) of message
//! values, the partition is paused (librdkafka stops fetching it); it is resumed once
//! nothing waits any more. So consumption slows down and nothing is dropped. [`Flow`] is
//! that decision, apart from the librdkafka calls that apply it.

/// What to do with a partition's fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlowChange {
    /// Stop fetching it (and count a pause).
    Pause,
    /// Fetch it again.
    Resume,
}

/// Whether one partition is paused.
#[derive(Debug, Default)]
pub(super) struct Flow {
    paused: bool,
}

impl Flow {
    /// After a round of handing batches over, with `held_bytes` waiting (`nothing_waiting`:
    /// no batch at all): pauses a partition that holds at least `max_buffered_bytes`,
    /// resumes a paused one that holds nothing. Returns the change to apply, if any.
    pub(super) fn update(
        &mut self,
        held_bytes: usize,
        nothing_waiting: bool,
        max_buffered_bytes: usize,
    ) -> Option<FlowChange> {
        if held_bytes >= max_buffered_bytes && !self.paused {
            self.paused = true;
            Some(FlowChange::Pause)
        } else if nothing_waiting && self.paused {
            self.paused = false;
            Some(FlowChange::Resume)
        } else {
            None
        }
    }

    /// Whether the partition is paused now.
    #[cfg(test)]
    pub(super) fn paused(&self) -> bool {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 100;

    #[test]
    fn below_the_limit_nothing_changes() {
        let mut f = Flow::default();
        assert_eq!(f.update(0, true, MAX), None);
        assert_eq!(f.update(99, false, MAX), None);
        assert!(!f.paused());
    }

    #[test]
    fn reaching_the_limit_pauses_once() {
        let mut f = Flow::default();
        assert_eq!(f.update(MAX, false, MAX), Some(FlowChange::Pause));
        assert!(f.paused());
        assert_eq!(f.update(MAX * 3, false, MAX), None, "already paused");
    }

    #[test]
    fn a_paused_partition_resumes_only_once_nothing_waits() {
        let mut f = Flow::default();
        assert_eq!(f.update(150, false, MAX), Some(FlowChange::Pause));
        assert_eq!(
            f.update(40, false, MAX),
            None,
            "below the limit, still waiting"
        );
        assert!(f.paused());
        assert_eq!(f.update(0, true, MAX), Some(FlowChange::Resume));
        assert!(!f.paused());
        assert_eq!(f.update(0, true, MAX), None, "resumed once");
        assert_eq!(
            f.update(MAX, false, MAX),
            Some(FlowChange::Pause),
            "and again"
        );
    }
}
