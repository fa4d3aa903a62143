//! Behaviour of `Decorator::decorate` and `diff` on hand-made objects.

mod common;

use common::*;
use kubetrail_decorate::{
    Change, DecorateConfig, Decoration, Decorator, DiffConfig, SnapshotConfig, diff,
};
use serde_json::{Value, json};

fn change(path: &str, old: Option<&str>, new: Option<&str>) -> Change {
    Change {
        path: path.into(),
        old: old.map(Into::into),
        new: new.map(Into::into),
    }
}

fn web_container(image: &str) -> Value {
    json!({"name":"web","image":image,"env":[{"name":"LOG_LEVEL","value":"info"},{"name":"PORT","value":"8080"}],
           "ports":[{"name":"http","containerPort":8080}]})
}

fn sidecar() -> Value {
    json!({"name":"proxy","image":"envoy:1.30"})
}

/// A decorator that has seen `deployment(uid, "1", containers)` created.
fn created(d: &Decorator, uid: &str, containers: Value) -> Decoration {
    let body = deployment(uid, "1", containers);
    d.decorate(
        "c",
        &web(),
        &deploy_event("create", None, 201, Some(body.clone()), Some(body)),
    )
}

fn patched(d: &Decorator, response: Value) -> Decoration {
    d.decorate(
        "c",
        &web(),
        &deploy_event("patch", None, 200, Some(json!({"spec":{}})), Some(response)),
    )
}

#[test]
fn container_image_change_by_name() {
    let d = Decorator::new(DecorateConfig::default());
    let c = created(&d, "u1", json!([web_container("nginx:1.25"), sidecar()]));
    assert!(!c.had_prior_state);
    assert!(c.changes.is_empty());
    let snap = c.snapshot.expect("snapshot on create");
    assert!(
        snap.contains("nginx:1.25") && !snap.contains("managedFields"),
        "{snap}"
    );

    let out = patched(
        &d,
        deployment("u1", "2", json!([web_container("nginx:1.27"), sidecar()])),
    );
    assert!(out.had_prior_state && !out.noop);
    assert_eq!(
        out.changes,
        vec![change(
            "spec.template.spec.containers[name=web].image",
            Some("nginx:1.25"),
            Some("nginx:1.27")
        )]
    );
    assert_eq!(out.snapshot, None);
}

#[test]
fn reordering_keyed_lists_is_no_change() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25"), sidecar()]));
    let mut w = web_container("nginx:1.25");
    w["env"] = json!([{"name":"PORT","value":"8080"},{"name":"LOG_LEVEL","value":"info"}]);
    let out = patched(&d, deployment("u1", "2", json!([sidecar(), w])));
    assert!(out.had_prior_state);
    assert!(out.noop, "{:?}", out.changes);
    assert!(out.changes.is_empty());
}

#[test]
fn env_change_by_name_and_added_container() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let mut w = web_container("nginx:1.25");
    w["env"][0]["value"] = json!("debug");
    let out = patched(&d, deployment("u1", "2", json!([w, sidecar()])));
    assert_eq!(
        out.changes,
        vec![
            change(
                "spec.template.spec.containers[name=proxy]",
                None,
                Some(r#"{"image":"envoy:1.30","name":"proxy"}"#)
            ),
            change(
                "spec.template.spec.containers[name=web].env[name=LOG_LEVEL].value",
                Some("info"),
                Some("debug")
            ),
        ]
    );
}

#[test]
fn conditions_by_type_and_heartbeats_ignored() {
    let cfg = DiffConfig::default();
    let old = json!({"status":{"conditions":[
        {"type":"Ready","status":"False","lastHeartbeatTime":"t1","lastProbeTime":"t1","lastTransitionTime":"t0"},
        {"type":"MemoryPressure","status":"False","lastHeartbeatTime":"t1","lastTransitionTime":"t0"}]}});
    let new = json!({"status":{"conditions":[
        {"type":"MemoryPressure","status":"False","lastHeartbeatTime":"t2","lastTransitionTime":"t0"},
        {"type":"Ready","status":"True","lastHeartbeatTime":"t2","lastProbeTime":"t2","lastTransitionTime":"t2"}]}});
    let (changes, more) = diff(&old, &new, &cfg);
    assert_eq!(more, 0);
    assert_eq!(
        changes,
        vec![
            change(
                "status.conditions[type=Ready].lastTransitionTime",
                Some("t0"),
                Some("t2")
            ),
            change(
                "status.conditions[type=Ready].status",
                Some("False"),
                Some("True")
            ),
        ]
    );
}

#[test]
fn owner_references_by_uid_and_quoted_annotation_keys() {
    let cfg = DiffConfig::default();
    let old = json!({"metadata":{"ownerReferences":[{"uid":"a","name":"rs","kind":"ReplicaSet","controller":true}],
                                  "annotations":{"example.com/x":"1","plain":"p"}}});
    let new = json!({"metadata":{"ownerReferences":[{"uid":"a","name":"rs","kind":"ReplicaSet","controller":false}],
                                  "annotations":{"example.com/x":"2","plain":"p","new key":"v"}}});
    let (changes, _) = diff(&old, &new, &cfg);
    assert_eq!(
        changes,
        vec![
            // A string that reads as a number is quoted.
            change(
                r#"metadata.annotations["example.com/x"]"#,
                Some(r#""1""#),
                Some(r#""2""#)
            ),
            change(r#"metadata.annotations["new key"]"#, None, Some("v")),
            change(
                "metadata.ownerReferences[uid=a].controller",
                Some("true"),
                Some("false")
            ),
        ]
    );
}

#[test]
fn unkeyable_lists_by_index() {
    let cfg = DiffConfig::default();
    let old = json!({"spec":{"tolerations":[{"key":"a","effect":"NoSchedule"},{"key":"a","effect":"NoExecute"}]}});
    let new = json!({"spec":{"tolerations":[{"key":"a","effect":"NoSchedule"},{"key":"a","effect":"NoExecute","tolerationSeconds":30}]}});
    let (changes, _) = diff(&old, &new, &cfg);
    assert_eq!(
        changes,
        vec![change(
            "spec.tolerations[1].tolerationSeconds",
            None,
            Some("30")
        )]
    );
}

#[test]
fn noise_only_change_is_a_noop() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let mut b = deployment("u1", "99", json!([web_container("nginx:1.25")]));
    b["metadata"]["managedFields"] = json!([{"manager":"other","operation":"Apply"}]);
    b["metadata"]["generation"] = json!(7);
    b["status"]["observedGeneration"] = json!(7);
    b["status"]["conditions"][0]["lastUpdateTime"] = json!("2024-05-01T11:00:00Z");
    b["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/last-applied-configuration":"{\"x\":1}"});
    let out = patched(&d, b);
    assert!(out.had_prior_state);
    assert!(out.noop, "{:?}", out.changes);
}

#[test]
fn no_diff_without_prior_state() {
    let d = Decorator::new(DecorateConfig::default());
    let out = patched(
        &d,
        deployment("u1", "2", json!([web_container("nginx:1.27")])),
    );
    assert_eq!(out, Decoration::default());
    // …but the state is remembered from there on.
    let out = patched(
        &d,
        deployment("u1", "3", json!([web_container("nginx:1.28")])),
    );
    assert!(out.had_prior_state);
    assert_eq!(out.changes.len(), 1);
}

#[test]
fn a_new_uid_is_a_new_object() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let out = patched(
        &d,
        deployment("u2", "5", json!([web_container("nginx:1.27")])),
    );
    assert!(!out.had_prior_state);
    assert!(out.changes.is_empty() && !out.noop);
    // The new incarnation is now the one remembered.
    let out = patched(
        &d,
        deployment("u2", "6", json!([web_container("nginx:1.28")])),
    );
    assert_eq!(
        out.changes[0].old.as_deref(),
        Some("nginx:1.27"),
        "{:?}",
        out.changes
    );
}

#[test]
fn a_patch_without_response_forgets_the_state() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let out = d.decorate(
        "c",
        &web(),
        &deploy_event(
            "patch",
            None,
            200,
            Some(json!({"spec":{"replicas":5}})),
            None,
        ),
    );
    assert_eq!(out, Decoration::default());
    // What the object became is unknown: the next write must not be diffed against the state
    // before the patch (it would credit the patch's changes to the wrong request).
    let out = patched(
        &d,
        deployment("u1", "3", json!([web_container("nginx:1.25")])),
    );
    assert!(!out.had_prior_state);
}

#[test]
fn request_level_update_uses_the_request_body() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let mut body = deployment("u1", "1", json!([web_container("nginx:1.26")]));
    body.as_object_mut().unwrap().remove("status");
    let out = d.decorate(
        "c",
        &web(),
        &deploy_event("update", None, 200, Some(body), None),
    );
    assert!(out.had_prior_state);
    // The status the body lacks is the one the API server keeps: no "status removed".
    assert_eq!(
        out.changes,
        vec![change(
            "spec.template.spec.containers[name=web].image",
            Some("nginx:1.25"),
            Some("nginx:1.26")
        )]
    );
    // A status update at Request level only changes the status.
    let mut body = deployment("u1", "1", json!([web_container("ignored:1")]));
    body["status"]["replicas"] = json!(4);
    let out = d.decorate(
        "c",
        &web(),
        &deploy_event("update", Some("status"), 200, Some(body), None),
    );
    assert_eq!(
        out.changes,
        vec![change("status.replicas", Some("3"), Some("4"))]
    );
}

#[test]
fn failed_dry_run_and_other_subresources() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let conflict = d.decorate(
        "c",
        &web(),
        &deploy_event(
            "update",
            None,
            409,
            None,
            Some(json!({"kind":"Status","code":409})),
        ),
    );
    assert_eq!(conflict, Decoration::default());
    let mut dry = deploy_event(
        "patch",
        None,
        200,
        Some(json!({})),
        Some(deployment("u1", "2", json!([web_container("evil:1")]))),
    );
    dry.request_uri.push_str("?dryRun=All");
    assert_eq!(d.decorate("c", &web(), &dry), Decoration::default());
    // Neither changed the remembered state.
    let out = patched(
        &d,
        deployment("u1", "3", json!([web_container("nginx:1.26")])),
    );
    assert_eq!(out.changes[0].old.as_deref(), Some("nginx:1.25"));
    // A scale update changes the object out of sight: forgotten.
    let scale = d.decorate(
        "c",
        &web(),
        &deploy_event(
            "update",
            Some("scale"),
            200,
            Some(json!({"kind":"Scale","spec":{"replicas":9}})),
            Some(json!({"kind":"Scale","spec":{"replicas":9}})),
        ),
    );
    assert_eq!(scale, Decoration::default());
    let out = patched(
        &d,
        deployment("u1", "5", json!([web_container("nginx:1.26")])),
    );
    assert!(!out.had_prior_state);
}

#[test]
fn a_non_final_stage_changes_nothing() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let mut early = deploy_event("patch", None, 200, Some(json!({})), None);
    early.stage = kubetrail_model::Stage::RequestReceived;
    early.response_status = None;
    assert_eq!(d.decorate("c", &web(), &early), Decoration::default());
    let out = patched(
        &d,
        deployment("u1", "2", json!([web_container("nginx:1.27")])),
    );
    assert!(out.had_prior_state);
}

#[test]
fn delete_snapshots_and_forgets() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    // Graceful: the response is the object, with a deletionTimestamp: kept.
    let mut doomed = deployment("u1", "2", json!([web_container("nginx:1.25")]));
    doomed["metadata"]["deletionTimestamp"] = json!("2024-05-01T10:05:00Z");
    doomed["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    let out = d.decorate(
        "c",
        &web(),
        &deploy_event(
            "delete",
            None,
            200,
            Some(json!({"kind":"DeleteOptions"})),
            Some(doomed),
        ),
    );
    let snap = out.snapshot.unwrap();
    assert!(snap.contains("deletionTimestamp"), "{snap}");
    // Final: a Status; the snapshot is the remembered state; then forgotten.
    let status =
        json!({"kind":"Status","apiVersion":"v1","status":"Success","details":{"name":"web"}});
    let out = d.decorate(
        "c",
        &web(),
        &deploy_event("delete", None, 200, None, Some(status)),
    );
    let snap = out.snapshot.unwrap();
    assert!(
        snap.contains("foregroundDeletion") && snap.contains("nginx:1.25"),
        "{snap}"
    );
    assert_eq!(d.cache_size().1, 0);
    // A pod's final delete (grace period 0) returns the pod, deletionTimestamp and all: gone.
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let mut gone = deployment("u1", "3", json!([web_container("nginx:1.25")]));
    gone["metadata"]["deletionTimestamp"] = json!("2024-05-01T10:05:00Z");
    gone["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    let out = d.decorate(
        "c",
        &web(),
        &deploy_event("delete", None, 200, None, Some(gone)),
    );
    assert!(out.snapshot.is_some());
    assert_eq!(d.cache_size().1, 0);
    let out = d.decorate("c", &web(), &deploy_event("delete", None, 200, None, None));
    assert_eq!(out.snapshot, None);
}

#[test]
fn snapshots_are_truncated() {
    let cfg = DecorateConfig {
        snapshot: SnapshotConfig {
            max_bytes: 120,
            ..SnapshotConfig::default()
        },
        ..DecorateConfig::default()
    };
    let d = Decorator::new(cfg);
    let snap = created(&d, "u1", json!([web_container("nginx:1.25")]))
        .snapshot
        .unwrap();
    assert!(snap.len() <= 120, "{} {snap}", snap.len());
    assert!(snap.starts_with(r#"{"apiVersion":"apps/v1""#), "{snap}");
    assert!(snap.ends_with(" bytes)"), "{snap}");
    let off = Decorator::new(DecorateConfig {
        snapshot: SnapshotConfig {
            on_create: false,
            ..SnapshotConfig::default()
        },
        ..DecorateConfig::default()
    });
    assert_eq!(
        created(&off, "u1", json!([web_container("a:1")])).snapshot,
        None
    );
}

#[test]
fn a_tiny_cache_forgets() {
    let cfg = DecorateConfig {
        diff: DiffConfig {
            cache_bytes: 4096,
            ..DiffConfig::default()
        },
        ..DecorateConfig::default()
    };
    let d = Decorator::new(cfg);
    let obj = |i: usize| kubetrail_model::ObjectRef {
        name: format!("web-{i}"),
        ..web()
    };
    let body = |i: usize, image: &str| {
        let mut b = deployment(&format!("u{i}"), "1", json!([web_container(image)]));
        b["metadata"]["name"] = json!(format!("web-{i}"));
        b
    };
    for i in 0..20 {
        let b = body(i, "nginx:1.25");
        d.decorate(
            "c",
            &obj(i),
            &deploy_event("create", None, 201, Some(b.clone()), Some(b)),
        );
    }
    let (bytes, entries) = d.cache_size();
    assert!(bytes <= 4096, "{bytes}");
    assert!(entries > 0 && entries < 20, "{entries}");
    let first = d.decorate(
        "c",
        &obj(0),
        &deploy_event("patch", None, 200, None, Some(body(0, "nginx:1.27"))),
    );
    assert!(!first.had_prior_state, "the oldest state was forgotten");
    let last = d.decorate(
        "c",
        &obj(19),
        &deploy_event("patch", None, 200, None, Some(body(19, "nginx:1.27"))),
    );
    assert!(last.had_prior_state, "the newest state is remembered");
}

#[test]
fn max_changes_and_max_value_bytes() {
    let cfg = DiffConfig {
        max_changes: 5,
        max_value_bytes: 20,
        ..DiffConfig::default()
    };
    let old = json!({"metadata":{"labels":(0..12).map(|i| (format!("l{i:02}"), json!("a"))).collect::<serde_json::Map<_,_>>()}});
    let new = json!({"metadata":{"labels":(0..12).map(|i| (format!("l{i:02}"), json!("b".repeat(50)))).collect::<serde_json::Map<_,_>>()}});
    let (changes, more) = diff(&old, &new, &cfg);
    assert_eq!((changes.len(), more), (5, 7));
    assert_eq!(changes[0].path, "metadata.labels.l00");
    let v = changes[0].new.as_deref().unwrap();
    assert!(v.len() <= 20 && v.ends_with("… (50 bytes)"), "{v}");
}

#[test]
fn configured_ignore_paths() {
    let cfg = DecorateConfig {
        diff: DiffConfig {
            ignore: vec![
                "metadata.labels.*".into(),
                "spec.template.spec.containers[*].env".into(),
                "metadata.annotations.example.com/restartedAt".into(),
            ],
            ..DiffConfig::default()
        },
        ..DecorateConfig::default()
    };
    assert_eq!(cfg.validate(), Ok(()));
    let d = Decorator::new(cfg);
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let mut b = deployment("u1", "2", json!([web_container("nginx:1.25")]));
    b["metadata"]["labels"]["app"] = json!("other");
    b["metadata"]["annotations"] = json!({"example.com/restartedAt":"now"});
    b["spec"]["template"]["spec"]["containers"][0]["env"] = json!([]);
    let out = patched(&d, b.clone());
    assert!(out.noop, "{:?}", out.changes);
    b["spec"]["replicas"] = json!(5);
    let out = patched(&d, b);
    assert_eq!(
        out.changes,
        vec![change("spec.replicas", Some("3"), Some("5"))]
    );
}

#[test]
fn validate_rejects_malformed_paths() {
    let mut cfg = DecorateConfig::default();
    assert_eq!(cfg.validate(), Ok(()));
    cfg.redact.paths.push("spec.containers[*.env".into());
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("redact.paths")
    );
    let cfg: DecorateConfig = serde_json::from_value(
        json!({"diff":{"cache_bytes":1024,"ignore":["a.b"]},"redact":{"resources":["configmaps"]}}),
    )
    .unwrap();
    assert_eq!(cfg.diff.cache_bytes, 1024);
    assert_eq!(cfg.diff.max_changes, 64);
    assert!(cfg.snapshot.on_create);
    assert!(
        serde_json::from_value::<DecorateConfig>(json!({"diff":{"bogus":1}})).is_err(),
        "unknown keys are rejected"
    );
}

#[test]
fn get_primes_and_deletecollection_forgets() {
    let d = Decorator::new(DecorateConfig::default());
    let body = deployment("u1", "1", json!([web_container("nginx:1.25")]));
    let out = d.decorate(
        "c",
        &web(),
        &deploy_event("get", None, 200, None, Some(body.clone())),
    );
    assert_eq!(out, Decoration::default());
    assert_eq!(d.cache_size().1, 1);
    // `kubectl get` asks for a Table: not the object, not remembered.
    let table = json!({"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"5"},
        "columnDefinitions":[],"rows":[]});
    let other = kubetrail_model::ObjectRef {
        name: "other".into(),
        ..web()
    };
    d.decorate(
        "c",
        &other,
        &deploy_event("get", None, 200, None, Some(table)),
    );
    assert_eq!(d.cache_size().1, 1);
    let coll = kubetrail_model::ObjectRef {
        name: String::new(),
        ..web()
    };
    let mut dc = deploy_event(
        "deletecollection",
        None,
        200,
        None,
        Some(json!({"kind":"DeploymentList","items":[body]})),
    );
    dc.object_ref.as_mut().unwrap().name = None;
    d.decorate("c", &coll, &dc);
    assert_eq!(d.cache_size().1, 0);
}

#[test]
fn clusters_are_separate_and_diff_can_be_off() {
    let d = Decorator::new(DecorateConfig::default());
    created(&d, "u1", json!([web_container("nginx:1.25")]));
    let other = d.decorate(
        "other-cluster",
        &web(),
        &deploy_event(
            "patch",
            None,
            200,
            None,
            Some(deployment("u1", "2", json!([web_container("x:1")]))),
        ),
    );
    assert!(!other.had_prior_state);

    let off = Decorator::new(DecorateConfig {
        diff: DiffConfig {
            enabled: false,
            ..DiffConfig::default()
        },
        ..DecorateConfig::default()
    });
    assert!(
        created(&off, "u1", json!([web_container("nginx:1.25")]))
            .snapshot
            .is_some()
    );
    let out = patched(
        &off,
        deployment("u1", "2", json!([web_container("nginx:1.27")])),
    );
    assert_eq!(out, Decoration::default());
    let del = off.decorate(
        "c",
        &web(),
        &deploy_event(
            "delete",
            None,
            200,
            None,
            Some(json!({"kind":"Status","status":"Success"})),
        ),
    );
    assert!(
        del.snapshot.unwrap().contains("nginx:1.27"),
        "delete snapshots still use the remembered state"
    );
}

#[test]
fn the_decorator_is_shareable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Decorator>();
}

#[test]
fn an_added_map_is_reported_key_by_key() {
    let old = json!({"spec":{"replicas":1}});
    let new = json!({"spec":{"replicas":1},"status":{"replicas":3,"conditions":[
        {"type":"Ready","status":"True"},{"type":"Initialized","status":"True"}]},
        "metadata":{"finalizers":["a","b"]}});
    let (changes, _) = diff(&old, &new, &DiffConfig::default());
    assert_eq!(
        changes,
        vec![
            change("metadata.finalizers", None, Some(r#"["a","b"]"#)),
            change(
                "status.conditions[type=Initialized]",
                None,
                Some(r#"{"status":"True","type":"Initialized"}"#)
            ),
            change(
                "status.conditions[type=Ready]",
                None,
                Some(r#"{"status":"True","type":"Ready"}"#)
            ),
            change("status.replicas", None, Some("3")),
        ]
    );
    let (back, _) = diff(&new, &old, &DiffConfig::default());
    assert_eq!(back.len(), 4);
    assert!(back.iter().all(|c| c.new.is_none()));
}

/// A completed request about `pods/shop/web-1` (`sub`: its subresource).
fn pod_event(
    verb: &str,
    sub: Option<&str>,
    request: Value,
    response: Value,
) -> kubetrail_model::AuditEvent {
    let mut object_ref =
        json!({"resource":"pods","apiVersion":"v1","namespace":"shop","name":"web-1"});
    if let Some(s) = sub {
        object_ref["subresource"] = json!(s);
    }
    event(json!({
        "kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a",
        "stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/pods/web-1","verb":verb,
        "user":{"username":"someone"},"objectRef":object_ref,
        "responseStatus":{"metadata":{},"code":200},"requestObject":request,"responseObject":response,
        "requestReceivedTimestamp":"2024-05-01T10:00:00.000000Z","stageTimestamp":"2024-05-01T10:00:00.001000Z"
    }))
}

fn pod(node: Option<&str>, phase: Option<&str>, labels: Value) -> Value {
    let mut p = json!({"kind":"Pod","apiVersion":"v1",
        "metadata":{"name":"web-1","namespace":"shop","uid":"p1","labels":labels},
        "spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    if let Some(ph) = phase {
        p["status"] = json!({"phase": ph});
    }
    p
}

#[test]
fn a_status_patch_is_not_credited_with_the_binding() {
    let d = Decorator::new(DecorateConfig::default());
    let web1 = kubetrail_model::ObjectRef {
        group: String::new(),
        resource: "pods".into(),
        namespace: "shop".into(),
        name: "web-1".into(),
        uid: None,
        cluster: None,
    };
    let created = pod(None, Some("Pending"), json!({"app":"web"}));
    d.decorate(
        "c",
        &web1,
        &pod_event("create", None, created.clone(), created),
    );
    // The scheduler binds the Pod: the answer is a Status, so the state is not seen.
    let status = json!({"kind":"Status","apiVersion":"v1","status":"Success","code":201});
    let binding =
        json!({"kind":"Binding","apiVersion":"v1","target":{"kind":"Node","name":"node-1"}});
    let b = d.decorate(
        "c",
        &web1,
        &pod_event("create", Some("binding"), binding, status),
    );
    assert!(!b.had_prior_state);
    // The kubelet's status patch returns the Pod, now with `spec.nodeName`.
    let patch = json!({"status":{"phase":"Running"}});
    let after = pod(Some("node-1"), Some("Running"), json!({"app":"web"}));
    let k = d.decorate(
        "c",
        &web1,
        &pod_event("patch", Some("status"), patch, after),
    );
    assert!(k.had_prior_state);
    assert_eq!(
        k.changes,
        vec![change("status.phase", Some("Pending"), Some("Running"))]
    );
    assert_eq!(
        k.unattributed,
        vec![change("spec.nodeName", None, Some("node-1"))]
    );
    assert!(!k.noop);
}

#[test]
fn a_patch_is_credited_only_with_the_fields_it_names() {
    let d = Decorator::new(DecorateConfig::default());
    let web1 = kubetrail_model::ObjectRef {
        group: String::new(),
        resource: "pods".into(),
        namespace: "shop".into(),
        name: "web-1".into(),
        uid: None,
        cluster: None,
    };
    let created = pod(Some("node-1"), Some("Running"), json!({"app":"web"}));
    d.decorate(
        "c",
        &web1,
        &pod_event("create", None, created.clone(), created),
    );
    // A label patch whose answer also shows a status change the kubelet made unseen.
    let patch = json!({"metadata":{"labels":{"tier":"front"}}});
    let after = pod(
        Some("node-1"),
        Some("Succeeded"),
        json!({"app":"web","tier":"front"}),
    );
    let l = d.decorate("c", &web1, &pod_event("patch", None, patch, after.clone()));
    assert_eq!(
        l.changes,
        vec![change("metadata.labels.tier", None, Some("front"))]
    );
    assert_eq!(
        l.unattributed,
        vec![change("status.phase", Some("Running"), Some("Succeeded"))]
    );
    // A patch that names a field without changing it: a no-op, whatever others did.
    let again = json!({"metadata":{"labels":{"tier":"front"}}});
    let mut later = after;
    later["metadata"]["labels"]["extra"] = json!("x");
    let n = d.decorate("c", &web1, &pod_event("patch", None, again, later));
    assert!(n.noop && n.changes.is_empty());
    assert_eq!(
        n.unattributed,
        vec![change("metadata.labels.extra", None, Some("x"))]
    );
}
