//! Counts of what an owner's subtree held, put on the owner's span, so that the main trace of
//! a family too big for one trace reads as a summary before any part is opened.

use std::collections::{BTreeMap, HashMap};

use kubetrail_model::{AttrKey, AttrValue, ObjectRef};

/// One object's own counts, the input.
#[derive(Debug, Clone)]
pub(crate) struct Own<'a> {
    /// The object.
    pub object: &'a ObjectRef,
    /// Its owner in the family.
    pub parent: Option<&'a ObjectRef>,
    /// Its kind (or, unknown, its resource).
    pub kind: String,
    /// Its request spans.
    pub requests: u32,
    /// Those that failed (status ≥ 400).
    pub errors: u32,
    /// Warning Events about it.
    pub warnings: u32,
}

/// What a subtree held: its descendants by kind, and the requests, errors and Warnings of the
/// owner and every descendant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Descendants by kind.
    pub objects: BTreeMap<String, u32>,
    /// Request spans (the owner's own included).
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Warning Events.
    pub warnings: u64,
}

/// Summaries of every object that owns something in `family`.
pub(crate) fn summarize<'a>(family: &[Own<'a>]) -> HashMap<&'a ObjectRef, Summary> {
    let by_object: HashMap<&ObjectRef, &Own<'_>> = family.iter().map(|o| (o.object, o)).collect();
    let mut out: HashMap<&'a ObjectRef, Summary> = HashMap::new();
    // Each object adds itself to every ancestor (bounded: a chain never revisits an object).
    for o in family {
        let mut cur = o.parent;
        let mut hops = 0;
        while let Some(p) = cur {
            let Some(owner) = by_object.get(p) else {
                break;
            };
            let s = out.entry(owner.object).or_default();
            *s.objects.entry(o.kind.clone()).or_default() += 1;
            s.requests += u64::from(o.requests);
            s.errors += u64::from(o.errors);
            s.warnings += u64::from(o.warnings);
            cur = owner.parent;
            hops += 1;
            if hops > family.len() {
                break;
            }
        }
    }
    // The owners' own counts.
    for (obj, s) in out.iter_mut() {
        if let Some(o) = by_object.get(obj) {
            s.requests += u64::from(o.requests);
            s.errors += u64::from(o.errors);
            s.warnings += u64::from(o.warnings);
        }
    }
    out
}

fn int(v: u64) -> AttrValue {
    AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The summary as span attributes: `kubetrail.subtree.objects` (total),
/// `kubetrail.subtree.objects.<Kind>`, `kubetrail.subtree.requests`,
/// `kubetrail.subtree.failed_requests`, `kubetrail.subtree.warnings`.
pub(crate) fn attributes(s: &Summary, out: &mut Vec<(AttrKey, AttrValue)>) {
    let total: u64 = s.objects.values().map(|n| u64::from(*n)).sum();
    out.push((AttrKey::Borrowed("kubetrail.subtree.objects"), int(total)));
    for (kind, n) in &s.objects {
        out.push((
            AttrKey::Owned(format!("kubetrail.subtree.objects.{kind}")),
            int(u64::from(*n)),
        ));
    }
    out.push((
        AttrKey::Borrowed("kubetrail.subtree.requests"),
        int(s.requests),
    ));
    out.push((
        AttrKey::Borrowed("kubetrail.subtree.failed_requests"),
        int(s.errors),
    ));
    out.push((
        AttrKey::Borrowed("kubetrail.subtree.warnings"),
        int(s.warnings),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(r: &str, n: &str) -> ObjectRef {
        ObjectRef {
            resource: r.into(),
            name: n.into(),
            ..ObjectRef::default()
        }
    }

    #[test]
    fn counts_roll_up_to_every_owner() {
        let (d, rs, p1, p2) = (
            o("deployments", "d"),
            o("replicasets", "rs"),
            o("pods", "p1"),
            o("pods", "p2"),
        );
        let own = |object, parent, kind: &str, requests, errors, warnings| Own {
            object,
            parent,
            kind: kind.into(),
            requests,
            errors,
            warnings,
        };
        let fam = vec![
            own(&d, None, "Deployment", 2, 1, 0),
            own(&rs, Some(&d), "ReplicaSet", 3, 0, 0),
            own(&p1, Some(&rs), "Pod", 5, 1, 2),
            own(&p2, Some(&rs), "Pod", 4, 0, 1),
        ];
        let s = summarize(&fam);
        assert_eq!(s.len(), 2, "only owners get a summary");
        let top = &s[&d];
        assert_eq!(top.objects.get("Pod"), Some(&2));
        assert_eq!(top.objects.get("ReplicaSet"), Some(&1));
        assert_eq!((top.requests, top.errors, top.warnings), (14, 2, 3));
        let mid = &s[&rs];
        assert_eq!(mid.objects.get("Pod"), Some(&2));
        assert_eq!(mid.objects.get("ReplicaSet"), None);
        assert_eq!((mid.requests, mid.errors, mid.warnings), (12, 1, 3));
    }
}
