//! The error a sink returns, classified by what the exporter should do about it.

use std::time::Duration;

/// Why a sink could not deliver a batch, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// A transient failure (receiver down or overloaded, timeout, connection reset): the same
    /// batch may succeed later.
    #[error("{sink}: export failed, will retry: {message}")]
    Retryable {
        /// The sink's [`name`](crate::SpanSink::name).
        sink: &'static str,
        /// What went wrong, with its context.
        message: String,
        /// How long the receiver asked us to wait (HTTP `Retry-After`, gRPC `RetryInfo`).
        retry_after: Option<Duration>,
    },
    /// The destination refused the batch (malformed, unauthorised, too large) or cannot be
    /// used at all: sending the same batch again would fail the same way.
    #[error("{sink}: export failed permanently: {message}")]
    Permanent {
        /// The sink's [`name`](crate::SpanSink::name).
        sink: &'static str,
        /// What went wrong, with its context.
        message: String,
    },
}

impl ExportError {
    /// A retryable error without a receiver-requested delay.
    pub fn retryable(sink: &'static str, message: impl Into<String>) -> Self {
        ExportError::Retryable {
            sink,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent error.
    pub fn permanent(sink: &'static str, message: impl Into<String>) -> Self {
        ExportError::Permanent {
            sink,
            message: message.into(),
        }
    }

    /// Whether sending the same batch again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ExportError::Retryable { .. })
    }

    /// The delay the receiver asked for before the next attempt, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ExportError::Retryable { retry_after, .. } => *retry_after,
            ExportError::Permanent { .. } => None,
        }
    }

    /// The sink that failed.
    pub fn sink(&self) -> &'static str {
        match self {
            ExportError::Retryable { sink, .. } | ExportError::Permanent { sink, .. } => sink,
        }
    }

    /// What went wrong, without the sink name.
    pub fn message(&self) -> &str {
        match self {
            ExportError::Retryable { message, .. } | ExportError::Permanent { message, .. } => {
                message
            }
        }
    }

    /// `"retryable"` or `"permanent"`: the `kind` label of the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ExportError::Retryable { .. } => "retryable",
            ExportError::Permanent { .. } => "permanent",
        }
    }
}

/// Formats an error with its whole `source()` chain ("a: b: c"), skipping repeats; transport
/// errors often say little at the top ("error sending request") and the cause underneath.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    append_sources(&mut out, err.source());
    out
}

/// Appends `source` and its own sources to `out` (": b: c"), skipping those `out` already says.
pub(crate) fn append_sources(
    out: &mut String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) {
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors() {
        let e = ExportError::Retryable {
            sink: "x",
            message: "down".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.to_string(), "x: export failed, will retry: down");
        let p = ExportError::permanent("y", "bad");
        assert!(!p.is_retryable());
        assert_eq!(p.retry_after(), None);
        assert_eq!((p.sink(), p.message(), p.kind()), ("y", "bad", "permanent"));
    }

    #[test]
    fn chain_includes_sources() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("sending")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(error_chain(&e), "sending: refused");
    }
}
