//! The aggregator's own tests: when spans are emitted, which ids they get, how segments and
//! owner-only spans come about, and what the limits (`max_open_objects`, `max_trace_spans`)
//! do. The pipeline's tests exercise the same code through linking and decoration; these pin
//! the aggregator's contract on its own, with hand-made placements.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kubetrail_model::ids;
use kubetrail_model::{AttrValue, AuditEvent, ObjectRef, SpanKind, SpanLinkRecord, SpanRecord};

use super::*;

const SEC: i64 = 1_000_000_000;
/// 2026-01-01T00:00:00Z: a window boundary for any window that divides a day.
const T0: i64 = 1_767_225_600 * SEC;
const CLUSTER: &str = "c1";

fn obj(resource: &str, name: &str) -> ObjectRef {
    ObjectRef {
        group: if resource == "pods" { "" } else { "apps" }.into(),
        resource: resource.into(),
        namespace: "shop".into(),
        name: name.into(),
        ..ObjectRef::default()
    }
}

/// A completed request `verb` on `o`, from `start` to `start + 1s`, answered with `code`.
fn event(audit_id: &str, verb: &str, o: &ObjectRef, start: i64, code: i32) -> AuditEvent {
    let ts = |t: i64| kubetrail_model::format_rfc3339(t);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Event",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": format!("/api/v1/namespaces/{}/{}/{}", o.namespace, o.resource, o.name),
        "verb": verb,
        "user": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "userAgent": "kube-controller-manager/v1.31.0 (linux/amd64) kubernetes/abc/system:serviceaccount:kube-system:replicaset-controller",
        "objectRef": {
            "resource": o.resource,
            "namespace": o.namespace,
            "name": o.name,
            "apiGroup": o.group,
            "apiVersion": "v1"
        },
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": ts(start),
        "stageTimestamp": ts(start + SEC),
    }))
    .unwrap()
}

fn place(o: &ObjectRef, ancestors: &[&ObjectRef]) -> Placement {
    Placement {
        cluster: CLUSTER.into(),
        object: o.clone(),
        ancestors: ancestors.iter().map(|a| (*a).clone()).collect(),
        kind: None,
        creates: false,
        deletes: false,
        incomplete: false,
        kube_event: None,
        links: vec![],
        objsetid: None,
        span_events: vec![],
        attributes: vec![],
        secondary: vec![],
        collection_item: false,
    }
}

/// Adds a request on `o` (a family root, no owners) at `start`.
fn add(
    agg: &mut Aggregator,
    audit_id: &str,
    verb: &str,
    o: &ObjectRef,
    start: i64,
    code: i32,
    out: &mut Vec<SpanRecord>,
) {
    agg.add_request(&event(audit_id, verb, o, start, code), place(o, &[]), out);
}

fn config() -> AggregatorConfig {
    AggregatorConfig {
        window: Duration::from_secs(30 * 60),
        linger: Duration::from_secs(30),
        ..AggregatorConfig::default()
    }
}

fn objects(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Object)
        .collect()
}

fn requests(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans
        .iter()
        .filter(|s| s.kind == SpanKind::Request)
        .collect()
}

fn named<'a>(spans: &'a [SpanRecord], o: &ObjectRef) -> Vec<&'a SpanRecord> {
    let r = o.to_string();
    objects(spans)
        .into_iter()
        .filter(|s| s.attr_str(attrs::OBJECT_REF) == Some(r.as_str()))
        .collect()
}

fn link_rules(s: &SpanRecord) -> Vec<String> {
    s.links
        .iter()
        .filter_map(|l| {
            l.attributes
                .iter()
                .find(|(k, _)| k == attrs::LINK_RULE)
                .map(|(_, v)| match v {
                    AttrValue::Str(s) => s.clone(),
                    other => format!("{other:?}"),
                })
        })
        .collect()
}

#[test]
fn request_spans_leave_at_once_object_spans_once_the_family_lingered() {
    let pod = obj("pods", "web-1");
    let mut agg = Aggregator::new(config());
    let mut out = Vec::new();
    add(&mut agg, "a1", "create", &pod, T0 + 10 * SEC, 201, &mut out);
    assert_eq!(requests(&out).len(), 1);
    assert!(
        objects(&out).is_empty(),
        "object span before linger: {out:?}"
    );
    let window = agg.window_start(T0 + 10 * SEC);
    let req = requests(&out)[0].clone();
    assert_eq!(req.trace_id, ids::trace_id(CLUSTER, &pod, window));
    assert_eq!(req.span_id, ids::request_span_id(CLUSTER, "a1"));
    assert_eq!(
        req.parent_span_id,
        Some(ids::object_span_id(CLUSTER, &pod, window, 0))
    );
    assert_eq!(req.name, "create pods");

    // The request ended at T0+11s; linger is 30s: quiet until T0+41s.
    out.clear();
    agg.advance(T0 + 40 * SEC, &mut out);
    assert!(out.is_empty(), "emitted before linger passed: {out:?}");
    assert_eq!(agg.open_families(), 1);
    agg.advance(T0 + 41 * SEC, &mut out);
    assert_eq!(objects(&out).len(), 1, "{out:?}");
    let span = objects(&out)[0];
    assert_eq!(span.span_id, req.parent_span_id.unwrap());
    assert_eq!(span.trace_id, req.trace_id);
    assert_eq!(span.parent_span_id, None);
    assert_eq!((span.start, span.end), (T0 + 10 * SEC, T0 + 11 * SEC));
    assert_eq!(
        span.attr("kubetrail.object.requests"),
        Some(&AttrValue::Int(1))
    );
    assert_eq!(agg.open_families(), 0);
    assert_eq!(agg.open_objects(), 0);

    // Emitted once: later ticks and the end of input add nothing.
    out.clear();
    agg.advance(T0 + 600 * SEC, &mut out);
    agg.finish(&mut out);
    assert!(out.is_empty(), "emitted twice: {out:?}");
    let st = agg.stats();
    assert_eq!(
        (st.request_spans, st.object_spans, st.families_emitted),
        (1, 1, 1)
    );
}

/// A rollout-shaped family fed to an aggregator.
fn rollout(agg: &mut Aggregator) -> Vec<SpanRecord> {
    let deploy = obj("deployments", "web");
    let rs = obj("replicasets", "web-5d9");
    let mut out = Vec::new();
    let mut t = T0 + 60 * SEC;
    for (i, name) in ["web-5d9-a", "web-5d9-b", "web-5d9-c"].iter().enumerate() {
        let pod = obj("pods", name);
        for verb in ["create", "patch"] {
            agg.add_request(
                &event(&format!("r{i}-{verb}"), verb, &pod, t, 201),
                place(&pod, &[&rs, &deploy]),
                &mut out,
            );
            t += SEC;
        }
    }
    add(agg, "d1", "patch", &deploy, t, 500, &mut out);
    agg.finish(&mut out);
    out
}

#[test]
fn same_calls_give_the_same_spans_and_ids() {
    let a = rollout(&mut Aggregator::new(config()));
    let b = rollout(&mut Aggregator::new(config()));
    assert_eq!(a, b);
    // Every id distinct, every request under an emitted object span of the same trace.
    let ids: BTreeSet<_> = a.iter().map(|s| s.span_id).collect();
    assert_eq!(ids.len(), a.len());
    let by_id: BTreeMap<_, _> = a.iter().map(|s| (s.span_id, s)).collect();
    for r in requests(&a) {
        let parent = by_id
            .get(&r.parent_span_id.unwrap())
            .expect("parent emitted");
        assert_eq!(parent.kind, SpanKind::Object);
        assert_eq!(parent.trace_id, r.trace_id);
    }
}

#[test]
fn owners_cover_what_they_own_and_say_when_they_had_no_requests_of_their_own() {
    let out = rollout(&mut Aggregator::new(config()));
    let deploy = obj("deployments", "web");
    let rs = obj("replicasets", "web-5d9");
    let (d, r) = (named(&out, &deploy), named(&out, &rs));
    assert_eq!((d.len(), r.len()), (1, 1));
    let (d, r) = (d[0], r[0]);
    // The ReplicaSet had no request of its own: an owner-only span.
    assert_eq!(
        r.attr("kubetrail.object.owner_only"),
        Some(&AttrValue::Bool(true))
    );
    assert_eq!(d.attr("kubetrail.object.owner_only"), None);
    assert_eq!(
        d.attr("kubetrail.object.failed_requests"),
        Some(&AttrValue::Int(1))
    );
    // The hierarchy: deployment → replicaset → pods, one trace.
    assert_eq!(d.parent_span_id, None);
    assert_eq!(r.parent_span_id, Some(d.span_id));
    let pods: Vec<_> = objects(&out)
        .into_iter()
        .filter(|s| s.name == "pods")
        .collect();
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert_eq!(p.parent_span_id, Some(r.span_id));
        assert_eq!(p.trace_id, d.trace_id);
        assert_eq!(p.attr("kubetrail.object.owner_only"), None);
        // Owners cover what they own.
        assert!(r.start <= p.start && p.end <= r.end);
    }
    assert_eq!(r.start, pods.iter().map(|p| p.start).min().unwrap());
    assert_eq!(r.end, pods.iter().map(|p| p.end).max().unwrap());
    assert!(d.start <= r.start && r.end <= d.end);
    assert_eq!(requests(&out).len(), 7);
}

#[test]
fn activity_after_emission_starts_a_later_segment_in_the_same_trace() {
    let pod = obj("pods", "web-1");
    let mut agg = Aggregator::new(config());
    let mut out = Vec::new();
    add(&mut agg, "a1", "create", &pod, T0 + 10 * SEC, 201, &mut out);
    agg.advance(T0 + 100 * SEC, &mut out);
    let first = named(&out, &pod)[0].clone();
    out.clear();
    add(&mut agg, "a2", "patch", &pod, T0 + 200 * SEC, 200, &mut out);
    let window = agg.window_start(T0);
    let seg1 = ids::object_span_id(CLUSTER, &pod, window, 1);
    assert_eq!(requests(&out)[0].parent_span_id, Some(seg1));
    agg.finish(&mut out);
    let second = named(&out, &pod);
    assert_eq!(second.len(), 1);
    let second = second[0];
    assert_eq!(second.span_id, seg1);
    assert_ne!(second.span_id, first.span_id);
    assert_eq!(second.trace_id, first.trace_id);
    assert_eq!(second.attr("kubetrail.segment"), Some(&AttrValue::Int(1)));
    assert_eq!(first.attr("kubetrail.segment"), Some(&AttrValue::Int(0)));
    // The later segment names the earlier one: as a root of the trace, by an attribute, not
    // a link into its own trace (Jaeger would take that for its parent).
    assert!(link_rules(second).is_empty(), "{:?}", link_rules(second));
    assert_eq!(
        second.attr(attrs::SEGMENT_PREVIOUS),
        Some(&AttrValue::Str(first.span_id.to_string()))
    );
    assert_eq!(agg.stats().continuations, 1);
    assert_eq!(agg.stats().history_links, 1);
}

#[test]
fn an_object_recreated_under_the_same_name_closes_its_old_span_at_once() {
    let pod = obj("pods", "web-1");
    let mut agg = Aggregator::new(config());
    let mut out = Vec::new();
    let mut p = place(&pod, &[]);
    p.creates = true;
    agg.add_request(
        &event("a1", "create", &pod, T0 + 10 * SEC, 201),
        p.clone(),
        &mut out,
    );
    let mut d = place(&pod, &[]);
    d.deletes = true;
    agg.add_request(
        &event("a2", "delete", &pod, T0 + 12 * SEC, 200),
        d,
        &mut out,
    );
    assert!(objects(&out).is_empty());
    // Created again within linger: the old incarnation's span leaves now.
    agg.add_request(
        &event("a3", "create", &pod, T0 + 14 * SEC, 201),
        p,
        &mut out,
    );
    let window = agg.window_start(T0);
    let old = named(&out, &pod);
    assert_eq!(old.len(), 1, "{out:?}");
    assert_eq!(
        old[0].span_id,
        ids::object_span_id(CLUSTER, &pod, window, 0)
    );
    assert_eq!(
        old[0].attr("kubetrail.object.deleted"),
        Some(&AttrValue::Bool(true))
    );
    assert_eq!(old[0].end, T0 + 13 * SEC);
    let seg1 = ids::object_span_id(CLUSTER, &pod, window, 1);
    assert_eq!(requests(&out).last().unwrap().parent_span_id, Some(seg1));
    assert_eq!(agg.stats().recreations, 1);

    // A different uid is a new incarnation too.
    let mut with_uid = pod.clone();
    with_uid.uid = Some("uid-2".into());
    add(
        &mut agg,
        "a4",
        "patch",
        &with_uid,
        T0 + 16 * SEC,
        200,
        &mut out,
    );
    let mut other_uid = pod.clone();
    other_uid.uid = Some("uid-3".into());
    add(
        &mut agg,
        "a5",
        "patch",
        &other_uid,
        T0 + 18 * SEC,
        200,
        &mut out,
    );
    assert_eq!(agg.stats().recreations, 2);
    agg.finish(&mut out);
    let spans = named(&out, &pod);
    let segs: Vec<_> = spans
        .iter()
        .map(|s| s.attr("kubetrail.segment").cloned())
        .collect();
    assert_eq!(
        segs,
        vec![
            Some(AttrValue::Int(0)),
            Some(AttrValue::Int(1)),
            Some(AttrValue::Int(2))
        ]
    );
    assert_eq!(spans[1].attr_str(attrs::OBJECT_UID), Some("uid-2"));
    assert_eq!(spans[2].attr_str(attrs::OBJECT_UID), Some("uid-3"));
}

#[test]
fn max_open_objects_emits_the_least_recently_active_family_early() {
    let mut agg = Aggregator::new(AggregatorConfig {
        max_open_objects: 2,
        ..config()
    });
    let mut out = Vec::new();
    let pods: Vec<_> = (0..3).map(|i| obj("pods", &format!("p{i}"))).collect();
    for (i, pod) in pods.iter().enumerate() {
        let t = T0 + (i as i64) * SEC;
        agg.add_request(
            &event(&format!("a{i}"), "create", pod, t, 201),
            place(pod, &[]),
            &mut out,
        );
        assert!(agg.open_objects() <= 2);
    }
    // The third object forced the oldest family (p0) out, before its linger.
    assert_eq!(agg.stats().families_forced, 1);
    assert_eq!(named(&out, &pods[0]).len(), 1);
    assert!(named(&out, &pods[1]).is_empty());
    assert_eq!(agg.open_families(), 2);
    agg.finish(&mut out);
    assert_eq!(objects(&out).len(), 3);
    assert_eq!(requests(&out).len(), 3);
}

#[test]
fn a_family_beyond_max_trace_spans_is_cut_into_linked_parts_and_loses_nothing() {
    let budget = MIN_TRACE_SPANS;
    let mut agg = Aggregator::new(AggregatorConfig {
        max_trace_spans: budget,
        ..config()
    });
    let deploy = obj("deployments", "big");
    let n = 40;
    let out = big_family(&mut agg, &deploy, n);
    // Nothing lost: every request and every object has its span.
    assert_eq!(requests(&out).len(), (n * 2) as usize);
    assert_eq!(
        objects(&out)
            .iter()
            .filter(|s| s.attr(attrs::PART_STAND_IN).is_none())
            .count(),
        n as usize + 1
    );
    // No trace above the budget.
    let mut per_trace: BTreeMap<_, usize> = BTreeMap::new();
    for s in &out {
        *per_trace.entry(s.trace_id).or_default() += 1;
    }
    assert!(per_trace.len() > 1, "not cut: {per_trace:?}");
    assert!(per_trace.values().all(|c| *c <= budget), "{per_trace:?}");
    let st = agg.stats();
    assert!(st.parts >= 1);
    assert_eq!(st.stand_in_spans, st.parts);
    // The owner links to its parts; each stand-in links back to the owner.
    let owner = named(&out, &deploy)
        .into_iter()
        .find(|s| s.attr(attrs::PART_STAND_IN).is_none())
        .unwrap()
        .clone();
    assert_eq!(
        owner.attr(attrs::PARTS),
        Some(&AttrValue::Int(st.parts as i64))
    );
    let stand_ins: Vec<_> = objects(&out)
        .into_iter()
        .filter(|s| s.attr(attrs::PART_STAND_IN).is_some())
        .collect();
    for s in &stand_ins {
        assert!(link_rules(s).contains(&attrs::LINK_PART_OWNER.to_owned()));
        let back = s.links.iter().find(|l| l.span_id == owner.span_id);
        assert!(
            back.is_some(),
            "stand-in without a link to its owner: {s:?}"
        );
    }
    // Same input, same cut.
    let mut again = Aggregator::new(AggregatorConfig {
        max_trace_spans: budget,
        ..config()
    });
    assert_eq!(out, big_family(&mut again, &deploy, n));
}

/// `n` Pods of `owner`, two requests each, then the end of input.
fn big_family(agg: &mut Aggregator, owner: &ObjectRef, n: i64) -> Vec<SpanRecord> {
    let mut out = Vec::new();
    for i in 0..n {
        let pod = obj("pods", &format!("big-{i}"));
        for (j, verb) in ["create", "patch"].iter().enumerate() {
            let t = T0 + (i * 2 + j as i64) * SEC;
            agg.add_request(
                &event(&format!("a{i}-{j}"), verb, &pod, t, 201),
                place(&pod, &[owner]),
                &mut out,
            );
        }
    }
    agg.finish(&mut out);
    out
}

fn traceparent_link(n: u8) -> SpanLinkRecord {
    SpanLinkRecord {
        trace_id: ids::TraceId([n; 16]),
        span_id: ids::SpanId([n; 8]),
        attributes: vec![],
    }
}

#[test]
fn object_links_are_deduplicated_and_capped() {
    let pod = obj("pods", "web-1");
    let node = ObjectRef {
        group: String::new(),
        resource: "nodes".into(),
        namespace: String::new(),
        name: "n1".into(),
        ..ObjectRef::default()
    };
    let mut agg = Aggregator::new(config());
    let mut out = Vec::new();
    for i in 0..3 {
        let mut p = place(&pod, &[]);
        // The same traceparent each time, and the same secondary link.
        p.links = vec![traceparent_link(1)];
        p.secondary = vec![SecondaryLink {
            rule: "pod-node".into(),
            target: node.clone(),
            root: node.clone(),
        }];
        agg.add_request(
            &event(&format!("a{i}"), "patch", &pod, T0 + i * SEC, 200),
            p,
            &mut out,
        );
    }
    agg.finish(&mut out);
    let span = named(&out, &pod)[0];
    assert_eq!(span.links.len(), 2, "{:?}", span.links);
    let window = agg.window_start(T0);
    assert_eq!(span.links[0], traceparent_link(1));
    assert_eq!(
        span.links[1].trace_id,
        ids::trace_id(CLUSTER, &node, window)
    );
    assert_eq!(
        span.links[1].span_id,
        ids::object_span_id(CLUSTER, &node, window, 0)
    );
    assert_eq!(link_rules(span), vec!["pod-node".to_owned()]);

    // Distinct links: at most MAX_OBJECT_LINKS are kept.
    let other = obj("pods", "web-2");
    let mut out = Vec::new();
    let mut p = place(&other, &[]);
    p.links = (0..40).map(traceparent_link).collect();
    agg.add_request(
        &event("b1", "patch", &other, T0 + 100 * SEC, 200),
        p,
        &mut out,
    );
    agg.finish(&mut out);
    let span = named(&out, &other)[0];
    assert_eq!(span.links.len(), MAX_OBJECT_LINKS);
    assert_eq!(
        span.links[..],
        (0..32).map(traceparent_link).collect::<Vec<_>>()[..]
    );
}

#[test]
fn windows_lead_to_each_other() {
    let pod = obj("pods", "web-1");
    let mut agg = Aggregator::new(config());
    let mut out = Vec::new();
    add(&mut agg, "a1", "patch", &pod, T0 + 10 * SEC, 200, &mut out);
    // The next window (30 min later).
    add(
        &mut agg,
        "a2",
        "patch",
        &pod,
        T0 + 1810 * SEC,
        200,
        &mut out,
    );
    agg.finish(&mut out);
    let spans = named(&out, &pod);
    assert_eq!(spans.len(), 2);
    assert_ne!(spans[0].trace_id, spans[1].trace_id);
    assert_eq!(link_rules(spans[1]), vec![attrs::LINK_PREVIOUS_WINDOW]);
    assert_eq!(spans[1].links[0].span_id, spans[0].span_id);
}
