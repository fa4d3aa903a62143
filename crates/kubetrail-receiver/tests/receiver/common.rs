//! Shared test harness: a receiver on an ephemeral loopback port in front of the real
//! embedded queue, plus helpers for events, raw sockets and certificates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubetrail_queue::embedded::{self, EmbeddedConsumer, EmbeddedProducer};
use kubetrail_queue::{AuditBatch, AuditConsumer as _, AuditProducer, PublishError, QueueHealth};
use kubetrail_receiver::{
    AlwaysReady, PrometheusHandle, Readiness, Receiver, ReceiverConfig, ReceiverError,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Upper bound on any single wait, so a broken receiver fails a test instead of hanging it.
/// Never reached by a passing test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A loopback config with an ephemeral port.
pub fn config() -> ReceiverConfig {
    ReceiverConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ReceiverConfig::default()
    }
}

/// A running receiver.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), ReceiverError>>,
}

impl Server {
    pub async fn start(
        config: ReceiverConfig,
        producer: Arc<dyn AuditProducer>,
        readiness: Arc<dyn Readiness>,
        metrics: Option<PrometheusHandle>,
    ) -> Server {
        let receiver = Receiver::bind(config, producer, readiness, metrics)
            .await
            .expect("bind");
        let addr = receiver.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(receiver.serve(async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// Requests shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Requests shutdown and asserts `serve` returned `Ok`.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
            .expect("serve result");
    }
}

/// A receiver in front of an embedded queue of `capacity` events, with its consumer.
pub struct Harness {
    pub server: Server,
    pub producer: EmbeddedProducer,
    pub consumer: EmbeddedConsumer,
}

impl Harness {
    pub async fn start(config: ReceiverConfig) -> Harness {
        Self::start_with(config, 100_000, Arc::new(AlwaysReady), None).await
    }

    pub async fn start_with(
        config: ReceiverConfig,
        capacity: usize,
        readiness: Arc<dyn Readiness>,
        metrics: Option<PrometheusHandle>,
    ) -> Harness {
        let (producer, consumer) = embedded::channel(capacity);
        let server = Server::start(config, Arc::new(producer.clone()), readiness, metrics).await;
        Harness {
            server,
            producer,
            consumer,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// The next published batch (acknowledged at once).
    pub async fn next_batch(&mut self) -> AuditBatch {
        let received = tokio::time::timeout(WAIT, self.consumer.recv())
            .await
            .expect("a batch was published")
            .expect("the queue is open");
        received.ack.done();
        received.batch
    }

    /// Batches until `n` events were received.
    pub async fn batches_with(&mut self, n: usize) -> Vec<AuditBatch> {
        let mut batches = Vec::new();
        let mut seen = 0;
        while seen < n {
            let b = self.next_batch().await;
            seen += b.events.len();
            batches.push(b);
        }
        assert_eq!(seen, n, "more events than expected were published");
        batches
    }
}

/// The auditIDs of batches, in order.
pub fn audit_ids(batches: &[AuditBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| b.events.iter().map(|e| e.audit_id.clone()))
        .collect()
}

/// The auditIDs of JSON items, in order.
pub fn item_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|v| v["auditID"].as_str().unwrap().to_owned())
        .collect()
}

/// A realistic generated audit event: a kubelet status patch of pod `i`.
pub fn event(i: usize) -> Value {
    json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": format!("00000000-0000-4000-8000-{i:012}"),
        "stage": "ResponseComplete",
        "requestURI": format!("/api/v1/namespaces/shop/pods/web-{i}/status"),
        "verb": "patch",
        "user": {"username": "system:node:node-1", "groups": ["system:nodes"]},
        "sourceIPs": ["10.0.0.1"],
        "userAgent": "kubelet/v1.31.0 (linux/amd64) kubernetes/abcdef",
        "objectRef": {"resource": "pods", "namespace": "shop", "name": format!("web-{i}"),
                      "apiVersion": "v1", "subresource": "status"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2024-05-01T10:00:00.000000Z",
        "stageTimestamp": "2024-05-01T10:00:00.004000Z"
    })
}

pub fn events(n: usize) -> Vec<Value> {
    (0..n).map(event).collect()
}

pub fn body_of(items: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&kubetrail_testkit::event_list(items)).unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub use kubetrail_testkit::audit_sample as testdata;

/// Writes `request` on a fresh connection and reads until the server closes it (EOF or
/// reset). Returns what was read and whether the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_closed(&mut stream).await
}

/// Reads until EOF or a connection error (`true`), or until [`WAIT`] passes (`false`).
pub async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A producer that reports every failed publish (so a test knows a 503 happened).
pub struct ObservedProducer {
    pub inner: EmbeddedProducer,
    pub failures: mpsc::UnboundedSender<PublishError>,
}

#[async_trait::async_trait]
impl AuditProducer for ObservedProducer {
    async fn publish(&self, batch: AuditBatch) -> Result<(), PublishError> {
        let r = self.inner.publish(batch).await;
        if let Err(e) = &r {
            let _ = self.failures.send(e.clone());
        }
        r
    }

    fn health(&self) -> QueueHealth {
        self.inner.health()
    }
}

/// A producer whose publish waits for the test: it reports each batch it got, then waits
/// for a release (or forever, when no release sender is kept).
pub struct GatedProducer {
    pub started: mpsc::UnboundedSender<usize>,
    pub release: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait::async_trait]
impl AuditProducer for GatedProducer {
    async fn publish(&self, batch: AuditBatch) -> Result<(), PublishError> {
        let _ = self.started.send(batch.events.len());
        let gate = self.release.lock().await.take();
        match gate {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending::<()>().await,
        }
        Ok(())
    }

    fn health(&self) -> QueueHealth {
        QueueHealth {
            ready: true,
            ..QueueHealth::default()
        }
    }
}

pub use kubetrail_testkit::Pki;
