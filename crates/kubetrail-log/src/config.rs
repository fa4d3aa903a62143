//! `queue.durable:` — how the durable log writes and how much disk it may use.

use std::time::Duration;

use serde::Deserialize;

/// When the log's writes are forced to disk (`fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before a batch is answered 200 (one `fdatasync` per group of concurrent batches): an
    /// acknowledged batch survives a crash of the process, of the kernel and a power loss.
    #[default]
    Batch,
    /// At most every `fsync_interval`; a batch is answered once written to the OS. It
    /// survives a crash of the process (`kill -9`, OOM kill), not a kernel crash or power
    /// loss within the interval.
    Interval,
    /// Never forced (the OS writes back when it likes; on shutdown the log is synced). Same
    /// as `interval` for a process crash; a power loss may lose up to the OS's write-back
    /// delay (tens of seconds).
    None,
}

/// The durable log's settings (`queue.durable:` in the config file; the directory is
/// `queue.dir`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// When writes are forced to disk.
    pub fsync: FsyncPolicy,
    /// With `fsync: interval`: how often.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Disk budget: the segments never hold more than this many bytes. When unexported
    /// batches fill it, the webhook answers 503 + Retry-After (the API server retries from
    /// its own buffer); exported history beyond the retention is deleted first, and
    /// exported history within it is cut short (counted, logged) before anything is refused.
    pub disk_bytes: u64,
    /// A segment file is closed and a new one started past this size (at most a
    /// sixteenth of `disk_bytes` is used, so that exported segments can be deleted one by one).
    pub segment_bytes: u64,
    /// Event time of exported history kept behind the last exported batch, to rebuild open
    /// families and the owner graph after a restart. Absent: `aggregate.window` +
    /// `aggregate.linger`.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            fsync: FsyncPolicy::Batch,
            fsync_interval: Duration::from_secs(1),
            disk_bytes: 4 << 30,
            segment_bytes: 64 << 20,
            retention: None,
        }
    }
}

impl LogConfig {
    /// The segment size actually used: `segment_bytes`, at most a sixteenth of the budget,
    /// at least 64 KiB.
    pub fn effective_segment_bytes(&self) -> u64 {
        self.segment_bytes.min(self.disk_bytes / 16).max(64 << 10)
    }
}

/// `queue:` in the config file: the queue between the webhook and the worker of `serve` —
/// the embedded queue's bounds (also `replay`'s, in front of its pipeline) and, with `dir`,
/// this crate's durable log in front of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
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
    pub durable: LogConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            events: 100_000,
            bytes: 512 << 20,
            dir: None,
            durable: LogConfig::default(),
        }
    }
}
