//! Line-oriented reading of audit dumps with recovery from malformed input.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kubetrail_model::AuditEvent;

use crate::decode::{Shape, decode_document};
use crate::framing::{Frame, Framer};

/// Default longest record (a line, or a pretty-printed document) read into memory: larger
/// ones are skipped and reported as malformed. Twice the webhook's default body limit, so
/// a captured webhook body always fits.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 20;
/// Longest reason kept for a malformed record.
const MAX_REASON: usize = 300;

/// An input that cannot be read at all (missing file, permission, I/O or gzip error).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input could not be opened.
    #[error("cannot open {name}")]
    Open {
        /// Path as given.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// Reading failed part-way (I/O error, corrupt gzip stream).
    #[error("cannot read {name} after line {line}")]
    Read {
        /// Path as given.
        name: String,
        /// Last line read successfully.
        line: u64,
        /// Cause.
        source: io::Error,
    },
}

/// A line (or list item) that is not a valid audit event. Reading continues after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The input's name (`-` for stdin).
    pub input: String,
    /// One-based line where the bad record starts.
    pub line: u64,
    /// Zero-based item index when the record is an item of an `EventList` or array.
    pub item: Option<usize>,
    /// Why it was rejected.
    pub reason: String,
    /// Not an error: a record of something other than the Kubernetes API (a cloud log entry
    /// of another service, a CloudWatch control message), skipped on purpose. Counted apart
    /// from malformed records.
    pub skipped: bool,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.input, self.line)?;
        if let Some(i) = self.item {
            write!(f, " item {i}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// An opened input.
pub struct OpenedInput {
    /// The decompressed bytes.
    pub reader: Box<dyn BufRead + Send>,
    /// Raw (compressed) bytes consumed so far, for progress reporting.
    pub progress: Arc<AtomicU64>,
    /// The raw size, when the input is a regular file.
    pub size: Option<u64>,
}

/// Opens a path (or `-` for stdin), transparently decompressing gzip.
pub fn open_input(name: &str) -> Result<OpenedInput, SourceError> {
    let count = Arc::new(AtomicU64::new(0));
    let (raw, size): (Box<dyn Read + Send>, Option<u64>) = if name == "-" {
        (Box::new(io::stdin()), None)
    } else {
        let open_err = |source| SourceError::Open {
            name: name.to_owned(),
            source,
        };
        let file = File::open(Path::new(name)).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory",
            )));
        }
        (Box::new(file), Some(meta.len()))
    };
    let reader = decompressing(name, raw, count.clone())?;
    Ok(OpenedInput {
        reader,
        progress: count,
        size,
    })
}

/// Buffers a raw input, counting its bytes into `count`, and inflates it when it starts with
/// the gzip magic (concatenated members included, as `gzip -c a b` writes).
fn decompressing(
    name: &str,
    raw: Box<dyn Read + Send>,
    count: Arc<AtomicU64>,
) -> Result<Box<dyn BufRead + Send>, SourceError> {
    let mut buffered = BufReader::with_capacity(FEED_BYTES, Counting { inner: raw, count });
    let magic = buffered.fill_buf().map_err(|source| SourceError::Read {
        name: name.to_owned(),
        line: 0,
        source,
    })?;
    let reader: Box<dyn BufRead + Send> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            256 << 10,
            flate2::bufread::MultiGzDecoder::new(buffered),
        ))
    } else {
        Box::new(buffered)
    };
    Ok(reader)
}

/// The most bytes framed per round of [`EventReader`]'s reading (the size of its file buffer).
const FEED_BYTES: usize = 256 << 10;

/// An iterator of audit events from one input, with malformed records reported in-line.
///
/// Yields `Ok(Ok(event))` for each event, `Ok(Err(malformed))` for each bad record, and
/// `Err(SourceError)` once if the input cannot be read further (then ends).
pub struct EventReader {
    name: String,
    input: Box<dyn BufRead + Send>,
    progress: Arc<AtomicU64>,
    size: Option<u64>,
    framer: Framer,
    frames: Vec<Frame>,
    pending: VecDeque<Result<AuditEvent, Malformed>>,
    done: bool,
    /// Nothing read yet: a UTF-8 byte order mark (Azure blobs, Windows editors) is skipped.
    at_start: bool,
}

impl EventReader {
    /// Opens a path, or `-` for stdin.
    pub fn open(name: &str) -> Result<EventReader, SourceError> {
        let OpenedInput {
            reader,
            progress,
            size,
        } = open_input(name)?;
        Ok(EventReader {
            name: name.to_owned(),
            input: reader,
            progress,
            size,
            framer: Framer::new(DEFAULT_MAX_RECORD_BYTES),
            frames: Vec::new(),
            pending: VecDeque::new(),
            done: false,
            at_start: true,
        })
    }

    /// Reads raw bytes from any reader, inflating gzip as [`EventReader::open`] does for files
    /// (what the fuzz target `decode_input` drives).
    pub fn from_raw(
        name: &str,
        raw: impl Read + Send + 'static,
    ) -> Result<EventReader, SourceError> {
        let progress = Arc::new(AtomicU64::new(0));
        let input = decompressing(name, Box::new(raw), progress.clone())?;
        let mut reader = EventReader::from_reader(name, input);
        reader.progress = progress;
        Ok(reader)
    }

    /// Reads from any reader (gzip is not detected here; use [`EventReader::open`] for files
    /// or [`EventReader::from_raw`]).
    pub fn from_reader(name: &str, reader: impl BufRead + Send + 'static) -> EventReader {
        EventReader {
            name: name.to_owned(),
            input: Box::new(reader),
            progress: Arc::new(AtomicU64::new(0)),
            size: None,
            framer: Framer::new(DEFAULT_MAX_RECORD_BYTES),
            frames: Vec::new(),
            pending: VecDeque::new(),
            done: false,
            at_start: true,
        }
    }

    /// Refuses records (a line, or a multi-line document) longer than `max` bytes: such a
    /// record is skipped without being held in memory and reported as malformed. Default
    /// [`DEFAULT_MAX_RECORD_BYTES`].
    pub fn with_max_record_bytes(mut self, max: usize) -> EventReader {
        self.framer = Framer::new(max.max(1));
        self
    }

    /// The input's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raw bytes consumed so far (compressed bytes for gzip input), shared for progress bars.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// The raw size of the input, when it is a regular file.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Decodes one framed record into pending records.
    fn decode_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Broken { line, reason } => {
                let m = malformed(&self.name, line, None, reason);
                self.pending.push_back(Err(m));
            }
            Frame::Document { line, text } => {
                decode_record_into(&self.name, line, &text, &mut self.pending);
            }
        }
    }

    /// Fills `pending` with at least one record, or sets `done`.
    fn fill(&mut self) -> Result<(), SourceError> {
        while self.pending.is_empty() && !self.done {
            let chunk = self.input.fill_buf().map_err(|source| SourceError::Read {
                name: self.name.clone(),
                line: self.framer.line().saturating_sub(1),
                source,
            })?;
            if std::mem::take(&mut self.at_start) && chunk.starts_with(b"\xEF\xBB\xBF") {
                self.input.consume(3);
                continue;
            }
            if chunk.is_empty() {
                self.framer.end(&mut self.frames);
                self.done = true;
            } else {
                // At most FEED_BYTES per round, whatever the reader buffers (a `Cursor` over a
                // whole dump hands all of it at once): the records framed and decoded ahead of
                // the consumer stay bounded.
                let n = chunk.len().min(FEED_BYTES);
                self.framer.feed(&chunk[..n], &mut self.frames);
                self.input.consume(n);
            }
            let frames = std::mem::take(&mut self.frames);
            for f in frames {
                self.decode_frame(f);
            }
        }
        Ok(())
    }
}

/// A malformed record of `input` at `line`, its reason escaped (no control characters or bidi
/// overrides from the input) and cut to a readable length.
fn malformed(
    input: &str,
    line: u64,
    item: Option<usize>,
    reason: impl std::fmt::Display,
) -> Malformed {
    // Reasons quote the input (serde names the bad value): never let its control
    // characters reach a terminal raw.
    let mut reason: String = reason
        .to_string()
        .chars()
        .flat_map(|c| {
            let unsafe_char =
                c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            let escaped: Box<dyn Iterator<Item = char>> = if unsafe_char {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            };
            escaped
        })
        .collect();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    Malformed {
        input: input.to_owned(),
        line,
        item,
        reason,
        skipped: false,
    }
}

/// Decodes one complete record (a JSON line, or a whole document) of `input` starting at
/// `line` with the decoder replay and the webhook use: its events and its malformed (or
/// skipped) items, in item order. For sources that frame records themselves (`follow`
/// reads whole lines as a live log grows).
pub fn decode_record(input: &str, line: u64, text: &[u8]) -> Vec<Result<AuditEvent, Malformed>> {
    let mut out = VecDeque::new();
    decode_record_into(input, line, text, &mut out);
    out.into()
}

fn decode_record_into(
    input: &str,
    line: u64,
    text: &[u8],
    pending: &mut VecDeque<Result<AuditEvent, Malformed>>,
) {
    let doc = decode_document(text);
    if let Shape::Invalid(reason) = doc.shape {
        pending.push_back(Err(malformed(input, line, None, reason)));
        return;
    }
    let skipped = doc.skipped;
    let item_error = |x: crate::decode::ItemError| {
        let mut m = malformed(input, line, Some(x.index), x.reason);
        m.skipped = skipped.binary_search(&x.index).is_ok();
        m
    };
    // Events and item errors in item order.
    let mut errors = doc.errors.into_iter().peekable();
    let mut index = 0;
    for e in doc.events {
        while errors.peek().is_some_and(|x| x.index == index) {
            if let Some(x) = errors.next() {
                pending.push_back(Err(item_error(x)));
            }
            index += 1;
        }
        pending.push_back(Ok(e));
        index += 1;
    }
    for x in errors {
        pending.push_back(Err(item_error(x)));
    }
}

impl Iterator for EventReader {
    type Item = Result<Result<AuditEvent, Malformed>, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            self.done = true;
            self.pending.clear();
            return Some(Err(e));
        }
        self.pending.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const E1: &str = r#"{"level":"Metadata","auditID":"1","stage":"ResponseComplete","requestURI":"/","verb":"get","user":{}}"#;
    const E2: &str = r#"{"level":"Metadata","auditID":"2","stage":"ResponseComplete","requestURI":"/","verb":"get","user":{}}"#;

    /// A reader that hands its whole input at once (a `Cursor` over a 10 MB dump) is still
    /// framed and decoded a buffer's worth at a time: what waits ahead of the consumer stays
    /// bounded, and every event still comes, in order.
    #[test]
    fn a_reader_buffering_everything_is_decoded_a_buffer_at_a_time() {
        let lines = 100_000;
        let text: String = (0..lines)
            .map(|i| E1.replace("\"1\"", &format!("\"{i}\"")) + "\n")
            .collect();
        let per_buffer = FEED_BYTES / E1.len() + 1;
        let mut reader = EventReader::from_reader("t", io::Cursor::new(text.into_bytes()));
        let first = reader.next().unwrap().unwrap().unwrap();
        assert_eq!(first.audit_id, "0");
        assert!(
            reader.pending.len() <= per_buffer,
            "{} decoded ahead (one buffer holds {per_buffer})",
            reader.pending.len()
        );
        let mut next = 1;
        for r in reader {
            assert_eq!(r.unwrap().unwrap().audit_id, next.to_string());
            next += 1;
        }
        assert_eq!(next, lines);
    }

    fn read(text: &str) -> (Vec<String>, Vec<Malformed>) {
        let mut ids = vec![];
        let mut bad = vec![];
        for r in EventReader::from_reader("t", io::Cursor::new(text.as_bytes().to_vec())) {
            match r.unwrap() {
                Ok(e) => ids.push(e.audit_id),
                Err(m) => bad.push(m),
            }
        }
        (ids, bad)
    }

    #[test]
    fn json_lines_with_bad_lines_in_between() {
        let (ids, bad) = read(&format!("{E1}\n\nnot json\n{{\"kind\":0}}\n{E2}\r\n"));
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].line, bad[1].line), (3, 4));
        assert!(
            bad[1].reason.starts_with("kind: invalid type: integer"),
            "{}",
            bad[1].reason
        );
    }

    #[test]
    fn event_list_lines_and_pretty_documents() {
        let list = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{E1},{{"verb":1}},{E2}]}}"#
        );
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&list).unwrap(),
        )
        .unwrap();
        let text = format!("{list}\n{pretty}\n[{E1},\n{E2}]\n");
        let (ids, bad) = read(&text);
        assert_eq!(ids, ["1", "2", "1", "2", "1", "2"]);
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].line, bad[0].item), (1, Some(1)));
        assert_eq!((bad[1].line, bad[1].item), (2, Some(1)));
    }

    #[test]
    fn truncated_document_is_reported_not_fatal() {
        let (ids, bad) = read(&format!("{E1}\n{{\n  \"items\": [\n"));
        assert_eq!(ids, ["1"]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 2);
        assert!(bad[0].reason.contains("truncated"));
    }

    #[test]
    fn broken_pretty_document_resumes_after_it() {
        let (ids, bad) = read(&format!("{{\n  \"a\": ,\n}}\n{E2}\n"));
        assert_eq!(ids, ["2"]);
        assert_eq!(bad[0].line, 1);
    }

    #[test]
    fn gzip_is_detected_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log"); // no .gz suffix on purpose
        let mut gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        writeln!(gz, "{E1}\n{E2}").unwrap();
        gz.finish().unwrap();
        let r = EventReader::open(path.to_str().unwrap()).unwrap();
        let progress = r.progress();
        let ids: Vec<_> = r.map(|r| r.unwrap().unwrap().audit_id).collect();
        assert_eq!(ids, ["1", "2"]);
        assert!(progress.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn raw_readers_are_inflated_like_files() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        writeln!(gz, "{E1}").unwrap();
        let mut twice = gz.finish().unwrap();
        let second = twice.clone();
        twice.extend_from_slice(&second); // two gzip members, as `cat a.gz b.gz`
        let r = EventReader::from_raw("mem", io::Cursor::new(twice)).unwrap();
        let progress = r.progress();
        let ids: Vec<_> = r.map(|r| r.unwrap().unwrap().audit_id).collect();
        assert_eq!(ids, ["1", "1"]);
        assert!(progress.load(Ordering::Relaxed) > 0);
        let plain = EventReader::from_raw("mem", io::Cursor::new(format!("{E2}\n"))).unwrap();
        let ids: Vec<_> = plain.map(|r| r.unwrap().unwrap().audit_id).collect();
        assert_eq!(ids, ["2"]);
    }

    #[test]
    fn unreadable_inputs_are_errors() {
        let err = EventReader::open("/nonexistent/audit.log").err().unwrap();
        assert!(err.to_string().contains("/nonexistent/audit.log"));
        let dir = tempfile::tempdir().unwrap();
        assert!(EventReader::open(dir.path().to_str().unwrap()).is_err());
    }
}
