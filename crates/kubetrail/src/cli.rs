//! Command-line interface. Every flag with a config file equivalent also reads a
//! `KUBETRAIL_*` environment variable; flags win over the environment, which wins over the
//! config file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use kubetrail_export::OtlpProtocol;

/// Turns the Kubernetes API server's audit log into distributed traces.
#[derive(Debug, Parser)]
#[command(name = "kubetrail", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter (tracing's EnvFilter syntax: `info`, `kubetrail=debug,warn`). Logs go to stderr.
    #[arg(long, global = true, env = "KUBETRAIL_LOG", default_value = "warn")]
    pub log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "KUBETRAIL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay audit log files through the pipeline: to OTLP, to an OTLP/JSON file, or as a tree.
    ///
    /// Inputs are JSON lines of audit Events (what --audit-log-path writes), EventList JSON
    /// (one per line or pretty-printed), gzip-compressed or not; `-` reads standard input.
    /// Time is the events' own: windows and lingering follow their timestamps, so a replay is
    /// deterministic.
    Replay(ReplayArgs),
    /// All in one: the audit webhook, an embedded queue, the pipeline and the exporter.
    ///
    /// Point kube-apiserver's --audit-webhook-config-file at it (see deploy/apiserver/).
    /// Answers 200 once a batch is queued, 503 + Retry-After when it cannot take more (the API
    /// server retries), and drains the queue and flushes the exporter on SIGTERM.
    Serve(ServeArgs),
    /// Print one object's family from audit log files as a timeline tree: who did what, when,
    /// with what result — triage with no Jaeger.
    Timeline(TimelineArgs),
    /// Print the Jaeger URL of an object's trace at a time, computed from the deterministic ids
    /// (the object should be its family's top owner: a Deployment, a CronJob …; --search gives
    /// a tag search that finds any object).
    Url(UrlArgs),
    /// The webhook in front of Kafka (scale-out): accepts the API server's batches and answers
    /// 200 only once every event is acknowledged by the brokers (idempotent producer, acks=all).
    Receive(ReceiveArgs),
    /// A Kafka consumer-group member: runs the pipeline per assigned partition and exports;
    /// offsets are committed only after the spans were exported.
    Consume(ConsumeArgs),
    /// Follow kube-apiserver audit log files as they are written (`--audit-log-path`):
    /// across rotation (rename + new file, gzip-compressed backups), truncation and restarts
    /// (positions kept in --state-file), into OTLP like `serve`, or into Kafka like `receive`.
    ///
    /// Several files (one per API server) are merged by event time. SIGTERM stops reading,
    /// emits every open family, flushes and saves the positions: a restart reads nothing twice.
    /// After a crash a restart re-reads window + linger of event time, so open families are
    /// rebuilt; what it exports again has the same ids (identical duplicates).
    Follow(FollowArgs),
}

/// Options shared by every command that runs the pipeline.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Config file (YAML): filter, linker, aggregation and export settings.
    #[arg(long, env = "KUBETRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Cluster name put on every span (config: `cluster`).
    #[arg(long, env = "KUBETRAIL_CLUSTER")]
    pub cluster: Option<String>,
    /// Trace window: one trace per object family per window (config: `aggregate.window`).
    #[arg(long, env = "KUBETRAIL_WINDOW", value_parser = humantime::parse_duration)]
    pub window: Option<Duration>,
    /// How long a family stays quiet before its object spans are emitted (config: `aggregate.linger`).
    #[arg(long, env = "KUBETRAIL_LINGER", value_parser = humantime::parse_duration)]
    pub linger: Option<Duration>,
    /// Spans per exported trace at most; a family that outgrows it is cut into linked part traces (config: `aggregate.max_trace_spans`, default 2000).
    #[arg(long, env = "KUBETRAIL_MAX_TRACE_SPANS")]
    pub max_trace_spans: Option<usize>,
    /// OTLP endpoint, e.g. http://jaeger:4317 for gRPC, http://jaeger:4318 for HTTP (config: `export.otlp.endpoint`).
    #[arg(long, env = "KUBETRAIL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc, or http (HTTP/protobuf) (config: `export.otlp.protocol`).
    #[arg(long, env = "KUBETRAIL_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// How far (event time) an event may trail the slowest source and still be processed in
    /// order; also the latency this adds to request spans in live modes (config: `time.lateness`).
    #[arg(long, env = "KUBETRAIL_LATENESS", value_parser = humantime::parse_duration)]
    pub lateness: Option<Duration>,
}

/// Default `--lookahead`: events held to merge replay inputs by time.
pub const DEFAULT_LOOKAHEAD: usize = 8192;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Also write spans as OTLP/JSON, one ExportTraceServiceRequest per line (the OpenTelemetry Collector file-exporter format); `-` for stdout.
    #[arg(long, value_name = "PATH")]
    pub otlp_json: Option<PathBuf>,
    /// Print each trace as an indented tree on stdout when done.
    #[arg(long)]
    pub tree: bool,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Give up exporting a batch after this long and count its spans as dropped (default for replay: 2m; `0s` retries forever).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub export_timeout: Duration,
    /// No progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Read the inputs one after the other, as one stream cut in pieces, instead of merging
    /// them by event time (the behaviour before HA merging).
    #[arg(long)]
    pub sequential: bool,
    /// Events held in total to merge the inputs by time (split over the API servers' logs):
    /// bounds memory; disorder within one log beyond it is processed late.
    #[arg(long, default_value_t = DEFAULT_LOOKAHEAD, value_name = "EVENTS")]
    pub lookahead: usize,
    /// Audit log files, directories or globs (`node*/audit*.log*`; `-` for stdin). Each API
    /// server's log with its rotated files (`audit-2024-07-15T09-00-00.000.log[.gz]`) is read
    /// in time order; the servers' logs are merged by event time.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

/// Webhook listener options (`serve`, `receive`).
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Address to listen on for the API server's audit webhook (config: `server.listen`).
    #[arg(long, env = "KUBETRAIL_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// TLS certificate (PEM) (config: `server.tls.cert`).
    #[arg(long, env = "KUBETRAIL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) (config: `server.tls.key`).
    #[arg(long, env = "KUBETRAIL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to; enables mTLS authentication (config: `server.tls.client_ca`).
    #[arg(long, env = "KUBETRAIL_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// File of accepted bearer tokens, one per line, `TOKEN` or `TOKEN,NAME` (the name is the batches' source, e.g. the API server's name) (config: `server.token_file`).
    #[arg(long, env = "KUBETRAIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without any authentication (config: `server.insecure`).
    #[arg(long, env = "KUBETRAIL_INSECURE")]
    pub insecure: bool,
    /// Jaeger UI base URL: enables `GET /redirect?resource=&namespace=&name=&time=`, a 302 to
    /// that object's trace (config: `server.jaeger_url`).
    #[arg(long, env = "KUBETRAIL_JAEGER_URL")]
    pub jaeger_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    /// Also write spans as OTLP/JSON lines to this file.
    #[arg(long, value_name = "PATH")]
    pub otlp_json: Option<PathBuf>,
    /// Events the embedded queue holds before the webhook answers 503 (config: `queue.events`).
    #[arg(long, env = "KUBETRAIL_QUEUE_EVENTS")]
    pub queue_events: Option<usize>,
    /// How long shutdown may take to drain the queue and flush the exporter (config: `shutdown_timeout`).
    #[arg(long, env = "KUBETRAIL_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Durable log directory: accepted batches are on disk before the 200 and survive a
    /// crash; without it the queue is in memory only and a crash loses what was accepted but
    /// not yet exported (config: `queue.dir`).
    #[arg(long, env = "KUBETRAIL_QUEUE_DIR", value_name = "DIR")]
    pub queue_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TimelineArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Only requests at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Only requests at or before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub report: ReportArgs,
    /// The object: RESOURCE[.GROUP]/NAMESPACE/NAME, or RESOURCE[.GROUP]/NAME when cluster-scoped.
    #[arg(value_name = "OBJECT")]
    pub object: String,
    /// Audit log files (`-` for stdin).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

/// The self-contained HTML report (`replay`, `timeline`).
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Write a self-contained HTML report (Gantt timeline per family, search, filters, diffs) to this file: one file, no network access needed to open it.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Jaeger UI base URL: the HTML report links every object and request to its trace there (config: `server.jaeger_url`).
    #[arg(long, env = "KUBETRAIL_JAEGER_URL")]
    pub jaeger_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct UrlArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Jaeger UI base URL.
    #[arg(
        long,
        env = "KUBETRAIL_JAEGER_URL",
        default_value = "http://localhost:16686"
    )]
    pub jaeger_url: String,
    /// A time in the window of interest (RFC 3339); default: now.
    #[arg(long, conflicts_with_all = ["since", "until"])]
    pub time: Option<String>,
    /// List the object's trace in every window from this time on (RFC 3339), one line per
    /// window: its history, which the spans also link window to window.
    #[arg(long)]
    pub since: Option<String>,
    /// With --since: up to this time (RFC 3339); default: now.
    #[arg(long, requires = "since")]
    pub until: Option<String>,
    /// Also print a Jaeger search URL that finds the object by tag in that window, whatever
    /// family it belongs to (the trace URL is the object's own trace when it is the top owner).
    #[arg(long)]
    pub search: bool,
    /// The object: RESOURCE[.GROUP]/NAMESPACE/NAME, or RESOURCE[.GROUP]/NAME when cluster-scoped.
    #[arg(value_name = "OBJECT")]
    pub object: String,
}

/// Kafka options (`receive`, `consume`).
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port (config: `kafka.brokers`).
    #[arg(long, env = "KUBETRAIL_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic of audit events (config: `kafka.topic`).
    #[arg(long, env = "KUBETRAIL_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// A librdkafka property passed through, KEY=VALUE, repeatable: security.protocol, sasl.*, ssl.* … (config: `kafka.properties`; no environment variable).
    #[arg(long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_properties: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Config file (YAML): the `server` and `kafka` sections apply.
    #[arg(long, env = "KUBETRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Cluster name for `POST /audit` (config: `cluster`).
    #[arg(long, env = "KUBETRAIL_CLUSTER")]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// How long shutdown may take to finish in-flight batches and flush the producer (config: `shutdown_timeout`).
    #[arg(long, env = "KUBETRAIL_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group: all consumers of one group share the partitions (config: `kafka.group`).
    #[arg(long, env = "KUBETRAIL_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
    /// Also write spans as OTLP/JSON lines to this file.
    #[arg(long, value_name = "PATH")]
    pub otlp_json: Option<PathBuf>,
    /// Serve GET /metrics, /healthz on this address (config: `server.listen`; off when absent).
    #[arg(long, env = "KUBETRAIL_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Where a log without a saved position is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartAtArg {
    /// The live file from its first line.
    Beginning,
    /// Only what is written from now on.
    End,
}

impl From<StartAtArg> for kubetrail_source::follow::StartAt {
    fn from(a: StartAtArg) -> Self {
        match a {
            StartAtArg::Beginning => kubetrail_source::follow::StartAt::Beginning,
            StartAtArg::End => kubetrail_source::follow::StartAt::End,
        }
    }
}

#[derive(Debug, Args)]
pub struct FollowArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Also write spans as OTLP/JSON lines to this file.
    #[arg(long, value_name = "PATH")]
    pub otlp_json: Option<PathBuf>,
    /// Keep the read positions in this file across restarts (config: `follow.state_file`).
    #[arg(long, env = "KUBETRAIL_FOLLOW_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// How often a log with nothing new is looked at again (config: `follow.poll_interval`, default 200ms).
    #[arg(long, env = "KUBETRAIL_FOLLOW_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Where a log without a saved position starts (config: `follow.start_at`, default beginning).
    #[arg(long, env = "KUBETRAIL_FOLLOW_START_AT", value_enum)]
    pub start_at: Option<StartAtArg>,
    /// Serve GET /metrics, /healthz on this address (off when absent).
    #[arg(long, env = "KUBETRAIL_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long shutdown may take to drain and flush (config: `shutdown_timeout`).
    #[arg(long, env = "KUBETRAIL_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Instead of running the pipeline here, POST the events to a central `kubetrail serve`
    /// (or `receive`) webhook, e.g. https://kubetrail.kubetrail.svc:8443/audit/prod: one
    /// pipeline then merges every API server's log.
    #[arg(long, env = "KUBETRAIL_FORWARD_URL", value_name = "URL", conflicts_with_all = ["kafka_brokers", "otlp_json", "otlp_endpoint"])]
    pub forward_url: Option<String>,
    /// Bearer token for --forward-url: the first line of this file.
    #[arg(
        long,
        env = "KUBETRAIL_FORWARD_TOKEN_FILE",
        value_name = "PATH",
        requires = "forward_url"
    )]
    pub forward_token_file: Option<PathBuf>,
    /// CA bundle (PEM) the --forward-url server's certificate must chain to.
    #[arg(
        long,
        env = "KUBETRAIL_FORWARD_CA",
        value_name = "PATH",
        requires = "forward_url"
    )]
    pub forward_ca: Option<PathBuf>,
    /// The `source` this node's batches carry to the central webhook (default: the host name;
    /// several paths: NAME-0, NAME-1 …), so it merges the API servers by time.
    #[arg(
        long,
        env = "KUBETRAIL_FORWARD_SOURCE",
        value_name = "NAME",
        requires = "forward_url"
    )]
    pub forward_source: Option<String>,
    /// The live audit log files (kube-apiserver's --audit-log-path), one per API server
    /// (config: `follow.paths`). Their rotated backups next to them are found by name.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}
