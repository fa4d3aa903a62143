//! The `export:` section of the config file, and how it builds itself into sinks.
//!
//! As in Vector, a sink's configuration is a serde type that deserialises from the file with
//! its defaults and [builds](ExportConfig::build_sinks) the running component; the binary
//! only composes sections and adds what its flags ask for. Defaults live here once.
//!
//! ```yaml
//! export:
//!   otlp:                       # the main destination; --otlp-endpoint/--otlp-protocol override it
//!     endpoint: http://jaeger-collector:4317
//!   sinks:                      # more destinations, each built into a sink of its own
//!     - type: otlp
//!       endpoint: https://otlp.example.com:4318
//!       protocol: http
//!       headers: { authorization: "Bearer …" }
//!     - type: otlp_json
//!       path: /var/lib/kubetrail/spans.jsonl
//!   health_check: true          # one empty OTLP request per endpoint at start-up (warns)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{
    ExportError, ExporterConfig, OtlpConfig, OtlpJsonFileSink, OtlpProtocol, OtlpSink, RetryPolicy,
    SpanSink, TreeOptions, TreeSink,
};

/// `export:` — where spans go, and how they are batched and retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// The main OTLP destination. The flags `--otlp-endpoint` and `--otlp-protocol` set or
    /// override its endpoint and protocol; its other settings (headers, timeout, gzip) apply
    /// to the endpoint they give.
    pub otlp: Option<OtlpSinkConfig>,
    /// More destinations, each built into a sink of its own: several OTLP endpoints,
    /// OTLP/JSON files, a tree file. Every span goes to every sink.
    pub sinks: Vec<SinkConfig>,
    /// Batching and queueing.
    pub batch: BatchConfig,
    /// Retries of a failed delivery.
    pub retry: RetryPolicy,
    /// At start-up, send every OTLP endpoint one export request without spans, and warn
    /// (do not fail) when it does not take it: a wrong address, path, protocol or token shows
    /// in the first log lines instead of as retries later. Default `true`.
    pub health_check: bool,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            otlp: None,
            sinks: Vec::new(),
            batch: BatchConfig::default(),
            retry: RetryPolicy::default(),
            health_check: true,
        }
    }
}

/// One OTLP destination (`export.otlp:`, or an `otlp` entry of `export.sinks:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpSinkConfig {
    /// `http://host:4317` (gRPC) or `http://host:4318` (HTTP). Required in `export.sinks`;
    /// in `export.otlp` it may come from `--otlp-endpoint` instead.
    pub endpoint: Option<String>,
    /// `grpc` (default) or `http` (`http/protobuf`).
    pub protocol: Option<OtlpProtocol>,
    /// Extra headers (gRPC metadata), e.g. an auth token for a hosted back end.
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout (also the connect timeout). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Gzip request bodies.
    pub gzip: bool,
}

impl Default for OtlpSinkConfig {
    fn default() -> Self {
        let d = OtlpConfig::default();
        OtlpSinkConfig {
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            timeout: d.timeout,
            gzip: d.gzip,
        }
    }
}

impl OtlpSinkConfig {
    /// The sink's settings with `endpoint`; `None` without one.
    pub fn resolve(&self) -> Option<OtlpConfig> {
        let endpoint = self.endpoint.clone()?;
        Some(OtlpConfig {
            endpoint,
            protocol: self.protocol.unwrap_or(OtlpProtocol::Grpc),
            timeout: self.timeout,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            gzip: self.gzip,
        })
    }
}

/// One entry of `export.sinks:`, chosen by its `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// An OTLP receiver (Jaeger, Tempo, an OpenTelemetry Collector, a hosted back end).
    Otlp(OtlpSinkConfig),
    /// One OTLP/JSON request per line (the Collector's file exporter format); `-` is
    /// standard output.
    OtlpJson(FileSinkConfig),
    /// The human-readable tree of every trace, written when the run ends. It holds every
    /// span until then: for replays (`replay`, `timeline`), refused by long-running commands.
    Tree(FileSinkConfig),
}

impl SinkConfig {
    /// The `type` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Otlp(_) => "otlp",
            SinkConfig::OtlpJson(_) => "otlp_json",
            SinkConfig::Tree(_) => "tree",
        }
    }
}

/// A sink that writes a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file; its directory is created if missing. `-` is standard output.
    pub path: PathBuf,
}

/// `export.batch:` — the [`ExporterConfig`] batching settings as the file names them
/// (defaults: [`ExporterConfig::default`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Spans per export request.
    pub max_spans: usize,
    /// Longest wait for a batch to fill.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Submissions queued before the pipeline waits (backpressure).
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        let d = ExporterConfig::default();
        BatchConfig {
            max_spans: d.max_batch_spans,
            max_delay: d.max_batch_delay,
            queue: d.queue_batches,
        }
    }
}

/// How the command that builds the sinks runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// A run that ends (`replay`, `timeline`): files are created (truncated), a tree sink is
    /// allowed.
    Finite,
    /// A long-running process (`serve`, `consume`, `follow`): files are appended to (a
    /// restart keeps what was written), a tree sink is refused (it would hold every span).
    LongRunning,
}

/// What the flags of a command add to the configured sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkFlags {
    /// `--otlp-endpoint`: the main OTLP destination's endpoint.
    pub otlp_endpoint: Option<String>,
    /// `--otlp-protocol`: its protocol.
    pub otlp_protocol: Option<OtlpProtocol>,
    /// `--otlp-json`: one more OTLP/JSON file (`-`: standard output).
    pub otlp_json: Option<PathBuf>,
}

/// Why the configured sinks could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
    /// An `otlp` entry of `export.sinks` has no endpoint.
    #[error("export.sinks[{index}]: an otlp sink needs an endpoint")]
    MissingEndpoint {
        /// Its position in the list.
        index: usize,
    },
    /// A sink the command does not allow.
    #[error(
        "export.sinks[{index}]: a {kind} sink holds every span until exit; only replay and timeline can use it"
    )]
    NotForLongRunning {
        /// Its position in the list.
        index: usize,
        /// Its type.
        kind: &'static str,
    },
    /// The main OTLP destination is unusable.
    #[error("export.otlp: {0}")]
    Otlp(#[source] ExportError),
    /// An entry of `export.sinks` is unusable (a bad endpoint, a file that cannot be opened).
    #[error("export.sinks[{index}] ({kind}): {source}")]
    Sink {
        /// Its position in the list (`--otlp-json` comes after the list).
        index: usize,
        /// Its type.
        kind: &'static str,
        /// Why.
        #[source]
        source: ExportError,
    },
    /// The `--otlp-json` file cannot be opened.
    #[error("--otlp-json {}: {source}", path.display())]
    JsonFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ExportError,
    },
}

impl ExportConfig {
    /// The exporter's batching and retry settings.
    pub fn exporter(&self) -> ExporterConfig {
        ExporterConfig {
            max_batch_spans: self.batch.max_spans.max(1),
            max_batch_delay: self.batch.max_delay,
            queue_batches: self.batch.queue.max(1),
            retry: self.retry.clone(),
        }
    }

    /// The main OTLP destination after the flags, if any is configured.
    pub fn main_otlp(&self, flags: &SinkFlags) -> Option<OtlpConfig> {
        let mut main = self.otlp.clone().unwrap_or_default();
        if let Some(endpoint) = &flags.otlp_endpoint {
            main.endpoint = Some(endpoint.clone());
        }
        if let Some(protocol) = flags.otlp_protocol {
            main.protocol = Some(protocol);
        }
        main.resolve()
    }

    /// Every OTLP destination: the main one (after the flags), then the `otlp` entries of
    /// `sinks`.
    pub fn otlp_endpoints(&self, flags: &SinkFlags) -> Result<Vec<OtlpConfig>, SinkConfigError> {
        let mut out: Vec<OtlpConfig> = self.main_otlp(flags).into_iter().collect();
        for (index, sink) in self.sinks.iter().enumerate() {
            if let SinkConfig::Otlp(otlp) = sink {
                out.push(
                    otlp.resolve()
                        .ok_or(SinkConfigError::MissingEndpoint { index })?,
                );
            }
        }
        Ok(out)
    }

    /// Checks the `sinks` list without building anything: every `otlp` entry has an
    /// endpoint, and a long-running command has no tree sink.
    pub fn check_sinks(&self, run: RunKind) -> Result<(), SinkConfigError> {
        for (index, sink) in self.sinks.iter().enumerate() {
            match sink {
                SinkConfig::Otlp(otlp) if otlp.endpoint.is_none() => {
                    return Err(SinkConfigError::MissingEndpoint { index });
                }
                SinkConfig::Tree(_) if run == RunKind::LongRunning => {
                    return Err(SinkConfigError::NotForLongRunning {
                        index,
                        kind: sink.kind(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Builds the sinks: the main OTLP destination, the `sinks` list in order, then the
    /// `--otlp-json` file. With [`health_check`](Self::health_check), starts the check of
    /// every OTLP endpoint in the background ([`spawn_health_check`]). Call inside a Tokio
    /// runtime (the gRPC client needs one). May be empty: the caller decides whether that
    /// is an error.
    pub fn build_sinks(
        &self,
        flags: &SinkFlags,
        run: RunKind,
    ) -> Result<Vec<Box<dyn SpanSink>>, SinkConfigError> {
        // Refuse a bad list before anything (a file) is created.
        self.check_sinks(run)?;
        let mut sinks: Vec<Box<dyn SpanSink>> = Vec::new();
        let mut endpoints = Vec::new();
        if let Some(main) = self.main_otlp(flags) {
            sinks.push(Box::new(
                OtlpSink::new(main.clone()).map_err(SinkConfigError::Otlp)?,
            ));
            endpoints.push(main);
        }
        for (index, sink) in self.sinks.iter().enumerate() {
            let kind = sink.kind();
            let failed = |source| SinkConfigError::Sink {
                index,
                kind,
                source,
            };
            match sink {
                SinkConfig::Otlp(otlp) => {
                    let otlp = otlp
                        .resolve()
                        .ok_or(SinkConfigError::MissingEndpoint { index })?;
                    sinks.push(Box::new(OtlpSink::new(otlp.clone()).map_err(failed)?));
                    endpoints.push(otlp);
                }
                SinkConfig::OtlpJson(file) => {
                    sinks.push(Box::new(json_file(&file.path, run).map_err(failed)?));
                }
                SinkConfig::Tree(file) => {
                    sinks.push(Box::new(tree_file(&file.path).map_err(failed)?));
                }
            }
        }
        if let Some(path) = &flags.otlp_json {
            let sink = json_file(path, run).map_err(|source| SinkConfigError::JsonFile {
                path: path.clone(),
                source,
            })?;
            sinks.push(Box::new(sink));
        }
        if self.health_check {
            for endpoint in endpoints {
                spawn_health_check(endpoint);
            }
        }
        Ok(sinks)
    }
}

/// Creates the directory of `path` if it is missing (`--otlp-json out/spans.jsonl` on a
/// fresh checkout).
fn create_parent(path: &Path, sink: &'static str) -> Result<(), ExportError> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            ExportError::permanent(sink, format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}

fn json_file(path: &Path, run: RunKind) -> Result<OtlpJsonFileSink, ExportError> {
    if path != Path::new("-") {
        create_parent(path, "otlp-json")?;
    }
    match run {
        RunKind::Finite => OtlpJsonFileSink::create(path),
        RunKind::LongRunning => OtlpJsonFileSink::append(path),
    }
}

fn tree_file(path: &Path) -> Result<TreeSink, ExportError> {
    let options = TreeOptions { color: false };
    if path == Path::new("-") {
        return Ok(TreeSink::new(Box::new(std::io::stdout()), options));
    }
    create_parent(path, "tree")?;
    let file = std::fs::File::create(path).map_err(|e| {
        ExportError::permanent("tree", format!("cannot create {}: {e}", path.display()))
    })?;
    Ok(TreeSink::new(
        Box::new(std::io::BufWriter::new(file)),
        options,
    ))
}

/// Sends `endpoint` one export request without spans ([`OtlpSink::check`]) in the
/// background and logs the outcome: `info` when it was taken, `warn` (with the error) when
/// not. Never fails the caller: the exporter retries real batches anyway, and a receiver
/// that starts after kubetrail is normal in a cluster. Outside a Tokio runtime it does
/// nothing.
pub fn spawn_health_check(endpoint: OtlpConfig) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let url = endpoint.endpoint.clone();
        let protocol = endpoint.protocol;
        let result = match OtlpSink::new(endpoint) {
            Ok(mut sink) => sink.check().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::info!(endpoint = %url, ?protocol, "OTLP endpoint takes exports"),
            Err(e) => tracing::warn!(
                endpoint = %url,
                ?protocol,
                error = %e,
                "OTLP endpoint did not take an empty export at start-up: spans are retried until it does"
            ),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ExportConfig, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn the_defaults_are_the_exporters() {
        let c = parse("{}").unwrap();
        assert_eq!(c.exporter(), ExporterConfig::default());
        assert!(c.health_check);
        assert_eq!(c.main_otlp(&SinkFlags::default()), None);
    }

    #[test]
    fn flags_set_the_main_endpoint_and_keep_the_files_other_settings() {
        let c =
            parse("otlp: {endpoint: http://a:4317, headers: {x-token: t}, timeout: 3s}").unwrap();
        let flags = SinkFlags {
            otlp_endpoint: Some("http://b:4318".into()),
            otlp_protocol: Some(OtlpProtocol::Http),
            ..SinkFlags::default()
        };
        let main = c.main_otlp(&flags).unwrap();
        assert_eq!(main.endpoint, "http://b:4318");
        assert_eq!(main.protocol, OtlpProtocol::Http);
        assert_eq!(main.headers, vec![("x-token".to_owned(), "t".to_owned())]);
        assert_eq!(main.timeout, Duration::from_secs(3));
        assert_eq!(
            c.main_otlp(&SinkFlags::default()).unwrap().endpoint,
            "http://a:4317"
        );
    }

    #[test]
    fn the_sink_list_names_each_entry_by_type_and_rejects_typos() {
        let c = parse(
            "sinks:\n- {type: otlp, endpoint: 'http://a:4317'}\n- {type: otlp, endpoint: 'http://b:4318', protocol: http}\n- {type: otlp_json, path: out.jsonl}\n- {type: tree, path: '-'}\n",
        )
        .unwrap();
        let kinds: Vec<&str> = c.sinks.iter().map(SinkConfig::kind).collect();
        assert_eq!(kinds, ["otlp", "otlp", "otlp_json", "tree"]);
        let endpoints = c.otlp_endpoints(&SinkFlags::default()).unwrap();
        let got: Vec<(&str, OtlpProtocol)> = endpoints
            .iter()
            .map(|e| (e.endpoint.as_str(), e.protocol))
            .collect();
        assert_eq!(
            got,
            [
                ("http://a:4317", OtlpProtocol::Grpc),
                ("http://b:4318", OtlpProtocol::Http)
            ]
        );

        let typo = parse("sinks:\n- {type: otlp, endpiont: 'http://a:4317'}\n").unwrap_err();
        assert!(typo.to_string().contains("endpiont"), "{typo}");
        let unknown = parse("sinks:\n- {type: kafka, path: x}\n").unwrap_err();
        assert!(unknown.to_string().contains("kafka"), "{unknown}");
        let protocol = parse("otlp: {protocol: thrift}").unwrap_err();
        assert!(protocol.to_string().contains("thrift"), "{protocol}");
    }

    #[tokio::test]
    async fn sinks_are_built_in_order_and_a_bad_entry_names_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nested/spans.jsonl");
        let yaml = format!(
            "otlp: {{endpoint: 'http://127.0.0.1:1'}}\nhealth_check: false\nsinks:\n- {{type: otlp_json, path: '{}'}}\n- {{type: otlp, endpoint: 'http://127.0.0.1:2', protocol: http}}\n",
            file.display()
        );
        let c = parse(&yaml).unwrap();
        let sinks = c
            .build_sinks(&SinkFlags::default(), RunKind::LongRunning)
            .unwrap();
        let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["otlp-grpc", "otlp-json", "otlp-http"]);
        assert!(
            file.exists(),
            "the file sink created its directory and file"
        );

        let missing = parse("sinks:\n- {type: otlp_json, path: a}\n- {type: otlp}\n").unwrap();
        let e = missing
            .build_sinks(&SinkFlags::default(), RunKind::Finite)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "export.sinks[1]: an otlp sink needs an endpoint"
        );

        let tree = parse("sinks:\n- {type: tree, path: '-'}\n").unwrap();
        assert!(
            tree.build_sinks(&SinkFlags::default(), RunKind::Finite)
                .is_ok()
        );
        let e = tree
            .build_sinks(&SinkFlags::default(), RunKind::LongRunning)
            .err()
            .unwrap();
        assert!(
            e.to_string().starts_with("export.sinks[0]: a tree sink"),
            "{e}"
        );
    }
}
