//! From linked audit events to spans.
//!
//! The trace model: one trace per **object family** (an object and everything it owns,
//! transitively) per **time window**. The family's root object's span is the trace root; an
//! owned object's span is a child of its owner's span; each request (one auditID) is a child
//! span of the span of the object it was about.
//!
//! When spans are emitted (see ARCHITECTURE.md for the reasoning):
//!
//! * A **request span** is emitted as soon as its request completes, so it is in Jaeger
//!   within the exporter's batching delay. Its parent id is known up front, because object span
//!   ids are derived from (cluster, object, window, segment), not allocated.
//! * **Object spans** of a family are emitted together when the family has been quiet for
//!   `linger` (event time), or when memory limits force it, or at the end of input. They then
//!   cover exactly the requests of the object and of what it owns, so the trace reads well in
//!   plain Jaeger UI. Until then a user sees the requests under a not-yet-present parent.
//! * Activity in the same window after a family was emitted starts a new **segment**: new
//!   object spans (segment + 1, new ids) in the same trace, the root's segment a second root.
//!   An object deleted and recreated under the same name also starts a new segment.
//!
//! Time is event time: the clock is the latest timestamp seen (plus wall-clock ticks from a
//! live source), so a replay is deterministic.
//!
//! No trace holds more than `max_trace_spans` spans: a family that outgrows it is cut into
//! *parts*, traces of their own under a stand-in of the owner (see [`parts`]'s module doc).
//! Owners carry counts of their subtree; an object's span links to its previous span (an
//! earlier segment, or the previous window), so windows lead to each other.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attrs;
mod history;
pub mod parts;
mod summary;
#[cfg(test)]
mod tests;

pub use parts::MIN_TRACE_SPANS;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Deserialize;

use kubetrail_model::ids::{self, SpanId, TraceId};
use kubetrail_model::{
    Actor, AttrKey, AttrValue, AuditEvent, ObjectRef, SpanKind, SpanLinkRecord, SpanRecord,
    SpanStatus, UnixNanos,
};

/// Aggregation settings (`aggregate:` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Length of a trace's time window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a family must be quiet before its object spans are emitted.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// `service.name` of object spans.
    pub object_service: String,
    /// Objects held open at most; beyond it the least recently active families are emitted
    /// early (memory is bounded by this, not by the input).
    pub max_open_objects: usize,
    /// Spans per exported trace at most (`aggregate.max_trace_spans`): a family that outgrows
    /// it is cut into parts, traces of their own linked to the owner's span. At least
    /// [`MIN_TRACE_SPANS`].
    pub max_trace_spans: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            window: Duration::from_secs(30 * 60),
            linger: Duration::from_secs(30),
            object_service: "kubetrail".into(),
            max_open_objects: 100_000,
            max_trace_spans: 2_000,
        }
    }
}

/// Where the pipeline placed a request: its object and that object's owners.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The cluster the event came from.
    pub cluster: String,
    /// The object the request was about (uid filled in when known).
    pub object: ObjectRef,
    /// Its owners, nearest first; the last is the family root.
    pub ancestors: Vec<ObjectRef>,
    /// The object's kind, when a body said it.
    pub kind: Option<String>,
    /// Whether the request created the object (a `create` of the object itself, not of a
    /// subresource or of an Event about it).
    pub creates: bool,
    /// Whether the request deleted the object (a successful `delete`).
    pub deletes: bool,
    /// Whether the request was never seen complete (only earlier stages arrived).
    pub incomplete: bool,
    /// Set when the request created or updated a Kubernetes Event about `object`.
    pub kube_event: Option<KubeEvent>,
    /// Links to other traces (a controller's traceparent annotation) carried by the body.
    pub links: Vec<SpanLinkRecord>,
    /// The object-set id annotation (Kubernetes log-tracking KEP).
    pub objsetid: Option<String>,
    /// Extra span events for the request span (diff lines, a snapshot).
    pub span_events: Vec<kubetrail_model::SpanEventRecord>,
    /// Extra attributes for the request span.
    pub attributes: Vec<(AttrKey, AttrValue)>,
    /// Secondary links of the object (linker rules): span links, not parenthood.
    pub secondary: Vec<SecondaryLink>,
    /// Set when this placement is one item of a `deletecollection` whose response listed the
    /// deleted items: the item's span gets a `delete` child of its own.
    pub collection_item: bool,
}

/// A secondary link: the object's span links to another object's span (in that object's
/// family's trace), e.g. a Pod to its Node.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondaryLink {
    /// The rule that found it.
    pub rule: String,
    /// The other object.
    pub target: ObjectRef,
    /// The root of the other object's family (its trace).
    pub root: ObjectRef,
}

/// Span links an object span keeps at most (distinct traceparents seen in the window).
const MAX_OBJECT_LINKS: usize = 32;

/// What a Kubernetes Event (core/v1 or events.k8s.io/v1) said about an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeEvent {
    /// `reason` (`Scheduled`, `BackOff`, `FailedMount`).
    pub reason: String,
    /// `message` (core/v1) or `note` (events.k8s.io/v1).
    pub message: String,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// How many times it happened (`count`, or `series.count`).
    pub count: Option<i64>,
    /// The component that reported it.
    pub reporter: Option<String>,
}

/// Counters the aggregator keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggregatorStats {
    /// Request spans emitted.
    pub request_spans: u64,
    /// Object spans emitted.
    pub object_spans: u64,
    /// Families emitted (each segment counts).
    pub families_emitted: u64,
    /// Families emitted early because `max_open_objects` was reached.
    pub families_forced: u64,
    /// Segments started after a family had already been emitted in the same window.
    pub continuations: u64,
    /// New incarnations (recreated under the same name).
    pub recreations: u64,
    /// Part traces opened because a family outgrew `max_trace_spans`.
    pub parts: u64,
    /// Stand-in spans emitted (the root span of each part).
    pub stand_in_spans: u64,
    /// Request spans placed under a stand-in of their object (its own trace was full).
    pub requests_under_stand_ins: u64,
    /// Object spans linked to the same object's previous span (earlier segment or window).
    pub history_links: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FamilyKey {
    cluster: String,
    window_start: UnixNanos,
    root: ObjectRef,
}

#[derive(Debug)]
struct ObjectState {
    /// The object's effective cluster.
    cluster: String,
    object: ObjectRef,
    parent: Option<ObjectRef>,
    segment: u32,
    span_id: SpanId,
    /// Extent of the object's own requests.
    own: Option<(UnixNanos, UnixNanos)>,
    requests: u32,
    errors: u32,
    kind: Option<String>,
    deleted: bool,
    links: Vec<SpanLinkRecord>,
    objsetid: Option<String>,
    /// Warning Events about the object.
    warnings: u32,
    /// The trace the span is in: 0 = the family's main trace, k = part k.
    slot: u32,
    /// Spans reserved for the object's next requests in its slot.
    reserved: u32,
    /// The object's open part (its objects and requests that did not fit), if any.
    own_part: Option<u32>,
}

impl ObjectState {
    /// Accounts one request (extent, counts, kind, deletion, links) to the object.
    fn record(
        &mut self,
        event: &AuditEvent,
        place: &Placement,
        window_start: UnixNanos,
        (start, end): (UnixNanos, UnixNanos),
    ) {
        self.own = Some(match self.own {
            Some((s, e)) => (s.min(start), e.max(end)),
            None => (start, end),
        });
        self.requests += 1;
        if event.response_code().is_some_and(|c| c >= 400) {
            self.errors += 1;
        }
        if place
            .kube_event
            .as_ref()
            .is_some_and(|k| k.kind == "Warning")
        {
            self.warnings += 1;
        }
        if place.kind.is_some() {
            self.kind = place.kind.clone();
        }
        if place.deletes {
            self.deleted = true;
        }
        for link in &place.links {
            self.add_link(link.clone());
        }
        if place.objsetid.is_some() {
            self.objsetid = place.objsetid.clone();
        }
        for sec in &place.secondary {
            self.add_link(secondary_link(sec, &place.cluster, window_start));
        }
    }

    /// Adds a span link unless one to the same span is there already or the object has
    /// [`MAX_OBJECT_LINKS`].
    fn add_link(&mut self, link: SpanLinkRecord) {
        let seen = self
            .links
            .iter()
            .any(|l| l.trace_id == link.trace_id && l.span_id == link.span_id);
        if !seen && self.links.len() < MAX_OBJECT_LINKS {
            self.links.push(link);
        }
    }
}

/// The span link of a secondary link (a linker rule): to the target's first span in the
/// window, in its family's trace.
fn secondary_link(sec: &SecondaryLink, cluster: &str, window_start: UnixNanos) -> SpanLinkRecord {
    let target_cluster = sec.target.cluster.as_deref().unwrap_or(cluster);
    let root_cluster = sec.root.cluster.as_deref().unwrap_or(cluster);
    SpanLinkRecord {
        trace_id: ids::trace_id(root_cluster, &sec.root, window_start),
        span_id: ids::object_span_id(target_cluster, &sec.target, window_start, 0),
        attributes: vec![
            (
                AttrKey::Borrowed(attrs::LINK_RULE),
                AttrValue::Str(sec.rule.clone()),
            ),
            (
                AttrKey::Borrowed(attrs::LINK_TARGET),
                AttrValue::Str(sec.target.to_string()),
            ),
        ],
    }
}

#[derive(Debug)]
struct Family {
    key: FamilyKey,
    trace_id: TraceId,
    objects: BTreeMap<ObjectRef, ObjectState>,
    last_activity: UnixNanos,
    cut: parts::Cut,
}

/// The aggregation state machine. Single-threaded and deterministic: the same calls in the
/// same order emit the same spans.
pub struct Aggregator {
    config: AggregatorConfig,
    window: i64,
    linger: i64,
    next_id: u64,
    index: HashMap<FamilyKey, u64>,
    families: HashMap<u64, Family>,
    activity: BTreeSet<(UnixNanos, u64)>,
    /// Segments already emitted per (window, cluster, object): the next segment number.
    segments: BTreeMap<UnixNanos, HashMap<(String, ObjectRef), u32>>,
    open_objects: usize,
    clock: UnixNanos,
    stats: AggregatorStats,
    max_spans: u32,
    budgets: parts::Budgets,
    history: history::History,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Aggregator {
    /// A new aggregator.
    pub fn new(config: AggregatorConfig) -> Self {
        Aggregator {
            window: nanos(config.window).max(1),
            linger: nanos(config.linger),
            next_id: 0,
            index: HashMap::new(),
            families: HashMap::new(),
            activity: BTreeSet::new(),
            segments: BTreeMap::new(),
            open_objects: 0,
            clock: i64::MIN,
            stats: AggregatorStats::default(),
            max_spans: u32::try_from(config.max_trace_spans.max(MIN_TRACE_SPANS))
                .unwrap_or(u32::MAX),
            budgets: parts::Budgets::default(),
            history: history::History::default(),
            config,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &AggregatorStats {
        &self.stats
    }

    /// Families currently open (not yet emitted).
    pub fn open_families(&self) -> usize {
        self.families.len()
    }

    /// Objects currently open.
    pub fn open_objects(&self) -> usize {
        self.open_objects
    }

    /// The start of the window containing `t`.
    pub fn window_start(&self, t: UnixNanos) -> UnixNanos {
        t.div_euclid(self.window) * self.window
    }

    fn next_segment(&self, window_start: UnixNanos, cluster: &str, o: &ObjectRef) -> u32 {
        self.segments
            .get(&window_start)
            .and_then(|m| m.get(&(cluster.to_owned(), o.clone())))
            .copied()
            .unwrap_or(0)
    }

    fn new_state(
        &self,
        key: &FamilyKey,
        object: ObjectRef,
        parent: Option<ObjectRef>,
        event_cluster: &str,
    ) -> ObjectState {
        let cluster = object
            .cluster
            .clone()
            .unwrap_or_else(|| event_cluster.to_owned());
        let segment = self.next_segment(key.window_start, &cluster, &object);
        ObjectState {
            span_id: ids::object_span_id(&cluster, &object, key.window_start, segment),
            cluster,
            object,
            parent,
            segment,
            own: None,
            requests: 0,
            errors: 0,
            kind: None,
            deleted: false,
            links: Vec::new(),
            objsetid: None,
            warnings: 0,
            slot: 0,
            reserved: 0,
            own_part: None,
        }
    }

    /// Decides which trace a new object state's span goes to (see [`parts`]).
    fn admit(&mut self, id: u64, obj: &ObjectRef) {
        let Some(fam) = self.families.get_mut(&id) else {
            return;
        };
        let parent = fam.objects.get(obj).and_then(|s| s.parent.clone());
        let owner = parent
            .as_ref()
            .and_then(|p| fam.objects.get(p).map(|ps| (p, ps.slot, ps.own_part)));
        let adm = match owner {
            Some((p, slot, part)) => {
                let is_root = fam.cut.is_slot_root(slot, p, &fam.key.root);
                fam.cut.admit(p, slot, is_root, part)
            }
            // The family root (an owner outside the family cannot happen: the chain is whole).
            None => fam.cut.admit_root(),
        };
        if let Some(k) = adm.owner_part {
            self.stats.parts += 1;
            if let Some(ps) = parent.as_ref().and_then(|p| fam.objects.get_mut(p)) {
                ps.own_part = Some(k);
            }
        }
        if let Some(st) = fam.objects.get_mut(obj) {
            st.slot = adm.slot;
            st.reserved = adm.reserved;
        }
    }

    /// Adds one completed request, emitting its span (and any spans it causes to close) to `out`.
    ///
    /// The steps: find or open the request's family (`open_family`); make sure the
    /// object and its owner chain are in it (`place_chain`), closing the old
    /// incarnation of a recreated object; account the request to its object
    /// (`ObjectState::record`); decide the trace and parent of its span
    /// (`place_request`); emit it; emit families early while `max_open_objects` is
    /// exceeded (`enforce_open_limit`).
    pub fn add_request(&mut self, event: &AuditEvent, place: Placement, out: &mut Vec<SpanRecord>) {
        let (Some(start), Some(end)) = (event.start_time(), event.end_time()) else {
            return;
        };
        let end = end.max(start);
        let window_start = self.window_start(start);
        let root = place.ancestors.last().unwrap_or(&place.object).clone();
        // The trace belongs to the root's cluster (a parent in another cluster, named by a
        // linker rule, makes the family span clusters).
        let key = FamilyKey {
            cluster: root
                .cluster
                .clone()
                .unwrap_or_else(|| place.cluster.clone()),
            window_start,
            root,
        };
        let id = self.open_family(&key, end);
        if let Some(obj) = self.place_chain(id, &key, &place) {
            // A new incarnation: close the old one's span now and start the next segment.
            self.stats.recreations += 1;
            self.emit_object_now(id, &obj, out);
        }
        let Some((trace_id, parent_span, object)) =
            self.place_request(id, event, &place, (start, end))
        else {
            return;
        };
        self.touch(id, end);
        out.push(request_span(
            event,
            &place,
            &object,
            trace_id,
            parent_span,
            start,
            end,
        ));
        self.stats.request_spans += 1;
        self.enforce_open_limit(out);
    }

    /// The id of the open family `key`, opening it (last active at `end`) when there is none.
    fn open_family(&mut self, key: &FamilyKey, end: UnixNanos) -> u64 {
        if let Some(id) = self.index.get(key) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        let window_start = key.window_start;
        if self
            .segments
            .get(&window_start)
            .is_some_and(|m| m.contains_key(&(key.cluster.clone(), key.root.clone())))
        {
            self.stats.continuations += 1;
        }
        let (main_used, next_part) = self.budgets.get(window_start, &key.cluster, &key.root);
        let fam = Family {
            trace_id: ids::trace_id(&key.cluster, &key.root, window_start),
            key: key.clone(),
            objects: BTreeMap::new(),
            last_activity: end,
            cut: parts::Cut::new(self.max_spans, main_used, next_part),
        };
        self.index.insert(key.clone(), id);
        self.families.insert(id, fam);
        self.activity.insert((end, id));
        id
    }

    /// Makes sure the placement's object and its owner chain are in family `id`, with their
    /// parents up to date, root first (so that an owner is placed, in a trace of the family,
    /// before what it owns). Returns the object when this request starts a new incarnation of
    /// it (another uid, or a create after a delete).
    fn place_chain(&mut self, id: u64, key: &FamilyKey, place: &Placement) -> Option<ObjectRef> {
        let mut chain: Vec<(ObjectRef, Option<ObjectRef>)> =
            Vec::with_capacity(place.ancestors.len() + 1);
        chain.push((place.object.clone(), place.ancestors.first().cloned()));
        for (i, a) in place.ancestors.iter().enumerate() {
            chain.push((a.clone(), place.ancestors.get(i + 1).cloned()));
        }
        let mut recreated = None;
        for (i, (obj, parent)) in chain.into_iter().enumerate().rev() {
            let exists = self
                .families
                .get(&id)
                .is_some_and(|f| f.objects.contains_key(&obj));
            if !exists {
                let st = self.new_state(key, obj.clone(), parent, &place.cluster);
                if let Some(f) = self.families.get_mut(&id) {
                    f.objects.insert(obj.clone(), st);
                    self.open_objects += 1;
                }
                self.admit(id, &obj);
                continue;
            }
            let Some(st) = self
                .families
                .get_mut(&id)
                .and_then(|f| f.objects.get_mut(&obj))
            else {
                continue;
            };
            st.parent = parent;
            if i == 0 {
                let uid_changed =
                    matches!((&st.object.uid, &obj.uid), (Some(a), Some(b)) if a != b);
                let recreate = uid_changed || (st.deleted && place.creates);
                if recreate {
                    recreated = Some(obj);
                } else if obj.uid.is_some() {
                    st.object.uid = obj.uid;
                }
            }
        }
        recreated
    }

    /// Accounts the request to its object and decides which trace its span goes to and under
    /// which parent: decided now, never revised (the span is exported now). Returns the trace,
    /// the parent span and the object as the family knows it (uid filled in).
    fn place_request(
        &mut self,
        id: u64,
        event: &AuditEvent,
        place: &Placement,
        (start, end): (UnixNanos, UnixNanos),
    ) -> Option<(TraceId, SpanId, ObjectRef)> {
        let fam = self.families.get_mut(&id)?;
        let Family {
            objects, cut, key, ..
        } = fam;
        let st = objects.get_mut(&place.object)?;
        st.record(event, place, key.window_start, (start, end));
        let depth = cut.depth(st.slot, &st.object, st.parent.as_ref(), &key.root);
        let placed = cut.request(
            &st.object,
            st.slot,
            depth,
            &mut st.reserved,
            st.own_part,
            (start, end),
        );
        if let Some(k) = placed.opened {
            st.own_part = Some(k);
            self.stats.parts += 1;
        }
        let trace_id = slot_trace(key, placed.slot);
        let parent_span = if placed.under_stand_in {
            self.stats.requests_under_stand_ins += 1;
            stand_in_id(key, placed.slot)
        } else {
            st.span_id
        };
        Some((trace_id, parent_span, st.object.clone()))
    }

    /// Marks family `id` active until `end` (its linger counts from its latest activity).
    fn touch(&mut self, id: u64, end: UnixNanos) {
        let Some(fam) = self.families.get_mut(&id) else {
            return;
        };
        if end > fam.last_activity {
            self.activity.remove(&(fam.last_activity, id));
            fam.last_activity = end;
            self.activity.insert((end, id));
        }
    }

    /// Emits the least recently active families while more than `max_open_objects` objects
    /// are open.
    fn enforce_open_limit(&mut self, out: &mut Vec<SpanRecord>) {
        while self.open_objects > self.config.max_open_objects {
            let Some(&(_, oldest)) = self.activity.first() else {
                break;
            };
            self.stats.families_forced += 1;
            self.emit_family(oldest, out);
        }
    }

    /// Advances the clock to `now` (event time, or wall time from a live source) and emits the
    /// families that have been quiet for `linger`.
    pub fn advance(&mut self, now: UnixNanos, out: &mut Vec<SpanRecord>) {
        if now <= self.clock {
            return;
        }
        self.clock = now;
        while let Some(&(last, id)) = self.activity.first() {
            if last.saturating_add(self.linger) > now {
                break;
            }
            self.emit_family(id, out);
        }
        // Segment counters of windows that can no longer receive events are dropped.
        let horizon = self
            .window_start(now)
            .saturating_sub(self.window.saturating_mul(2));
        while let Some((&w, _)) = self.segments.first_key_value() {
            if w >= horizon {
                break;
            }
            self.segments.pop_first();
        }
        self.budgets.prune(horizon);
        self.history.prune(horizon);
    }

    /// Emits every open family (end of input, shutdown, or a consumer losing its partitions).
    pub fn finish(&mut self, out: &mut Vec<SpanRecord>) {
        while let Some(&(_, id)) = self.activity.first() {
            self.emit_family(id, out);
        }
    }

    fn bump_segment(&mut self, key: &FamilyKey, st: &ObjectState) {
        self.segments
            .entry(key.window_start)
            .or_default()
            .insert((st.cluster.clone(), st.object.clone()), st.segment + 1);
    }

    fn emit_object_now(&mut self, id: u64, obj: &ObjectRef, out: &mut Vec<SpanRecord>) {
        let Some(fam) = self.families.get_mut(&id) else {
            return;
        };
        let Some(old) = fam.objects.remove(obj) else {
            return;
        };
        let (parent_span, owner_link) = parent_of(fam, &old);
        let key = fam.key.clone();
        if let Some((s, e)) = old.own {
            let trace_id = slot_trace(&key, old.slot);
            let mut span = self.object_span(&key, trace_id, &old, parent_span, s, e, false);
            span.links.extend(owner_link);
            let history = self.history_link(&key, &old, trace_id);
            attach_history(&mut span, history);
            if old.slot != 0 {
                attrs::push(&mut span.attributes, attrs::PART_INDEX, i64::from(old.slot));
            }
            out.push(span);
            self.stats.object_spans += 1;
        }
        self.bump_segment(&key, &old);
        let mut fresh = self.new_state(&key, obj.clone(), old.parent.clone(), &old.cluster);
        fresh.kind = old.kind;
        // What the old incarnation owned keeps filling the same part.
        fresh.own_part = old.own_part;
        if let Some(f) = self.families.get_mut(&id) {
            f.objects.insert(obj.clone(), fresh);
        }
        self.admit(id, obj);
    }

    /// The link to the object's previous span (an earlier segment in this window, or its last
    /// span in the previous window), remembering this one as the latest.
    fn history_link(
        &mut self,
        key: &FamilyKey,
        st: &ObjectState,
        trace_id: TraceId,
    ) -> Option<SpanLinkRecord> {
        let prev = self
            .history
            .previous(key.window_start, self.window, &st.cluster, &st.object);
        self.history.record(
            key.window_start,
            &st.cluster,
            &st.object,
            history::Emitted {
                trace_id,
                span_id: st.span_id,
            },
        );
        prev.map(|(e, previous_window)| {
            self.stats.history_links += 1;
            link(
                e.trace_id,
                e.span_id,
                if previous_window {
                    attrs::LINK_PREVIOUS_WINDOW
                } else {
                    attrs::LINK_PREVIOUS_SEGMENT
                },
                None,
            )
        })
    }

    fn emit_family(&mut self, id: u64, out: &mut Vec<SpanRecord>) {
        let Some(mut fam) = self.families.remove(&id) else {
            return;
        };
        self.index.remove(&fam.key);
        self.activity.remove(&(fam.last_activity, id));
        self.open_objects = self.open_objects.saturating_sub(fam.objects.len());
        self.stats.families_emitted += 1;

        {
            let fam = &fam;
            // An object's span covers its own requests and those of everything it owns.
            let mut extent: BTreeMap<&ObjectRef, (UnixNanos, UnixNanos)> = BTreeMap::new();
            for st in fam.objects.values() {
                let Some((s, e)) = st.own else { continue };
                let mut cur = Some(&st.object);
                let mut hops = 0;
                while let Some(o) = cur {
                    let ext = extent.entry(o).or_insert((s, e));
                    ext.0 = ext.0.min(s);
                    ext.1 = ext.1.max(e);
                    cur = fam.objects.get(o).and_then(|x| x.parent.as_ref());
                    hops += 1;
                    if hops > fam.objects.len() {
                        break;
                    }
                }
            }
            let own: Vec<summary::Own<'_>> = fam
                .objects
                .values()
                .map(|st| summary::Own {
                    object: &st.object,
                    parent: st.parent.as_ref(),
                    kind: st
                        .kind
                        .clone()
                        .unwrap_or_else(|| st.object.group_resource()),
                    requests: st.requests,
                    errors: st.errors,
                    warnings: st.warnings,
                })
                .collect();
            let summaries = summary::summarize(&own);
            let mut owned_parts: HashMap<&ObjectRef, Vec<u32>> = HashMap::new();
            for (k, part) in &fam.cut.parts {
                owned_parts.entry(&part.owner).or_default().push(*k);
            }
            let total_parts = fam.cut.next_part;
            let mut part_extent: HashMap<u32, (UnixNanos, UnixNanos)> = HashMap::new();
            for st in fam.objects.values() {
                let Some(&(s, e)) = extent.get(&st.object) else {
                    continue;
                };
                if st.slot != 0 {
                    let ext = part_extent.entry(st.slot).or_insert((s, e));
                    ext.0 = ext.0.min(s);
                    ext.1 = ext.1.max(e);
                }
                let (parent_span, owner_link) = parent_of(fam, st);
                let trace_id = slot_trace(&fam.key, st.slot);
                let mut span =
                    self.object_span(&fam.key, trace_id, st, parent_span, s, e, st.own.is_none());
                span.links.extend(owner_link);
                let history = self.history_link(&fam.key, st, trace_id);
                attach_history(&mut span, history);
                if st.slot != 0 {
                    attrs::push(&mut span.attributes, attrs::PART_INDEX, i64::from(st.slot));
                }
                if let Some(sum) = summaries.get(&st.object) {
                    summary::attributes(sum, &mut span.attributes);
                }
                if let Some(ks) = owned_parts.get(&st.object) {
                    attrs::push(
                        &mut span.attributes,
                        attrs::PARTS,
                        i64::try_from(ks.len()).unwrap_or(i64::MAX),
                    );
                    // The first parts; the rest are reached along the chain of parts.
                    for k in ks.iter().take(MAX_PART_LINKS) {
                        span.links.push(link(
                            slot_trace(&fam.key, *k),
                            stand_in_id(&fam.key, *k),
                            attrs::LINK_PART,
                            Some(format!("part {k} of {total_parts}")),
                        ));
                    }
                }
                out.push(span);
                self.stats.object_spans += 1;
            }
            for (k, part) in &fam.cut.parts {
                let owner = fam.objects.get(&part.owner);
                let mut ext = part_extent.get(k).copied();
                if let Some((s, e)) = part.extent {
                    ext = Some(match ext {
                        Some((a, b)) => (a.min(s), b.max(e)),
                        None => (s, e),
                    });
                }
                let Some((s, e)) = ext.or_else(|| extent.get(&part.owner).copied()) else {
                    continue;
                };
                out.push(self.stand_in_span(fam, *k, part, owner, (s, e)));
                self.stats.stand_in_spans += 1;
            }
        }
        // What the main trace still has room for carries over to the family's later segments.
        let unused: u32 = fam
            .objects
            .values()
            .filter(|st| st.slot == 0)
            .map(|st| st.reserved)
            .sum();
        fam.cut.release_main(unused);
        self.budgets.set(
            fam.key.window_start,
            &fam.key.cluster,
            &fam.key.root,
            (fam.cut.main_used, fam.cut.next_part),
        );
        for st in fam.objects.values() {
            self.bump_segment(&fam.key, st);
        }
    }

    /// The root span of part `k`: a stand-in for the part's owner, linking back to the owner's
    /// span and along the chain of the owner's parts.
    fn stand_in_span(
        &self,
        fam: &Family,
        k: u32,
        part: &parts::Part,
        owner: Option<&ObjectState>,
        (start, end): (UnixNanos, UnixNanos),
    ) -> SpanRecord {
        let key = &fam.key;
        let cluster = owner.map_or(key.cluster.as_str(), |o| o.cluster.as_str());
        let mut a: Vec<(AttrKey, AttrValue)> = Vec::with_capacity(20);
        attrs::object_identity(&mut a, cluster, &part.owner);
        if let Some(kind) = owner.and_then(|o| o.kind.as_deref()) {
            attrs::push(&mut a, attrs::OBJECT_KIND, kind);
        }
        attrs::push(&mut a, attrs::PART_STAND_IN, true);
        attrs::push(&mut a, attrs::PART_INDEX, i64::from(k));
        attrs::push(&mut a, attrs::PART_COUNT, i64::from(fam.cut.next_part));
        attrs::push(&mut a, attrs::PART_OBJECTS, i64::from(part.objects));
        attrs::push(&mut a, attrs::PART_REQUESTS, i64::from(part.requests));
        attrs::push(&mut a, attrs::PART_MAIN_TRACE, fam.trace_id.to_string());
        attrs::push(
            &mut a,
            "kubetrail.window.start",
            kubetrail_model::format_rfc3339(key.window_start),
        );
        attrs::push(&mut a, "kubetrail.family.root", key.root.to_string());
        let mut links = Vec::with_capacity(3);
        if let Some(o) = owner {
            links.push(link(
                slot_trace(key, o.slot),
                o.span_id,
                attrs::LINK_PART_OWNER,
                Some(part.owner.to_string()),
            ));
        }
        for (other, rule) in [
            (part.prev, attrs::LINK_PART_PREVIOUS),
            (part.next, attrs::LINK_PART_NEXT),
        ] {
            if let Some(j) = other {
                links.push(link(
                    slot_trace(key, j),
                    stand_in_id(key, j),
                    rule,
                    Some(format!("part {j} of {}", fam.cut.next_part)),
                ));
            }
        }
        SpanRecord {
            trace_id: slot_trace(key, k),
            span_id: stand_in_id(key, k),
            parent_span_id: None,
            name: part.owner.group_resource(),
            kind: SpanKind::Object,
            start,
            end,
            service: self.config.object_service.clone(),
            cluster: cluster.to_owned(),
            attributes: a,
            events: vec![],
            links,
            status: SpanStatus::Unset,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn object_span(
        &self,
        key: &FamilyKey,
        trace_id: TraceId,
        st: &ObjectState,
        parent: Option<SpanId>,
        start: UnixNanos,
        end: UnixNanos,
        owner_only: bool,
    ) -> SpanRecord {
        let mut a: Vec<(AttrKey, AttrValue)> = Vec::with_capacity(20);
        attrs::object_identity(&mut a, &st.cluster, &st.object);
        if let Some(k) = &st.kind {
            attrs::push(&mut a, attrs::OBJECT_KIND, k.as_str());
        }
        attrs::push(&mut a, "kubetrail.object.requests", i64::from(st.requests));
        if st.errors > 0 {
            attrs::push(
                &mut a,
                "kubetrail.object.failed_requests",
                i64::from(st.errors),
            );
        }
        if st.deleted {
            attrs::push(&mut a, "kubetrail.object.deleted", true);
        }
        if let Some(o) = &st.objsetid {
            attrs::push(&mut a, "kubetrail.object.objsetid", o.as_str());
        }
        if owner_only {
            // No requests of its own in this window: present as the owner of what had some.
            attrs::push(&mut a, "kubetrail.object.owner_only", true);
        }
        attrs::push(
            &mut a,
            "kubetrail.window.start",
            kubetrail_model::format_rfc3339(key.window_start),
        );
        attrs::push(&mut a, "kubetrail.segment", i64::from(st.segment));
        attrs::push(&mut a, "kubetrail.family.root", key.root.to_string());
        SpanRecord {
            trace_id,
            span_id: st.span_id,
            parent_span_id: parent,
            name: st.object.group_resource(),
            kind: SpanKind::Object,
            start,
            end,
            service: self.config.object_service.clone(),
            cluster: st.cluster.clone(),
            attributes: a,
            events: vec![],
            links: st.links.clone(),
            status: SpanStatus::Unset,
        }
    }
}

/// Links an object span keeps at most to the parts it owns (the rest are reached along the
/// chain of parts, each linking to the next).
const MAX_PART_LINKS: usize = 32;

/// The trace of a slot of a family: its main trace (0) or part `slot`.
fn slot_trace(key: &FamilyKey, slot: u32) -> TraceId {
    ids::part_trace_id(&key.cluster, &key.root, key.window_start, slot)
}

/// The stand-in root span of part `slot`.
fn stand_in_id(key: &FamilyKey, slot: u32) -> SpanId {
    ids::part_root_span_id(&key.cluster, &key.root, key.window_start, slot)
}

/// Adds the link to the object's previous span — unless the span is a root of its trace and
/// the previous span is in the same trace (an earlier segment of a family root): then the
/// previous span is named by [`attrs::SEGMENT_PREVIOUS`] instead, because Jaeger would take
/// the link for the span's parent.
fn attach_history(span: &mut SpanRecord, history: Option<SpanLinkRecord>) {
    let Some(l) = history else {
        return;
    };
    if span.parent_span_id.is_none() && l.trace_id == span.trace_id {
        attrs::push(
            &mut span.attributes,
            attrs::SEGMENT_PREVIOUS,
            l.span_id.to_string(),
        );
    } else {
        span.links.push(l);
    }
}

fn link(
    trace_id: TraceId,
    span_id: SpanId,
    rule: &'static str,
    target: Option<String>,
) -> SpanLinkRecord {
    let mut attributes = vec![(AttrKey::Borrowed(attrs::LINK_RULE), AttrValue::from(rule))];
    if let Some(t) = target {
        attributes.push((AttrKey::Borrowed(attrs::LINK_TARGET), AttrValue::Str(t)));
    }
    SpanLinkRecord {
        trace_id,
        span_id,
        attributes,
    }
}

/// The parent of an object's span within its own trace, and a link to its owner's span when
/// that is in another trace and the parent is not a stand-in for it.
fn parent_of(fam: &Family, st: &ObjectState) -> (Option<SpanId>, Option<SpanLinkRecord>) {
    let owner = st.parent.as_ref().and_then(|p| fam.objects.get(p));
    match owner {
        Some(p) if p.slot == st.slot => (Some(p.span_id), None),
        None if st.slot == 0 => (None, None),
        _ => {
            // In a part: under the part's stand-in, which stands for the owner. (An object whose
            // owner moved to another trace, after a recreation, hangs under the trace's root.)
            let parent = if st.slot != 0 {
                Some(stand_in_id(&fam.key, st.slot))
            } else {
                fam.objects
                    .get(&fam.key.root)
                    .map(|r| r.span_id)
                    .filter(|s| *s != st.span_id)
            };
            let stands_for_owner = st.slot != 0
                && fam
                    .cut
                    .parts
                    .get(&st.slot)
                    .is_some_and(|pt| Some(&pt.owner) == st.parent.as_ref());
            let owner_link = owner.filter(|_| !stands_for_owner).map(|p| {
                link(
                    slot_trace(&fam.key, p.slot),
                    p.span_id,
                    attrs::LINK_OWNER,
                    Some(p.object.to_string()),
                )
            });
            (parent, owner_link)
        }
    }
}

/// The low-cardinality operation name of a request: `VERB RESOURCE[/SUBRESOURCE]`.
pub fn request_name(event: &AuditEvent) -> String {
    let r = event.object_ref.as_ref();
    let resource = r.and_then(|r| r.resource.as_deref()).unwrap_or("");
    match r.and_then(|r| r.subresource.as_deref()) {
        Some(sub) => format!("{} {resource}/{sub}", event.verb),
        None => format!("{} {resource}", event.verb),
    }
}

fn request_span(
    event: &AuditEvent,
    place: &Placement,
    object: &ObjectRef,
    trace_id: TraceId,
    parent: SpanId,
    start: UnixNanos,
    end: UnixNanos,
) -> SpanRecord {
    let user = event.effective_user();
    let actor = Actor::derive(user, event.user_agent.as_deref());
    let mut a: Vec<(AttrKey, AttrValue)> = Vec::with_capacity(24);
    attrs::object_identity(&mut a, &place.cluster, object);
    attrs::request_attributes(&mut a, event, &actor.username);
    if place.incomplete {
        attrs::push(&mut a, "kubetrail.audit.incomplete", true);
    }
    if let Some(o) = &place.objsetid {
        attrs::push(&mut a, "kubetrail.object.objsetid", o.as_str());
    }
    let mut name = request_name(event);
    if place.collection_item {
        name = format!("delete {}", object.resource);
        attrs::push(&mut a, "kubetrail.audit.deletecollection", true);
    }
    let mut events = place.span_events.clone();
    a.extend(place.attributes.iter().cloned());
    if let Some(k) = &place.kube_event {
        // A Kubernetes Event about the object: named by its reason, Warnings stand out.
        name = if k.reason.is_empty() {
            "event".to_owned()
        } else {
            format!("event {}", k.reason)
        };
        attrs::push(&mut a, "k8s.event.reason", k.reason.as_str());
        attrs::push(&mut a, "kubetrail.event.type", k.kind.as_str());
        attrs::push(&mut a, "kubetrail.event.message", k.message.as_str());
        if let Some(c) = k.count {
            attrs::push(&mut a, "kubetrail.event.count", c);
        }
        if let Some(r) = &k.reporter {
            attrs::push(&mut a, "kubetrail.event.reporter", r.as_str());
        }
        events.push(kubetrail_model::SpanEventRecord {
            time: start,
            name: format!("{} {}", k.kind, k.reason),
            attributes: vec![(
                AttrKey::Borrowed("message"),
                AttrValue::Str(k.message.clone()),
            )],
        });
    }
    let warning = place.kube_event.as_ref().filter(|k| k.kind == "Warning");
    let status = match event.response_code() {
        Some(code) if code >= 400 => {
            let st = event.response_status.as_ref();
            let reason = st.and_then(|s| s.reason.as_deref()).unwrap_or("");
            let message = st.and_then(|s| s.message.as_deref()).unwrap_or("");
            SpanStatus::Error(
                format!("{code} {reason}: {message}")
                    .trim_end_matches([':', ' '])
                    .to_owned(),
            )
        }
        _ if event.stage == kubetrail_model::Stage::Panic => {
            SpanStatus::Error("apiserver panic while serving the request".into())
        }
        _ => match warning {
            Some(k) => SpanStatus::Error(format!("Warning {}: {}", k.reason, k.message)),
            None => SpanStatus::Unset,
        },
    };
    SpanRecord {
        trace_id,
        span_id: if place.collection_item {
            ids::collection_item_span_id(&place.cluster, &event.audit_id, object)
        } else {
            ids::request_span_id(&place.cluster, &event.audit_id)
        },
        parent_span_id: Some(parent),
        name,
        kind: SpanKind::Request,
        start,
        end,
        service: actor.component,
        cluster: place.cluster.clone(),
        attributes: a,
        events,
        links: place.links.clone(),
        status,
    }
}
