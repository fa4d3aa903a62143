//! Several audit logs as one stream in event-time order.
//!
//! Each API server's log is nearly sorted by `stageTimestamp` (an event is written when its
//! stage is reached; concurrent requests interleave by milliseconds). [`TimeMerge`] reads
//! every [`InputChain`] through a bounded look-ahead heap (so disorder within one log up to
//! the look-ahead is repaired) and always yields the smallest head among the inputs: a k-way
//! merge. The order is [`merge_key`]'s — time, auditID, stage — the same canonical order the
//! pipeline's sequencer uses, so a merged replay and a live run agree on ties. Memory is the
//! look-ahead budget (events), split over the inputs, whatever their number or size; only one
//! file per chain is open at a time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kubetrail_model::{AuditEvent, Stage, UnixNanos};

use crate::inputs::InputChain;
use crate::{EventReader, Malformed, SourceError};

/// What reading yields: an event, a malformed record, or an input that could not be read.
pub type Record = Result<Result<AuditEvent, Malformed>, SourceError>;

/// The canonical order key of an event: (time, auditID, stage). `None` when it has no time.
pub fn merge_key(e: &AuditEvent) -> Option<(UnixNanos, &str, Stage)> {
    e.end_time().map(|t| (t, e.audit_id.as_str(), e.stage))
}

/// One server's files read one after the other, opened lazily (one open file per chain).
pub struct ChainReader {
    files: VecDeque<String>,
    current: Option<EventReader>,
    /// `replay_input{file}` of the file being read: entered while it is read, so whatever is
    /// logged meanwhile (by the decoder, the framer, a gzip stream) names the file.
    span: tracing::Span,
    progress: Arc<AtomicU64>,
    done_bytes: Arc<AtomicU64>,
    max_record_bytes: usize,
}

impl ChainReader {
    /// A reader over `chain`'s files.
    pub fn new(chain: &InputChain) -> Self {
        ChainReader {
            files: chain.files.iter().cloned().collect(),
            current: None,
            span: tracing::Span::none(),
            progress: Arc::new(AtomicU64::new(0)),
            done_bytes: Arc::new(AtomicU64::new(0)),
            max_record_bytes: crate::DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Refuses records longer than `max` bytes in every file of the chain (see
    /// [`EventReader::with_max_record_bytes`]).
    pub fn with_max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// Raw bytes read so far over all of the chain's files.
    pub fn bytes_read(&self) -> u64 {
        self.done_bytes.load(Ordering::Relaxed) + self.progress.load(Ordering::Relaxed)
    }
}

impl Iterator for ChainReader {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        loop {
            if let Some(r) = self.current.as_mut() {
                let next = self.span.in_scope(|| r.next());
                match next {
                    Some(rec) => return Some(rec),
                    None => {
                        let bytes = self.progress.load(Ordering::Relaxed);
                        self.span
                            .in_scope(|| tracing::debug!(bytes, "replay input read to its end"));
                        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
                        self.progress = Arc::new(AtomicU64::new(0));
                        self.current = None;
                        self.span = tracing::Span::none();
                    }
                }
            }
            let name = self.files.pop_front()?;
            // At warn level, so that the default filter keeps the context of what it logs.
            let span = tracing::warn_span!("replay_input", file = %name);
            match span.in_scope(|| EventReader::open(&name)) {
                Ok(r) => {
                    let r = r.with_max_record_bytes(self.max_record_bytes);
                    self.progress = r.progress();
                    self.current = Some(r);
                    self.span = span;
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

struct Entry {
    time: UnixNanos,
    seq: u64,
    event: AuditEvent,
}

impl Entry {
    fn key(&self) -> (UnixNanos, &str, Stage, u64) {
        (self.time, &self.event.audit_id, self.event.stage, self.seq)
    }
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

struct Lookahead<I> {
    input: I,
    heap: BinaryHeap<Reverse<Entry>>,
    done: bool,
}

/// The k-way merge of inputs by event time, each read through a bounded look-ahead.
pub struct TimeMerge<I> {
    inputs: Vec<Lookahead<I>>,
    per_input: usize,
    other: VecDeque<Record>,
    seq: u64,
    last: Option<UnixNanos>,
    out_of_order: u64,
}

impl<I: Iterator<Item = Record>> TimeMerge<I> {
    /// Merges `inputs`; `lookahead` events in total are held (split evenly, at least one per
    /// input).
    pub fn new(inputs: Vec<I>, lookahead: usize) -> Self {
        let per_input = (lookahead / inputs.len().max(1)).max(1);
        TimeMerge {
            inputs: inputs
                .into_iter()
                .map(|input| Lookahead {
                    input,
                    heap: BinaryHeap::with_capacity(per_input.min(1 << 16)),
                    done: false,
                })
                .collect(),
            per_input,
            other: VecDeque::new(),
            seq: 0,
            last: None,
            out_of_order: 0,
        }
    }

    /// The inputs, to read progress from.
    pub fn inputs(&self) -> impl Iterator<Item = &I> {
        self.inputs.iter().map(|l| &l.input)
    }

    /// Events yielded earlier in time than one yielded before them: disorder within an input
    /// larger than its look-ahead (the pipeline's sequencer then sees them as late).
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    fn fill(&mut self, i: usize) {
        let Some(l) = self.inputs.get_mut(i) else {
            return;
        };
        while !l.done && l.heap.len() < self.per_input {
            match l.input.next() {
                None => l.done = true,
                Some(Ok(Ok(event))) => match event.end_time() {
                    Some(time) => {
                        self.seq += 1;
                        l.heap.push(Reverse(Entry {
                            time,
                            seq: self.seq,
                            event,
                        }));
                    }
                    // Nothing to order by: passed on as it comes (the pipeline counts it).
                    None => self.other.push_back(Ok(Ok(event))),
                },
                Some(other) => {
                    self.other.push_back(other);
                    // Hand malformed records and errors on promptly, in reading order.
                    break;
                }
            }
        }
    }
}

impl<I: Iterator<Item = Record>> Iterator for TimeMerge<I> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        loop {
            if let Some(r) = self.other.pop_front() {
                return Some(r);
            }
            for i in 0..self.inputs.len() {
                self.fill(i);
            }
            if !self.other.is_empty() {
                continue;
            }
            let best = self
                .inputs
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.heap.peek().map(|Reverse(e)| (e, i)))
                .min_by(|(a, _), (b, _)| a.cmp(b))
                .map(|(_, i)| i)?;
            let Reverse(e) = self.inputs.get_mut(best)?.heap.pop()?;
            if self.last.is_some_and(|l| e.time < l) {
                self.out_of_order += 1;
            } else {
                self.last = Some(e.time);
            }
            self.fill(best);
            return Some(Ok(Ok(e.event)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn ev(id: &str, t: i64) -> Record {
        let ts = kubetrail_model::format_rfc3339(1_714_557_600 * S + t);
        Ok(Ok(serde_json::from_str(&format!(
            r#"{{"level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/x","verb":"update","user":{{"username":"u"}},"stageTimestamp":"{ts}"}}"#
        ))
        .unwrap()))
    }

    fn ids(m: impl Iterator<Item = Record>) -> Vec<String> {
        m.map(|r| r.unwrap().unwrap().audit_id).collect()
    }

    #[test]
    fn inputs_are_merged_by_time_and_local_disorder_is_repaired() {
        let a = vec![
            ev("a1", S),
            ev("a3", 3 * S),
            ev("a2", 2 * S),
            ev("a5", 5 * S),
        ];
        let b = vec![ev("b0", 0), ev("b4", 4 * S)];
        let m = TimeMerge::new(vec![a.into_iter(), b.into_iter()], 8);
        assert_eq!(ids(m), ["b0", "a1", "a2", "a3", "b4", "a5"]);
    }

    #[test]
    fn disorder_beyond_the_lookahead_is_counted() {
        let a = vec![ev("a3", 3 * S), ev("a4", 4 * S), ev("a1", S)];
        let mut m = TimeMerge::new(vec![a.into_iter()], 1);
        let got: Vec<String> = m.by_ref().map(|r| r.unwrap().unwrap().audit_id).collect();
        assert_eq!(got, ["a3", "a4", "a1"]);
        assert_eq!(m.out_of_order(), 1);
    }

    #[test]
    fn ties_are_broken_by_audit_id_whatever_the_input() {
        let a = || vec![ev("z", S)].into_iter();
        let b = || vec![ev("a", S)].into_iter();
        let m1 = TimeMerge::new(vec![a(), b()], 4);
        let m2 = TimeMerge::new(vec![b(), a()], 4);
        assert_eq!(ids(m1), ids(m2));
    }
}
