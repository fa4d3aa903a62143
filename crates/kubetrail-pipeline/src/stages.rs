//! One span per request, whatever stages the audit policy records.
//!
//! The API server can write a request up to four times (RequestReceived, ResponseStarted,
//! ResponseComplete, Panic) under one auditID. The final stage carries the outcome, so a
//! request is released when it arrives; earlier stages wait for it, and are released on their
//! own (marked incomplete) only when no final stage came within `request_timeout` of being
//! held, or at the end of input. "Held" counts from the later of the event's own time and the
//! clock when it arrived (the latest time the merger was advanced to: event time, or a live
//! source's wall time), so that an event of a backlog (an API server catching up, a consumer
//! behind) waits for its final stage as long as a fresh one: a wall-clock tick between two
//! webhook batches must not release a RequestReceived whose ResponseComplete is in the next. A bounded memory of completed auditIDs drops repeats (a
//! webhook retry, an at-least-once redelivery).

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;

use lru::LruCache;

use kubetrail_model::{AuditEvent, UnixNanos};

type Key = (String, String);

/// What became of an offered event.
#[derive(Debug)]
pub enum Offer {
    /// The request is complete: process it.
    Complete(Box<AuditEvent>),
    /// An earlier stage: held until the final one arrives.
    Held,
    /// A stage of a request already released.
    Duplicate,
}

/// Merges the stages of each request.
pub struct StageMerger {
    /// Held requests: their sequence number, the time they are held since, the event.
    pending: HashMap<Key, (u64, UnixNanos, AuditEvent)>,
    by_time: BTreeSet<(UnixNanos, u64, Key)>,
    completed: LruCache<Key, ()>,
    timeout: i64,
    max_pending: usize,
    seq: u64,
    merged: u64,
    /// The latest time [`StageMerger::expire`] was called with.
    clock: UnixNanos,
}

impl StageMerger {
    /// `timeout` in nanoseconds (how long an early stage is held); `remember` completed
    /// auditIDs kept for dedup.
    pub fn new(timeout: i64, remember: usize, max_pending: usize) -> Self {
        StageMerger {
            pending: HashMap::new(),
            by_time: BTreeSet::new(),
            completed: LruCache::new(
                NonZeroUsize::new(remember.max(1)).unwrap_or(NonZeroUsize::MIN),
            ),
            timeout,
            max_pending: max_pending.max(1),
            seq: 0,
            merged: 0,
            clock: UnixNanos::MIN,
        }
    }

    /// Earlier stages folded into their request's final stage so far.
    pub fn merged(&self) -> u64 {
        self.merged
    }

    /// Requests waiting for their final stage.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Offers one event; events returned by the eviction of old pending stages go to `evicted`.
    pub fn offer(
        &mut self,
        cluster: &str,
        event: AuditEvent,
        evicted: &mut Vec<(String, AuditEvent)>,
    ) -> Offer {
        let key: Key = (cluster.to_owned(), event.audit_id.clone());
        if self.completed.get(&key).is_some() {
            return Offer::Duplicate;
        }
        if event.stage.is_final() {
            if let Some((seq, since, _)) = self.pending.remove(&key) {
                self.merged += 1;
                self.by_time.remove(&(since, seq, key.clone()));
            }
            self.completed.put(key, ());
            return Offer::Complete(Box::new(event));
        }
        let since = event.start_time().unwrap_or(0).max(self.clock);
        if let Some((seq, held_since, _)) = self.pending.remove(&key) {
            self.by_time.remove(&(held_since, seq, key.clone()));
        }
        self.seq += 1;
        self.by_time.insert((since, self.seq, key.clone()));
        self.pending.insert(key, (self.seq, since, event));
        while self.pending.len() > self.max_pending {
            match self.pop_oldest() {
                Some(e) => evicted.push(e),
                None => break,
            }
        }
        Offer::Held
    }

    fn pop_oldest(&mut self) -> Option<(String, AuditEvent)> {
        let (_, _, key) = self.by_time.pop_first()?;
        let (_, _, e) = self.pending.remove(&key)?;
        let cluster = key.0.clone();
        self.completed.put(key, ());
        Some((cluster, e))
    }

    /// Moves the clock to `now` and releases, with their clusters, the requests held for more
    /// than `timeout` by then.
    pub fn expire(&mut self, now: UnixNanos, out: &mut Vec<(String, AuditEvent)>) {
        self.clock = self.clock.max(now);
        while let Some((t, _, _)) = self.by_time.first() {
            if t.saturating_add(self.timeout) > now {
                break;
            }
            match self.pop_oldest() {
                Some(e) => out.push(e),
                None => break,
            }
        }
    }

    /// Releases every held request.
    pub fn drain(&mut self, out: &mut Vec<(String, AuditEvent)>) {
        while let Some(e) = self.pop_oldest() {
            out.push(e);
        }
    }
}
