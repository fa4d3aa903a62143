//! The HTML report end to end: the `kubetrail` binary writes it (`replay --html`,
//! `timeline --html`), its data agrees with the OTLP/JSON written by the same run and with the
//! generator's ground truth, and a real headless Chromium (Debian's, driven by
//! playwright-core from `scripts/browser-test`) opens it, finds the families, rows and bars,
//! clicks a request and reads its diff, searches, filters, scrolls a 1,200-replica rollout and
//! takes a screenshot.
//!
//! The browser test installs what it needs itself (`scripts/install-browser-test.sh`: apt
//! chromium + `npm ci` into `.tools/`). `KUBETRAIL_REPORT_SCREENSHOT=PATH` keeps the
//! screenshot (the README's is `docs/report.png`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use common::read_spans as otlp;
use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::ReceivedSpan;
use serde_json::{Value, json};
use tokio::process::Command;

const OBJECT_KIND: i32 = 1;
const REQUEST_KIND: i32 = 2;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubetrail"));
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

/// Runs `kubetrail ARGS`, asserts success, returns stderr and the wall time.
async fn kubetrail(args: &[&str]) -> (String, std::time::Duration) {
    let started = Instant::now();
    let out = common::run_ok(args).await;
    let elapsed = started.elapsed();
    (String::from_utf8_lossy(&out.stderr).into_owned(), elapsed)
}

/// The data embedded in a report.
fn report_data(html: &str) -> Value {
    kubetrail_export::read_report_data(html).expect("the report's data")
}

fn s(d: &Value, v: &Value) -> String {
    d["strings"][v.as_u64().expect("a string index") as usize]
        .as_str()
        .expect("a string")
        .to_owned()
}

fn row_refs(d: &Value) -> Vec<String> {
    d["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| s(d, &r[0]))
        .collect()
}

fn example() -> String {
    workspace()
        .join("examples/rollout.audit.log")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Objects, requests and families of an OTLP/JSON output, as the report should count them.
fn counts(spans: &[ReceivedSpan]) -> (BTreeSet<String>, usize, BTreeSet<String>) {
    let objects: BTreeSet<String> = spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND)
        .map(|s| s.attributes["kubetrail.object.ref"].clone())
        .collect();
    let requests = spans.iter().filter(|s| s.kind == REQUEST_KIND).count();
    let families: BTreeSet<String> = spans
        .iter()
        .filter(|s| s.kind == OBJECT_KIND)
        .map(|s| s.attributes["kubetrail.family.root"].clone())
        .collect();
    (objects, requests, families)
}

#[tokio::test]
async fn replay_html_holds_what_the_otlp_output_holds() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let json = dir.path().join("spans.jsonl");
    kubetrail(&[
        "replay",
        "--no-progress",
        "--html",
        html.to_str().unwrap(),
        "--otlp-json",
        json.to_str().unwrap(),
        "--jaeger-url",
        "http://jaeger.example:16686/",
        &example(),
    ])
    .await;
    let text = std::fs::read_to_string(&html).unwrap();
    let d = report_data(&text);
    let spans = otlp(&json);
    let (objects, requests, families) = counts(&spans);

    let refs = row_refs(&d);
    assert_eq!(refs.iter().cloned().collect::<BTreeSet<_>>(), objects);
    assert_eq!(refs.len(), objects.len(), "one row per object");
    assert_eq!(d["requests"].as_array().unwrap().len(), requests);
    let roots: BTreeSet<String> = d["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| s(&d, &f[1]))
        .collect();
    assert_eq!(roots, families);
    assert_eq!(d["jaeger"], "http://jaeger.example:16686");
    assert!(d["title"].as_str().unwrap().contains("rollout.audit.log"));

    // Every request's ids are those of a span of the OTLP output, on its object's row.
    let ids = d["ids"].as_array().unwrap();
    let otlp_ids: BTreeSet<(String, String)> = spans
        .iter()
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect();
    let rows = d["rows"].as_array().unwrap();
    for (i, row) in rows.iter().enumerate() {
        for q in &d["requests"].as_array().unwrap()
            [row[6].as_u64().unwrap() as usize..row[7].as_u64().unwrap() as usize]
        {
            let trace = ids[q[9].as_u64().unwrap() as usize].as_str().unwrap();
            let span = q[10].as_str().unwrap();
            assert!(
                otlp_ids.contains(&(trace.to_owned(), span.to_owned())),
                "request {span} of row {i}"
            );
            let source = spans.iter().find(|s| s.span_id == span).unwrap();
            assert_eq!(
                source.attributes.get("kubetrail.object.ref"),
                Some(&refs[i]),
                "{} is on its object's row",
                source.name
            );
        }
    }
    // The owner chain: the Deployment first, its ReplicaSets under it, Pods under those.
    assert_eq!(refs[0], "deployments.apps/shop/web");
    for row in rows {
        let me = s(&d, &row[0]);
        let parent = row[4].as_i64().unwrap();
        if me.starts_with("replicasets") {
            assert_eq!(refs[parent as usize], "deployments.apps/shop/web");
        } else if me.starts_with("pods/") {
            assert!(refs[parent as usize].starts_with("replicasets.apps/shop/web-"));
        }
    }
    // The image change is a diff on the kubectl patch.
    let reqs = d["requests"].as_array().unwrap();
    let patch = reqs
        .iter()
        .find(|q| s(&d, &q[3]) == "patch deployments" && s(&d, &q[2]) == "kubectl")
        .expect("the kubectl patch");
    let detail = &d["details"][patch[12].as_u64().unwrap() as usize];
    let change = detail[0]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            s(&d, &c[1]).starts_with("spec.template.spec.containers[")
                && s(&d, &c[1]).ends_with("].image")
        })
        .expect("the image change");
    assert_eq!(
        (s(&d, &change[2]), s(&d, &change[3])),
        ("nginx:1.25".to_owned(), "nginx:1.27".to_owned())
    );
}

#[tokio::test]
async fn timeline_html_holds_one_family() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("web.html");
    let out = common::run_ok([
        "timeline",
        "--html",
        html.to_str().unwrap(),
        "deployments/shop/web",
        &example(),
    ])
    .await;
    assert!(out.stdout.is_empty(), "the report replaces the tree");
    let d = report_data(&std::fs::read_to_string(&html).unwrap());
    assert_eq!(d["families"].as_array().unwrap().len(), 1);
    assert_eq!(s(&d, &d["families"][0][1]), "deployments.apps/shop/web");
    let refs = row_refs(&d);
    assert!(refs.iter().any(|r| r.starts_with("pods/shop/web-")));
    assert!(
        refs.iter().all(|r| !r.starts_with("configmaps/")),
        "nothing of other families: {refs:?}"
    );

    // An object that is not in the dump: exit code 4, as without --html.
    let out = bin()
        .args([
            "timeline",
            "--html",
            html.to_str().unwrap(),
            "pods/shop/nowhere",
            &example(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4));

    // An unwritable report path fails before the input is read.
    let out = bin()
        .args(["replay", "--html", "/nonexistent-dir/r.html", &example()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir/r.html"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs Chromium and playwright-core (idempotent), returns the node_modules' directory.
fn install_browser() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(workspace().join("scripts/install-browser-test.sh"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/install-browser-test.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("the install directory").trim())
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_works_in_headless_chromium() {
    let modules = install_browser();
    let dir = tempfile::tempdir().unwrap();

    // The example dump, and the OTLP/JSON of the same run for the expected counts.
    let small = dir.path().join("example.html");
    let json = dir.path().join("example.jsonl");
    let (_, small_time) = kubetrail(&[
        "replay",
        "--no-progress",
        "--html",
        small.to_str().unwrap(),
        "--otlp-json",
        json.to_str().unwrap(),
        &example(),
    ])
    .await;
    let spans = otlp(&json);
    let (objects, requests, families) = counts(&spans);
    let pod = objects
        .iter()
        .find(|o| o.starts_with("pods/"))
        .unwrap()
        .clone();

    // The 1,200-replica rollout.
    let scenario = RolloutScenario {
        replicas: 1200,
        ..RolloutScenario::default()
    };
    let stream = scenario.generate();
    let log = dir.path().join("large.audit.log");
    std::fs::write(&log, stream.to_json_lines()).unwrap();
    let large = dir.path().join("large.html");
    let (_, large_time) = kubetrail(&[
        "replay",
        "--no-progress",
        "--html",
        large.to_str().unwrap(),
        log.to_str().unwrap(),
    ])
    .await;
    let truth = &stream.truth;
    let last_pod = truth
        .objects
        .iter()
        .rev()
        .find(|o| o.resource == "pods")
        .unwrap();
    let last_pod = format!("pods/{}/{}", last_pod.namespace, last_pod.name);
    let screenshot = std::env::var_os("KUBETRAIL_REPORT_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("report.png"));

    let spec = json!({
        "modules": modules,
        "screenshot": screenshot,
        "reports": [
            {
                "name": "example", "path": small, "screenshot": true,
                "families": families.len(), "root": "deployments.apps/shop/web",
                "rows": objects.len(), "requests": requests,
                "click": { "row": "deployments.apps/shop/web", "bar": "patch deployments · kubectl",
                           "diff": ["].image", "nginx:1.25", "nginx:1.27"] },
                "searches": [
                    { "query": "409", "rows": ["deployments.apps/shop/web"], "bars": "· 409 ·", "maxRows": 1 },
                    { "query": "kube-scheduler", "rows": [pod], "bars": "kube-scheduler", "maxRows": objects.len() },
                ],
            },
            {
                "name": "rollout-1200", "path": large,
                "families": truth.roots().count(), "root": "deployments.apps/shop/web",
                "rows": truth.objects.len(), "requests": truth.mutating_requests + truth.kube_events,
                "click": { "row": "deployments.apps/shop/web", "bar": "patch deployments · kubectl",
                           "diff": ["].image", "nginx:1.25", "nginx:1.27"] },
                "searches": [
                    { "query": last_pod.rsplit('/').next().unwrap(), "rows": [last_pod.clone()], "bars": "", "maxRows": 3 },
                ],
                "scrollTo": last_pod,
            }
        ]
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = Command::new("node")
        .arg(workspace().join("scripts/browser-test/report-test.mjs"))
        .arg(&spec_path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true);
    let diff = result["results"][0]["diffText"].as_str().unwrap();
    assert!(
        diff.contains("nginx:1.25") && diff.contains("nginx:1.27"),
        "{diff}"
    );
    assert!(file_size(&screenshot) > 10_000, "a screenshot was taken");
    // The figures BENCHMARKS.md reports (printed, never asserted: speed is not a test).
    for (r, path, took) in [
        (&result["results"][0], &small, small_time),
        (&result["results"][1], &large, large_time),
    ] {
        eprintln!(
            "html report {}: {} bytes, replay --html {:.2?} (debug build), {} rows, {} requests; \
             chromium: load {} ms, first render {:.0} ms, scroll {}",
            r["name"],
            file_size(path),
            took,
            r["rows"],
            r["requests"],
            r["loadMs"],
            r["firstRenderMs"].as_f64().unwrap_or(0.0),
            r["scrollMs"]
        );
    }
}
