//! Owner graphs no controller should write, but an input can hold: chains longer than
//! `link.max_depth` and cycles. Whatever the graph, every object is in exactly one trace per
//! window (the rule is documented on `kubetrail_link::Ancestry`).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::run;
use kubetrail_model::{AuditEvent, SpanKind, SpanRecord};
use serde_json::json;

/// `create widgets/NAME` (a cluster-scoped custom resource) owned by `owner`, at second `t`.
fn create(name: &str, owner: Option<&str>, t: u32) -> AuditEvent {
    let owners: Vec<_> = owner
        .into_iter()
        .map(|o| json!({"apiVersion":"example.com/v1","kind":"Widget","name":o,"uid":format!("uid-{o}"),"controller":true}))
        .collect();
    let body = json!({"apiVersion":"example.com/v1","kind":"Widget",
        "metadata":{"name":name,"uid":format!("uid-{name}"),"ownerReferences":owners}});
    let ts = format!("2024-05-01T10:{:02}:{:02}.000000Z", t / 60, t % 60);
    serde_json::from_value(json!({
        "kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse",
        "auditID":format!("create-{name}"),"stage":"ResponseComplete",
        "requestURI":"/apis/example.com/v1/widgets","verb":"create",
        "user":{"username":"widget-operator"},"userAgent":"widget-operator/1.0",
        "objectRef":{"resource":"widgets","apiGroup":"example.com","apiVersion":"v1","name":name},
        "responseStatus":{"metadata":{},"code":201},
        "requestObject":body,"responseObject":body,
        "requestReceivedTimestamp":ts,"stageTimestamp":ts
    }))
    .unwrap()
}

/// `update widgets/NAME` setting its owner (how a cycle comes about: objects exist first).
fn set_owner(name: &str, owner: &str, t: u32) -> AuditEvent {
    let mut e = create(name, Some(owner), t);
    e.verb = "update".into();
    e.audit_id = format!("update-{name}");
    e.request_uri = format!("/apis/example.com/v1/widgets/{name}");
    e
}

/// Object ref → the traces its object spans are in.
fn traces_of_objects(spans: &[SpanRecord]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in spans.iter().filter(|s| s.kind == SpanKind::Object) {
        let r = s.attr_str("kubetrail.object.ref").unwrap_or("?").to_owned();
        out.entry(r).or_default().insert(s.trace_id.to_string());
    }
    out
}

fn object_span<'a>(spans: &'a [SpanRecord], name: &str) -> &'a SpanRecord {
    let r = format!("widgets.example.com/{name}");
    spans
        .iter()
        .find(|s| s.kind == SpanKind::Object && s.attr_str("kubetrail.object.ref") == Some(&r))
        .unwrap_or_else(|| panic!("no object span for {r}"))
}

#[test]
fn a_chain_deeper_than_the_limit_puts_each_object_in_one_trace() {
    // w0 ← w1 ← … ← w59: each owned by the one before; the default depth limit is 8.
    let events: Vec<_> = (0..60)
        .map(|i| {
            let owner = (i > 0).then(|| format!("w{}", i - 1));
            create(&format!("w{i}"), owner.as_deref(), i)
        })
        .collect();
    let (spans, p) = run(events);
    let traces = traces_of_objects(&spans);
    assert_eq!(traces.len(), 60, "{traces:?}");
    for (object, in_traces) in &traces {
        assert_eq!(in_traces.len(), 1, "{object} is in {in_traces:?}");
    }
    // w0..w8 have complete chains: one family, rooted at w0.
    let root = object_span(&spans, "w0").trace_id;
    for i in 0..=8 {
        assert_eq!(object_span(&spans, &format!("w{i}")).trace_id, root, "w{i}");
    }
    // Deeper objects each root their own trace and link to their owner's span.
    for i in 9..60 {
        let s = object_span(&spans, &format!("w{i}"));
        assert_ne!(s.trace_id, root);
        assert!(s.parent_span_id.is_none(), "w{i} is a root");
        let owner = object_span(&spans, &format!("w{}", i - 1));
        assert!(
            s.links
                .iter()
                .any(|l| l.trace_id == owner.trace_id && l.span_id == owner.span_id),
            "w{i} links to w{}",
            i - 1
        );
    }
    // Each request span is in its object's trace.
    for s in spans.iter().filter(|s| s.kind == SpanKind::Request) {
        let r = s.attr_str("kubetrail.object.ref").unwrap_or("?");
        assert_eq!(
            traces[r].iter().next().map(String::as_str),
            Some(s.trace_id.to_string().as_str()),
            "request on {r}"
        );
    }
    assert_eq!(p.stats().owner_chains_cut, 51);
    // Object spans: one per object, not one per (object, trace it was pulled into).
    let object_spans = spans.iter().filter(|s| s.kind == SpanKind::Object).count();
    assert_eq!(object_spans, 60);
}

#[test]
fn an_owner_cycle_is_one_family_rooted_at_its_least_member() {
    // a, b, c created, then a owned by b, b by c, c by a; d owned by b. While the cycle is
    // being written, the graph changes under the first window's spans; in the next window
    // (10:30–11:00) it is settled, and each object is in one trace.
    let mut events = vec![
        create("c", None, 0),
        create("a", None, 1),
        create("b", None, 2),
        set_owner("a", "b", 3),
        set_owner("b", "c", 4),
        set_owner("c", "a", 5),
        create("d", Some("b"), 6),
    ];
    let second_window = 40 * 60;
    for (i, (name, owner)) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "b")]
        .into_iter()
        .enumerate()
    {
        let mut e = set_owner(name, owner, second_window + i as u32);
        e.audit_id = format!("again-{name}");
        events.push(e);
    }
    let (spans, p) = run(events);
    let window_start = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Request)
        .map(|s| s.start)
        .max()
        .map(|t| t - t % (30 * 60 * 1_000_000_000))
        .unwrap();
    let later: Vec<SpanRecord> = spans
        .into_iter()
        .filter(|s| s.start >= window_start)
        .collect();
    let traces = traces_of_objects(&later);
    assert_eq!(traces.len(), 4, "{traces:?}");
    for (object, in_traces) in &traces {
        assert_eq!(in_traces.len(), 1, "{object} is in {in_traces:?}");
    }
    let a = object_span(&later, "a");
    for name in ["b", "c", "d"] {
        assert_eq!(object_span(&later, name).trace_id, a.trace_id, "{name}");
    }
    // Broken at `a`: a is the root; c is under a, b under c, d under b.
    assert!(a.parent_span_id.is_none());
    let parent = |n: &str| object_span(&later, n).parent_span_id;
    assert_eq!(parent("c"), Some(a.span_id));
    assert_eq!(parent("b"), Some(object_span(&later, "c").span_id));
    assert_eq!(parent("d"), Some(object_span(&later, "b").span_id));
    for s in later.iter().filter(|s| s.kind == SpanKind::Request) {
        assert_eq!(s.trace_id, a.trace_id, "{}", s.name);
    }
    assert!(p.stats().owner_cycles > 0);
    assert!(
        later
            .iter()
            .any(|s| s.kind == SpanKind::Request && s.attr("kubetrail.link.cycle").is_some())
    );
}
