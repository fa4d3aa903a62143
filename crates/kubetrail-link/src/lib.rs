//! Who owns an object.
//!
//! The trace of a Deployment must hold its ReplicaSets and their Pods, but a Pod's body only
//! names its direct owner (a ReplicaSet, by kind, name and uid). The [`Linker`] learns, from
//! every event it sees, which uid is which object and who owns it, in a bounded graph, and
//! walks it to find an object's chain of owners up to the family's root.
//!
//! The graph is an LRU of fixed capacity: memory is bounded by configuration, never by the
//! input, and eviction is deterministic, so replaying the same input twice links it the same
//! way. An owner that was evicted or never seen is still placed from the owner reference
//! itself ([`ObjectRef::from_owner_ref`]), only without its own owners.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod infer;
mod rules;

use std::num::NonZeroUsize;

use lru::LruCache;
use serde::Deserialize;

use kubetrail_model::ids::{SpanId, TraceId, parse_traceparent};
use kubetrail_model::{ObjectHead, ObjectRef};
use serde_json::value::RawValue;

pub use rules::{LinkRule, Relation, RuleError, default_rules};

/// Linker settings (`link:` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkerConfig {
    /// Objects remembered in the learned graph (uid → identity and owner).
    pub max_objects: usize,
    /// Longest owner chain followed (CronJob → Job → Pod is 2).
    pub max_depth: usize,
    /// Annotations holding a W3C traceparent of the controller's own trace: each becomes a
    /// span link (Kubernetes log-tracking KEP, OpenKruiseGame).
    pub traceparent_annotations: Vec<String>,
    /// Annotation holding the KEP's object-set id, kept as the attribute
    /// `kubetrail.object.objsetid`.
    pub objsetid_annotation: String,
    /// Parent and secondary-link rules beyond ownerReferences (see [`LinkRule`]); parent rules
    /// take precedence over ownerReferences, in order. Default: [`default_rules`].
    pub rules: Vec<LinkRule>,
}

impl Default for LinkerConfig {
    fn default() -> Self {
        LinkerConfig {
            max_objects: 200_000,
            max_depth: 8,
            traceparent_annotations: vec![
                "trace.kubernetes.io/span".into(),
                "game.kruise.io/traceparent".into(),
            ],
            objsetid_annotation: "trace.kubernetes.io/objsetid".into(),
            rules: default_rules(),
        }
    }
}

/// Links to other traces found in an object's annotations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnnotationLinks {
    /// Span links: (annotation key, trace id, span id).
    pub links: Vec<(String, TraceId, SpanId)>,
    /// The object-set id, when annotated.
    pub objsetid: Option<String>,
    /// Annotations that were present but did not hold a valid traceparent.
    pub malformed: Vec<String>,
}

#[derive(Debug, Clone)]
struct Node {
    object: ObjectRef,
    /// The owner: from a parent rule, else the controlling owner reference.
    owner: Option<ObjectRef>,
    /// Secondary links: (rule name, other object).
    secondary: Vec<(String, ObjectRef)>,
}

/// The learned object graph and owner resolution.
pub struct Linker {
    config: LinkerConfig,
    by_uid: LruCache<String, Node>,
    /// The uid currently known for a name (the latest incarnation).
    by_ref: LruCache<ObjectRef, String>,
    /// Every object known by name, with or without a uid (seen in the stream, or named by an
    /// owner reference): the owners naming conventions may point at.
    known: LruCache<ObjectRef, ()>,
}

/// An object's chain of owners, and whether any link of it was inferred from names.
///
/// # One trace per object
///
/// Every object must be in exactly one trace per window, so the chain is chosen such that an
/// object's owners resolve to the same root as the object itself:
///
/// * A chain that reaches an object with no owner ends there: that is the family's root, and
///   every owner on the way has the same chain's rest, so the same root.
/// * A chain longer than `link.max_depth` is not followed at all: the object roots a trace
///   of its own, and [`Ancestry::cut_owner`] names its direct owner (the pipeline links the
///   two spans). Following it partly would root it at an owner whose own root is elsewhere,
///   putting that owner in two traces.
/// * Owners that form a cycle (A owned by B owned by A, as a buggy controller can write)
///   have no root: the cycle's least member, by cluster, group, resource, namespace and name,
///   is taken as the root by every member and every object owned through the cycle, and
///   [`Ancestry::cycle`] says so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ancestry {
    /// Owners, nearest first, ending at the family's root.
    pub chain: Vec<ObjectRef>,
    /// Some link was inferred from the controllers' naming conventions, not read from a body
    /// (`kubetrail.link.inferred`).
    pub inferred: bool,
    /// The chain was longer than `link.max_depth`: it is empty, the object roots its own
    /// trace, and this is its direct owner.
    pub cut_owner: Option<ObjectRef>,
    /// The owners form a cycle, broken at its least member (the chain's last element, or the
    /// object itself when the chain is empty).
    pub cycle: bool,
}

/// The order a cycle is broken in: the least member by this key becomes the root.
fn cycle_key(o: &ObjectRef) -> (Option<&str>, &str, &str, &str, &str) {
    (
        o.cluster.as_deref(),
        &o.group,
        &o.resource,
        &o.namespace,
        &o.name,
    )
}

impl Linker {
    /// An empty graph.
    pub fn new(config: LinkerConfig) -> Self {
        let cap = NonZeroUsize::new(config.max_objects.max(1)).unwrap_or(NonZeroUsize::MIN);
        Linker {
            by_uid: LruCache::new(cap),
            by_ref: LruCache::new(cap),
            known: LruCache::new(cap),
            config,
        }
    }

    /// Objects held in the graph.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// Learns from one event about `object`. `head` is the head of a body that *is* the object
    /// (a create or update request or response), not of a Binding or DeleteOptions.
    ///
    /// Fills in `object.uid` from the graph when the event did not carry it.
    pub fn observe(&mut self, object: &mut ObjectRef, head: Option<&ObjectHead>) {
        self.observe_body(object, head, None);
    }

    /// Like [`Linker::observe`], with the raw body for field rules (`spec.nodeName`).
    pub fn observe_body(
        &mut self,
        object: &mut ObjectRef,
        head: Option<&ObjectHead>,
        body: Option<&RawValue>,
    ) {
        if object.uid.is_none() {
            object.uid = self.by_ref.get(object).cloned();
        }
        if !object.name.is_empty() {
            self.known.put(object.clone(), ());
        }
        let Some(uid) = object.uid.clone() else {
            return;
        };
        self.by_ref.put(object.clone(), uid.clone());
        let mut rule_owner = None;
        let mut secondary = Vec::new();
        if let Some(h) = head {
            let value = rules::body_value(&self.config.rules, object, body);
            for rule in self.config.rules.iter().filter(|r| r.applies_to(object)) {
                let Some(found) = rule.find(object, h, value.as_ref()) else {
                    continue;
                };
                if found == *object {
                    continue;
                }
                match rule.relation {
                    Relation::Parent if rule_owner.is_none() => rule_owner = Some(found),
                    Relation::Parent => {}
                    Relation::Secondary => secondary.push((rule.name.clone(), found)),
                }
            }
        }
        let owner = rule_owner.or_else(|| {
            head.and_then(ObjectHead::controller)
                .map(|o| ObjectRef::from_owner_ref(o, &object.namespace))
                .filter(|o| o.uid.as_deref() != Some(uid.as_str()))
        });
        if let Some(o) = &owner {
            self.known.put(o.clone(), ());
        }
        match self.by_uid.get_mut(&uid) {
            Some(node) => {
                node.object = object.clone();
                // A partial body (a patch) that names no owner does not orphan the object.
                if owner.is_some() {
                    node.owner = owner;
                }
                if !secondary.is_empty() {
                    node.secondary = secondary;
                }
            }
            None => {
                self.by_uid.put(
                    uid,
                    Node {
                        object: object.clone(),
                        owner,
                        secondary,
                    },
                );
            }
        }
    }

    /// The direct owner of an object, with its identity corrected from the owner's own
    /// events when they were seen; the flag says it was inferred from names.
    fn owner_of(&mut self, object: &ObjectRef) -> Option<(ObjectRef, bool)> {
        match self.recorded_owner(object) {
            Some(o) => Some((o, false)),
            None => self.inferred_owner(object).map(|o| (o, true)),
        }
    }

    /// The owner by naming convention, when an object of that name and kind is known.
    fn inferred_owner(&mut self, object: &ObjectRef) -> Option<ObjectRef> {
        for c in infer::candidates(object) {
            if self.known.contains(&c) {
                let uid = self.by_ref.peek(&c).cloned();
                let known = uid.as_ref().and_then(|u| self.by_uid.peek(u));
                return Some(
                    known
                        .map(|n| n.object.clone())
                        .unwrap_or(ObjectRef { uid, ..c }),
                );
            }
        }
        None
    }

    /// The owner the graph learned from a body (or a parent rule).
    fn recorded_owner(&mut self, object: &ObjectRef) -> Option<ObjectRef> {
        let uid = match &object.uid {
            Some(u) => u.clone(),
            None => self.by_ref.get(object)?.clone(),
        };
        let owner = self.by_uid.get(&uid)?.owner.clone()?;
        let known = owner
            .uid
            .as_ref()
            .and_then(|u| self.by_uid.get(u))
            .map(|n| n.object.clone());
        Some(known.unwrap_or(owner))
    }

    /// The secondary links known for an object: (rule name, other object).
    pub fn secondary(&mut self, object: &ObjectRef) -> Vec<(String, ObjectRef)> {
        let uid = match &object.uid {
            Some(u) => u.clone(),
            None => match self.by_ref.get(object) {
                Some(u) => u.clone(),
                None => return Vec::new(),
            },
        };
        self.by_uid
            .get(&uid)
            .map(|n| n.secondary.clone())
            .unwrap_or_default()
    }

    /// The span links and object-set id an object body's annotations carry.
    pub fn annotation_links(&self, head: &ObjectHead) -> AnnotationLinks {
        let mut out = AnnotationLinks::default();
        let annotations = &head.metadata.annotations;
        for key in &self.config.traceparent_annotations {
            let Some(value) = annotations.get(key) else {
                continue;
            };
            match parse_traceparent(value) {
                Some((t, s)) => out.links.push((key.clone(), t, s)),
                None => out.malformed.push(key.clone()),
            }
        }
        out.objsetid = annotations
            .get(&self.config.objsetid_annotation)
            .filter(|v| !v.is_empty())
            .cloned();
        out
    }

    /// The chain of owners of `object`, nearest first, ending at the family's root, chosen
    /// so that every object is in one trace (see [`Ancestry`]: an over-long chain is empty,
    /// a cycle is broken at its least member). Always terminates.
    pub fn ancestors(&mut self, object: &ObjectRef) -> Vec<ObjectRef> {
        self.ancestry(object).chain
    }

    /// Like [`Linker::ancestors`], saying whether a link was inferred from the controllers'
    /// naming conventions (only where no body or rule named an owner; see `infer`), whether
    /// the chain was cut at `max_depth`, and whether it ran into a cycle.
    pub fn ancestry(&mut self, object: &ObjectRef) -> Ancestry {
        let mut out = Ancestry::default();
        // How each link of the chain was found (inferred or not).
        let mut inferred = Vec::new();
        let mut current = object.clone();
        while let Some((owner, by_name)) = self.owner_of(&current) {
            // Back at an object already on the path ([object] + chain): a cycle.
            let back = if owner == *object {
                Some(0)
            } else {
                out.chain.iter().position(|o| *o == owner).map(|i| i + 1)
            };
            if let Some(start) = back {
                let path: Vec<&ObjectRef> =
                    std::iter::once(object).chain(out.chain.iter()).collect();
                let root = (start..path.len())
                    .min_by_key(|&i| cycle_key(path[i]))
                    .unwrap_or(start);
                // path[root] is chain[root - 1]; the object itself when root is 0.
                out.chain.truncate(root);
                inferred.truncate(root);
                out.cycle = true;
                break;
            }
            if out.chain.len() == self.config.max_depth {
                out.cut_owner = Some(out.chain.first().cloned().unwrap_or(owner));
                out.chain.clear();
                inferred.truncate(1);
                if inferred.is_empty() {
                    inferred.push(by_name);
                }
                break;
            }
            out.chain.push(owner.clone());
            inferred.push(by_name);
            current = owner;
        }
        out.inferred = inferred.iter().any(|&i| i);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(group: &str, resource: &str, ns: &str, name: &str, uid: Option<&str>) -> ObjectRef {
        ObjectRef {
            group: group.into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            uid: uid.map(Into::into),
            cluster: None,
        }
    }

    fn head(owner: Option<(&str, &str, &str, &str)>) -> ObjectHead {
        let owners = owner
            .map(|(api, kind, name, uid)| {
                format!(r#"[{{"apiVersion":"{api}","kind":"{kind}","name":"{name}","uid":"{uid}","controller":true}}]"#)
            })
            .unwrap_or_else(|| "[]".into());
        serde_json::from_str(&format!(r#"{{"metadata":{{"ownerReferences":{owners}}}}}"#)).unwrap()
    }

    #[test]
    fn pod_is_placed_under_the_deployment_learned_from_the_replicaset() {
        let mut l = Linker::new(LinkerConfig::default());
        let mut dep = obj("apps", "deployments", "shop", "web", Some("d1"));
        l.observe(&mut dep, Some(&head(None)));
        let mut rs = obj("apps", "replicasets", "shop", "web-1", Some("r1"));
        l.observe(
            &mut rs,
            Some(&head(Some(("apps/v1", "Deployment", "web", "d1")))),
        );
        let mut pod = obj("", "pods", "shop", "web-1-x", Some("p1"));
        l.observe(
            &mut pod,
            Some(&head(Some(("apps/v1", "ReplicaSet", "web-1", "r1")))),
        );
        assert_eq!(l.ancestors(&pod), vec![rs.clone(), dep.clone()]);
        // A later Metadata-level event knows only the name: the uid is recalled.
        let mut bare = obj("", "pods", "shop", "web-1-x", None);
        l.observe(&mut bare, None);
        assert_eq!(bare.uid.as_deref(), Some("p1"));
        assert_eq!(l.ancestors(&bare), vec![rs, dep]);
    }

    #[test]
    fn unseen_owner_is_placed_from_the_reference() {
        let mut l = Linker::new(LinkerConfig::default());
        let mut cr = obj(
            "apps",
            "controllerrevisions",
            "kube-system",
            "kube-proxy-1",
            Some("c1"),
        );
        l.observe(
            &mut cr,
            Some(&head(Some(("apps/v1", "DaemonSet", "kube-proxy", "ds1")))),
        );
        let chain = l.ancestors(&cr);
        assert_eq!(
            chain,
            vec![obj(
                "apps",
                "daemonsets",
                "kube-system",
                "kube-proxy",
                Some("ds1")
            )]
        );
    }

    #[test]
    fn cluster_scoped_owner_has_no_namespace() {
        let mut l = Linker::new(LinkerConfig::default());
        let mut pod = obj("", "pods", "openshift-etcd", "etcd-node1", Some("p"));
        l.observe(&mut pod, Some(&head(Some(("v1", "Node", "node1", "n1")))));
        assert_eq!(
            l.ancestors(&pod),
            vec![obj("", "nodes", "", "node1", Some("n1"))]
        );
    }

    #[test]
    fn learned_identity_overrides_the_guess() {
        // An owner of a kind we cannot know is cluster-scoped, seen through its own events.
        let mut l = Linker::new(LinkerConfig::default());
        let mut owner = obj("example.com", "widgets", "", "w", Some("w1"));
        l.observe(&mut owner, None);
        let mut child = obj("", "configmaps", "team", "c", Some("c1"));
        l.observe(
            &mut child,
            Some(&head(Some(("example.com/v1", "Widget", "w", "w1")))),
        );
        assert_eq!(l.ancestors(&child), vec![owner]);
    }

    #[test]
    fn cycles_and_self_references_terminate() {
        let mut l = Linker::new(LinkerConfig::default());
        let mut a = obj("x", "as", "n", "a", Some("a"));
        let mut b = obj("x", "bs", "n", "b", Some("b"));
        l.observe(&mut a, Some(&head(Some(("x/v1", "B", "b", "b")))));
        l.observe(&mut b, Some(&head(Some(("x/v1", "A", "a", "a")))));
        // Broken at the least member (`as/a`): both in a's trace.
        let of_a = l.ancestry(&a);
        assert!(of_a.chain.is_empty() && of_a.cycle);
        let of_b = l.ancestry(&b);
        assert_eq!(of_b.chain, vec![a.clone()]);
        assert!(of_b.cycle);
        // An object owned through the cycle has the cycle's root too.
        let mut c = obj("x", "cs", "n", "c", Some("c"));
        l.observe(&mut c, Some(&head(Some(("x/v1", "B", "b", "b")))));
        assert_eq!(l.ancestors(&c), vec![b.clone(), a.clone()]);
        let mut s = obj("x", "ss", "n", "s", Some("s"));
        l.observe(&mut s, Some(&head(Some(("x/v1", "S", "s", "s")))));
        assert!(l.ancestors(&s).is_empty());
    }

    #[test]
    fn depth_limit_and_capacity_hold() {
        let mut l = Linker::new(LinkerConfig {
            max_objects: 50,
            max_depth: 3,
            ..Default::default()
        });
        for i in 0..100 {
            let mut o = obj("x", "things", "n", &format!("t{i}"), Some(&format!("u{i}")));
            let parent = format!("t{}", i + 1);
            let puid = format!("u{}", i + 1);
            l.observe(&mut o, Some(&head(Some(("x/v1", "Thing", &parent, &puid)))));
        }
        assert_eq!(l.len(), 50);
        let last = obj("x", "things", "n", "t99", Some("u99"));
        assert_eq!(l.ancestors(&last).len(), 1); // t100 never seen: placed from the reference
        let near_top = obj("x", "things", "n", "t97", Some("u97"));
        assert_eq!(l.ancestors(&near_top).len(), 3); // t98, t99, t100: complete
        // t60's chain is longer than 3: t60 roots its own trace, linked to t61.
        let mid = obj("x", "things", "n", "t60", Some("u60"));
        let a = l.ancestry(&mid);
        assert!(a.chain.is_empty() && !a.cycle);
        assert_eq!(a.cut_owner, Some(obj("x", "things", "n", "t61", None)));
    }

    #[test]
    fn traceparent_annotations_become_links() {
        let l = Linker::new(LinkerConfig::default());
        let h: ObjectHead = serde_json::from_str(
            r#"{"metadata":{"annotations":{
            "trace.kubernetes.io/span":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "game.kruise.io/traceparent":"not-a-traceparent",
            "trace.kubernetes.io/objsetid":"set-42"}}}"#,
        )
        .unwrap();
        let a = l.annotation_links(&h);
        assert_eq!(a.links.len(), 1);
        assert_eq!(a.links[0].0, "trace.kubernetes.io/span");
        assert_eq!(a.links[0].1.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(a.malformed, ["game.kruise.io/traceparent"]);
        assert_eq!(a.objsetid.as_deref(), Some("set-42"));
    }

    proptest! {
        /// Whatever owner graph the input describes, resolution terminates within the depth
        /// limit, never lists the object itself or an owner twice, and puts every owner on
        /// a chain in the same family as the object (one trace per object).
        #[test]
        fn resolution_is_bounded(edges in proptest::collection::vec((0u8..12, 0u8..12), 0..40)) {
            let mut l = Linker::new(LinkerConfig { max_objects: 8, max_depth: 5, ..Default::default() });
            for (a, b) in &edges {
                let mut o = obj("x", "things", "n", &format!("t{a}"), Some(&format!("u{a}")));
                l.observe(&mut o, Some(&head(Some(("x/v1", "Thing", &format!("t{b}"), &format!("u{b}"))))));
            }
            for i in 0..12u8 {
                let o = obj("x", "things", "n", &format!("t{i}"), Some(&format!("u{i}")));
                let chain = l.ancestors(&o);
                prop_assert!(chain.len() <= 5);
                prop_assert!(!chain.contains(&o));
                for (j, c) in chain.iter().enumerate() {
                    prop_assert!(!chain[j + 1..].contains(c));
                    // One trace per object: each owner on the chain resolves to the rest of
                    // it, so to the same root.
                    prop_assert_eq!(&l.ancestors(c), &chain[j + 1..].to_vec());
                }
                let a = l.ancestry(&o);
                prop_assert!(a.cut_owner.is_none() || a.chain.is_empty());
            }
        }
    }
}
