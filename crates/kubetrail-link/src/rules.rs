//! Configurable linker rules: parents and secondary links beyond ownerReferences.
//!
//! A rule applies to objects of some resources and finds another object either in a field of
//! the object's body (`pods` `.spec.nodeName` → `nodes`) or in an annotation holding a JSON
//! object reference (Kelemetry's `kelemetry.kubewharf.io/parent-link`, whose cluster may
//! differ from the object's: multi-cluster parents). A **parent** rule places the object
//! under the other one (it becomes part of that object's family and trace); a **secondary**
//! rule only adds a span link to the other object's span.
//!
//! Precedence: parent rules are tried in configuration order and the first that yields an
//! object wins; ownerReferences (`controller: true`) apply only when no parent rule matched.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use kubetrail_model::{ObjectHead, ObjectRef};

/// What a rule makes of the object it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// The found object is the owner: the object joins its family.
    Parent,
    /// The found object gets a span link, nothing more.
    Secondary,
}

/// One linker rule (`link.rules[]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRule {
    /// A name for logs, metrics and the link's attributes.
    pub name: String,
    /// `resource[.group]` of the objects the rule applies to; `*` for any.
    pub resources: Vec<String>,
    /// Dotted path of a string field holding the other object's name (`spec.nodeName`).
    #[serde(default)]
    pub field: Option<String>,
    /// With `field`: `resource[.group]` of the other object (`nodes`).
    #[serde(default)]
    pub target: Option<String>,
    /// With `field`: whether the other object is namespaced (in the object's namespace).
    /// Default: false for well-known cluster-scoped resources (nodes, namespaces,
    /// persistentvolumes, storageclasses …), true otherwise.
    #[serde(default)]
    pub target_namespaced: Option<bool>,
    /// An annotation holding a JSON object reference:
    /// `{"cluster":"…","group":"…","resource":"…","namespace":"…","name":"…"}`.
    #[serde(default)]
    pub annotation: Option<String>,
    /// Parent or secondary.
    pub relation: Relation,
}

/// The rules kubetrail uses when the config names none: Pods link to their Node (secondary:
/// a Pod is not part of its Node's family), and Kelemetry's parent-link annotation.
pub fn default_rules() -> Vec<LinkRule> {
    vec![
        LinkRule {
            name: "pod-node".into(),
            resources: vec!["pods".into()],
            field: Some("spec.nodeName".into()),
            target: Some("nodes".into()),
            target_namespaced: None,
            annotation: None,
            relation: Relation::Secondary,
        },
        LinkRule {
            name: "parent-link-annotation".into(),
            resources: vec!["*".into()],
            field: None,
            target: None,
            target_namespaced: None,
            annotation: Some("kelemetry.kubewharf.io/parent-link".into()),
            relation: Relation::Parent,
        },
    ]
}

/// Why a link rule cannot work ([`LinkRule::validate`]); each names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Both `field` and `annotation` are given.
    #[error("rule {rule}: give either field or annotation, not both")]
    FieldAndAnnotation {
        /// The rule's name.
        rule: String,
    },
    /// Neither `field` nor `annotation` is given.
    #[error("rule {rule}: give a field (with target) or an annotation")]
    NoSource {
        /// The rule's name.
        rule: String,
    },
    /// A `field` rule without a `target`.
    #[error("rule {rule}: a field rule needs a target resource")]
    NoTarget {
        /// The rule's name.
        rule: String,
    },
    /// `resources` is empty.
    #[error("rule {rule}: resources must not be empty")]
    NoResources {
        /// The rule's name.
        rule: String,
    },
}

impl LinkRule {
    /// A configuration error, if the rule cannot work.
    pub fn validate(&self) -> Result<(), RuleError> {
        let rule = || self.name.clone();
        match (&self.field, &self.annotation) {
            (Some(_), Some(_)) => Err(RuleError::FieldAndAnnotation { rule: rule() }),
            (None, None) => Err(RuleError::NoSource { rule: rule() }),
            (Some(_), None) if self.target.is_none() => Err(RuleError::NoTarget { rule: rule() }),
            _ if self.resources.is_empty() => Err(RuleError::NoResources { rule: rule() }),
            _ => Ok(()),
        }
    }

    pub(crate) fn applies_to(&self, o: &ObjectRef) -> bool {
        let gr = o.group_resource();
        self.resources
            .iter()
            .any(|r| r == "*" || *r == gr || (*r == o.resource && o.group.is_empty()))
    }

    pub(crate) fn needs_body(&self) -> bool {
        self.field.is_some()
    }

    /// The object this rule finds for `object`, from its head and (for field rules) its body.
    pub(crate) fn find(
        &self,
        object: &ObjectRef,
        head: &ObjectHead,
        body: Option<&Value>,
    ) -> Option<ObjectRef> {
        if let Some(key) = &self.annotation {
            let value = head.metadata.annotations.get(key)?;
            return parse_reference(value);
        }
        let path = self.field.as_deref()?;
        let mut v = body?;
        for seg in path.split('.') {
            v = v.get(seg)?;
        }
        let name = v.as_str().filter(|s| !s.is_empty())?;
        let target = self.target.as_deref()?;
        let (resource, group) = match target.split_once('.') {
            Some((r, g)) => (r.to_owned(), g.to_owned()),
            None => (
                target.to_owned(),
                kubetrail_model::known_group(target)
                    .unwrap_or("")
                    .to_owned(),
            ),
        };
        let namespaced = self
            .target_namespaced
            .unwrap_or(!is_cluster_scoped_resource(&resource, &group));
        Some(ObjectRef {
            namespace: if namespaced {
                object.namespace.clone()
            } else {
                String::new()
            },
            group,
            resource,
            name: name.to_owned(),
            uid: None,
            cluster: None,
        })
    }
}

#[derive(Deserialize)]
struct Reference {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    group: String,
    resource: String,
    #[serde(default)]
    namespace: String,
    name: String,
    #[serde(default)]
    uid: Option<String>,
}

/// Parses a JSON object reference (Kelemetry's parent-link format).
fn parse_reference(value: &str) -> Option<ObjectRef> {
    let r: Reference = serde_json::from_str(value).ok()?;
    if r.resource.is_empty() || r.name.is_empty() {
        return None;
    }
    Some(ObjectRef {
        group: r.group,
        resource: r.resource,
        namespace: r.namespace,
        name: r.name,
        uid: r.uid.filter(|u| !u.is_empty()),
        cluster: r.cluster.filter(|c| !c.is_empty()),
    })
}

fn is_cluster_scoped_resource(resource: &str, group: &str) -> bool {
    match group {
        "" => matches!(resource, "nodes" | "namespaces" | "persistentvolumes"),
        "storage.k8s.io" => matches!(
            resource,
            "storageclasses" | "csidrivers" | "csinodes" | "volumeattachments"
        ),
        "rbac.authorization.k8s.io" => matches!(resource, "clusterroles" | "clusterrolebindings"),
        "apiextensions.k8s.io" => resource == "customresourcedefinitions",
        _ => false,
    }
}

/// Parses a body for field rules only when one applies (the parse is not free).
pub(crate) fn body_value(
    rules: &[LinkRule],
    object: &ObjectRef,
    body: Option<&RawValue>,
) -> Option<Value> {
    if rules.iter().any(|r| r.needs_body() && r.applies_to(object)) {
        body.and_then(|b| serde_json::from_str(b.get()).ok())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_rules_say_which_and_why() {
        let mut r = default_rules().remove(0);
        r.name = "mine".into();
        assert_eq!(r.validate(), Ok(()));
        r.annotation = Some("a".into());
        let e = r.validate().unwrap_err();
        assert_eq!(
            e,
            RuleError::FieldAndAnnotation {
                rule: "mine".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "rule mine: give either field or annotation, not both"
        );
        r.annotation = None;
        r.target = None;
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "rule mine: a field rule needs a target resource"
        );
        r.field = None;
        assert!(matches!(r.validate(), Err(RuleError::NoSource { .. })));
        r.annotation = Some("a".into());
        r.resources.clear();
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "rule mine: resources must not be empty"
        );
    }
}
