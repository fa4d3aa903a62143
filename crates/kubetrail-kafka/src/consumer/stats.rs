//! What a consumer reports about itself: [`ConsumerStats`], read through [`StatsHandle`].
//!
//! The polling thread, the batches and their acknowledgements bump [`Counters`] and keep
//! per-partition offset maps in [`ConsumerShared`]; a snapshot puts them together. The rules
//! of those maps (a committed or taken offset only moves forward) are small functions here,
//! so that they are tested without a broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ConsumerShared, lock};

/// What a consumer did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages received from Kafka (re-read ones included).
    pub messages: u64,
    /// Of `messages`, those re-read below the committed offset to rebuild state (lookback).
    pub replayed: u64,
    /// Messages that were not a valid event: skipped, counted, acknowledged.
    pub malformed: u64,
    /// Batches handed to workers.
    pub batches: u64,
    /// Successful offset commits (one per partition committed).
    pub commits: u64,
    /// Failed offset commits (retried).
    pub commit_errors: u64,
    /// Partition assignments and revocations received.
    pub rebalances: u64,
    /// Times a partition was paused because its worker was behind.
    pub pauses: u64,
    /// The partitions assigned now.
    pub assigned: Vec<i32>,
    /// The last offset this consumer committed, per partition (the next offset to read).
    pub committed: BTreeMap<i32, i64>,
    /// Per partition, the offset after the last message a worker took from this consumer.
    /// A taken batch is the worker's: its events are processed (and, when the worker ends,
    /// emitted) even if the partition is revoked now. Commits trail it by what the
    /// watermark still holds, so this — not `committed` — says "everything up to here has
    /// reached a pipeline".
    pub taken: BTreeMap<i32, i64>,
    /// The consumer has closed: it left the group and its polling thread ended.
    pub closed: bool,
}

/// The counters behind [`ConsumerStats`], bumped from any thread.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) messages: AtomicU64,
    pub(super) replayed: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) commit_errors: AtomicU64,
    pub(super) rebalances: AtomicU64,
    pub(super) pauses: AtomicU64,
}

impl ConsumerShared {
    /// A snapshot of the counters, the assigned partitions and the offset maps.
    pub(crate) fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            messages: get(&c.messages),
            replayed: get(&c.replayed),
            malformed: get(&c.malformed),
            batches: get(&c.batches),
            commits: get(&c.commits),
            commit_errors: get(&c.commit_errors),
            rebalances: get(&c.rebalances),
            pauses: get(&c.pauses),
            assigned: lock(&self.assigned).keys().copied().collect(),
            committed: lock(&self.committed).clone(),
            taken: lock(&self.taken).clone(),
            closed: self.closed.load(Ordering::Acquire),
        }
    }
}

/// Records that `partition` was committed at `offset`, if that is past what `committed`
/// holds for it. Returns whether it was (a commit to count).
pub(super) fn record_newer(
    committed: &mut BTreeMap<i32, i64>,
    partition: i32,
    offset: i64,
) -> bool {
    if committed.get(&partition).is_some_and(|&o| o >= offset) {
        return false;
    }
    committed.insert(partition, offset);
    true
}

/// Merges the committed offsets found at an assignment into what is known: per partition the
/// larger of the two.
pub(super) fn merge_committed(known: &mut BTreeMap<i32, i64>, found: &BTreeMap<i32, i64>) {
    for (p, o) in found {
        let e = known.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
    }
}

/// Records that a worker took `partition`'s messages up to (not including) `end`; the
/// taken offset only moves forward, and starts from 0.
pub(super) fn advance_taken(taken: &mut BTreeMap<i32, i64>, partition: i32, end: i64) {
    let next = taken.entry(partition).or_insert(0);
    *next = (*next).max(end);
}

/// A cloneable handle to a consumer's [`ConsumerStats`].
#[derive(Debug, Clone)]
pub struct StatsHandle(pub(crate) Arc<ConsumerShared>);

impl StatsHandle {
    /// The statistics now.
    pub fn get(&self) -> ConsumerStats {
        self.0.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::super::PartitionShared;
    use super::*;

    #[test]
    fn a_committed_offset_is_recorded_only_when_it_moves_forward() {
        let mut c = BTreeMap::new();
        assert!(record_newer(&mut c, 0, 10));
        assert!(
            !record_newer(&mut c, 0, 10),
            "the same offset again is no commit"
        );
        assert!(
            !record_newer(&mut c, 0, 4),
            "an older offset does not go back"
        );
        assert_eq!(c[&0], 10);
        assert!(record_newer(&mut c, 0, 11));
        assert!(
            record_newer(&mut c, 3, 0),
            "a first commit at offset 0 counts"
        );
        assert_eq!(c, BTreeMap::from([(0, 11), (3, 0)]));
    }

    #[test]
    fn commits_are_counted_once_per_forward_move() {
        let shared = ConsumerShared::new("t".to_owned());
        shared.record_commit(1, 5);
        shared.record_commit(1, 5); // a sync commit and its callback report the same offset
        shared.record_commit(1, 3);
        shared.record_commit(2, 7);
        let s = shared.stats();
        assert_eq!(s.commits, 2);
        assert_eq!(s.committed, BTreeMap::from([(1, 5), (2, 7)]));
    }

    #[test]
    fn offsets_found_at_assignment_never_lower_what_is_known() {
        let mut known = BTreeMap::from([(0, 50), (1, 5)]);
        merge_committed(&mut known, &BTreeMap::from([(0, 40), (1, 9), (2, 1)]));
        assert_eq!(known, BTreeMap::from([(0, 50), (1, 9), (2, 1)]));
    }

    #[test]
    fn the_taken_offset_only_moves_forward() {
        let mut taken = BTreeMap::new();
        advance_taken(&mut taken, 4, 12);
        advance_taken(&mut taken, 4, 8); // a lookback batch after a newer one
        assert_eq!(taken[&4], 12);
        advance_taken(&mut taken, 4, 13);
        assert_eq!(taken, BTreeMap::from([(4, 13)]));
    }

    #[test]
    fn the_snapshot_reports_every_counter_map_and_flag() {
        let shared = Arc::new(ConsumerShared::new("t".to_owned()));
        let c = &shared.counters;
        for (n, a) in [
            &c.messages,
            &c.replayed,
            &c.malformed,
            &c.batches,
            &c.commits,
            &c.commit_errors,
            &c.rebalances,
            &c.pauses,
        ]
        .into_iter()
        .enumerate()
        {
            a.fetch_add(n as u64 + 1, Ordering::Relaxed);
        }
        for p in [7, 2] {
            let part = Arc::new(PartitionShared::new(p, None, shared.clone()));
            lock(&shared.assigned).insert(p, part);
        }
        lock(&shared.taken).insert(2, 30);
        lock(&shared.committed).insert(2, 20);
        let s = StatsHandle(shared.clone()).get();
        assert_eq!(
            s,
            ConsumerStats {
                messages: 1,
                replayed: 2,
                malformed: 3,
                batches: 4,
                commits: 5,
                commit_errors: 6,
                rebalances: 7,
                pauses: 8,
                assigned: vec![2, 7],
                committed: BTreeMap::from([(2, 20)]),
                taken: BTreeMap::from([(2, 30)]),
                closed: false,
            }
        );
        shared.closed.store(true, Ordering::Release);
        assert!(shared.stats().closed);
    }
}
