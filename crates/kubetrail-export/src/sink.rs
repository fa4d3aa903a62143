//! The destination trait.

use kubetrail_model::SpanRecord;

use crate::ExportError;

/// One destination of finished spans.
///
/// The [`Exporter`](crate::Exporter) owns its sinks and calls them from one task, one batch at
/// a time per sink, so implementations need `Send` but not `Sync`, and need no locking. A sink
/// does not retry by itself: it classifies its failure as
/// [`Retryable`](ExportError::Retryable) or [`Permanent`](ExportError::Permanent) and the
/// exporter decides.
#[async_trait::async_trait]
pub trait SpanSink: Send {
    /// Delivers one batch; Ok only once the destination has accepted it.
    ///
    /// After an error the exporter may call this again with the same batch: a sink must
    /// tolerate that (the deterministic span ids make duplicates harmless downstream).
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError>;

    /// Makes everything exported so far durable (file sync, terminal output); called before
    /// exit.
    async fn finish(&mut self) -> Result<(), ExportError>;

    /// Short name for logs and metrics ("otlp-grpc", "otlp-json", "tree").
    fn name(&self) -> &'static str;
}

#[async_trait::async_trait]
impl<S: SpanSink + ?Sized> SpanSink for Box<S> {
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        (**self).export(batch).await
    }

    async fn finish(&mut self) -> Result<(), ExportError> {
        (**self).finish().await
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }
}
