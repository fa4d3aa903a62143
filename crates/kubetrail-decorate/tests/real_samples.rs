//! The decorate stage on real audit logs (testdata/audit-samples) and on a generated rollout.

mod common;

use common::*;
use kubetrail_decorate::{DecorateConfig, Decoration, Decorator, RedactConfig, Salt, redact_event};
use kubetrail_model::{AuditEvent, Stage};
use serde_json::{Value, json};

/// Every normalised sample file (`raw/` holds the originals; MANIFEST.md is prose).
fn all_samples() -> Vec<String> {
    let root = sample_path("");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        // The verbatim cloud export envelopes are not normalised Events (see MANIFEST.md).
        let envelopes = [
            "khi-gke-cloud-logging",
            "otel-collector-contrib-cloud-exports",
        ];
        if !dir.is_dir()
            || dir
                .file_name()
                .is_some_and(|n| envelopes.iter().any(|e| n == *e))
        {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                out.push(
                    f.strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

fn decorate(d: &Decorator, e: &AuditEvent) -> Option<Decoration> {
    let o = place(e)?;
    Some(d.decorate("c", &o, e))
}

fn line(rel: &str, i: usize) -> Value {
    let text = std::fs::read_to_string(sample_path(rel)).unwrap();
    serde_json::from_str(text.lines().nth(i).unwrap()).unwrap()
}

#[test]
fn every_sample_goes_through_without_surprises() {
    let d = Decorator::new(DecorateConfig::default());
    let salt = Salt::random();
    let mut snapshots = 0;
    let mut events = 0;
    for rel in &all_samples() {
        for mut e in sample_events(rel) {
            events += 1;
            redact_event(&mut e, &RedactConfig::default(), &salt);
            let Some(out) = decorate(&d, &e) else {
                continue;
            };
            if !out.had_prior_state {
                assert!(out.changes.is_empty() && !out.noop, "{rel}: {out:?}");
            }
            if let Some(s) = &out.snapshot {
                snapshots += 1;
                assert!(
                    matches!(e.verb.as_str(), "create" | "delete"),
                    "{rel}: {}",
                    e.verb
                );
                assert!(!s.contains("managedFields"), "{rel}: {s}");
            }
        }
    }
    assert_eq!(events, 266, "every real event");
    assert!(snapshots > 30, "{snapshots}");
    let (bytes, entries) = d.cache_size();
    assert!(entries > 0 && bytes > 0);
}

#[test]
fn lease_get_then_patch_shows_the_renewal() {
    // audit_in.log: strimzi reads its lease (line 53), then patches it (line 56).
    let rel = "openshift-cluster-logging-operator/audit_in.log";
    let d = Decorator::new(DecorateConfig::default());
    let events: Vec<AuditEvent> = sample_events(rel)
        .into_iter()
        .filter(|e| {
            e.object_ref
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some("strimzi-cluster-operator"))
        })
        .collect();
    let verbs: Vec<&str> = events.iter().map(|e| e.verb.as_str()).collect();
    assert_eq!(verbs, ["get", "patch"]);
    let outs: Vec<Decoration> = events.iter().map(|e| decorate(&d, e).unwrap()).collect();
    assert_eq!(outs[0], Decoration::default());
    let patch = &outs[1];
    assert!(patch.had_prior_state && !patch.noop);
    assert_eq!(patch.changes.len(), 1, "{:?}", patch.changes);
    let c = &patch.changes[0];
    assert_eq!(c.path, "spec.renewTime");
    assert_eq!(c.old.as_deref(), Some("2023-06-12T13:30:24.570657Z"));
    assert_eq!(c.new.as_deref(), Some("2023-06-12T13:30:26.570931Z"));
}

#[test]
fn deployment_patch_then_an_image_change() {
    // audit_in.log line 5: the network operator patches multus-admission-controller.
    let rel = "openshift-cluster-logging-operator/audit_in.log";
    let first = line(rel, 4);
    assert_eq!(first["verb"], "patch");
    let d = Decorator::new(DecorateConfig::default());
    let out = decorate(&d, &event(first.clone())).unwrap();
    assert!(!out.had_prior_state, "nothing seen before: no diff");

    // The next patch: a new kube-rbac-proxy image, containers listed in another order, a new
    // resourceVersion and generation, fresh managedFields and condition update times.
    let mut next = first;
    next["auditID"] = json!("next");
    let resp = &mut next["responseObject"];
    resp["metadata"]["resourceVersion"] = json!("7166999");
    resp["metadata"]["generation"] = json!(5);
    resp["metadata"]["managedFields"] =
        json!([{"manager":"cluster-network-operator/operconfig","operation":"Apply"}]);
    let containers = resp["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap();
    containers.reverse();
    let proxy = containers
        .iter_mut()
        .find(|c| c["name"] == "kube-rbac-proxy")
        .unwrap();
    let old_image = proxy["image"].as_str().unwrap().to_owned();
    proxy["image"] = json!("quay.io/openshift/kube-rbac-proxy:4.13");
    resp["status"]["observedGeneration"] = json!(5);
    resp["status"]["conditions"][0]["lastUpdateTime"] = json!("2023-06-12T13:31:00Z");
    let out = decorate(&d, &event(next)).unwrap();
    assert!(out.had_prior_state);
    assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
    let c = &out.changes[0];
    assert_eq!(
        c.path,
        "spec.template.spec.containers[name=kube-rbac-proxy].image"
    );
    assert_eq!(c.old.as_deref(), Some(old_image.as_str()));
    assert_eq!(
        c.new.as_deref(),
        Some("quay.io/openshift/kube-rbac-proxy:4.13")
    );
}

#[test]
fn crd_status_update() {
    // audit_in.log line 3: OLM updates catalogsources/status of certified-operators.
    let rel = "openshift-cluster-logging-operator/audit_in.log";
    let first = line(rel, 2);
    assert_eq!(first["objectRef"]["subresource"], "status");
    let d = Decorator::new(DecorateConfig::default());
    assert!(!decorate(&d, &event(first.clone())).unwrap().had_prior_state);

    // The same update again (a resync): a no-op.
    let mut again = first.clone();
    again["responseObject"]["metadata"]["resourceVersion"] = json!("8932999");
    let out = decorate(&d, &event(again.clone())).unwrap();
    assert!(out.had_prior_state && out.noop, "{:?}", out.changes);

    // The registry pod came up.
    let mut fixed = again;
    let st = &mut fixed["responseObject"]["status"];
    st["message"] = json!("");
    st["reason"] = json!("");
    st["connectionState"]["lastConnect"] = json!("2023-06-12T13:31:15Z");
    let out = decorate(&d, &event(fixed)).unwrap();
    let paths: Vec<&str> = out.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "status.connectionState.lastConnect",
            "status.message",
            "status.reason"
        ]
    );
    assert_eq!(out.changes[2].old.as_deref(), Some("RegistryServerError"));
    assert_eq!(out.changes[2].new.as_deref(), Some(r#""""#));
}

#[test]
fn k3s_addon_unchanged_update_is_a_noop() {
    let rel = "gitops-reverser/k3s-addon-unchanged-rv-update-eventlist.jsonl";
    let e = sample_events(rel).remove(0);
    let d = Decorator::new(DecorateConfig::default());
    assert!(!decorate(&d, &e).unwrap().had_prior_state);
    let out = decorate(&d, &e).unwrap();
    assert!(out.had_prior_state && out.noop);
}

#[test]
fn request_level_custom_resource_patches_give_no_diff() {
    // kubeprovenance: a Postgres created and patched 5 times, recorded at Request level.
    let d = Decorator::new(DecorateConfig::default());
    let outs: Vec<(String, Decoration)> = sample_events("kubeprovenance/minikube-sample-audit.log")
        .iter()
        .filter_map(|e| Some((e.verb.clone(), decorate(&d, e)?)))
        .collect();
    assert_eq!(outs.len(), 6);
    assert_eq!(outs[0].0, "create");
    let snap = outs[0].1.snapshot.as_deref().unwrap();
    assert!(
        snap.contains("client25") && snap.contains("postgres:9.3"),
        "{snap}"
    );
    for (verb, out) in &outs[1..] {
        assert_eq!(verb, "patch");
        assert_eq!(
            out,
            &Decoration::default(),
            "a patch body is not the object"
        );
    }
}

#[test]
fn generated_rollout_shows_the_image_change_and_pod_status() {
    let stream = kubetrail_gen::RolloutScenario::default().generate();
    let d = Decorator::new(DecorateConfig::default());
    let mut image_change = None;
    let mut ready = 0;
    let mut diffs = 0;
    for v in &stream.events {
        let mut e: AuditEvent = serde_json::from_value(v.clone()).unwrap();
        if e.stage != Stage::ResponseComplete {
            continue;
        }
        d.redact(&mut e);
        let Some(out) = decorate(&d, &e) else {
            continue;
        };
        diffs += usize::from(out.had_prior_state);
        let r = e.object_ref.as_ref().unwrap();
        if r.resource.as_deref() == Some("deployments") && e.verb == "patch" {
            image_change = Some(out.changes.clone());
        }
        if r.resource.as_deref() == Some("pods")
            && out.changes.iter().any(|c| {
                c.path == "status.conditions[type=Ready].status" && c.new.as_deref() == Some("True")
            })
        {
            ready += 1;
        }
    }
    let changes = image_change.expect("the kubectl patch");
    assert!(
        changes.iter().any(
            |c| c.path == "spec.template.spec.containers[name=nginx].image"
                && c.old.as_deref() == Some("nginx:1.25")
                && c.new.as_deref() == Some("nginx:1.27")
        ),
        "{changes:?}"
    );
    assert!(ready >= 3, "pods turning Ready: {ready}");
    assert!(diffs > 20, "{diffs}");
}
