//! The on-disk format: segment files of CRC-checked records, and the scan that recovers them.
//!
//! A segment is `<first sequence number, 20 digits>.seg`: the 8-byte magic [`MAGIC`], then
//! records `[length: u32 LE][crc32 of the payload: u32 LE][payload]`. A payload's first byte
//! is its kind:
//!
//! * [`KIND_BATCH`]: `seq: u64 LE`, `max_time: i64 LE` (latest event time in it, Unix ns),
//!   then the batch as JSON (`cluster`, `received_at`, `source`, `events`);
//! * [`KIND_DELIVERED`]: 8-byte span ids the exporter delivered (so they are not exported
//!   again when the retained history is processed after a restart).
//!
//! A record is valid only whole and with its checksum; the scan stops at the first one that
//! is not (a write cut short by a crash or power loss, a flipped bit) and reports the length
//! of the valid prefix, which the log then keeps.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

/// First bytes of every segment file (format version 1).
pub const MAGIC: &[u8; 8] = b"KTLOG\x00\x00\x01";
/// A batch record.
pub const KIND_BATCH: u8 = 1;
/// A record of delivered span ids.
pub const KIND_DELIVERED: u8 = 2;
/// Length + checksum.
pub const HEADER: usize = 8;
/// Longest payload accepted when reading (a length beyond it is damage).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Appends one record to `buf`.
pub fn encode(buf: &mut Vec<u8>, payload_parts: &[&[u8]]) {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    for p in payload_parts {
        crc.update(p);
    }
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in payload_parts {
        buf.extend_from_slice(p);
    }
}

/// Where a batch record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPos {
    /// Its sequence number.
    pub seq: u64,
    /// Latest event time in it.
    pub max_time: i64,
    /// Offset of its JSON in the segment file.
    pub offset: u64,
    /// Length of its JSON.
    pub len: usize,
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Length of the valid prefix (magic and whole, checked records).
    pub valid_len: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Batch records, in file order.
    pub batches: Vec<BatchPos>,
    /// Delivered span ids.
    pub delivered: Vec<[u8; 8]>,
    /// Why the scan stopped before the end, if it did.
    pub damage: Option<String>,
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads a segment and finds its valid prefix.
pub fn scan(path: &Path) -> std::io::Result<Scanned> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut out = Scanned {
        file_len,
        ..Scanned::default()
    };
    let mut magic = [0u8; 8];
    if read_full(&mut r, &mut magic)? < MAGIC.len() || &magic != MAGIC {
        out.damage = Some("not a kubetrail log segment (bad or missing header)".into());
        return Ok(out);
    }
    let mut pos = MAGIC.len() as u64;
    out.valid_len = pos;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; HEADER];
        let got = read_full(&mut r, &mut head)?;
        if got == 0 {
            break;
        }
        if got < HEADER {
            out.damage = Some(format!("a record header cut short at byte {pos}"));
            break;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_PAYLOAD || pos + (HEADER + len) as u64 > file_len {
            out.damage = Some(format!(
                "a record of {len} bytes at byte {pos} runs past the end of the file ({file_len} bytes)"
            ));
            break;
        }
        payload.resize(len, 0);
        if read_full(&mut r, &mut payload)? < len {
            out.damage = Some(format!("a record cut short at byte {pos}"));
            break;
        }
        if crc32fast::hash(&payload) != crc {
            out.damage = Some(format!("checksum mismatch in the record at byte {pos}"));
            break;
        }
        let body_at = pos + HEADER as u64;
        match payload[0] {
            KIND_BATCH if len >= 17 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&payload[1..9]);
                let mut t = [0u8; 8];
                t.copy_from_slice(&payload[9..17]);
                out.batches.push(BatchPos {
                    seq: u64::from_le_bytes(seq),
                    max_time: i64::from_le_bytes(t),
                    offset: body_at + 17,
                    len: len - 17,
                });
            }
            KIND_DELIVERED if (len - 1).is_multiple_of(8) => {
                for id in payload[1..].chunks_exact(8) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(id);
                    out.delivered.push(a);
                }
            }
            kind => {
                out.damage = Some(format!(
                    "unknown record kind {kind} ({len} bytes) at byte {pos}"
                ));
                break;
            }
        }
        pos = body_at + len as u64;
        out.valid_len = pos;
    }
    Ok(out)
}

/// The segment file name for a segment starting at `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first sequence number from a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_record(seq: u64, json: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode(
            &mut b,
            &[&[KIND_BATCH], &seq.to_le_bytes(), &7i64.to_le_bytes(), json],
        );
        b
    }

    #[test]
    fn a_scan_keeps_every_whole_record_and_stops_at_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        let mut bytes = MAGIC.to_vec();
        bytes.extend(batch_record(1, b"{\"a\":1}"));
        let mut delivered = Vec::new();
        encode(&mut delivered, &[&[KIND_DELIVERED], &[9u8; 16]]);
        bytes.extend(&delivered);
        let good = bytes.len() as u64;
        bytes.extend(batch_record(2, b"{\"b\":2}"));
        // Whole file: three records.
        std::fs::write(&path, &bytes).unwrap();
        let s = scan(&path).unwrap();
        assert!(s.damage.is_none(), "{:?}", s.damage);
        assert_eq!(s.batches.len(), 2);
        assert_eq!(s.delivered, vec![[9u8; 8], [9u8; 8]]);
        assert_eq!(s.valid_len, bytes.len() as u64);
        // Cut in the middle of the last record: the first two are kept.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let s = scan(&path).unwrap();
        assert_eq!(s.valid_len, good);
        assert_eq!(s.batches.len(), 1);
        assert!(s.damage.unwrap().contains("past the end"));
        // A flipped bit in the last record's JSON: checksum.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x20;
        std::fs::write(&path, &flipped).unwrap();
        let s = scan(&path).unwrap();
        assert_eq!(s.valid_len, good);
        assert!(s.damage.unwrap().contains("checksum"));
        // Zeros after the records (a preallocated or half-written tail).
        let mut zeros = bytes.clone();
        zeros.extend([0u8; 100]);
        std::fs::write(&path, &zeros).unwrap();
        let s = scan(&path).unwrap();
        assert_eq!(s.valid_len, bytes.len() as u64);
        assert_eq!(s.batches.len(), 2);
        assert!(s.damage.is_some());
        // Not a segment at all.
        std::fs::write(&path, b"hello").unwrap();
        let s = scan(&path).unwrap();
        assert_eq!(s.valid_len, 0);
        assert!(s.damage.is_some());
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
    }
}
