//! Size limits, encodings and slow clients.

use std::time::Duration;

use kubetrail_receiver::ReceiverConfig;
use kubetrail_testkit::ApiServerClient;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::common::*;

fn small_limits() -> ReceiverConfig {
    ReceiverConfig {
        max_body_bytes: 4096,
        max_batch_items: 3,
        ..config()
    }
}

/// An EventList of 3 events (within the item limit) padded with whitespace to `size` bytes.
fn padded_body(size: usize) -> Vec<u8> {
    let mut body = body_of(&events(3));
    let close = body.pop().unwrap();
    assert_eq!(close, b'}');
    body.resize(size - 1, b' ');
    body.push(b'}');
    body
}

#[tokio::test]
async fn oversize_bodies_and_batches_are_413() {
    let mut h = Harness::start(small_limits()).await;
    let client = ApiServerClient::new(&h.url("/audit"));

    // Declared too large (Content-Length).
    let resp = client.post_raw("", padded_body(10_000), &[]).await.unwrap();
    assert_eq!(resp.status, 413, "{}", resp.text());

    // A gzip bomb: small on the wire, too large once inflated.
    let bomb = gzip(&padded_body(100_000));
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let resp = client
        .post_raw("", bomb, &[("content-encoding", "gzip")])
        .await
        .unwrap();
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(resp.text().contains("decompressed"), "{}", resp.text());

    // Too many items.
    let resp = client.post_raw("", body_of(&events(4)), &[]).await.unwrap();
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(resp.text().contains("4 items"), "{}", resp.text());

    // Right at the limits: accepted, and the first published batch is this one.
    let body = padded_body(4096);
    assert_eq!(body.len(), 4096);
    let resp = client.post_raw("", body, &[]).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        audit_ids(&[h.next_batch().await]),
        item_ids(&events(3)),
        "nothing from the refused requests was published"
    );
    h.server.stop().await;
}

/// A chunked body (no Content-Length) is cut off once it passes the limit.
#[tokio::test]
async fn streamed_oversize_body_is_413() {
    let h = Harness::start(small_limits()).await;
    let body = padded_body(10_000);
    let mut request =
        b"POST /audit HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for chunk in body.chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (response, closed) = raw_exchange(h.server.addr, &request).await;
    assert!(closed);
    assert_eq!(
        raw_status(&response),
        Some(413),
        "{}",
        String::from_utf8_lossy(&response)
    );

    // The same body within the limit, chunked, is fine.
    let body = padded_body(4000);
    let mut request =
        b"POST /audit HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for chunk in body.chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (response, _) = raw_exchange(h.server.addr, &request).await;
    assert_eq!(
        raw_status(&response),
        Some(200),
        "{}",
        String::from_utf8_lossy(&response)
    );
    h.server.stop().await;
}

#[tokio::test]
async fn unknown_content_encoding_is_415() {
    let mut h = Harness::start(config()).await;
    let client = ApiServerClient::new(&h.url("/audit"));
    for enc in ["br", "deflate", "gzip, br"] {
        let resp = client
            .post_raw("", body_of(&events(1)), &[("content-encoding", enc)])
            .await
            .unwrap();
        assert_eq!(resp.status, 415, "{enc}: {}", resp.text());
    }
    for enc in ["identity", "GZIP"] {
        let body = if enc == "GZIP" {
            gzip(&body_of(&events(1)))
        } else {
            body_of(&events(1))
        };
        let resp = client
            .post_raw("", body, &[("content-encoding", enc)])
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{enc}: {}", resp.text());
        assert_eq!(h.next_batch().await.events.len(), 1);
    }
    h.server.stop().await;
}

/// A body that stops arriving gets 408 (driven by the server's body timeout) and the
/// connection is closed.
#[tokio::test]
async fn stalled_body_is_408() {
    let h = Harness::start(ReceiverConfig {
        body_read_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let request = b"POST /audit HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"kind\":\"EventList\",";
    let mut stream = TcpStream::connect(h.server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (response, closed) = read_until_closed(&mut stream).await;
    assert!(closed, "the server closes the connection");
    assert_eq!(
        raw_status(&response),
        Some(408),
        "{}",
        String::from_utf8_lossy(&response)
    );
    h.server.stop().await;
}

/// Slowloris: clients that send part of a request head, or only a byte, or nothing, are
/// disconnected by the server once the header read timeout passes; a prompt client on the
/// same server is served.
#[tokio::test]
async fn slow_headers_get_the_connection_closed() {
    let mut h = Harness::start(ReceiverConfig {
        header_read_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    for partial in [
        &b"POST /audit HTTP/1.1\r\nHost: test\r\nContent-Le"[..],
        b"P",
        b"",
    ] {
        let mut stream = TcpStream::connect(h.server.addr).await.unwrap();
        stream.write_all(partial).await.unwrap();
        let (response, closed) = read_until_closed(&mut stream).await;
        assert!(
            closed,
            "connection after {:?} was not closed by the server",
            String::from_utf8_lossy(partial)
        );
        assert!(
            response.is_empty() || raw_status(&response) == Some(408),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }

    let body = body_of(&events(1));
    let mut request = format!(
        "POST /audit HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let (response, _) = raw_exchange(h.server.addr, &request).await;
    assert_eq!(
        raw_status(&response),
        Some(200),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(h.next_batch().await.events.len(), 1);
    h.server.stop().await;
}
