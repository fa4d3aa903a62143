//! Turning bytes into [`AuditEvent`]s, for replay and for the webhook.
//!
//! Audit events reach kubetrail in a handful of shapes, all handled here so that every run
//! mode agrees on what is valid:
//!
//! * JSON lines of `Event`s, what `--audit-log-path` writes (the common case, parsed line by
//!   line in one pass);
//! * `EventList` objects, one per line (a webhook capture) or pretty-printed over many lines;
//! * a JSON array of events, or pretty-printed single events;
//! * any of these gzip-compressed (detected from the magic bytes, not the file name);
//! * `-` for standard input;
//! * the managed clouds' log envelopes (AKS diagnostic records, EKS CloudWatch/Firehose,
//!   GKE Cloud Logging `LogEntry`s), recognised by [`cloud::decode_cloud_document`].
//!
//! [`follow`] tails live log files across rotation for `kubetrail follow`.
//!
//! A malformed line or list item is reported as a [`Malformed`] record with its line number
//! and reason, and reading goes on: one bad line never costs the rest of the file.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cloud;
mod decode;
pub mod follow;
mod framing;
pub mod inputs;
pub mod merge;
mod reader;

pub use decode::{EventListError, ItemError, decode_event_list};
pub use reader::{
    DEFAULT_MAX_RECORD_BYTES, EventReader, Malformed, OpenedInput, SourceError, decode_record,
    open_input,
};

pub use kubetrail_model::AuditEvent;

/// `source:` in the config file: how audit files are read (`replay`, `timeline`, and the
/// files `serve`/`receive`/`follow` read).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Longest record (a line, or a pretty-printed document) read from an audit file; longer
    /// ones are skipped without being held in memory and counted as malformed. Default
    /// [`DEFAULT_MAX_RECORD_BYTES`].
    pub max_record_bytes: usize,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}
