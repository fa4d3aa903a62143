//! The consumer pipeline: filter → merge stages → link → aggregate.
//!
//! Every run mode (`replay`, `serve`, `consume`) feeds audit events into one [`Pipeline`] and
//! sends the spans it returns to an exporter. The pipeline is synchronous and deterministic:
//! the same events in the same order give the same spans, which is what makes a replay equal
//! to a live run and N consumers equal to one.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod family;
mod kube_event;
mod stages;
pub mod watermark;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use kubetrail_aggregate::{Aggregator, AggregatorConfig, AggregatorStats, Placement};

use kubetrail_decorate::{DecorateConfig, Decoration, Decorator};
use kubetrail_filter::{EventFilter, FilterConfig, Verdict};
use kubetrail_link::{Linker, LinkerConfig};
use kubetrail_model::{AuditEvent, ObjectHead, ObjectRef, SpanRecord, UnixNanos};

pub use stages::{Offer, StageMerger};

/// Pipeline settings: the `filter`, `link` and `aggregate` sections of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Which events become spans.
    pub filter: FilterConfig,
    /// Owner resolution.
    pub link: LinkerConfig,
    /// Windows, linger, limits.
    pub aggregate: AggregatorConfig,
    /// Stage merging.
    pub requests: RequestConfig,
    /// Diffs, snapshots and redaction.
    pub decorate: DecorateConfig,
}

/// Stage merging settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestConfig {
    /// How long a request seen only at an early stage waits for its final one, from when it
    /// arrived (event time; a live source's wall time once caught up).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Completed auditIDs remembered to drop repeated deliveries.
    pub remember: usize,
    /// Requests held waiting for their final stage, at most.
    pub max_pending: usize,
}

impl Default for RequestConfig {
    fn default() -> Self {
        RequestConfig {
            timeout: Duration::from_secs(300),
            remember: 200_000,
            max_pending: 50_000,
        }
    }
}

/// What the pipeline did with its input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Events offered.
    pub events_in: u64,
    /// Events dropped by the filter, by reason.
    pub filtered: BTreeMap<&'static str, u64>,
    /// Stages of a request already turned into a span (repeats, later stages).
    pub duplicates: u64,
    /// Earlier stages (RequestReceived, ResponseStarted) folded into their final stage.
    pub stages_merged: u64,
    /// Requests released without a final stage.
    pub incomplete: u64,
    /// Requests with no usable timestamp (counted, not exported).
    pub untimed: u64,
    /// Requests placed on the collection rather than one object (no name known: a
    /// `generateName` create logged without its response body, or a list/collection request).
    pub on_collection: u64,
    /// Requests whose owner chain has a link inferred from the controllers' naming
    /// conventions (no body named the owner; `kubetrail.link.inferred`).
    pub inferred_owners: u64,
    /// Requests about an object whose owner chain is longer than `link.max_depth`: the
    /// object roots its own trace, linked to its owner (`kubetrail.link.cut`).
    pub owner_chains_cut: u64,
    /// Requests about an object whose owners form a cycle, broken at its least member
    /// (`kubetrail.link.cycle`).
    pub owner_cycles: u64,
    /// Items of `deletecollection` responses given a delete span of their own.
    pub collection_items: u64,
    /// Secret values replaced by a salted hash before processing.
    pub redacted_values: u64,
    /// Bodies replaced whole because they had to be redacted but could not be parsed (fail
    /// closed).
    pub redacted_bodies: u64,
    /// Requests whose diff against the object's previous state was computed.
    pub diffs: u64,
    /// Updates and patches that changed nothing (noise ignored).
    pub noop_updates: u64,
    /// Traceparent annotations that were not valid W3C traceparents (ignored).
    pub malformed_traceparents: u64,
    /// Kubernetes Events placed on the object they are about.
    pub kube_events: u64,
    /// Kubernetes Event requests that named no object we could find (deletes of Events,
    /// patches of Events never seen created): counted, not exported.
    pub kube_events_unplaced: u64,
    /// Requests processed after time had passed them (see [`watermark`]), marked
    /// `kubetrail.late` on their span.
    pub late: u64,
    /// Aggregation counters.
    pub aggregate: AggregatorStats,
}

impl PipelineStats {
    /// Events dropped by the filter in total.
    pub fn filtered_total(&self) -> u64 {
        self.filtered.values().sum()
    }
}

/// The pipeline's state.
pub struct Pipeline {
    filter: EventFilter,
    merger: StageMerger,
    linker: Linker,
    aggregator: Aggregator,
    stats: PipelineStats,
    released: Vec<(String, AuditEvent)>,
    kube_events: kube_event::EventIndex,
    decorator: Decorator,
    /// The request being processed arrived late (set around `process`).
    late_now: bool,
}

impl Pipeline {
    /// A pipeline with the given settings.
    pub fn new(config: PipelineConfig) -> Self {
        Pipeline {
            filter: EventFilter::new(config.filter),
            merger: StageMerger::new(
                i64::try_from(config.requests.timeout.as_nanos()).unwrap_or(i64::MAX),
                config.requests.remember,
                config.requests.max_pending,
            ),
            linker: Linker::new(config.link),
            aggregator: Aggregator::new(config.aggregate),
            stats: PipelineStats::default(),
            released: Vec::new(),
            kube_events: kube_event::EventIndex::new(50_000),
            decorator: Decorator::new(config.decorate),
            late_now: false,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PipelineStats {
        let mut s = self.stats.clone();
        s.aggregate = self.aggregator.stats().clone();
        s.stages_merged = self.merger.merged();
        s
    }

    /// Objects in the learned graph, families and objects held open, requests pending.
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.linker.len(),
            self.aggregator.open_families(),
            self.aggregator.open_objects(),
            self.merger.pending(),
        )
    }

    /// Processes one event from `cluster`, appending the spans it completes to `out`.
    pub fn push(&mut self, cluster: &str, event: AuditEvent, out: &mut Vec<SpanRecord>) {
        self.push_marked(cluster, event, false, out);
    }

    /// Processes one event released by a [`watermark::Sequencer`]; `late` when it arrived
    /// after the watermark had passed its time (its request span says so).
    pub fn push_marked(
        &mut self,
        cluster: &str,
        mut event: AuditEvent,
        late: bool,
        out: &mut Vec<SpanRecord>,
    ) {
        self.stats.events_in += 1;
        // Before anything else reads, holds or logs the bodies.
        let redaction = self.decorator.redact_report(&mut event);
        self.stats.redacted_values += redaction.values as u64;
        self.stats.redacted_bodies += redaction.whole_bodies as u64;
        if let Some(t) = event.end_time() {
            self.advance(t, out);
        }
        let verdict = self.filter.decide(cluster, &event);
        if verdict != Verdict::Keep {
            *self.stats.filtered.entry(verdict.label()).or_default() += 1;
            return;
        }
        let mut evicted = std::mem::take(&mut self.released);
        match self.merger.offer(cluster, event, &mut evicted) {
            Offer::Complete(e) => {
                self.late_now = late;
                self.process(cluster, &e, false, out);
                self.late_now = false;
            }
            Offer::Held => {}
            Offer::Duplicate => self.stats.duplicates += 1,
        }
        for (c, e) in evicted.drain(..) {
            self.process(&c, &e, true, out);
        }
        self.released = evicted;
    }

    /// Moves the clock to `now` (a live source's wall clock), emitting what became due.
    pub fn advance(&mut self, now: UnixNanos, out: &mut Vec<SpanRecord>) {
        let mut expired = std::mem::take(&mut self.released);
        self.merger.expire(now, &mut expired);
        for (c, e) in expired.drain(..) {
            self.process(&c, &e, true, out);
        }
        self.released = expired;
        self.aggregator.advance(now, out);
    }

    /// Emits everything still held: end of input, or shutdown.
    pub fn finish(&mut self, out: &mut Vec<SpanRecord>) {
        let mut rest = Vec::new();
        self.merger.drain(&mut rest);
        for (c, e) in rest {
            self.process(&c, &e, true, out);
        }
        self.aggregator.finish(out);
    }

    /// A `deletecollection` whose response lists what it deleted: each item's own span gets a
    /// `delete` child (the collection keeps the one request span).
    fn delete_items(
        &mut self,
        cluster: &str,
        event: &AuditEvent,
        incomplete: bool,
        out: &mut Vec<SpanRecord>,
    ) {
        #[derive(serde::Deserialize)]
        struct List {
            #[serde(default)]
            items: Vec<ObjectHead>,
        }
        let Some(r) = event.object_ref.as_ref() else {
            return;
        };
        let Some(list) = event
            .response_object
            .as_deref()
            .and_then(|b| serde_json::from_str::<List>(b.get()).ok())
        else {
            return;
        };
        for item in list.items {
            let Some(name) = item.metadata.name.clone().filter(|n| !n.is_empty()) else {
                continue;
            };
            let mut object = ObjectRef {
                group: r.api_group.clone().unwrap_or_default(),
                resource: r.resource.clone().unwrap_or_default(),
                namespace: item
                    .metadata
                    .namespace
                    .clone()
                    .or_else(|| r.namespace.clone())
                    .unwrap_or_default(),
                name,
                uid: item.metadata.uid.clone(),
                cluster: None,
            };
            self.linker.observe(&mut object, Some(&item));
            let ancestors = self.linker.ancestors(&object);
            self.stats.collection_items += 1;
            let place = Placement {
                cluster: cluster.to_owned(),
                object,
                ancestors,
                kind: item.kind.clone(),
                creates: false,
                deletes: true,
                incomplete,
                kube_event: None,
                links: Vec::new(),
                objsetid: None,
                span_events: Vec::new(),
                attributes: Vec::new(),
                secondary: Vec::new(),
                collection_item: true,
            };
            self.aggregator.add_request(event, place, out);
        }
    }

    /// Turns what the decorator found into span events and attributes of the request span.
    fn describe(&mut self, d: &Decoration, event: &AuditEvent, place: &mut Placement) {
        use kubetrail_model::{AttrKey, AttrValue, SpanEventRecord};
        let at = event.end_time().unwrap_or_default();
        if d.had_prior_state {
            self.stats.diffs += 1;
            place.attributes.push((
                AttrKey::Borrowed("kubetrail.diff.changes"),
                AttrValue::Int((d.changes.len() + d.more_changes) as i64),
            ));
        }
        if d.noop {
            self.stats.noop_updates += 1;
            place.attributes.push((
                AttrKey::Borrowed("kubetrail.diff.noop"),
                AttrValue::Bool(true),
            ));
        }
        let unattributed = d.unattributed.len() + d.more_unattributed;
        if unattributed > 0 {
            place.attributes.push((
                AttrKey::Borrowed("kubetrail.diff.unattributed"),
                AttrValue::Int(unattributed as i64),
            ));
        }
        // This request's changes, then those since the last seen state it cannot have made
        // (other requests', seen without a body), named apart.
        for (changes, more, apart) in [
            (&d.changes, d.more_changes, false),
            (&d.unattributed, d.more_unattributed, true),
        ] {
            for c in changes {
                let mut attributes =
                    vec![(AttrKey::Borrowed("path"), AttrValue::Str(c.path.clone()))];
                if let Some(old) = &c.old {
                    attributes.push((AttrKey::Borrowed("old"), AttrValue::Str(old.clone())));
                }
                if let Some(new) = &c.new {
                    attributes.push((AttrKey::Borrowed("new"), AttrValue::Str(new.clone())));
                }
                if apart {
                    attributes.push((
                        AttrKey::Borrowed("kubetrail.diff.unattributed"),
                        AttrValue::Bool(true),
                    ));
                }
                let name = match (&c.old, &c.new, apart) {
                    (Some(_), Some(_), false) => "changed",
                    (None, _, false) => "added",
                    (Some(_), None, false) => "removed",
                    (Some(_), Some(_), true) => "changed (unattributed)",
                    (None, _, true) => "added (unattributed)",
                    (Some(_), None, true) => "removed (unattributed)",
                }
                .to_owned();
                place.span_events.push(SpanEventRecord {
                    time: at,
                    name,
                    attributes,
                });
            }
            if more > 0 {
                let what = if apart {
                    "unattributed changes"
                } else {
                    "changes"
                };
                place.span_events.push(SpanEventRecord {
                    time: at,
                    name: format!("… and {more} more {what}"),
                    attributes: vec![],
                });
            }
        }
        if let Some(snapshot) = &d.snapshot {
            let name = if event.verb == "create" {
                "snapshot (created)"
            } else {
                "snapshot (deleted)"
            };
            place.span_events.push(SpanEventRecord {
                time: at,
                name: name.to_owned(),
                attributes: vec![(
                    AttrKey::Borrowed("object"),
                    AttrValue::Str(snapshot.clone()),
                )],
            });
        }
    }

    /// A Kubernetes Event goes on the span of the object it is about.
    fn process_kube_event(
        &mut self,
        cluster: &str,
        event: &AuditEvent,
        incomplete: bool,
        out: &mut Vec<SpanRecord>,
    ) {
        let Some((mut about, info)) = self.kube_events.place(event) else {
            // An Event we cannot tie to an object (a delete, a patch of one never seen
            // created): counted, nothing to show.
            self.stats.kube_events_unplaced += 1;
            return;
        };
        self.stats.kube_events += 1;
        self.linker.observe(&mut about, None);
        let ancestors = self.linker.ancestors(&about);
        let place = Placement {
            cluster: cluster.to_owned(),
            object: about,
            ancestors,
            kind: None,
            creates: false,
            deletes: false,
            incomplete,
            kube_event: Some(info),
            links: Vec::new(),
            objsetid: None,
            span_events: Vec::new(),
            attributes: Vec::new(),
            secondary: Vec::new(),
            collection_item: false,
        };
        self.aggregator.add_request(event, place, out);
    }

    fn process(
        &mut self,
        cluster: &str,
        event: &AuditEvent,
        incomplete: bool,
        out: &mut Vec<SpanRecord>,
    ) {
        if incomplete {
            self.stats.incomplete += 1;
        }
        if event.start_time().is_none() {
            self.stats.untimed += 1;
            return;
        }
        if kube_event::is_event_request(event) {
            self.process_kube_event(cluster, event, incomplete, out);
            return;
        }
        let sub = event
            .object_ref
            .as_ref()
            .and_then(|r| r.subresource.as_deref());
        let head = family::object_head(event);
        let mut object = match ObjectRef::from_event(event, head.as_ref()) {
            Some(o) => o,
            None => {
                // A create with generateName whose response was not recorded, or a collection
                // request: the span goes on the collection.
                let Some(r) = event.object_ref.as_ref().filter(|r| r.resource.is_some()) else {
                    return;
                };
                self.stats.on_collection += 1;
                ObjectRef {
                    group: r.api_group.clone().unwrap_or_default(),
                    resource: r.resource.clone().unwrap_or_default(),
                    namespace: r.namespace.clone().unwrap_or_default(),
                    name: String::new(),
                    uid: None,
                    cluster: None,
                }
            }
        };
        self.linker
            .observe_body(&mut object, head.as_ref(), event.object_body());
        let (links, objsetid) = match head.as_ref() {
            Some(h) => {
                let a = self.linker.annotation_links(h);
                self.stats.malformed_traceparents += a.malformed.len() as u64;
                for key in &a.malformed {
                    tracing::debug!(annotation = %key, object = %object, "malformed traceparent annotation ignored");
                }
                let links = a
                    .links
                    .into_iter()
                    .map(|(key, trace_id, span_id)| kubetrail_model::SpanLinkRecord {
                        trace_id,
                        span_id,
                        attributes: vec![(
                            kubetrail_model::AttrKey::Borrowed("kubetrail.link.annotation"),
                            key.into(),
                        )],
                    })
                    .collect();
                (links, a.objsetid)
            }
            None => (Vec::new(), None),
        };
        let ancestry = self.linker.ancestry(&object);
        let inferred = ancestry.inferred;
        let (cut_owner, cycle) = (ancestry.cut_owner, ancestry.cycle);
        let mut ancestors = ancestry.chain;
        for a in &mut ancestors {
            // A reference to this very cluster is the same object as one without a cluster.
            if a.cluster.as_deref() == Some(cluster) {
                a.cluster = None;
            }
        }
        let code = event.response_code().unwrap_or(200);
        let mut place = Placement {
            cluster: cluster.to_owned(),
            object,
            ancestors,
            kind: head.as_ref().and_then(|h| h.kind.clone()),
            creates: event.verb == "create" && sub.is_none(),
            deletes: event.verb == "delete" && (200..300).contains(&code) && sub.is_none(),
            incomplete,
            kube_event: None,
            links,
            objsetid,
            span_events: Vec::new(),
            attributes: Vec::new(),
            secondary: Vec::new(),
            collection_item: false,
        };
        if inferred {
            self.stats.inferred_owners += 1;
            place.attributes.push((
                kubetrail_model::AttrKey::Borrowed("kubetrail.link.inferred"),
                kubetrail_model::AttrValue::Bool(true),
            ));
        }
        if let Some(owner) = cut_owner {
            // The chain is longer than `link.max_depth`: the object roots its own trace, and
            // its span links to its owner's, in the owner's trace (see `Ancestry`).
            self.stats.owner_chains_cut += 1;
            place.attributes.push((
                kubetrail_model::AttrKey::Borrowed("kubetrail.link.cut"),
                kubetrail_model::AttrValue::Bool(true),
            ));
            let root = self
                .linker
                .ancestors(&owner)
                .pop()
                .unwrap_or_else(|| owner.clone());
            place.secondary.push(kubetrail_aggregate::SecondaryLink {
                rule: "owner beyond link.max_depth".into(),
                target: owner,
                root,
            });
        }
        if cycle {
            self.stats.owner_cycles += 1;
            place.attributes.push((
                kubetrail_model::AttrKey::Borrowed("kubetrail.link.cycle"),
                kubetrail_model::AttrValue::Bool(true),
            ));
        }
        for (rule, target) in self.linker.secondary(&place.object) {
            let root = self
                .linker
                .ancestors(&target)
                .pop()
                .unwrap_or_else(|| target.clone());
            place
                .secondary
                .push(kubetrail_aggregate::SecondaryLink { rule, target, root });
        }
        if self.late_now {
            self.stats.late += 1;
            place.attributes.push((
                kubetrail_model::AttrKey::Borrowed("kubetrail.late"),
                kubetrail_model::AttrValue::Bool(true),
            ));
        }
        let decoration = self.decorator.decorate(cluster, &place.object, event);
        self.describe(&decoration, event, &mut place);
        self.aggregator.add_request(event, place, out);
        if event.verb == "deletecollection" && (200..300).contains(&code) {
            self.delete_items(cluster, event, incomplete, out);
        }
    }
}
