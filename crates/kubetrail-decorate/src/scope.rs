//! Which changes a request can have made.
//!
//! A diff compares the object after a request with the last state this stage saw, and other
//! requests may have changed it in between without being seen with a body: the scheduler's
//! `create pods/binding` sets `spec.nodeName`, but its response is a `Status`, so the next
//! request that returns the Pod (the kubelet's `patch pods/status`) would show
//! `spec.nodeName` as its own change. The API server only lets a request change part of an
//! object, so the changes outside that part are shown apart, as
//! `kubetrail.diff.unattributed`:
//!
//! * a write to the `status` subresource changes only `status`;
//! * a write to the main resource of a built-in kind that has a `status` subresource never
//!   changes `status` (the API server keeps the old one);
//! * a merge or strategic-merge patch changes only the fields it names (a list it names is
//!   one field, so defaults filled into its items count; `$patch`, `$retainKeys`,
//!   `$setElementOrder/…` and `$deleteFromPrimitiveList/…` directives name their map or list),
//!   a JSON patch only the paths of its operations (up to the first list index);
//! * a server-side apply (a patch body with `apiVersion` and `kind`) and a full `update` may
//!   change any field, since apply also removes the fields the manager no longer sets.

use serde_json::Value;

use crate::path::push_key;

/// Built-in resources with a `status` subresource, by (API group, resource): a write to the
/// main resource keeps their status as it was.
const WITH_STATUS: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "nodes"),
    ("", "namespaces"),
    ("", "persistentvolumes"),
    ("", "persistentvolumeclaims"),
    ("", "replicationcontrollers"),
    ("", "resourcequotas"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "ingresses"),
    ("certificates.k8s.io", "certificatesigningrequests"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("apiregistration.k8s.io", "apiservices"),
    ("flowcontrol.apiserver.k8s.io", "flowschemas"),
    (
        "flowcontrol.apiserver.k8s.io",
        "prioritylevelconfigurations",
    ),
    ("storage.k8s.io", "volumeattachments"),
];

/// The part of an object one request may have changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    /// Only paths under one of these (diff path syntax); `None`: any path.
    within: Option<Vec<String>>,
    /// Never paths under these.
    except: Vec<String>,
}

impl Scope {
    /// Any change may be the request's.
    #[cfg(test)]
    pub(crate) fn everything() -> Scope {
        Scope::default()
    }

    /// The scope of an `update` or `patch` of `resource` in `group` (`sub`: its
    /// subresource), with the request body when the event has one.
    pub(crate) fn of_write(
        group: &str,
        resource: &str,
        verb: &str,
        sub: Option<&str>,
        request: Option<&Value>,
    ) -> Scope {
        if let Some(sub) = sub {
            return Scope {
                within: Some(vec![sub.to_owned()]),
                except: Vec::new(),
            };
        }
        let except = if WITH_STATUS.contains(&(group, resource)) {
            vec!["status".to_owned()]
        } else {
            Vec::new()
        };
        let within = match (verb, request) {
            ("patch", Some(body)) => patch_fields(body),
            _ => None,
        };
        Scope { within, except }
    }

    /// Whether a change at `path` can be the request's.
    pub(crate) fn allows(&self, path: &str) -> bool {
        if self.except.iter().any(|p| under(path, p)) {
            return false;
        }
        self.within
            .as_ref()
            .is_none_or(|w| w.iter().any(|p| under(path, p)))
    }
}

/// Whether `path` is `prefix` or inside it (`status` holds `status.phase` and
/// `status["x"]`, not `statusX`).
fn under(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

/// The fields a patch body names, in diff path syntax; `None` when it may change anything
/// (a server-side apply, a body of another shape).
fn patch_fields(body: &Value) -> Option<Vec<String>> {
    let mut out = Vec::new();
    match body {
        Value::Array(ops) => {
            for op in ops {
                let pointer = op.get("path").and_then(Value::as_str)?;
                out.push(pointer_path(pointer));
                if let Some(from) = op.get("from").and_then(Value::as_str) {
                    out.push(pointer_path(from));
                }
            }
        }
        Value::Object(m) => {
            if m.contains_key("apiVersion") && m.contains_key("kind") {
                return None;
            }
            merge_fields(body, &mut String::new(), &mut out);
        }
        _ => return None,
    }
    Some(out)
}

/// The leaves of a merge or strategic-merge patch (a list is a leaf).
fn merge_fields(v: &Value, path: &mut String, out: &mut Vec<String>) {
    let Value::Object(m) = v else {
        out.push(path.clone());
        return;
    };
    if m.is_empty() || m.contains_key("$patch") || m.contains_key("$retainKeys") {
        out.push(path.clone());
        return;
    }
    let len = path.len();
    for (k, child) in m {
        let name = k
            .strip_prefix("$setElementOrder/")
            .or_else(|| k.strip_prefix("$deleteFromPrimitiveList/"));
        match name {
            Some(field) => {
                push_key(path, field);
                out.push(path.clone());
            }
            None if k.starts_with('$') => {}
            None => {
                push_key(path, k);
                merge_fields(child, path, out);
            }
        }
        path.truncate(len);
    }
}

/// A JSON pointer (`/metadata/labels/a~1b`) as a diff path, up to its first list index.
fn pointer_path(pointer: &str) -> String {
    let mut path = String::new();
    for token in pointer.split('/').skip(1) {
        if token == "-" || (!token.is_empty() && token.bytes().all(|b| b.is_ascii_digit())) {
            break;
        }
        push_key(&mut path, &token.replace("~1", "/").replace("~0", "~"));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_status_write_changes_only_status() {
        let s = Scope::of_write("", "pods", "patch", Some("status"), None);
        assert!(s.allows("status.phase"));
        assert!(s.allows("status.conditions[type=Ready].status"));
        assert!(!s.allows("spec.nodeName"));
        assert!(!s.allows("statusX"));
        assert!(!s.allows("metadata.labels.app"));
    }

    #[test]
    fn a_main_write_keeps_the_status_of_kinds_with_the_subresource() {
        let pod = Scope::of_write("", "pods", "update", None, None);
        assert!(pod.allows("spec.containers[name=web].image"));
        assert!(!pod.allows("status.phase"));
        let cm = Scope::of_write("", "configmaps", "update", None, None);
        assert!(cm.allows("status"));
        let custom = Scope::of_write("example.com", "widgets", "update", None, None);
        assert!(custom.allows("status.ready"));
    }

    #[test]
    fn a_strategic_merge_patch_changes_what_it_names() {
        let body = json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {"example.com/x": null}},
            "spec": {
                "template": {"spec": {
                    "$setElementOrder/containers": [{"name": "web"}],
                    "containers": [{"name": "web", "image": "nginx:1.27"}]
                }},
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"}
            }
        });
        let s = Scope::of_write("apps", "deployments", "patch", None, Some(&body));
        assert!(s.allows("metadata.labels.app"));
        assert!(s.allows(r#"metadata.annotations["example.com/x"]"#));
        assert!(s.allows("spec.template.spec.containers[name=web].image"));
        assert!(s.allows("spec.template.spec.containers[name=web].imagePullPolicy"));
        assert!(s.allows("spec.strategy.rollingUpdate"));
        assert!(!s.allows("spec.replicas"));
        assert!(!s.allows("metadata.labels.tier"));
        assert!(!s.allows("status.replicas"));
    }

    #[test]
    fn a_json_patch_changes_its_paths_up_to_the_first_index() {
        let body = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "x"},
            {"op": "remove", "path": "/spec/template/spec/containers/0/args"}
        ]);
        let s = Scope::of_write("apps", "deployments", "patch", None, Some(&body));
        assert!(s.allows("spec.replicas"));
        assert!(s.allows(r#"metadata.labels["app.kubernetes.io/name"]"#));
        assert!(s.allows("spec.template.spec.containers[name=web].args"));
        assert!(!s.allows("spec.template.metadata.labels.app"));
        let bad = json!([{"op": "replace"}]);
        assert_eq!(
            Scope::of_write("", "configmaps", "patch", None, Some(&bad)),
            Scope::everything()
        );
    }

    #[test]
    fn an_apply_may_change_anything_but_status() {
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let s = Scope::of_write("apps", "deployments", "patch", None, Some(&body));
        assert!(s.allows("spec.template.spec.containers[name=web].image"));
        assert!(!s.allows("status.replicas"));
    }
}
