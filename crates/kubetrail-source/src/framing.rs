//! Splitting a byte stream into JSON documents in one linear pass.
//!
//! Audit dumps are JSON lines, pretty-printed `EventList`s or arrays, or a mix. Re-parsing a
//! growing document after every line (what a "parse until it is complete" loop does) is
//! quadratic in its size; this framer instead tracks nesting, strings and escapes byte by
//! byte, so it knows where a top-level value ends without parsing it, and hands each
//! complete document to the decoder once. It also bounds memory: a document longer than the
//! record limit is not kept (it is scanned to its end and reported).
//!
//! Recovery, so that one bad record costs only itself:
//! * a line that does not start a JSON object or array is one malformed record;
//! * a raw newline inside a string (JSON forbids it) ends a broken document at that line;
//! * a line starting with `{` or `[` in column 0, where no value can start inside the
//!   current document (after a value, not after `,` `[` or `:`), means the current document
//!   was cut off (a truncated line of a JSON-lines log): it is reported and the new line
//!   starts a new document;
//! * end of input inside a document reports it as truncated.

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A complete document (or a garbage line) to decode, starting at `line`.
    Document {
        /// One-based line of its first byte.
        line: u64,
        /// Its bytes.
        text: Vec<u8>,
    },
    /// A record that cannot be decoded, starting at `line`.
    Broken {
        /// One-based line of its first byte.
        line: u64,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between documents.
    Idle,
    /// Inside a JSON document.
    Json,
    /// Inside a line that does not start a JSON document (up to its newline).
    Garbage,
}

/// The framer's state between chunks.
#[derive(Debug)]
pub(crate) struct Framer {
    max: usize,
    /// Line of the next byte (one-based).
    line: u64,
    /// The next byte is the first of its line.
    col0: bool,
    state: State,
    doc: Vec<u8>,
    doc_line: u64,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// Last byte outside strings that is not whitespace.
    last: u8,
    oversize: bool,
}

impl Framer {
    /// A framer that refuses documents longer than `max` bytes.
    pub(crate) fn new(max: usize) -> Framer {
        Framer {
            max,
            line: 1,
            col0: true,
            state: State::Idle,
            doc: Vec::new(),
            doc_line: 1,
            depth: 0,
            in_string: false,
            escape: false,
            last: 0,
            oversize: false,
        }
    }

    /// The line the next byte is on (the number of lines started so far).
    pub(crate) fn line(&self) -> u64 {
        self.line
    }

    fn start(&mut self, state: State, b: u8) {
        self.state = state;
        self.doc_line = self.line;
        self.doc.clear();
        self.oversize = false;
        self.depth = usize::from(state == State::Json);
        self.in_string = false;
        self.escape = false;
        self.last = b;
        self.keep(b);
    }

    fn keep(&mut self, b: u8) {
        if self.oversize {
            return;
        }
        if self.doc.len() >= self.max {
            self.oversize = true;
            self.doc = Vec::new();
            return;
        }
        self.doc.push(b);
    }

    /// Ends the current document; `reason` makes it a broken record.
    fn finish(&mut self, out: &mut Vec<Frame>, reason: Option<String>) {
        let line = self.doc_line;
        let frame = if self.oversize {
            Frame::Broken {
                line,
                reason: format!("record larger than {} bytes (skipped)", self.max),
            }
        } else if let Some(reason) = reason {
            Frame::Broken { line, reason }
        } else {
            Frame::Document {
                line,
                text: std::mem::take(&mut self.doc),
            }
        };
        out.push(frame);
        self.doc.clear();
        if self.doc.capacity() > 1 << 20 {
            self.doc = Vec::new();
        }
        self.state = State::Idle;
        self.oversize = false;
    }

    /// Keeps `bytes` (none of them a newline) as the per-byte path would, one by one.
    fn keep_run(&mut self, bytes: &[u8]) {
        if self.oversize {
            return;
        }
        if self.doc.len() + bytes.len() > self.max {
            // The per-byte path would pass the limit within this run.
            self.oversize = true;
            self.doc = Vec::new();
            return;
        }
        self.doc.extend_from_slice(bytes);
    }

    /// Feeds a chunk; complete records are appended to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Frame>) {
        let mut i = 0;
        while i < chunk.len() {
            // Fast path: the plain content of a string (most of an audit event's bytes), or
            // the rest of a garbage line, up to the next byte that can change the state.
            // Such a run holds no newline, so the line count and column are as the per-byte
            // path would leave them (col0 false after any byte that is not a newline).
            let rest = &chunk[i..];
            if self.state == State::Idle && matches!(rest[0], b'{' | b'[') {
                // Fastest path: a document that ends before the next newline in this chunk
                // (a JSON line) is found by a scan that copies nothing and then taken whole,
                // as the per-byte path would take it (it holds no newline, so the line count
                // does not move; the byte after it is read in the idle state).
                if let Some(end) = one_line_document(rest, self.max) {
                    out.push(Frame::Document {
                        line: self.line,
                        text: rest[..=end].to_vec(),
                    });
                    self.col0 = false;
                    i += end + 1;
                    continue;
                }
            }
            let run = match self.state {
                State::Json if self.in_string && !self.escape => {
                    memchr::memchr3(b'"', b'\\', b'\n', rest).unwrap_or(rest.len())
                }
                State::Garbage => memchr::memchr(b'\n', rest).unwrap_or(rest.len()),
                _ => 0,
            };
            if run > 0 {
                self.keep_run(&rest[..run]);
                self.col0 = false;
                i += run;
                continue;
            }
            let b = chunk[i];
            i += 1;
            let col0 = self.col0;
            self.col0 = b == b'\n';
            match self.state {
                State::Idle => self.idle(b),
                State::Garbage => {
                    if b == b'\n' {
                        self.finish(out, None);
                    } else {
                        self.keep(b);
                    }
                }
                State::Json => {
                    if col0
                        && !self.in_string
                        && matches!(b, b'{' | b'[')
                        && !matches!(self.last, b',' | b'[' | b':')
                    {
                        let reason = format!(
                            "incomplete JSON document (cut off before line {})",
                            self.line
                        );
                        self.finish(out, Some(reason));
                        self.idle(b);
                    } else {
                        self.json(b, out);
                    }
                }
            }
            if b == b'\n' {
                self.line += 1;
            }
        }
    }

    fn idle(&mut self, b: u8) {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'{' | b'[' => self.start(State::Json, b),
            _ => self.start(State::Garbage, b),
        }
    }

    fn json(&mut self, b: u8, out: &mut Vec<Frame>) {
        if self.in_string {
            if b == b'\n' {
                let reason = format!("unterminated string (line {} ends inside it)", self.line);
                self.finish(out, Some(reason));
                return;
            }
            self.keep(b);
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                self.last = b'"';
            }
            return;
        }
        self.keep(b);
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    self.finish(out, None);
                    return;
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' => return,
            _ => {}
        }
        self.last = b;
    }

    /// End of input: a document still open is truncated; a garbage line is complete.
    pub(crate) fn end(&mut self, out: &mut Vec<Frame>) {
        match self.state {
            State::Idle => {}
            State::Garbage => self.finish(out, None),
            State::Json => self.finish(
                out,
                Some("truncated JSON document at end of input".to_owned()),
            ),
        }
    }
}

/// The index of the byte that closes the JSON document `bytes` starts with (`{` or `[`), if
/// the document ends before the first newline in `bytes` and within `max` bytes; `None` when
/// it does not, or when anything in it needs the per-byte path (a newline, which pretty
/// printing or a broken string puts there; the end of the chunk). Nesting is counted as the
/// per-byte path counts it (brackets of either kind, outside strings).
fn one_line_document(bytes: &[u8], max: usize) -> Option<usize> {
    let bytes = &bytes[..bytes.len().min(max)];
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // A string: jump from one quote, backslash or newline to the next.
                i += 1;
                loop {
                    i += memchr::memchr3(b'"', b'\\', b'\n', bytes.get(i..)?)?;
                    match bytes.get(i)? {
                        b'"' => break,
                        // An escape takes the next byte whatever it is, but a raw newline
                        // (escaped or not) breaks the string: the per-byte path reports it.
                        b'\\' if bytes.get(i + 1).is_some_and(|&c| c != b'\n') => i += 2,
                        _ => return None,
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b'\n' => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(text: &str, max: usize) -> Vec<Frame> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        // Byte by byte: chunk boundaries anywhere give the same frames.
        for b in text.as_bytes() {
            f.feed(std::slice::from_ref(b), &mut out);
        }
        f.end(&mut out);
        out
    }

    /// The same text fed in chunks of `size` bytes (the runs of the fast path then span many
    /// bytes, and chunk ends fall anywhere).
    fn frames_in_chunks(text: &str, max: usize, size: usize) -> Vec<Frame> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(size) {
            f.feed(chunk, &mut out);
        }
        f.end(&mut out);
        out
    }

    #[test]
    fn chunks_of_any_size_give_the_frames_of_a_byte_by_byte_feed() {
        let exact = format!("{{\"x\":\"{}\"}}", "y".repeat(42)); // 50 bytes
        let over = format!("{{\"x\":\"{}\"}}", "y".repeat(43)); // 51 bytes
        let texts = [
            "{\"a\":1}\n\n{\n  \"b\": [1, {\"c\": \"}]\\\"\"}]\n}\n[{\"d\":1},\n{\"e\":2}]\n".to_owned(),
            "garbage line\n{\"cut\":{\"x\":1\n{\"ok\":1}\n{\"s\":\"unterminated\n{\"ok\":2}\n{\"open\":".to_owned(),
            "{\"esc\":\"a\\\\\\\"b\\\\\",\"u\":\"\\u00e9 long string with spaces and {braces} [and] \\\"quotes\\\"\"}\nmore garbage".to_owned(),
            format!("{exact}\n{over}\n{{\"ok\":1}}\n"),
            // Documents that close within a line, for the one-line scan: two on one line,
            // arrays, mismatched brackets, an escaped raw newline, an escape at a line end.
            "{\"a\":1} {\"b\":[2]}  \n[1,2]\r\n{\"e\":\"x\\\ny\"}\n{\"m\":]}\n{\"t\":\"\\\\\"}\n{\"q\":\"\\".to_owned(),
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/rollout.audit.log"))
                .expect("the example dump"),
        ];
        for text in &texts {
            // The small texts against a 50-byte limit (exact fits, one more byte does not).
            let max = if text.len() > 10_000 { 1 << 20 } else { 50 };
            let want = frames(text, max);
            for size in [2, 3, 7, 64, 4096, text.len().max(1)] {
                assert_eq!(
                    frames_in_chunks(text, max, size),
                    want,
                    "chunks of {size} bytes of {:?}…",
                    &text[..text.len().min(40)]
                );
            }
        }
    }

    /// Random texts over the bytes the framer looks at: every chunking frames them as a
    /// byte-by-byte feed does (the one-line scan and the runs change nothing but speed).
    #[test]
    fn random_texts_frame_alike_in_any_chunks() {
        let alphabet = b"{}[]\"\\\n\r :,ax";
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for round in 0..2_000 {
            let len = 1 + round % 97;
            let text: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(alphabet[(seed % alphabet.len() as u64) as usize])
                })
                .collect();
            // Documents begin more often at a brace: prefix one.
            let text = format!("{{{text}");
            let max = 1 + round % 40;
            let want = frames(&text, max);
            for size in [2, 5, 16, text.len()] {
                assert_eq!(
                    frames_in_chunks(&text, max, size),
                    want,
                    "chunks of {size}, max {max}: {text:?}"
                );
            }
        }
    }

    fn doc(line: u64, text: &str) -> Frame {
        Frame::Document {
            line,
            text: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn lines_pretty_documents_and_arrays() {
        let text =
            "{\"a\":1}\n\n{\n  \"b\": [1, {\"c\": \"}]\\\"\"}]\n}\n[{\"d\":1},\n{\"e\":2}]\n";
        assert_eq!(
            frames(text, 1 << 20),
            vec![
                doc(1, "{\"a\":1}"),
                doc(3, "{\n  \"b\": [1, {\"c\": \"}]\\\"\"}]\n}"),
                doc(6, "[{\"d\":1},\n{\"e\":2}]"),
            ]
        );
    }

    #[test]
    fn bad_records_cost_only_themselves() {
        let text =
            "garbage\n{\"cut\":{\"x\":1\n{\"ok\":1}\n{\"s\":\"unterminated\n{\"ok\":2}\n{\"open\":";
        let got = frames(text, 1 << 20);
        assert_eq!(got[0], doc(1, "garbage"));
        assert!(
            matches!(&got[1], Frame::Broken { line: 2, reason } if reason.contains("incomplete"))
        );
        assert_eq!(got[2], doc(3, "{\"ok\":1}"));
        assert!(
            matches!(&got[3], Frame::Broken { line: 4, reason } if reason.contains("unterminated"))
        );
        assert_eq!(got[4], doc(5, "{\"ok\":2}"));
        assert!(
            matches!(&got[5], Frame::Broken { line: 6, reason } if reason.contains("truncated"))
        );
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn oversize_records_are_skipped_to_their_end() {
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(100));
        let got = frames(&format!("{big}\n{{\"ok\":1}}\n"), 50);
        assert!(
            matches!(&got[0], Frame::Broken { line: 1, reason } if reason.contains("larger than 50"))
        );
        assert_eq!(got[1], doc(2, "{\"ok\":1}"));
    }
}
