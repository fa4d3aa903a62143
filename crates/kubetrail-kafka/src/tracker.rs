//! Which offsets of a partition may be committed: the end of the longest prefix of handed-out
//! batches that are all acknowledged.

use std::collections::VecDeque;

/// The batches of one partition handed out since it was assigned, in offset order.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    slots: VecDeque<Slot>,
    next_id: u64,
    /// The offset after the acknowledged prefix (the next offset to commit).
    committable: Option<i64>,
    /// The offset last sent to be committed, or the committed offset found at assignment.
    sent: Option<i64>,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    /// The offset after the batch's last message.
    end: i64,
    acked: bool,
}

impl Tracker {
    /// A tracker for a partition whose committed offset is `committed`.
    pub(crate) fn new(committed: Option<i64>) -> Tracker {
        Tracker {
            sent: committed,
            ..Tracker::default()
        }
    }

    /// Registers the next batch (its messages end before `end`); returns its slot.
    pub(crate) fn hand_out(&mut self, end: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push_back(Slot {
            id,
            end,
            acked: false,
        });
        id
    }

    /// Acknowledges the batch in `slot`. Returns whether the committable offset moved.
    pub(crate) fn ack(&mut self, slot: u64) -> bool {
        // Slots are in id order: find by binary search.
        let Ok(i) = self.slots.binary_search_by_key(&slot, |s| s.id) else {
            return false;
        };
        self.slots[i].acked = true;
        let mut moved = false;
        while self.slots.front().is_some_and(|s| s.acked) {
            if let Some(s) = self.slots.pop_front() {
                self.committable = Some(s.end);
                moved = true;
            }
        }
        moved
    }

    /// The offset to commit, when it is past what was last sent.
    pub(crate) fn to_commit(&self) -> Option<i64> {
        let c = self.committable?;
        match self.sent {
            Some(s) if s >= c => None,
            _ => Some(c),
        }
    }

    /// Records that `offset` was sent to be committed.
    pub(crate) fn sent(&mut self, offset: i64) {
        self.sent = Some(self.sent.map_or(offset, |s| s.max(offset)));
    }

    /// Forgets a commit that failed, so that it is sent again.
    pub(crate) fn unsent(&mut self, last_good: Option<i64>) {
        self.sent = last_good;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_acknowledged_prefix() {
        let mut t = Tracker::new(Some(10));
        let a = t.hand_out(12); // 10..12 (replayed below the commit would be the same)
        let b = t.hand_out(15);
        let c = t.hand_out(20);
        assert_eq!(t.to_commit(), None);
        assert!(!t.ack(c), "out of order: nothing committable yet");
        assert_eq!(t.to_commit(), None);
        assert!(t.ack(a));
        assert_eq!(t.to_commit(), Some(12));
        t.sent(12);
        assert_eq!(t.to_commit(), None);
        assert!(t.ack(b), "b completes the prefix up to c");
        assert_eq!(t.to_commit(), Some(20));
        t.unsent(Some(12));
        assert_eq!(t.to_commit(), Some(20));
        assert!(!t.ack(99), "unknown slots are ignored");
    }

    #[test]
    fn re_read_batches_below_the_committed_offset_commit_nothing_new() {
        let mut t = Tracker::new(Some(100));
        let a = t.hand_out(40);
        let b = t.hand_out(100);
        t.ack(a);
        t.ack(b);
        assert_eq!(t.to_commit(), None);
        let c = t.hand_out(101);
        t.ack(c);
        assert_eq!(t.to_commit(), Some(101));
        let mut fresh = Tracker::new(None);
        let d = fresh.hand_out(3);
        fresh.ack(d);
        assert_eq!(fresh.to_commit(), Some(3));
    }
}
