//! A family far above the span budget, replayed into the real Jaeger v2 (started by the test)
//! and read back through its HTTP query API as Jaeger UI does: no trace Jaeger holds exceeds
//! `--max-trace-spans`, every reference (parent and link) resolves to a span Jaeger has, Jaeger
//! attaches no warning, and every span is reachable from the Deployment's span.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::{Jaeger, JaegerTrace};

/// How long Jaeger may take to show what was exported.
const DEADLINE: Duration = Duration::from_secs(120);
/// The budget of the test: the family is ~16× larger.
const BUDGET: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_above_the_budget_reads_back_in_jaeger_within_it_and_linked() {
    let stream = RolloutScenario {
        replicas: 300,
        with_noise: false,
        with_request_received_stage: false,
        ..RolloutScenario::default()
    }
    .generate();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("audit.log");
    std::fs::write(&input, stream.to_json_lines()).unwrap();
    let written_path = dir.path().join("spans.otlp.jsonl");
    let jaeger = Jaeger::start().unwrap();
    let (endpoint, budget) = (jaeger.otlp_grpc_endpoint(), BUDGET.to_string());
    let args = [
        "--no-progress",
        "--otlp-endpoint",
        &endpoint,
        "--max-trace-spans",
        &budget,
        input.to_str().unwrap(),
    ];
    let (written, _) = common::replay_json("e2e", args, &written_path).await;
    assert!(
        written.len() > 10 * BUDGET,
        "far above the budget: {}",
        written.len()
    );
    let mut per_trace: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &written {
        *per_trace.entry(s.trace_id.as_str()).or_default() += 1;
    }
    assert!(per_trace.len() > 10, "the family was cut into parts");

    // Every trace, as Jaeger UI opens it.
    let q = jaeger.query();
    let mut traces: HashMap<String, JaegerTrace> = HashMap::new();
    for (id, n) in &per_trace {
        let t = q.wait_for_trace(id, *n, DEADLINE).await.unwrap();
        assert_eq!(t.spans.len(), *n, "Jaeger holds what was exported of {id}");
        assert!(
            t.spans.len() <= BUDGET,
            "trace {id} has {} spans in Jaeger",
            t.spans.len()
        );
        let warnings = t.all_warnings();
        assert!(warnings.is_empty(), "{id}: {warnings:?}");
        traces.insert((*id).to_owned(), t);
    }
    let present: HashSet<(&str, &str)> = traces
        .values()
        .flat_map(|t| t.spans.iter())
        .map(|s| (s.trace_id.as_str(), s.span_id.as_str()))
        .collect();

    // References resolve: parents in the same trace, links to spans Jaeger has (the
    // Pod → Node links aside: Nodes have no requests in this stream).
    let mut children: HashMap<(&str, &str), Vec<(&str, &str)>> = HashMap::new();
    for t in traces.values() {
        for s in &t.spans {
            if let Some(p) = s.parent() {
                assert_eq!(p.trace_id, s.trace_id);
                assert!(
                    present.contains(&(p.trace_id.as_str(), p.span_id.as_str())),
                    "parent of {} resolves",
                    s.operation_name
                );
                children
                    .entry((p.trace_id.as_str(), p.span_id.as_str()))
                    .or_default()
                    .push((s.trace_id.as_str(), s.span_id.as_str()));
            }
            for l in s.links() {
                if traces.contains_key(&l.trace_id) {
                    assert!(
                        present.contains(&(l.trace_id.as_str(), l.span_id.as_str())),
                        "link of {} to {}/{} resolves",
                        s.operation_name,
                        l.trace_id,
                        l.span_id
                    );
                }
            }
        }
    }

    // Stand-ins say which part they are; parts lead back to the main trace.
    let stand_ins: Vec<_> = traces
        .values()
        .flat_map(|t| t.spans.iter())
        .filter(|s| s.tag("kubetrail.part.stand_in").as_deref() == Some("true"))
        .collect();
    assert_eq!(
        stand_ins.len(),
        per_trace.len() - 1,
        "one stand-in per part"
    );
    let main: BTreeSet<String> = stand_ins
        .iter()
        .map(|s| s.tag("kubetrail.part.main_trace").unwrap())
        .collect();
    assert_eq!(main.len(), 1, "one family");
    let main = main.into_iter().next().unwrap();

    // Everything reachable from the Deployment's span by parent edges and links.
    let root = traces[&main]
        .roots()
        .into_iter()
        .find(|s| s.tag("kubetrail.object.resource").as_deref() == Some("deployments"))
        .expect("the Deployment's span is the main trace's root");
    assert!(
        root.tag("kubetrail.subtree.objects.Pod").is_some(),
        "the Deployment's span summarises its subtree"
    );
    let by_id: HashMap<(&str, &str), &kubetrail_testkit::JaegerSpan> = traces
        .values()
        .flat_map(|t| t.spans.iter())
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s))
        .collect();
    let root_id = (root.trace_id.as_str(), root.span_id.as_str());
    let seen: HashSet<(&str, &str)> = kubetrail_testkit::reachable(root_id, &children, |k| {
        let links = by_id.get(k).map(|s| s.links()).unwrap_or_default();
        links
            .into_iter()
            .map(|l| (l.trace_id.as_str(), l.span_id.as_str()))
            .filter(|t| present.contains(t))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        seen.len(),
        present.len(),
        "every span Jaeger holds is reachable from the Deployment's span"
    );
}
