//! Line-oriented reading of audit dumps with recovery from malformed input.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::value::RawValue;

use kubetrail_model::AuditEvent;

/// Largest multi-line JSON document (a pretty-printed `EventList`) read into memory at once.
const MAX_DOCUMENT_BYTES: usize = 256 << 20;
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
    let mut buffered = BufReader::with_capacity(
        256 << 10,
        Counting {
            inner: raw,
            count: count.clone(),
        },
    );
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
    Ok(OpenedInput {
        reader,
        progress: count,
        size,
    })
}

#[derive(Deserialize)]
struct RawList<'a> {
    #[serde(default)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

/// Re-parses a rejected audit event tracking the path, so the reason names the field
/// (`user.groups[1]: invalid type: integer…`). Only runs on the error path.
pub(crate) fn describe_error(text: &[u8]) -> String {
    let de = &mut serde_json::Deserializer::from_slice(text);
    match serde_path_to_error::deserialize::<_, AuditEvent>(de) {
        Ok(_) => "not an audit event".to_owned(),
        Err(e) if e.path().to_string() == "." => e.inner().to_string(),
        Err(e) => format!("{}: {}", e.path(), e.inner()),
    }
}

/// An iterator of audit events from one input, with malformed records reported in-line.
///
/// Yields `Ok(Ok(event))` for each event, `Ok(Err(malformed))` for each bad record, and
/// `Err(SourceError)` once if the input cannot be read further (then ends).
pub struct EventReader {
    name: String,
    input: Box<dyn BufRead + Send>,
    progress: Arc<AtomicU64>,
    size: Option<u64>,
    line: u64,
    buf: Vec<u8>,
    pending: VecDeque<Result<AuditEvent, Malformed>>,
    done: bool,
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
            line: 0,
            buf: Vec::with_capacity(64 << 10),
            pending: VecDeque::new(),
            done: false,
        })
    }

    /// Reads from any reader (gzip is not detected here; use [`EventReader::open`] for files).
    pub fn from_reader(name: &str, reader: impl BufRead + Send + 'static) -> EventReader {
        EventReader {
            name: name.to_owned(),
            input: Box::new(reader),
            progress: Arc::new(AtomicU64::new(0)),
            size: None,
            line: 0,
            buf: Vec::with_capacity(64 << 10),
            pending: VecDeque::new(),
            done: false,
        }
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

    fn malformed(
        &self,
        line: u64,
        item: Option<usize>,
        reason: impl std::fmt::Display,
    ) -> Malformed {
        let mut reason = reason.to_string();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        Malformed {
            input: self.name.clone(),
            line,
            item,
            reason,
        }
    }

    /// Reads the next line into `self.buf`; false at end of input.
    fn next_line(&mut self) -> Result<bool, SourceError> {
        self.buf.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| SourceError::Read {
                name: self.name.clone(),
                line: self.line,
                source,
            })?;
        if n > 0 {
            self.line += 1;
        }
        Ok(n > 0)
    }

    /// Decodes one JSON text starting at `line` into pending records (events, or malformed
    /// records). Fails only when the text is an incomplete JSON value: more lines are needed.
    fn decode_document(&mut self, text: &[u8], line: u64) -> Result<(), serde_json::Error> {
        match serde_json::from_slice::<AuditEvent>(text) {
            Ok(e) => {
                self.pending.push_back(Ok(e));
                return Ok(());
            }
            Err(e) if e.is_eof() => return Err(e),
            Err(_) => {
                // Not an event: a complete value at all (else keep reading lines), a list, an
                // array, or something malformed, described with the path of the bad field.
                match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
                    Err(e) if e.is_eof() => return Err(e),
                    Err(e) => {
                        let m = self.malformed(line, None, format!("not JSON: {e}"));
                        self.pending.push_back(Err(m));
                        return Ok(());
                    }
                    Ok(_) => {}
                }
                if let Some(doc) = crate::cloud::decode_cloud_document(text) {
                    self.push_cloud(doc, line);
                    return Ok(());
                }
                let items = if let Ok(list) = serde_json::from_slice::<RawList<'_>>(text) {
                    if list.kind.is_some_and(|k| k != "EventList") {
                        let m = self.malformed(
                            line,
                            None,
                            format!("not an audit event or EventList: kind {:?}", list.kind),
                        );
                        self.pending.push_back(Err(m));
                        return Ok(());
                    }
                    list.items
                } else if let Ok(array) = serde_json::from_slice::<Vec<&RawValue>>(text) {
                    array
                } else {
                    let m = self.malformed(line, None, describe_error(text));
                    self.pending.push_back(Err(m));
                    return Ok(());
                };
                for (i, item) in items.into_iter().enumerate() {
                    let rec = serde_json::from_str::<AuditEvent>(item.get()).map_err(|_| {
                        self.malformed(line, Some(i), describe_error(item.get().as_bytes()))
                    });
                    self.pending.push_back(rec);
                }
            }
        }
        Ok(())
    }

    /// Queues the items of a cloud log document (see [`crate::cloud`]); a skipped record
    /// (not a Kubernetes audit event) is reported like a malformed one, with its reason.
    fn push_cloud(&mut self, doc: crate::cloud::CloudDocument, line: u64) {
        for (i, item) in doc.items.into_iter().enumerate() {
            let rec = match item {
                crate::cloud::CloudItem::Event(e) => Ok(*e),
                crate::cloud::CloudItem::Bad(e) | crate::cloud::CloudItem::Skipped(e) => {
                    Err(self.malformed(line, Some(i), e.reason))
                }
            };
            self.pending.push_back(rec);
        }
    }

    /// Fills `pending` with at least one record, or sets `done`.
    fn fill(&mut self) -> Result<(), SourceError> {
        while self.pending.is_empty() && !self.done {
            if !self.next_line()? {
                self.done = true;
                break;
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let start = self.line;
            if start == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") {
                // A UTF-8 byte order mark (Azure blobs, Windows editors).
                self.buf.drain(..3);
            }
            let line = std::mem::take(&mut self.buf);
            match self.decode_document(&line, start) {
                Ok(()) => self.buf = line,
                Err(_) => {
                    // An incomplete JSON text: a pretty-printed document. Gather lines until it
                    // parses, fails for a reason other than running out, or grows too large.
                    let mut doc = line;
                    loop {
                        if !self.next_line()? {
                            let m = self.malformed(
                                start,
                                None,
                                "truncated JSON document at end of input",
                            );
                            self.pending.push_back(Err(m));
                            self.done = true;
                            break;
                        }
                        doc.extend_from_slice(&self.buf);
                        if doc.len() > MAX_DOCUMENT_BYTES {
                            let m = self.malformed(
                                start,
                                None,
                                format!("JSON document larger than {MAX_DOCUMENT_BYTES} bytes"),
                            );
                            self.pending.push_back(Err(m));
                            // Skip to the next line that starts a new top-level value.
                            break;
                        }
                        // decode_document only fails while the text is still incomplete.
                        if self.decode_document(&doc, start).is_ok() {
                            break;
                        }
                    }
                    doc.clear();
                    self.buf = doc;
                }
            }
        }
        Ok(())
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
    fn unreadable_inputs_are_errors() {
        let err = EventReader::open("/nonexistent/audit.log").err().unwrap();
        assert!(err.to_string().contains("/nonexistent/audit.log"));
        let dir = tempfile::tempdir().unwrap();
        assert!(EventReader::open(dir.path().to_str().unwrap()).is_err());
    }
}
