//! The webhook's body path, in-process through the receiver's real router: any body on
//! `POST /audit`, `/firehose` or `/pubsub`, plain, gzip or broken gzip. The answer must be one of the
//! documented statuses (200 with per-item rejections, 400, 413, 503) — never a 500 or a
//! panic — and a 200 must account for every item (accepted + rejected).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kubetrail_queue::{AuditBatch, AuditProducer, PublishError, QueueHealth};
use kubetrail_receiver::{Receiver, ReceiverConfig};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// A queue that takes every batch (the fuzzer is after the decoding, not the queue).
struct Discard;

#[async_trait::async_trait]
impl AuditProducer for Discard {
    async fn publish(&self, _batch: AuditBatch) -> Result<(), PublishError> {
        Ok(())
    }
    fn health(&self) -> QueueHealth {
        QueueHealth::default()
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let config = ReceiverConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            max_body_bytes: 1 << 20,
            max_inflight_bytes: 3 << 20,
            ..ReceiverConfig::default()
        };
        let receiver = runtime
            .block_on(Receiver::bind(
                config,
                Arc::new(Discard),
                Arc::new(|| Ok(())),
                None,
            ))
            .expect("the receiver binds on loopback");
        let router = receiver.router();
        Harness { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let path = match selector % 3 {
        0 => "/audit",
        1 => "/firehose",
        _ => "/pubsub",
    };
    // 0x80: gzip the body; 0x40: say gzip but send the bytes as they are (broken streams).
    let gzip = selector & 0x80 != 0;
    let claims_gzip = gzip || selector & 0x40 != 0;
    let body = if gzip {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = gz.write_all(body);
        gz.finish().unwrap_or_default()
    } else {
        body.to_vec()
    };
    let mut request = Request::post(path).header("content-type", "application/json");
    if claims_gzip {
        request = request.header("content-encoding", "gzip");
    }
    let request = request.body(Body::from(body)).expect("a request");
    let h = harness();
    let (status, answer) = h.runtime.block_on(async {
        let response = h.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, bytes)
    });
    assert!(
        matches!(
            status,
            StatusCode::OK
                | StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::SERVICE_UNAVAILABLE
        ),
        "unexpected status {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    if status == StatusCode::OK {
        let v: serde_json::Value = serde_json::from_slice(&answer).expect("a 200 answer is JSON");
        assert!(
            v.get("accepted")
                .and_then(serde_json::Value::as_u64)
                .is_some(),
            "{v}"
        );
    }
});
