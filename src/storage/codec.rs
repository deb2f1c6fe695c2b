//! Byte-level encoding of log records and of the values inside them.
//!
//! Everything on disk is little-endian and fixed-width except strings, which
//! are a `u32` byte length followed by UTF-8 bytes. The encoding is written by
//! hand rather than through serde so that a student can read the format off
//! this file, and so that recovery of a million keys stays well under a second.
//!
//! A *record* frames one payload so that a reader can tell a complete, intact
//! record from a torn or corrupted one:
//!
//! ```text
//! +-----------+-------------+------------------+
//! | len: u32  | crc32: u32  | payload: len B   |
//! +-----------+-------------+------------------+
//! ```
//!
//! `crc32` (CRC-32/ISO-HDLC, as computed by `crc32fast`) covers the payload
//! only; the length is implicitly checked because a wrong length makes the
//! checksum cover the wrong bytes.
//!
//! The payload of a log record is one [`Entry`]:
//!
//! ```text
//! seq: u64 | term: u64 | version: u64 | key: str | value: str
//! ```
//!
//! A record may instead hold a *durable marker* (segment format 2): 16 bytes,
//!
//! ```text
//! tag: u64 = u64::MAX | durable_seq: u64
//! ```
//!
//! which says "every entry up to `durable_seq` was fsynced before this record
//! was written". The tag cannot start an entry (no seq is `u64::MAX`, see
//! `storage::MAX_SEQ`) and the payload is shorter than any entry, so neither
//! can be taken for the other. Recovery uses markers to tell a torn write
//! (never fsynced) from damage to data the node had made durable (see
//! `segment`).

use crate::api::Entry;

/// Bytes taken by `len` and `crc32` in front of every payload.
pub const RECORD_HEADER_LEN: usize = 8;

/// The largest payload a record may hold. A length above this is treated as
/// garbage, which keeps a corrupted length field from making the reader try
/// to allocate gigabytes.
pub const MAX_PAYLOAD_LEN: u32 = 64 * 1024 * 1024;

/// Smallest possible encoded entry: three u64s and two empty strings.
const MIN_ENTRY_LEN: usize = 3 * 8 + 2 * 4;

/// Appends a complete record (header and payload) holding `entry` to `out`.
pub fn encode_entry_record(entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    // Reserve the header, fill it once the payload is known.
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    put_u64(out, entry.seq);
    put_u64(out, entry.term);
    put_u64(out, entry.version);
    put_str(out, &entry.key);
    put_str(out, &entry.value);
    let payload = &out[start + RECORD_HEADER_LEN..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes of a durable marker's payload: the tag and the seq.
pub const MARKER_LEN: usize = 16;
const MARKER_TAG: u64 = u64::MAX;

/// Appends a complete durable-marker record saying that every entry up to
/// `durable_seq` is on disk.
pub fn encode_marker_record(durable_seq: u64, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(MARKER_LEN);
    put_u64(&mut payload, MARKER_TAG);
    put_u64(&mut payload, durable_seq);
    put_u32(out, payload.len() as u32);
    put_u32(out, crc32fast::hash(&payload));
    out.extend_from_slice(&payload);
}

/// What a valid record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Entry(Entry),
    /// Every entry up to this seq was durable when the record was written.
    Durable(u64),
}

/// Decodes a record payload: a durable marker or an entry.
pub fn decode_record(payload: &[u8]) -> Result<Record, DecodeError> {
    if payload.len() == MARKER_LEN && payload[..8] == MARKER_TAG.to_le_bytes() {
        let seq = u64::from_le_bytes(payload[8..].try_into().unwrap());
        return Ok(Record::Durable(seq));
    }
    decode_entry(payload).map(Record::Entry)
}

/// Decodes an entry payload (the bytes after the record header).
pub fn decode_entry(payload: &[u8]) -> Result<Entry, DecodeError> {
    if payload.len() < MIN_ENTRY_LEN {
        return Err(DecodeError("entry payload too short"));
    }
    let mut r = Reader::new(payload);
    let seq = r.u64()?;
    let term = r.u64()?;
    let version = r.u64()?;
    let key = r.string()?;
    let value = r.string()?;
    if !r.is_empty() {
        return Err(DecodeError("trailing bytes after entry"));
    }
    Ok(Entry {
        seq,
        term,
        key,
        value,
        version,
    })
}

/// What [`parse_record`] found at an offset.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A complete record whose checksum matches; `next` is the offset after it.
    Valid { payload: &'a [u8], next: usize },
    /// Fewer bytes remain than the header or the declared length needs.
    Truncated,
    /// The bytes are all there but do not form a valid record.
    Invalid(&'static str),
}

/// Looks at the record starting at `buf[offset..]` without trusting any of it.
pub fn parse_record(buf: &[u8], offset: usize) -> Frame<'_> {
    let rest = &buf[offset..];
    if rest.len() < RECORD_HEADER_LEN {
        return Frame::Truncated;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().unwrap());
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
    // Length 0 is never valid (an entry is never empty). This matters: the
    // last segment ends in preallocated zeros, which must never parse as a
    // record (see `segment`).
    if len == 0 || len > MAX_PAYLOAD_LEN {
        return Frame::Invalid("implausible record length");
    }
    let end = RECORD_HEADER_LEN + len as usize;
    if rest.len() < end {
        return Frame::Truncated;
    }
    let payload = &rest[RECORD_HEADER_LEN..end];
    if crc32fast::hash(payload) != crc {
        return Frame::Invalid("checksum mismatch");
    }
    Frame::Valid {
        payload,
        next: offset + end,
    }
}

/// A payload that does not decode; the message says which part is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a byte slice that fails instead of panicking when the bytes
/// run out: every length it reads may be garbage.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(DecodeError("unexpected end of data"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }

    pub fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let bytes = self.bytes(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError("string is not UTF-8"))?;
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            term: 3,
            key: format!("key-{seq}"),
            value: "héllo".into(),
            version: 7,
        }
    }

    #[test]
    fn record_round_trips() {
        let mut buf = Vec::new();
        encode_entry_record(&entry(1), &mut buf);
        encode_entry_record(&entry(2), &mut buf);
        let Frame::Valid { payload, next } = parse_record(&buf, 0) else {
            panic!("first record invalid");
        };
        assert_eq!(decode_entry(payload).unwrap(), entry(1));
        let Frame::Valid { payload, next } = parse_record(&buf, next) else {
            panic!("second record invalid");
        };
        assert_eq!(decode_entry(payload).unwrap(), entry(2));
        assert_eq!(next, buf.len());
    }

    #[test]
    fn damaged_records_are_recognised() {
        let mut buf = Vec::new();
        encode_entry_record(&entry(1), &mut buf);
        assert!(matches!(
            parse_record(&buf[..buf.len() - 1], 0),
            Frame::Truncated
        ));
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(matches!(parse_record(&buf, 0), Frame::Invalid(_)));
        assert!(matches!(parse_record(&[0u8; 16], 0), Frame::Invalid(_)));
    }

    #[test]
    fn a_marker_is_not_an_entry_and_round_trips() {
        let mut buf = Vec::new();
        encode_marker_record(42, &mut buf);
        let Frame::Valid { payload, .. } = parse_record(&buf, 0) else {
            panic!("marker invalid");
        };
        assert_eq!(decode_record(payload), Ok(Record::Durable(42)));
        assert!(decode_entry(payload).is_err());
        let mut buf = Vec::new();
        encode_entry_record(&entry(7), &mut buf);
        let Frame::Valid { payload, .. } = parse_record(&buf, 0) else {
            panic!("entry invalid");
        };
        assert_eq!(decode_record(payload), Ok(Record::Entry(entry(7))));
    }
}
