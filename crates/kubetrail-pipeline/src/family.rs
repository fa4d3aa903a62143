//! Which *routing scope* an audit event's object family belongs to, for repartitioning a
//! namespace-keyed queue by family (the Kafka scale-out's second topic).
//!
//! A pipeline must see every event of a family, or it builds a different trace than a replay
//! does. The webhook (`receive`) is stateless and keys events by namespace, which keeps most
//! families together — a Deployment, its ReplicaSets, Pods and the Kubernetes Events about them
//! share a namespace — but not a family whose owner is cluster-scoped (a Node and its mirror
//! Pods, a cluster-scoped custom resource owning ConfigMaps in two namespaces, an operator's
//! composite resource). Whether a namespaced object belongs to such a family is only known
//! after linking, so the [`FamilyRouter`] links as the pipeline does and says where the
//! family's events must go:
//!
//! * [`Scope::Namespace`]`(ns)` — the family's root is a namespaced object of `ns` (its whole
//!   chain was seen in its namespace: a namespaced owner lives in its dependent's namespace);
//! * [`Scope::Cluster`] — the object is cluster-scoped, or its owner chain reaches a
//!   cluster-scoped owner, or an owner whose scope cannot be known here (a custom resource
//!   kind never seen through its own events in the namespace — it may be cluster-scoped).
//!
//! The fact this rests on: an ownership chain can leave a namespace only at a cluster-scoped
//! owner, and every owner above a cluster-scoped object is cluster-scoped too (namespaced
//! objects cannot own cluster-scoped ones). So a router fed one namespace's events (plus
//! those of other namespaces, which do not matter) decides exactly what a router fed the
//! whole stream would, without seeing the cluster-scoped objects' own events; and every
//! family whose root is cluster-scoped lands in the one cluster scope, with the
//! cluster-scoped objects themselves. Owners inferred from names (`infer`) are always in the
//! object's own namespace.
//!
//! The decision is **sticky** in one direction: an object once routed to the cluster scope,
//! and the namespaced owners on its chain, stay there (a bounded LRU, `link.max_objects`), so
//! a family never moves back to its namespace when, say, an owner's own events arrive after
//! its dependents' (a lagging API server). Parent rules naming an owner in another namespace
//! (an annotation) route the object to the namespace of its root.

use std::num::NonZeroUsize;

use lru::LruCache;

use kubetrail_link::{Linker, LinkerConfig};
use kubetrail_model::{AuditEvent, ObjectHead, ObjectRef};

use crate::kube_event::{EventIndex, is_event_request};

/// Where the events of an object family must go so that one pipeline sees all of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The family's root is a namespaced object of this namespace.
    Namespace(String),
    /// The family's root is (or may be) cluster-scoped: one scope for all such families.
    Cluster,
}

/// Built-in namespaced resources (group, resource): an owner of one of these kinds is in its
/// dependent's namespace even when its own events were never seen.
const NAMESPACED_BUILTINS: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("", "endpoints"),
    ("", "persistentvolumeclaims"),
    ("", "replicationcontrollers"),
    ("", "podtemplates"),
    ("", "limitranges"),
    ("", "resourcequotas"),
    ("", "events"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "controllerrevisions"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "ingresses"),
    ("networking.k8s.io", "networkpolicies"),
    ("discovery.k8s.io", "endpointslices"),
    ("coordination.k8s.io", "leases"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("events.k8s.io", "events"),
];

/// The head of the body that *is* the object the request was about (a create, update or
/// status body), not of a Binding, Scale, Eviction or DeleteOptions.
pub(crate) fn object_head(event: &AuditEvent) -> Option<ObjectHead> {
    let sub = event
        .object_ref
        .as_ref()
        .and_then(|r| r.subresource.as_deref());
    event
        .object_body()
        .and_then(|b| ObjectHead::parse(b).ok())
        .filter(|_| matches!(sub, None | Some("status")))
        .filter(|h| {
            !h.kind
                .as_deref()
                .is_some_and(kubetrail_model::kinds::is_not_the_object)
        })
}

/// An object's identity by name (uids differ between incarnations; routing by name is the
/// conservative choice).
fn ident(o: &ObjectRef) -> (String, String, String, String) {
    (
        o.group.clone(),
        o.resource.clone(),
        o.namespace.clone(),
        o.name.clone(),
    )
}

type Ident = (String, String, String, String);

/// Links events as the pipeline does and tells each one's [`Scope`]. One per input partition:
/// it must see the events of its namespaces in their order.
pub struct FamilyRouter {
    linker: Linker,
    kube_events: EventIndex,
    /// Namespaced objects seen through their own events (their scope is certain).
    confirmed: LruCache<Ident, ()>,
    /// Objects routed to the cluster scope (and the namespaced owners on their chains).
    sticky: LruCache<Ident, ()>,
    stats: RouterStats,
}

/// What a [`FamilyRouter`] decided so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Events routed to their namespace.
    pub namespace: u64,
    /// Events routed to the cluster scope.
    pub cluster: u64,
    /// Of those, namespaced objects whose family crosses into the cluster scope.
    pub crossing: u64,
    /// Events routed to another namespace than their own (a parent rule).
    pub moved: u64,
}

impl std::fmt::Debug for FamilyRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FamilyRouter")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl FamilyRouter {
    /// A router linking with `config` (the pipeline's `link:` settings, so that it follows
    /// the same owners).
    pub fn new(config: LinkerConfig) -> Self {
        let cap = NonZeroUsize::new(config.max_objects.max(1)).unwrap_or(NonZeroUsize::MIN);
        FamilyRouter {
            linker: Linker::new(config),
            kube_events: EventIndex::new(50_000),
            confirmed: LruCache::new(cap),
            sticky: LruCache::new(cap),
            stats: RouterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// The scope of `event`'s family; learns from the event first.
    pub fn route(&mut self, event: &AuditEvent) -> Scope {
        let own_ns = event
            .object_ref
            .as_ref()
            .and_then(|r| r.namespace.clone())
            .unwrap_or_default();
        let subject = if is_event_request(event) {
            // A Kubernetes Event belongs where the object it is about belongs.
            self.kube_events.place(event).map(|(mut about, _)| {
                self.linker.observe(&mut about, None);
                about
            })
        } else {
            let head = object_head(event);
            ObjectRef::from_event(event, head.as_ref()).map(|mut o| {
                self.linker
                    .observe_body(&mut o, head.as_ref(), event.object_body());
                if !o.namespace.is_empty() {
                    self.confirmed.put(ident(&o), ());
                }
                o
            })
        };
        let scope = match subject {
            Some(o) => self.classify(&o),
            // A collection, an unplaceable Event, a non-resource request: its namespace.
            None if own_ns.is_empty() || is_namespace_object(event) => Scope::Cluster,
            None => Scope::Namespace(own_ns.clone()),
        };
        match &scope {
            Scope::Cluster => self.stats.cluster += 1,
            Scope::Namespace(ns) => {
                self.stats.namespace += 1;
                if *ns != own_ns && !own_ns.is_empty() {
                    self.stats.moved += 1;
                }
            }
        }
        scope
    }

    fn classify(&mut self, object: &ObjectRef) -> Scope {
        if object.namespace.is_empty() {
            return Scope::Cluster;
        }
        let chain = self.linker.ancestors(object);
        let crossing = self.sticky.get(&ident(object)).is_some()
            || chain.iter().any(|o| {
                o.namespace.is_empty()
                    || self.sticky.get(&ident(o)).is_some()
                    || !(self.confirmed.get(&ident(o)).is_some() || is_namespaced_builtin(o))
            });
        if crossing {
            self.stats.crossing += 1;
            self.sticky.put(ident(object), ());
            for o in chain.iter().filter(|o| !o.namespace.is_empty()) {
                self.sticky.put(ident(o), ());
            }
            return Scope::Cluster;
        }
        let root_ns = chain
            .last()
            .map(|r| r.namespace.clone())
            .unwrap_or_else(|| object.namespace.clone());
        Scope::Namespace(root_ns)
    }
}

fn is_namespace_object(event: &AuditEvent) -> bool {
    event.object_ref.as_ref().is_some_and(|r| {
        r.resource.as_deref() == Some("namespaces")
            && r.api_group.as_deref().unwrap_or("").is_empty()
    })
}

fn is_namespaced_builtin(o: &ObjectRef) -> bool {
    NAMESPACED_BUILTINS
        .iter()
        .any(|(g, r)| *g == o.group && *r == o.resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(json: &str) -> AuditEvent {
        serde_json::from_str(json).unwrap()
    }

    fn create(
        resource: &str,
        group: &str,
        ns: Option<&str>,
        name: &str,
        uid: &str,
        owner: Option<(&str, &str, &str, &str)>,
    ) -> AuditEvent {
        let api = if group.is_empty() {
            "v1".to_owned()
        } else {
            format!("{group}/v1")
        };
        let ns_field = ns
            .map(|n| format!(r#","namespace":"{n}""#))
            .unwrap_or_default();
        let owners = owner
            .map(|(api, kind, name, uid)| {
                format!(r#","ownerReferences":[{{"apiVersion":"{api}","kind":"{kind}","name":"{name}","uid":"{uid}","controller":true}}]"#)
            })
            .unwrap_or_default();
        ev(&format!(
            r#"{{"level":"RequestResponse","auditID":"{uid}-c","stage":"ResponseComplete","requestURI":"/x","verb":"create","user":{{"username":"u"}},"objectRef":{{"resource":"{resource}","apiGroup":"{group}"{ns_field},"name":"{name}","apiVersion":"v1"}},"responseObject":{{"kind":"K","apiVersion":"{api}","metadata":{{"name":"{name}","uid":"{uid}"{ns_field}{owners}}}}},"stageTimestamp":"2024-05-01T10:00:00Z"}}"#
        ))
    }

    #[test]
    fn namespace_families_stay_and_cluster_owned_ones_move() {
        let mut r = FamilyRouter::new(LinkerConfig::default());
        // A plain Deployment → ReplicaSet → Pod family stays in its namespace.
        let d = create("deployments", "apps", Some("shop"), "web", "d1", None);
        assert_eq!(r.route(&d), Scope::Namespace("shop".into()));
        let rs = create(
            "replicasets",
            "apps",
            Some("shop"),
            "web-1",
            "r1",
            Some(("apps/v1", "Deployment", "web", "d1")),
        );
        assert_eq!(r.route(&rs), Scope::Namespace("shop".into()));
        // An owner of a built-in namespaced kind never seen: still the namespace.
        let p = create(
            "pods",
            "",
            Some("shop"),
            "db-0",
            "p0",
            Some(("apps/v1", "StatefulSet", "db", "s1")),
        );
        assert_eq!(r.route(&p), Scope::Namespace("shop".into()));
        // A ConfigMap owned by a custom resource never seen in its namespace: may be
        // cluster-scoped, so the cluster scope; so are its dependents, and the owner itself
        // when its own events show up later (sticky).
        let cm = create(
            "configmaps",
            "",
            Some("team-a"),
            "cfg",
            "c1",
            Some(("example.com/v1", "Tenant", "acme", "t1")),
        );
        assert_eq!(r.route(&cm), Scope::Cluster);
        let pod = create(
            "pods",
            "",
            Some("team-a"),
            "user",
            "p1",
            Some(("v1", "ConfigMap", "cfg", "c1")),
        );
        assert_eq!(r.route(&pod), Scope::Cluster);
        // A mirror Pod (owned by its Node) and the Node's own events.
        let mirror = create(
            "pods",
            "",
            Some("kube-system"),
            "etcd-n1",
            "m1",
            Some(("v1", "Node", "n1", "n1")),
        );
        assert_eq!(r.route(&mirror), Scope::Cluster);
        let node = create("nodes", "", None, "n1", "n1", None);
        assert_eq!(r.route(&node), Scope::Cluster);
        // A namespaced custom resource seen first stays a namespace family.
        let own = create("widgets", "example.com", Some("shop"), "w", "w1", None);
        assert_eq!(r.route(&own), Scope::Namespace("shop".into()));
        let child = create(
            "configmaps",
            "",
            Some("shop"),
            "w-cfg",
            "c2",
            Some(("example.com/v1", "Widget", "w", "w1")),
        );
        assert_eq!(r.route(&child), Scope::Namespace("shop".into()));
        let s = r.stats().clone();
        assert_eq!((s.namespace, s.cluster, s.crossing), (5, 4, 3));
    }

    #[test]
    fn an_owner_routed_to_the_cluster_scope_stays_there() {
        let mut r = FamilyRouter::new(LinkerConfig::default());
        // The dependent arrives first (its server is ahead), naming an unseen custom resource.
        let cm = create(
            "configmaps",
            "",
            Some("shop"),
            "cfg",
            "c1",
            Some(("example.com/v1", "Widget", "w", "w1")),
        );
        assert_eq!(r.route(&cm), Scope::Cluster);
        // The owner turns out namespaced: its family stays where its dependent went.
        let own = create("widgets", "example.com", Some("shop"), "w", "w1", None);
        assert_eq!(r.route(&own), Scope::Cluster);
        let other = create(
            "configmaps",
            "",
            Some("shop"),
            "cfg2",
            "c2",
            Some(("example.com/v1", "Widget", "w", "w1")),
        );
        assert_eq!(r.route(&other), Scope::Cluster);
    }

    #[test]
    fn kubernetes_events_follow_the_object_they_are_about() {
        let mut r = FamilyRouter::new(LinkerConfig::default());
        let mirror = create(
            "pods",
            "",
            Some("kube-system"),
            "etcd-n1",
            "m1",
            Some(("v1", "Node", "n1", "n1")),
        );
        assert_eq!(r.route(&mirror), Scope::Cluster);
        let about_pod = ev(
            r#"{"level":"Request","auditID":"e1","stage":"ResponseComplete","requestURI":"/x","verb":"create","user":{"username":"kubelet"},"objectRef":{"resource":"events","namespace":"kube-system","name":"etcd-n1.1","apiVersion":"v1"},"requestObject":{"kind":"Event","involvedObject":{"kind":"Pod","namespace":"kube-system","name":"etcd-n1","uid":"m1"},"reason":"Pulled"},"stageTimestamp":"2024-05-01T10:00:01Z"}"#,
        );
        assert_eq!(r.route(&about_pod), Scope::Cluster);
        let about_node = ev(
            r#"{"level":"Request","auditID":"e2","stage":"ResponseComplete","requestURI":"/x","verb":"create","user":{"username":"kubelet"},"objectRef":{"resource":"events","namespace":"default","name":"n1.1","apiVersion":"v1"},"requestObject":{"kind":"Event","involvedObject":{"kind":"Node","name":"n1","uid":"n1"},"reason":"NodeReady"},"stageTimestamp":"2024-05-01T10:00:02Z"}"#,
        );
        assert_eq!(r.route(&about_node), Scope::Cluster);
        // Its later count patch names no object: remembered by the Event's name.
        let patch = ev(
            r#"{"level":"Metadata","auditID":"e3","stage":"ResponseComplete","requestURI":"/x","verb":"patch","user":{"username":"kubelet"},"objectRef":{"resource":"events","namespace":"default","name":"n1.1","apiVersion":"v1"},"stageTimestamp":"2024-05-01T10:00:03Z"}"#,
        );
        assert_eq!(r.route(&patch), Scope::Cluster);
        let unplaced = ev(
            r#"{"level":"Metadata","auditID":"e4","stage":"ResponseComplete","requestURI":"/x","verb":"patch","user":{"username":"kubelet"},"objectRef":{"resource":"events","namespace":"shop","name":"x.1","apiVersion":"v1"},"stageTimestamp":"2024-05-01T10:00:03Z"}"#,
        );
        assert_eq!(r.route(&unplaced), Scope::Namespace("shop".into()));
    }

    #[test]
    fn namespaces_and_collections() {
        let mut r = FamilyRouter::new(LinkerConfig::default());
        let ns = ev(
            r#"{"level":"Metadata","auditID":"n1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/team-a","verb":"delete","user":{"username":"u"},"objectRef":{"resource":"namespaces","namespace":"team-a","name":"team-a","apiVersion":"v1"},"stageTimestamp":"2024-05-01T10:00:00Z"}"#,
        );
        assert_eq!(r.route(&ns), Scope::Cluster);
        let list = ev(
            r#"{"level":"Metadata","auditID":"l1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/pods","verb":"deletecollection","user":{"username":"u"},"objectRef":{"resource":"pods","namespace":"shop","apiVersion":"v1"},"stageTimestamp":"2024-05-01T10:00:00Z"}"#,
        );
        assert_eq!(r.route(&list), Scope::Namespace("shop".into()));
        let healthz = ev(
            r#"{"level":"Metadata","auditID":"h1","stage":"ResponseComplete","requestURI":"/healthz","verb":"get","user":{"username":"u"},"stageTimestamp":"2024-05-01T10:00:00Z"}"#,
        );
        assert_eq!(r.route(&healthz), Scope::Cluster);
    }
}
