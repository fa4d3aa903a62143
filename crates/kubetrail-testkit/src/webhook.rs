//! A client that plays kube-apiserver's batch audit webhook backend.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

/// Default events per `EventList` (kube-apiserver's `--audit-webhook-batch-max-size`).
pub const DEFAULT_BATCH_SIZE: usize = 400;
/// Default number of retries of one batch after its first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 8;
/// Default delay before the first retry; it doubles on each retry.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(10);
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Plays kube-apiserver's batch audit webhook backend: splits events into `EventList` bodies
/// of `batch_size` items, POSTs each in order, and retries a batch on a non-2xx answer or a
/// connection error with exponential backoff (this backoff is the retry mechanism under test,
/// not test synchronisation) up to `max_retries` times. Optionally sends a bearer token,
/// gzip-compresses bodies, and talks TLS with a custom CA and a client certificate.
#[derive(Debug, Clone)]
pub struct ApiServerClient {
    url: String,
    client: reqwest::Client,
    token: Option<String>,
    batch_size: usize,
    max_retries: u32,
    initial_backoff: Duration,
    gzip: bool,
}

/// What happened to the batches of one [`ApiServerClient::send_events`] call.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    /// One outcome per batch, in sending order.
    pub batches: Vec<BatchOutcome>,
    /// Sum of `accepted` over the 200 answers.
    pub accepted: usize,
}

impl SendReport {
    /// Whether every batch got a 2xx answer in the end.
    pub fn all_delivered(&self) -> bool {
        self.batches.iter().all(|b| b.delivered)
    }

    /// Every status code seen, in order (0 stands for a connection error).
    pub fn statuses(&self) -> Vec<u16> {
        self.batches
            .iter()
            .flat_map(|b| b.statuses.iter().copied())
            .collect()
    }

    /// Rejected items of every batch, with their index in the whole `events` slice.
    pub fn rejected(&self) -> Vec<(usize, String)> {
        self.batches
            .iter()
            .flat_map(|b| {
                b.rejected
                    .iter()
                    .map(move |(i, r)| (b.first_event + i, r.clone()))
            })
            .collect()
    }
}

/// The fate of one batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Index (in the `events` slice) of the batch's first event.
    pub first_event: usize,
    /// Events in the batch.
    pub events: usize,
    /// Status of each attempt, in order; 0 for a connection error.
    pub statuses: Vec<u16>,
    /// Attempts made (first try plus retries).
    pub attempts: u32,
    /// Whether an attempt got a 2xx answer.
    pub delivered: bool,
    /// `accepted` of the 2xx answer's JSON body (0 if it had none).
    pub accepted: usize,
    /// `rejected` items of the 2xx answer (index within the batch, reason).
    pub rejected: Vec<(usize, String)>,
    /// The last failure (status and body, or the connection error), if any.
    pub last_error: Option<String>,
}

/// The answer to one [`ApiServerClient::post_raw`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// Headers with lowercase names; repeated headers joined with `", "`.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// The HTTP version used, e.g. `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
}

impl RawResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the answer (status {}) is not JSON: {}",
                self.status,
                self.text()
            )
        })
    }

    /// A header by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Wraps items into an `audit.k8s.io/v1` `EventList` body.
pub fn event_list(items: &[Value]) -> Value {
    serde_json::json!({
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": items,
    })
}

fn base_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .user_agent("kube-apiserver-admission (kubetrail-testkit ApiServerClient)")
        .timeout(Duration::from_secs(60))
}

impl ApiServerClient {
    /// A client POSTing to `url` (e.g. `http://127.0.0.1:8443/audit/prod`), plain HTTP or
    /// HTTPS with the platform's default roots.
    pub fn new(url: &str) -> Self {
        // Building a client without custom TLS material does not fail in practice; fall back
        // to the default client if it ever did.
        let client = base_client().build().unwrap_or_default();
        ApiServerClient {
            url: url.trim_end_matches('/').to_owned(),
            client,
            token: None,
            batch_size: DEFAULT_BATCH_SIZE,
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            gzip: false,
        }
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Trusts only `ca_pem` (PEM certificates) for the server, and presents
    /// `client_identity_pem` (a PEM client certificate chain plus its private key) if given.
    pub fn with_tls(
        mut self,
        ca_pem: &[u8],
        client_identity_pem: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        let mut builder = base_client()
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        for cert in
            reqwest::Certificate::from_pem_bundle(ca_pem).context("parsing the CA certificates")?
        {
            builder = builder.add_root_certificate(cert);
        }
        if let Some(identity) = client_identity_pem {
            builder = builder.identity(
                reqwest::Identity::from_pem(identity)
                    .context("parsing the client certificate and key")?,
            );
        }
        self.client = builder.build().context("building the TLS client")?;
        Ok(self)
    }

    /// Events per `EventList` (at least 1).
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Retries of one batch after its first attempt, and the delay before the first retry
    /// (doubling on each retry, capped at 2 s).
    pub fn with_retries(mut self, n: u32, initial_backoff: Duration) -> Self {
        self.max_retries = n;
        self.initial_backoff = initial_backoff;
        self
    }

    /// gzip-compresses bodies (`Content-Encoding: gzip`).
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Sends all events, batch after batch (a batch that is never delivered is given up,
    /// as the API server does, and the next one is sent). Errors only when a body cannot be
    /// built; delivery failures are in the report.
    pub async fn send_events(&self, events: &[Value]) -> anyhow::Result<SendReport> {
        let mut report = SendReport::default();
        for (n, chunk) in events.chunks(self.batch_size).enumerate() {
            let body = serde_json::to_vec(&event_list(chunk)).context("encoding an EventList")?;
            let body = self.encode(body)?;
            let mut outcome = BatchOutcome {
                first_event: n * self.batch_size,
                events: chunk.len(),
                ..BatchOutcome::default()
            };
            let mut backoff = self.initial_backoff;
            loop {
                outcome.attempts += 1;
                match self.post(&self.url, body.clone(), &[]).await {
                    Ok(resp) if (200..300).contains(&resp.status) => {
                        outcome.statuses.push(resp.status);
                        outcome.delivered = true;
                        if let Ok(v) = resp.json() {
                            outcome.accepted = v["accepted"].as_u64().unwrap_or(0) as usize;
                            outcome.rejected = v["rejected"]
                                .as_array()
                                .map(|items| {
                                    items
                                        .iter()
                                        .map(|r| {
                                            (
                                                r["index"].as_u64().unwrap_or(0) as usize,
                                                r["reason"].as_str().unwrap_or("").to_owned(),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                        }
                        break;
                    }
                    Ok(resp) => {
                        outcome.statuses.push(resp.status);
                        outcome.last_error = Some(format!("{}: {}", resp.status, resp.text()));
                    }
                    Err(e) => {
                        outcome.statuses.push(0);
                        outcome.last_error = Some(format!("{e:#}"));
                    }
                }
                if outcome.attempts > self.max_retries {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            report.accepted += outcome.accepted;
            report.batches.push(outcome);
        }
        Ok(report)
    }

    /// One POST of `body` as is (no retry, no compression: set `Content-Encoding` yourself)
    /// to the client's URL followed by `path_suffix` (e.g. `""` or `"/other-cluster"`), with
    /// extra headers. The bearer token, if any, is sent unless `headers` has `Authorization`.
    pub async fn post_raw(
        &self,
        path_suffix: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<RawResponse> {
        let url = format!("{}{}", self.url, path_suffix);
        self.post(&url, body, headers).await
    }

    fn encode(&self, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        if !self.gzip {
            return Ok(body);
        }
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body).context("compressing a body")?;
        enc.finish().context("compressing a body")
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<RawResponse> {
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, */*");
        if self.gzip {
            req = req.header("content-encoding", "gzip");
        }
        let has_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let Some(token) = &self.token
            && !has_auth
        {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status().as_u16();
        let version = format!("{:?}", resp.version());
        let mut map = std::collections::BTreeMap::<String, String>::new();
        for (k, v) in resp.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            map.entry(k.as_str().to_owned())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(&v);
                })
                .or_insert(v);
        }
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer to POST {url}"))?
            .to_vec();
        Ok(RawResponse {
            status,
            headers: map,
            body,
            version,
        })
    }
}
