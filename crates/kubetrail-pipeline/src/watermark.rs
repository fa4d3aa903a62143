//! Event-time order across sources: the watermark, and the reorder buffer in front of the
//! pipeline.
//!
//! An HA control plane has several API servers; each writes its own audit stream, nearly in
//! `stageTimestamp` order, and the streams reach kubetrail interleaved and skewed (one server
//! batches later, one lags after an outage). The pipeline must see *one* stream in event-time
//! order, or a Pod is linked before its ReplicaSet is known, and a family is emitted before
//! its owner's events arrived. The [`Sequencer`] holds events and releases them in a canonical
//! order ([`OrderKey`]: time, then auditID, then stage) once the **watermark** has passed
//! them:
//!
//! * every **source** (one API server: a replay input, a webhook client, a Kafka message's
//!   source header) has a clock: the latest event time it sent, extrapolated with wall time
//!   in live modes (a source that sent events up to `t` at wall time `a` is at `t + (now − a)`
//!   now, so a quiet server does not hold time back), and never more than `max_lag` behind
//!   wall time;
//! * the watermark is the minimum over the known sources minus `lateness`, and never moves
//!   back. An event at or before it is released; so any interleaving whose skew stays within
//!   the lateness is released in exactly the merged stream's order;
//! * a source silent for `idle_timeout` is forgotten;
//! * an event more than `max_ahead` ahead of every source (and of wall time, live) does not
//!   move its source's clock: it is set aside, counted and logged, and released where it
//!   belongs when the watermark reaches it (at the latest at the end). Without wall time
//!   (replays) `confirm_jump` such events in a row from one source are a real jump (a quiet
//!   hour in a log), and the source's clock follows them;
//! * an event at or before the watermark when it arrives is **late**: released at once,
//!   marked, counted (see ARCHITECTURE.md for what it becomes);
//! * memory is bounded by `max_held`: beyond it the oldest held event is released early (the
//!   watermark moves to it; counted as forced).
//!
//! The sequencer is synchronous and deterministic given the same calls with the same `now`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use serde::Deserialize;

use kubetrail_model::{AuditEvent, Stage, UnixNanos};

/// Event-time ordering settings (`time:` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderConfig {
    /// How far (event time) an event may trail its source's latest one, or one source trail
    /// another, and still be processed in order. The default, 5 s, covers kube-apiserver's
    /// disorder within one server (a request's stage timestamps are taken before the event is
    /// queued, so a log is out of order by at most a request's duration — milliseconds for
    /// mutations) and a 1–3 s webhook batch wait (`--audit-webhook-batch-max-wait`; set the
    /// lateness above it). It is also the latency it adds to request spans in live modes.
    #[serde(with = "humantime_serde")]
    pub lateness: Duration,
    /// A source silent this long no longer holds time back more than this behind wall time
    /// (live modes).
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// A source that sent nothing for this long (wall time) is forgotten (live modes).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// An event further ahead than this of every source's clock (and of wall time, live)
    /// cannot move time: it is set aside until time reaches it.
    #[serde(with = "humantime_serde")]
    pub max_ahead: Duration,
    /// Without wall time (replays): this many events in a row from one source beyond
    /// `max_ahead` are a real jump in its time, not an outlier.
    pub confirm_jump: usize,
    /// Events held for reordering at most (memory bound); beyond it the oldest is released
    /// early. Events set aside as far ahead count against a sixteenth of it.
    pub max_held: usize,
    /// Sources known from the start (the API servers' `?source=` names): until one has sent
    /// anything it holds time back (live: `max_lag` behind wall time, until `idle_timeout`),
    /// so a server that starts late or lags from its first batch is not late. Other sources
    /// are known from their first event.
    pub expect_sources: Vec<String>,
}

impl Default for OrderConfig {
    fn default() -> Self {
        OrderConfig {
            lateness: Duration::from_secs(5),
            max_lag: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            max_ahead: Duration::from_secs(300),
            confirm_jump: 8,
            max_held: 200_000,
            expect_sources: Vec::new(),
        }
    }
}

/// What the sequencer did, for metrics and summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderStats {
    /// Events released later than they arrived because an earlier one had to go first.
    pub reordered: u64,
    /// Events that arrived at or before the watermark (processed at once, marked late).
    pub late: u64,
    /// Events set aside because they were far ahead of every source.
    pub ahead: u64,
    /// Far-ahead events dropped because the set-aside buffer was full (logged).
    pub ahead_dropped: u64,
    /// Jumps confirmed (replays: a source's time moved far ahead for real).
    pub jumps: u64,
    /// Events released before the watermark reached them because `max_held` was reached.
    pub forced: u64,
    /// Sources forgotten after `idle_timeout` of silence.
    pub idle_sources: u64,
    /// Events without any timestamp (passed through; the pipeline counts them).
    pub untimed: u64,
}

/// The canonical order of events: stage timestamp, then auditID, then stage, then arrival.
/// Two interleavings of the same events agree on it except for exact repeats.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey {
    /// `stageTimestamp` (or the start time when absent).
    pub time: UnixNanos,
    /// The auditID.
    pub audit_id: String,
    /// Stage, in handling order.
    pub stage: Stage,
    /// Arrival number (only orders exact repeats).
    pub seq: u64,
}

/// An event the sequencer let through.
#[derive(Debug)]
pub struct Released {
    /// The event's cluster.
    pub cluster: String,
    /// The event.
    pub event: AuditEvent,
    /// It arrived after the watermark had passed its time.
    pub late: bool,
    /// The caller's tag given to [`Sequencer::push_tagged`] (0 for [`Sequencer::push`]): the
    /// worker tags events with their batch, so a batch is acknowledged only once all its
    /// events were released.
    pub tag: u64,
}

#[derive(Debug)]
struct Held {
    key: OrderKey,
    source: u64,
    cluster: String,
    event: AuditEvent,
    tag: u64,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

#[derive(Debug, Clone)]
struct SourceClock {
    id: u64,
    /// Latest in-range event time.
    time: UnixNanos,
    /// Wall time of the latest arrival (live).
    arrival: Option<UnixNanos>,
    /// Far-ahead events in a row.
    ahead_run: usize,
    /// Declared in `expect_sources`.
    expected: bool,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The reorder buffer and its watermark. See the module documentation.
#[derive(Debug)]
pub struct Sequencer {
    lateness: i64,
    max_lag: i64,
    idle: i64,
    max_ahead: i64,
    confirm_jump: usize,
    max_held: usize,
    max_aside: usize,
    sources: BTreeMap<String, SourceClock>,
    next_source: u64,
    held: BinaryHeap<Reverse<Held>>,
    aside: BTreeMap<OrderKey, Held>,
    ready: VecDeque<Released>,
    /// Everything at or before this was released; never moves back.
    floor: Option<UnixNanos>,
    seq: u64,
    stats: OrderStats,
    /// Tags of far-ahead events dropped since the last [`Sequencer::take_dropped`].
    dropped: Vec<u64>,
}

impl Sequencer {
    /// A sequencer with the given settings.
    pub fn new(config: &OrderConfig) -> Self {
        let sources: BTreeMap<String, SourceClock> = config
            .expect_sources
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let clock = SourceClock {
                    id: i as u64,
                    time: UnixNanos::MIN,
                    arrival: None,
                    ahead_run: 0,
                    expected: true,
                };
                (name.clone(), clock)
            })
            .collect();
        Sequencer {
            next_source: sources.len() as u64,
            sources,
            lateness: nanos(config.lateness),
            max_lag: nanos(config.max_lag),
            idle: nanos(config.idle_timeout),
            max_ahead: nanos(config.max_ahead),
            confirm_jump: config.confirm_jump.max(1),
            max_held: config.max_held.max(1),
            max_aside: (config.max_held / 16).max(1),
            held: BinaryHeap::new(),
            aside: BTreeMap::new(),
            ready: VecDeque::new(),
            floor: None,
            seq: 0,
            stats: OrderStats::default(),
            dropped: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &OrderStats {
        &self.stats
    }

    /// Events held (waiting for the watermark, or set aside as far ahead).
    pub fn held(&self) -> usize {
        self.held.len() + self.aside.len() + self.ready.len()
    }

    /// Sources currently known.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// The released watermark: everything at or before it has been let through.
    pub fn floor(&self) -> Option<UnixNanos> {
        self.floor
    }

    /// Accepts one event from `source`. `now` is wall time in live modes, `None` in replays.
    /// Call [`release`](Self::release) to take out what became due.
    pub fn push(&mut self, source: &str, cluster: &str, event: AuditEvent, now: Option<UnixNanos>) {
        self.push_tagged(source, cluster, event, now, 0);
    }

    /// [`push`](Self::push) with a tag that comes back with the event in [`Released::tag`]
    /// (or from [`take_dropped`](Self::take_dropped) if it is dropped).
    pub fn push_tagged(
        &mut self,
        source: &str,
        cluster: &str,
        event: AuditEvent,
        now: Option<UnixNanos>,
        tag: u64,
    ) {
        let Some(time) = event.end_time() else {
            // Nothing to order by: the pipeline counts it as untimed.
            self.stats.untimed += 1;
            self.ready.push_back(Released {
                cluster: cluster.to_owned(),
                event,
                late: false,
                tag,
            });
            return;
        };
        let frontier = self
            .sources
            .values()
            .map(|s| s.time)
            .filter(|t| *t != UnixNanos::MIN)
            .max()
            .into_iter()
            .chain(now)
            .max();
        let next_id = self.next_source;
        let src = self
            .sources
            .entry(source.to_owned())
            .or_insert_with(|| SourceClock {
                id: next_id,
                time: UnixNanos::MIN,
                arrival: None,
                ahead_run: 0,
                expected: false,
            });
        if src.id == next_id {
            self.next_source += 1;
        }
        src.arrival = now.or(src.arrival);
        self.seq += 1;
        let held = Held {
            key: OrderKey {
                time,
                audit_id: event.audit_id.clone(),
                stage: event.stage,
                seq: self.seq,
            },
            source: src.id,
            cluster: cluster.to_owned(),
            event,
            tag,
        };
        let far_ahead = frontier.is_some_and(|f| time > f.saturating_add(self.max_ahead));
        if far_ahead {
            src.ahead_run += 1;
            let run = src.ahead_run;
            let id = src.id;
            self.stats.ahead += 1;
            tracing::warn!(
                source,
                audit_id = %held.key.audit_id,
                time = %kubetrail_model::format_rfc3339(time),
                "audit event far ahead of every source's time: set aside until time reaches it"
            );
            self.aside.insert(held.key.clone(), held);
            if now.is_none() && run >= self.confirm_jump {
                self.confirm(source, id);
            }
            while self.aside.len() > self.max_aside {
                if let Some((_, h)) = self.aside.pop_last() {
                    self.stats.ahead_dropped += 1;
                    self.dropped.push(h.tag);
                    tracing::error!(
                        audit_id = %h.key.audit_id,
                        time = %kubetrail_model::format_rfc3339(h.key.time),
                        "far-ahead audit event dropped: the set-aside buffer is full"
                    );
                }
            }
            return;
        }
        src.ahead_run = 0;
        src.time = src.time.max(time);
        if self.floor.is_some_and(|f| time <= f) {
            self.stats.late += 1;
            tracing::debug!(source, audit_id = %held.key.audit_id, "late audit event");
            self.ready.push_back(Released {
                cluster: held.cluster,
                event: held.event,
                late: true,
                tag: held.tag,
            });
            return;
        }
        if self.held.peek().is_some_and(|Reverse(h)| h.key > held.key) {
            self.stats.reordered += 1;
        }
        self.held.push(Reverse(held));
        while self.held.len() > self.max_held {
            let Some(Reverse(h)) = self.held.pop() else {
                break;
            };
            self.stats.forced += 1;
            self.floor = Some(self.floor.map_or(h.key.time, |f| f.max(h.key.time)));
            self.ready.push_back(Released {
                cluster: h.cluster,
                event: h.event,
                late: false,
                tag: h.tag,
            });
        }
    }

    /// `source` really jumped ahead: its set-aside events go back in line.
    fn confirm(&mut self, source: &str, id: u64) {
        let keys: Vec<OrderKey> = self
            .aside
            .iter()
            .filter(|(_, h)| h.source == id)
            .map(|(k, _)| k.clone())
            .collect();
        let mut latest = UnixNanos::MIN;
        for k in keys {
            if let Some(h) = self.aside.remove(&k) {
                latest = latest.max(h.key.time);
                self.held.push(Reverse(h));
            }
        }
        self.stats.jumps += 1;
        if let Some(s) = self.sources.get_mut(source) {
            s.time = s.time.max(latest);
            s.ahead_run = 0;
        }
        tracing::info!(source, "a source's time jumped ahead: following it");
    }

    /// The watermark at wall time `now` (`None`: replay), before flooring.
    fn watermark(&mut self, now: Option<UnixNanos>) -> Option<UnixNanos> {
        if let Some(n) = now {
            for s in self.sources.values_mut() {
                // A declared source not heard from yet: its silence counts from now.
                s.arrival.get_or_insert(n);
            }
            let before = self.sources.len();
            let idle = self.idle;
            self.sources
                .retain(|_, s| s.arrival.is_none_or(|a| a.saturating_add(idle) > n));
            self.stats.idle_sources += (before - self.sources.len()) as u64;
        }
        let lag = self.max_lag;
        let min = self
            .sources
            .values()
            .filter(|s| s.expected || s.time != UnixNanos::MIN)
            .map(|s| match (now, s.arrival) {
                // Live: the source's clock runs on since it was last heard, and it no longer
                // holds time back more than `max_lag` once it has been silent that long (a
                // server sending old events steadily — a backlog — is followed at its pace).
                (Some(n), Some(a)) if s.time != UnixNanos::MIN => {
                    let silent = n.saturating_sub(a).max(0);
                    let at = s.time.saturating_add(silent);
                    if silent > lag {
                        at.max(n.saturating_sub(lag))
                    } else {
                        at
                    }
                }
                (Some(n), _) => n.saturating_sub(lag),
                (None, _) => s.time,
            })
            .min();
        match (min, now) {
            (Some(UnixNanos::MIN), None) => None,
            (Some(m), _) => Some(m.saturating_sub(self.lateness)),
            (None, Some(n)) => Some(n.saturating_sub(lag).saturating_sub(self.lateness)),
            (None, None) => None,
        }
    }

    /// Releases, in order, every event the watermark has passed (and late or forced ones
    /// taken in before), calling `f` for each; returns the watermark, if there is one yet.
    pub fn release(
        &mut self,
        now: Option<UnixNanos>,
        mut f: impl FnMut(Released),
    ) -> Option<UnixNanos> {
        while let Some(r) = self.ready.pop_front() {
            f(r);
        }
        let w = match (self.watermark(now), self.floor) {
            (Some(w), Some(fl)) => Some(w.max(fl)),
            (w, fl) => w.or(fl),
        };
        let w = w?;
        while let Some(entry) = self.aside.first_entry() {
            if entry.key().time > w {
                break;
            }
            let h = entry.remove();
            self.held.push(Reverse(h));
        }
        while self.held.peek().is_some_and(|Reverse(h)| h.key.time <= w) {
            if let Some(Reverse(h)) = self.held.pop() {
                f(Released {
                    cluster: h.cluster,
                    event: h.event,
                    late: false,
                    tag: h.tag,
                });
            }
        }
        self.floor = Some(w);
        Some(w)
    }

    /// The tags of far-ahead events dropped (counted in [`OrderStats::ahead_dropped`]) since
    /// the last call: they will never be released.
    pub fn take_dropped(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped)
    }

    /// Releases everything still held, in order (end of input, shutdown).
    pub fn drain(&mut self, mut f: impl FnMut(Released)) {
        while let Some(r) = self.ready.pop_front() {
            f(r);
        }
        for (_, h) in std::mem::take(&mut self.aside) {
            self.held.push(Reverse(h));
        }
        let mut last = None;
        while let Some(Reverse(h)) = self.held.pop() {
            last = Some(h.key.time);
            f(Released {
                cluster: h.cluster,
                event: h.event,
                late: false,
                tag: h.tag,
            });
        }
        if let Some(t) = last {
            self.floor = Some(self.floor.map_or(t, |f| f.max(t)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_714_557_600 * S;

    fn ev(id: &str, t: i64) -> AuditEvent {
        let ts = kubetrail_model::format_rfc3339(t);
        serde_json::from_str(&format!(
            r#"{{"level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/x","verb":"update","user":{{"username":"u"}},"requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
        ))
        .unwrap()
    }

    fn ids(out: &[Released]) -> Vec<String> {
        out.iter().map(|r| r.event.audit_id.clone()).collect()
    }

    #[test]
    fn a_lagging_source_holds_the_watermark_back() {
        let mut s = Sequencer::new(&OrderConfig::default());
        let mut out = Vec::new();
        s.push("a", "c", ev("a1", T0 + 30 * S), None);
        s.push("b", "c", ev("b1", T0 + 10 * S), None);
        let w = s.release(None, |r| out.push(r));
        // b is at +10 s: nothing after +5 s may go.
        assert_eq!(w, Some(T0 + 5 * S));
        assert!(out.is_empty());
        s.push("b", "c", ev("b2", T0 + 40 * S), None);
        let w = s.release(None, |r| out.push(r));
        assert_eq!(w, Some(T0 + 25 * S));
        assert_eq!(ids(&out), ["b1"]);
        s.drain(|r| out.push(r));
        assert_eq!(ids(&out), ["b1", "a1", "b2"]);
        assert!(out.iter().all(|r| !r.late));
    }

    #[test]
    fn an_event_behind_the_watermark_is_late_and_released_at_once() {
        let mut s = Sequencer::new(&OrderConfig::default());
        let mut out = Vec::new();
        s.push("a", "c", ev("a1", T0 + 30 * S), None);
        s.release(None, |r| out.push(r));
        s.push("a", "c", ev("old", T0), None);
        s.release(None, |r| out.push(r));
        assert_eq!(ids(&out), ["old"]);
        assert!(out[0].late);
        assert_eq!(s.stats().late, 1);
    }

    #[test]
    fn a_far_ahead_event_does_not_move_time_and_is_released_where_it_belongs() {
        let mut s = Sequencer::new(&OrderConfig::default());
        let mut out = Vec::new();
        s.push("a", "c", ev("a1", T0), None);
        // (Year 9999 is beyond what nanoseconds since 1970 hold: such a line is malformed at
        // decoding. 2200 is the far future that can be represented.)
        let far = kubetrail_model::parse_rfc3339_nanos("2200-01-01T00:00:00Z").unwrap();
        s.push("a", "c", ev("future", far), None);
        s.push("a", "c", ev("a2", T0 + 10 * S), None);
        let w = s.release(None, |r| out.push(r));
        assert_eq!(w, Some(T0 + 5 * S), "the year-9999 event did not move time");
        assert_eq!(ids(&out), ["a1"]);
        assert_eq!(s.stats().ahead, 1);
        s.drain(|r| out.push(r));
        assert_eq!(ids(&out), ["a1", "a2", "future"]);
        assert!(out.iter().all(|r| !r.late));
    }

    #[test]
    fn a_run_of_far_ahead_events_is_a_real_jump_in_replays() {
        let config = OrderConfig {
            confirm_jump: 3,
            ..Default::default()
        };
        let mut s = Sequencer::new(&config);
        let mut out = Vec::new();
        s.push("a", "c", ev("a0", T0), None);
        for i in 0..3 {
            s.push(
                "a",
                "c",
                ev(&format!("j{i}"), T0 + 3600 * S + i * 10 * S),
                None,
            );
        }
        let w = s.release(None, |r| out.push(r));
        assert_eq!(s.stats().jumps, 1);
        assert_eq!(w, Some(T0 + 3615 * S));
        assert_eq!(ids(&out), ["a0", "j0", "j1"]);
    }

    #[test]
    fn live_sources_extrapolate_with_wall_time_and_are_forgotten_when_idle() {
        let mut s = Sequencer::new(&OrderConfig::default());
        let mut out = Vec::new();
        // Wall time = event time: a caught-up source.
        s.push("a", "c", ev("a1", T0), Some(T0));
        assert_eq!(s.release(Some(T0), |r| out.push(r)), Some(T0 - 5 * S));
        assert!(out.is_empty());
        // Quiet for 6 s of wall time: it is at T0 + 6 s now, so a1 is due.
        assert_eq!(s.release(Some(T0 + 6 * S), |r| out.push(r)), Some(T0 + S));
        assert_eq!(ids(&out), ["a1"]);
        s.release(Some(T0 + 400 * S), |_| {});
        assert_eq!(s.sources(), 0);
        assert_eq!(s.stats().idle_sources, 1);
    }

    #[test]
    fn live_events_far_ahead_of_wall_time_wait_for_it() {
        let mut s = Sequencer::new(&OrderConfig::default());
        let mut out = Vec::new();
        s.push("skewed", "c", ev("x", T0 + 3600 * S), Some(T0));
        assert_eq!(s.stats().ahead, 1);
        s.release(Some(T0 + 10 * S), |r| out.push(r));
        assert!(out.is_empty());
        s.release(Some(T0 + 3600 * S + 70 * S), |r| out.push(r));
        assert_eq!(ids(&out), ["x"]);
    }

    #[test]
    fn an_expected_source_holds_time_back_before_its_first_event() {
        let config = OrderConfig {
            expect_sources: vec!["late-starter".into()],
            ..Default::default()
        };
        let mut s = Sequencer::new(&config);
        let mut out = Vec::new();
        s.push("a", "c", ev("a1", T0), None);
        s.push("a", "c", ev("a2", T0 + 60 * S), None);
        assert_eq!(s.release(None, |r| out.push(r)), None);
        assert!(out.is_empty());
        s.push("late-starter", "c", ev("l1", T0 + S), None);
        s.release(None, |r| out.push(r));
        s.drain(|r| out.push(r));
        assert_eq!(ids(&out), ["a1", "l1", "a2"]);
        assert_eq!(s.stats().late, 0);
        // Live: it holds time at most `max_lag` behind wall time, and is forgotten when idle.
        let mut s = Sequencer::new(&config);
        assert_eq!(s.release(Some(T0), |_| {}), Some(T0 - 65 * S));
        s.release(Some(T0 + 301 * S), |_| {});
        assert_eq!(s.sources(), 0);
    }

    #[test]
    fn memory_is_bounded_by_max_held() {
        let config = OrderConfig {
            max_held: 4,
            ..Default::default()
        };
        let mut s = Sequencer::new(&config);
        s.push("slow", "c", ev("s", T0), None);
        for i in 0..10 {
            s.push(
                "fast",
                "c",
                ev(&format!("f{i}"), T0 + S + i * 100_000_000),
                None,
            );
        }
        assert!(s.held() <= 4 + s.stats().forced as usize);
        let mut out = Vec::new();
        s.release(None, |r| out.push(r));
        assert_eq!(s.stats().forced, 7);
        assert!(s.held() <= 4);
        assert_eq!(ids(&out)[0], "s");
    }
}
