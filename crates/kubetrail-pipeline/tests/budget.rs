//! Big families and long histories: the span budget per trace, owner summaries, and links from
//! window to window, on generated rollouts far above the budget.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use kubetrail_gen::RolloutScenario;
use kubetrail_model::ids::{SpanId, TraceId};
use kubetrail_model::{AttrValue, AuditEvent, SpanKind, SpanRecord};
use kubetrail_pipeline::{Pipeline, PipelineConfig};

fn events(replicas: u32, seed: u64) -> (Vec<AuditEvent>, kubetrail_gen::GroundTruth) {
    let stream = RolloutScenario {
        seed,
        replicas,
        with_noise: false,
        with_request_received_stage: false,
        ..RolloutScenario::default()
    }
    .generate();
    let events = stream
        .events
        .into_iter()
        .map(|v| serde_json::from_value(v).expect("generated events parse"))
        .collect();
    (events, stream.truth)
}

fn run_with(events: &[AuditEvent], config: PipelineConfig) -> (Vec<SpanRecord>, Pipeline) {
    let mut p = Pipeline::new(config);
    let mut out = vec![];
    for e in events {
        p.push("test", e.clone(), &mut out);
    }
    p.finish(&mut out);
    (out, p)
}

fn budget_config(max: usize) -> PipelineConfig {
    let mut c = PipelineConfig::default();
    c.aggregate.max_trace_spans = max;
    // Diffs and snapshots do not change where spans go; without them the test runs faster.
    c.decorate.diff.enabled = false;
    c.decorate.snapshot.on_create = false;
    c.decorate.snapshot.on_delete = false;
    c
}

fn int(s: &SpanRecord, k: &str) -> Option<i64> {
    match s.attr(k) {
        Some(AttrValue::Int(v)) => Some(*v),
        _ => None,
    }
}

fn link_rule(l: &kubetrail_model::SpanLinkRecord) -> Option<&str> {
    l.attributes.iter().find_map(|(k, v)| match v {
        AttrValue::Str(s) if k == "kubetrail.link.rule" => Some(s.as_str()),
        _ => None,
    })
}

/// The checks of a family cut into parts: budget, one span per request, parents inside their
/// trace, links resolving, everything reachable from the main trace's root.
/// With `roomy` (a budget that holds a rollout's owners and their requests), also: the
/// Deployment's own requests and both ReplicaSets are in the main trace.
fn check_cut(spans: &[SpanRecord], budget: usize, truth: &kubetrail_gen::GroundTruth, roomy: bool) {
    let by_id: HashMap<(TraceId, SpanId), &SpanRecord> =
        spans.iter().map(|s| ((s.trace_id, s.span_id), s)).collect();
    assert_eq!(by_id.len(), spans.len(), "no span is emitted twice");

    let mut per_trace: BTreeMap<TraceId, usize> = BTreeMap::new();
    for s in spans {
        *per_trace.entry(s.trace_id).or_default() += 1;
    }
    let largest = per_trace.values().copied().max().unwrap_or(0);
    assert!(
        largest <= budget,
        "largest trace has {largest} spans, budget {budget}"
    );
    assert!(per_trace.len() > 1, "the family was cut: {per_trace:?}");

    // Every request exactly one span.
    let requests: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Request)
        .collect();
    let audit_ids: BTreeSet<&str> = requests
        .iter()
        .filter_map(|r| r.attr_str("kubetrail.audit.id"))
        .collect();
    assert_eq!(audit_ids.len(), requests.len(), "one span per auditID");
    assert_eq!(
        requests.len(),
        truth.mutating_requests + truth.kube_events,
        "every request has its span"
    );

    // Parents are in the same trace; links we make resolve.
    for s in spans {
        if let Some(p) = s.parent_span_id {
            assert!(
                by_id.contains_key(&(s.trace_id, p)),
                "{} has its parent in its own trace",
                s.name
            );
        }
        for l in &s.links {
            let ours = link_rule(l).is_some_and(|r| {
                r.starts_with("part") || r == "owner" || r.starts_with("previous")
            });
            if ours {
                assert!(
                    by_id.contains_key(&(l.trace_id, l.span_id)),
                    "link {:?} of {} resolves",
                    link_rule(l),
                    s.name
                );
            }
        }
    }

    // Reachability from the main trace's root by parent edges (downwards) and links.
    let deployment = truth
        .objects
        .iter()
        .find(|o| o.resource == "deployments")
        .expect("a Deployment");
    let root = spans
        .iter()
        .find(|s| {
            s.kind == SpanKind::Object
                && s.parent_span_id.is_none()
                && s.attr("kubetrail.part.stand_in").is_none()
                && s.attr_str("kubetrail.object.name") == Some(deployment.name.as_str())
        })
        .expect("the Deployment's span is a root");
    let mut children: HashMap<(TraceId, SpanId), Vec<(TraceId, SpanId)>> = HashMap::new();
    for s in spans {
        if let Some(p) = s.parent_span_id {
            children
                .entry((s.trace_id, p))
                .or_default()
                .push((s.trace_id, s.span_id));
        }
    }
    let seen: HashSet<(TraceId, SpanId)> =
        kubetrail_testkit::reachable((root.trace_id, root.span_id), &children, |k| {
            by_id.get(k).into_iter().flat_map(|s| {
                s.links
                    .iter()
                    .map(|l| (l.trace_id, l.span_id))
                    .filter(|t| by_id.contains_key(t))
            })
        });
    let unreached: Vec<&str> = spans
        .iter()
        .filter(|s| !seen.contains(&(s.trace_id, s.span_id)))
        .map(|s| s.name.as_str())
        .take(5)
        .collect();
    assert!(
        unreached.is_empty(),
        "every span is reachable from the family root: {unreached:?}"
    );

    if roomy {
        // The Deployment's own requests stay in the main trace, under its span.
        let own: Vec<&&SpanRecord> = requests
            .iter()
            .filter(|r| r.attr_str("kubetrail.object.resource") == Some("deployments"))
            .collect();
        assert!(!own.is_empty());
        for r in own {
            assert_eq!(r.trace_id, root.trace_id, "{} is in the main trace", r.name);
            assert_eq!(r.parent_span_id, Some(root.span_id));
        }
        // Both ReplicaSets are in the main trace, directly under the Deployment.
        let replicasets: Vec<&SpanRecord> = spans
            .iter()
            .filter(|s| {
                s.kind == SpanKind::Object
                    && s.attr_str("kubetrail.object.resource") == Some("replicasets")
                    && s.attr("kubetrail.part.stand_in").is_none()
            })
            .collect();
        assert_eq!(replicasets.len(), 2);
        for rs in &replicasets {
            assert_eq!(rs.trace_id, root.trace_id);
            assert_eq!(rs.parent_span_id, Some(root.span_id));
        }
    }

    // Each object has one span; parts are counted right.
    let pods = truth
        .objects
        .iter()
        .filter(|o| o.resource == "pods")
        .count();
    let pod_spans = spans
        .iter()
        .filter(|s| {
            s.kind == SpanKind::Object
                && s.attr_str("kubetrail.object.resource") == Some("pods")
                && s.attr("kubetrail.part.stand_in").is_none()
        })
        .count();
    assert_eq!(pod_spans, pods);
    let stand_ins: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.attr("kubetrail.part.stand_in").is_some())
        .collect();
    assert_eq!(
        stand_ins.len(),
        per_trace.len() - 1,
        "one stand-in per part"
    );
    for st in &stand_ins {
        assert_eq!(st.parent_span_id, None);
        let in_trace: Vec<&SpanRecord> =
            spans.iter().filter(|s| s.trace_id == st.trace_id).collect();
        let objects = in_trace
            .iter()
            .filter(|s| s.kind == SpanKind::Object && s.span_id != st.span_id)
            .count();
        let reqs = in_trace
            .iter()
            .filter(|s| s.kind == SpanKind::Request)
            .count();
        assert_eq!(int(st, "kubetrail.part.objects"), Some(objects as i64));
        assert_eq!(int(st, "kubetrail.part.requests"), Some(reqs as i64));
        assert_eq!(
            int(st, "kubetrail.part.count"),
            Some(stand_ins.len() as i64)
        );
        assert_eq!(
            st.attr_str("kubetrail.part.main_trace"),
            Some(root.trace_id.to_string().as_str())
        );
        assert!(
            st.links.iter().any(|l| link_rule(l) == Some("part-owner")),
            "a part links back to its owner"
        );
    }

    // The Deployment's span summarises its subtree.
    assert_eq!(
        int(root, "kubetrail.subtree.objects.Pod"),
        Some(pods as i64)
    );
    assert_eq!(int(root, "kubetrail.subtree.objects.ReplicaSet"), Some(2));
    assert_eq!(
        int(root, "kubetrail.subtree.objects"),
        Some(pods as i64 + 2)
    );
    assert_eq!(
        int(root, "kubetrail.subtree.requests"),
        Some(requests.len() as i64)
    );
    assert_eq!(
        int(root, "kubetrail.subtree.failed_requests"),
        Some(truth.failed_requests as i64)
    );
    assert!(int(root, "kubetrail.subtree.warnings").is_some());
}

fn ids(spans: &[SpanRecord]) -> Vec<(TraceId, SpanId, Option<SpanId>)> {
    let mut v: Vec<_> = spans
        .iter()
        .map(|s| (s.trace_id, s.span_id, s.parent_span_id))
        .collect();
    v.sort();
    v
}

#[test]
fn a_rollout_of_thousands_of_pods_is_cut_within_the_budget() {
    let (events, truth) = events(1200, 7);
    let pods = truth
        .objects
        .iter()
        .filter(|o| o.resource == "pods")
        .count();
    assert!(pods >= 2_000, "thousands of pods: {pods}");
    let (spans, p) = run_with(&events, budget_config(2_000));
    assert!(
        spans.len() > 8 * 2_000,
        "far above the budget: {}",
        spans.len()
    );
    check_cut(&spans, 2_000, &truth, true);
    assert!(p.stats().aggregate.parts > 0);

    // Same input, same cut, same ids.
    let (again, _) = run_with(&events, budget_config(2_000));
    assert_eq!(ids(&spans), ids(&again));
    assert_eq!(spans, again);
}

#[test]
fn a_small_budget_cuts_deeper_and_still_holds() {
    // A smaller family with a small budget: parts of the ReplicaSets, and chains of parts.
    let (events, truth) = events(150, 3);
    let (spans, _) = run_with(&events, budget_config(64));
    check_cut(&spans, 64, &truth, false);
    let chained = spans
        .iter()
        .any(|s| s.links.iter().any(|l| link_rule(l) == Some("part-next")));
    assert!(chained, "an owner with many parts chains them");
}

#[test]
fn a_family_within_the_budget_is_one_trace() {
    let (events, truth) = events(3, 1);
    let (spans, p) = run_with(&events, budget_config(2_000));
    let traces: BTreeSet<TraceId> = spans.iter().map(|s| s.trace_id).collect();
    assert_eq!(traces.len(), 1);
    assert_eq!(p.stats().aggregate.parts, 0);
    assert!(
        spans
            .iter()
            .all(|s| s.attr("kubetrail.part.index").is_none())
    );
    let root = spans
        .iter()
        .find(|s| s.kind == SpanKind::Object && s.parent_span_id.is_none())
        .expect("root");
    let pods = truth
        .objects
        .iter()
        .filter(|o| o.resource == "pods")
        .count();
    assert_eq!(
        int(root, "kubetrail.subtree.objects.Pod"),
        Some(pods as i64)
    );
}

// ---------------------------------------------------------------------------------------
// Windows lead to each other.

fn ev(id: &str, verb: &str, uri: &str, obj: &str, body: &str, t0: &str, t1: &str) -> AuditEvent {
    serde_json::from_str(&format!(
        r#"{{"level":"RequestResponse","auditID":"{id}","stage":"ResponseComplete","requestURI":"{uri}","verb":"{verb}","user":{{"username":"system:serviceaccount:kube-system:deployment-controller"}},"userAgent":"kube-controller-manager/v1.30.0","objectRef":{obj},"responseStatus":{{"code":200}}{body},"requestReceivedTimestamp":"{t0}","stageTimestamp":"{t1}"}}"#
    ))
    .expect("event")
}

#[test]
fn three_windows_chain_back_through_links() {
    const DEP: &str = r#"{"resource":"deployments","namespace":"shop","name":"web","apiGroup":"apps","apiVersion":"v1"}"#;
    const RS: &str = r#"{"resource":"replicasets","namespace":"shop","name":"web-1","apiGroup":"apps","apiVersion":"v1"}"#;
    let rs_body = r#","responseObject":{"kind":"ReplicaSet","metadata":{"name":"web-1","namespace":"shop","uid":"rs1","ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"web","uid":"d1","controller":true}]}}"#;
    let dep_body = r#","responseObject":{"kind":"Deployment","metadata":{"name":"web","namespace":"shop","uid":"d1"}}"#;
    let mut config = PipelineConfig::default();
    config.aggregate.window = Duration::from_secs(600);
    let mut events = Vec::new();
    for (w, minute) in [(0, "00"), (1, "10"), (2, "20")] {
        let t0 = format!("2024-01-01T00:{minute}:05Z");
        let t1 = format!("2024-01-01T00:{minute}:05.01Z");
        events.push(ev(
            &format!("d{w}"),
            "patch",
            "/apis/apps/v1/namespaces/shop/deployments/web",
            DEP,
            dep_body,
            &t0,
            &t1,
        ));
        events.push(ev(
            &format!("r{w}"),
            "update",
            "/apis/apps/v1/namespaces/shop/replicasets/web-1",
            RS,
            rs_body,
            &t0,
            &t1,
        ));
    }
    let (spans, _) = run_with(&events, config.clone());
    let objects: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Object)
        .collect();
    let traces: BTreeSet<TraceId> = objects.iter().map(|s| s.trace_id).collect();
    assert_eq!(traces.len(), 3, "one trace per window");
    let by_id: HashMap<(TraceId, SpanId), &SpanRecord> =
        spans.iter().map(|s| ((s.trace_id, s.span_id), s)).collect();
    for resource in ["deployments", "replicasets"] {
        let mut mine: Vec<&&SpanRecord> = objects
            .iter()
            .filter(|s| s.attr_str("kubetrail.object.resource") == Some(resource))
            .collect();
        mine.sort_by_key(|s| s.start);
        assert_eq!(mine.len(), 3);
        // The first window's span has no earlier one to lead to.
        assert!(
            !mine[0]
                .links
                .iter()
                .any(|l| link_rule(l) == Some("previous-window"))
        );
        // Walk back from the last window through the links.
        let mut cur = *mine[2];
        let mut walked = vec![cur.trace_id];
        while let Some(l) = cur
            .links
            .iter()
            .find(|l| link_rule(l) == Some("previous-window"))
        {
            cur = by_id[&(l.trace_id, l.span_id)];
            assert_eq!(
                cur.attr_str("kubetrail.object.ref"),
                mine[2].attr_str("kubetrail.object.ref")
            );
            walked.push(cur.trace_id);
        }
        assert_eq!(
            walked,
            vec![mine[2].trace_id, mine[1].trace_id, mine[0].trace_id],
            "{resource}: window 3 → 2 → 1"
        );
    }
    // Same input, same links.
    let (again, _) = run_with(&events, config);
    assert_eq!(spans, again);
}

#[test]
fn a_later_segment_links_to_the_earlier_one() {
    const DEP: &str = r#"{"resource":"deployments","namespace":"shop","name":"web","apiGroup":"apps","apiVersion":"v1"}"#;
    // Two bursts 5 minutes apart in one 30-minute window: two segments of the same trace.
    let events = vec![
        ev(
            "a",
            "patch",
            "/apis/apps/v1/namespaces/shop/deployments/web",
            DEP,
            "",
            "2024-01-01T00:00:05Z",
            "2024-01-01T00:00:05.01Z",
        ),
        ev(
            "b",
            "patch",
            "/apis/apps/v1/namespaces/shop/deployments/web",
            DEP,
            "",
            "2024-01-01T00:05:05Z",
            "2024-01-01T00:05:05.01Z",
        ),
    ];
    let (spans, _) = run_with(&events, PipelineConfig::default());
    let mut objects: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Object)
        .collect();
    objects.sort_by_key(|s| s.start);
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0].trace_id, objects[1].trace_id);
    // Both are roots of the trace: the later one names the earlier one by an attribute, not
    // a link into its own trace (Jaeger would take that link for its parent: found against
    // the real Jaeger, which then warned of clock skew on the later segment).
    assert!(
        objects[1]
            .links
            .iter()
            .all(|l| l.trace_id != objects[1].trace_id),
        "{:?}",
        objects[1].links
    );
    let previous = objects[1]
        .attributes
        .iter()
        .find_map(|(k, v)| match v {
            AttrValue::Str(s) if k == "kubetrail.segment.previous_span_id" => Some(s.clone()),
            _ => None,
        })
        .expect("the earlier segment named");
    assert_eq!(previous, objects[0].span_id.to_string());
}
