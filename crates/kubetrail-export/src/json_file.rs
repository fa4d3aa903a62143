//! OTLP/JSON lines: the OpenTelemetry Collector file exporter's format.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use kubetrail_model::SpanRecord;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use crate::{ExportError, SpanSink, to_export_request};

const SINK: &str = "otlp-json";
const BUFFER_BYTES: usize = 256 << 10;

/// Writes each batch as one line holding an OTLP/JSON `ExportTraceServiceRequest`, the format
/// of the OpenTelemetry Collector's file exporter (and what its `otlpjsonfile` receiver reads).
///
/// Ids are lower-case hex strings and timestamps decimal strings, as the OTLP/JSON encoding
/// specifies. An accepted [`export`](SpanSink::export) means the line was handed to the
/// operating system (a file's batch is flushed: a process killed after the export was
/// acknowledged — `follow`, `serve` — has still written it), and [`finish`](SpanSink::finish)
/// flushes and, for a file, fsyncs. Standard output stays buffered until `finish`.
/// I/O errors are [permanent](ExportError::Permanent) (the batch is dropped and counted, not
/// retried into a full disk or a closed pipe); after one (or a crash mid-write), the file may
/// end with a partial line, which [`append`](Self::append) cuts before it writes more.
pub struct OtlpJsonFileSink {
    out: Output,
    target: PathBuf,
}

enum Output {
    File(BufWriter<tokio::fs::File>),
    Stdout(BufWriter<tokio::io::Stdout>),
}

impl Output {
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            Output::File(w) => w,
            Output::Stdout(w) => w,
        }
    }
}

impl std::fmt::Debug for OtlpJsonFileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpJsonFileSink")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl OtlpJsonFileSink {
    /// Creates (or truncates) the file at `path`; `-` means standard output.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, ExportError> {
        Self::open(path.as_ref(), false)
    }

    /// Like [`create`](Self::create), but appends to an existing file (for a long-running
    /// process that restarts: what was written before a crash is kept).
    pub fn append(path: impl AsRef<Path>) -> Result<Self, ExportError> {
        Self::open(path.as_ref(), true)
    }

    fn open(path: &Path, append: bool) -> Result<Self, ExportError> {
        if path == Path::new("-") {
            return Ok(OtlpJsonFileSink {
                out: Output::Stdout(BufWriter::with_capacity(BUFFER_BYTES, tokio::io::stdout())),
                target: path.to_owned(),
            });
        }
        let mut options = OpenOptions::new();
        if append {
            // (Read too: a torn last line is found and cut before appending.)
            options.append(true).create(true).read(true);
        } else {
            options.write(true).create(true).truncate(true);
        }
        let file = options
            .open(path)
            .map_err(|e| io_error("cannot open", path, &e))?;
        if append {
            let cut = cut_torn_line(&file).map_err(|e| io_error("cannot read", path, &e))?;
            if cut > 0 {
                tracing::warn!(
                    path = %path.display(),
                    bytes = cut,
                    "cut a partial last line from the OTLP/JSON file (a process was stopped mid-write); its spans were not acknowledged and are written again"
                );
            }
        }
        Ok(OtlpJsonFileSink {
            out: Output::File(BufWriter::with_capacity(
                BUFFER_BYTES,
                tokio::fs::File::from_std(file),
            )),
            target: path.to_owned(),
        })
    }
}

/// Truncates `file` after its last newline when it ends in the middle of a line (a process
/// killed while writing one: that line's export never returned, so its spans are written
/// again); returns the bytes cut. Without this, the next line appended would be glued to
/// the torn one and a reader would lose both.
fn cut_torn_line(file: &std::fs::File) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 64 << 10;
    let len = file.metadata()?.len();
    let mut reader = file;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep == len {
                return Ok(0);
            }
            file.set_len(keep)?;
            return Ok(len - keep);
        }
        end = start;
    }
    // Not a single complete line.
    if len > 0 {
        file.set_len(0)?;
    }
    Ok(len)
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> ExportError {
    let target = if path == Path::new("-") {
        "standard output".to_owned()
    } else {
        path.display().to_string()
    };
    ExportError::permanent(SINK, format!("{what} {target}: {e}"))
}

/// One batch as one OTLP/JSON line, newline included.
pub(crate) fn json_line(batch: &[SpanRecord]) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(&to_export_request(batch))?;
    line.push(b'\n');
    Ok(line)
}

#[async_trait::async_trait]
impl SpanSink for OtlpJsonFileSink {
    async fn export(&mut self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        if batch.is_empty() {
            return Ok(());
        }
        let line = json_line(batch)
            .map_err(|e| ExportError::permanent(SINK, format!("cannot encode OTLP/JSON: {e}")))?;
        self.out
            .writer()
            .write_all(&line)
            .await
            .map_err(|e| io_error("cannot write to", &self.target, &e))?;
        if let Output::File(w) = &mut self.out {
            w.flush()
                .await
                .map_err(|e| io_error("cannot write to", &self.target, &e))?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), ExportError> {
        self.out
            .writer()
            .flush()
            .await
            .map_err(|e| io_error("cannot flush", &self.target, &e))?;
        if let Output::File(w) = &mut self.out {
            w.get_mut()
                .sync_all()
                .await
                .map_err(|e| io_error("cannot fsync", &self.target, &e))?;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        SINK
    }
}

#[cfg(test)]
mod tests {
    use kubetrail_model::{AttrValue, SpanKind, SpanStatus};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;
    use crate::convert::tests::span;

    fn family() -> Vec<SpanRecord> {
        let mut root = span(0xab, 0x01, None, "kubetrail", "prod");
        root.kind = SpanKind::Object;
        root.attributes = vec![(
            "kubetrail.object.ref".into(),
            AttrValue::Str("deployments.apps/shop/web".into()),
        )];
        let mut req = span(0xab, 0x02, Some(0x01), "kubectl", "prod");
        req.attributes = vec![
            ("http.response.status_code".into(), AttrValue::Int(201)),
            (
                "user.groups".into(),
                AttrValue::StrList(vec!["system:masters".into()]),
            ),
        ];
        req.status = SpanStatus::Error("denied".into());
        vec![root, req]
    }

    #[tokio::test]
    async fn writes_one_otlp_json_request_per_line_that_parses_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spans.otlp.jsonl");
        let mut sink = OtlpJsonFileSink::create(&path).expect("create");
        assert_eq!(sink.name(), "otlp-json");
        let spans = family();
        sink.export(&spans[..1]).await.expect("export");
        sink.export(&[]).await.expect("empty batches write nothing");
        sink.export(&spans[1..]).await.expect("export");
        sink.finish().await.expect("finish");

        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(text.ends_with('\n'));
        for (line, batch) in lines.iter().zip([&spans[..1], &spans[1..]]) {
            let parsed: ExportTraceServiceRequest = serde_json::from_str(line).expect("OTLP/JSON");
            assert_eq!(parsed, to_export_request(batch));
        }

        // The raw JSON follows the OTLP/JSON encoding rules.
        let v: serde_json::Value = serde_json::from_str(lines[1]).expect("json");
        let rs = &v["resourceSpans"][0];
        assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "kubectl"
        );
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "kubetrail");
        let s = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "abababababababababababababababab");
        assert_eq!(s["spanId"], "0202020202020202");
        assert_eq!(s["parentSpanId"], "0101010101010101");
        // 64-bit integers as decimal strings (allowed by the spec, and what the Collector writes).
        assert_eq!(s["startTimeUnixNano"], "1700000000000000002");
        assert_eq!(s["endTimeUnixNano"], "1700000000000001002");
        // Enums as integers: SPAN_KIND_SERVER = 2, STATUS_CODE_ERROR = 2.
        assert_eq!(s["kind"], 2);
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["status"]["message"], "denied");
        assert_eq!(s["attributes"][0]["value"]["intValue"], "201");
        assert_eq!(
            s["attributes"][1]["value"]["arrayValue"]["values"][0]["stringValue"],
            "system:masters"
        );
        let root: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        let r = &root["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(r["kind"], 1);
        assert_eq!(r["parentSpanId"], "", "a root has an empty parent id");
    }

    #[tokio::test]
    async fn create_truncates_and_append_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        for _ in 0..2 {
            let mut sink = OtlpJsonFileSink::create(&path).expect("create");
            sink.export(&family()).await.expect("export");
            sink.finish().await.expect("finish");
        }
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count(),
            1
        );
        let mut sink = OtlpJsonFileSink::append(&path).expect("append");
        sink.export(&family()).await.expect("export");
        sink.finish().await.expect("finish");
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn append_cuts_a_line_torn_by_a_crash_before_it_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let mut sink = OtlpJsonFileSink::create(&path).expect("create");
        sink.export(&family()).await.expect("export");
        sink.finish().await.expect("finish");
        let whole = std::fs::read(&path).expect("read");
        // A killed writer left the start of a long line (longer than the scan's chunk).
        let mut torn = whole.clone();
        torn.extend(std::iter::repeat_n(b'{', 200_000));
        std::fs::write(&path, &torn).expect("write");
        let mut sink = OtlpJsonFileSink::append(&path).expect("append");
        sink.export(&family()).await.expect("export");
        sink.finish().await.expect("finish");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "the torn line is gone");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("every line parses");
        }
        // Nothing but a partial line: the file starts over.
        std::fs::write(&path, b"{\"resourceSpans\":[").expect("write");
        let sink = OtlpJsonFileSink::append(&path).expect("append");
        drop(sink);
        assert_eq!(std::fs::read(&path).expect("read").len(), 0);
        // A file that ends with its newline is left as it is.
        std::fs::write(&path, &whole).expect("write");
        drop(OtlpJsonFileSink::append(&path).expect("append"));
        assert_eq!(std::fs::read(&path).expect("read"), whole);
    }

    #[test]
    fn unopenable_path_is_a_permanent_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("out.jsonl");
        let err = OtlpJsonFileSink::create(&path).expect_err("no such directory");
        assert!(!err.is_retryable());
        assert!(err.message().contains("missing-dir"), "{err}");
    }
}
