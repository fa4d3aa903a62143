//! kubetrail's traces as a user reads them: exported into the real Jaeger v2 (all-in-one,
//! in-memory storage, started by the test) by `kubetrail replay` and by `kubetrail serve`,
//! over OTLP gRPC and over OTLP HTTP, and read back through Jaeger's HTTP query API the way
//! Jaeger UI does (`/api/services`, `/api/operations`, `/api/traces?…`, `/api/traces/{id}`).
//!
//! Each run also writes OTLP/JSON: every span kubetrail wrote must be in Jaeger with the same
//! trace, parent, links, service and name — what Jaeger shows is what kubetrail meant.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kubetrail_gen::{GeneratedStream, RolloutScenario};
use kubetrail_testkit::{
    ApiServerClient, Jaeger, JaegerQuery, JaegerTrace, ReceivedSpan, TraceQuery,
};
use serde_json::Value;

mod common;

use common::{jaeger_traces, live_start, rfc3339, spawn_serve, terminate};

/// How long Jaeger may take to show what was exported.
const DEADLINE: Duration = Duration::from_secs(90);
/// SPAN_KIND_INTERNAL: object spans.
const OBJECT_KIND: i32 = 1;
/// The W3C traceparent planted on the Deployment (the Kubernetes log-tracking KEP's key).
const PLANTED_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PLANTED_SPAN: &str = "00f067aa0ba902b7";

/// Real audit events of cluster-scoped objects (a Namespace and a ClusterRole created, 2018,
/// from the falco trace files in testdata), before the rollout in time.
fn cluster_scoped_samples() -> Vec<Value> {
    let dir = kubetrail_testkit::workspace_root()
        .join("testdata/audit-samples/falco-trace-files-k8s-audit");
    [
        "some-user_creates_namespace_foo.json",
        "create_clusterrole.json",
    ]
    .iter()
    .map(|f| {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        serde_json::from_str(text.trim()).unwrap()
    })
    .collect()
}

/// The generated rollout (2024-05-01T10:00Z), with a traceparent annotation on the
/// Deployment's bodies.
fn rollout() -> GeneratedStream {
    rollout_at(kubetrail_gen::DEFAULT_CLUSTER_START)
}

/// The rollout starting at `start` (Unix nanoseconds).
fn rollout_at(start: i64) -> GeneratedStream {
    let mut stream = RolloutScenario {
        cluster_start: start,
        ..RolloutScenario::default()
    }
    .generate();
    let traceparent = format!("00-{PLANTED_TRACE}-{PLANTED_SPAN}-01");
    for e in &mut stream.events {
        if e["objectRef"]["resource"] != "deployments" || e["objectRef"]["subresource"].is_string()
        {
            continue;
        }
        for body in ["requestObject", "responseObject"] {
            if let Some(meta) = e.get_mut(body).and_then(|b| b.get_mut("metadata"))
                && meta.is_object()
            {
                let annotations = meta
                    .as_object_mut()
                    .unwrap()
                    .entry("annotations")
                    .or_insert_with(|| Value::Object(Default::default()));
                annotations["trace.kubernetes.io/span"] = Value::String(traceparent.clone());
            }
        }
    }
    stream
}

fn all_events(stream: &GeneratedStream) -> Vec<Value> {
    let mut events = cluster_scoped_samples();
    events.extend(stream.events.iter().cloned());
    events
}

fn json_lines(events: &[Value]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&serde_json::to_string(e).unwrap());
        out.push('\n');
    }
    out
}

/// Waits until Jaeger holds exactly the spans of `expected` (all of them, no more).
async fn wait_for_spans(q: &JaegerQuery, expected: usize) -> BTreeMap<String, JaegerTrace> {
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let traces = jaeger_traces(q).await;
        let have: usize = traces.values().map(|t| t.spans.len()).sum();
        if have >= expected {
            assert_eq!(
                have, expected,
                "Jaeger holds more spans than kubetrail exported"
            );
            return traces;
        }
        assert!(
            std::time::Instant::now() < until,
            "Jaeger holds {have} of {expected} spans after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tag_query(service: &str, operation: Option<&str>, tags: &[(&str, &str)]) -> TraceQuery {
    let mut q = TraceQuery::service(service);
    if let Some(op) = operation {
        q = q.operation(op);
    }
    for (k, v) in tags {
        q = q.tag(k, v);
    }
    q
}

async fn find_one(q: &JaegerQuery, query: &TraceQuery) -> String {
    let found = q.find_traces(query).await.unwrap();
    let ids: BTreeSet<&str> = found.iter().map(|t| t.trace_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{query:?} finds one trace: {ids:?}");
    ids.into_iter().next().unwrap().to_owned()
}

/// What every run must show in Jaeger. `written` is what kubetrail wrote as OTLP/JSON.
async fn check_jaeger(q: &JaegerQuery, written: &[ReceivedSpan], stream: &GeneratedStream) {
    let traces = wait_for_spans(q, written.len()).await;

    // 1. Every span as kubetrail wrote it: trace, parent (CHILD_OF), links (FOLLOWS_FROM),
    //    service, name; and no warning anywhere (no duplicate ids, no invalid parent, no
    //    clock-skew adjustment).
    let mut in_jaeger = BTreeMap::new();
    for t in traces.values() {
        assert!(t.all_warnings().is_empty(), "{:?}", t.all_warnings());
        for s in &t.spans {
            assert!(
                in_jaeger
                    .insert((s.trace_id.clone(), s.span_id.clone()), (t, s))
                    .is_none(),
                "span {} twice in Jaeger",
                s.span_id
            );
        }
    }
    for w in written {
        let (t, s) = in_jaeger
            .get(&(w.trace_id.clone(), w.span_id.clone()))
            .unwrap_or_else(|| panic!("{} {} is not in Jaeger", w.name, w.span_id));
        assert_eq!(s.operation_name, w.name);
        assert_eq!(t.service_of(s), w.service_name, "{}", w.name);
        let parent = s.parent().map(|r| {
            assert_eq!(r.trace_id, w.trace_id, "parents are in the same trace");
            r.span_id.clone()
        });
        assert_eq!(parent, w.parent_span_id, "{}", w.name);
        let links: BTreeSet<(String, String)> = s
            .links()
            .iter()
            .map(|r| (r.trace_id.clone(), r.span_id.clone()))
            .collect();
        let expected_links: BTreeSet<(String, String)> = w.links.iter().cloned().collect();
        assert_eq!(links, expected_links, "{}", w.name);
        assert_eq!(
            s.tag("error").as_deref() == Some("true"),
            w.status_code == 2,
            "error status of {} {:?}",
            w.name,
            s.tags
        );
    }

    // 2. The rollout's family is one trace: the Deployment is its root, ReplicaSets are
    //    CHILD_OF the Deployment, Pods CHILD_OF their ReplicaSet (the generator's truth).
    let by_ref =
        |k8s_kind: &str, name: &str| -> Vec<(&JaegerTrace, &kubetrail_testkit::JaegerSpan)> {
            in_jaeger
                .values()
                .filter(|(_, s)| {
                    s.tag("kubetrail.object.resource").as_deref() == Some(k8s_kind)
                        && s.tag("kubetrail.object.name").as_deref() == Some(name)
                        && s.tag("span.kind").as_deref() == Some("internal")
                })
                .copied()
                .collect()
        };
    let truth = &stream.truth;
    let deployment = truth.roots().next().unwrap();
    let dep = by_ref("deployments", &deployment.name);
    assert_eq!(dep.len(), 1, "one Deployment span");
    let (family, dep_span) = dep[0];
    assert!(dep_span.parent().is_none(), "the Deployment is the root");
    for o in &truth.objects {
        let spans = by_ref(&o.resource, &o.name);
        assert_eq!(spans.len(), 1, "{} {}: one object span", o.resource, o.name);
        let (t, s) = spans[0];
        assert_eq!(
            t.trace_id, family.trace_id,
            "{} is in the family's trace",
            o.name
        );
        if let Some((owner_resource, owner_name)) = &o.parent {
            let owner = truth
                .objects
                .iter()
                .find(|x| &x.resource == owner_resource && &x.name == owner_name)
                .unwrap();
            let (_, owner_span) = by_ref(&owner.resource, &owner.name)[0];
            assert_eq!(
                s.parent().map(|r| r.span_id.as_str()),
                Some(owner_span.span_id.as_str()),
                "{} is CHILD_OF {}",
                o.name,
                owner.name
            );
        }
    }

    // 3. The actors are services, and the family's requests are under them.
    let services = q.services().await.unwrap();
    for actor in [
        "kubetrail",
        "kubectl",
        "deployment-controller",
        "replicaset-controller",
        "kube-scheduler",
        "kubelet",
    ] {
        assert!(
            services.contains(&actor.to_owned()),
            "{actor} in {services:?}"
        );
    }
    let family_services: BTreeSet<&str> =
        family.spans.iter().map(|s| family.service_of(s)).collect();
    assert!(family_services.contains("kubelet"), "{family_services:?}");
    assert!(
        family_services.contains("kube-scheduler"),
        "{family_services:?}"
    );
    let ops = q.operations("kubetrail").await.unwrap();
    for op in ["deployments.apps", "replicasets.apps", "pods", "namespaces"] {
        assert!(ops.contains(&op.to_owned()), "{op} in {ops:?}");
    }
    let failed: Vec<_> = family
        .spans
        .iter()
        .filter(|s| s.tag("error").as_deref() == Some("true"))
        .collect();
    assert_eq!(
        failed.len(),
        truth.failed_requests,
        "failed requests are errors"
    );
    for s in failed {
        assert_eq!(s.tag("otel.status_code").as_deref(), Some("ERROR"));
    }

    // 4. README's searches ("Finding an object in Jaeger") find that trace.
    let ns = deployment.namespace.as_str();
    let name = deployment.name.as_str();
    let object_ref = format!("deployments.apps/{ns}/{name}");
    let searches = [
        tag_query(
            "kubetrail",
            Some("deployments.apps"),
            &[("k8s.namespace.name", ns), ("k8s.deployment.name", name)],
        ),
        tag_query("kubetrail", None, &[("kubetrail.object.ref", &object_ref)]),
        tag_query(
            "kubetrail",
            None,
            &[("kubetrail.object.uid", &deployment.uid)],
        ),
    ];
    for s in &searches {
        assert_eq!(find_one(q, s).await, family.trace_id, "{s:?}");
    }
    let pod = truth.objects.iter().find(|o| o.resource == "pods").unwrap();
    let kubelet = tag_query("kubelet", None, &[("k8s.pod.name", &pod.name)]);
    assert_eq!(find_one(q, &kubelet).await, family.trace_id, "{kubelet:?}");
    let pod_ref = format!("pods/{}/{}", pod.namespace, pod.name);
    let by_pod_ref = tag_query(
        "kubetrail",
        Some("pods"),
        &[("kubetrail.object.ref", &pod_ref)],
    );
    assert_eq!(find_one(q, &by_pod_ref).await, family.trace_id);

    // Cluster-scoped roots (real samples): a Namespace and a ClusterRole, each its own trace.
    for (op, name) in [
        ("namespaces", "foo"),
        ("clusterroles.rbac.authorization.k8s.io", "some-reader"),
    ] {
        let by_name = tag_query("kubetrail", Some(op), &[("kubetrail.object.name", name)]);
        let id = find_one(q, &by_name).await;
        let t = &traces[&id];
        let root = t.roots();
        assert_eq!(root.len(), 1, "{op} {name}: one root");
        assert_eq!(root[0].operation_name, op);
        assert_eq!(
            root[0].tag("k8s.namespace.name"),
            None,
            "{op} is cluster-scoped"
        );
        let object_ref = root[0].tag("kubetrail.object.ref").unwrap();
        let by_ref = tag_query("kubetrail", None, &[("kubetrail.object.ref", &object_ref)]);
        assert_eq!(find_one(q, &by_ref).await, id);
    }

    // 5. Span links: the planted traceparent on the Deployment, and Pod → Node.
    let planted = (PLANTED_TRACE.to_owned(), PLANTED_SPAN.to_owned());
    assert!(
        dep_span
            .links()
            .iter()
            .any(|r| (r.trace_id.clone(), r.span_id.clone()) == planted),
        "the traceparent annotation is a FOLLOWS_FROM reference: {:?}",
        dep_span.references
    );
    let (_, pod_span) = by_ref("pods", &pod.name)[0];
    assert!(
        !pod_span.links().is_empty(),
        "a scheduled Pod links to its Node: {:?}",
        pod_span.references
    );
}

/// `kubetrail url` of the Deployment, followed: the trace page answers, and the trace id in
/// it opens the family; `--search` is a Jaeger UI search that finds it too.
async fn check_url_command(jaeger: &Jaeger, stream: &GeneratedStream, cluster: &str, at: &str) {
    let d = stream.truth.roots().next().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args([
            "url",
            &format!("deployments/{}/{}", d.namespace, d.name),
            "--time",
            at,
            "--cluster",
            cluster,
            "--jaeger-url",
            &jaeger.ui_url(),
            "--search",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let trace_url = lines.next().unwrap();
    let search_url = lines.next().unwrap();
    follow_trace_url(jaeger, trace_url, d, true).await;
    // The search page's query is the API's query.
    let query = search_url
        .strip_prefix(&format!("{}/search?", jaeger.ui_url()))
        .unwrap_or_else(|| panic!("{search_url}"));
    let found = jaeger
        .query()
        .get_json(&format!("/api/traces?{query}"))
        .await
        .unwrap();
    let ids: BTreeSet<&str> = found["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["traceID"].as_str().unwrap())
        .collect();
    let trace_id = trace_url.rsplit('/').next().unwrap();
    assert_eq!(ids, BTreeSet::from([trace_id]), "{search_url}");
}

/// GETs a `…/trace/{id}` URL (Jaeger answers its UI page) and opens the trace it names: the
/// family of `root` — its requests, and (`whole`: once object spans are out) `root` as the
/// trace's one root span.
async fn follow_trace_url(
    jaeger: &Jaeger,
    url: &str,
    root: &kubetrail_gen::TruthObject,
    whole: bool,
) {
    assert!(
        url.starts_with(&format!("{}/trace/", jaeger.ui_url())),
        "{url}"
    );
    let page = reqwest::get(url).await.unwrap();
    assert!(page.status().is_success(), "GET {url}: {}", page.status());
    let id = url.rsplit('/').next().unwrap();
    let trace = jaeger
        .query()
        .trace(id)
        .await
        .unwrap()
        .expect("the URL's trace exists");
    assert!(
        trace
            .spans
            .iter()
            .any(|s| s.tag("k8s.deployment.uid").as_deref() == Some(root.uid.as_str())),
        "{url} shows the Deployment's requests"
    );
    if whole {
        let roots = trace.roots();
        assert_eq!(roots.len(), 1);
        assert_eq!(
            roots[0].tag("kubetrail.object.uid").as_deref(),
            Some(root.uid.as_str())
        );
    }
}

async fn replay_into_jaeger(protocol: &str) {
    let stream = rollout();
    let events = all_events(&stream);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("audit.log");
    std::fs::write(&input, json_lines(&events)).unwrap();
    let written_path = dir.path().join("spans.otlp.jsonl");
    let jaeger = Jaeger::start().unwrap();
    let endpoint = match protocol {
        "grpc" => jaeger.otlp_grpc_endpoint(),
        _ => jaeger.otlp_http_endpoint(),
    };
    let input = input.to_str().unwrap();
    let args = [
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        protocol,
        input,
    ];
    let (written, _) = common::replay_json("e2e", args, &written_path).await;
    check_jaeger(&jaeger.query(), &written, &stream).await;
    check_url_command(&jaeger, &stream, "e2e", "2024-05-01T10:00:10Z").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_over_otlp_grpc_reads_back_in_jaeger_as_jaeger_ui_shows_it() {
    replay_into_jaeger("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_over_otlp_http_reads_back_in_jaeger_as_jaeger_ui_shows_it() {
    replay_into_jaeger("http").await;
}

async fn serve_into_jaeger(protocol: &str) {
    // What an API server sends: events of the last minutes (serve's clock follows wall time).
    let start = live_start();
    let stream = rollout_at(start);
    let events = all_events(&stream);
    let dir = tempfile::tempdir().unwrap();
    let written_path = dir.path().join("spans.otlp.jsonl");
    let jaeger = Jaeger::start().unwrap();
    let endpoint = match protocol {
        "grpc" => jaeger.otlp_grpc_endpoint(),
        _ => jaeger.otlp_http_endpoint(),
    };
    let ui = jaeger.ui_url();
    let written_arg = written_path.to_str().unwrap();
    let (mut child, addr, stderr) = spawn_serve(&[
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        protocol,
        "--otlp-json",
        written_arg,
        "--jaeger-url",
        &ui,
        // Object spans wait for shutdown: the test reads what Jaeger shows meanwhile.
        "--linger",
        "1h",
    ])
    .await;
    let client = ApiServerClient::new(&format!("http://{addr}/audit/e2e")).with_batch_size(50);
    let report = client.send_events(&events).await.unwrap();
    assert!(report.all_delivered(), "{:?}", report.statuses());

    // While the family lingers, Jaeger holds its request spans, whose parents (object spans)
    // are not exported yet: the trace view warns about each such span ("invalid parent span
    // IDs"), and nothing else.
    let truth = &stream.truth;
    let requests = truth.mutating_requests + truth.kube_events;
    let q = jaeger.query();
    let lingering = {
        let until = std::time::Instant::now() + DEADLINE;
        loop {
            let traces = jaeger_traces(&q).await;
            let have = traces
                .values()
                .flat_map(|t| &t.spans)
                .filter(|s| s.tag("span.kind").as_deref() == Some("server"))
                .count();
            // The two cluster-scoped samples are requests too.
            if have >= requests + 2 {
                break traces;
            }
            assert!(
                std::time::Instant::now() < until,
                "{have} of {requests} request spans"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let family = lingering
        .values()
        .find(|t| {
            t.spans
                .iter()
                .any(|s| s.tag("k8s.deployment.name").is_some())
        })
        .unwrap();
    let warnings = family.all_warnings();
    assert!(
        !warnings.is_empty(),
        "a lingering family has missing parents"
    );
    for w in &warnings {
        assert!(w.contains("invalid parent span IDs"), "{w}");
    }

    // The redirect leads to that trace in that Jaeger.
    let d = truth.roots().next().unwrap();
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = browser
        .get(format!(
            "http://{addr}/redirect?cluster=e2e&resource=deployments&namespace={}&name={}&time={}",
            d.namespace,
            d.name,
            rfc3339(start + 10_000_000_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    // While the family lingers the trace holds its requests, not yet its object spans.
    follow_trace_url(&jaeger, &location, d, false).await;

    // SIGTERM emits the lingering families: then the traces are whole and warning-free.
    let status = terminate(&mut child).await;
    let log = stderr.await.unwrap();
    assert!(status.success(), "{log}");
    let written = common::read_spans(&written_path);
    let objects = written.iter().filter(|s| s.kind == OBJECT_KIND).count();
    assert_eq!(
        objects,
        truth.objects.len() + 2,
        "every object has its span"
    );
    check_jaeger(&q, &written, &stream).await;
    check_url_command(&jaeger, &stream, "e2e", &rfc3339(start + 10_000_000_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_otlp_grpc_reads_back_in_jaeger_and_redirects_to_the_trace() {
    serve_into_jaeger("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_otlp_http_reads_back_in_jaeger_and_redirects_to_the_trace() {
    serve_into_jaeger("http").await;
}
