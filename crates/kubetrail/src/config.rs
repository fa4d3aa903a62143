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
use kubetrail_export::{ExporterConfig, RunKind, SinkFlags};
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
    pub export: kubetrail_export::ExportConfig,
    /// The audit webhook (`serve`, `receive`).
    pub server: kubetrail_receiver::ServerConfig,
    /// The embedded queue (`serve`, and `replay` in front of its pipeline).
    pub queue: kubetrail_log::QueueConfig,
    /// Reading audit files (`replay`, `timeline`).
    pub source: kubetrail_source::SourceConfig,
    /// Kafka (`receive`, `consume`).
    pub kafka: kubetrail_kafka::KafkaConfig,
    /// How long shutdown may take to drain and flush.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// Event-time order across API servers: lateness, silent sources, far-ahead events.
    pub time: kubetrail_pipeline::watermark::OrderConfig,
    /// Audit log files followed as they are written (`follow`; also inside `serve`, `receive`).
    pub follow: kubetrail_source::follow::FollowConfig,
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
        // (Whether a tree sink is allowed depends on the command: checked when built.)
        config
            .export
            .check_sinks(RunKind::Finite)
            .with_context(|| format!("invalid config file {}", path.display()))?;
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
        self.export.exporter()
    }
}

/// The sinks a command's flags and config ask for (possibly none): the main OTLP
/// destination (`--otlp-endpoint`/`--otlp-protocol` over `export.otlp`), `export.sinks`, then
/// `--otlp-json`.
pub fn export_sinks(
    cfg: &Config,
    pipeline: &crate::cli::PipelineArgs,
    otlp_json: Option<&Path>,
    run: RunKind,
) -> anyhow::Result<Vec<Box<dyn kubetrail_export::SpanSink>>> {
    let flags = SinkFlags {
        otlp_endpoint: pipeline.otlp_endpoint.clone(),
        otlp_protocol: pipeline.otlp_protocol,
        otlp_json: otlp_json.map(Path::to_path_buf),
    };
    cfg.export
        .build_sinks(&flags, run)
        .context("cannot set up the span sinks")
}

/// The sinks of a long-running command (`serve`, `follow`, `consume`): as [`export_sinks`],
/// and at least one ([`require_sinks`], naming the flags in `accepted`).
pub fn long_running_sinks(
    cfg: &Config,
    pipeline: &crate::cli::PipelineArgs,
    otlp_json: Option<&Path>,
    accepted: &str,
) -> anyhow::Result<Vec<Box<dyn kubetrail_export::SpanSink>>> {
    let sinks = export_sinks(cfg, pipeline, otlp_json, RunKind::LongRunning)?;
    require_sinks(sinks, accepted)
}

/// `sinks`, unless it is empty: then the error every command gives, naming the flags this
/// one accepts (`accepted`, e.g. "--otlp-endpoint or --otlp-json").
pub fn require_sinks(
    sinks: Vec<Box<dyn kubetrail_export::SpanSink>>,
    accepted: &str,
) -> anyhow::Result<Vec<Box<dyn kubetrail_export::SpanSink>>> {
    if sinks.is_empty() {
        anyhow::bail!(
            "nothing to send spans to: give {accepted} (or export.otlp / export.sinks in --config)"
        );
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
