//! Pipeline behaviour on small hand-written streams.

mod common;

use common::*;
use kubetrail_model::{AuditEvent, SpanKind};

#[allow(clippy::too_many_arguments)]
fn ev(
    id: &str,
    stage: &str,
    verb: &str,
    uri: &str,
    obj: &str,
    body: &str,
    t0: &str,
    t1: &str,
) -> AuditEvent {
    serde_json::from_str(&format!(
        r#"{{"level":"RequestResponse","auditID":"{id}","stage":"{stage}","requestURI":"{uri}","verb":"{verb}","user":{{"username":"system:serviceaccount:kube-system:replicaset-controller"}},"userAgent":"kube-controller-manager/v1.30.0 (linux/amd64) kubernetes/abc/system:serviceaccount:kube-system:replicaset-controller","objectRef":{obj},"responseStatus":{{"code":200}}{body},"requestReceivedTimestamp":"{t0}","stageTimestamp":"{t1}"}}"#
    ))
    .unwrap()
}

const POD: &str = r#"{"resource":"pods","namespace":"shop","name":"web-1-a","apiVersion":"v1"}"#;

#[test]
fn stages_of_one_request_make_one_span() {
    let a = ev(
        "r1",
        "RequestReceived",
        "update",
        "/api/v1/namespaces/shop/pods/web-1-a",
        POD,
        "",
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00Z",
    );
    let b = ev(
        "r1",
        "ResponseComplete",
        "update",
        "/api/v1/namespaces/shop/pods/web-1-a",
        POD,
        "",
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.02Z",
    );
    let (spans, p) = run([a.clone(), b.clone(), b]);
    let reqs: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Request)
        .collect();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].end - reqs[0].start, 20_000_000);
    assert!(reqs[0].attr("kubetrail.audit.incomplete").is_none());
    assert_eq!(p.stats().duplicates, 1);
    // Only an early stage: released at the end, marked incomplete.
    let (spans, p) = run([a]);
    let req = spans.iter().find(|s| s.kind == SpanKind::Request).unwrap();
    assert_eq!(req.attr("kubetrail.audit.incomplete"), Some(&true.into()));
    assert_eq!(p.stats().incomplete, 1);
}

/// A live source's wall clock runs far ahead of a backlog's event time (an API server
/// catching up, a consumer behind). A wall-clock advance between a request's early stage and
/// its final one (two webhook batches) must not release the early stage on its own: the
/// request still makes one complete span, and its final stage is not dropped as a repeat.
#[test]
fn a_backlog_request_split_by_a_wall_clock_tick_is_still_one_complete_span() {
    use kubetrail_model::SpanRecord;
    let uri = "/api/v1/namespaces/shop/pods/web-1-a";
    let t0 = "2024-01-01T00:00:00Z";
    let early = ev("r1", "RequestReceived", "update", uri, POD, "", t0, t0);
    let done = ev(
        "r1",
        "ResponseComplete",
        "update",
        uri,
        POD,
        "",
        t0,
        "2024-01-01T00:00:00.02Z",
    );
    let wall = early.start_time().unwrap() + 3_600_000_000_000; // an hour later
    let mut p = kubetrail_pipeline::Pipeline::new(kubetrail_pipeline::PipelineConfig::default());
    let mut out: Vec<SpanRecord> = Vec::new();
    p.advance(wall, &mut out);
    p.push("c", early, &mut out);
    p.advance(wall + 1_000_000_000, &mut out); // the tick between the two batches
    assert!(
        out.iter().all(|s| s.kind != SpanKind::Request),
        "the early stage waits for its final one"
    );
    p.push("c", done, &mut out);
    p.finish(&mut out);
    let reqs: Vec<_> = out.iter().filter(|s| s.kind == SpanKind::Request).collect();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].attr("kubetrail.audit.incomplete").is_none());
    assert_eq!(reqs[0].end - reqs[0].start, 20_000_000);
    let stats = p.stats();
    assert_eq!((stats.incomplete, stats.duplicates), (0, 0));

    // Held for the whole timeout of wall time with no final stage: released, incomplete.
    let early = ev("r2", "RequestReceived", "update", uri, POD, "", t0, t0);
    let mut p = kubetrail_pipeline::Pipeline::new(kubetrail_pipeline::PipelineConfig::default());
    let mut out: Vec<SpanRecord> = Vec::new();
    p.advance(wall, &mut out);
    p.push("c", early, &mut out);
    p.advance(wall + 301_000_000_000, &mut out);
    let req = out.iter().find(|s| s.kind == SpanKind::Request).unwrap();
    assert_eq!(req.attr("kubetrail.audit.incomplete"), Some(&true.into()));
}

#[test]
fn pod_under_replicaset_under_deployment_and_families_are_independent() {
    let rs_body = r#","responseObject":{"kind":"ReplicaSet","metadata":{"name":"web-1","namespace":"shop","uid":"rs1","ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"web","uid":"d1","controller":true}]}}"#;
    let pod_body = r#","responseObject":{"kind":"Pod","metadata":{"name":"web-1-a","namespace":"shop","uid":"p1","ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-1","uid":"rs1","controller":true}]}}"#;
    let rs = ev(
        "a",
        "ResponseComplete",
        "create",
        "/apis/apps/v1/namespaces/shop/replicasets",
        r#"{"resource":"replicasets","namespace":"shop","apiGroup":"apps","apiVersion":"v1"}"#,
        rs_body,
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:01.01Z",
    );
    let pod = ev(
        "b",
        "ResponseComplete",
        "create",
        "/api/v1/namespaces/shop/pods",
        r#"{"resource":"pods","namespace":"shop","apiVersion":"v1"}"#,
        pod_body,
        "2024-01-01T00:00:02Z",
        "2024-01-01T00:00:02.01Z",
    );
    let other = ev(
        "c",
        "ResponseComplete",
        "update",
        "/api/v1/namespaces/other/configmaps/x",
        r#"{"resource":"configmaps","namespace":"other","name":"x","apiVersion":"v1"}"#,
        "",
        "2024-01-01T00:00:01.5Z",
        "2024-01-01T00:00:01.6Z",
    );
    let (spans, _) = run([rs.clone(), other.clone(), pod.clone()]);
    insta::assert_snapshot!(outline(&spans), @r"
    deployments.apps/shop/web [Int(0)]
      replicasets.apps/shop/web-1 [Int(1)]
        - create replicasets by replicaset-controller Int(200)
        pods/shop/web-1-a [Int(1)]
          - create pods by replicaset-controller Int(200)

    configmaps/other/x [Int(1)]
      - update configmaps by replicaset-controller Int(200)
    ");
    // The deployment root spans its descendants' requests.
    let root = spans.iter().find(|s| s.name == "deployments.apps").unwrap();
    assert_eq!(root.start, rs.start_time().unwrap());
    assert_eq!(root.end, pod.end_time().unwrap());
    // Independent families in another order: the same ids.
    let (again, _) = run([other, rs, pod]);
    let ids = |v: &[kubetrail_model::SpanRecord]| {
        let mut x: Vec<_> = v
            .iter()
            .map(|s| (s.trace_id, s.span_id, s.parent_span_id))
            .collect();
        x.sort();
        x
    };
    assert_eq!(ids(&spans), ids(&again));
}

#[test]
fn recreation_under_the_same_name_is_a_new_span() {
    let del = ev(
        "d",
        "ResponseComplete",
        "delete",
        "/api/v1/namespaces/shop/pods/web-1-a",
        POD,
        "",
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:01.01Z",
    );
    let create = ev(
        "e",
        "ResponseComplete",
        "create",
        "/api/v1/namespaces/shop/pods",
        r#"{"resource":"pods","namespace":"shop","apiVersion":"v1"}"#,
        r#","responseObject":{"kind":"Pod","metadata":{"name":"web-1-a","uid":"p2"}}"#,
        "2024-01-01T00:00:02Z",
        "2024-01-01T00:00:02.01Z",
    );
    let (spans, p) = run([del, create]);
    let pods: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Object)
        .collect();
    assert_eq!(pods.len(), 2);
    assert_ne!(pods[0].span_id, pods[1].span_id);
    assert_eq!(pods[0].trace_id, pods[1].trace_id);
    assert_eq!(p.stats().aggregate.recreations, 1);
}

#[test]
fn quiet_family_is_emitted_and_later_activity_continues_it() {
    let a = ev(
        "1",
        "ResponseComplete",
        "update",
        "/api/v1/namespaces/shop/pods/web-1-a",
        POD,
        "",
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.01Z",
    );
    let b = ev(
        "2",
        "ResponseComplete",
        "update",
        "/api/v1/namespaces/shop/pods/web-1-a",
        POD,
        "",
        "2024-01-01T00:05:00Z",
        "2024-01-01T00:05:00.01Z",
    );
    let mut p = kubetrail_pipeline::Pipeline::new(Default::default());
    let mut out = vec![];
    p.push("c", a, &mut out);
    assert_eq!(out.len(), 1, "the request span is emitted at once");
    p.push("c", b, &mut out);
    // The second event's time is past the linger: the first segment's object span was emitted.
    let objects: Vec<_> = out.iter().filter(|s| s.kind == SpanKind::Object).collect();
    assert_eq!(objects.len(), 1);
    p.finish(&mut out);
    let objects: Vec<_> = out.iter().filter(|s| s.kind == SpanKind::Object).collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(
        objects[0].trace_id, objects[1].trace_id,
        "same window, same trace"
    );
    assert_ne!(objects[0].span_id, objects[1].span_id);
    assert_eq!(p.stats().aggregate.continuations, 1);
}

#[test]
fn traceparent_annotations_become_span_links_and_bad_ones_are_counted() {
    let body = r#","responseObject":{"kind":"GameServerSet","metadata":{"name":"gss","namespace":"shop","uid":"g1","annotations":{"game.kruise.io/traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","trace.kubernetes.io/span":"garbage","trace.kubernetes.io/objsetid":"set-7"}}}"#;
    let e = ev(
        "l1",
        "ResponseComplete",
        "update",
        "/apis/game.kruise.io/v1alpha1/namespaces/shop/gameserversets/gss",
        r#"{"resource":"gameserversets","namespace":"shop","name":"gss","apiGroup":"game.kruise.io","apiVersion":"v1alpha1"}"#,
        body,
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.01Z",
    );
    let (spans, p) = run([e]);
    assert_eq!(p.stats().malformed_traceparents, 1);
    for kind in [SpanKind::Request, SpanKind::Object] {
        let s = spans.iter().find(|s| s.kind == kind).unwrap();
        assert_eq!(s.links.len(), 1, "{kind:?}");
        assert_eq!(
            s.links[0].trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(s.links[0].span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(s.attr_str("kubetrail.object.objsetid"), Some("set-7"));
    }
}

#[test]
fn pod_links_to_its_node_and_parent_link_annotation_wins_across_clusters() {
    use kubetrail_model::ids;
    // A Pod scheduled on worker-1, with an owner reference AND a Kelemetry parent-link
    // annotation naming a Deployment in another cluster: the annotation wins.
    let pod = r#","responseObject":{"kind":"Pod","metadata":{"name":"web-1-a","namespace":"shop","uid":"p1",
        "annotations":{"kelemetry.kubewharf.io/parent-link":"{\"cluster\":\"hub\",\"group\":\"apps\",\"resource\":\"deployments\",\"namespace\":\"fleet\",\"name\":\"web\"}"},
        "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-1","uid":"rs1","controller":true}]},
        "spec":{"nodeName":"worker-1"}}"#;
    let e = ev(
        "n1",
        "ResponseComplete",
        "update",
        "/api/v1/namespaces/shop/pods/web-1-a",
        POD,
        pod,
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.01Z",
    );
    let (spans, _) = run([e]);
    let window = 1_704_067_200_000_000_000; // 2024-01-01T00:00:00Z is a window boundary
    let hub_deployment = kubetrail_model::ObjectRef {
        group: "apps".into(),
        resource: "deployments".into(),
        namespace: "fleet".into(),
        name: "web".into(),
        uid: None,
        cluster: Some("hub".into()),
    };
    let pod_span = spans.iter().find(|s| s.name == "pods").unwrap();
    // The family's trace is the hub Deployment's, and the pod hangs directly under it.
    assert_eq!(
        pod_span.trace_id,
        ids::trace_id("hub", &hub_deployment, window)
    );
    assert_eq!(
        pod_span.parent_span_id,
        Some(ids::object_span_id("hub", &hub_deployment, window, 0))
    );
    let root = spans.iter().find(|s| s.name == "deployments.apps").unwrap();
    assert_eq!(root.cluster, "hub");
    assert_eq!(root.attr_str("k8s.cluster.name"), Some("hub"));
    assert_eq!(pod_span.cluster, "test");
    // The Node is a secondary link into the node's own trace, not a parent.
    let node = kubetrail_model::ObjectRef {
        resource: "nodes".into(),
        name: "worker-1".into(),
        ..Default::default()
    };
    assert_eq!(pod_span.links.len(), 1);
    assert_eq!(
        pod_span.links[0].trace_id,
        ids::trace_id("test", &node, window)
    );
    assert_eq!(
        pod_span.links[0].span_id,
        ids::object_span_id("test", &node, window, 0)
    );
    assert_eq!(pod_span.links[0].attributes[0].1, "pod-node".into());
}

#[test]
fn configured_field_rule_makes_a_parent() {
    // A custom rule: ConfigMaps are placed under the Deployment named in .data.owner.
    let cfg: kubetrail_pipeline::PipelineConfig = serde_yaml::from_str(
        r#"
link:
  rules:
    - name: cm-owner
      resources: [configmaps]
      field: data.owner
      target: deployments.apps
      relation: parent
"#,
    )
    .unwrap();
    let cm = r#","responseObject":{"kind":"ConfigMap","metadata":{"name":"cfg","namespace":"shop","uid":"c1"},"data":{"owner":"web"}}"#;
    let e = ev(
        "c1",
        "ResponseComplete",
        "update",
        "/api/v1/namespaces/shop/configmaps/cfg",
        r#"{"resource":"configmaps","namespace":"shop","name":"cfg","apiVersion":"v1"}"#,
        cm,
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.01Z",
    );
    let mut p = kubetrail_pipeline::Pipeline::new(cfg);
    let mut out = vec![];
    p.push("c", e, &mut out);
    p.finish(&mut out);
    insta::assert_snapshot!(outline(&out), @r"
    deployments.apps/shop/web [Int(0)]
      configmaps/shop/cfg [Int(1)]
        - update configmaps by replicaset-controller Int(200)
    ");
}
