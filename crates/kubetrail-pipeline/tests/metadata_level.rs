//! Metadata-level logs (no bodies, so no ownerReferences: what the managed clouds' own audit
//! policies write for workloads) still make families, from the controllers' naming
//! conventions, and the same family tree as the RequestResponse log of the same rollout.

mod common;

use std::collections::BTreeMap;

use common::*;
use kubetrail_model::{AuditEvent, SpanKind, SpanRecord};

/// object ref → parent object ref (None for a root), and which were inferred.
fn family_tree(spans: &[SpanRecord]) -> BTreeMap<String, Option<String>> {
    let refs: BTreeMap<_, _> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Object)
        .map(|s| {
            (
                s.span_id,
                s.attr_str("kubetrail.object.ref").unwrap_or("?").to_owned(),
            )
        })
        .collect();
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Object)
        .map(|s| {
            (
                refs[&s.span_id].clone(),
                s.parent_span_id.and_then(|p| refs.get(&p).cloned()),
            )
        })
        .collect()
}

fn strip_bodies(mut e: AuditEvent) -> AuditEvent {
    e.level = kubetrail_model::Level::Metadata;
    e.request_object = None;
    e.response_object = None;
    e
}

#[test]
fn metadata_only_rollout_has_the_request_response_family_tree() {
    let stream = kubetrail_gen::RolloutScenario::default().generate();
    let events: Vec<AuditEvent> = stream
        .events
        .iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    let (full, _) = run(events.clone());
    let (meta, p) = run(events.into_iter().map(strip_bodies));
    let full_tree = family_tree(&full);
    let meta_tree = family_tree(&meta);

    let mut compared = 0;
    let mut with_owner = 0;
    for (object, parent) in &meta_tree {
        // A generateName create logged without its response names no object: it is on the
        // collection's span (`pods/shop/*`), which the RequestResponse log does not have.
        if object.ends_with("/*") {
            continue;
        }
        assert_eq!(
            full_tree.get(object),
            Some(parent),
            "{object}: Metadata-level parent differs\nfull: {full_tree:#?}\nmeta: {meta_tree:#?}"
        );
        compared += 1;
        with_owner += usize::from(parent.is_some());
    }
    // Every object of the rollout is named by some later request (binding, status patch,
    // delete), so every one is compared, and every owner edge of the truth is found.
    assert_eq!(compared, stream.truth.objects.len(), "{meta_tree:#?}");
    assert!(with_owner >= 8, "{with_owner} owner edges: {meta_tree:#?}");
    assert!(p.stats().inferred_owners > 0);

    // The inferred links are marked on the request spans.
    let marked = meta
        .iter()
        .filter(|s| s.kind == SpanKind::Request)
        .filter(|s| s.attr("kubetrail.link.inferred").is_some())
        .count();
    assert!(marked > 0);
    assert!(
        full.iter()
            .all(|s| s.attr("kubetrail.link.inferred").is_none()),
        "bodies name every owner: nothing is inferred"
    );
}

#[test]
fn an_owner_of_that_name_must_be_known_and_bodies_win() {
    let ev = |verb: &str, resource: &str, group: &str, name: &str, body: Option<&str>| {
        let body = body
            .map(|b| format!(r#","responseObject":{b}"#))
            .unwrap_or_default();
        serde_json::from_str::<AuditEvent>(&format!(
            r#"{{"level":"Metadata","auditID":"{name}-{verb}","stage":"ResponseComplete","requestURI":"/","verb":"{verb}","user":{{"username":"u"}},"objectRef":{{"resource":"{resource}","namespace":"ns","name":"{name}","apiGroup":"{group}"}},"responseStatus":{{"code":200}},"stageTimestamp":"2024-01-01T00:00:00Z"{body}}}"#
        ))
        .unwrap()
    };
    // No ReplicaSet `web-7d4b9c8f5` was ever seen: the Pod stays its own family.
    let (spans, _) = run([ev("patch", "pods", "", "web-7d4b9c8f5-x2k4z", None)]);
    let tree = family_tree(&spans);
    assert_eq!(tree.values().flatten().count(), 0, "{tree:?}");

    // Seen: the Pod goes under it.
    let (spans, _) = run([
        ev("update", "replicasets", "apps", "web-7d4b9c8f5", None),
        ev("patch", "pods", "", "web-7d4b9c8f5-x2k4z", None),
    ]);
    let tree = family_tree(&spans);
    assert_eq!(
        tree["pods/ns/web-7d4b9c8f5-x2k4z"].as_deref(),
        Some("replicasets.apps/ns/web-7d4b9c8f5")
    );

    // A body naming another owner wins over the name.
    let owner = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-7d4b9c8f5-x2k4z","namespace":"ns","uid":"p1","ownerReferences":[{"apiVersion":"apps/v1","kind":"StatefulSet","name":"other","uid":"s1","controller":true}]}}"#;
    let (spans, _) = run([
        ev("update", "replicasets", "apps", "web-7d4b9c8f5", None),
        ev("update", "pods", "", "web-7d4b9c8f5-x2k4z", Some(owner)),
    ]);
    let tree = family_tree(&spans);
    assert_eq!(
        tree["pods/ns/web-7d4b9c8f5-x2k4z"].as_deref(),
        Some("statefulsets.apps/ns/other")
    );
}
