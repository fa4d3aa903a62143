//! Following a live audit log as kube-apiserver writes it (`kubetrail follow`).
//!
//! kube-apiserver's log backend (`--audit-log-path`) appends one JSON line per event to
//! `audit.log` and rotates it with lumberjack: the file is renamed to
//! `audit-<UTC stamp>.log` (e.g. `audit-2024-07-15T09-00-00.000.log`), a new `audit.log` is
//! created, and with `--audit-log-compress` the renamed file is later gzipped
//! (`….log.gz` written, `….log` removed). Other setups rotate by copy and truncate. A
//! [`Tailer`] follows one such log:
//!
//! * it yields only **complete lines**: a last line without its newline (the writer is
//!   mid-write) waits in a buffer bounded by the record limit — never read as malformed;
//! * **rotation** is seen when the live path names another inode: the old file (still open)
//!   is read to its end, then every backup rotated after it (found by name stamp), then the
//!   new live file from its start;
//! * **truncation** (copytruncate) is seen when the file became shorter than what was read:
//!   it is read again from its start, and counted;
//! * a [`Position`] says where reading stands: the file's **identity** (device + inode, and a
//!   fingerprint of its first bytes, since inodes are reused and gzip makes a new inode of
//!   the same content) and the offset in its (decompressed) content. [`Tailer::resume`]
//!   finds that file again — the live one, or a backup it was rotated into, compressed or
//!   not — and continues after it, through the newer backups, to the live file.
//!
//! The [`state`] module keeps positions in a small state file and tracks which batches were
//! acknowledged downstream.

pub mod state;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kubetrail_model::AuditEvent;

use crate::reader::{Malformed, decode_record};

/// Bytes of a file's content hashed into its fingerprint (fewer while the file is shorter).
pub const FINGERPRINT_BYTES: usize = 1024;
/// Raw bytes read per [`Tailer::poll`] at most: bounds a chunk's memory.
const READ_CHUNK: usize = 1 << 20;

/// Why a log cannot be followed (I/O errors other than a missing live file).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// A file could not be opened, read or listed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Cause.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FollowError + '_ {
    move |source| FollowError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Which file a position is in: device and inode, and a hash of its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// `st_dev` of the file when it was read.
    pub dev: u64,
    /// `st_ino` of the file when it was read.
    pub ino: u64,
    /// XXH3 of the first `fingerprint_len` bytes of the (decompressed) content.
    pub fingerprint: u64,
    /// How many bytes the fingerprint covers (up to [`FINGERPRINT_BYTES`]).
    pub fingerprint_len: u32,
}

/// Where reading of a log stands: after `offset` bytes (of decompressed content) of `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The file's identity.
    pub file: FileId,
    /// The path it had when read (a hint for people; files are found by identity).
    pub path: String,
    /// Bytes of content consumed (always at a line boundary).
    pub offset: u64,
    /// Lines consumed (so malformed lines keep their numbers after a restart).
    pub line: u64,
}

/// `follow:` in the config file: audit log files followed as they are written (`kubetrail
/// follow`, and inside `serve` and `receive`). The command builds one [`Tailer`] per path.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FollowConfig {
    /// The live log files (kube-apiserver's `--audit-log-path`), one per API server. Empty:
    /// no file is followed.
    pub paths: Vec<PathBuf>,
    /// Where the positions are kept across restarts (a small JSON file, written atomically).
    /// Without it, every start begins at `start_at`.
    pub state_file: Option<PathBuf>,
    /// How often a log that had nothing new is looked at again (new lines, rotation,
    /// truncation).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often the state file is rewritten while running.
    #[serde(with = "humantime_serde")]
    pub state_interval: Duration,
    /// Where a log without a saved position is read from: `beginning` (of the live file) or
    /// `end`.
    pub start_at: StartAt,
    /// Event time re-read after a crash to rebuild open families (default: the window plus
    /// the linger; 0 towards Kafka, whose consumers do their own lookback).
    #[serde(with = "humantime_serde")]
    pub lookback: Option<Duration>,
}

impl Default for FollowConfig {
    fn default() -> Self {
        FollowConfig {
            paths: Vec::new(),
            state_file: None,
            poll_interval: Duration::from_millis(200),
            state_interval: Duration::from_secs(1),
            start_at: StartAt::Beginning,
            lookback: None,
        }
    }
}

/// Where a log is read from when there is no saved position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The live file from its first line (backups are not read).
    #[default]
    Beginning,
    /// Only lines written from now on.
    End,
}

/// Counters of one log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Rotations followed.
    pub rotations: u64,
    /// Truncations seen (the file was read again from its start).
    pub truncations: u64,
    /// Times the file of a saved position was not found (rotated away and deleted while
    /// kubetrail was stopped): what it held after the position is lost.
    pub positions_lost: u64,
}

/// Complete lines read in one poll.
#[derive(Debug)]
pub struct Chunk {
    /// Events and malformed lines, in file order.
    pub records: Vec<Result<AuditEvent, Malformed>>,
    /// Where the chunk starts: reading from here reads it again.
    pub start: Position,
    /// Where it ends: reading from here reads what follows it.
    pub end: Position,
}

fn fingerprint(head: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(head)
}

fn is_gzip(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < 2 {
        let m = f.read(&mut magic[n..])?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// Opens a file's content: gzip is inflated (detected by its magic bytes).
fn open_content(path: &Path) -> io::Result<(File, Box<dyn Read + Send>, bool)> {
    let file = File::open(path)?;
    let gz = is_gzip(path)?;
    let reader: Box<dyn Read + Send> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(file.try_clone()?))
    } else {
        Box::new(file.try_clone()?)
    };
    Ok((file, reader, gz))
}

/// The first `len` bytes of a file's content (fewer if it is shorter).
fn read_head(path: &Path, len: usize) -> io::Result<Vec<u8>> {
    let (_, reader, _) = open_content(path)?;
    let mut head = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Whether the file at `path` is the one `id` names: same content fingerprint (a gzipped
/// backup has a new inode but the same content); for an empty fingerprint, the same inode.
fn same_file(path: &Path, id: &FileId) -> bool {
    if id.fingerprint_len == 0 {
        return std::fs::metadata(path).is_ok_and(|m| m.dev() == id.dev && m.ino() == id.ino);
    }
    match read_head(path, id.fingerprint_len as usize) {
        Ok(head) => {
            head.len() == id.fingerprint_len as usize && fingerprint(&head) == id.fingerprint
        }
        Err(_) => false,
    }
}

/// A backup of the live file: its lumberjack stamp and path. When a stamp exists both
/// plain and gzipped (compression in progress), the plain file wins: the `.gz` may be
/// partial.
fn backups(live: &Path) -> Result<Vec<(String, PathBuf)>, FollowError> {
    let dir = match live.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let live_name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut found: std::collections::BTreeMap<String, PathBuf> = Default::default();
    let entries = std::fs::read_dir(&dir).map_err(io_err(&dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((stamp, of)) = crate::inputs::rotated_name(&name) else {
            continue;
        };
        if of != live_name {
            continue;
        }
        let path = entry.path();
        let plain = !name.ends_with(".gz");
        match found.get(&stamp) {
            Some(_) if !plain => {}
            _ => {
                found.insert(stamp, path);
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// The file being read.
struct Open {
    path: PathBuf,
    file: File,
    reader: Box<dyn Read + Send>,
    gz: bool,
    dev: u64,
    ino: u64,
    /// At the live path (else a backup, read to its end and closed).
    live: bool,
    /// Content bytes in complete lines consumed.
    offset: u64,
    /// Content bytes read (`offset` + the partial line, + what an over-long line skipped).
    read: u64,
    /// Lines consumed.
    line: u64,
    /// The first bytes of the content, for the fingerprint.
    head: Vec<u8>,
    /// The partial last line.
    partial: Vec<u8>,
    /// Inside a line longer than the record limit: dropping bytes until its newline.
    skipping: bool,
    /// The read buffer, reused (at most 1 MiB).
    buf: Vec<u8>,
}

impl Open {
    fn at(path: &Path, live: bool) -> Result<Option<Open>, FollowError> {
        let (file, reader, gz) = match open_content(path) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let meta = file.metadata().map_err(io_err(path))?;
        Ok(Some(Open {
            path: path.to_path_buf(),
            file,
            reader,
            gz,
            dev: meta.dev(),
            ino: meta.ino(),
            live,
            offset: 0,
            read: 0,
            line: 0,
            head: Vec::new(),
            partial: Vec::new(),
            skipping: false,
            buf: Vec::new(),
        }))
    }

    fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
            fingerprint: fingerprint(&self.head),
            fingerprint_len: self.head.len() as u32,
        }
    }

    fn position(&self) -> Position {
        Position {
            file: self.id(),
            path: self.path.display().to_string(),
            offset: self.offset,
            line: self.line,
        }
    }

    /// Skips `n` bytes of content (a resumed position), keeping the head for the fingerprint.
    fn skip_to(&mut self, n: u64, line: u64) -> Result<(), FollowError> {
        self.head = self.read_own_head()?;
        if self.gz {
            let copied = io::copy(&mut (&mut self.reader).take(n), &mut io::sink())
                .map_err(io_err(&self.path))?;
            if copied < n {
                return Err(io_err(&self.path)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the saved position {n} is past the end of the content ({copied})"),
                )));
            }
        } else {
            self.file
                .seek(SeekFrom::Start(n))
                .map_err(io_err(&self.path))?;
        }
        self.offset = n;
        self.read = n;
        self.line = line;
        Ok(())
    }

    /// Reads up to [`READ_CHUNK`] bytes, decoding the complete lines into `out`. Returns the
    /// bytes read (0 at the end of the content for now).
    fn read_some(
        &mut self,
        max_record: usize,
        out: &mut Vec<Result<AuditEvent, Malformed>>,
    ) -> Result<usize, FollowError> {
        let size = READ_CHUNK.min(max_record.max(4096) * 2);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(size, 0);
        let n = loop {
            match self.reader.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf = buf;
                    return Err(io_err(&self.path)(e));
                }
            }
        };
        let result = self.consume_read(&buf[..n], max_record, out);
        self.buf = buf;
        result
    }

    /// Takes `n` freshly read bytes: the fingerprint head, complete lines, the partial line.
    fn consume_read(
        &mut self,
        data: &[u8],
        max_record: usize,
        out: &mut Vec<Result<AuditEvent, Malformed>>,
    ) -> Result<usize, FollowError> {
        let n = data.len();
        if self.head.len() < FINGERPRINT_BYTES {
            if self.head.len() as u64 == self.read {
                let take = (FINGERPRINT_BYTES - self.head.len()).min(n);
                self.head.extend_from_slice(&data[..take]);
            } else if !self.gz {
                // Started past the head (a resumed position in a file that was shorter than
                // the fingerprint then): read the head again.
                self.head = self.read_own_head()?;
            }
        }
        self.read += n as u64;
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = &after[1..];
            self.line += 1;
            if std::mem::take(&mut self.skipping) {
                // The end of an over-long line, reported when it began.
                self.partial.clear();
            } else if self.partial.len() + line.len() > max_record {
                self.partial = Vec::new();
                out.push(Err(self.too_long(self.line, max_record)));
            } else if self.partial.is_empty() {
                self.decode(line, out);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.decode(&whole, out);
            }
            self.offset = self.read - rest.len() as u64;
        }
        if !rest.is_empty() && !self.skipping {
            if self.partial.len() + rest.len() > max_record {
                out.push(Err(self.too_long(self.line + 1, max_record)));
                self.partial = Vec::new();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        Ok(n)
    }

    /// The first bytes of the open file's content (through this handle: the path may
    /// name another file by now).
    fn read_own_head(&self) -> Result<Vec<u8>, FollowError> {
        use std::os::unix::fs::FileExt as _;
        let err = io_err(&self.path);
        if self.gz {
            // A backup: complete and renamed at most, never replaced.
            return read_head(&self.path, FINGERPRINT_BYTES).map_err(err);
        }
        let mut head = vec![0u8; FINGERPRINT_BYTES];
        let mut got = 0;
        while got < head.len() {
            match self.file.read_at(&mut head[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        head.truncate(got);
        Ok(head)
    }

    /// Whether the file was truncated, or truncated and written again, under us: shorter
    /// than what was read, or its first bytes are no longer the ones read.
    fn replaced(&self) -> Result<bool, FollowError> {
        use std::os::unix::fs::FileExt as _;
        let len = self.file.metadata().map_err(io_err(&self.path))?.len();
        if len < self.read {
            return Ok(true);
        }
        if self.head.is_empty() {
            return Ok(false);
        }
        let mut now = vec![0u8; self.head.len()];
        let mut got = 0;
        while got < now.len() {
            match self.file.read_at(&mut now[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&self.path)(e)),
            }
        }
        Ok(got < now.len() || now != self.head)
    }

    fn too_long(&self, line: u64, max_record: usize) -> Malformed {
        Malformed {
            input: self.path.display().to_string(),
            line,
            item: None,
            reason: format!("record longer than {max_record} bytes skipped"),
            skipped: false,
        }
    }

    fn decode(&self, line: &[u8], out: &mut Vec<Result<AuditEvent, Malformed>>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        out.extend(decode_record(
            &self.path.display().to_string(),
            self.line,
            line,
        ));
    }

    /// The file is complete (a backup, or rotated away): its last line, if it has no
    /// newline, is a record too.
    fn finish(&mut self, out: &mut Vec<Result<AuditEvent, Malformed>>) {
        if !self.partial.is_empty() && !self.skipping {
            self.line += 1;
            let last = std::mem::take(&mut self.partial);
            self.decode(&last, out);
        }
        self.partial.clear();
        self.skipping = false;
        self.offset = self.read;
    }
}

/// Follows one audit log (the live path and its backups). Synchronous: call
/// [`poll`](Tailer::poll) from a blocking thread, again after a pause when it returns
/// `None`.
pub struct Tailer {
    live: PathBuf,
    max_record: usize,
    cur: Option<Open>,
    /// Reading backups in order: the stamp of the last one opened (the next is newer).
    after_stamp: Option<String>,
    /// A fresh start at the end of the live file (no saved position, `StartAt::End`).
    start_at_end: bool,
    stats: TailStats,
    caught_up: bool,
}

impl Tailer {
    /// Follows `live` from a saved position, or (none) from `start`. `saved_at` is when the
    /// position was saved, as a lumberjack stamp (`2006-01-02T15-04-05.000`, UTC): if the
    /// position's file is gone, the backups rotated after it are read.
    pub fn resume(
        live: &Path,
        position: Option<&Position>,
        saved_at: Option<&str>,
        start: StartAt,
        max_record: usize,
    ) -> Result<Tailer, FollowError> {
        let mut t = Tailer {
            live: live.to_path_buf(),
            max_record: max_record.max(1),
            cur: None,
            after_stamp: None,
            start_at_end: false,
            stats: TailStats::default(),
            caught_up: false,
        };
        let Some(pos) = position else {
            t.start_at_end = start == StartAt::End;
            if t.start_at_end {
                // "The end" is now, not the first poll.
                t.open_next()?;
            }
            return Ok(t);
        };
        // The live file, else a backup it was rotated into (newest first).
        if same_file(live, &pos.file)
            && let Some(mut open) = Open::at(live, true)?
        {
            {
                let len = open.file.metadata().map_err(io_err(live))?.len();
                if !open.gz && len < pos.offset {
                    t.stats.truncations += 1;
                    tracing::warn!(path = %live.display(), offset = pos.offset, len, "the audit log was truncated while kubetrail was stopped: reading it from its start");
                } else {
                    open.skip_to(pos.offset, pos.line)?;
                }
                t.cur = Some(open);
                return Ok(t);
            }
        }
        let list = backups(live)?;
        for (stamp, path) in list.iter().rev() {
            if same_file(path, &pos.file)
                && let Some(mut open) = Open::at(path, false)?
            {
                {
                    open.skip_to(pos.offset, pos.line)?;
                    t.cur = Some(open);
                    t.after_stamp = Some(stamp.clone());
                    return Ok(t);
                }
            }
        }
        t.stats.positions_lost += 1;
        let since = saved_at.unwrap_or("");
        tracing::error!(
            path = %pos.path,
            offset = pos.offset,
            "the file of the saved position is gone (rotated and deleted while kubetrail was stopped): what it held after the position is lost; reading the backups rotated since {since} and the live file"
        );
        // Backups strictly newer than the save: `after_stamp` is exclusive.
        t.after_stamp = Some(
            list.iter()
                .map(|(s, _)| s.clone())
                .rfind(|s| s.as_str() < since)
                .unwrap_or_default(),
        );
        Ok(t)
    }

    /// The live path.
    pub fn path(&self) -> &Path {
        &self.live
    }

    /// Counters.
    pub fn stats(&self) -> &TailStats {
        &self.stats
    }

    /// Whether the last poll found nothing more to read (the live file's end reached).
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// The position after everything consumed so far (`None` before anything was opened).
    pub fn position(&self) -> Option<Position> {
        self.cur.as_ref().map(Open::position)
    }

    /// Opens the next file: the oldest backup newer than `after_stamp` when reading through
    /// backups, else the live file. `false` when there is nothing to open (no live file yet).
    fn open_next(&mut self) -> Result<bool, FollowError> {
        if let Some(after) = self.after_stamp.clone() {
            let next = backups(&self.live)?
                .into_iter()
                .find(|(s, _)| s.as_str() > after.as_str());
            if let Some((stamp, path)) = next {
                self.after_stamp = Some(stamp);
                if let Some(open) = Open::at(&path, false)? {
                    self.cur = Some(open);
                    return Ok(true);
                }
                // Gone between listing and opening (compressed meanwhile): list again.
                self.after_stamp = Some(after);
                return Ok(false);
            }
            self.after_stamp = None;
        }
        let Some(mut open) = Open::at(&self.live, true)? else {
            return Ok(false);
        };
        if std::mem::take(&mut self.start_at_end) && !open.gz {
            let len = open.file.metadata().map_err(io_err(&self.live))?.len();
            // Start after the last complete line: a partial one is the writer's, mid-write.
            let mut at = len;
            if len > 0 {
                let mut back = vec![0u8; (len.min(self.max_record as u64)) as usize];
                let from = len - back.len() as u64;
                open.file
                    .seek(SeekFrom::Start(from))
                    .map_err(io_err(&self.live))?;
                open.file
                    .read_exact(&mut back)
                    .map_err(io_err(&self.live))?;
                at = match back.iter().rposition(|&b| b == b'\n') {
                    Some(i) => from + i as u64 + 1,
                    None => from,
                };
            }
            open.skip_to(at, 0)?;
        }
        self.cur = Some(open);
        Ok(true)
    }

    /// Reads what is new: `Some(chunk)` (possibly with no records, when only blank lines or
    /// part of a line were read), or `None` when there is nothing new for now.
    pub fn poll(&mut self) -> Result<Option<Chunk>, FollowError> {
        let mut records = Vec::new();
        loop {
            if self.cur.is_none() && !self.open_next()? {
                self.caught_up = true;
                return Ok(None);
            }
            let Some(cur) = self.cur.as_mut() else {
                continue;
            };
            if cur.live && !cur.gz && cur.replaced()? {
                self.stats.truncations += 1;
                tracing::warn!(path = %self.live.display(), read = cur.read, "the audit log was truncated (copytruncate?): reading it again from its start");
                self.cur = None;
                continue;
            }
            let start = cur.position();
            let n = cur.read_some(self.max_record, &mut records)?;
            if n > 0 {
                self.caught_up = false;
                return Ok(Some(Chunk {
                    records,
                    start,
                    end: cur.position(),
                }));
            }
            if !cur.live {
                // A backup is complete: its last line too.
                cur.finish(&mut records);
                let end = cur.position();
                self.cur = None;
                if !records.is_empty() {
                    return Ok(Some(Chunk {
                        records,
                        start,
                        end,
                    }));
                }
                continue;
            }
            match std::fs::metadata(&self.live) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Renamed, the new file not created yet.
                    self.caught_up = true;
                    return Ok(None);
                }
                Err(e) => return Err(io_err(&self.live)(e)),
                Ok(m) if (m.dev(), m.ino()) != (cur.dev, cur.ino) => {
                    // Rotated. Whatever was written before the rename is read first (the
                    // next polls); then the file is complete.
                    if cur.read_some(self.max_record, &mut records)? > 0 {
                        self.caught_up = false;
                        return Ok(Some(Chunk {
                            records,
                            start,
                            end: cur.position(),
                        }));
                    }
                    cur.finish(&mut records);
                    let end = cur.position();
                    let old = cur.id();
                    let (dev, ino) = (cur.dev, cur.ino);
                    self.stats.rotations += 1;
                    // Where did it go? Its backup's stamp: the backups after it come next.
                    let list = backups(&self.live)?;
                    let mine = list.iter().find(|(_, p)| {
                        std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino))
                            || same_file(p, &old)
                    });
                    self.after_stamp = mine.map(|(s, _)| s.clone());
                    tracing::info!(path = %self.live.display(), rotated_to = ?mine.map(|(_, p)| p), "audit log rotated");
                    self.cur = None;
                    if !records.is_empty() {
                        return Ok(Some(Chunk {
                            records,
                            start,
                            end,
                        }));
                    }
                }
                Ok(_) => {
                    self.caught_up = true;
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubetrail_testkit::{append, truncate};
    use std::io::Write;

    fn ev(id: &str) -> String {
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{id}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/default/pods/{id}","verb":"create","user":{{"username":"u"}},"objectRef":{{"resource":"pods","namespace":"default","name":"{id}","apiVersion":"v1"}},"stageTimestamp":"2024-07-15T09:00:00.000000Z"}}"#
        )
    }

    /// Polls until nothing is new; the audit IDs and malformed lines read.
    fn drain(t: &mut Tailer) -> (Vec<String>, Vec<Malformed>) {
        let (mut ids, mut bad) = (vec![], vec![]);
        while let Some(c) = t.poll().unwrap() {
            for r in c.records {
                match r {
                    Ok(e) => ids.push(e.audit_id),
                    Err(m) => bad.push(m),
                }
            }
        }
        (ids, bad)
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let line = ev("a");
        append(&log, &format!("{}\n{}", ev("0"), &line[..40]));
        let mut t = Tailer::resume(&log, None, None, StartAt::Beginning, 1 << 20).unwrap();
        assert_eq!(drain(&mut t), (vec!["0".to_owned()], vec![]));
        assert!(t.caught_up());
        append(&log, &format!("{}\n", &line[40..]));
        assert_eq!(drain(&mut t), (vec!["a".to_owned()], vec![]));
        assert_eq!(t.position().unwrap().line, 2);
    }

    #[test]
    fn rotation_by_rename_then_gzip_is_followed_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        append(&log, &format!("{}\n{}\n", ev("1"), ev("2")));
        let mut t = Tailer::resume(&log, None, None, StartAt::Beginning, 1 << 20).unwrap();
        assert_eq!(drain(&mut t).0, ["1", "2"]);
        let saved = t.position().unwrap();
        // Written, rotated, and written again while nobody reads.
        append(&log, &format!("{}\n", ev("3")));
        let b1 = dir.path().join("audit-2024-07-15T09-00-00.000.log");
        std::fs::rename(&log, &b1).unwrap();
        append(&log, &format!("{}\n", ev("4")));
        let b2 = dir.path().join("audit-2024-07-15T10-00-00.000.log");
        std::fs::rename(&log, &b2).unwrap();
        append(&log, &format!("{}\n", ev("5")));
        // The live tailer sees the rotation and reads the intermediate backup too.
        assert_eq!(drain(&mut t).0, ["3", "4", "5"]);
        assert_eq!(t.stats().rotations, 1);
        // The first backup is compressed (lumberjack: .gz written, .log removed): a resume
        // from the saved position finds it by its content.
        let gz = dir.path().join("audit-2024-07-15T09-00-00.000.log.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(&std::fs::read(&b1).unwrap()).unwrap();
        enc.finish().unwrap();
        std::fs::remove_file(&b1).unwrap();
        let mut r = Tailer::resume(&log, Some(&saved), None, StartAt::Beginning, 1 << 20).unwrap();
        assert_eq!(drain(&mut r).0, ["3", "4", "5"]);
    }

    #[test]
    fn truncation_is_read_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        append(&log, &format!("{}\n{}\n", ev("1"), ev("2")));
        let mut t = Tailer::resume(&log, None, None, StartAt::Beginning, 1 << 20).unwrap();
        assert_eq!(drain(&mut t).0, ["1", "2"]);
        truncate(&log);
        append(&log, &format!("{}\n", ev("3")));
        assert_eq!(drain(&mut t).0, ["3"]);
        assert_eq!(t.stats().truncations, 1);
        // Truncated and written again past the old length before the next look.
        truncate(&log);
        append(&log, &format!("{}\n{}\n{}\n", ev("4"), ev("5"), ev("6")));
        assert_eq!(drain(&mut t).0, ["4", "5", "6"]);
        assert_eq!(t.stats().truncations, 2);
    }

    #[test]
    fn start_at_end_skips_what_is_there_and_a_line_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let line = ev("2");
        append(&log, &format!("{}\n{}", ev("1"), &line[..30]));
        let mut t = Tailer::resume(&log, None, None, StartAt::End, 1 << 20).unwrap();
        // The line being written when kubetrail started is read once complete.
        append(&log, &format!("{}\n{}\n", &line[30..], ev("3")));
        assert_eq!(
            drain(&mut t),
            (vec!["2".to_owned(), "3".to_owned()], vec![])
        );
    }

    #[test]
    fn over_long_and_malformed_lines_are_reported_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        append(
            &log,
            &format!("{}\nnot json\n{}\n{}\n", ev("1"), "x".repeat(5000), ev("2")),
        );
        let mut t = Tailer::resume(&log, None, None, StartAt::Beginning, 2000).unwrap();
        let (ids, bad) = drain(&mut t);
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(bad.iter().map(|m| m.line).collect::<Vec<_>>(), [2, 3]);
        assert!(
            bad[1].reason.contains("longer than 2000"),
            "{}",
            bad[1].reason
        );
    }

    #[test]
    fn a_reused_inode_with_other_content_is_not_resumed_into() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        append(&log, &format!("{}\n", ev("1")));
        let mut t = Tailer::resume(&log, None, None, StartAt::Beginning, 1 << 20).unwrap();
        drain(&mut t);
        let saved = t.position().unwrap();
        // Same path, possibly the same inode, other first bytes.
        std::fs::remove_file(&log).unwrap();
        append(&log, &format!("{}\n{}\n", ev("7"), ev("8")));
        let mut r = Tailer::resume(
            &log,
            Some(&saved),
            Some("9999"),
            StartAt::Beginning,
            1 << 20,
        )
        .unwrap();
        assert_eq!(drain(&mut r).0, ["7", "8"]);
        assert_eq!(r.stats().positions_lost, 1);
    }
}
