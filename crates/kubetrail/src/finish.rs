//! The end of a run, shared by every command that runs the pipeline: the worker drains its
//! queue and flushes every open family into the exporter, then the exporter delivers what it
//! holds. Both are tasks; a panic or an early stop of either is an error of the run.

use kubetrail_export::{ExportReport, ExporterClosed};
use kubetrail_worker::WorkerReport;
use tokio::task::JoinHandle;

/// Waits for the pipeline worker, then for the exporter it feeds, and returns both reports.
pub(crate) async fn finish_pipeline(
    worker: JoinHandle<Result<WorkerReport, ExporterClosed>>,
    exporter: JoinHandle<ExportReport>,
) -> anyhow::Result<(WorkerReport, ExportReport)> {
    use anyhow::Context as _;
    let report = worker
        .await
        .context("the pipeline worker stopped unexpectedly")?
        .context("the exporter stopped")?;
    let export = exporter
        .await
        .context("the exporter stopped unexpectedly")?;
    Ok((report, export))
}
