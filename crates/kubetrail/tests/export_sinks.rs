//! `export.sinks`: several destinations built from the config file, each receiving every
//! span — two real Jaeger v2 instances (one over OTLP gRPC, one over OTLP HTTP, read back
//! through their query API), an OTLP/JSON file and a tree file — and the start-up health
//! check of OTLP endpoints (a warning, never a failure).

use std::time::Duration;

use kubetrail_testkit::Jaeger;
use tokio::io::{AsyncBufReadExt, BufReader};

mod common;

use common::{id_set, terminate, wait_for_jaeger_ids};

/// How long Jaeger may take to show what was exported.
const DEADLINE: Duration = Duration::from_secs(90);

fn example_dump() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rollout.audit.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_configured_sink_gets_every_span_two_jaegers_a_file_and_a_tree() {
    let grpc = Jaeger::start().unwrap();
    let http = Jaeger::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out/spans.jsonl");
    let tree = dir.path().join("out/tree.txt");
    let config = dir.path().join("kubetrail.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: sinks\nexport:\n  health_check: true\n  sinks:\n  - type: otlp\n    endpoint: {}\n  - type: otlp\n    endpoint: {}\n    protocol: http\n  - type: otlp_json\n    path: {}\n  - type: tree\n    path: {}\n",
            grpc.otlp_grpc_endpoint(),
            http.otlp_http_endpoint(),
            json.display(),
            tree.display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args(["replay", "--log-level", "info", "--config"])
        .arg(&config)
        .arg(example_dump())
        .env_remove("KUBETRAIL_OTLP_ENDPOINT")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let written = common::read_spans(&json);
    let expected = id_set(&written);
    assert!(
        expected.len() > 100,
        "the rollout's spans: {}",
        expected.len()
    );
    for (name, jaeger) in [("gRPC", &grpc), ("HTTP", &http)] {
        let got = wait_for_jaeger_ids(&jaeger.query(), &expected, DEADLINE).await;
        assert_eq!(
            got, expected,
            "the Jaeger fed over OTLP {name} holds exactly the spans written"
        );
    }
    let tree = std::fs::read_to_string(&tree).unwrap();
    assert!(
        tree.contains("deployments") && tree.contains("pods"),
        "the tree file shows the rollout:\n{tree}"
    );
    assert!(!tree.contains('\u{1b}'), "no colours in a file");
    for endpoint in [grpc.otlp_grpc_endpoint(), http.otlp_http_endpoint()] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("OTLP endpoint takes exports") && l.contains(&endpoint)),
            "the start-up check of {endpoint} passed:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_endpoint_that_does_not_answer_is_a_warning_at_start_not_a_failure() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &endpoint,
        ])
        .env_remove("KUBETRAIL_OTLP_ENDPOINT")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let warning = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("OTLP endpoint did not take an empty export") {
                return Some(line);
            }
        }
        None
    })
    .await;
    let line = match warning {
        Ok(Some(line)) => line,
        Ok(None) => panic!("serve exited without the warning:\n{seen}"),
        Err(_) => panic!("no start-up warning within {DEADLINE:?}:\n{seen}"),
    };
    assert!(line.contains("WARN") && line.contains(&endpoint), "{line}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve keeps running after the warning:\n{seen}"
    );
    let status = terminate(&mut child).await;
    assert!(
        status.success(),
        "a clean stop with nothing to export: {status:?}"
    );
}
