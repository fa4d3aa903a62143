//! Backpressure, readiness, probes, routing, shutdown, bind-time validation and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kubetrail_queue::embedded;
use kubetrail_queue::{AuditConsumer as _, PublishError};
use kubetrail_receiver::{AlwaysReady, Receiver, ReceiverConfig, ReceiverError, TlsConfig};
use kubetrail_testkit::ApiServerClient;
use tokio::sync::{mpsc, oneshot};

use crate::common::*;

/// A full queue answers 503 + Retry-After; once the consumer acknowledges, the API server's
/// retry (with backoff) of the same batch succeeds, and nothing is lost or reordered.
#[tokio::test]
async fn full_queue_is_503_and_the_retry_succeeds() {
    let (producer, mut consumer) = embedded::channel(10);
    let (failures_tx, mut failures) = mpsc::unbounded_channel();
    let server = Server::start(
        config(),
        Arc::new(ObservedProducer {
            inner: producer.clone(),
            failures: failures_tx,
        }),
        Arc::new(AlwaysReady),
        None,
    )
    .await;

    let items = events(20);
    // Fill the queue.
    let client = ApiServerClient::new(&server.url("/audit/bp"));
    let resp = client
        .post_raw("", body_of(&items[..10]), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());

    // A direct look at the answer while full.
    let resp = client
        .post_raw("", body_of(&items[10..]), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("5"));
    assert!(resp.text().contains("full"), "{}", resp.text());
    assert!(matches!(
        failures.recv().await,
        Some(PublishError::Full { .. })
    ));

    // The API server's way: retry with backoff until accepted.
    let sender = tokio::spawn({
        let client = client.clone().with_batch_size(10).with_retries(
            // Enough retries (10 ms doubling, capped) to outlast the test's own steps.
            30,
            Duration::from_millis(10),
        );
        let items = items[10..].to_vec();
        async move { client.send_events(&items).await.unwrap() }
    });
    // Wait until the retried batch has been refused at least once, then make room.
    assert!(matches!(
        failures.recv().await,
        Some(PublishError::Full { .. })
    ));
    let first = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(audit_ids(&[first.batch]), item_ids(&items[..10]));
    first.ack.done();

    let report = tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    assert!(report.all_delivered(), "{report:?}");
    let statuses = report.statuses();
    assert!(statuses.len() >= 2, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200));
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 503),
        "{statuses:?}"
    );
    let second = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(audit_ids(&[second.batch]), item_ids(&items[10..]));
    server.stop().await;
}

/// A publish that does not finish within publish_timeout answers 503 instead of hanging
/// the API server's request.
#[tokio::test]
async fn stuck_publish_is_503_after_the_publish_timeout() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let server = Server::start(
        ReceiverConfig {
            publish_timeout: Duration::from_millis(100),
            ..config()
        },
        Arc::new(GatedProducer {
            started: started_tx,
            release: tokio::sync::Mutex::new(None), // never released
        }),
        Arc::new(AlwaysReady),
        None,
    )
    .await;
    let resp = ApiServerClient::new(&server.url("/audit"))
        .post_raw("", body_of(&events(2)), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(resp.text().contains("took longer"), "{}", resp.text());
    assert_eq!(started.recv().await, Some(2), "the publish was attempted");
    server.stop().await;
}

/// A failing readiness check makes /readyz and POST answer 503 with the reason; so does
/// a closed queue.
#[tokio::test]
async fn readiness_gates_probes_and_batches() {
    let exporter_ok = Arc::new(AtomicBool::new(true));
    let flag = exporter_ok.clone();
    let readiness = move || {
        if flag.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(kubetrail_receiver::NotReady::new(
                "the exporter has been failing for 2m",
            ))
        }
    };
    let mut h = Harness::start_with(config(), 1000, Arc::new(readiness), None).await;
    let probe = ApiServerClient::new(&h.url(""));
    let client = ApiServerClient::new(&h.url("/audit"));
    let base = h.url("");
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let resp = reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(url)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };

    assert_eq!(get("/readyz").await.0, 200);
    exporter_ok.store(false, Ordering::SeqCst);
    let (status, text) = get("/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("exporter has been failing"), "{text}");
    assert_eq!(
        get("/healthz").await,
        (200, "ok\n".to_owned()),
        "still alive"
    );

    let resp = client.post_raw("", body_of(&events(1)), &[]).await.unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("5"));
    assert!(resp.text().contains("exporter has been failing"));

    exporter_ok.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.0, 200);
    let resp = client.post_raw("", body_of(&events(1)), &[]).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(h.next_batch().await.events.len(), 1);

    h.producer.close();
    let (status, text) = get("/readyz").await;
    assert_eq!(status, 503);
    assert!(text.contains("closed"), "{text}");
    let resp = probe
        .post_raw("/audit", body_of(&events(1)), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 503);
    h.server.stop().await;
}

#[tokio::test]
async fn routing_probes_and_methods() {
    let h = Harness::start(config()).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = |resp: reqwest::Response| resp.status().as_u16();
    let healthz = http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(status(healthz), 200);
    assert_eq!(status(http.get(h.url("/nope")).send().await.unwrap()), 404);
    assert_eq!(
        status(http.post(h.url("/audit/a/b")).send().await.unwrap()),
        404
    );
    assert_eq!(status(http.get(h.url("/audit")).send().await.unwrap()), 405);
    assert_eq!(
        status(http.put(h.url("/audit/x")).send().await.unwrap()),
        405
    );
    assert_eq!(
        status(http.post(h.url("/healthz")).send().await.unwrap()),
        405
    );
    assert_eq!(
        status(http.get(h.url("/metrics")).send().await.unwrap()),
        404,
        "no Prometheus handle given"
    );
    h.server.stop().await;
}

/// Shutdown lets an in-flight request finish (its batch is published and answered 200),
/// then serve() returns and the port is closed.
#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = oneshot::channel();
    let producer = GatedProducer {
        started: started_tx,
        release: tokio::sync::Mutex::new(Some(release_rx)),
    };
    let receiver = Receiver::bind(config(), Arc::new(producer), Arc::new(AlwaysReady), None)
        .await
        .unwrap();
    let addr = receiver.local_addr();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (observed_tx, observed_rx) = oneshot::channel::<()>();
    let serve = tokio::spawn(receiver.serve(async move {
        let _ = shutdown_rx.await;
        // Resolving this future is serve() seeing the shutdown request.
        let _ = observed_tx.send(());
    }));

    let request = tokio::spawn(async move {
        ApiServerClient::new(&format!("http://{addr}/audit"))
            .post_raw("", body_of(&events(3)), &[])
            .await
    });
    assert_eq!(started.recv().await, Some(3), "the request is in flight");
    shutdown_tx.send(()).unwrap();
    observed_rx.await.unwrap();
    assert!(
        !serve.is_finished(),
        "serve() waits for the in-flight request"
    );
    // (Fails only if the receiver dropped the request: then the response check below says so.)
    let _ = release_tx.send(());

    let resp = tokio::time::timeout(WAIT, request)
        .await
        .unwrap()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["accepted"], 3);
    tokio::time::timeout(WAIT, serve)
        .await
        .expect("serve returns once the request is done")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn bind_validates_the_configuration() {
    let bind = |config: ReceiverConfig| async move {
        let (p, _c) = embedded::channel(10);
        Receiver::bind(config, Arc::new(p), Arc::new(AlwaysReady), None).await
    };
    let any: std::net::SocketAddr = "0.0.0.0:0".parse().unwrap();

    let err = bind(ReceiverConfig {
        listen: any,
        ..config()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, ReceiverError::Unauthenticated { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("0.0.0.0") && msg.contains("insecure"), "{msg}");

    // Allowed explicitly, or with authentication.
    let r = bind(ReceiverConfig {
        listen: any,
        insecure: true,
        ..config()
    })
    .await
    .unwrap();
    drop(r);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "secret\n").unwrap();
    let r = bind(ReceiverConfig {
        listen: any,
        token_file: Some(tokens.clone()),
        ..config()
    })
    .await
    .unwrap();
    drop(r);

    // Errors name the file.
    let missing = dir.path().join("no-such-tokens");
    let err = bind(ReceiverConfig {
        token_file: Some(missing.clone()),
        ..config()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let empty = dir.path().join("empty-tokens");
    std::fs::write(&empty, "# nothing\n").unwrap();
    let err = bind(ReceiverConfig {
        token_file: Some(empty.clone()),
        ..config()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(&empty.display().to_string()),
        "{err}"
    );
    let missing_cert = dir.path().join("no-cert.pem");
    let err = bind(ReceiverConfig {
        tls: Some(TlsConfig {
            cert: missing_cert.clone(),
            key: dir.path().join("no-key.pem"),
            client_ca: None,
        }),
        ..config()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&missing_cert.display().to_string()),
        "{err}"
    );
    let pki = Pki::new();
    let not_a_key = pki.server_cert.clone();
    let err = bind(ReceiverConfig {
        tls: Some(TlsConfig {
            cert: pki.server_cert.clone(),
            key: not_a_key.clone(),
            client_ca: None,
        }),
        ..config()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("private key")
            && err.to_string().contains(&not_a_key.display().to_string()),
        "{err}"
    );

    for bad in [
        ReceiverConfig {
            default_cluster: "Not_A_Label".into(),
            ..config()
        },
        ReceiverConfig {
            max_body_bytes: 0,
            ..config()
        },
        ReceiverConfig {
            publish_timeout: Duration::ZERO,
            ..config()
        },
    ] {
        let err = bind(bad).await.unwrap_err();
        assert!(matches!(err, ReceiverError::Config(_)), "{err:?}");
    }
}

/// GET /metrics serves the receiver's counters in Prometheus text format.
#[tokio::test]
async fn metrics_are_exported() {
    let handle = kubetrail_receiver::install_prometheus().unwrap();
    let again = kubetrail_receiver::install_prometheus().unwrap();
    let mut h = Harness::start_with(config(), 1000, Arc::new(AlwaysReady), Some(again)).await;
    let client = ApiServerClient::new(&h.url("/audit/metrics-test"));
    let mut items = events(4);
    items[1] = serde_json::json!({"level": "Metadata"});
    assert_eq!(
        client
            .post_raw("", body_of(&items), &[])
            .await
            .unwrap()
            .status,
        200
    );
    h.next_batch().await;
    assert_eq!(
        client
            .post_raw("", b"nope".to_vec(), &[])
            .await
            .unwrap()
            .status,
        400
    );

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = kubetrail_testkit::get_text(&http, &h.url("/metrics")).await;
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        kubetrail_testkit::prometheus_value(&text, name, labels)
    };
    let cluster = [("cluster", "metrics-test")];
    assert_eq!(
        value("kubetrail_events_received_total", &cluster),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value("kubetrail_events_accepted_total", &cluster),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            "kubetrail_events_rejected_total",
            &[("cluster", "metrics-test"), ("reason", "malformed_item")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        value("kubetrail_batches_rejected_total", &[("code", "400")]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        value(
            "kubetrail_http_requests_total",
            &[("path", "/audit/{cluster}"), ("code", "200")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("kubetrail_http_request_duration_seconds_bucket{"),
        "a histogram with buckets: {text}"
    );
    assert!(
        handle.render().contains("kubetrail_events_accepted_total"),
        "the first handle sees the same recorder"
    );
    h.server.stop().await;
}
