//! `follow --forward-url`: followed events POSTed to a central `serve` (or `receive`) as the
//! API server's webhook backend would send them — an `EventList` per batch to
//! `/audit[/{cluster}]?source=NAME`, with a bearer token — so one pipeline sees every API
//! server of an HA control plane and merges them by time (per-node pipelines would each
//! see a part of every family).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use kubetrail_queue::{AuditBatch, AuditProducer, PublishError, QueueHealth};

/// Posts batches to a kubetrail webhook.
pub(crate) struct WebhookForwarder {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    /// The `source` query parameter per followed path.
    sources: BTreeMap<String, String>,
}

impl WebhookForwarder {
    /// A forwarder to `url` (e.g. `https://kubetrail.kubetrail.svc:8443/audit/prod`), trusting
    /// `ca` (PEM) besides the system roots, authenticating with the first line of
    /// `token_file`; `source` names this node (several paths: `source-0`, `source-1` …).
    pub(crate) fn new(
        url: &str,
        token_file: Option<&std::path::Path>,
        ca: Option<&std::path::Path>,
        source: &str,
        paths: &[String],
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate bundle", ca.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .with_context(|| format!("{}: no token", p.display()))?
                    .to_owned(),
            ),
            None => None,
        };
        let clean: String = source
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':') {
                    c
                } else {
                    '-'
                }
            })
            .take(240)
            .collect();
        let sources = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let s = if paths.len() == 1 {
                    clean.clone()
                } else {
                    format!("{clean}-{i}")
                };
                (p.clone(), s)
            })
            .collect();
        Ok(WebhookForwarder {
            client: builder.build().context("cannot build the HTTP client")?,
            url: url.to_owned(),
            token,
            sources,
        })
    }
}

fn retry_after(r: &reqwest::Response) -> Duration {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

#[async_trait::async_trait]
impl AuditProducer for WebhookForwarder {
    async fn publish(&self, batch: AuditBatch) -> Result<(), PublishError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "kind": "EventList",
            "apiVersion": "audit.k8s.io/v1",
            "items": batch.events,
        }))
        .map_err(|e| PublishError::Unavailable {
            reason: format!("cannot encode the batch: {e}"),
            retry_after: Duration::from_secs(5),
        })?;
        let source = batch
            .source
            .as_ref()
            .and_then(|p| self.sources.get(p))
            .cloned()
            .unwrap_or_else(|| "follow".to_owned());
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let mut req = self
            .client
            .post(format!("{}{sep}source={source}", self.url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| PublishError::Unavailable {
            reason: format!("POST {}: {e}", self.url),
            retry_after: Duration::from_secs(1),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = retry_after(&resp);
        let text = resp.text().await.unwrap_or_default();
        let reason = format!(
            "POST {}: {status}: {}",
            self.url,
            text.chars().take(300).collect::<String>()
        );
        Err(match status.as_u16() {
            429 | 503 => PublishError::Full {
                queued: 0,
                capacity: 0,
                retry_after: wait,
            },
            _ => PublishError::Unavailable {
                reason,
                retry_after: wait,
            },
        })
    }

    fn health(&self) -> QueueHealth {
        QueueHealth {
            ready: true,
            ..Default::default()
        }
    }
}
