//! `kubetrail serve` under hostile traffic: 2,000 authenticated connections that declare a
//! 32 MiB body, send a few bytes and stall. The process's resident memory stays under the
//! bound its configuration gives (`max_inflight_bytes + max_connections × 64 KiB` over the
//! baseline), `/healthz` keeps answering and a real batch is still accepted.
//!
//! Loopback only; bounded in time by the receiver's own timeouts and [`WAIT`].

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

mod common;

use common::{spawn_serve, terminate};

const STALLED: usize = 2_000;
const MAX_CONNECTIONS: usize = 2_048;
const MAX_INFLIGHT_BYTES: usize = 96 * 1024 * 1024;
/// Per-connection buffer the receiver may hold (its HTTP/1.1 read buffer).
const PER_CONNECTION: usize = 64 * 1024;
const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "pressure-token";

fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Opens a connection, sends the head of a 32 MiB POST and, once the server asked for the
/// body (`100 Continue`: its handler is reading the body now), 100 bytes of it; then stalls.
async fn stall(addr: String) -> TcpStream {
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /audit HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 33554432\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("100 Continue in time")
            .unwrap();
        assert!(n > 0, "closed before 100 Continue");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(&[b' '; 100]).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_stalled_connections_stay_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("kubetrail.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  max_connections: {MAX_CONNECTIONS}\n  max_inflight_bytes: {MAX_INFLIGHT_BYTES}\n  \
             header_read_timeout: 120s\n  body_read_timeout: 120s\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("spans.json");
    let (mut child, addr, stderr) = spawn_serve(&[
        "--config",
        config.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--otlp-json",
        out.to_str().unwrap(),
    ])
    .await;
    let pid = child.id().unwrap();
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let baseline = rss_bytes(pid);

    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..STALLED {
        opening.spawn(stall(addr.clone()));
    }
    let mut stalled = Vec::with_capacity(STALLED);
    while let Some(s) = opening.join_next().await {
        stalled.push(s.unwrap());
    }
    let under_load = rss_bytes(pid);

    // Still serving: the probe, and a real batch from an authenticated client.
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let batch = kubetrail_testkit::event_list(&[serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": "00000000-0000-4000-8000-000000000001", "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/shop/pods/web-1/status", "verb": "patch",
        "user": {"username": "system:node:node-1"}, "userAgent": "kubelet/v1.31.0",
        "objectRef": {"resource": "pods", "namespace": "shop", "name": "web-1",
                      "apiVersion": "v1", "subresource": "status"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2024-05-01T10:00:00.000000Z",
        "stageTimestamp": "2024-05-01T10:00:00.004000Z"
    })]);
    common::post_batch_ok(&http, &format!("http://{addr}/audit"), TOKEN, &batch).await;

    // Closed connections give their memory back: the receiver sees them go.
    drop(stalled);
    let metrics_url = format!("http://{addr}/metrics");
    let gone = tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let text = common::get_text(&http, &metrics_url).await;
            let open =
                kubetrail_testkit::prometheus_value(&text, "kubetrail_connections_open", &[]);
            if open.is_some_and(|n| n <= 2.0) {
                return;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the stalled connections were not closed");
    let after = rss_bytes(pid);

    // Every series the running server exposes is described (`# HELP` with its unit).
    let text = common::get_text(&http, &metrics_url).await;
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(typed.len() > 10, "{text}");
    for name in typed {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "{name} has no # HELP:\n{text}"
        );
    }

    let status = terminate(&mut child).await;
    let log = stderr.await.unwrap();
    assert!(status.success(), "{log}");

    let bound = MAX_INFLIGHT_BYTES + MAX_CONNECTIONS * PER_CONNECTION;
    let grown = under_load.saturating_sub(baseline);
    eprintln!(
        "RSS: baseline {} KiB, with {STALLED} stalled connections {} KiB ({} KiB per connection), after they closed {} KiB; bound {} KiB over baseline",
        baseline / 1024,
        under_load / 1024,
        grown / 1024 / STALLED,
        after / 1024,
        bound / 1024
    );
    assert!(
        grown < bound,
        "RSS grew by {grown} bytes with {STALLED} stalled connections, more than the configured bound of {bound}"
    );
}
