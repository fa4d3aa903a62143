//! Where `follow` resumes after a restart: the state file, and the bookkeeping of which
//! batches were delivered.
//!
//! Per log the state file holds two positions. **committed**: everything before it was
//! delivered (its request spans exported, or acknowledged by Kafka). **resume**: where a
//! restart reads from. After a clean stop (SIGTERM: every open family was emitted and the
//! exporter flushed) the two are equal, so nothing is read twice. While running, `resume`
//! trails `committed` by a *lookback* of event time (the window plus linger): if the process
//! dies (kill -9, OOM, node crash), the open families and the learned owner graph are lost
//! with it, and re-reading from `resume` rebuilds them. The spans that re-reading exports
//! again are the same spans with the same ids (ids are derived from the events, never
//! allocated), so they are duplicates a trace backend shows once — never a different trace.
//!
//! The file is written atomically (a temporary file in the same directory, fsync, rename,
//! fsync of the directory), so a crash mid-write leaves the previous state.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Position;

/// Version of the state file's layout.
pub const STATE_VERSION: u32 = 1;

/// Why the state file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a state file of this version.
    #[error(
        "state file {path} is not a kubetrail follow state (version {STATE_VERSION}): {reason}"
    )]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The state of every followed log, by its live path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Per live path.
    pub logs: BTreeMap<String, LogState>,
}

/// Where one log stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// Everything before it was delivered.
    pub committed: Option<Position>,
    /// Where a restart reads from (at or before `committed`).
    pub resume: Option<Position>,
    /// When this was saved (UTC, lumberjack's stamp layout `2006-01-02T15-04-05.000`), to
    /// know which backups are newer if the position's file is gone.
    pub saved_at: String,
    /// Written by a clean stop (then `resume == committed`).
    pub clean: bool,
}

impl StateFile {
    /// Reads the state file; `None` when it does not exist (a first start).
    pub fn load(path: &Path) -> Result<Option<StateFile>, StateError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let state: StateFile = serde_json::from_slice(&text).map_err(|e| StateError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Invalid {
                path: path.display().to_string(),
                reason: format!("version {}", state.version),
            });
        }
        Ok(Some(state))
    }

    /// Writes the state file atomically: a crash leaves the old or the new file, whole.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".to_owned());
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        bytes.push(b'\n');
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// A published batch: where it starts and ends, and its latest event time.
#[derive(Debug, Clone)]
struct Mark {
    seq: u64,
    start: Position,
    end: Position,
    max_time: i64,
    acked: bool,
}

/// Marks kept at most; beyond it the oldest delivered ones are merged (the resume point
/// then moves earlier, never later: more is re-read after a crash, nothing is missed).
const MAX_MARKS: usize = 4096;

/// Which batches of one log were delivered, and so where it may resume.
#[derive(Debug, Clone)]
pub struct Tracker {
    marks: VecDeque<Mark>,
    next_seq: u64,
    committed: Option<Position>,
    committed_time: i64,
    lookback: i64,
}

impl Tracker {
    /// A tracker starting at `committed` (from the state file), re-reading `lookback`
    /// nanoseconds of event time after a crash (0: resume exactly at the committed position,
    /// for a durable downstream such as Kafka, whose consumers do their own lookback).
    pub fn new(committed: Option<Position>, lookback_nanos: i64) -> Tracker {
        Tracker {
            marks: VecDeque::new(),
            next_seq: 0,
            committed,
            committed_time: i64::MIN,
            lookback: lookback_nanos.max(0),
        }
    }

    /// Records a batch handed downstream; returns its sequence number for [`acked`](Self::acked).
    pub fn published(&mut self, start: Position, end: Position, max_time: Option<i64>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.marks.push_back(Mark {
            seq,
            start,
            end,
            max_time: max_time.unwrap_or(i64::MIN),
            acked: false,
        });
        self.compact();
        seq
    }

    /// Records that batch `seq` was delivered.
    pub fn acked(&mut self, seq: u64) {
        if let Some(m) = self.marks.iter_mut().find(|m| m.seq == seq) {
            m.acked = true;
        }
        self.advance();
    }

    /// Everything was delivered (a clean stop): committed = resume = the end of the last batch.
    pub fn all_delivered(&mut self) {
        for m in &mut self.marks {
            m.acked = true;
        }
        self.advance();
        if let Some(last) = self.marks.back() {
            self.committed = Some(last.end.clone());
        }
        self.marks.clear();
    }

    fn advance(&mut self) {
        for m in self.marks.iter() {
            if !m.acked {
                break;
            }
            self.committed = Some(m.end.clone());
            self.committed_time = self.committed_time.max(m.max_time);
        }
        let horizon = self.committed_time.saturating_sub(self.lookback);
        while self
            .marks
            .front()
            .is_some_and(|m| m.acked && (self.lookback == 0 || m.max_time < horizon))
        {
            self.marks.pop_front();
        }
    }

    fn compact(&mut self) {
        while self.marks.len() > MAX_MARKS {
            let both_acked = self.marks.len() >= 2 && self.marks[0].acked && self.marks[1].acked;
            if !both_acked {
                return;
            }
            if let (Some(a), Some(b)) = (self.marks.pop_front(), self.marks.pop_front()) {
                self.marks.push_front(Mark {
                    seq: b.seq,
                    start: a.start,
                    end: b.end,
                    max_time: a.max_time.max(b.max_time),
                    acked: true,
                });
            }
        }
    }

    /// Everything before it was delivered.
    pub fn committed(&self) -> Option<Position> {
        self.committed.clone()
    }

    /// Where a restart after a crash reads from: the first batch not delivered, or, earlier,
    /// the first delivered batch within the lookback.
    pub fn resume(&self) -> Option<Position> {
        match self.marks.front() {
            Some(m) => Some(m.start.clone()),
            None => self.committed.clone(),
        }
    }

    /// Batches handed downstream and not delivered yet.
    pub fn in_flight(&self) -> usize {
        self.marks.iter().filter(|m| !m.acked).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::FileId;

    fn pos(offset: u64) -> Position {
        Position {
            file: FileId {
                dev: 1,
                ino: 2,
                fingerprint: 3,
                fingerprint_len: 4,
            },
            path: "audit.log".into(),
            offset,
            line: offset,
        }
    }

    #[test]
    fn committed_never_passes_an_undelivered_batch() {
        let mut t = Tracker::new(None, 0);
        let a = t.published(pos(0), pos(10), Some(1));
        let b = t.published(pos(10), pos(20), Some(2));
        t.acked(b);
        assert_eq!(t.committed(), None);
        assert_eq!(t.resume(), Some(pos(0)));
        t.acked(a);
        assert_eq!(t.committed(), Some(pos(20)));
        assert_eq!(t.resume(), Some(pos(20)));
    }

    #[test]
    fn resume_trails_by_the_lookback_until_a_clean_stop() {
        let mut t = Tracker::new(None, 100);
        for (i, time) in [0i64, 50, 120, 200].into_iter().enumerate() {
            let i = i as u64;
            let s = t.published(pos(i * 10), pos(i * 10 + 10), Some(time));
            t.acked(s);
        }
        // Committed at 40 (time 200): the batches of time >= 100 are kept.
        assert_eq!(t.committed(), Some(pos(40)));
        assert_eq!(t.resume(), Some(pos(20)));
        t.all_delivered();
        assert_eq!(t.resume(), Some(pos(40)));
    }

    #[test]
    fn the_state_file_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(StateFile::load(&path).unwrap(), None);
        let mut s = StateFile {
            version: STATE_VERSION,
            ..Default::default()
        };
        s.logs.insert(
            "/var/log/audit.log".into(),
            LogState {
                committed: Some(pos(5)),
                resume: Some(pos(1)),
                saved_at: "2024-07-15T09-00-00.000".into(),
                clean: false,
            },
        );
        s.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), Some(s));
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            StateFile::load(&path),
            Err(StateError::Invalid { .. })
        ));
    }
}
