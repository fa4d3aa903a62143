//! A family that namespace keys cut apart: a cluster-scoped custom resource owning objects in
//! several namespaces (the shape of multi-tenancy operators: a `Tenant` that creates its
//! Namespaces and their default ConfigMaps). Used by the Kafka repartitioning tests.

use serde_json::{Value, json};

use crate::time::{MS, Micros, rfc3339_micros};

/// The Tenant's uid (every member's `ownerReferences` names it).
pub const TENANT_UID: &str = "tenant-uid-acme";

fn request(
    id: &str,
    t: Micros,
    verb: &str,
    user: &str,
    (group, resource, namespace, name): (&str, &str, Option<&str>, &str),
    subresource: Option<&str>,
    body: Option<Value>,
) -> Value {
    let mut object_ref = json!({"resource": resource, "name": name, "apiVersion": "v1"});
    if !group.is_empty() {
        object_ref["apiGroup"] = json!(group);
    }
    if let Some(ns) = namespace {
        object_ref["namespace"] = json!(ns);
    }
    if let Some(s) = subresource {
        object_ref["subresource"] = json!(s);
    }
    let prefix = if group.is_empty() {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{group}/v1")
    };
    let uri = match namespace {
        Some(ns) if resource != "namespaces" => {
            format!("{prefix}/namespaces/{ns}/{resource}/{name}")
        }
        _ => format!("{prefix}/{resource}/{name}"),
    };
    let mut e = json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": id, "stage": "ResponseComplete", "requestURI": uri, "verb": verb,
        "user": {"username": user}, "userAgent": format!("{user}/v1.30.0"),
        "sourceIPs": ["10.0.0.9"], "objectRef": object_ref,
        "responseStatus": {"metadata": {}, "code": if verb == "create" { 201 } else { 200 }},
        "requestReceivedTimestamp": rfc3339_micros(t - 3 * MS),
        "stageTimestamp": rfc3339_micros(t),
    });
    if let Some(b) = body {
        e["responseObject"] = b;
    }
    e
}

fn owned(kind: &str, namespace: Option<&str>, name: &str, uid: &str, rv: &str) -> Value {
    let mut meta = json!({
        "name": name, "uid": uid, "resourceVersion": rv,
        "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Tenant", "name": "acme",
            "uid": TENANT_UID, "controller": true, "blockOwnerDeletion": true}],
    });
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    json!({"kind": kind, "apiVersion": "v1", "metadata": meta, "data": {"tier": "gold"}})
}

/// A cluster-scoped `tenants.example.com/acme` owning Namespaces `team-a` and `team-b` and a
/// ConfigMap `settings` in each: created 3 s after `start` (Unix nanoseconds), updated after
/// 20 s, one ConfigMap deleted after 30 s; 9 requests (auditIDs `tenant-…`), in time order.
/// Its right answer: one family, rooted at the Tenant, so one trace per window.
pub fn cluster_scoped_owner_family(start: i64) -> Vec<Value> {
    let t0 = start.div_euclid(1000);
    let tenant = |rv: &str| {
        json!({"kind": "Tenant", "apiVersion": "example.com/v1",
            "metadata": {"name": "acme", "uid": TENANT_UID, "resourceVersion": rv},
            "spec": {"namespaces": ["team-a", "team-b"]}})
    };
    let op = "tenant-operator";
    let tenant_ref = ("example.com", "tenants", None, "acme");
    let mut v = vec![(
        3_000,
        request(
            "tenant-01",
            t0 + 3_000 * MS,
            "create",
            "admin",
            tenant_ref,
            None,
            Some(tenant("1")),
        ),
    )];
    v.push((
        6_000,
        request(
            "tenant-02",
            t0 + 6_000 * MS,
            "patch",
            op,
            tenant_ref,
            Some("status"),
            Some(tenant("2")),
        ),
    ));
    for (i, ns) in ["team-a", "team-b"].into_iter().enumerate() {
        let d = i as i64 * 300;
        let cm_ref = ("", "configmaps", Some(ns), "settings");
        let cm_uid = format!("cm-uid-{ns}");
        let at = |ms: i64| t0 + (ms + d) * MS;
        v.push((
            4_000 + d,
            request(
                &format!("tenant-ns-{ns}"),
                at(4_000),
                "create",
                op,
                ("", "namespaces", Some(ns), ns),
                None,
                Some(owned("Namespace", None, ns, &format!("ns-uid-{ns}"), "1")),
            ),
        ));
        v.push((
            5_000 + d,
            request(
                &format!("tenant-cm-create-{ns}"),
                at(5_000),
                "create",
                op,
                cm_ref,
                None,
                Some(owned("ConfigMap", Some(ns), "settings", &cm_uid, "1")),
            ),
        ));
        v.push((
            20_000 + d,
            request(
                &format!("tenant-cm-update-{ns}"),
                at(20_000),
                "update",
                op,
                cm_ref,
                None,
                Some(owned("ConfigMap", Some(ns), "settings", &cm_uid, "2")),
            ),
        ));
    }
    v.push((
        30_000,
        request(
            "tenant-cm-delete-team-b",
            t0 + 30_000 * MS,
            "delete",
            op,
            ("", "configmaps", Some("team-b"), "settings"),
            None,
            None,
        ),
    ));
    v.sort_by_key(|(ms, _)| *ms);
    v.into_iter().map(|(_, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_requests_in_time_order_all_owned_by_the_tenant() {
        let v = cluster_scoped_owner_family(1_714_557_600_000_000_000);
        assert_eq!(v.len(), 9);
        let times: Vec<&str> = v
            .iter()
            .map(|e| e["stageTimestamp"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(times[0], "2024-05-01T10:00:03.000000Z");
        let owned = v
            .iter()
            .filter(|e| e["responseObject"]["metadata"]["ownerReferences"][0]["uid"] == TENANT_UID)
            .count();
        assert_eq!(
            owned, 6,
            "two Namespaces, two ConfigMaps created and updated"
        );
        assert!(
            v.iter()
                .all(|e| e["auditID"].as_str().unwrap().starts_with("tenant-"))
        );
    }
}
