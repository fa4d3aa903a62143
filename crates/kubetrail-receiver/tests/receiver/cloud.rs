//! The cloud push endpoints over real HTTP: Kinesis Data Firehose HTTP-endpoint deliveries
//! (EKS audit logs through a CloudWatch Logs subscription) and Pub/Sub push (GKE), each with
//! its own credential, answering as the pushing service expects.

use base64::Engine as _;
use kubetrail_receiver::ReceiverConfig;
use serde_json::{Value, json};

use crate::common::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn token_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("tokens");
    std::fs::write(&p, "firehose-key\n").unwrap();
    p
}

/// A Firehose delivery of `n` generated events, as a CloudWatch Logs subscription filter
/// (gzip) record plus a control message, the way EKS audit logs arrive.
fn delivery(request_id: &str, n: usize) -> Value {
    let logs = json!({
        "messageType": "DATA_MESSAGE", "owner": "123456789012",
        "logGroup": "/aws/eks/prod/cluster",
        "logStream": "kube-apiserver-audit-ea9c831555adca1815ae04b884b30566",
        "subscriptionFilters": ["kubetrail"],
        "logEvents": (0..n).map(|i| json!({"id": i.to_string(), "timestamp": 1714557600000u64,
            "message": event(i).to_string()})).collect::<Vec<_>>()
    });
    let control = json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs",
        "logGroup": "", "logStream": "", "subscriptionFilters": [], "logEvents": []});
    json!({
        "requestId": request_id,
        "timestamp": 1714557601000u64,
        "records": [
            {"data": b64(&gzip(control.to_string().as_bytes()))},
            {"data": b64(&gzip(logs.to_string().as_bytes()))},
            {"data": "not base64!"}
        ]
    })
}

async fn post(url: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, Value) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn firehose_delivery_with_access_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(ReceiverConfig {
        token_file: Some(token_file(&dir)),
        ..config()
    })
    .await;
    let url = h.url("/firehose/eks-prod");
    let id = "ed4acda5-034f-9f42-bba1-f29aea6d7d8f";
    let body = || serde_json::to_vec(&delivery(id, 3)).unwrap();
    let rid = ("x-amz-firehose-request-id", id);

    let (status, answer) = post(&url, body(), &[rid]).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["requestId"], id);
    assert!(answer["timestamp"].as_u64().unwrap() > 0);
    assert!(
        answer["errorMessage"]
            .as_str()
            .unwrap()
            .contains("X-Amz-Firehose-Access-Key")
    );

    let (status, answer) = post(&url, body(), &[rid, ("x-amz-firehose-access-key", "wrong")]).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["requestId"], id);

    // The right key: 200 with only requestId and timestamp; the 3 events are published, the
    // control message skipped, the broken record counted (Firehose would retry a non-200).
    let key = ("x-amz-firehose-access-key", "firehose-key");
    let (status, answer) = post(&url, body(), &[rid, key]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["requestId"], id);
    assert!(answer["timestamp"].as_u64().unwrap() > 0);
    assert!(answer.get("errorMessage").is_none(), "{answer}");
    let batch = h.next_batch().await;
    assert_eq!(batch.cluster, "eks-prod");
    assert_eq!(
        batch
            .events
            .iter()
            .map(|e| e.audit_id.clone())
            .collect::<Vec<_>>(),
        item_ids(&events(3))
    );

    // Gzip content encoding (a Firehose option) and a body that is no delivery at all.
    let (status, _) = post(
        &url,
        gzip(&body()),
        &[rid, key, ("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h.next_batch().await.events.len(), 3);
    let (status, answer) = post(&url, body_of(&events(1)), &[rid, key]).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["errorMessage"]
            .as_str()
            .unwrap()
            .contains("not a Firehose"),
        "{answer}"
    );
    h.server.stop().await;
}

#[tokio::test]
async fn pubsub_push_with_url_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(ReceiverConfig {
        token_file: Some(token_file(&dir)),
        ..config()
    })
    .await;
    let entry = std::fs::read_to_string(testdata(
        "otel-collector-contrib-cloud-exports/gke-cloud-logging/activity.json",
    ))
    .unwrap();
    let push = json!({
        "message": {"data": b64(entry.as_bytes()), "messageId": "2070443601311540",
                    "publishTime": "2025-08-15T12:54:38Z"},
        "subscription": "projects/elastic-observability/subscriptions/kubetrail"
    });
    let body = || serde_json::to_vec(&push).unwrap();
    let (status, _) = post(&h.url("/pubsub/gke"), body(), &[]).await;
    assert_eq!(status, 401);
    let (status, _) = post(&h.url("/pubsub/gke?token=nope"), body(), &[]).await;
    assert_eq!(status, 403);
    let (status, answer) = post(&h.url("/pubsub/gke?token=firehose-key"), body(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    let batch = h.next_batch().await;
    assert_eq!(batch.cluster, "gke");
    assert_eq!(
        batch.events[0].audit_id,
        "91515bc0-f1e8-4365-9bf5-e24ce587b653"
    );
    h.server.stop().await;
}
