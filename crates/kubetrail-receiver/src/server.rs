//! The listener, the accept loop and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use kubetrail_queue::AuditProducer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::auth::{Auth, ConnInfo, load_tokens, valid_cluster};
use crate::budget::ByteBudget;
use crate::handler::{AppState, router};
use crate::metrics::{CONNECTIONS_OPEN, CONNECTIONS_REFUSED};
use crate::{Readiness, ReceiverConfig, ReceiverError};

/// How often the Prometheus handle's upkeep runs (drains histogram samples).
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Largest HTTP/1.1 read buffer per connection (request heads must fit in it).
const HTTP1_MAX_BUF: usize = 64 * 1024;
/// HTTP/2 flow-control windows: what a client may send before the server reads it, per
/// stream and per connection. They bound the bytes a stalled HTTP/2 connection can make the
/// server buffer.
const HTTP2_STREAM_WINDOW: u32 = 128 * 1024;
/// See [`HTTP2_STREAM_WINDOW`].
const HTTP2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Concurrent HTTP/2 streams per connection (the API server sends one batch at a time).
const HTTP2_MAX_STREAMS: u32 = 16;
/// Largest HTTP/2 header list.
const HTTP2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Pause after an accept error such as "too many open files", so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A bound audit webhook server; [`Receiver::serve`] runs it.
pub struct Receiver {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    state: Arc<AppState>,
    header_read_timeout: Duration,
    shutdown_grace: Duration,
    connections: Arc<Semaphore>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .field("auth", &self.state.auth)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Validates the configuration, loads the TLS files and tokens, and binds the listener.
    ///
    /// Refuses a non-loopback listen address when neither a token file nor a client CA is
    /// configured, unless [`ReceiverConfig::insecure`] is set. Errors name the offending file.
    /// `readiness` is consulted by `/readyz` and before accepting each batch, in addition to
    /// `producer.health()`. `metrics`, when given, is served at `GET /metrics`.
    pub async fn bind(
        config: ReceiverConfig,
        producer: Arc<dyn AuditProducer>,
        readiness: Arc<dyn Readiness>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Receiver, ReceiverError> {
        validate(&config)?;
        let client_ca = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !config.listen.ip().is_loopback()
            && config.token_file.is_none()
            && !client_ca
            && !config.insecure
        {
            return Err(ReceiverError::Unauthenticated {
                listen: config.listen,
            });
        }
        let tokens = match &config.token_file {
            Some(path) => load_tokens(path)?,
            None => Vec::new(),
        };
        let tls = match &config.tls {
            Some(t) => Some(TlsAcceptor::from(crate::tls::server_config(t)?)),
            None => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ReceiverError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ReceiverError::Bind {
                addr: config.listen,
                source,
            })?;
        let auth = Auth::new(tokens, client_ca);
        if !auth.required() {
            tracing::warn!(%local_addr, "the audit webhook accepts requests without authentication");
        } else if tls.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(%local_addr, "bearer tokens are accepted over plain HTTP on a non-loopback address");
        }
        tracing::info!(
            %local_addr,
            tls = tls.is_some(),
            client_ca,
            tokens = config.token_file.is_some(),
            "audit webhook listening"
        );
        let state = Arc::new(AppState {
            default_cluster: config.default_cluster,
            max_body_bytes: config.max_body_bytes,
            max_batch_items: config.max_batch_items,
            body_read_timeout: config.body_read_timeout,
            publish_timeout: config.publish_timeout,
            budget: ByteBudget::new(config.max_inflight_bytes),
            producer,
            readiness,
            auth,
            metrics,
            draining: AtomicBool::new(false),
            jaeger: config.jaeger,
            item_log: std::sync::Mutex::new(kubetrail_model::ratelimit::LogLimiter::for_items()),
        });
        Ok(Receiver {
            listener,
            local_addr,
            tls,
            state,
            header_read_timeout: config.header_read_timeout,
            shutdown_grace: config.shutdown_grace,
            connections: Arc::new(Semaphore::new(
                config.max_connections.min(Semaphore::MAX_PERMITS),
            )),
        })
    }

    /// Every route of this server (authentication, body limits, decoding, publishing) as a
    /// router, without the connection-level limits: for driving the receiver in-process
    /// (the fuzz target `webhook_body`). [`Receiver::serve`] serves the same router.
    pub fn router(&self) -> axum::Router {
        crate::handler::router(self.state.clone())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves. Then it stops accepting connections (the port is
    /// closed), answers `/readyz` with 503, lets in-flight requests finish and closes idle
    /// connections; connections still open after [`ReceiverConfig::shutdown_grace`] are
    /// dropped. Returns once every connection is gone.
    ///
    /// Connection-level failures (TLS handshake errors, resets, slow clients cut off) are
    /// logged at debug; they never end the server.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ReceiverError> {
        let Receiver {
            listener,
            local_addr,
            tls,
            state,
            header_read_timeout,
            shutdown_grace,
            connections: connection_slots,
        } = self;
        let app = router(state.clone());

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_buf_size(HTTP1_MAX_BUF);
        builder
            .http2()
            .timer(TokioTimer::new())
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST);
        let builder = Arc::new(builder);

        let upkeep = state.metrics.clone().map(|handle| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            })
        });

        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done && e.is_panic() {
                        tracing::error!(error = %e, "a connection task panicked");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
                            // At the cap: close at once rather than hold the socket.
                            metrics::counter!(CONNECTIONS_REFUSED).increment(1);
                            tracing::debug!(%remote, "max_connections open; closing a new connection");
                            drop(stream);
                            continue;
                        };
                        let conn = Connection {
                            _slot: OpenConnection::new(slot),
                            remote,
                            tls: tls.clone(),
                            builder: builder.clone(),
                            app: app.clone(),
                            watcher: graceful.watcher(),
                            header_read_timeout,
                        };
                        connections.spawn(conn.run(stream));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "accepting a connection failed");
                        if is_resource_exhaustion(&e) {
                            tracing::warn!(error = %e, "cannot accept connections; pausing");
                            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        }
                    }
                }
            }
        }

        drop(listener);
        state.draining.store(true, Ordering::Release);
        tracing::info!(
            %local_addr,
            connections = graceful.count(),
            grace = ?shutdown_grace,
            "audit webhook shutting down: finishing in-flight requests"
        );
        if tokio::time::timeout(shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = connections.len(),
                "shutdown grace period over; closing the remaining connections"
            );
        }
        connections.shutdown().await;
        if let Some(upkeep) = upkeep {
            upkeep.abort();
        }
        tracing::info!(%local_addr, "audit webhook stopped");
        Ok(())
    }
}

fn validate(c: &ReceiverConfig) -> Result<(), ReceiverError> {
    let bad = |m: String| Err(ReceiverError::Config(m));
    if !valid_cluster(&c.default_cluster) {
        return bad(format!(
            "the default cluster {:?} is not a lowercase DNS label \
             ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters)",
            c.default_cluster
        ));
    }
    if c.max_body_bytes == 0 {
        return bad("max_body_bytes must be greater than 0".to_owned());
    }
    if c.max_connections == 0 {
        return bad("max_connections must be greater than 0".to_owned());
    }
    if c.max_inflight_bytes / 3 < c.max_body_bytes {
        return bad(format!(
            "max_inflight_bytes ({}) must be at least 3 × max_body_bytes ({}): one request \
             holds its body, its decompressed form and its decoded events",
            c.max_inflight_bytes, c.max_body_bytes
        ));
    }
    if c.max_batch_items == 0 {
        return bad("max_batch_items must be greater than 0".to_owned());
    }
    for (name, d) in [
        ("header_read_timeout", c.header_read_timeout),
        ("body_read_timeout", c.body_read_timeout),
        ("publish_timeout", c.publish_timeout),
    ] {
        if d.is_zero() {
            return bad(format!("{name} must be greater than 0"));
        }
    }
    Ok(())
}

fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE / ENFILE / ENOBUFS / ENOMEM: the next accept would fail the same way at once.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// A connection's slot under `max_connections`, counted in [`CONNECTIONS_OPEN`].
struct OpenConnection(#[allow(dead_code)] OwnedSemaphorePermit);

impl OpenConnection {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        OpenConnection(permit)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// One accepted TCP connection.
struct Connection {
    _slot: OpenConnection,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    watcher: Watcher,
    header_read_timeout: Duration,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let remote = self.remote;
        match self.tls.clone() {
            None => {
                let info = ConnInfo {
                    remote,
                    client_cert_verified: false,
                    client_subject: None,
                };
                self.serve_http(TokioIo::new(stream), info).await;
            }
            Some(acceptor) => {
                match tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(stream)) => {
                        // With a client CA configured, rustls only lets a handshake with a
                        // certificate through if the certificate verified.
                        let peer = stream.get_ref().1.peer_certificates();
                        let verified = peer.is_some_and(|c| !c.is_empty());
                        let client_subject = peer
                            .and_then(|c| c.first())
                            .and_then(|c| crate::auth::certificate_subject(c.as_ref()));
                        let info = ConnInfo {
                            remote,
                            client_cert_verified: verified,
                            client_subject,
                        };
                        self.serve_http(TokioIo::new(stream), info).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            }
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 on the connection. hyper's header read timeout covers
    /// HTTP/1 request heads once the protocol is known; the first request must additionally
    /// arrive within the header read timeout whatever the protocol, so a client that sends
    /// a few bytes (or nothing) cannot hold the connection open.
    async fn serve_http<I>(self, io: I, info: ConnInfo)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let remote = info.remote;
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let service = self.app.map_request(move |mut req: Request<Incoming>| {
            flag.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(info.clone());
            req
        });
        let conn = self
            .builder
            .serve_connection(io, TowerToHyperService::new(service))
            .into_owned();
        let conn = self.watcher.watch(conn);
        tokio::pin!(conn);
        tokio::select! {
            result = &mut conn => return log_end(remote, result),
            () = tokio::time::sleep(self.header_read_timeout) => {}
        }
        if !started.load(Ordering::Relaxed) {
            tracing::debug!(%remote, "no request within the header read timeout; closing");
            return;
        }
        log_end(remote, conn.await);
    }
}

fn log_end(remote: SocketAddr, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
