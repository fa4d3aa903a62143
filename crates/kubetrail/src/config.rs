//! The config file, and how flags and environment variables override it.
//!
//! Precedence, highest first: command-line flag, environment variable (`KUBETRAIL_*`, shown
//! in `--help`), config file (`--config`), built-in default. Every flag that has a config
//! file key reads the same value, so the three agree.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use kubetrail_aggregate::AggregatorConfig;
use kubetrail_export::{ExporterConfig, OtlpConfig, OtlpProtocol, RetryPolicy};
use kubetrail_filter::FilterConfig;
use kubetrail_link::LinkerConfig;
use kubetrail_pipeline::{PipelineConfig, RequestConfig};

/// The default cluster name when neither the flag, the environment nor the config names one.
pub const DEFAULT_CLUSTER: &str = "default";

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Cluster name given to events that do not say (`POST /audit`, replays).
    pub cluster: Option<String>,
    /// Which events become spans.
    pub filter: FilterConfig,
    /// Owner resolution.
    pub link: LinkerConfig,
    /// Windows, linger, limits.
    pub aggregate: AggregatorConfig,
    /// Merging of request stages.
    pub requests: RequestConfig,
    /// Diffs, snapshots, redaction.
    pub decorate: kubetrail_decorate::DecorateConfig,
    /// Where spans go.
    pub export: ExportSection,
    /// The audit webhook (`serve`, `receive`).
    pub server: ServerSection,
    /// The embedded queue (`serve`, and `replay` in front of its pipeline).
    pub queue: QueueSection,
    /// Reading audit files (`replay`, `timeline`).
    pub source: SourceSection,
    /// Kafka (`receive`, `consume`).
    pub kafka: kubetrail_kafka::KafkaConfig,
    /// How long shutdown may take to drain and flush.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// Event-time order across API servers: lateness, silent sources, far-ahead events.
    pub time: kubetrail_pipeline::watermark::OrderConfig,
    /// Audit log files followed as they are written (`follow`; also inside `serve`, `receive`).
    pub follow: crate::follow::FollowSection,
}

/// `server:` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Listen address (default 127.0.0.1:8443).
    pub listen: Option<std::net::SocketAddr>,
    /// TLS.
    pub tls: Option<TlsSection>,
    /// Bearer tokens file.
    pub token_file: Option<std::path::PathBuf>,
    /// Allow a non-loopback address without auth.
    pub insecure: bool,
    /// Largest accepted body (also after gzip decompression), bytes.
    pub max_body_bytes: Option<usize>,
    /// Most items per EventList.
    pub max_batch_items: Option<usize>,
    /// Most connections open at once (more are closed at once).
    pub max_connections: Option<usize>,
    /// Most request-body bytes held at once over all requests (503 beyond; at least
    /// 3 × max_body_bytes).
    pub max_inflight_bytes: Option<usize>,
    /// Slow-client protection: time to send the request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    /// Slow-client protection: time to send the body.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Option<Duration>,
    /// Jaeger UI base URL for `GET /redirect`.
    pub jaeger_url: Option<String>,
    /// Answer 503 once the exporter has been failing this long (accepting more would only
    /// fill the queue).
    #[serde(with = "humantime_serde")]
    pub export_failure_threshold: Option<Duration>,
}

/// `server.tls:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chain (PEM).
    pub cert: Option<std::path::PathBuf>,
    /// Private key (PEM).
    pub key: Option<std::path::PathBuf>,
    /// CA for client certificates (PEM).
    pub client_ca: Option<std::path::PathBuf>,
}

/// `queue:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    /// Capacity of the embedded queue, in events (queued or being processed).
    pub events: usize,
    /// Capacity of the embedded queue in bytes (an estimate of the memory its events hold:
    /// bodies, strings, a fixed cost per event). A few huge events fill it long before
    /// `events` is reached.
    pub bytes: usize,
    /// `serve`: the durable log's directory (ARCHITECTURE.md "The durable log"). Every
    /// accepted batch is on disk there before the API server gets 200, and is processed
    /// again after a crash. Absent: in memory only — what was accepted but not yet exported
    /// is lost on a crash (`kill -9`, OOM kill, node failure).
    pub dir: Option<std::path::PathBuf>,
    /// The durable log's fsync policy, disk budget, segment size and retention.
    pub durable: kubetrail_log::LogConfig,
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            events: 100_000,
            bytes: 512 << 20,
            dir: None,
            durable: kubetrail_log::LogConfig::default(),
        }
    }
}

/// `source:` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSection {
    /// Longest record (a line, or a pretty-printed document) read from an audit file; longer
    /// ones are skipped without being held in memory and counted as malformed.
    pub max_record_bytes: usize,
}

impl Default for SourceSection {
    fn default() -> Self {
        SourceSection {
            max_record_bytes: kubetrail_source::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// `export:` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSection {
    /// OTLP destination.
    pub otlp: Option<OtlpSection>,
    /// Batching and queueing.
    pub batch: BatchSection,
    /// Retries.
    pub retry: RetrySection,
}

/// `export.otlp:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpSection {
    /// `http://host:4317` (gRPC) or `http://host:4318` (HTTP).
    pub endpoint: Option<String>,
    /// `grpc` or `http` (`http/protobuf`).
    pub protocol: Option<String>,
    /// Extra headers (e.g. an auth token for a hosted backend).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Per-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Gzip request bodies.
    pub gzip: bool,
}

impl Default for OtlpSection {
    fn default() -> Self {
        OtlpSection {
            endpoint: None,
            protocol: None,
            headers: Default::default(),
            timeout: Duration::from_secs(10),
            gzip: false,
        }
    }
}

/// `export.batch:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSection {
    /// Spans per export request.
    pub max_spans: usize,
    /// Longest wait for a batch to fill.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Submissions queued before the pipeline waits (backpressure).
    pub queue: usize,
}

impl Default for BatchSection {
    fn default() -> Self {
        let d = ExporterConfig::default();
        BatchSection {
            max_spans: d.max_batch_spans,
            max_delay: d.max_batch_delay,
            queue: d.queue_batches,
        }
    }
}

/// `export.retry:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySection {
    /// First backoff.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest backoff.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Give up on a batch after this long (counted as dropped); absent: never give up.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Option<Duration>,
}

impl Default for RetrySection {
    fn default() -> Self {
        let d = RetryPolicy::default();
        RetrySection {
            initial_backoff: d.initial_backoff,
            max_backoff: d.max_backoff,
            max_elapsed: d.max_elapsed,
        }
    }
}

impl Config {
    /// Reads a config file; a missing path means the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: Config = serde_yaml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        for rule in &config.link.rules {
            rule.validate().map_err(|e| {
                anyhow::anyhow!("invalid config file {}: link.rules: {e}", path.display())
            })?;
        }
        config.decorate.validate().map_err(|e| {
            anyhow::anyhow!("invalid config file {}: decorate: {e}", path.display())
        })?;
        Ok(config)
    }

    /// The pipeline's part of the configuration.
    pub fn pipeline(&self) -> PipelineConfig {
        PipelineConfig {
            filter: self.filter.clone(),
            link: self.link.clone(),
            aggregate: self.aggregate.clone(),
            requests: self.requests.clone(),
            decorate: self.decorate.clone(),
        }
    }

    /// The exporter's batching and retry settings.
    pub fn exporter(&self) -> ExporterConfig {
        ExporterConfig {
            max_batch_spans: self.export.batch.max_spans.max(1),
            max_batch_delay: self.export.batch.max_delay,
            queue_batches: self.export.batch.queue.max(1),
            retry: RetryPolicy {
                initial_backoff: self.export.retry.initial_backoff,
                max_backoff: self.export.retry.max_backoff,
                max_elapsed: self.export.retry.max_elapsed,
            },
        }
    }

    /// The OTLP destination after applying flag/env overrides, if any is configured.
    pub fn otlp(
        &self,
        endpoint: Option<&str>,
        protocol: Option<OtlpProtocol>,
    ) -> anyhow::Result<Option<OtlpConfig>> {
        let section = self.export.otlp.clone().unwrap_or_default();
        let Some(endpoint) = endpoint.map(str::to_owned).or(section.endpoint.clone()) else {
            return Ok(None);
        };
        let protocol = match (protocol, &section.protocol) {
            (Some(p), _) => p,
            (None, Some(p)) => p
                .parse()
                .context("export.otlp.protocol in the config file")?,
            (None, None) => OtlpProtocol::Grpc,
        };
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            timeout: section.timeout,
            headers: section.headers.into_iter().collect(),
            gzip: section.gzip,
        }))
    }
}

/// How an OTLP/JSON output file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonFileMode {
    /// Truncate (a replay writes the whole result).
    Create,
    /// Append (a long-running process may be restarted).
    Append,
}

/// The OTLP and OTLP/JSON sinks a command's flags and config ask for (possibly none).
pub fn export_sinks(
    cfg: &Config,
    endpoint: Option<&str>,
    protocol: Option<OtlpProtocol>,
    otlp_json: Option<&Path>,
    mode: JsonFileMode,
) -> anyhow::Result<Vec<Box<dyn kubetrail_export::SpanSink>>> {
    let mut sinks: Vec<Box<dyn kubetrail_export::SpanSink>> = Vec::new();
    if let Some(otlp) = cfg.otlp(endpoint, protocol)? {
        let sink =
            kubetrail_export::OtlpSink::new(otlp).context("cannot set up the OTLP exporter")?;
        sinks.push(Box::new(sink));
    }
    if let Some(path) = otlp_json {
        // `--otlp-json out/spans.jsonl` on a fresh checkout: create the directory.
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let sink = match mode {
            JsonFileMode::Create => kubetrail_export::OtlpJsonFileSink::create(path),
            JsonFileMode::Append => kubetrail_export::OtlpJsonFileSink::append(path),
        }
        .with_context(|| format!("cannot open {}", path.display()))?;
        sinks.push(Box::new(sink));
    }
    Ok(sinks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubetrail.yaml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.cluster.as_deref(), Some("prod-eu1"));
        assert_eq!(c.aggregate.window, Duration::from_secs(1800));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "aggregate:\n  windw: 10m\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("windw"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let c: Config = serde_yaml::from_str(
            "export:\n  otlp:\n    endpoint: http://a:4317\n    protocol: grpc\n",
        )
        .unwrap();
        let o = c.otlp(None, None).unwrap().unwrap();
        assert_eq!(
            (o.endpoint.as_str(), o.protocol),
            ("http://a:4317", OtlpProtocol::Grpc)
        );
        let o = c
            .otlp(Some("http://b:4318"), Some(OtlpProtocol::Http))
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.endpoint.as_str(), o.protocol),
            ("http://b:4318", OtlpProtocol::Http)
        );
        assert!(Config::default().otlp(None, None).unwrap().is_none());
    }
}

/// Settles `decorate.redact.salt`, first found wins: `KUBETRAIL_REDACT_SALT` (`env.text`),
/// the file named by `KUBETRAIL_REDACT_SALT_FILE` (`env.file`), `decorate.redact.salt`, the
/// file `decorate.redact.salt_file`. The file forms are the usual ones in Kubernetes: a
/// mounted Secret shared by every process of a deployment. Giving both the salt and its file
/// in the config is refused, as is a salt shorter than
/// [`SaltSecret::MIN_LEN`](kubetrail_decorate::SaltSecret::MIN_LEN).
pub(crate) fn resolve_redact_salt(cfg: &mut Config, env: SaltEnv) -> anyhow::Result<()> {
    use kubetrail_decorate::SaltSecret;
    let redact = &mut cfg.decorate.redact;
    if redact.salt.is_some() && redact.salt_file.is_some() {
        anyhow::bail!("decorate.redact: give salt or salt_file, not both");
    }
    let read = |path: &Path, what: &str| -> anyhow::Result<SaltSecret> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the redaction salt file {} ({what})",
                path.display()
            )
        })?;
        Ok(SaltSecret::new(&text))
    };
    let nonempty = |v: Option<String>| v.filter(|t| !t.trim().is_empty());
    if let Some(text) = nonempty(env.text) {
        redact.salt = Some(SaltSecret::new(&text));
    } else if let Some(path) = nonempty(env.file) {
        redact.salt = Some(read(Path::new(&path), "KUBETRAIL_REDACT_SALT_FILE")?);
    } else if let Some(path) = &redact.salt_file {
        redact.salt = Some(read(path, "decorate.redact.salt_file")?);
    }
    redact.salt_file = None;
    if let Some(problem) = redact.salt.as_ref().and_then(SaltSecret::problem) {
        anyhow::bail!("decorate.redact.salt: {problem}");
    }
    Ok(())
}

/// The environment's say on the redaction salt.
#[derive(Debug, Default)]
pub(crate) struct SaltEnv {
    /// `KUBETRAIL_REDACT_SALT`.
    pub text: Option<String>,
    /// `KUBETRAIL_REDACT_SALT_FILE`.
    pub file: Option<String>,
}

impl SaltEnv {
    /// Read from the process environment.
    pub(crate) fn from_process() -> SaltEnv {
        SaltEnv {
            text: std::env::var("KUBETRAIL_REDACT_SALT").ok(),
            file: std::env::var("KUBETRAIL_REDACT_SALT_FILE").ok(),
        }
    }
}

#[cfg(test)]
mod salt_tests {
    use super::*;

    fn with_salt(yaml: &str) -> Config {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn salt_of(cfg: &Config) -> kubetrail_decorate::Salt {
        kubetrail_decorate::Salt::from_secret(cfg.decorate.redact.salt.as_ref().unwrap())
    }

    #[test]
    fn salt_sources_in_order_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("salt");
        std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "from-the-env-file-0123456789").unwrap();

        let mut a = with_salt(&format!(
            "decorate:\n  redact:\n    salt_file: {}\n",
            file.display()
        ));
        resolve_redact_salt(&mut a, SaltEnv::default()).unwrap();
        let mut b = with_salt("decorate:\n  redact:\n    salt: from-the-file-0123456789\n");
        resolve_redact_salt(&mut b, SaltEnv::default()).unwrap();
        assert_eq!(
            salt_of(&a),
            salt_of(&b),
            "the file's final newline is not part of it"
        );

        let mut c = with_salt("decorate:\n  redact:\n    salt: from-the-file-0123456789\n");
        let env = SaltEnv {
            text: None,
            file: Some(other.display().to_string()),
        };
        resolve_redact_salt(&mut c, env).unwrap();
        assert_ne!(salt_of(&c), salt_of(&b), "the environment wins");
        let mut d = Config::default();
        let env = SaltEnv {
            text: Some("from-the-env-file-0123456789".into()),
            file: Some("/nonexistent".into()),
        };
        resolve_redact_salt(&mut d, env).unwrap();
        assert_eq!(salt_of(&d), salt_of(&c));

        let mut none = Config::default();
        resolve_redact_salt(&mut none, SaltEnv::default()).unwrap();
        assert!(none.decorate.redact.salt.is_none());

        let mut both = with_salt(&format!(
            "decorate:\n  redact:\n    salt: from-the-file-0123456789\n    salt_file: {}\n",
            file.display()
        ));
        assert!(resolve_redact_salt(&mut both, SaltEnv::default()).is_err());
        let mut short = Config::default();
        let env = SaltEnv {
            text: Some("short".into()),
            file: None,
        };
        let e = resolve_redact_salt(&mut short, env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
        let mut missing = with_salt("decorate:\n  redact:\n    salt_file: /nonexistent/salt\n");
        let e = resolve_redact_salt(&mut missing, SaltEnv::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/salt"), "{e}");
        assert!(
            !format!("{:?}", b.decorate).contains("from-the-file"),
            "Debug hides the salt"
        );
    }
}
