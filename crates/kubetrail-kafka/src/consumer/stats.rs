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
