//! The real Jaeger v2 for tests: the all-in-one binary (an OpenTelemetry-collector
//! distribution) built from the Go module proxy by `scripts/install-jaeger.sh`, run as a child
//! process with in-memory storage, its OTLP gRPC and HTTP receivers and its query HTTP API on
//! free ports of 127.0.0.1.
//!
//! [`JaegerQuery`] reads traces back exactly as Jaeger UI does, through the HTTP JSON API
//! (`/api/services`, `/api/operations`, `/api/traces?…`, `/api/traces/{id}`), and decodes the
//! UI's model: spans with `references` (`CHILD_OF`, `FOLLOWS_FROM`), `tags`, `logs`, a
//! process (service) per span, and the `warnings` Jaeger attaches when it finds something
//! wrong with a trace (duplicate span ids, an invalid parent, clock-skew adjustments).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The environment variable naming a Jaeger v2 binary to use instead of the pinned build.
pub const JAEGER_ENV: &str = "KUBETRAIL_JAEGER";

/// How long Jaeger may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The collector's log line once every component runs.
const READY: &str = "Everything is ready";

/// A Jaeger v2 all-in-one process with in-memory storage.
///
/// Killed when dropped. Spans sent to [`otlp_grpc_endpoint`](Self::otlp_grpc_endpoint) or
/// [`otlp_http_endpoint`](Self::otlp_http_endpoint) are stored in memory and read back with
/// [`query`](Self::query).
#[derive(Debug)]
pub struct Jaeger {
    dir: tempfile::TempDir,
    otlp_grpc: u16,
    otlp_http: u16,
    query: u16,
    child: Option<Child>,
}

impl Jaeger {
    /// Builds Jaeger if needed (`scripts/install-jaeger.sh`, minutes on first use, then
    /// cached in `.tools/`), writes its configuration and starts it on free ports; returns
    /// once its receivers and query API accept connections.
    pub fn start() -> anyhow::Result<Jaeger> {
        let binary = jaeger_binary()?;
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("kubetrail-jaeger-")
                .tempdir()
                .context("creating Jaeger's directory")?;
            let mut jaeger = Jaeger {
                dir,
                otlp_grpc: free_port()?,
                otlp_http: free_port()?,
                query: free_port()?,
                child: None,
            };
            match jaeger.spawn(&binary) {
                Ok(()) => return Ok(jaeger),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("jaeger did not start")))
    }

    /// The OTLP/gRPC endpoint (`http://127.0.0.1:PORT`).
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_grpc)
    }

    /// The OTLP/HTTP endpoint base (`http://127.0.0.1:PORT`; traces go to `/v1/traces`).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_http)
    }

    /// The base URL of Jaeger UI and its query API (`http://127.0.0.1:PORT`), what
    /// `kubetrail --jaeger-url` takes.
    pub fn ui_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.query)
    }

    /// A client of the query API.
    pub fn query(&self) -> JaegerQuery {
        JaegerQuery::new(&self.ui_url())
    }

    /// Jaeger's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("jaeger.log")).unwrap_or_default()
    }

    /// The resident memory of the Jaeger process in bytes, if it runs.
    pub fn rss_bytes(&self) -> Option<u64> {
        crate::proc::rss_bytes(self.child.as_ref()?.id())
    }

    fn config(&self) -> String {
        let (grpc, http, query) = (self.otlp_grpc, self.otlp_http, self.query);
        // Only what the tests use: OTLP in, memory storage, the query API (HTTP; its gRPC API
        // on an ephemeral port so it never collides). No batch processor: spans are stored as
        // they arrive. Jaeger's own metrics are off (they would take port 8888).
        format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 200000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:0
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        )
    }

    fn spawn(&mut self, binary: &PathBuf) -> anyhow::Result<()> {
        let config = self.dir.path().join("config.yaml");
        std::fs::write(&config, self.config()).context("writing Jaeger's config")?;
        let log_path = self.dir.path().join("jaeger.log");
        let log = std::fs::File::create(&log_path).context("creating Jaeger's log")?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        let ports = [self.otlp_grpc, self.otlp_http, self.query];
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("jaeger exited at start ({status}): {}", self.log().trim());
            }
            let listening = ports.iter().all(|&p| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if listening && self.log().contains(READY) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.log();
                self.kill();
                bail!("jaeger did not start within {START_TIMEOUT:?}: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of Jaeger's HTTP query API, the one Jaeger UI uses.
#[derive(Debug, Clone)]
pub struct JaegerQuery {
    base: String,
    http: reqwest::Client,
}

/// A trace search, as Jaeger UI's search form sends it (`GET /api/traces?…`).
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// `service` (required by Jaeger).
    pub service: String,
    /// `operation`, if any.
    pub operation: Option<String>,
    /// `tags`: every pair must match a span of the trace.
    pub tags: BTreeMap<String, String>,
    /// `start` (inclusive). Jaeger's default is one hour before `end`: tests of replayed,
    /// historical events must set it.
    pub start: Option<SystemTime>,
    /// `end`. Default: now.
    pub end: Option<SystemTime>,
    /// `limit` (default 100).
    pub limit: Option<usize>,
}

impl TraceQuery {
    /// A search of one service over all time up to now.
    pub fn service(service: &str) -> TraceQuery {
        TraceQuery {
            service: service.to_owned(),
            start: Some(UNIX_EPOCH + Duration::from_secs(1)),
            ..TraceQuery::default()
        }
    }

    /// Adds an operation.
    pub fn operation(mut self, operation: &str) -> TraceQuery {
        self.operation = Some(operation.to_owned());
        self
    }

    /// Adds a tag to match.
    pub fn tag(mut self, key: &str, value: &str) -> TraceQuery {
        self.tags.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The query string (without `?`).
    pub fn to_query_string(&self) -> anyhow::Result<String> {
        let micros = |t: SystemTime| -> anyhow::Result<u128> {
            Ok(t.duration_since(UNIX_EPOCH)
                .context("a search time before 1970")?
                .as_micros())
        };
        let mut pairs: Vec<(&str, String)> = vec![("service", self.service.clone())];
        if let Some(op) = &self.operation {
            pairs.push(("operation", op.clone()));
        }
        if !self.tags.is_empty() {
            pairs.push(("tags", serde_json::to_string(&self.tags)?));
        }
        if let Some(start) = self.start {
            pairs.push(("start", micros(start)?.to_string()));
        }
        let end = self.end.unwrap_or_else(SystemTime::now);
        pairs.push(("end", micros(end)?.to_string()));
        pairs.push(("limit", self.limit.unwrap_or(100).to_string()));
        let mut out = String::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(&percent_encode(v));
        }
        Ok(out)
    }
}

/// A trace as Jaeger's API returns it (Jaeger UI's model).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JaegerTrace {
    /// The trace id (hex, as Jaeger prints it).
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The spans.
    pub spans: Vec<JaegerSpan>,
    /// Processes by id: a span's `processID` names its service.
    pub processes: BTreeMap<String, JaegerProcess>,
    /// Warnings Jaeger attached to the trace.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub warnings: Vec<String>,
}

impl JaegerTrace {
    /// The service (process) of a span.
    pub fn service_of(&self, span: &JaegerSpan) -> &str {
        self.processes
            .get(&span.process_id)
            .map_or("", |p| p.service_name.as_str())
    }

    /// Spans without a `CHILD_OF` reference.
    pub fn roots(&self) -> Vec<&JaegerSpan> {
        self.spans.iter().filter(|s| s.parent().is_none()).collect()
    }

    /// The span with this id.
    pub fn span(&self, span_id: &str) -> Option<&JaegerSpan> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// The trace's spans in the form OTLP receivers give ([`ReceivedSpan`](crate::ReceivedSpan)),
    /// so that what Jaeger stored can be checked with the same assertions as what was sent:
    /// the process's service and tags become `service_name` and the resource attributes,
    /// `CHILD_OF` the parent, `FOLLOWS_FROM` the links, logs the events (named by their
    /// `event` field), `span.kind` / `otel.status_code` / `otel.status_description` the kind
    /// and status; Jaeger's own bookkeeping tags (`otel.scope.*`, `error`) are left out of
    /// the attributes. Times are Jaeger's microseconds, in nanoseconds.
    pub fn received_spans(&self) -> Vec<crate::ReceivedSpan> {
        const BOOKKEEPING: [&str; 6] = [
            "span.kind",
            "otel.status_code",
            "otel.status_description",
            "otel.scope.name",
            "otel.scope.version",
            "error",
        ];
        self.spans
            .iter()
            .map(|s| {
                let process = self.processes.get(&s.process_id);
                let kind = match s.tag("span.kind").as_deref() {
                    Some("internal") => 1,
                    Some("server") => 2,
                    Some("client") => 3,
                    Some("producer") => 4,
                    Some("consumer") => 5,
                    _ => 0,
                };
                let status_code = match s.tag("otel.status_code").as_deref() {
                    Some("OK") => 1,
                    Some("ERROR") => 2,
                    _ => 0,
                };
                crate::ReceivedSpan {
                    service_name: process.map(|p| p.service_name.clone()).unwrap_or_default(),
                    resource_attributes: process
                        .map(|p| p.tags.iter().map(|t| (t.key.clone(), t.text())).collect())
                        .unwrap_or_default(),
                    scope_name: s.tag("otel.scope.name").unwrap_or_default(),
                    trace_id: s.trace_id.clone(),
                    span_id: s.span_id.clone(),
                    parent_span_id: s.parent().map(|r| r.span_id.clone()),
                    name: s.operation_name.clone(),
                    kind,
                    start_unix_nano: s.start_time * 1_000,
                    end_unix_nano: (s.start_time + s.duration) * 1_000,
                    attributes: s
                        .tags
                        .iter()
                        .filter(|t| !BOOKKEEPING.contains(&t.key.as_str()))
                        .map(|t| (t.key.clone(), t.text()))
                        .collect(),
                    events: s
                        .logs
                        .iter()
                        .map(|l| {
                            let mut name = String::new();
                            let mut fields = BTreeMap::new();
                            for f in &l.fields {
                                if f.key == "event" {
                                    name = f.text();
                                } else {
                                    fields.insert(f.key.clone(), f.text());
                                }
                            }
                            (name, fields)
                        })
                        .collect(),
                    links: s
                        .links()
                        .iter()
                        .map(|r| (r.trace_id.clone(), r.span_id.clone()))
                        .collect(),
                    status_code,
                    status_message: s.tag("otel.status_description").unwrap_or_default(),
                    via: crate::Protocol::JaegerQuery,
                }
            })
            .collect()
    }

    /// Every warning of the trace and its spans, with the span it is on.
    pub fn all_warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .warnings
            .iter()
            .map(|w| format!("trace: {w}"))
            .collect();
        for s in &self.spans {
            for w in &s.warnings {
                out.push(format!("span {} {}: {w}", s.span_id, s.operation_name));
            }
        }
        out
    }
}

/// A process of a trace (Jaeger's service).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JaegerProcess {
    /// `service.name`.
    pub service_name: String,
    /// The resource's other attributes.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<JaegerTag>,
}

/// A span as Jaeger's API returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JaegerSpan {
    /// The trace id.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The span id.
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// The span name.
    pub operation_name: String,
    /// Parent (`CHILD_OF`) and link (`FOLLOWS_FROM`) references.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub references: Vec<JaegerReference>,
    /// Start, in microseconds since the epoch.
    pub start_time: u64,
    /// Duration in microseconds.
    pub duration: u64,
    /// Attributes (and `otel.status_code`, `span.kind`, `error` …).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<JaegerTag>,
    /// Span events.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub logs: Vec<JaegerLog>,
    /// The key of this span's process in [`JaegerTrace::processes`].
    #[serde(rename = "processID")]
    pub process_id: String,
    /// Warnings Jaeger attached to the span.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub warnings: Vec<String>,
}

impl JaegerSpan {
    /// The value of a tag, as text.
    pub fn tag(&self, key: &str) -> Option<String> {
        self.tags.iter().find(|t| t.key == key).map(JaegerTag::text)
    }

    /// The `CHILD_OF` reference, if any.
    pub fn parent(&self) -> Option<&JaegerReference> {
        self.references.iter().find(|r| r.ref_type == "CHILD_OF")
    }

    /// The `FOLLOWS_FROM` references (OTLP span links).
    pub fn links(&self) -> Vec<&JaegerReference> {
        self.references
            .iter()
            .filter(|r| r.ref_type == "FOLLOWS_FROM")
            .collect()
    }
}

/// A reference from a span to another span.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JaegerReference {
    /// `CHILD_OF` or `FOLLOWS_FROM`.
    pub ref_type: String,
    /// The referenced span's trace.
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The referenced span.
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A tag: key, type and value.
#[derive(Debug, Clone, Deserialize)]
pub struct JaegerTag {
    /// The key.
    pub key: String,
    /// `string`, `bool`, `int64`, `float64`, `binary`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value.
    pub value: serde_json::Value,
}

impl JaegerTag {
    /// The value as text (strings unquoted).
    pub fn text(&self) -> String {
        match &self.value {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }
}

/// A span event (Jaeger log).
#[derive(Debug, Clone, Deserialize)]
pub struct JaegerLog {
    /// Microseconds since the epoch.
    pub timestamp: u64,
    /// The event's attributes; the event name is the `event` field.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub fields: Vec<JaegerTag>,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: Option<T>,
    #[serde(default, deserialize_with = "null_as_empty")]
    errors: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Operation {
    name: String,
}

impl JaegerQuery {
    /// A client of the Jaeger at `base` (`http://host:16686`).
    pub fn new(base: &str) -> JaegerQuery {
        JaegerQuery {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `GET base + path_and_query` as JSON.
    pub async fn get_json(&self, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path_and_query}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().await.with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))
    }

    async fn get_data<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> anyhow::Result<Option<T>> {
        let value = self.get_json(path_and_query).await?;
        let env: Envelope<T> = serde_json::from_value(value)
            .with_context(|| format!("decoding the answer to {path_and_query}"))?;
        if !env.errors.is_empty() {
            bail!("{path_and_query}: Jaeger answered errors {:?}", env.errors);
        }
        Ok(env.data)
    }

    /// `GET /api/services`: every service with spans.
    pub async fn services(&self) -> anyhow::Result<Vec<String>> {
        let mut s: Vec<String> = self.get_data("/api/services").await?.unwrap_or_default();
        s.sort();
        Ok(s)
    }

    /// `GET /api/operations?service=`: the span names of a service.
    pub async fn operations(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let ops: Vec<Operation> = self
            .get_data(&format!(
                "/api/operations?service={}",
                percent_encode(service)
            ))
            .await?
            .unwrap_or_default();
        let mut names: Vec<String> = ops.into_iter().map(|o| o.name).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// `GET /api/traces?…`: a search.
    pub async fn find_traces(&self, query: &TraceQuery) -> anyhow::Result<Vec<JaegerTrace>> {
        let path = format!("/api/traces?{}", query.to_query_string()?);
        Ok(self.get_data(&path).await?.unwrap_or_default())
    }

    /// `GET /api/traces/{id}`: one trace, `None` when Jaeger does not have it.
    pub async fn trace(&self, trace_id: &str) -> anyhow::Result<Option<JaegerTrace>> {
        let url = format!("{}/api/traces/{trace_id}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        let env: Envelope<Vec<JaegerTrace>> =
            serde_json::from_str(&body).with_context(|| format!("GET {url}: {body}"))?;
        Ok(env.data.and_then(|mut v| v.pop()))
    }

    /// Polls `GET /api/traces/{id}` until the trace holds at least `spans` spans (stored spans
    /// appear shortly after the OTLP export returns), up to `deadline`.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        spans: usize,
        deadline: Duration,
    ) -> anyhow::Result<JaegerTrace> {
        let until = Instant::now() + deadline;
        loop {
            let trace = self.trace(trace_id).await?;
            let have = trace.as_ref().map_or(0, |t| t.spans.len());
            if have >= spans
                && let Some(t) = trace
            {
                return Ok(t);
            }
            if Instant::now() >= until {
                bail!("trace {trace_id} has {have} of {spans} spans after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// `$KUBETRAIL_JAEGER`, else the pinned build (`scripts/install-jaeger.sh`, run on first use).
fn jaeger_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(JAEGER_ENV) {
        let p = PathBuf::from(p);
        if crate::tools::is_executable(&p) {
            return Ok(p);
        }
        bail!("{JAEGER_ENV}={} is not an executable file", p.display());
    }
    let bin = crate::tools::install("install-jaeger.sh")?;
    if !crate::tools::is_executable(&bin) {
        bail!(
            "scripts/install-jaeger.sh printed {}, not an executable",
            bin.display()
        );
    }
    Ok(bin)
}
