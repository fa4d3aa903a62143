//! End to end, as a user runs it: the `kubetrail` binary replays a generated Deployment
//! rollout (Deployment → two ReplicaSets → Pods, scheduler bindings, kubelet status patches,
//! deletions, noise) to a real OTLP receiver built from `opentelemetry-proto`, over gRPC and
//! over HTTP, and to an OTLP/JSON file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

mod common;

use common::id_set;
use kubetrail_gen::{GeneratedStream, RolloutScenario};
use kubetrail_testkit::{OtlpReceiver, ReceivedSpan};
use tokio::process::Command;

const OBJECT_KIND: i32 = 1; // SPAN_KIND_INTERNAL
const REQUEST_KIND: i32 = 2; // SPAN_KIND_SERVER

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubetrail"));
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

struct Run {
    status: std::process::ExitStatus,
    stderr: String,
    stdout: String,
}

async fn replay(args: &[&str]) -> Run {
    let out = bin().arg("replay").args(args).output().await.unwrap();
    Run {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn rollout() -> GeneratedStream {
    RolloutScenario::default().generate()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Checks the shape of the received traces against the generator's ground truth.
fn assert_rollout_traces(spans: &[ReceivedSpan], stream: &GeneratedStream) {
    let truth = &stream.truth;
    let objects: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == OBJECT_KIND).collect();
    let requests: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.kind == REQUEST_KIND).collect();
    assert_eq!(objects.len() + requests.len(), spans.len());
    let by_id: HashMap<(&str, &str), &ReceivedSpan> = spans
        .iter()
        .map(|s| ((s.trace_id.as_str(), s.span_id.as_str()), s))
        .collect();
    assert_eq!(
        by_id.len(),
        spans.len(),
        "span ids are unique within their traces"
    );

    // One object span per object of the rollout, with searchable identity attributes.
    let mut object_span: BTreeMap<(String, String), &ReceivedSpan> = BTreeMap::new();
    for o in &objects {
        let resource = o.attributes["kubetrail.object.resource"].clone();
        let name = o.attributes["kubetrail.object.name"].clone();
        assert!(
            object_span.insert((resource, name), o).is_none(),
            "one span per object: {:?}",
            o.attributes
        );
        assert_eq!(o.service_name, "kubetrail");
        assert_eq!(
            o.resource_attributes
                .get("k8s.cluster.name")
                .map(String::as_str),
            Some("e2e")
        );
    }
    let deployment = truth
        .objects
        .iter()
        .find(|o| o.resource == "deployments")
        .unwrap();
    let root = object_span[&("deployments".to_owned(), deployment.name.clone())];
    assert_eq!(
        root.parent_span_id, None,
        "the Deployment is the trace root"
    );
    assert_eq!(root.attributes["k8s.deployment.name"], deployment.name);
    assert_eq!(root.attributes["k8s.namespace.name"], deployment.namespace);

    for t in &truth.objects {
        let s = object_span
            .get(&(t.resource.clone(), t.name.clone()))
            .unwrap_or_else(|| panic!("no span for {} {}", t.resource, t.name));
        assert_eq!(
            s.trace_id, root.trace_id,
            "{} is in the Deployment's trace",
            t.name
        );
        assert_eq!(
            s.attributes.get("kubetrail.object.uid"),
            Some(&t.uid),
            "{}",
            t.name
        );
        match &t.parent {
            None => assert_eq!(s.parent_span_id, None),
            Some((res, name)) => {
                let parent = object_span[&(res.clone(), name.clone())];
                assert_eq!(
                    s.parent_span_id.as_ref(),
                    Some(&parent.span_id),
                    "{} under {name}",
                    t.name
                );
                assert!(
                    parent.start_unix_nano <= s.start_unix_nano
                        && s.end_unix_nano <= parent.end_unix_nano,
                    "an owner's span covers what it owns"
                );
            }
        }
        // Its requests are its children (and so are the Kubernetes Events about it).
        let children: Vec<_> = requests
            .iter()
            .filter(|r| r.trace_id == s.trace_id && r.parent_span_id.as_ref() == Some(&s.span_id))
            .filter(|r| !r.attributes.contains_key("k8s.event.reason"))
            .collect();
        assert_eq!(children.len(), t.requests, "requests of {}", t.name);
        for r in children {
            assert!(s.start_unix_nano <= r.start_unix_nano && r.end_unix_nano <= s.end_unix_nano);
        }
    }
    // Kubernetes Events are on the objects they are about, in the rollout's trace.
    let kube_events: Vec<_> = requests
        .iter()
        .filter(|r| r.attributes.contains_key("k8s.event.reason"))
        .collect();
    assert_eq!(kube_events.len(), truth.kube_events);
    for k in &kube_events {
        assert_eq!(k.trace_id, root.trace_id);
        assert!(k.name.starts_with("event "), "{}", k.name);
        let parent = by_id[&(k.trace_id.as_str(), k.parent_span_id.as_deref().unwrap())];
        assert_eq!(parent.kind, OBJECT_KIND);
    }
    // Every mutating request of the rollout is one span, named and attributed.
    let rollout_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.trace_id == root.trace_id && !r.attributes.contains_key("k8s.event.reason"))
        .collect();
    assert_eq!(rollout_requests.len(), truth.mutating_requests);
    let audit_ids: BTreeSet<_> = rollout_requests
        .iter()
        .map(|r| r.attributes["kubetrail.audit.id"].clone())
        .collect();
    assert_eq!(
        audit_ids.len(),
        rollout_requests.len(),
        "one span per auditID"
    );
    let services: BTreeSet<&str> = rollout_requests
        .iter()
        .map(|r| r.service_name.as_str())
        .collect();
    for actor in [
        "kubectl",
        "deployment-controller",
        "replicaset-controller",
        "kube-scheduler",
        "kubelet",
    ] {
        assert!(
            services.contains(actor),
            "actor {actor} missing from {services:?}"
        );
    }
    let names: BTreeSet<&str> = rollout_requests.iter().map(|r| r.name.as_str()).collect();
    for n in [
        "create deployments",
        "patch deployments",
        "create replicasets",
        "create pods",
        "create pods/binding",
        "patch pods/status",
        "delete pods",
    ] {
        assert!(names.contains(n), "operation {n} missing from {names:?}");
    }
    for r in &rollout_requests {
        let code: i64 = r.attributes["http.response.status_code"].parse().unwrap();
        assert_eq!(
            r.status_code == 2,
            code >= 400,
            "errors are marked: {} {code}",
            r.name
        );
        assert!(r.start_unix_nano <= r.end_unix_nano);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_replays_to_otlp_grpc_http_and_json_with_identical_ids() {
    let stream = rollout();
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "audit.log", &stream.to_json_lines());
    let json_out = dir.path().join("spans.otlp.jsonl");

    let grpc = OtlpReceiver::start().await.unwrap();
    let run = replay(&[
        "--cluster",
        "e2e",
        "--otlp-endpoint",
        &grpc.grpc_endpoint(),
        "--otlp-json",
        json_out.to_str().unwrap(),
        &log,
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    // The process exits 0 only once every span was delivered: no waiting needed.
    let via_grpc = grpc.spans();
    assert_rollout_traces(&via_grpc, &stream);
    assert!(
        run.stderr
            .contains(&format!("exported: {} spans", via_grpc.len())),
        "{}",
        run.stderr
    );

    // The OTLP/JSON file holds the same spans.
    let from_file = common::read_spans(&json_out);
    assert_eq!(id_set(&from_file), id_set(&via_grpc));

    // A second run, over HTTP/protobuf: the same ids (determinism across runs and protocols).
    let http = OtlpReceiver::start().await.unwrap();
    let run = replay(&[
        "--cluster",
        "e2e",
        "--otlp-endpoint",
        &http.http_endpoint(),
        "--otlp-protocol",
        "http",
        &log,
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let via_http = http.spans();
    assert_eq!(id_set(&via_http), id_set(&via_grpc));
    let names = |v: &[ReceivedSpan]| {
        v.iter()
            .map(|s| (s.span_id.clone(), s.name.clone(), s.service_name.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&via_http), names(&via_grpc));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_retries_when_the_receiver_refuses() {
    let stream = rollout();
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "audit.log", &stream.to_json_lines());
    let rx = OtlpReceiver::start().await.unwrap();
    rx.fail_next(2);
    let run = replay(&[
        "--cluster",
        "e2e",
        "--otlp-endpoint",
        &rx.grpc_endpoint(),
        &log,
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(rx.failed_count(), 2);
    assert_rollout_traces(&rx.spans(), &stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_stdin_and_malformed_lines() {
    let stream = rollout();
    let dir = tempfile::tempdir().unwrap();
    let plain = stream.to_json_lines();
    let lines: Vec<&str> = plain.lines().collect();
    // Two malformed lines in the middle: skipped, counted, reported with their line numbers.
    let mut broken = String::new();
    for (i, l) in lines.iter().enumerate() {
        broken.push_str(l);
        broken.push('\n');
        if i == 4 {
            broken.push_str("{\"kind\":\"Event\",\"level\":\"Metadata\"}\n");
            broken.push_str("this is not json\n");
        }
    }
    let gz_path = dir.path().join("audit.log.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz_path).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(broken.as_bytes()).unwrap();
    gz.finish().unwrap();

    // A directory that does not exist yet is created.
    let a = dir.path().join("new-dir").join("a.jsonl");
    let run = replay(&[
        "--cluster",
        "e2e",
        "--otlp-json",
        a.to_str().unwrap(),
        gz_path.to_str().unwrap(),
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr.contains("malformed records skipped: 2"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("audit.log.gz:6: missing field `auditID`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("audit.log.gz:7: not JSON"),
        "{}",
        run.stderr
    );

    // The same events on stdin give the same spans.
    let b = dir.path().join("b.jsonl");
    let mut child = bin()
        .args([
            "replay",
            "--cluster",
            "e2e",
            "--otlp-json",
            b.to_str().unwrap(),
            "-",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, plain.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans_a = common::read_spans(&a);
    let spans_b = common::read_spans(&b);
    assert_eq!(id_set(&spans_a), id_set(&spans_b));
    assert_rollout_traces(&spans_b, &stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_output_and_errors() {
    let stream = rollout();
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "audit.log", &stream.to_json_lines());
    let run = replay(&["--tree", "--no-progress", &log]).await;
    assert!(run.status.success(), "{}", run.stderr);
    let deployment = &stream
        .truth
        .objects
        .iter()
        .find(|o| o.resource == "deployments")
        .unwrap()
        .name;
    assert!(
        run.stdout
            .contains(&format!("deployments.apps/shop/{deployment}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("kube-scheduler  create pods/binding  201"),
        "{}",
        run.stdout
    );

    // An unreadable input is a clear error and a non-zero exit, before anything is exported.
    let run = replay(&["--tree", &log, "/nonexistent/audit.log"]).await;
    assert!(!run.status.success());
    assert!(
        run.stderr
            .contains("cannot open /nonexistent/audit.log: No such file"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    // No destination is a usage error.
    let run = replay(&[&log]).await;
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("nothing to send spans to"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_and_url_find_the_deployment_without_jaeger() {
    let stream = rollout();
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "audit.log", &stream.to_json_lines());
    let json = dir.path().join("spans.jsonl");
    let run = replay(&[
        "--cluster",
        "c1",
        "--otlp-json",
        json.to_str().unwrap(),
        &log,
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    let spans = common::read_spans(&json);
    let root = spans
        .iter()
        .find(|s| s.kind == OBJECT_KIND && s.parent_span_id.is_none())
        .unwrap();

    // `url` derives the same trace id from the object and a time in its window.
    let out = bin()
        .args([
            "url",
            "--cluster",
            "c1",
            "--jaeger-url",
            "http://jaeger:16686/",
            "--time",
            "2024-05-01T10:00:10Z",
            "deployments/shop/web",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("http://jaeger:16686/trace/{}", root.trace_id)
    );

    // `timeline` prints the family, and --since keeps only the later requests.
    let out = bin()
        .args(["timeline", "deployments/shop/web", &log])
        .output()
        .await
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success());
    assert!(all.starts_with("deployments.apps/shop/web"), "{all}");
    assert!(all.contains("kubectl  create deployments  201"), "{all}");
    assert!(
        all.contains("kube-scheduler  create pods/binding  201"),
        "{all}"
    );
    let out = bin()
        .args([
            "timeline",
            "--since",
            "2024-05-01T10:00:29Z",
            "deployments/shop/web",
            &log,
        ])
        .output()
        .await
        .unwrap();
    let late = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!late.contains("create deployments"), "{late}");
    assert!(late.contains("delete pods"), "{late}");
    // An object that is not in the dump is said so, with a distinct exit code.
    let out = bin()
        .args(["timeline", "deployments/shop/nope", &log])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mutating requests"));
}

#[tokio::test]
async fn cloud_records_without_a_kubernetes_event_are_skipped_not_malformed() {
    // A GKE audit sink holds the API server's entries (k8s.io) and the control plane's own
    // (container.googleapis.com): the latter are not errors, and are said apart.
    let gke = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../testdata/audit-samples/otel-collector-contrib-cloud-exports/gke-cloud-logging",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let broken = write(dir.path(), "broken.json", "{\"records\": [\n");
    let run = replay(&[
        "--otlp-json",
        out.to_str().unwrap(),
        gke.join("activity.json").to_str().unwrap(),
        gke.join("data_access.json").to_str().unwrap(),
        &broken,
    ])
    .await;
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("skipped (not Kubernetes audit records): 1"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("container.googleapis.com"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("malformed records skipped: 1"),
        "only the broken file is malformed: {}",
        run.stderr
    );
}
