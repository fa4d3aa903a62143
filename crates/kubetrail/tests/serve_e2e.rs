//! `kubetrail serve` as an operator runs it: the real binary behind TLS with a bearer token,
//! fed by a client that batches and retries like kube-apiserver's webhook backend, exporting
//! to a real OTLP receiver; SIGTERM drains the queue and flushes every span.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use kubetrail_gen::RolloutScenario;
use kubetrail_testkit::{ApiServerClient, OtlpReceiver, Pki};
use tokio::process::Command;

const OBJECT_KIND: i32 = 1;

mod common;

use common::terminate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_over_tls_with_token_exports_every_accepted_event_and_drains_on_sigterm() {
    // Live events (the last minutes), and a linger longer than the test: families are
    // emitted at SIGTERM, whatever the speed of the machine.
    let start = common::live_start();
    let stream = RolloutScenario {
        cluster_start: start,
        ..RolloutScenario::default()
    }
    .generate();
    let pki = Pki::new();
    let tokens = pki.dir.path().join("tokens");
    std::fs::write(&tokens, "# kube-apiserver\nsecret-token-1\n").unwrap();
    let otlp = OtlpReceiver::start().await.unwrap();
    let endpoint = otlp.grpc_endpoint();
    let mut args = vec!["--cluster", "fallback", "--otlp-endpoint", &endpoint];
    args.extend(common::tls_token_args(&pki, &tokens));
    args.extend(["--jaeger-url", "http://jaeger:16686", "--linger", "1h"]);
    let (mut child, addr, stderr) = common::spawn_serve(&args).await;
    let url = format!("https://{addr}/audit/e2e");

    // Without the token: 401, and nothing is queued.
    let anonymous = ApiServerClient::new(&url)
        .with_tls(pki.ca_pem.as_bytes(), None)
        .unwrap();
    let denied = anonymous.post_raw("", b"{}".to_vec(), &[]).await.unwrap();
    assert_eq!(denied.status, 401);

    // The API server's batches, with retries.
    let client = ApiServerClient::new(&url)
        .with_tls(pki.ca_pem.as_bytes(), None)
        .unwrap()
        .with_token("secret-token-1")
        .with_batch_size(50);
    let report = client.send_events(&stream.events).await.unwrap();
    assert!(report.all_delivered(), "{:?}", report.statuses());
    assert_eq!(report.accepted, stream.events.len());

    // The browser redirect, computed from the deterministic ids (checked against the trace below).
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let redirect = browser
        .get(format!(
            "https://{addr}/redirect?cluster=e2e&resource=deployments&namespace=shop&name=web&time={}",
            common::rfc3339(start + 10_000_000_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    let bad = browser
        .get(format!("https://{addr}/redirect?name=web"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let status = terminate(&mut child).await;
    let log = stderr.await.unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!("{} events processed", stream.events.len())),
        "{log}"
    );

    // Every request became a span (requests + Kubernetes Events), and every object of the
    // rollout got exactly one object span — flushed at shutdown, not lost.
    let spans = otlp.spans();
    let truth = &stream.truth;
    let requests = spans.iter().filter(|s| s.kind != OBJECT_KIND).count();
    assert_eq!(requests, truth.mutating_requests + truth.kube_events);
    let mut objects: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in spans.iter().filter(|s| s.kind == OBJECT_KIND) {
        *objects
            .entry((
                s.attributes["kubetrail.object.resource"].clone(),
                s.attributes["kubetrail.object.name"].clone(),
            ))
            .or_default() += 1;
        assert_eq!(
            s.resource_attributes["k8s.cluster.name"], "e2e",
            "the cluster comes from the URL path"
        );
    }
    let expected: BTreeSet<_> = truth
        .objects
        .iter()
        .map(|o| (o.resource.clone(), o.name.clone()))
        .collect();
    assert_eq!(objects.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(objects.values().all(|n| *n == 1), "{objects:?}");
    let traces: BTreeSet<_> = spans.iter().map(|s| s.trace_id.clone()).collect();
    assert_eq!(traces.len(), 1, "the rollout is one trace");
    assert_eq!(
        location,
        format!("http://jaeger:16686/trace/{}", traces.first().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_exposed_unauthenticated_listener_and_bad_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args(["serve", "--listen", "0.0.0.0:0", "--otlp-json", "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insecure"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_kubetrail"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to send spans to"));
}

/// A backlog (an API server catching up after an outage, events older than the 5-minute
/// request timeout) sent in webhook batches that split requests between their stages: between
/// two batches the worker ticks the pipeline with wall time, far ahead of the events' own.
/// Every request still becomes one complete span (an early stage released on its own would be
/// marked incomplete, and its final stage, one batch later, dropped as a repeat: a Kubernetes
/// Event's RequestReceived carries no body to place it by, so its span was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_older_than_the_request_timeout_loses_no_request_between_batches() {
    let start = kubetrail_model::now_unix_nanos() - 400_000_000_000;
    let stream = RolloutScenario {
        cluster_start: start,
        ..RolloutScenario::default()
    }
    .generate();
    let otlp = OtlpReceiver::start().await.unwrap();
    let endpoint = otlp.grpc_endpoint();
    let (mut child, addr, stderr) =
        common::spawn_serve(&["--otlp-endpoint", &endpoint, "--linger", "1h"]).await;
    // Batches of 25: many requests' two stages land in different batches.
    let client = ApiServerClient::new(&format!("http://{addr}/audit/e2e")).with_batch_size(25);
    let report = client.send_events(&stream.events).await.unwrap();
    assert!(report.all_delivered(), "{:?}", report.statuses());
    let status = terminate(&mut child).await;
    let log = stderr.await.unwrap();
    assert!(status.success(), "{log}");

    let spans = otlp.spans();
    let requests: Vec<_> = spans.iter().filter(|s| s.kind != OBJECT_KIND).collect();
    assert_eq!(
        requests.len(),
        stream.truth.mutating_requests + stream.truth.kube_events,
        "{log}"
    );
    let incomplete: Vec<_> = requests
        .iter()
        .filter(|s| s.attributes.contains_key("kubetrail.audit.incomplete"))
        .map(|s| &s.name)
        .collect();
    assert!(
        incomplete.is_empty(),
        "released without their final stage: {incomplete:?}"
    );
}
