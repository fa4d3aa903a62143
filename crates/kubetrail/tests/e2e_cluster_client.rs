//! What kube-apiserver's audit webhook client really does with each answer a receiver can
//! give — measured, not assumed, so that kubetrail's answers (`kubetrail-receiver`'s status
//! codes and `Retry-After`) are chosen for the client that gets them.
//!
//! A real kube-apiserver (scripts/local-cluster.sh, batch mode with README's flags) sends its
//! audit batches to a scripted endpoint in this test. Each probe is one ConfigMap created with
//! kubectl; the endpoint answers the batch that carries its `create` with the probe's script
//! (a status, with or without `Retry-After`, or no answer at all) and counts the attempts.
//! What kube-apiserver v1.37.2 does, as these assertions pin it:
//!
//! * Every failure is retried, whatever the status (400 and 413 too: its webhook backend's
//!   `retryOnError` retries any error), five attempts in all (`--audit-webhook-initial-backoff`,
//!   factor 1.5), then the batch is **dropped** and counted in
//!   `apiserver_audit_error_total{plugin="webhook"}` (its events, not its requests).
//! * A 429 or 5xx **with `Retry-After`** is retried inside each of those attempts by client-go's
//!   REST client (up to 10 more times, waiting what `Retry-After` says), so a receiver's
//!   `Retry-After` multiplies the API server's patience; without it, a 503 gets the five.
//! * No answer: the request times out (client-go's 30 s webhook timeout) and is retried.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

mod cluster;

use cluster::{LocalCluster, Webhook};

/// How the endpoint answers one attempt to send a probe's batch.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// This status, with this `Retry-After` (seconds) if any.
    Status(u16, Option<u32>),
    /// No answer: the request is held until the client gives up.
    Hang,
}

/// One probe: its script, and what the API server did.
#[derive(Debug, Default)]
struct Probe {
    /// Answers to the attempts, in order; once it is used up, 200.
    script: Vec<Answer>,
    /// Attempts to send the probe's batch, and when each came.
    attempts: Vec<Instant>,
    /// Events in the probe's batch.
    items: usize,
    /// A 200 was given.
    delivered: bool,
}

#[derive(Debug, Default)]
struct Endpoint {
    probes: Mutex<BTreeMap<String, Probe>>,
}

/// The webhook endpoint: 200 for every batch but a probe's, which gets its script.
async fn receive(State(ep): State<Arc<Endpoint>>, body: Bytes) -> Response {
    let Ok(list) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = items
        .iter()
        .filter(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "configmaps"
                && e["objectRef"]["namespace"] == "probes"
        })
        .filter_map(|e| e["objectRef"]["name"].as_str().map(str::to_owned))
        .collect();
    let answer = {
        let mut probes = ep.probes.lock().unwrap();
        let mut answer = None;
        for name in &names {
            if let Some(p) = probes.get_mut(name) {
                if p.attempts.is_empty() {
                    p.items = items.len();
                }
                let i = p.attempts.len();
                p.attempts.push(Instant::now());
                match p.script.get(i) {
                    Some(a) => answer = Some(*a),
                    None => p.delivered = true,
                }
            }
        }
        answer
    };
    match answer {
        None => StatusCode::OK.into_response(),
        Some(Answer::Hang) => std::future::pending::<Response>().await,
        Some(Answer::Status(code, retry_after)) => {
            let status = StatusCode::from_u16(code).unwrap();
            let mut r = (status, format!("probe answer {code}")).into_response();
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            r
        }
    }
}

/// Polls `done` until it holds (the API server acting is the synchronisation; the limit only
/// turns a hang into a failure).
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const DROPPED: &str = "apiserver_audit_error_total{plugin=\"webhook\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_webhook_client_on_each_answer() {
    let ep = Arc::new(Endpoint::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/audit/local", post(receive))
        .with_state(ep.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let work = tempfile::tempdir().unwrap();
    let webhook = Webhook {
        url: format!("http://{addr}/audit/local"),
        token: "probe-token".into(),
        ca: None,
    };
    let mut c = LocalCluster::up(&work.path().join("cluster"), 1, Some(&webhook)).await;
    c.kubectl(&["create", "namespace", "probes"]).await;

    use Answer::{Hang, Status};
    let never = |a: Answer| vec![a; 200];
    let probes: Vec<(&str, Vec<Answer>)> = vec![
        ("bad-request", never(Status(400, None))),
        ("too-large", never(Status(413, None))),
        ("unavailable", never(Status(503, None))),
        ("unavailable-retry-after", never(Status(503, Some(1)))),
        ("throttled-3-times", vec![Status(429, Some(1)); 3]),
        ("no-answer-once", vec![Hang]),
    ];
    let dropped_before = c
        .audit_metrics(1)
        .await
        .get(DROPPED)
        .copied()
        .unwrap_or(0.0);
    for (name, script) in &probes {
        ep.probes.lock().unwrap().insert(
            (*name).to_owned(),
            Probe {
                script: script.clone(),
                ..Probe::default()
            },
        );
        c.kubectl(&[
            "-n",
            "probes",
            "create",
            "configmap",
            name,
            "--from-literal=k=v",
        ])
        .await;
        // Its batch was sent before the next probe is created: one probe per batch.
        wait_until(&format!("{name}: a first attempt"), async || {
            !ep.probes.lock().unwrap()[*name].attempts.is_empty()
        })
        .await;
    }
    let recovering = ["throttled-3-times", "no-answer-once"];
    wait_until("the recovering probes delivered", async || {
        let p = ep.probes.lock().unwrap();
        recovering.iter().all(|n| p[*n].delivered)
    })
    .await;
    // The others are dropped once their attempts are used up: the API server counts their
    // events as webhook errors.
    let failing: usize = {
        let p = ep.probes.lock().unwrap();
        probes
            .iter()
            .filter(|(n, _)| !recovering.contains(n))
            .map(|(n, _)| p[*n].items)
            .sum()
    };
    let mut dropped = 0.0;
    wait_until(
        "the failing probes' events counted as dropped",
        async || {
            dropped = c
                .audit_metrics(1)
                .await
                .get(DROPPED)
                .copied()
                .unwrap_or(0.0)
                - dropped_before;
            dropped >= failing as f64
        },
    )
    .await;
    c.down();

    let p = ep.probes.lock().unwrap();
    for (name, _) in &probes {
        let probe = &p[*name];
        let span = probe
            .attempts
            .last()
            .map(|l| l.duration_since(probe.attempts[0]));
        eprintln!(
            "{name}: {} attempts over {span:?}, batch of {} events, delivered: {}",
            probe.attempts.len(),
            probe.items,
            probe.delivered
        );
    }
    assert_eq!(
        dropped, failing as f64,
        "exactly the failing probes' events"
    );
    for name in ["bad-request", "too-large", "unavailable"] {
        assert_eq!(
            p[name].attempts.len(),
            5,
            "{name}: retried whatever the status, five attempts in all"
        );
        assert!(!p[name].delivered);
    }
    let honoured = &p["unavailable-retry-after"];
    assert!(
        honoured.attempts.len() > 5 && !honoured.delivered,
        "503 + Retry-After: retried inside each attempt too ({} attempts)",
        honoured.attempts.len()
    );
    assert_eq!(
        p["throttled-3-times"].attempts.len(),
        4,
        "429 + Retry-After, then 200: delivered at the fourth attempt"
    );
    assert_eq!(
        p["no-answer-once"].attempts.len(),
        2,
        "no answer: timed out and sent again"
    );
}
