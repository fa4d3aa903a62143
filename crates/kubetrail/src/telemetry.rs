//! kubetrail's own telemetry, one small module every command uses: the log subscriber (filter
//! and format), and the one place the Prometheus recorder is installed and every crate's
//! metric descriptions (`# HELP` and units) are registered, so that no command serves a
//! metric without its description.

use anyhow::Context as _;
use kubetrail_receiver::PrometheusHandle;

/// Installs the `tracing` subscriber: `--log-level` (EnvFilter syntax) and `--log-format`,
/// to stderr.
pub(crate) fn init_logging(g: &crate::cli::GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&g.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if g.log_format == crate::cli::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Installs the process-wide Prometheus recorder (idempotent) and registers the descriptions
/// of every metric kubetrail records.
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle =
        kubetrail_receiver::install_prometheus().context("cannot install the metrics recorder")?;
    describe_metrics();
    Ok(handle)
}

/// Registers the descriptions of every crate's metrics and of the binary's own.
fn describe_metrics() {
    kubetrail_receiver::describe_metrics();
    kubetrail_queue::describe_metrics();
    kubetrail_log::describe_metrics();
    kubetrail_worker::describe_metrics();
    kubetrail_export::describe_metrics();
    kubetrail_kafka::describe_metrics();
    describe_own_metrics();
}

/// The metrics `follow` and `produce` record themselves.
fn describe_own_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    let follow: [(&'static str, &'static str); 8] = [
        (
            "kubetrail_follow_state_write_errors_total",
            "Failed writes of follow's position state file (positions are kept in memory and written again).",
        ),
        (
            "kubetrail_follow_rotations_total",
            "Log rotations followed (the file was renamed and a new one started), by path.",
        ),
        (
            "kubetrail_follow_truncations_total",
            "Times a followed file was truncated and read again from its start, by path.",
        ),
        (
            "kubetrail_follow_positions_lost_total",
            "Times the file of a saved position was not found (rotated away and deleted while kubetrail was stopped): what it held after the position is lost. By path.",
        ),
        (
            "kubetrail_follow_records_skipped_total",
            "Records without a Kubernetes audit event (other entries of a cloud log export) skipped, by path.",
        ),
        (
            "kubetrail_follow_malformed_total",
            "Malformed lines skipped in followed files, by path.",
        ),
        (
            "kubetrail_follow_events_total",
            "Audit events read from followed files, by path.",
        ),
        (
            "kubetrail_follow_read_errors_total",
            "Errors reading a followed file (retried), by path.",
        ),
    ];
    for (name, help) in follow {
        describe_counter!(name, Unit::Count, help);
    }
    describe_gauge!(
        "kubetrail_follow_read_bytes",
        Unit::Bytes,
        "The byte offset read up to in a followed file, by path."
    );
    describe_counter!(
        "kubetrail_values_redacted_total",
        Unit::Count,
        "Secret values redacted before audit events were produced to Kafka."
    );
    describe_counter!(
        "kubetrail_bodies_redacted_whole_total",
        Unit::Count,
        "Request or response bodies redacted whole (not parseable) before audit events were produced to Kafka."
    );
}

/// Serves `GET /metrics` (what `render` returns: the Prometheus text) and `GET /healthz` on
/// `addr`, for the commands without a webhook of their own (`follow`, `consume`); `command`
/// names the command in the line that says where.
pub(crate) fn serve_metrics(
    command: &str,
    addr: std::net::SocketAddr,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context as _;
    let std_listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(render())),
        )
        .route(
            "/healthz",
            axum::routing::get(|| std::future::ready("ok\n")),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    eprintln!("kubetrail {command}: metrics on http://{local}/metrics");
    Ok(local)
}
