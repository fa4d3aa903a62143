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
}
