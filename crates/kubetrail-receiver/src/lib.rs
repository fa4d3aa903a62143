//! The audit webhook receiver: the HTTP(S) endpoint kube-apiserver's audit webhook backend
//! POSTs `audit.k8s.io` `EventList` batches to.
//!
//! # Why it is shaped this way
//!
//! The API server's *batch* webhook backend buffers audit events, POSTs them in batches, and
//! retries a batch with backoff on any non-2xx answer or connection error. So the receiver's
//! answer is a promise about delivery, and every status code here is chosen for what the API
//! server will do with it:
//!
//! * **200 only once the batch is in the queue** ([`AuditProducer::publish`] returned `Ok`;
//!   for Kafka that means acknowledged by all in-sync replicas). Then the API server forgets
//!   the batch; from there on the queue owns it.
//! * **One malformed item does not reject the batch.** The valid items are published and the
//!   answer is 200 with `{"accepted":N,"rejected":[{"index":i,"reason":"..."}]}`; the rejected
//!   items are counted (`kubetrail_events_rejected_total{reason="malformed_item"}`) and logged
//!   at `warn` with their index and reason. A non-2xx would make the API server resend the
//!   same batch, good items included, until its retry budget runs out, and the bad item would
//!   never become good.
//! * **503 + `Retry-After`** when the batch cannot be accepted *now*: the queue is full or its
//!   backend down ([`PublishError`](kubetrail_queue::PublishError)), publishing took longer
//!   than [`ReceiverConfig::publish_timeout`] (the API server's request must not hang), or a
//!   [`Readiness`] check fails (e.g. the exporter has been failing for minutes). The API server
//!   retries; this is how backpressure reaches it. `Retry-After` is 5 s wherever the
//!   condition can last (queue full, Kafka down, durable log's disk budget full, not
//!   ready), 1 s only for the in-flight byte budget (requests finishing) and the configured
//!   publish timeout.
//!
//! What kube-apiserver's audit webhook client does with these answers was measured against
//! v1.37.2 (`crates/kubetrail/tests/e2e_cluster_client.rs`): **every** non-2xx is retried —
//! five attempts in all, over ≈ 9 s with `--audit-webhook-initial-backoff=1s` — and then the
//! batch is dropped and counted in `apiserver_audit_error_total{plugin="webhook"}`; a 429 or
//! 5xx with `Retry-After` is retried within each attempt as well (client-go, up to 10 more
//! times, waiting what it says): 55 tries, so `Retry-After: 5` gives it ≈ 5 min of patience
//! where 1 s gave one; a request unanswered for 30 s times out and is retried.
//! * **400** for a body that is not an `EventList`, **413** for an oversize body (also after
//!   gzip decompression, so a gzip bomb is refused) or too many items, **415** for a content
//!   encoding other than gzip, **408** when the body does not arrive within
//!   [`ReceiverConfig::body_read_timeout`], **401/403** without valid credentials. These are
//!   retried too, but cannot succeed; they are counted in `kubetrail_batches_rejected_total`.
//!
//! # Authentication
//!
//! The API server's webhook kubeconfig can carry a bearer token, a client certificate, or
//! both, so a request is authenticated by **either** a bearer token listed in
//! [`ReceiverConfig::token_file`] (compared in constant time against every token) **or** a
//! TLS client certificate verified against [`TlsConfig::client_ca`]. A missing client
//! certificate does not fail the TLS handshake, so the client gets an HTTP 401 (with
//! `WWW-Authenticate: Bearer`) rather than an opaque TLS alert; a wrong token gets 403. A
//! certificate that does fail verification fails the handshake, as usual for TLS.
//! Listening on a non-loopback address with no authentication at all is refused unless
//! [`ReceiverConfig::insecure`] is set.
//!
//! The authenticated identity is also **who sent the batch** (its `source`, by which events
//! are ordered per API server, see `kubetrail_pipeline::watermark`): the verified client
//! certificate's common name (else its whole subject), else the name of the bearer token
//! (`TOKEN,NAME` lines in the tokens file), else the webhook URL's `?source=NAME`, else the
//! client's IP address.
//!
//! `GET /healthz`, `GET /readyz` and `GET /metrics` need **no** authentication: they are for
//! kubelet probes and Prometheus scrapes, and reveal nothing about the audit data.
//!
//! # Serving
//!
//! An own accept loop (tokio) with an optional rustls handshake (bounded by
//! [`ReceiverConfig::header_read_timeout`]), then hyper's HTTP/1.1 + HTTP/2 connection
//! builder serving an axum router, so slow clients are cut off (slowloris) and shutdown is
//! graceful: in-flight requests finish, bounded by [`ReceiverConfig::shutdown_grace`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod budget;
mod config;
mod handler;
mod metrics;
mod server;
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use config::{ServerConfig, TlsFiles};
pub use handler::{AuditResponse, RejectedItem};
pub use metrics::{describe_metrics, install_prometheus};
pub use server::Receiver;

/// Re-exported so callers name exactly the handle type [`Receiver::bind`] takes.
pub use metrics_exporter_prometheus::PrometheusHandle;

/// Where and how the receiver listens, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// The address to listen on (port 0 picks a free port; see [`Receiver::local_addr`]).
    pub listen: SocketAddr,
    /// The cluster of batches POSTed to `/audit` (`/audit/{cluster}` names its own).
    pub default_cluster: String,
    /// Largest accepted body in bytes, applied to the body as sent and to its decompressed
    /// form (a gzip bomb is refused with 413).
    pub max_body_bytes: usize,
    /// Largest accepted number of items in one `EventList`.
    pub max_batch_items: usize,
    /// Most connections open at once; a connection accepted beyond it is closed at once
    /// (counted in `kubetrail_connections_refused_total`). With
    /// [`max_inflight_bytes`](Self::max_inflight_bytes) it bounds the receiver's memory:
    /// roughly `max_inflight_bytes + max_connections × 64 KiB` (HTTP/1.1) or
    /// `× 256 KiB` (HTTP/2, its flow-control window) on top of the process baseline.
    pub max_connections: usize,
    /// Most request-body bytes held at once over all requests (as read, and again after gzip
    /// decompression). Buffers are charged as they grow, never from `Content-Length`, and
    /// given back when the request ends. A request that would pass it is answered 503 +
    /// `Retry-After` (the API server retries). Must be at least
    /// [`max_body_bytes`](Self::max_body_bytes).
    pub max_inflight_bytes: usize,
    /// How long a client may take to send a request's headers (and, on a TLS connection,
    /// to finish the handshake); also how long an idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body (408 after that).
    pub body_read_timeout: Duration,
    /// TLS; plain HTTP when `None`.
    pub tls: Option<TlsConfig>,
    /// A file with one accepted bearer token per line, `TOKEN` or `TOKEN,NAME[,…]` (the
    /// first fields of kube-apiserver's static token file; the name becomes the source of
    /// the batches sent with that token); blank lines and `#` comments ignored.
    pub token_file: Option<PathBuf>,
    /// Allows a non-loopback listen address without any authentication.
    pub insecure: bool,
    /// How long publishing one batch may take before the answer is 503: the API server's
    /// request must not hang on a stuck queue.
    pub publish_timeout: Duration,
    /// How long [`Receiver::serve`] waits, once shutdown was requested, for in-flight requests
    /// before closing the remaining connections.
    pub shutdown_grace: Duration,
    /// When set, `GET /redirect?cluster=&resource=&namespace=&name=&time=` answers 302 to the
    /// Jaeger trace of that object (computed from the deterministic ids, no call to Jaeger).
    pub jaeger: Option<JaegerLink>,
}

/// Where `GET /redirect` sends a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JaegerLink {
    /// Jaeger UI base URL (`http://jaeger:16686`).
    pub url: String,
    /// The trace window the pipeline uses (must match, or the ids differ).
    pub window: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8443)),
            default_cluster: "default".to_owned(),
            max_body_bytes: 32 * 1024 * 1024,
            max_batch_items: 10_000,
            max_connections: 4096,
            max_inflight_bytes: 256 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            tls: None,
            token_file: None,
            insecure: false,
            publish_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            jaeger: None,
        }
    }
}

/// TLS settings: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that client certificates are verified against; a verified client
    /// certificate authenticates a request. Without it, no client certificate is requested.
    pub client_ca: Option<PathBuf>,
}

/// Why the receiver is not ready ([`Readiness::check`]): the reason, shown to the client
/// (503 body) and to the probe as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct NotReady {
    /// What is wrong ("the span exporter has been failing for 120s: …").
    pub reason: String,
}

impl NotReady {
    /// Not ready because of `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        NotReady {
            reason: reason.into(),
        }
    }
}

/// What `/readyz` and the admission of a batch consult besides the queue's own health, e.g.
/// "the exporter has been failing for 2 minutes". `Err` carries the reason. It is called for
/// every batch: keep it cheap (read an atomic or a snapshot, do no I/O).
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when batches should be accepted.
    fn check(&self) -> Result<(), NotReady>;
}

impl<F: Fn() -> Result<(), NotReady> + Send + Sync + 'static> Readiness for F {
    fn check(&self) -> Result<(), NotReady> {
        self()
    }
}

/// A [`Readiness`] that is always ready (only the queue's health counts).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn check(&self) -> Result<(), NotReady> {
        Ok(())
    }
}

/// Why the receiver could not start (or its metrics could not be installed).
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// A configuration value is out of range.
    #[error("invalid receiver configuration: {0}")]
    Config(String),
    /// A non-loopback listen address with no authentication and without `insecure`.
    #[error(
        "refusing to listen on {listen} without authentication: configure a token file or a TLS \
         client CA, listen on a loopback address, or allow it explicitly (insecure)"
    )]
    Unauthenticated {
        /// The listen address.
        listen: SocketAddr,
    },
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {}", path.display())]
    Pem {
        /// What was expected (e.g. "the TLS certificate chain").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file held none of what it should.
    #[error("{} contains no {what}", path.display())]
    Empty {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificates or key.
    #[error("invalid TLS setup: {context}")]
    Tls {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client CA cannot be used to verify client certificates.
    #[error("cannot verify client certificates with the CA in {}", path.display())]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Prometheus recorder could not be built or installed.
    #[error("cannot install the Prometheus metrics recorder: {0}")]
    Metrics(String),
}
