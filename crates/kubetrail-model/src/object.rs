//! Object identities and the metadata of object bodies.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::audit::AuditEvent;
use crate::time::{UnixNanos, de_opt_time};

/// An owner reference from an object's `metadata.ownerReferences` (k8s-openapi's type).
pub type OwnerRef = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The identity of a Kubernetes object: what its span is about.
///
/// Two refs name the same object when group, resource, namespace and name agree; `uid`
/// tells incarnations apart (an object deleted and recreated under the same name) and is
/// carried when known, but is not part of equality or hashing, because many audit events
/// (a create at `Metadata` level, for one) do not know it.
#[derive(Debug, Clone, Default, Eq)]
pub struct ObjectRef {
    /// API group; empty for the core group.
    pub group: String,
    /// Plural resource name (`deployments`), never a subresource.
    pub resource: String,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// The uid, when known.
    pub uid: Option<String>,
    /// The cluster, when it is not the one the mentioning event came from (a parent in another
    /// cluster, named by a linker rule). `None` means "the event's own cluster".
    pub cluster: Option<String>,
}

impl PartialEq for ObjectRef {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.resource == o.resource
            && self.namespace == o.namespace
            && self.group == o.group
            && self.cluster == o.cluster
    }
}

impl std::hash::Hash for ObjectRef {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.group.hash(h);
        self.resource.hash(h);
        self.namespace.hash(h);
        self.name.hash(h);
        self.cluster.hash(h);
    }
}

impl PartialOrd for ObjectRef {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for ObjectRef {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (
            &self.cluster,
            &self.namespace,
            &self.group,
            &self.resource,
            &self.name,
        )
            .cmp(&(&o.cluster, &o.namespace, &o.group, &o.resource, &o.name))
    }
}

impl fmt::Display for ObjectRef {
    /// `resource[.group]/[namespace/]name`, as `kubectl` would accept it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        f.write_str("/")?;
        if !self.namespace.is_empty() {
            write!(f, "{}/", self.namespace)?;
        }
        // A request about a whole collection (deletecollection, an unnamed create).
        f.write_str(if self.name.is_empty() {
            "*"
        } else {
            &self.name
        })
    }
}

impl ObjectRef {
    /// The object an audit event is about, with the name a create chose resolved from the
    /// response body (`generateName`). `None` for non-resource requests and collections.
    pub fn from_event(event: &AuditEvent, head: Option<&ObjectHead>) -> Option<ObjectRef> {
        let r = event.object_ref.as_ref()?;
        let resource = r.resource.as_deref().filter(|s| !s.is_empty())?;
        let meta = head.map(|h| &h.metadata);
        let name = r.name.as_deref().filter(|s| !s.is_empty()).or_else(|| {
            meta.and_then(|m| m.name.as_deref())
                .filter(|s| !s.is_empty())
        })?;
        let uid = r.uid.clone().filter(|s| !s.is_empty()).or_else(|| {
            // The body's uid is only this object's uid when the body is the object itself
            // (not a Binding, Eviction, DeleteOptions or Scale).
            let h = head?;
            let same =
                r.subresource.is_none() || matches!(r.subresource.as_deref(), Some("status"));
            (same && h.metadata.name.as_deref() == Some(name)).then(|| h.metadata.uid.clone())?
        });
        let group = r.api_group.clone().unwrap_or_default();
        // The API server puts a Namespace's own name in objectRef.namespace; it is cluster-scoped.
        let namespace = if group.is_empty() && resource == "namespaces" {
            String::new()
        } else {
            r.namespace.clone().unwrap_or_default()
        };
        Some(ObjectRef {
            group,
            resource: resource.to_owned(),
            namespace,
            name: name.to_owned(),
            uid,
            cluster: None,
        })
    }

    /// The owner an owner reference names, as seen from a dependent in `namespace`.
    ///
    /// Owner references carry a kind, not a resource, and no namespace: the resource comes
    /// from [`resource_for_kind`]; the owner is taken to be in the dependent's namespace
    /// unless its kind is a known cluster-scoped one (a namespaced object may be owned by a
    /// cluster-scoped one, never by one in another namespace). The linker corrects both from
    /// the owner's own events when it has seen them (by uid).
    pub fn from_owner_ref(owner: &OwnerRef, dependent_namespace: &str) -> ObjectRef {
        let group = owner
            .api_version
            .rsplit_once('/')
            .map(|(g, _)| g.to_owned())
            .unwrap_or_default();
        let namespace = if is_cluster_scoped_kind(&group, &owner.kind) {
            String::new()
        } else {
            dependent_namespace.to_owned()
        };
        ObjectRef {
            resource: resource_for_kind(&owner.kind),
            group,
            namespace,
            name: owner.name.clone(),
            uid: Some(owner.uid.clone()).filter(|u| !u.is_empty()),
            cluster: None,
        }
    }

    /// Whether the object is cluster-scoped (has no namespace).
    pub fn is_cluster_scoped(&self) -> bool {
        self.namespace.is_empty()
    }

    /// `resource[.group]`, the resource as `kubectl` names it.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// The API group of well-known resources, for people who write `deployments/shop/web`
/// rather than `deployments.apps/shop/web`. `None` when the resource is not a known one (or is
/// in the core group and unambiguous: then `Some("")`).
pub fn known_group(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "pods"
        | "services"
        | "configmaps"
        | "secrets"
        | "nodes"
        | "namespaces"
        | "serviceaccounts"
        | "endpoints"
        | "persistentvolumeclaims"
        | "persistentvolumes"
        | "replicationcontrollers"
        | "events" => "",
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" | "controllerrevisions" => {
            "apps"
        }
        "jobs" | "cronjobs" => "batch",
        "ingresses" | "networkpolicies" | "ingressclasses" => "networking.k8s.io",
        "horizontalpodautoscalers" => "autoscaling",
        "poddisruptionbudgets" => "policy",
        "leases" => "coordination.k8s.io",
        _ => return None,
    })
}

/// Why a text is not an object reference ([`ObjectRef`]'s `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseObjectRefError {
    /// Not two or three `/`-separated parts.
    #[error("{input:?}: expected RESOURCE/NAMESPACE/NAME or RESOURCE/NAME (cluster-scoped)")]
    Shape {
        /// The text given.
        input: String,
    },
    /// The resource or the name is empty.
    #[error("{input:?}: resource and name must not be empty")]
    Empty {
        /// The text given.
        input: String,
    },
}

impl std::str::FromStr for ObjectRef {
    type Err = ParseObjectRefError;

    /// Parses `resource[.group]/namespace/name` (namespaced) or `resource[.group]/name`
    /// (cluster-scoped), the form kubetrail prints. A well-known resource without a group gets
    /// its group (`deployments` → `deployments.apps`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (gr, namespace, name) = match parts[..] {
            [gr, ns, name] => (gr, ns, name),
            [gr, name] => (gr, "", name),
            _ => {
                return Err(ParseObjectRefError::Shape {
                    input: s.to_owned(),
                });
            }
        };
        if gr.is_empty() || name.is_empty() {
            return Err(ParseObjectRefError::Empty {
                input: s.to_owned(),
            });
        }
        let (resource, group) = match gr.split_once('.') {
            Some((r, g)) => (r, g.to_owned()),
            None => (gr, known_group(gr).unwrap_or("").to_owned()),
        };
        let namespace = if group.is_empty() && resource == "namespaces" {
            ""
        } else {
            namespace
        };
        Ok(ObjectRef {
            group,
            resource: resource.to_ascii_lowercase(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: None,
            cluster: None,
        })
    }
}

/// The plural resource name of a kind: a table of the built-in kinds whose plural is not
/// the regular English one, else a lower-cased regular plural (`Deployment` → `deployments`,
/// `NetworkPolicy` → `networkpolicies`, `Ingress` → `ingresses`).
pub fn resource_for_kind(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.as_str() {
        "endpoints" => return lower,
        "podsecuritypolicy" => return "podsecuritypolicies".into(),
        _ => {}
    }
    if lower.ends_with('s')
        || lower.ends_with('x')
        || lower.ends_with("ch")
        || lower.ends_with("sh")
    {
        format!("{lower}es")
    } else if let Some(stem) = lower
        .strip_suffix('y')
        .filter(|s| !s.ends_with(['a', 'e', 'i', 'o', 'u']))
    {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

/// Cluster-scoped kinds that appear as owners in practice. Objects of other kinds are taken
/// to be namespaced until the linker learns otherwise from their own events.
fn is_cluster_scoped_kind(group: &str, kind: &str) -> bool {
    match group {
        "" => matches!(kind, "Node" | "Namespace" | "PersistentVolume"),
        "rbac.authorization.k8s.io" => matches!(kind, "ClusterRole" | "ClusterRoleBinding"),
        "apiextensions.k8s.io" => kind == "CustomResourceDefinition",
        "storage.k8s.io" => matches!(
            kind,
            "StorageClass" | "CSIDriver" | "CSINode" | "VolumeAttachment"
        ),
        "admissionregistration.k8s.io" => kind.ends_with("WebhookConfiguration"),
        "apiregistration.k8s.io" => kind == "APIService",
        // OpenShift's cluster configuration and operator objects are cluster-scoped.
        "config.openshift.io" | "operator.openshift.io" => true,
        _ => false,
    }
}

/// The few fields of an object body the pipeline reads. Everything else in the body is
/// skipped while parsing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectHead {
    /// `apiVersion` of the body.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `kind` of the body (`Pod`, `Status`, `DeleteOptions`, `Binding`, …).
    #[serde(default)]
    pub kind: Option<String>,
    /// The body's metadata.
    #[serde(default)]
    pub metadata: ObjectMetaHead,
}

/// The parts of `ObjectMeta` the pipeline reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMetaHead {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Name prefix a create asked the server to complete.
    #[serde(default)]
    pub generate_name: Option<String>,
    /// Namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Uid.
    #[serde(default)]
    pub uid: Option<String>,
    /// Resource version.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// Generation.
    #[serde(default)]
    pub generation: Option<i64>,
    /// Owner references.
    #[serde(default)]
    pub owner_references: Vec<OwnerRef>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Set once deletion has been requested.
    #[serde(default, deserialize_with = "de_opt_time")]
    pub deletion_timestamp: Option<UnixNanos>,
}

impl ObjectHead {
    /// Parses the head of an object body.
    pub fn parse(body: &serde_json::value::RawValue) -> Result<ObjectHead, serde_json::Error> {
        serde_json::from_str(body.get())
    }

    /// The owner reference with `controller: true`, if any.
    pub fn controller(&self) -> Option<&OwnerRef> {
        self.metadata
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plural_resources_of_kinds() {
        for (k, r) in [
            ("Deployment", "deployments"),
            ("ReplicaSet", "replicasets"),
            ("Pod", "pods"),
            ("NetworkPolicy", "networkpolicies"),
            ("Ingress", "ingresses"),
            ("Endpoints", "endpoints"),
            ("Gateway", "gateways"),
            ("CronJob", "cronjobs"),
            ("ControllerRevision", "controllerrevisions"),
            ("StorageClass", "storageclasses"),
        ] {
            assert_eq!(resource_for_kind(k), r);
        }
    }

    #[test]
    fn owner_namespace_follows_scope() {
        let o = |api: &str, kind: &str| OwnerRef {
            api_version: api.into(),
            kind: kind.into(),
            name: "x".into(),
            uid: "u".into(),
            ..Default::default()
        };
        let rs = ObjectRef::from_owner_ref(&o("apps/v1", "ReplicaSet"), "shop");
        assert_eq!(
            (
                rs.group.as_str(),
                rs.namespace.as_str(),
                rs.resource.as_str()
            ),
            ("apps", "shop", "replicasets")
        );
        let node = ObjectRef::from_owner_ref(&o("v1", "Node"), "kube-system");
        assert!(node.is_cluster_scoped());
        assert_eq!(node.group, "");
        assert_eq!(node.to_string(), "nodes/x");
    }

    #[test]
    fn parses_what_it_prints() {
        for s in [
            "deployments.apps/shop/web",
            "pods/shop/web-1",
            "nodes/worker-1",
            "widgets.example.com/team/w",
        ] {
            assert_eq!(s.parse::<ObjectRef>().unwrap().to_string(), s);
        }
        assert_eq!(
            "deployments/shop/web"
                .parse::<ObjectRef>()
                .unwrap()
                .to_string(),
            "deployments.apps/shop/web"
        );
        let e = "web".parse::<ObjectRef>().unwrap_err();
        assert_eq!(
            e,
            ParseObjectRefError::Shape {
                input: "web".into()
            }
        );
        assert_eq!(
            e.to_string(),
            r#""web": expected RESOURCE/NAMESPACE/NAME or RESOURCE/NAME (cluster-scoped)"#
        );
        assert!("a/b/c/d".parse::<ObjectRef>().is_err());
        assert_eq!(
            "pods//".parse::<ObjectRef>().unwrap_err().to_string(),
            r#""pods//": resource and name must not be empty"#
        );
    }

    #[test]
    fn identity_ignores_uid() {
        let a = ObjectRef {
            resource: "pods".into(),
            namespace: "n".into(),
            name: "p".into(),
            uid: Some("1".into()),
            ..Default::default()
        };
        let b = ObjectRef {
            uid: None,
            ..a.clone()
        };
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "pods/n/p");
    }
}
