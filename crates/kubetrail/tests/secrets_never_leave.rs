//! Secrets never leave: a value planted in a Secret (data, stringData, the kubectl
//! last-applied annotation, a patch) and in a configured redaction path is searched for in
//! every output — OTLP spans, the OTLP/JSON file, the terminal tree, the HTML report, and logs
//! at trace level — through both `replay` and the `serve` webhook.

use std::process::Stdio;

mod common;

use common::terminate;
use kubetrail_testkit::{ApiServerClient, OtlpReceiver};
use serde_json::{Value, json};
use tokio::process::Command;

const PLANTED: &str = "PLANTED-s3cr3t-9f2c1e";

fn b64(s: &str) -> String {
    kubetrail_testkit::base64(s.as_bytes())
}

#[allow(clippy::too_many_arguments)]
fn event(
    id: &str,
    verb: &str,
    resource: &str,
    name: &str,
    group: &str,
    request: Value,
    response: Value,
    t: &str,
) -> Value {
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse", "auditID": id,
        "stage": "ResponseComplete", "requestURI": format!("/api/v1/namespaces/shop/{resource}/{name}"), "verb": verb,
        "user": {"username": "kubernetes-admin"}, "userAgent": "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350",
        "objectRef": {"resource": resource, "namespace": "shop", "name": name, "apiGroup": group, "apiVersion": "v1"},
        "responseStatus": {"code": 200}, "requestObject": request, "responseObject": response,
        "requestReceivedTimestamp": t, "stageTimestamp": t
    })
}

fn events() -> Vec<Value> {
    let secret = |rv: &str| {
        json!({"kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": "db", "namespace": "shop", "uid": "s1", "resourceVersion": rv,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{{\"stringData\":{{\"password\":\"{PLANTED}\"}}}}")}},
            "data": {"password": b64(PLANTED)}, "type": "Opaque"})
    };
    let deployment = json!({"kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "web", "namespace": "shop", "uid": "d1"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx", "env": [{"name": "DB_PASSWORD", "value": PLANTED}]}]}}}});
    vec![
        event(
            "a1",
            "create",
            "secrets",
            "db",
            "",
            secret("1"),
            secret("1"),
            "2024-05-01T10:00:00.000001Z",
        ),
        event(
            "a2",
            "patch",
            "secrets",
            "db",
            "",
            json!({"stringData": {"password": format!("{PLANTED}-2")}}),
            secret("2"),
            "2024-05-01T10:00:01.000001Z",
        ),
        event(
            "a3",
            "create",
            "deployments",
            "web",
            "apps",
            deployment.clone(),
            deployment,
            "2024-05-01T10:00:02.000001Z",
        ),
    ]
}

const CONFIG: &str =
    "decorate:\n  redact:\n    paths: [\"spec.template.spec.containers[*].env[*].value\"]\n";

fn assert_clean(what: &str, text: &str) {
    assert!(
        !text.contains(PLANTED),
        "{what} contains the planted secret"
    );
    assert!(
        !text.contains(&b64(PLANTED)),
        "{what} contains the planted secret, base64"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_outputs_and_logs_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let lines: Vec<String> = events().iter().map(Value::to_string).collect();
    std::fs::write(&log, lines.join("\n")).unwrap();
    assert!(
        std::fs::read_to_string(&log).unwrap().contains(PLANTED),
        "the input does hold it"
    );
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let json = dir.path().join("o.jsonl");
    let html = dir.path().join("report.html");
    let otlp = OtlpReceiver::start().await.unwrap();
    let out = common::run_ok([
        "--log-level",
        "trace",
        "replay",
        "--tree",
        "--config",
        cfg.to_str().unwrap(),
        "--otlp-json",
        json.to_str().unwrap(),
        "--otlp-endpoint",
        &otlp.grpc_endpoint(),
        "--html",
        html.to_str().unwrap(),
        log.to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("create secrets"), "{stdout}");
    assert!(
        stdout.contains("<redacted sha256:"),
        "the change is still visible, as a hash: {stdout}"
    );
    assert!(
        stderr.contains("TRACE") || stderr.contains("DEBUG"),
        "logs were on"
    );
    assert_clean("the tree", &stdout);
    assert_clean("the logs", &stderr);
    assert_clean(
        "the OTLP/JSON file",
        &std::fs::read_to_string(&json).unwrap(),
    );
    let spans = format!("{:?}", otlp.spans());
    assert!(spans.contains("kubetrail.diff"), "diffs were exported");
    assert_clean("the OTLP spans", &spans);
    let report = std::fs::read_to_string(&html).unwrap();
    assert_clean("the HTML report", &report);
    // Its data is compressed: look inside too.
    let data = kubetrail_export::read_report_data(&report)
        .expect("the report's data")
        .to_string();
    assert!(
        data.contains("<redacted sha256:"),
        "the report shows the redacted change"
    );
    assert!(
        data.contains("secrets/shop/db"),
        "the Secret is in the report"
    );
    assert_clean("the HTML report's data", &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_outputs_and_logs_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let json = dir.path().join("o.jsonl");
    let otlp = OtlpReceiver::start().await.unwrap();
    let endpoint = otlp.grpc_endpoint();
    let args = [
        "--log-level",
        "trace",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
        "--otlp-json",
        json.to_str().unwrap(),
        "--otlp-endpoint",
        &endpoint,
    ];
    let (mut child, addr, drain) = common::spawn_serve_args(&args).await;
    let report = ApiServerClient::new(&format!("http://{addr}/audit/c1"))
        .send_events(&events())
        .await
        .unwrap();
    assert!(report.all_delivered());
    assert!(terminate(&mut child).await.success());
    let log = drain.await.unwrap();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "logs were on"
    );
    assert_clean("the logs", &log);
    assert_clean(
        "the OTLP/JSON file",
        &std::fs::read_to_string(&json).unwrap(),
    );
    let spans = otlp.spans();
    assert_eq!(spans.iter().filter(|s| s.kind == 2).count(), 3);
    assert_clean("the OTLP spans", &format!("{spans:?}"));
}

/// The redaction markers (`<redacted sha256:…>`) in the OTLP/JSON file of one `replay`
/// process over [`events`], with the salt given through `env`.
async fn markers_of_one_process(
    dir: &std::path::Path,
    run: &str,
    env: &[(&str, &str)],
) -> std::collections::BTreeSet<String> {
    let log = dir.join("audit.log");
    let lines: Vec<String> = events().iter().map(Value::to_string).collect();
    std::fs::write(&log, lines.join("\n")).unwrap();
    let json = dir.join(format!("{run}.jsonl"));
    let cfg = dir.join("c.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubetrail"));
    cmd.args(["replay", "--config", cfg.to_str().unwrap()])
        .args(["--otlp-json", json.to_str().unwrap()])
        .arg(&log)
        .env_remove("KUBETRAIL_REDACT_SALT")
        .env_remove("KUBETRAIL_REDACT_SALT_FILE")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    assert_clean(run, &text);
    let mut markers = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<redacted sha256:") {
        let tail = &rest[i..];
        let end = tail.find('>').expect("a marker ends with >");
        markers.insert(tail[..=end].to_owned());
        rest = &tail[end..];
    }
    markers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_salt_gives_the_same_markers_in_every_process() {
    // Two replicas (as the scale-out overlay's `receive` and `consume` Pods) sharing one salt,
    // once as text and once as a mounted file, must write the same markers: otherwise a value
    // seen by both looks "changed". Without a shared salt each process picks its own.
    let dir = tempfile::tempdir().unwrap();
    let salt = "one salt for every replica, 0123456789";
    let salt_file = dir.path().join("salt");
    std::fs::write(&salt_file, format!("{salt}\n")).unwrap();
    let a = markers_of_one_process(dir.path(), "a", &[("KUBETRAIL_REDACT_SALT", salt)]).await;
    let b = markers_of_one_process(
        dir.path(),
        "b",
        &[("KUBETRAIL_REDACT_SALT_FILE", salt_file.to_str().unwrap())],
    )
    .await;
    assert!(a.len() >= 2, "the Secret's values became markers: {a:?}");
    assert_eq!(
        a, b,
        "the same salt, as text or file, gives the same markers"
    );
    let other = markers_of_one_process(
        dir.path(),
        "c",
        &[("KUBETRAIL_REDACT_SALT", "another salt entirely, 9876543210")],
    )
    .await;
    assert!(a.is_disjoint(&other), "another salt, other markers");
    let unsalted_1 = markers_of_one_process(dir.path(), "d", &[]).await;
    let unsalted_2 = markers_of_one_process(dir.path(), "e", &[]).await;
    assert!(
        unsalted_1.is_disjoint(&unsalted_2),
        "without a configured salt, each process has its own"
    );
}
