//! The OTLP sink: gRPC (tonic's generated `TraceService` client) or HTTP/protobuf (reqwest).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use kubetrail_model::{SpanRecord, parse_rfc3339_nanos};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataValue, MetadataKey, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::{append_sources, error_chain};
use crate::metric_names::SPANS_REJECTED;
use crate::{ExportError, SpanSink, to_export_request};

const GRPC_SINK: &str = "otlp-grpc";
const HTTP_SINK: &str = "otlp-http";
const USER_AGENT: &str = concat!("kubetrail/", env!("CARGO_PKG_VERSION"));
/// The largest response we decode: OTLP responses are tiny; this only bounds a misbehaving peer.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (default port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318), POSTed to `{endpoint}/v1/traces`.
    Http,
}

impl OtlpProtocol {
    /// The conventional local endpoint of a receiver speaking this protocol.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "http://localhost:4317",
            OtlpProtocol::Http => "http://localhost:4318",
        }
    }
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::Http => "http/protobuf",
        })
    }
}

/// An OTLP protocol name that is not `grpc`, `http` or `http/protobuf`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown OTLP protocol {0:?}: expected \"grpc\", \"http\" or \"http/protobuf\"")]
pub struct ParseProtocolError(pub String);

impl FromStr for OtlpProtocol {
    type Err = ParseProtocolError;

    /// Accepts the values of `OTEL_EXPORTER_OTLP_PROTOCOL` this sink supports, any case:
    /// `grpc`, `http` and `http/protobuf`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http" | "http/protobuf" => Ok(OtlpProtocol::Http),
            _ => Err(ParseProtocolError(s.to_owned())),
        }
    }
}

impl<'de> serde::Deserialize<'de> for OtlpProtocol {
    /// `grpc`, `http` or `http/protobuf` (any case), as [`FromStr`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where and how [`OtlpSink`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The receiver: `http://host:4317` (gRPC) or `http://host:4318` (HTTP; `/v1/traces` is
    /// appended unless the endpoint already ends with it). `https://` uses TLS with the
    /// webpki root certificates. Without a scheme, `http://` is assumed.
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: OtlpProtocol,
    /// Per-request timeout (also the connect timeout). Default 10 s.
    pub timeout: Duration,
    /// Extra request headers (gRPC metadata), e.g. `("authorization", "Bearer …")`.
    pub headers: Vec<(String, String)>,
    /// Gzip-compress request bodies.
    pub gzip: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: OtlpProtocol::Grpc.default_endpoint().to_owned(),
            protocol: OtlpProtocol::Grpc,
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            gzip: false,
        }
    }
}

/// Sends spans to an OTLP receiver (OpenTelemetry Collector, Jaeger, Tempo …).
///
/// gRPC connects lazily and reconnects by itself: a receiver that is down when the sink is
/// created, or goes away later, gives [`ExportError::Retryable`] errors until it is back.
/// Error classification follows the OTLP specification: gRPC `UNAVAILABLE`,
/// `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, `ABORTED`, `CANCELLED`, `OUT_OF_RANGE`,
/// `DATA_LOSS` and transport failures are retryable (with the delay of a `RetryInfo` detail,
/// if any); HTTP 429, 502, 503, 504 and transport failures are retryable (with `Retry-After`,
/// if any); everything else is permanent. A partial success (the receiver rejected some spans
/// of an accepted request) is logged as a warning and counted in
/// `kubetrail_spans_rejected_total`, not returned as an error: resending would not help.
pub struct OtlpSink {
    transport: Transport,
}

enum Transport {
    Grpc {
        client: TraceServiceClient<Channel>,
        metadata: MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
        gzip: bool,
    },
}

impl fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            Transport::Grpc { .. } => f
                .debug_struct("OtlpSink")
                .field("protocol", &OtlpProtocol::Grpc)
                .finish(),
            Transport::Http { url, .. } => f
                .debug_struct("OtlpSink")
                .field("protocol", &OtlpProtocol::Http)
                .field("url", &url.as_str())
                .finish(),
        }
    }
}

impl OtlpSink {
    /// Validates the configuration and prepares the client; does not connect.
    ///
    /// Fails ([`ExportError::Permanent`]) on an invalid endpoint or header, or, for gRPC, when
    /// called outside a Tokio runtime (the lazy channel needs one for its background task).
    pub fn new(config: OtlpConfig) -> Result<Self, ExportError> {
        let endpoint = with_scheme(config.endpoint.trim());
        let transport = match config.protocol {
            OtlpProtocol::Grpc => grpc_transport(&endpoint, &config)?,
            OtlpProtocol::Http => http_transport(&endpoint, &config)?,
        };
        Ok(OtlpSink { transport })
    }
}

/// `host:port` → `http://host:port`; anything with a scheme is kept.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

fn grpc_transport(endpoint: &str, config: &OtlpConfig) -> Result<Transport, ExportError> {
    let invalid = |what: &str, e: &dyn std::error::Error| {
        ExportError::permanent(
            GRPC_SINK,
            format!("{what} for OTLP/gRPC endpoint {endpoint:?}: {e}"),
        )
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ExportError::permanent(
            GRPC_SINK,
            "the OTLP/gRPC sink must be created inside a Tokio runtime",
        ));
    }
    let mut ep = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| invalid("invalid URI", &e))?
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(USER_AGENT)
        .map_err(|e| invalid("invalid user agent", &e))?;
    if endpoint.starts_with("https://") {
        ep = ep
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .map_err(|e| invalid("cannot configure TLS", &e))?;
    }
    let mut client =
        TraceServiceClient::new(ep.connect_lazy()).max_decoding_message_size(MAX_RESPONSE_BYTES);
    if config.gzip {
        client = client
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }
    let mut metadata = MetadataMap::new();
    for (name, value) in &config.headers {
        let key = MetadataKey::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|e| invalid(&format!("invalid header name {name:?}"), &e))?;
        if key.as_str().ends_with("-bin") {
            return Err(ExportError::permanent(
                GRPC_SINK,
                format!("binary gRPC metadata ({name:?}) is not supported in OTLP headers"),
            ));
        }
        let value = AsciiMetadataValue::try_from(value.as_str())
            .map_err(|e| invalid(&format!("invalid value for header {name:?}"), &e))?;
        metadata.append(key, value);
    }
    Ok(Transport::Grpc {
        client,
        metadata,
        timeout: config.timeout,
    })
}

fn http_transport(endpoint: &str, config: &OtlpConfig) -> Result<Transport, ExportError> {
    let invalid = |what: &str, e: &dyn std::error::Error| {
        ExportError::permanent(
            HTTP_SINK,
            format!("{what} for OTLP/HTTP endpoint {endpoint:?}: {e}"),
        )
    };
    let url = if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let url = reqwest::Url::parse(&url).map_err(|e| invalid("invalid URL", &e))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &config.headers {
        let key = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| invalid(&format!("invalid header name {name:?}"), &e))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|e| invalid(&format!("invalid value for header {name:?}"), &e))?;
        headers.append(key, value);
    }
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(USER_AGENT)
        .default_headers(headers)
        .build()
        .map_err(|e| invalid("cannot build the HTTP client", &e))?;
    Ok(Transport::Http {
        client,
        url,
        gzip: config.gzip,
    })
}

impl OtlpSink {
    /// Sends an export request without spans: checks that the endpoint is reachable and
    /// takes OTLP — its address, path, protocol and credentials — without sending data. What
    /// the start-up health check ([`crate::ExportConfig::health_check`]) calls; the errors are
    /// those of [`export`](SpanSink::export).
    pub async fn check(&mut self) -> Result<(), ExportError> {
        self.send(ExportTraceServiceRequest::default()).await
    }

    async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<(), ExportError> {
        match &mut self.transport {
            Transport::Grpc {
                client,
                metadata,
                timeout,
            } => {
                let mut req = tonic::Request::new(request);
                *req.metadata_mut() = metadata.clone();
                req.set_timeout(*timeout);
                let response = client.export(req).await.map_err(|s| classify_grpc(&s))?;
                check_partial_success(GRPC_SINK, response.get_ref().partial_success.as_ref());
                Ok(())
            }
            Transport::Http { client, url, gzip } => {
                let body = request.encode_to_vec();
                export_http(client, url, *gzip, body).await
            }
        }
    }
}

#[async_trait::async_trait]
impl SpanSink for OtlpSink {
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.send(to_export_request(batch)).await
    }

    /// Nothing to do: every successful [`export`](SpanSink::export) was acknowledged by the
    /// receiver.
    async fn finish(&mut self) -> Result<(), ExportError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self.transport {
            Transport::Grpc { .. } => GRPC_SINK,
            Transport::Http { .. } => HTTP_SINK,
        }
    }
}

async fn export_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    gzip: bool,
    body: Vec<u8>,
) -> Result<(), ExportError> {
    use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};

    let mut request = client
        .post(url.clone())
        .header(CONTENT_TYPE, "application/x-protobuf");
    let body = if gzip {
        request = request.header(CONTENT_ENCODING, "gzip");
        gzip_bytes(&body).map_err(|e| {
            ExportError::permanent(HTTP_SINK, format!("gzip of the request body failed: {e}"))
        })?
    } else {
        body
    };
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| classify_reqwest(url, &e))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let is_protobuf = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    // The request is settled by the status line; a body that cannot be read only costs us
    // the details.
    let body = response.bytes().await.unwrap_or_default();
    if status.is_success() {
        if is_protobuf && !body.is_empty() && body.len() <= MAX_RESPONSE_BYTES {
            match ExportTraceServiceResponse::decode(body.as_ref()) {
                Ok(r) => check_partial_success(HTTP_SINK, r.partial_success.as_ref()),
                Err(e) => {
                    tracing::debug!(sink = HTTP_SINK, %url, error = %e, "undecodable OTLP response body")
                }
            }
        }
        return Ok(());
    }
    let detail = http_error_detail(&body, is_protobuf);
    Err(classify_http(
        status.as_u16(),
        retry_after,
        &format!("POST {url}: HTTP {status}{detail}"),
    ))
}

fn gzip_bytes(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    enc.finish()
}

/// The receiver's explanation of a failed HTTP request: a `google.rpc.Status` message for
/// protobuf responses (what OTLP specifies), else the start of the body as text.
fn http_error_detail(body: &[u8], is_protobuf: bool) -> String {
    if is_protobuf && let Ok(status) = RpcStatus::decode(body) {
        return if status.message.is_empty() {
            String::new()
        } else {
            format!(": {}", status.message)
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut cut: String = text.chars().take(256).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!(": {cut}")
}

/// The OTLP/HTTP retry rules: 429, 502, 503, 504 are retryable (with `Retry-After`), all other
/// failures are not.
fn classify_http(status: u16, retry_after: Option<Duration>, message: &str) -> ExportError {
    match status {
        429 | 502 | 503 | 504 => ExportError::Retryable {
            sink: HTTP_SINK,
            message: message.to_owned(),
            retry_after,
        },
        _ => ExportError::permanent(HTTP_SINK, message),
    }
}

/// Transport failures (connect, timeout, reset, body) are retryable; a request that could not
/// even be built or a redirect loop is not.
fn classify_reqwest(url: &reqwest::Url, e: &reqwest::Error) -> ExportError {
    let message = format!("POST {url}: {}", error_chain(e));
    if e.is_builder() || e.is_redirect() {
        ExportError::permanent(HTTP_SINK, message)
    } else {
        ExportError::retryable(HTTP_SINK, message)
    }
}

/// The OTLP/gRPC retry rules, plus: a status tonic made from a local transport failure
/// (it has a `source()`, and code `UNKNOWN` or `INTERNAL`) is retryable, unlike the same
/// codes returned by the server.
fn classify_grpc(status: &tonic::Status) -> ExportError {
    use tonic::Code;
    let mut message = format!("{:?}: {}", status.code(), status.message());
    append_sources(&mut message, std::error::Error::source(status));
    let retryable = match status.code() {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::OutOfRange
        | Code::DataLoss => true,
        Code::Unknown | Code::Internal => std::error::Error::source(status).is_some(),
        _ => false,
    };
    if retryable {
        ExportError::Retryable {
            sink: GRPC_SINK,
            message,
            retry_after: grpc_retry_delay(status.details()),
        }
    } else {
        ExportError::permanent(GRPC_SINK, message)
    }
}

fn check_partial_success(sink: &'static str, partial: Option<&ExportTracePartialSuccess>) {
    let Some(p) = partial else { return };
    if p.rejected_spans > 0 {
        tracing::warn!(
            sink,
            rejected_spans = p.rejected_spans,
            error = %p.error_message,
            "the OTLP receiver rejected spans"
        );
        metrics::counter!(SPANS_REJECTED, "sink" => sink)
            .increment(p.rejected_spans.unsigned_abs());
    } else if !p.error_message.is_empty() {
        tracing::warn!(
            sink,
            warning = %p.error_message,
            "the OTLP receiver accepted the spans with a warning"
        );
    }
}

/// `google.rpc.Status`, as OTLP receivers put in gRPC status details and HTTP error bodies.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`: how long a throttling receiver asks the client to wait.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The `RetryInfo.retry_delay` in a gRPC status' details, if any.
fn grpc_retry_delay(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(info.value.as_slice()).ok()?.retry_delay?;
    let secs = u64::try_from(delay.seconds).ok()?;
    let nanos = u32::try_from(delay.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(secs, nanos))
}

/// `Retry-After`: delay-seconds, or an HTTP-date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`)
/// relative to `now` (a date in the past means "now": zero).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    let now = kubetrail_model::unix_nanos(now);
    Some(Duration::from_nanos(
        u64::try_from(at.saturating_sub(now)).unwrap_or(0),
    ))
}

/// IMF-fixdate to Unix nanoseconds.
fn parse_imf_fixdate(s: &str) -> Option<i64> {
    let mut parts = s.split_ascii_whitespace();
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some()
        || zone != "GMT"
        || day.len() != 2
        || year.len() != 4
        || time.len() != 8
    {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? + 1;
    parse_rfc3339_nanos(&format!("{year}-{month:02}-{day}T{time}Z"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::convert::tests::span;

    /// A port on which nothing listens (bound, then released).
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").port()
    }

    fn config(endpoint: String, protocol: OtlpProtocol) -> OtlpConfig {
        OtlpConfig {
            endpoint,
            protocol,
            timeout: Duration::from_secs(5),
            ..OtlpConfig::default()
        }
    }

    #[test]
    fn protocol_parses() {
        assert_eq!("grpc".parse::<OtlpProtocol>(), Ok(OtlpProtocol::Grpc));
        assert_eq!(
            "HTTP/protobuf".parse::<OtlpProtocol>(),
            Ok(OtlpProtocol::Http)
        );
        assert_eq!(" http ".parse::<OtlpProtocol>(), Ok(OtlpProtocol::Http));
        assert!("http/json".parse::<OtlpProtocol>().is_err());
        assert_eq!(
            OtlpProtocol::Http.to_string().parse::<OtlpProtocol>(),
            Ok(OtlpProtocol::Http)
        );
        assert_eq!(OtlpConfig::default().timeout, Duration::from_secs(10));
    }

    #[tokio::test]
    async fn grpc_export_to_a_closed_port_is_retryable() {
        let port = closed_port().await;
        // Creating the sink does not connect: a receiver that is down at start is not fatal.
        let mut sink = OtlpSink::new(config(
            format!("http://127.0.0.1:{port}"),
            OtlpProtocol::Grpc,
        ))
        .expect("sink");
        assert_eq!(sink.name(), "otlp-grpc");
        let err = sink
            .export(&[span(1, 1, None, "kubelet", "c")])
            .await
            .expect_err("nothing listens");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(err.sink(), "otlp-grpc");
        assert!(err.message().contains("connect"), "{err}");
        // And again: the lazy channel keeps trying.
        let err = sink
            .export(&[span(1, 1, None, "kubelet", "c")])
            .await
            .expect_err("nothing listens");
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn http_export_to_a_closed_port_is_retryable() {
        let port = closed_port().await;
        let mut sink =
            OtlpSink::new(config(format!("127.0.0.1:{port}"), OtlpProtocol::Http)).expect("sink");
        assert_eq!(sink.name(), "otlp-http");
        let err = sink
            .export(&[span(1, 1, None, "kubelet", "c")])
            .await
            .expect_err("nothing listens");
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn invalid_configuration_is_permanent() {
        let bad_header = OtlpConfig {
            headers: vec![("bad header".into(), "x".into())],
            ..OtlpConfig::default()
        };
        assert!(
            !OtlpSink::new(bad_header)
                .expect_err("invalid")
                .is_retryable()
        );
        let bad_uri = config("http://[::1".into(), OtlpProtocol::Http);
        assert!(!OtlpSink::new(bad_uri).expect_err("invalid").is_retryable());
        let bin = OtlpConfig {
            headers: vec![("x-bin".into(), "x".into())],
            ..OtlpConfig::default()
        };
        assert!(OtlpSink::new(bin).is_err());
    }

    #[tokio::test]
    async fn valid_configurations_build_without_connecting() {
        for (endpoint, protocol) in [
            ("https://otel.example.invalid:4317", OtlpProtocol::Grpc),
            ("otel.example.invalid:4317", OtlpProtocol::Grpc),
            ("https://otel.example.invalid", OtlpProtocol::Http),
        ] {
            let cfg = OtlpConfig {
                headers: vec![("Authorization".into(), "Bearer x".into())],
                gzip: true,
                ..config(endpoint.into(), protocol)
            };
            OtlpSink::new(cfg).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        }
    }

    #[test]
    fn grpc_outside_a_runtime_is_an_error_not_a_panic() {
        let err = OtlpSink::new(OtlpConfig::default()).expect_err("no runtime");
        assert!(err.message().contains("Tokio runtime"), "{err}");
    }

    #[test]
    fn grpc_codes_are_classified() {
        use tonic::{Code, Status};
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Cancelled,
        ] {
            assert!(
                classify_grpc(&Status::new(code, "x")).is_retryable(),
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
        ] {
            assert!(
                !classify_grpc(&Status::new(code, "x")).is_retryable(),
                "{code:?}"
            );
        }
        // Server-sent UNKNOWN/INTERNAL are permanent.
        assert!(!classify_grpc(&Status::new(Code::Internal, "x")).is_retryable());
        // The message says what happened.
        let e = classify_grpc(&Status::new(Code::InvalidArgument, "bad span"));
        assert_eq!(e.message(), "InvalidArgument: bad span");
    }

    #[test]
    fn grpc_retry_info_is_honoured() {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: 3,
                nanos: 500_000_000,
            }),
        };
        let status = RpcStatus {
            code: tonic::Code::ResourceExhausted as i32,
            message: "slow down".into(),
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: info.encode_to_vec(),
            }],
        };
        let s = tonic::Status::with_details(
            tonic::Code::ResourceExhausted,
            "slow down",
            status.encode_to_vec().into(),
        );
        assert_eq!(
            classify_grpc(&s).retry_after(),
            Some(Duration::from_millis(3500))
        );
        assert_eq!(grpc_retry_delay(b"\xff\xff"), None);
    }

    #[test]
    fn http_statuses_are_classified() {
        for code in [429, 502, 503, 504] {
            let e = classify_http(code, Some(Duration::from_secs(2)), "m");
            assert!(e.is_retryable(), "{code}");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        }
        for code in [400, 401, 403, 404, 413, 500] {
            assert!(!classify_http(code, None, "m").is_retryable(), "{code}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            None
        );
    }

    #[test]
    fn http_error_details() {
        let status = RpcStatus {
            code: 3,
            message: "span too large".into(),
            details: vec![],
        };
        assert_eq!(
            http_error_detail(&status.encode_to_vec(), true),
            ": span too large"
        );
        assert_eq!(
            http_error_detail(b"  upstream connect error \n", false),
            ": upstream connect error"
        );
        assert_eq!(http_error_detail(b"", false), "");
        let long = "x".repeat(300);
        assert_eq!(
            http_error_detail(long.as_bytes(), false).chars().count(),
            2 + 256 + 1
        );
    }

    /// One canned HTTP exchange: reads one request, answers with `response`, hands back the
    /// request head and body.
    async fn one_http_exchange(listener: TcpListener, response: Vec<u8>) -> (String, Vec<u8>) {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before the request head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed before the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        conn.write_all(&response).await.expect("write");
        conn.shutdown().await.expect("shutdown");
        (head, buf[head_end..head_end + len].to_vec())
    }

    #[tokio::test]
    async fn http_posts_gzipped_protobuf_to_v1_traces() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(one_http_exchange(
            listener,
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .into(),
        ));
        let mut sink = OtlpSink::new(OtlpConfig {
            endpoint: format!("http://127.0.0.1:{port}/"),
            protocol: OtlpProtocol::Http,
            headers: vec![("Authorization".into(), "Bearer t0k".into())],
            gzip: true,
            ..OtlpConfig::default()
        })
        .expect("sink");
        sink.export(&[span(1, 1, None, "kubelet", "c")])
            .await
            .expect("accepted");
        let (head, body) = server.await.expect("server");
        assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
        assert!(
            head.contains("content-type: application/x-protobuf"),
            "{head}"
        );
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert!(head.contains("authorization: bearer t0k"), "{head}");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body.as_slice()), &mut raw)
            .expect("gunzip");
        let req =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                raw.as_slice(),
            )
            .expect("protobuf");
        assert_eq!(req, to_export_request(&[span(1, 1, None, "kubelet", "c")]));
    }

    #[tokio::test]
    async fn http_503_with_retry_after_is_retryable_and_exposes_the_delay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(one_http_exchange(
            listener,
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-type: text/plain\r\ncontent-length: 9\r\nconnection: close\r\n\r\noverload\n"
            .into(),
        ));
        // The endpoint already names /v1/traces: used as-is.
        let mut sink = OtlpSink::new(config(
            format!("http://127.0.0.1:{port}/v1/traces"),
            OtlpProtocol::Http,
        ))
        .expect("sink");
        let err = sink
            .export(&[span(1, 1, None, "kubelet", "c")])
            .await
            .expect_err("503");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(
            err.message().contains("503") && err.message().contains("overload"),
            "{err}"
        );
        let (head, _) = server.await.expect("server");
        assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
    }

    #[tokio::test]
    async fn http_partial_success_is_not_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: "span too old".into(),
            }),
        }
        .encode_to_vec();
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        let server = tokio::spawn(one_http_exchange(listener, response));
        let mut sink = OtlpSink::new(config(
            format!("http://127.0.0.1:{port}"),
            OtlpProtocol::Http,
        ))
        .expect("sink");
        let batch = [
            span(1, 1, None, "kubelet", "c"),
            span(1, 2, Some(1), "kubelet", "c"),
        ];
        // The warning is the only trace of the rejected span: capture the log.
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        sink.export(&batch).await.expect("accepted, with a warning");
        drop(guard);
        server.await.expect("server");
        let text = logs.text();
        assert!(
            text.contains("WARN")
                && text.contains("the OTLP receiver rejected spans")
                && text.contains("error=span too old"),
            "{text}"
        );
        assert!(text.contains("rejected_spans=1"), "{text}");
    }

    /// Log output collected in memory (a `MakeWriter` for the fmt subscriber).
    #[derive(Clone, Default)]
    struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl LogBuffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
        }
    }

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
        type Writer = LogBuffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[tokio::test]
    async fn http_400_is_permanent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(one_http_exchange(
            listener,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
        ));
        let mut sink = OtlpSink::new(config(
            format!("http://127.0.0.1:{port}"),
            OtlpProtocol::Http,
        ))
        .expect("sink");
        let err = sink
            .export(&[span(1, 1, None, "kubelet", "c")])
            .await
            .expect_err("400");
        assert!(!err.is_retryable(), "{err}");
        server.await.expect("server");
    }
}
