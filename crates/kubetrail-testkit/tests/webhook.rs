//! The API-server-like webhook client against a scripted HTTP server on loopback: batching,
//! retries on non-2xx and on connection errors, gzip, bearer token, raw posts.

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kubetrail_testkit::ApiServerClient;
use serde_json::{Value, json};

/// What the server saw, and how many requests it still fails with 503.
#[derive(Default)]
struct Seen {
    fail_next: usize,
    /// (auditIDs of the body, authorization, content-encoding) of every request.
    requests: Vec<(Vec<String>, Option<String>, Option<String>)>,
}

async fn audit(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |n: &str| {
        headers
            .get(n)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    let encoding = header("content-encoding");
    let json = if encoding.as_deref() == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        body.to_vec()
    };
    let list: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(list["kind"], "EventList");
    let ids: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["auditID"].as_str().unwrap_or("").to_owned())
        .collect();
    let n = ids.len();
    let mut seen = seen.lock().unwrap();
    seen.requests.push((ids, header("authorization"), encoding));
    if seen.fail_next > 0 {
        seen.fail_next -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "full".to_owned());
    }
    let rejected: Vec<Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, i)| i["auditID"].is_null())
        .map(|(index, _)| json!({"index": index, "reason": "no auditID"}))
        .collect();
    let answer = json!({"accepted": n - rejected.len(), "rejected": rejected});
    (StatusCode::OK, answer.to_string())
}

async fn start(fail_next: usize) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen {
        fail_next,
        ..Seen::default()
    }));
    let app = Router::new()
        .route("/audit", post(audit))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/audit"), seen)
}

fn items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"auditID": format!("id-{i}")}))
        .collect()
}

#[tokio::test]
async fn batches_retries_gzip_and_token() {
    let (url, seen) = start(2).await;
    let events = items(7);
    let report = ApiServerClient::new(&url)
        .with_batch_size(3)
        .with_retries(5, Duration::from_millis(1))
        .with_token("s3cret")
        .gzip(true)
        .send_events(&events)
        .await
        .unwrap();
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(report.accepted, 7);
    assert_eq!(report.statuses(), vec![503, 503, 200, 200, 200]);
    assert_eq!(
        report
            .batches
            .iter()
            .map(|b| (b.first_event, b.events, b.attempts))
            .collect::<Vec<_>>(),
        vec![(0, 3, 3), (3, 3, 1), (6, 1, 1)]
    );
    let seen = seen.lock().unwrap();
    let ids: Vec<Vec<String>> = seen.requests.iter().map(|r| r.0.clone()).collect();
    assert_eq!(ids[0], ids[1], "a retry resends the same batch");
    assert_eq!(ids[0], ids[2]);
    assert_eq!(
        ids[2..].concat(),
        events
            .iter()
            .map(|e| e["auditID"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    );
    assert!(
        seen.requests
            .iter()
            .all(|r| r.1.as_deref() == Some("Bearer s3cret") && r.2.as_deref() == Some("gzip"))
    );
}

#[tokio::test]
async fn gives_up_after_max_retries_and_reports_rejections() {
    let (url, _seen) = start(100).await;
    let report = ApiServerClient::new(&url)
        .with_retries(2, Duration::from_millis(1))
        .send_events(&items(2))
        .await
        .unwrap();
    assert!(!report.all_delivered());
    assert_eq!(report.statuses(), vec![503, 503, 503]);
    assert_eq!(report.batches[0].attempts, 3);
    assert!(
        report.batches[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("503")
    );

    let (url, _seen) = start(0).await;
    let mut events = items(4);
    events[2] = json!({"level": "Metadata"});
    let report = ApiServerClient::new(&url)
        .with_batch_size(2)
        .send_events(&events)
        .await
        .unwrap();
    assert_eq!(report.accepted, 3);
    assert_eq!(report.rejected(), vec![(2, "no auditID".to_owned())]);
}

#[tokio::test]
async fn connection_errors_count_as_failed_attempts() {
    // A port with nothing listening: bind, learn the port, close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let report = ApiServerClient::new(&format!("http://{addr}/audit"))
        .with_retries(1, Duration::from_millis(1))
        .send_events(&items(1))
        .await
        .unwrap();
    assert_eq!(report.statuses(), vec![0, 0]);
    assert!(!report.all_delivered());
}

#[tokio::test]
async fn post_raw_returns_status_headers_and_body() {
    let (url, seen) = start(1).await;
    let client = ApiServerClient::new(&url).with_token("t");
    let body = serde_json::to_vec(&kubetrail_testkit::event_list(&items(1))).unwrap();
    let resp = client
        .post_raw("", body.clone(), &[("authorization", "Bearer other")])
        .await
        .unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.text(), "full");
    assert!(resp.header("content-type").is_some());
    assert_eq!(resp.version, "HTTP/1.1");
    let resp = client.post_raw("", body, &[]).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json().unwrap()["accepted"], 1);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.requests[0].1.as_deref(),
        Some("Bearer other"),
        "an explicit header wins"
    );
    assert_eq!(seen.requests[1].1.as_deref(), Some("Bearer t"));
}
