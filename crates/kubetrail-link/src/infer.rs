//! Owners inferred from the controllers' naming conventions, for Metadata-level logs.
//!
//! The managed clouds' audit policies (and many self-managed ones) log workloads at Metadata
//! level: no bodies, so no ownerReferences, and every object would be its own family. The
//! built-in controllers name what they create after the owner, so the owner can be told from
//! the name, but only as a *candidate*: it is used when an object of that name and a fitting
//! kind is itself known (seen in the stream or named by a body's owner reference), and a
//! body's ownerReferences always win (the [`crate::Linker`] asks here only when it has none).
//!
//! | object | name | owner candidates |
//! |---|---|---|
//! | Pod | `<owner>-<5 chars>` | ReplicaSet, DaemonSet, Job (in that order) |
//! | Pod | `<owner>-<ordinal>` | StatefulSet |
//! | ReplicaSet | `<deployment>-<pod-template-hash>` | Deployment |
//! | Job | `<cronjob>-<scheduled time in minutes>` | CronJob |
//! | ControllerRevision | `<owner>-<hash>` | DaemonSet, StatefulSet |

use kubetrail_model::ObjectRef;

/// The alphabet of `k8s.io/apimachinery/pkg/util/rand.String` (the 5-character suffix of
/// generated names): no vowels, no `0 1 3` that read like letters.
const RAND_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn split_last_dash(name: &str) -> Option<(&str, &str)> {
    let (prefix, suffix) = name.rsplit_once('-')?;
    (!prefix.is_empty() && !suffix.is_empty()).then_some((prefix, suffix))
}

fn is_rand_suffix(s: &str) -> bool {
    s.len() == 5 && s.bytes().all(|b| RAND_ALPHABET.contains(&b))
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `pod-template-hash` / ControllerRevision hash: `rand.SafeEncodeString` of a 32-bit hash,
/// at most 10 characters of the same alphabet.
fn is_template_hash(s: &str) -> bool {
    (1..=10).contains(&s.len()) && s.bytes().all(|b| RAND_ALPHABET.contains(&b))
}

fn candidate(object: &ObjectRef, group: &str, resource: &str, name: &str) -> ObjectRef {
    ObjectRef {
        group: group.to_owned(),
        resource: resource.to_owned(),
        namespace: object.namespace.clone(),
        name: name.to_owned(),
        uid: None,
        cluster: object.cluster.clone(),
    }
}

/// The possible owners of `object` by name, most likely first (none for kinds no built-in
/// controller names after an owner).
pub(crate) fn candidates(object: &ObjectRef) -> Vec<ObjectRef> {
    let Some((prefix, suffix)) = split_last_dash(&object.name) else {
        return Vec::new();
    };
    match (object.group.as_str(), object.resource.as_str()) {
        ("", "pods") => {
            let mut out = Vec::new();
            if is_rand_suffix(suffix) {
                out.push(candidate(object, "apps", "replicasets", prefix));
                out.push(candidate(object, "apps", "daemonsets", prefix));
                out.push(candidate(object, "batch", "jobs", prefix));
            }
            if is_number(suffix) {
                out.push(candidate(object, "apps", "statefulsets", prefix));
            }
            out
        }
        ("apps", "replicasets") if is_template_hash(suffix) => {
            vec![candidate(object, "apps", "deployments", prefix)]
        }
        ("batch", "jobs") if is_number(suffix) => {
            vec![candidate(object, "batch", "cronjobs", prefix)]
        }
        ("apps", "controllerrevisions") if is_template_hash(suffix) => vec![
            candidate(object, "apps", "daemonsets", prefix),
            candidate(object, "apps", "statefulsets", prefix),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(group: &str, resource: &str, name: &str) -> ObjectRef {
        ObjectRef {
            group: group.into(),
            resource: resource.into(),
            namespace: "ns".into(),
            name: name.into(),
            uid: None,
            cluster: None,
        }
    }

    fn names(o: &ObjectRef) -> Vec<String> {
        candidates(o)
            .into_iter()
            .map(|c| format!("{}/{}", c.resource, c.name))
            .collect()
    }

    #[test]
    fn conventions() {
        assert_eq!(
            names(&obj("", "pods", "web-7d4b9c8f5-x2k4z")),
            [
                "replicasets/web-7d4b9c8f5",
                "daemonsets/web-7d4b9c8f5",
                "jobs/web-7d4b9c8f5"
            ]
        );
        assert_eq!(names(&obj("", "pods", "db-0")), ["statefulsets/db"]);
        assert_eq!(
            names(&obj("apps", "replicasets", "web-7d4b9c8f5")),
            ["deployments/web"]
        );
        assert_eq!(
            names(&obj("batch", "jobs", "backup-28391220")),
            ["cronjobs/backup"]
        );
        // Vowels never occur in generated suffixes; no dash, no owner.
        assert!(names(&obj("", "pods", "web-abcde")).is_empty());
        assert!(names(&obj("", "pods", "standalone")).is_empty());
        assert!(names(&obj("", "configmaps", "web-x2k4z")).is_empty());
    }
}
