//! The axum router: `POST /audit[/{cluster}]`, probes and metrics.

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use kubetrail_model::AuditEvent;
use kubetrail_model::ratelimit::LogLimiter;
use kubetrail_queue::{AuditBatch, AuditProducer, PublishError};
use kubetrail_source::cloud::{CloudFormat, CloudItem, decode_cloud_document};
use kubetrail_source::{ItemError, decode_event_list};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::Readiness;
use crate::auth::{Auth, ConnInfo, Denied, valid_cluster};
use crate::budget::{ByteBudget, Charge};
use crate::metrics::{
    BATCHES_REJECTED, EVENTS_ACCEPTED, EVENTS_RECEIVED, EVENTS_REJECTED, HTTP_DURATION,
    HTTP_REQUESTS, INFLIGHT_REQUESTS,
};

/// `Retry-After` when a readiness check fails.
const NOT_READY_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Most bytes of an unwanted body read (and discarded) before answering an early rejection,
/// so the client reads the answer instead of a connection reset; beyond it the connection
/// is closed.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// Longest time spent draining an unwanted body.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// `Retry-After` when the in-flight byte budget is used up.
const BUDGET_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Size of the reads when inflating a gzip body.
const INFLATE_CHUNK: usize = 64 * 1024;
/// Bodies larger than this (or gzip bodies larger than [`BLOCKING_GZIP_THRESHOLD`]) are
/// decompressed and decoded on the blocking pool, not on a runtime worker.
const BLOCKING_THRESHOLD: usize = 256 * 1024;
/// See [`BLOCKING_THRESHOLD`].
const BLOCKING_GZIP_THRESHOLD: usize = 16 * 1024;

/// The body of a 200 answer to `POST /audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditResponse {
    /// Events published to the queue.
    pub accepted: usize,
    /// Items that were not valid audit events (not published; the rest were).
    pub rejected: Vec<RejectedItem>,
}

/// An item of the `EventList` that was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedItem {
    /// Zero-based index in `items`.
    pub index: usize,
    /// Why (the field that was missing or invalid).
    pub reason: String,
}

/// Everything the handlers share.
pub(crate) struct AppState {
    pub default_cluster: String,
    pub max_body_bytes: usize,
    pub max_batch_items: usize,
    pub body_read_timeout: Duration,
    pub publish_timeout: Duration,
    /// Request-body bytes over all requests (`max_inflight_bytes`).
    pub budget: ByteBudget,
    pub producer: Arc<dyn AuditProducer>,
    pub readiness: Arc<dyn Readiness>,
    pub auth: Auth,
    pub metrics: Option<PrometheusHandle>,
    /// Set once shutdown began: `/readyz` answers 503 so no new traffic is routed here.
    pub draining: AtomicBool,
    /// Target of `GET /redirect`.
    pub jaeger: Option<crate::JaegerLink>,
    /// Bounds the log lines about malformed items over all requests (every item is counted
    /// in `kubetrail_events_rejected_total` either way).
    pub item_log: std::sync::Mutex<LogLimiter>,
}

type Shared = Arc<AppState>;

/// The router; every request must carry a [`ConnInfo`] extension (the server adds it).
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/audit", push(Format::EventList))
        .route("/audit/{cluster}", push(Format::EventList))
        .route("/firehose", push(Format::Firehose))
        .route("/firehose/{cluster}", push(Format::Firehose))
        .route("/pubsub", push(Format::PubSub))
        .route("/pubsub/{cluster}", push(Format::PubSub))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/redirect", get(redirect))
        .fallback(not_found)
        .layer(middleware::from_fn(record_http_metrics))
        .with_state(state)
}

/// Counts every answer by route template (never the raw path: low cardinality).
async fn record_http_metrics(req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(req).await;
    let code = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "path" => path.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "path" => path, "code" => code).increment(1);
    response
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The query of `GET /redirect`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RedirectQuery {
    cluster: Option<String>,
    /// `resource` or `resource.group`.
    resource: String,
    #[serde(default)]
    namespace: String,
    name: String,
    /// RFC 3339; default now.
    time: Option<String>,
}

/// `GET /redirect`: 302 to the Jaeger trace of an object at a time (no authentication: it
/// reveals nothing but an address, and browsers cannot send the webhook's token).
async fn redirect(
    State(s): State<Shared>,
    query: Result<axum::extract::Query<RedirectQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(jaeger) = &s.jaeger else {
        return (
            StatusCode::NOT_FOUND,
            "no Jaeger URL configured (--jaeger-url)\n",
        )
            .into_response();
    };
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("{e}: expected ?resource=&namespace=&name=[&cluster=][&time=]\n"),
            )
                .into_response();
        }
    };
    let spec = if q.namespace.is_empty() {
        format!("{}/{}", q.resource, q.name)
    } else {
        format!("{}/{}/{}", q.resource, q.namespace, q.name)
    };
    let object: kubetrail_model::ObjectRef = match spec.parse() {
        Ok(o) => o,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let at = match q.time.as_deref() {
        Some(t) => match kubetrail_model::parse_rfc3339_nanos(t) {
            Some(t) => t,
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("time {t:?} is not an RFC 3339 time\n"),
                )
                    .into_response();
            }
        },
        None => kubetrail_model::now_unix_nanos(),
    };
    let cluster = q.cluster.unwrap_or_else(|| s.default_cluster.clone());
    let window = i64::try_from(jaeger.window.as_nanos()).unwrap_or(i64::MAX);
    let location =
        kubetrail_model::ids::object_trace_url(&jaeger.url, &cluster, &object, at, window);
    (
        StatusCode::FOUND,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response()
}

/// Liveness: the process is alive and serving.
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// Readiness: the queue accepts and every [`Readiness`] check passes.
async fn readyz(State(s): State<Shared>) -> Response {
    let reason = if s.draining.load(Ordering::Acquire) {
        Some("shutting down".to_owned())
    } else {
        not_ready(&s)
    };
    match reason {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text(State(s): State<Shared>) -> Response {
    match &s.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

/// Why the receiver should not accept batches now, if it should not.
fn not_ready(s: &AppState) -> Option<String> {
    let health = s.producer.health();
    if !health.ready {
        return Some(
            health
                .reason
                .unwrap_or_else(|| "the queue is not ready".to_owned()),
        );
    }
    s.readiness.check().err().map(|e| e.reason)
}

/// What a push endpoint receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `POST /audit`: an `EventList` from kube-apiserver's webhook backend.
    EventList,
    /// `POST /firehose`: a Kinesis Data Firehose HTTP-endpoint delivery (EKS audit logs
    /// through a CloudWatch Logs subscription filter, or audit JSON lines).
    Firehose,
    /// `POST /pubsub`: a Pub/Sub push message carrying a GKE Cloud Logging `LogEntry`.
    PubSub,
}

/// `POST /{endpoint}` and `POST /{endpoint}/{cluster}` for one push format: the batch
/// belongs to the named cluster, or to the default one. See [`audit`] (and [`firehose`] for
/// the answer Firehose wants).
fn push(format: Format) -> MethodRouter<Shared> {
    post(
        move |State(s): State<Shared>, cluster: Option<Path<String>>, req: Request| async move {
            let cluster = cluster.map_or_else(|| s.default_cluster.clone(), |Path(c)| c);
            match format {
                Format::Firehose => firehose(s, cluster, req).await,
                Format::EventList | Format::PubSub => audit(s, cluster, req, format).await,
            }
        },
    )
}

/// The answer body Firehose's HTTP endpoint delivery specification asks for: the request id
/// echoed (from `X-Amz-Firehose-Request-Id`), a timestamp in milliseconds, and on failure an
/// `errorMessage`. Firehose retries any non-200 answer, so a record that is not an audit event
/// is counted and logged, and the delivery still answered 200, as for `POST /audit`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FirehoseAnswer<'a> {
    request_id: &'a str,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
}

async fn firehose(s: Shared, cluster: String, req: Request) -> Response {
    let request_id = req
        .headers()
        .get("x-amz-firehose-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let version = req.version();
    let response = audit(s, cluster, req, Format::Firehose).await;
    let status = response.status();
    let error = if status.is_success() {
        None
    } else {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        #[derive(Deserialize)]
        struct E {
            error: String,
        }
        Some(
            serde_json::from_slice::<E>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| status.to_string()),
        )
    };
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut answer = (
        status,
        Json(FirehoseAnswer {
            request_id: &request_id,
            timestamp,
            error_message: error.as_deref(),
        }),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE && version <= Version::HTTP_11 {
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    answer
}

/// Accepts one `EventList` from the API server's webhook backend.
///
/// Answers 200 only after the valid items were published to the queue. A malformed item
/// does **not** reject the batch: the other items are published and the answer is 200 with
/// the rejected items listed (`{"accepted":N,"rejected":[{"index":i,"reason":"..."}]}`),
/// counted as `malformed_item` and logged at warn. A non-2xx answer would make the API
/// server resend the whole batch, valid items included, again and again, while the bad item
/// can never become valid.
///
/// Checks, in order: credentials (401/403), cluster name (400), content encoding (415),
/// declared length (413), readiness (503), then reads the body within the body timeout (408)
/// and size limit (413, also after decompression), decodes it (400 when not an `EventList`,
/// 413 when it has too many items) and publishes within the publish timeout (503 +
/// `Retry-After` on failure or timeout).
async fn audit(s: Shared, cluster: String, req: Request, format: Format) -> Response {
    let (parts, body) = req.into_parts();
    let remote = parts.extensions.get::<ConnInfo>().map(|c| c.remote);
    // One span per webhook request: what it logs carries the cluster, the client and (once
    // decoded) the number of items. At warn level, so that it is enabled under the default
    // filter (`warn`): a span only gives context, it writes no line of its own.
    let span = tracing::warn_span!(
        "audit_request",
        cluster = %cluster,
        remote = ?remote,
        items = tracing::field::Empty
    );
    let rejection = match receive(&s, &cluster, &parts, body, format)
        .instrument(span.clone())
        .await
    {
        Ok(answer) => return Json(&answer).into_response(),
        Err(r) => r,
    };
    metrics::counter!(BATCHES_REJECTED, "code" => rejection.status.as_u16().to_string())
        .increment(1);
    if let Some(reason) = rejection.events_reason
        && rejection.events > 0
    {
        metrics::counter!(EVENTS_REJECTED, "cluster" => cluster.clone(), "reason" => reason)
            .increment(rejection.events as u64);
    }
    let _entered = span.enter();
    if rejection.status == StatusCode::SERVICE_UNAVAILABLE {
        // Backpressure: expected under load, counted, and retried by the API server.
        tracing::debug!(
            cluster,
            remote = ?remote,
            status = rejection.status.as_u16(),
            reason = %rejection.message,
            "audit batch refused for now"
        );
    } else {
        // A client or configuration problem that retrying will not fix.
        tracing::info!(
            cluster,
            remote = ?remote,
            status = rejection.status.as_u16(),
            reason = %rejection.message,
            "audit batch rejected"
        );
    }
    rejection.into_response(parts.version)
}

/// Logs the malformed items of a batch: each one while [`AppState::item_log`] lets lines
/// through, then one line for the rest of the batch (so a 10,000-item EventList of bad items
/// writes at most `ITEM_LOG_MAX + 1` lines (see `kubetrail_model::ratelimit`), not 10,000).
fn log_malformed_items(
    s: &AppState,
    cluster: &str,
    remote: Option<std::net::SocketAddr>,
    errors: &[ItemError],
) {
    if errors.is_empty() {
        return;
    }
    let mut not_logged = 0u64;
    let mut limiter = s
        .item_log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for e in errors {
        // What an earlier batch held back was summed up in that batch's own line.
        if limiter.check(std::time::Instant::now()).log {
            tracing::warn!(
                cluster,
                remote = ?remote,
                index = e.index,
                reason = %e.reason,
                "rejected a malformed audit event; the rest of the batch is accepted"
            );
        } else {
            not_logged += 1;
        }
    }
    drop(limiter);
    if not_logged > 0 {
        tracing::warn!(
            cluster,
            remote = ?remote,
            rejected = errors.len(),
            not_logged,
            "rejected more malformed audit events in this batch than are logged one by one (log rate limit); all are counted in kubetrail_events_rejected_total"
        );
    }
}

async fn receive(
    s: &AppState,
    cluster: &str,
    parts: &Parts,
    body: Body,
    format: Format,
) -> Result<AuditResponse, Rejection> {
    let started = Instant::now();
    let _inflight = InflightRequest::new();
    let conn = parts.extensions.get::<ConnInfo>();
    if let Err(early) = admit(s, cluster, parts, conn, format) {
        let drained = drain(body, parts, started + DRAIN_TIMEOUT).await;
        return Err(early.close_unless(drained));
    }
    let gzip = is_gzip(&parts.headers);

    // Every buffer of this request is charged here and given back when it is dropped (at
    // the end of this function, whatever way it ends).
    let mut charge = s.budget.charge();
    let raw = read_body(
        body,
        parts,
        s.max_body_bytes,
        &mut charge,
        started + s.body_read_timeout,
    )
    .await?;

    let limit = s.max_body_bytes;
    let (events, errors, charge) =
        if raw.len() > BLOCKING_THRESHOLD || (gzip && raw.len() > BLOCKING_GZIP_THRESHOLD) {
            tokio::task::spawn_blocking(move || {
                decode(&raw, gzip, limit, format, &mut charge).map(|(e, r)| (e, r, charge))
            })
            .await
            .map_err(|e| {
                Rejection::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("decoding failed: {e}"),
                )
            })??
        } else {
            decode(&raw, gzip, limit, format, &mut charge).map(|(e, r)| (e, r, charge))?
        };
    let _charge = charge;

    let items = events.len() + errors.len();
    tracing::Span::current().record("items", items);
    metrics::counter!(EVENTS_RECEIVED, "cluster" => cluster.to_owned()).increment(items as u64);
    if items > s.max_batch_items {
        return Err(Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the EventList has {items} items, more than the limit of {}",
                s.max_batch_items
            ),
        )
        .events(items, "too_many_items"));
    }
    let remote = conn.map(|c| c.remote);
    log_malformed_items(s, cluster, remote, &errors);
    if !errors.is_empty() {
        metrics::counter!(
            EVENTS_REJECTED,
            "cluster" => cluster.to_owned(),
            "reason" => "malformed_item"
        )
        .increment(errors.len() as u64);
    }

    let accepted = events.len();
    if accepted > 0 {
        let identity = s.auth.identity(&parts.headers, conn);
        let source = batch_source(identity, parts.uri.query(), remote).map_err(|reason| {
            Rejection::new(StatusCode::BAD_REQUEST, reason).events(accepted, "bad_source")
        })?;
        publish(s, cluster, source, events).await?;
        metrics::counter!(EVENTS_ACCEPTED, "cluster" => cluster.to_owned())
            .increment(accepted as u64);
    }
    Ok(AuditResponse {
        accepted,
        rejected: errors
            .into_iter()
            .map(|ItemError { index, reason }| RejectedItem { index, reason })
            .collect(),
    })
}

/// The checks that need no body: credentials, cluster, encoding, declared size, readiness.
fn admit(
    s: &AppState,
    cluster: &str,
    parts: &Parts,
    conn: Option<&ConnInfo>,
    format: Format,
) -> Result<(), Rejection> {
    let checked = match format {
        Format::EventList => s.auth.check(&parts.headers, conn),
        Format::Firehose => s.auth.check_firehose(&parts.headers, conn),
        Format::PubSub => s
            .auth
            .check_query_token(&parts.headers, parts.uri.query(), conn),
    };
    match checked {
        Ok(()) => {}
        Err(Denied::Missing) => {
            let mut r = Rejection::new(
                StatusCode::UNAUTHORIZED,
                match format {
                    Format::EventList => {
                        "authentication required: present a bearer token or a client certificate"
                    }
                    Format::Firehose => {
                        "authentication required: set the delivery stream's access key \
                         (X-Amz-Firehose-Access-Key) to a kubetrail token"
                    }
                    Format::PubSub => {
                        "authentication required: add ?token=<token> to the push endpoint URL"
                    }
                }
                .to_owned(),
            );
            r.www_authenticate = true;
            return Err(r);
        }
        Err(Denied::Invalid) => {
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                match format {
                    Format::Firehose => "the Firehose access key is not valid",
                    Format::PubSub => "the token is not valid",
                    Format::EventList => "the bearer token is not valid",
                }
                .to_owned(),
            ));
        }
    }
    if !valid_cluster(cluster) {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid cluster name {cluster:?}: expected a lowercase DNS label \
                 ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters)"
            ),
        ));
    }
    if let Some(enc) = parts.headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("").trim();
        let known = ["gzip", "x-gzip", "identity"]
            .iter()
            .any(|k| enc.eq_ignore_ascii_case(k));
        if !known {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding {enc:?}: only gzip is accepted"),
            ));
        }
    }
    if let Some(len) = content_length(&parts.headers)
        && len > s.max_body_bytes as u64
    {
        return Err(too_large(len, s.max_body_bytes));
    }
    if let Some(reason) = not_ready(s) {
        let mut r = Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        );
        r.retry_after = Some(NOT_READY_RETRY_AFTER);
        return Err(r);
    }
    Ok(())
}

/// Which API server sent a batch, for ordering by event time (each server is a source of
/// its own, see `kubetrail_pipeline::watermark`): its authenticated identity when it has one
/// (the verified client certificate's subject, or the name of its bearer token in the
/// tokens file), else the `source` query parameter when the webhook URL names one
/// (`https://kubetrail:8443/audit/prod?source=apiserver-1` in the server's webhook
/// kubeconfig), else the client's IP address (not its port: one API server opens several
/// connections). A `source` parameter is still validated when an identity wins.
pub(crate) fn batch_source(
    identity: Option<String>,
    query: Option<&str>,
    remote: Option<std::net::SocketAddr>,
) -> Result<Option<String>, String> {
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "source" {
            continue;
        }
        let ok = !value.is_empty()
            && value.len() <= 253
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
        if !ok {
            return Err(format!(
                "invalid source {value:?}: 1 to 253 characters of [A-Za-z0-9-._:]"
            ));
        }
        return Ok(Some(identity.unwrap_or_else(|| value.to_owned())));
    }
    Ok(identity.or_else(|| remote.map(|r| r.ip().to_string())))
}

async fn publish(
    s: &AppState,
    cluster: &str,
    source: Option<String>,
    events: Vec<AuditEvent>,
) -> Result<(), Rejection> {
    let n = events.len();
    let batch = AuditBatch {
        cluster: cluster.to_owned(),
        received_at: kubetrail_model::now_unix_nanos(),
        source,
        events,
    };
    let unavailable = |message: String, retry_after: Duration, reason: &'static str| {
        let mut r = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, message).events(n, reason);
        r.retry_after = Some(retry_after);
        r
    };
    match tokio::time::timeout(s.publish_timeout, s.producer.publish(batch)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let reason = match &e {
                PublishError::Full { .. } => "queue_full",
                PublishError::TooLarge { .. } => "too_large",
                PublishError::Unavailable { .. } => "unavailable",
                PublishError::Closed => "closed",
            };
            if matches!(
                e,
                PublishError::TooLarge { .. } | PublishError::Unavailable { .. }
            ) {
                tracing::warn!(cluster, events = n, error = %e, "cannot publish an audit batch");
            }
            Err(unavailable(e.to_string(), e.retry_after(), reason))
        }
        Err(_) => {
            tracing::warn!(
                cluster,
                events = n,
                timeout = ?s.publish_timeout,
                "publishing an audit batch timed out"
            );
            Err(unavailable(
                format!(
                    "publishing to the queue took longer than {:?}",
                    s.publish_timeout
                ),
                s.publish_timeout,
                "publish_timeout",
            ))
        }
    }
}

/// Decompresses (when gzip) within `limit`, then decodes the `EventList`. The inflated
/// buffer and the decoded events (about as large as their JSON) are charged to `charge`.
fn decode(
    raw: &[u8],
    gzip: bool,
    limit: usize,
    format: Format,
    charge: &mut Charge,
) -> Result<(Vec<AuditEvent>, Vec<ItemError>), Rejection> {
    let inflated;
    let json = if gzip {
        inflated = gunzip(raw, limit, charge)?;
        inflated.as_slice()
    } else {
        raw
    };
    charge.grow(json.len()).map_err(|_| budget_exhausted())?;
    let expected = match format {
        Format::EventList => {
            return decode_event_list(json)
                .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, e.to_string()));
        }
        Format::Firehose => CloudFormat::FirehoseDelivery,
        Format::PubSub => CloudFormat::PubSubPush,
    };
    let doc = decode_cloud_document(json)
        .filter(|d| d.format == expected)
        .ok_or_else(|| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                match format {
                    Format::Firehose => {
                        "not a Firehose HTTP endpoint delivery: expected {\"requestId\",\"timestamp\",\"records\":[{\"data\"}]}"
                    }
                    _ => "not a Pub/Sub push message: expected {\"message\":{\"data\"},\"subscription\"}",
                }
                .to_owned(),
            )
        })?;
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (index, item) in doc.items.into_iter().enumerate() {
        match item {
            CloudItem::Event(e) => events.push(*e),
            CloudItem::Bad(e) => errors.push(ItemError {
                index,
                reason: e.reason,
            }),
            CloudItem::Skipped(e) => {
                tracing::debug!(index, reason = %e.reason, "skipped a record with no Kubernetes audit event");
                metrics::counter!(crate::metrics::RECORDS_SKIPPED).increment(1);
            }
        }
    }
    Ok((events, errors))
}

/// Inflates a gzip body into a buffer that grows (and is charged) as output arrives; more
/// than `limit` inflated bytes is 413.
fn gunzip(raw: &[u8], limit: usize, charge: &mut Charge) -> Result<Vec<u8>, Rejection> {
    let mut decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    let mut chunk = vec![0u8; INFLATE_CHUNK];
    let mut inflate_charge = BufferCharge::new(charge);
    loop {
        let n = decoder.read(&mut chunk).map_err(|e| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid gzip: {e}"),
            )
        })?;
        if n == 0 {
            return Ok(out);
        }
        if n > limit - out.len() {
            return Err(Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the decompressed body is larger than the limit of {limit} bytes"),
            ));
        }
        append(&mut out, &chunk[..n], limit, &mut inflate_charge)?;
    }
}

/// A request's charge as seen by one buffer: the buffer's capacity is charged before the
/// buffer grows.
struct BufferCharge<'a> {
    charge: &'a mut Charge,
    /// Capacity charged for this buffer so far.
    covered: usize,
}

impl<'a> BufferCharge<'a> {
    fn new(charge: &'a mut Charge) -> Self {
        BufferCharge { charge, covered: 0 }
    }

    fn cover(&mut self, capacity: usize) -> Result<(), Rejection> {
        if capacity > self.covered {
            self.charge
                .grow(capacity - self.covered)
                .map_err(|_| budget_exhausted())?;
            self.covered = capacity;
        }
        Ok(())
    }
}

/// Appends `data` to `buf`, growing it (doubling, but not past `limit`) only after the
/// growth was charged; 503 when the in-flight budget cannot cover it.
fn append(
    buf: &mut Vec<u8>,
    data: &[u8],
    limit: usize,
    charge: &mut BufferCharge<'_>,
) -> Result<(), Rejection> {
    let needed = buf.len() + data.len();
    if needed > buf.capacity() {
        let target = needed.max(buf.capacity().saturating_mul(2).min(limit));
        charge.cover(target)?;
        buf.reserve_exact(target - buf.len());
        charge.cover(buf.capacity())?;
    }
    buf.extend_from_slice(data);
    Ok(())
}

fn budget_exhausted() -> Rejection {
    let mut r = Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the receiver holds as many request bytes as it may (server.max_inflight_bytes); \
         retry later"
            .to_owned(),
    );
    r.retry_after = Some(BUDGET_RETRY_AFTER);
    r.events_reason = Some("inflight_bytes");
    r
}

/// Counts a `POST /audit` request in [`INFLIGHT_REQUESTS`] while it lives.
struct InflightRequest;

impl InflightRequest {
    fn new() -> Self {
        metrics::gauge!(INFLIGHT_REQUESTS).increment(1.0);
        InflightRequest
    }
}

impl Drop for InflightRequest {
    fn drop(&mut self) {
        metrics::gauge!(INFLIGHT_REQUESTS).decrement(1.0);
    }
}

fn is_gzip(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_ENCODING).is_some_and(|v| {
        let v = v.to_str().unwrap_or("").trim();
        v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip")
    })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(len: u64, limit: usize) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body ({len} bytes) is larger than the limit of {limit} bytes"),
    )
}

/// Reads the whole body, failing past `limit` bytes (413) or `deadline` (408). The buffer
/// grows with what arrives (a declared `Content-Length` reserves nothing) and each growth
/// is charged to `charge` first (503 when the in-flight budget is used up).
async fn read_body(
    mut body: Body,
    parts: &Parts,
    limit: usize,
    charge: &mut Charge,
    deadline: Instant,
) -> Result<Vec<u8>, Rejection> {
    let mut buf = Vec::new();
    let mut charge = BufferCharge::new(charge);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Rejection::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body was not received in time".to_owned(),
                )
                .close_unless(false));
            }
            Ok(None) => return Ok(buf),
            Ok(Some(Err(e))) => {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
                .close_unless(false));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - buf.len() {
                let seen = (buf.len() + data.len()) as u64;
                drop(buf);
                let drained = drain_rest(body, parts.version, deadline).await;
                return Err(too_large(seen, limit).with_more().close_unless(drained));
            }
            if let Err(refused) = append(&mut buf, &data, limit, &mut charge) {
                drop(buf);
                let drained = drain_rest(body, parts.version, deadline).await;
                return Err(refused.close_unless(drained));
            }
        }
    }
}

/// Reads and discards an unwanted body (bounded in size and time) so the client sees our
/// answer rather than a reset; `false` when the connection should be closed instead.
async fn drain(body: Body, parts: &Parts, deadline: Instant) -> bool {
    if parts.version <= Version::HTTP_11 {
        // A client waiting for "100 Continue" has not sent the body; reading it would ask
        // for it.
        let expects_continue = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue
            || content_length(&parts.headers).is_some_and(|n| n > DRAIN_LIMIT as u64)
        {
            return false;
        }
    }
    drain_rest(body, parts.version, deadline).await
}

/// Reads and discards the rest of a body. Over HTTP/1.1 at most [`DRAIN_LIMIT`] bytes (past
/// it closing the connection is cheaper). Over HTTP/2 the whole stream, within the time
/// bound: discarding costs no memory (flow control), while a stream reset in place of it
/// reaches clients such as curl as a stream error instead of our status code.
async fn drain_rest(mut body: Body, version: Version, deadline: Instant) -> bool {
    use axum::body::HttpBody as _;
    if body.is_end_stream() {
        return true;
    }
    let byte_limit = if version >= Version::HTTP_2 {
        usize::MAX
    } else {
        DRAIN_LIMIT
    };
    let deadline = deadline.min(Instant::now() + DRAIN_TIMEOUT);
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen = seen.saturating_add(data.len());
                    if seen > byte_limit {
                        return false;
                    }
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// A non-2xx answer to `POST /audit`.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
    www_authenticate: bool,
    /// Close the (HTTP/1) connection after answering: the body was not read to its end.
    close: bool,
    /// Events counted as rejected, with the reason label.
    events: usize,
    events_reason: Option<&'static str>,
}

impl Rejection {
    fn new(status: StatusCode, message: String) -> Self {
        Rejection {
            status,
            message,
            retry_after: None,
            www_authenticate: false,
            close: false,
            events: 0,
            events_reason: None,
        }
    }

    fn events(mut self, n: usize, reason: &'static str) -> Self {
        self.events = n;
        self.events_reason = Some(reason);
        self
    }

    fn close_unless(mut self, drained: bool) -> Self {
        self.close = !drained;
        self
    }

    fn with_more(mut self) -> Self {
        self.message.push_str(" (or more)");
        self
    }

    fn into_response(self, version: Version) -> Response {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            error: &'a str,
        }
        let mut response = (
            self.status,
            Json(&ErrorBody {
                error: &self.message,
            }),
        )
            .into_response();
        let h = response.headers_mut();
        if let Some(d) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
        }
        if self.www_authenticate {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kubetrail\""),
            );
        }
        if self.close && version <= Version::HTTP_11 {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_source_is_the_named_source_else_the_client_ip() {
        let remote: std::net::SocketAddr = "10.0.0.7:51234".parse().unwrap();
        assert_eq!(
            batch_source(None, Some("source=apiserver-1"), Some(remote)),
            Ok(Some("apiserver-1".into()))
        );
        assert_eq!(
            batch_source(None, Some("x=1&source=a.b_c:2"), None),
            Ok(Some("a.b_c:2".into()))
        );
        assert_eq!(
            batch_source(None, None, Some(remote)),
            Ok(Some("10.0.0.7".into()))
        );
        assert_eq!(batch_source(None, Some("other=1"), None), Ok(None));
        assert!(batch_source(None, Some("source="), Some(remote)).is_err());
        assert!(batch_source(None, Some("source=a%20b"), Some(remote)).is_err());
        // The authenticated identity comes first.
        let id = || Some("apiserver-0".to_owned());
        assert_eq!(
            batch_source(id(), Some("source=apiserver-1"), Some(remote)),
            Ok(Some("apiserver-0".into()))
        );
        assert_eq!(
            batch_source(id(), None, Some(remote)),
            Ok(Some("apiserver-0".into()))
        );
        assert!(batch_source(id(), Some("source="), Some(remote)).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
    }

    #[test]
    fn gzip_limit_applies_to_the_inflated_size() {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 100_000]).unwrap();
        let small = enc.finish().unwrap();
        assert!(small.len() < 1_000);
        let budget = ByteBudget::new(usize::MAX);
        let mut charge = budget.charge();
        assert_eq!(gunzip(&small, 100_000, &mut charge).unwrap().len(), 100_000);
        assert!(charge.bytes() >= 100_000, "the inflated buffer was charged");
        drop(charge);
        assert_eq!(budget.in_use(), 0, "and given back");
        let err = gunzip(&small, 99_999, &mut budget.charge()).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            gunzip(b"not gzip", 100, &mut budget.charge())
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn inflating_past_the_inflight_budget_is_503_and_gives_everything_back() {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 1_000_000]).unwrap();
        let small = enc.finish().unwrap();
        let budget = ByteBudget::new(200_000);
        let err = gunzip(&small, 10_000_000, &mut budget.charge()).unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.retry_after.is_some());
        assert_eq!(budget.in_use(), 0);
    }
}
