//! Per-item problems are counted, not logged one line each: a 10,000-item EventList of bad
//! items, sent to a running `kubetrail serve` by a real HTTP client, writes a bounded number
//! of log lines (the first ones, then one summary line for the batch), while the metric counts
//! every rejected item and the good item is accepted. The log lines carry the webhook
//! request's span (cluster, items).

use std::time::Duration;

mod common;

use common::{first_word, live_start, rfc3339, spawn_serve, spawn_until, terminate};

const TOKEN: &str = "log-limits-token";
const ITEMS: usize = 10_000;
/// `ITEM_LOG_MAX` of the receiver.
const LOGGED_AT_MOST: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_items_write_a_bounded_number_of_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let out = dir.path().join("spans.json");
    let (mut child, addr, stderr) = spawn_serve(&[
        "--token-file",
        tokens.to_str().unwrap(),
        "--otlp-json",
        out.to_str().unwrap(),
        "--linger",
        "1h",
    ])
    .await;

    let t = rfc3339(live_start());
    let good = serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": "00000000-0000-4000-8000-000000000001", "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/shop/pods/web-1/status", "verb": "patch",
        "user": {"username": "system:node:node-1"}, "userAgent": "kubelet/v1.31.0",
        "objectRef": {"resource": "pods", "namespace": "shop", "name": "web-1",
                      "apiVersion": "v1", "subresource": "status"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": t, "stageTimestamp": t
    });
    // Items without an auditID, stage, verb, …: each one malformed.
    let mut items = vec![good];
    items.extend((1..ITEMS).map(|i| serde_json::json!({"level": "Metadata", "n": i})));
    let batch = kubetrail_testkit::event_list(&items);
    let http = reqwest::Client::new();
    let body = common::post_batch_ok(&http, &format!("http://{addr}/audit"), TOKEN, &batch).await;

    let metrics = common::get_text(&http, &format!("http://{addr}/metrics")).await;
    let rejected = kubetrail_testkit::prometheus_value(
        &metrics,
        "kubetrail_events_rejected_total",
        &[("reason", "malformed_item")],
    )
    .unwrap_or_else(|| panic!("no malformed_item count:\n{metrics}"));
    assert_eq!(
        rejected,
        (ITEMS - 1) as f64,
        "every bad item counted:\n{metrics}"
    );

    let status = terminate(&mut child).await;
    let log = strip_ansi(&stderr.await.unwrap());
    assert!(status.success(), "{log}");
    let per_item: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rejected a malformed audit event"))
        .collect();
    assert!(
        !per_item.is_empty() && per_item.len() <= LOGGED_AT_MOST,
        "{} per-item lines for {} bad items (answer {body})",
        per_item.len(),
        ITEMS - 1
    );
    let summary: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("log rate limit"))
        .collect();
    assert_eq!(summary.len(), 1, "{log}");
    let not_logged = ITEMS - 1 - per_item.len();
    assert!(
        summary[0].contains(&format!("rejected={}", ITEMS - 1))
            && summary[0].contains(&format!("not_logged={not_logged}")),
        "{}",
        summary[0]
    );
    // The lines carry the request's span: its cluster and item count.
    for l in per_item.iter().chain(&summary) {
        assert!(
            l.contains("audit_request{") && l.contains(&format!("items={ITEMS}")),
            "{l}"
        );
    }
    let total = log.lines().count();
    assert!(total < 100, "{total} log lines:\n{log}");
}

/// `text` without ANSI colour sequences (`ESC [ … m`), which the log format writes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `kubetrail follow` of a file with 5,000 broken lines: every line counted, a bounded number
/// of log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_file_of_broken_lines_writes_a_bounded_number_of_log_lines() {
    const BROKEN: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let mut text = String::new();
    for i in 0..BROKEN {
        text.push_str(&format!("{{\"level\": \"Metadata\", \"broken\": {i}}}\n"));
    }
    std::fs::write(&log, text).unwrap();
    let config = dir.path().join("kubetrail.yaml");
    std::fs::write(&config, "follow:\n  poll_interval: 20ms\n").unwrap();
    let out = dir.path().join("spans.json");
    let state = dir.path().join("state.json");
    let (mut child, rest, stderr) = spawn_until(
        &[
            "follow",
            "--config",
            config.to_str().unwrap(),
            "--linger",
            "1h",
            "--otlp-json",
            out.to_str().unwrap(),
            "--state-file",
            state.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
            log.to_str().unwrap(),
        ],
        "kubetrail follow: metrics on http://",
    )
    .await;
    let metrics_url = format!("http://{}", first_word(&rest));
    let http = reqwest::Client::new();
    // Synchronise on the counter: every broken line was read and counted.
    let counted = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let text = common::get_text(&http, &metrics_url).await;
            let n =
                kubetrail_testkit::prometheus_value(&text, "kubetrail_follow_malformed_total", &[]);
            if n == Some(BROKEN as f64) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the broken lines were not all counted");
    let status = terminate(&mut child).await;
    let log = strip_ansi(&stderr.await.unwrap());
    assert!(status.success(), "{log}");
    let per_line = log
        .lines()
        .filter(|l| l.contains("malformed audit line skipped"))
        .count();
    let summaries = log.lines().filter(|l| l.contains("log rate limit")).count();
    assert!(
        (1..=LOGGED_AT_MOST).contains(&per_line),
        "{per_line} lines for {BROKEN} broken lines"
    );
    assert!(summaries >= 1, "{log}");
    let total = log.lines().count();
    assert!(total < 200, "{total} log lines:\n{log}");
}
