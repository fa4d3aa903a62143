//! Bearer tokens, TLS and client certificates.

use std::path::PathBuf;
use std::sync::Arc;

use kubetrail_receiver::{AlwaysReady, ReceiverConfig, TlsConfig};
use kubetrail_testkit::ApiServerClient;
use tokio::net::TcpStream;

use crate::common::*;

fn token_file(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("tokens");
    std::fs::write(
        &p,
        "# tokens of the API servers allowed to send audit events\n\nfirst-token\n  second-token  \n",
    )
    .unwrap();
    p
}

/// No token → 401 with a Bearer challenge; a wrong token → 403; either listed token → 200.
/// The probes need no token.
#[tokio::test]
async fn bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::start(ReceiverConfig {
        token_file: Some(token_file(&dir)),
        ..config()
    })
    .await;
    let body = || body_of(&events(1));
    let anonymous = ApiServerClient::new(&h.url("/audit"));

    let resp = anonymous.post_raw("", body(), &[]).await.unwrap();
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        resp.headers
    );
    let resp = anonymous
        .post_raw("", body(), &[("authorization", "Basic Zm9vOmJhcg==")])
        .await
        .unwrap();
    assert_eq!(resp.status, 401, "not a bearer token");

    for wrong in ["first-toke", "first-tokenX", "# tokens", "second-token "] {
        let resp = anonymous
            .post_raw(
                "/other",
                body(),
                &[("authorization", &format!("Bearer {wrong}"))],
            )
            .await
            .unwrap();
        // "second-token " is trimmed by the header parser, so it is right; the rest wrong.
        let expected = if wrong == "second-token " { 200 } else { 403 };
        assert_eq!(resp.status, expected, "{wrong:?}: {}", resp.text());
    }
    assert_eq!(h.next_batch().await.cluster, "other");

    for token in ["first-token", "second-token"] {
        let report = ApiServerClient::new(&h.url("/audit"))
            .with_token(token)
            .send_events(&events(2))
            .await
            .unwrap();
        assert!(report.all_delivered(), "{token}: {report:?}");
        assert_eq!(h.next_batch().await.events.len(), 2);
    }

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for probe in ["/healthz", "/readyz"] {
        let resp = http.get(h.url(probe)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{probe} needs no token");
    }
    h.server.stop().await;
}

/// HTTPS with a server certificate from a test CA; the API server's client negotiates
/// HTTP/2 through ALPN. Tokens still apply.
#[tokio::test]
async fn tls_with_token() {
    let pki = Pki::new();
    let mut h = Harness::start(ReceiverConfig {
        tls: Some(TlsConfig {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
        }),
        token_file: Some(token_file(&pki.dir)),
        ..config()
    })
    .await;
    let url = h.server.https_url("/audit/secure");
    let client = ApiServerClient::new(&url)
        .with_token("first-token")
        .with_tls(pki.ca_pem.as_bytes(), None)
        .unwrap();
    let resp = client.post_raw("", body_of(&events(2)), &[]).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.version, "HTTP/2.0");
    let batch = h.next_batch().await;
    assert_eq!(batch.cluster, "secure");
    assert_eq!(batch.events.len(), 2);

    // A client certificate means nothing without a client CA configured.
    let with_cert_only = ApiServerClient::new(&url)
        .with_tls(pki.ca_pem.as_bytes(), Some(pki.client_identity.as_bytes()))
        .unwrap();
    let resp = with_cert_only
        .post_raw("", body_of(&events(1)), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 401, "{}", resp.text());

    // A client that does not trust the CA cannot connect; plain HTTP gets no answer.
    let untrusting = ApiServerClient::new(&url).with_token("first-token");
    assert!(
        untrusting
            .post_raw("", body_of(&events(1)), &[])
            .await
            .is_err()
    );
    let plain = ApiServerClient::new(&h.url("/audit")).with_token("first-token");
    assert!(plain.post_raw("", body_of(&events(1)), &[]).await.is_err());
    h.server.stop().await;
}

/// mTLS: a client certificate verified against the client CA authenticates without a
/// token; no certificate and no token → 401 (an HTTP answer, not a TLS alert); a token
/// works without a certificate; a certificate from another CA fails the handshake.
#[tokio::test]
async fn client_certificates() {
    let pki = Pki::new();
    let mut h = Harness::start(ReceiverConfig {
        tls: Some(TlsConfig {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: Some(pki.ca_file.clone()),
        }),
        token_file: Some(token_file(&pki.dir)),
        ..config()
    })
    .await;
    let url = h.server.https_url("/audit/mtls");

    let with_cert = ApiServerClient::new(&url)
        .with_tls(pki.ca_pem.as_bytes(), Some(pki.client_identity.as_bytes()))
        .unwrap();
    let report = with_cert.send_events(&events(3)).await.unwrap();
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(report.statuses(), vec![200]);
    let batch = h.next_batch().await;
    assert_eq!((batch.cluster.as_str(), batch.events.len()), ("mtls", 3));

    let neither = ApiServerClient::new(&url)
        .with_tls(pki.ca_pem.as_bytes(), None)
        .unwrap();
    let resp = neither
        .post_raw("", body_of(&events(1)), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 401, "{}", resp.text());

    let token_only = neither.clone().with_token("second-token");
    let resp = token_only
        .post_raw("", body_of(&events(1)), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(h.next_batch().await.events.len(), 1);

    // A verified certificate with a wrong token: the certificate suffices.
    let resp = with_cert
        .post_raw(
            "",
            body_of(&events(1)),
            &[("authorization", "Bearer wrong")],
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(h.next_batch().await.events.len(), 1);

    let stranger = ApiServerClient::new(&url)
        .with_tls(
            pki.ca_pem.as_bytes(),
            Some(pki.stranger_identity.as_bytes()),
        )
        .unwrap();
    assert!(
        stranger
            .post_raw("", body_of(&events(1)), &[])
            .await
            .is_err(),
        "a certificate from another CA is refused in the handshake"
    );
    h.server.stop().await;
}

/// mTLS alone (no token file) is enough authentication for a non-loopback address.
#[tokio::test]
async fn client_ca_alone_counts_as_authentication() {
    let pki = Pki::new();
    let (p, _c) = kubetrail_queue::embedded::channel(10);
    let r = kubetrail_receiver::Receiver::bind(
        ReceiverConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            tls: Some(TlsConfig {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_ca: Some(pki.ca_file.clone()),
            }),
            ..config()
        },
        Arc::new(p),
        Arc::new(AlwaysReady),
        None,
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
}

/// A TLS client that never completes the handshake is disconnected.
#[tokio::test]
async fn stalled_tls_handshake_is_closed() {
    let pki = Pki::new();
    let h = Harness::start(ReceiverConfig {
        tls: Some(TlsConfig {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
        }),
        header_read_timeout: std::time::Duration::from_millis(200),
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(h.server.addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut stream).await;
    assert!(
        closed,
        "the server closes a connection that never says hello"
    );
    h.server.stop().await;
}

/// Who sent a batch (its source, by which events are ordered per API server): the verified
/// client certificate's common name, else the name of the token (a `TOKEN,NAME` line), else
/// `?source=`, else the client's IP — over real HTTPS with the API server's client.
#[tokio::test]
async fn the_batch_source_is_the_authenticated_identity() {
    let pki = Pki::new();
    let tokens = pki.dir.path().join("named-tokens");
    std::fs::write(
        &tokens,
        "# kube-apiserver static token file format: token,user,uid,groups\n\
         token-one,apiserver-1,uid-1,\"system:masters\"\n\
         token-two\n",
    )
    .unwrap();
    let mut h = Harness::start(ReceiverConfig {
        tls: Some(TlsConfig {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: Some(pki.ca_file.clone()),
        }),
        token_file: Some(tokens),
        ..config()
    })
    .await;
    let base = h.server.https_url("/audit/ha");
    let client = |query: &str| {
        ApiServerClient::new(&format!("{base}{query}"))
            .with_tls(pki.ca_pem.as_bytes(), None)
            .unwrap()
    };
    async fn send(h: &mut Harness, c: ApiServerClient) -> Option<String> {
        let report = c.send_events(&events(2)).await.unwrap();
        assert!(report.all_delivered(), "{report:?}");
        h.next_batch().await.source
    }
    // The named token: its name, whatever the URL says.
    assert_eq!(
        send(&mut h, client("?source=elsewhere").with_token("token-one"))
            .await
            .as_deref(),
        Some("apiserver-1")
    );
    // The full line is not the token; the token alone is.
    let resp = client("")
        .with_token("token-one,apiserver-1")
        .post_raw("", body_of(&events(1)), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 403, "{}", resp.text());
    // An unnamed token: the URL's name, else the client's IP.
    assert_eq!(
        send(
            &mut h,
            client("?source=apiserver-2").with_token("token-two")
        )
        .await
        .as_deref(),
        Some("apiserver-2")
    );
    assert_eq!(
        send(&mut h, client("").with_token("token-two"))
            .await
            .as_deref(),
        Some("127.0.0.1")
    );
    // A verified client certificate: its common name, over a token's name and the URL's.
    let with_cert = ApiServerClient::new(&format!("{base}?source=elsewhere"))
        .with_token("token-one")
        .with_tls(pki.ca_pem.as_bytes(), Some(pki.client_identity.as_bytes()))
        .unwrap();
    assert_eq!(
        send(&mut h, with_cert).await.as_deref(),
        Some("kube-apiserver")
    );
    h.server.stop().await;
}
