//! Memory bounds and HTTP/2: the connection cap, the in-flight byte budget, and every
//! documented status reaching an HTTP/2 client over TLS (as the API server's client
//! negotiates), including 413 for a body the server refuses before reading it.

use std::sync::Arc;

use kubetrail_receiver::{AlwaysReady, ReceiverConfig, TlsConfig};
use kubetrail_testkit::ApiServerClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::common::*;

const TOKEN: &str = "h2-token";

fn tls_config(pki: &Pki) -> ReceiverConfig {
    let tokens = pki.dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    ReceiverConfig {
        tls: Some(TlsConfig {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
        }),
        token_file: Some(tokens),
        max_body_bytes: 4096,
        max_inflight_bytes: 3 * 4096,
        max_batch_items: 3,
        ..config()
    }
}

/// (what, client, path suffix, body, headers, expected status).
type Case<'a> = (
    &'a str,
    &'a ApiServerClient,
    &'a str,
    Vec<u8>,
    Vec<(&'a str, &'a str)>,
    u16,
);

fn h2_client(url: &str, pki: &Pki) -> ApiServerClient {
    ApiServerClient::new(url)
        .with_tls(pki.ca_pem.as_bytes(), None)
        .unwrap()
}

#[tokio::test]
async fn every_documented_status_reaches_an_http2_client() {
    let pki = Pki::new();
    let mut h = Harness::start(tls_config(&pki)).await;
    let url = h.server.https_url("/audit");
    let anonymous = h2_client(&url, &pki);
    let client = h2_client(&url, &pki).with_token(TOKEN);
    let wrong = h2_client(&url, &pki).with_token("not-the-token");

    let ok = client.post_raw("", body_of(&events(2)), &[]).await.unwrap();
    assert_eq!((ok.status, ok.version.as_str()), (200, "HTTP/2.0"));
    assert_eq!(h.next_batch().await.events.len(), 2);

    let cases: Vec<Case<'_>> = vec![
        (
            "no credentials",
            &anonymous,
            "",
            body_of(&events(1)),
            vec![],
            401,
        ),
        ("wrong token", &wrong, "", body_of(&events(1)), vec![], 403),
        (
            "not an EventList",
            &client,
            "",
            b"[1,2".to_vec(),
            vec![],
            400,
        ),
        (
            "bad cluster",
            &client,
            "/Not_A_Label",
            body_of(&events(1)),
            vec![],
            400,
        ),
        (
            "unknown encoding",
            &client,
            "",
            body_of(&events(1)),
            vec![("content-encoding", "br")],
            415,
        ),
        // Refused from its Content-Length, before any of it was read: over HTTP/2 the
        // stream must not be reset in place of the answer.
        (
            "declared too large",
            &client,
            "",
            vec![b' '; 1_000_000],
            vec![],
            413,
        ),
        (
            "too many items",
            &client,
            "",
            body_of(&events(4)),
            vec![],
            413,
        ),
        (
            "gzip bomb",
            &client,
            "",
            gzip(&vec![b' '; 100_000]),
            vec![("content-encoding", "gzip")],
            413,
        ),
    ];
    for (what, c, path, body, headers, status) in cases {
        let resp = c.post_raw(path, body, &headers).await.unwrap();
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_eq!(resp.version, "HTTP/2.0", "{what}");
        assert!(resp.json().unwrap()["error"].is_string(), "{what}");
    }
    // The connection (and the server) still serve.
    let ok = client.post_raw("", body_of(&events(1)), &[]).await.unwrap();
    assert_eq!(ok.status, 200);
    h.server.stop().await;
}

/// The same 413 with curl (nghttp2), which reports a reset stream as an error (rc 92)
/// instead of the status. Skipped where curl is not installed.
#[tokio::test]
async fn curl_over_http2_sees_413_for_a_body_over_the_limit() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl is not installed; skipping");
        return;
    }
    let pki = Pki::new();
    let h = Harness::start(tls_config(&pki)).await;
    let body = pki.dir.path().join("big.json");
    std::fs::write(&body, vec![b' '; 2_000_000]).unwrap();
    let mut curl = std::process::Command::new("curl");
    curl.args(["--silent", "--show-error", "--http2", "--cacert"])
        .arg(&pki.ca_file)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("https://localhost:{}/audit", h.server.addr.port()));
    let out = tokio::task::spawn_blocking(move || curl.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed ({:?}): {} {stdout}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "413 2");
    h.server.stop().await;
}

/// A connection accepted past `max_connections` is closed at once; when one closes, a new
/// one is served again.
#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let h = Harness::start(ReceiverConfig {
        max_connections: 3,
        ..config()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(h.server.addr).await.unwrap();
        // A request on each, so the server has certainly accepted it.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(raw_status(&buf[..n]), Some(200));
        held.push(s);
    }
    let (got, closed) =
        raw_exchange(h.server.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(
        closed && got.is_empty(),
        "{}",
        String::from_utf8_lossy(&got)
    );

    drop(held.pop());
    // The slot comes back once the server noticed the close; until then new connections
    // are still refused (each refusal is immediate, so this loop is bounded by WAIT).
    let served = tokio::time::timeout(WAIT, async {
        loop {
            let (got, _) = raw_exchange(
                h.server.addr,
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .await;
            if raw_status(&got) == Some(200) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(served.is_ok(), "a freed slot is used again");
    h.server.stop().await;
}

/// While one request holds the in-flight budget (its publish is stuck), another is refused
/// with 503 + Retry-After; once the first ends its bytes are given back.
#[tokio::test]
async fn the_inflight_budget_refuses_with_503_and_is_given_back() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = oneshot::channel();
    let server = Server::start(
        ReceiverConfig {
            max_body_bytes: 4096,
            max_inflight_bytes: 3 * 4096,
            max_batch_items: 100,
            publish_timeout: std::time::Duration::from_millis(200),
            ..config()
        },
        Arc::new(GatedProducer {
            started: started_tx,
            release: tokio::sync::Mutex::new(Some(release_rx)),
        }),
        Arc::new(AlwaysReady),
        None,
    )
    .await;
    let client = ApiServerClient::new(&server.url("/audit"));
    let big = || {
        let mut b = body_of(&events(3));
        b.pop();
        b.resize(4095, b' ');
        b.push(b'}');
        b
    };
    let first = {
        let client = client.clone();
        let body = big();
        tokio::spawn(async move { client.post_raw("", body, &[]).await })
    };
    assert_eq!(
        started.recv().await,
        Some(3),
        "the first request holds its bytes"
    );
    let refused = client.post_raw("", big(), &[]).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.text().contains("max_inflight_bytes"),
        "{}",
        refused.text()
    );

    release_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap().status, 200);
    // The bytes came back: the next request gets past the budget to the (now stuck)
    // publish, whose timeout answers it.
    let next = client.post_raw("", big(), &[]).await.unwrap();
    assert_eq!(next.status, 503, "{}", next.text());
    assert!(next.text().contains("took longer"), "{}", next.text());
    assert_eq!(started.recv().await, Some(3));
    server.stop().await;
}

/// One item with raw invalid UTF-8 among valid ones: the batch is accepted for the valid
/// items and that item alone is rejected (a 400 would make the API server drop them all).
#[tokio::test]
async fn invalid_utf8_in_one_item_rejects_only_that_item() {
    let mut h = Harness::start(config()).await;
    let items = events(3);
    let mut body =
        b"{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"items\":[".to_vec();
    body.extend_from_slice(&serde_json::to_vec(&items[0]).unwrap());
    body.push(b',');
    let bad = serde_json::to_vec(&items[1]).unwrap();
    let text = String::from_utf8(bad)
        .unwrap()
        .replace("node-1", "node-\u{1}");
    // A raw 0xff byte in place of the (escaped) control character.
    body.extend_from_slice(
        &text
            .replace("\\u0001", "\u{1}")
            .into_bytes()
            .iter()
            .map(|&b| if b == 1 { 0xff } else { b })
            .collect::<Vec<u8>>(),
    );
    body.push(b',');
    body.extend_from_slice(&serde_json::to_vec(&items[2]).unwrap());
    body.extend_from_slice(b"]}");
    assert!(std::str::from_utf8(&body).is_err());
    let resp = ApiServerClient::new(&h.url("/audit"))
        .post_raw("", body, &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = resp.json().unwrap();
    assert_eq!(answer["accepted"], 2);
    assert_eq!(answer["rejected"][0]["index"], 1);
    assert!(
        answer["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("UTF-8")
    );
    let batch = h.next_batch().await;
    assert_eq!(
        audit_ids(&[batch]),
        vec![item_ids(&items)[0].clone(), item_ids(&items)[2].clone()]
    );
    h.server.stop().await;
}
