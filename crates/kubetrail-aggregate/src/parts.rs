//! The span budget of a trace, and how a family that outgrows it is cut into parts.
//!
//! Jaeger UI slows down past a few thousand spans in one trace and fails around 40,000; Tempo
//! refuses traces above a size limit. A rollout of a 1,200-replica Deployment alone is ~17,000
//! spans. So no trace kubetrail exports holds more than `aggregate.max_trace_spans` spans.
//!
//! Request spans are exported the moment their request completes, with their trace and parent
//! ids, long before the family is complete. So where a span goes must be decided **online, at
//! the moment it is first needed, and never revised**:
//!
//! * Every trace of a family in a window is a *slot*: slot 0 is the family's main trace
//!   ([`ids::trace_id`](kubetrail_model::ids::trace_id)); slot `k ≥ 1` is *part k*
//!   ([`ids::part_trace_id`](kubetrail_model::ids::part_trace_id)). A part belongs to one
//!   **owner** object; its root span is a stand-in for that owner, linking back to the owner's
//!   real span, and the owner's span links forward to its parts.
//! * A new object is admitted into its owner's slot while that slot has room for
//!   `OBJECT_RESERVE` spans (its own span and its first requests, reserved so that an object
//!   and its requests usually stay together). Objects directly under a slot's root may fill it
//!   to 15/16 of the budget, deeper objects only to half (so the main trace keeps room for the
//!   owners: the second ReplicaSet of a rollout still lands in the main trace next to the
//!   first). Otherwise it goes into the owner's open part, or a new part of that owner is
//!   opened.
//! * A request goes into its object's slot while the object has reserved spans left, or while
//!   the slot is below the limit for the object's depth (the slot root's own requests: the
//!   budget; its direct children's: 13/16; deeper: 12/16); otherwise under a stand-in of the
//!   object in the object's own part. So the family root's own requests stay in the main trace,
//!   and nothing is ever dropped.
//! * Parts of one owner form a chain (each stand-in links to the previous and next part), so
//!   every part is reachable from the owner even past the number of links a span carries.
//!
//! The cut depends only on the order in which the aggregator is given the requests (the same
//! input order gives the same cut and ids). Hash-bucketing objects into parts would make the
//! choice of part independent of order, but cannot bound a bucket's size without knowing the
//! family's final size, which is known only after the family went quiet: by then its request
//! spans are long exported. The order is made canonical upstream (requests are released in
//! event-time order within the allowed lateness), so arrival order within it does not matter.

use std::collections::{BTreeMap, HashMap};

use kubetrail_model::{ObjectRef, UnixNanos};

/// Spans reserved in a slot when an object is admitted: its own span and its first requests
/// (a Pod of a rollout has ~13: create, binding, status patches, deletes and ~6 Events).
pub(crate) const OBJECT_RESERVE: u32 = 16;

/// The smallest budget accepted: a part must hold its stand-in and at least a few objects.
pub const MIN_TRACE_SPANS: usize = 4 * OBJECT_RESERVE as usize;

/// One part of a family: a trace holding objects or requests on behalf of `owner`.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    /// The object the part's root span stands in for.
    pub owner: ObjectRef,
    /// The previous part of the same owner, if any.
    pub prev: Option<u32>,
    /// The next part of the same owner, if any.
    pub next: Option<u32>,
    /// Spans counted against the budget (the stand-in included; reservations count).
    pub used: u32,
    /// Objects whose span is in the part.
    pub objects: u32,
    /// Request spans in the part.
    pub requests: u32,
    /// Extent of the requests directly under the stand-in.
    pub extent: Option<(UnixNanos, UnixNanos)>,
}

/// Where an object stands in its slot, for the limits that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// The slot's root: the family root in the main trace, the owner of a part.
    Root,
    /// Directly under the slot's root.
    Child,
    /// Further down.
    Deep,
}

/// Where a new object was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// Its slot.
    pub slot: u32,
    /// Spans reserved for its requests in that slot.
    pub reserved: u32,
    /// The owner's open part, when it changed (a new part was opened).
    pub owner_part: Option<u32>,
}

/// Where a request span goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestSlot {
    /// The slot (0 = main trace).
    pub slot: u32,
    /// The request is under the stand-in of its object in the object's own part (not under the
    /// object's span).
    pub under_stand_in: bool,
    /// The object's open part, when a new one was opened for this request.
    pub opened: Option<u32>,
}

/// The budget bookkeeping of one family segment. `main_used` and `next_part` carry over to the
/// family's later segments in the same window (they share the main trace and the part
/// numbering); parts are closed when the segment is emitted.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    /// Spans per trace at most.
    pub budget: u32,
    /// Spans counted in the main trace.
    pub main_used: u32,
    /// Parts numbered so far in the window (the next part is `next_part + 1`).
    pub next_part: u32,
    /// The parts opened in this segment.
    pub parts: BTreeMap<u32, Part>,
}

impl Cut {
    /// A segment's bookkeeping, continuing from what earlier segments of the window used.
    pub fn new(budget: u32, main_used: u32, next_part: u32) -> Self {
        Cut {
            budget,
            main_used,
            next_part,
            parts: BTreeMap::new(),
        }
    }

    fn used(&self, slot: u32) -> u32 {
        if slot == 0 {
            self.main_used
        } else {
            self.parts.get(&slot).map_or(u32::MAX, |p| p.used)
        }
    }

    fn add(&mut self, slot: u32, n: u32) {
        if slot == 0 {
            self.main_used = self.main_used.saturating_add(n);
        } else if let Some(p) = self.parts.get_mut(&slot) {
            p.used = p.used.saturating_add(n);
        }
    }

    fn sixteenths(&self, n: u32) -> u32 {
        u32::try_from(u64::from(self.budget) * u64::from(n) / 16).unwrap_or(self.budget)
    }

    /// How far a new object may fill its owner's slot: objects directly under the slot's root
    /// (the ReplicaSets of a Deployment, the Pods of a part of a ReplicaSet) to 15/16, deeper
    /// ones to half, so that the slot keeps room for its owners.
    fn admit_limit(&self, depth: Depth) -> u32 {
        match depth {
            Depth::Root | Depth::Child => self.sixteenths(15),
            Depth::Deep => self.sixteenths(8),
        }
    }

    /// How far requests beyond an object's reservation may fill its slot: the slot's root's
    /// own requests to the budget, its direct children's to 13/16 (a ReplicaSet's thousand
    /// `SuccessfulCreate` Events must not crowd out the next ReplicaSet), deeper objects' to
    /// 12/16.
    fn request_limit(&self, depth: Depth) -> u32 {
        match depth {
            Depth::Root => self.budget,
            Depth::Child => self.sixteenths(13),
            Depth::Deep => self.sixteenths(12),
        }
    }

    /// Where `object` (owned by `parent`) stands in `slot`.
    pub fn depth(
        &self,
        slot: u32,
        object: &ObjectRef,
        parent: Option<&ObjectRef>,
        family_root: &ObjectRef,
    ) -> Depth {
        if self.is_slot_root(slot, object, family_root) {
            Depth::Root
        } else if parent.is_some_and(|p| self.is_slot_root(slot, p, family_root)) {
            Depth::Child
        } else {
            Depth::Deep
        }
    }

    /// Whether `object` is the root of `slot`: the family root for the main trace, the owner
    /// for a part.
    pub fn is_slot_root(&self, slot: u32, object: &ObjectRef, family_root: &ObjectRef) -> bool {
        if slot == 0 {
            object == family_root
        } else {
            self.parts.get(&slot).is_some_and(|p| &p.owner == object)
        }
    }

    fn open(&mut self, owner: &ObjectRef, prev: Option<u32>, used: u32) -> u32 {
        self.next_part = self.next_part.saturating_add(1);
        let k = self.next_part;
        if let Some(p) = prev.and_then(|p| self.parts.get_mut(&p)) {
            p.next = Some(k);
        }
        self.parts.insert(
            k,
            Part {
                owner: owner.clone(),
                prev,
                next: None,
                used,
                objects: 0,
                requests: 0,
                extent: None,
            },
        );
        k
    }

    /// Admits the family root (or a new segment or incarnation of it): always the main trace.
    pub fn admit_root(&mut self) -> Admission {
        self.main_used = self.main_used.saturating_add(1);
        Admission {
            slot: 0,
            reserved: 0,
            owner_part: None,
        }
    }

    /// Admits a new object owned by `owner`, whose span is in `owner_slot` and whose open part
    /// (for objects and requests that did not fit) is `owner_part`.
    pub fn admit(
        &mut self,
        owner: &ObjectRef,
        owner_slot: u32,
        owner_is_slot_root: bool,
        owner_part: Option<u32>,
    ) -> Admission {
        let limit = self.admit_limit(if owner_is_slot_root {
            Depth::Child
        } else {
            Depth::Deep
        });
        let need = OBJECT_RESERVE;
        if self.used(owner_slot).saturating_add(need) <= limit {
            self.add(owner_slot, need);
            if let Some(p) = self.parts.get_mut(&owner_slot) {
                p.objects += 1;
            }
            return Admission {
                slot: owner_slot,
                reserved: need - 1,
                owner_part: None,
            };
        }
        if let Some(k) = owner_part
            && self.used(k).saturating_add(need) <= self.admit_limit(Depth::Child)
        {
            self.add(k, need);
            if let Some(p) = self.parts.get_mut(&k) {
                p.objects += 1;
            }
            return Admission {
                slot: k,
                reserved: need - 1,
                owner_part: None,
            };
        }
        // The stand-in and the object's reservation.
        let k = self.open(owner, owner_part, 1 + need);
        if let Some(p) = self.parts.get_mut(&k) {
            p.objects = 1;
        }
        Admission {
            slot: k,
            reserved: need - 1,
            owner_part: Some(k),
        }
    }

    /// Places one request of `object` (span in `slot`, at `depth` there, `reserved` spans left
    /// for it there, its own open part `own_part`), completed over `[start, end]`.
    pub fn request(
        &mut self,
        object: &ObjectRef,
        slot: u32,
        depth: Depth,
        reserved: &mut u32,
        own_part: Option<u32>,
        (start, end): (UnixNanos, UnixNanos),
    ) -> RequestSlot {
        let count = |cut: &mut Cut, k: u32, stand_in: bool| {
            if let Some(p) = cut.parts.get_mut(&k) {
                p.requests += 1;
                if stand_in {
                    p.extent = Some(match p.extent {
                        Some((s, e)) => (s.min(start), e.max(end)),
                        None => (start, end),
                    });
                }
            }
        };
        if *reserved > 0 {
            *reserved -= 1;
            count(self, slot, false);
            return RequestSlot {
                slot,
                under_stand_in: false,
                opened: None,
            };
        }
        if self.used(slot) < self.request_limit(depth) {
            self.add(slot, 1);
            count(self, slot, false);
            return RequestSlot {
                slot,
                under_stand_in: false,
                opened: None,
            };
        }
        if let Some(k) = own_part
            && self.used(k) < self.budget
        {
            self.add(k, 1);
            count(self, k, true);
            return RequestSlot {
                slot: k,
                under_stand_in: true,
                opened: None,
            };
        }
        let k = self.open(object, own_part, 2);
        count(self, k, true);
        RequestSlot {
            slot: k,
            under_stand_in: true,
            opened: Some(k),
        }
    }

    /// Gives back reservations that were not used in the main trace (at emission: the main
    /// trace's later segments may use them).
    pub fn release_main(&mut self, unused: u32) {
        self.main_used = self.main_used.saturating_sub(unused);
    }
}

/// `(main_used, next_part)`: what a family's segments left of the window's budget.
type SegmentUse = (u32, u32);

/// Per window: what each family's earlier segments used of its main trace, and how many parts
/// it numbered.
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    by_window: BTreeMap<UnixNanos, HashMap<(String, ObjectRef), SegmentUse>>,
}

impl Budgets {
    /// `(main_used, next_part)` left by earlier segments of the family.
    pub fn get(&self, window: UnixNanos, cluster: &str, root: &ObjectRef) -> (u32, u32) {
        self.by_window
            .get(&window)
            .and_then(|m| m.get(&(cluster.to_owned(), root.clone())))
            .copied()
            .unwrap_or((0, 0))
    }

    /// Remembers what a segment left.
    pub fn set(&mut self, window: UnixNanos, cluster: &str, root: &ObjectRef, v: (u32, u32)) {
        self.by_window
            .entry(window)
            .or_default()
            .insert((cluster.to_owned(), root.clone()), v);
    }

    /// Forgets windows before `horizon`.
    pub fn prune(&mut self, horizon: UnixNanos) {
        while let Some((&w, _)) = self.by_window.first_key_value() {
            if w >= horizon {
                break;
            }
            self.by_window.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(name: &str) -> ObjectRef {
        ObjectRef {
            resource: "pods".into(),
            namespace: "shop".into(),
            name: name.into(),
            ..ObjectRef::default()
        }
    }

    #[test]
    fn objects_fill_the_main_trace_then_parts_of_their_owner() {
        let root = o("root");
        let mut cut = Cut::new(128, 0, 0);
        assert_eq!(cut.admit_root().slot, 0);
        // Direct children of the root: up to 15/16 of 128 = 120 spans, 16 each.
        let mut slots = Vec::new();
        let mut part = None;
        for _ in 0..20 {
            let a = cut.admit(&root, 0, true, part);
            if a.owner_part.is_some() {
                part = a.owner_part;
            }
            slots.push(a.slot);
        }
        // 1 + 7 × 16 = 113 ≤ 120; the eighth would make 129.
        assert_eq!(slots.iter().filter(|s| **s == 0).count(), 7);
        assert!(cut.main_used <= 128);
        for p in cut.parts.values() {
            assert!(p.used <= 128, "{p:?}");
            assert_eq!(p.owner, root);
        }
        // Parts are chained.
        assert_eq!(cut.parts.get(&1).and_then(|p| p.next), Some(2));
        assert_eq!(cut.parts.get(&2).and_then(|p| p.prev), Some(1));
    }

    #[test]
    fn requests_never_exceed_the_budget() {
        let x = o("x");
        let mut cut = Cut::new(64, 0, 0);
        cut.admit_root();
        let mut reserved = 0;
        let mut own = None;
        let mut per_slot: BTreeMap<u32, u32> = BTreeMap::new();
        *per_slot.entry(0).or_default() += 1;
        for i in 0..200 {
            let r = cut.request(&x, 0, Depth::Root, &mut reserved, own, (i, i + 1));
            if let Some(k) = r.opened {
                own = Some(k);
                *per_slot.entry(k).or_default() += 1; // the stand-in
            }
            *per_slot.entry(r.slot).or_default() += 1;
        }
        assert!(per_slot.values().all(|n| *n <= 64), "{per_slot:?}");
        let total: u32 = per_slot.values().sum();
        assert_eq!(total, 1 + 200 + (per_slot.len() as u32 - 1));
    }
}
