//! The pipeline on real audit captures (`testdata/audit-samples`): snapshots of the traces
//! it builds, and the links the real data lets us check by hand.

mod common;

use common::*;
use kubetrail_model::SpanKind;

fn outline_of(rel: &str) -> String {
    let (spans, _) = run(read_events(&samples().join(rel)));
    outline(&spans)
}

#[test]
fn snapshot_openshift_operator_chains() {
    insta::assert_snapshot!(outline_of(
        "openshift-cluster-logging-operator/audit_in.log"
    ));
}

#[test]
fn snapshot_falco_replicaset_pods() {
    let mut events = vec![];
    let dir = samples().join("falco-trace-files-k8s-audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        events.extend(read_events(&f));
    }
    events.sort_by_key(|e| e.stage_timestamp);
    let (spans, _) = run(events);
    insta::assert_snapshot!(outline(&spans));
}

#[test]
fn snapshot_gitops_reverser_and_sysdig() {
    let mut text = String::new();
    for f in [
        "gitops-reverser/config-deletecollection.jsonl",
        "gitops-reverser/flux-secret-dryrun-patch-eventlist.jsonl",
        "gitops-reverser/k3s-addon-unchanged-rv-update-eventlist.jsonl",
        "sysdiglabs-aks-audit-log/sample_KubeAuditLog_event.jsonl",
        "kubeprovenance/minikube-sample-audit.log",
    ] {
        text.push_str(&format!("## {f}\n{}\n", outline_of(f)));
    }
    insta::assert_snapshot!(text);
}

#[test]
fn controller_revision_is_placed_under_its_daemonset() {
    let (spans, _) = run(read_events(
        &samples().join("sysdiglabs-aks-audit-log/sample_KubeAuditLog_event.jsonl"),
    ));
    let root = spans
        .iter()
        .find(|s| s.kind == SpanKind::Object && s.parent_span_id.is_none())
        .unwrap();
    assert_eq!(
        root.attr_str("kubetrail.object.ref"),
        Some("daemonsets.apps/kube-system/kube-proxy")
    );
    assert_eq!(root.attr_str("k8s.daemonset.name"), Some("kube-proxy"));
    let rev = spans
        .iter()
        .find(|s| s.name == "controllerrevisions.apps")
        .unwrap();
    assert_eq!(rev.parent_span_id, Some(root.span_id));
    assert_eq!(rev.trace_id, root.trace_id);
    let req = spans.iter().find(|s| s.kind == SpanKind::Request).unwrap();
    assert_eq!(req.parent_span_id, Some(rev.span_id));
    assert_eq!(req.service, "daemon-set-controller");
    assert_eq!(req.name, "update controllerrevisions");
}

#[test]
fn every_real_mutating_request_becomes_exactly_one_span() {
    let mut events = vec![];
    let mut stack = vec![samples()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                // raw/ originals and the verbatim cloud export envelopes are not the
                // normalised 266 events (tests/cloud_samples.rs replays those).
                let name = p.file_name().unwrap();
                if name != "raw"
                    && name != "khi-gke-cloud-logging"
                    && name != "otel-collector-contrib-cloud-exports"
                {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x != "md") {
                events.extend(read_events(&p));
            }
        }
    }
    assert_eq!(events.len(), 266);
    let expected: std::collections::BTreeSet<_> = events
        .iter()
        .filter(|e| e.is_mutating())
        .filter(|e| {
            e.object_ref
                .as_ref()
                .is_some_and(|r| r.resource.is_some() && r.resource.as_deref() != Some("leases"))
        })
        .filter(|e| {
            !e.object_ref
                .as_ref()
                .and_then(|r| r.resource.as_deref())
                .is_some_and(|r| r.ends_with("reviews"))
        })
        .filter(|e| !e.request_uri.contains("dryRun="))
        .map(|e| e.audit_id.clone())
        .collect();
    let (spans, p) = run(events);
    let got: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Request)
        .filter(|s| s.attr("kubetrail.audit.deletecollection").is_none())
        .map(|s| s.attr_str("kubetrail.audit.id").unwrap().to_owned())
        .collect();
    // deletecollection responses that list their items: a delete span on each item. The
    // ConfigMap capture lists 6; the flunders proxy capture lists 2, but it is the same request
    // (same auditID) as the hollow "official" copy read before it, so it is merged away.
    let items = spans
        .iter()
        .filter(|s| s.attr("kubetrail.audit.deletecollection").is_some())
        .count();
    assert_eq!(items, 6);
    let got_set: std::collections::BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "a request became two spans");
    // The two gitops-reverser "official/proxy" pairs are the same requests seen twice.
    assert_eq!(got_set, expected);
    let stats = p.stats();
    assert!(stats.filtered.get("verb").copied().unwrap_or(0) > 100);
    // Every request span hangs under an object span of its own trace.
    for r in spans.iter().filter(|s| s.kind == SpanKind::Request) {
        let parent = spans
            .iter()
            .find(|o| Some(o.span_id) == r.parent_span_id && o.trace_id == r.trace_id);
        assert!(
            parent.is_some_and(|o| o.kind == SpanKind::Object),
            "{} has no object parent",
            r.name
        );
    }
}
