//! A small TLV stream reader and writer in the shape of lnd's `tlv` package.
//!
//! A stream is a run of records, each a BigSize type, a BigSize length and
//! that many value bytes. Types must be strictly ascending. The reader borrows
//! value slices from the input; it never allocates.

use super::bigsize;
use super::{BigSizeField, CodecError, Place};

/// Iterates over the records of one TLV stream as `(type, value)` pairs.
///
/// Yields an error (and then stops) when a type or length is not a valid
/// BigSize, when a length runs past the end of the stream, or when types are
/// not strictly ascending (a repeated type is reported as a duplicate).
#[derive(Debug, Clone)]
pub struct TlvReader<'a> {
    buf: &'a [u8],
    pos: usize,
    last: Option<u64>,
    place: Place,
    done: bool,
}

impl<'a> TlvReader<'a> {
    /// A reader over the whole of `buf`, which is the stream found at `place`
    /// (used to say where an error is).
    pub fn new(buf: &'a [u8], place: Place) -> Self {
        TlvReader {
            buf,
            pos: 0,
            last: None,
            place,
            done: false,
        }
    }

    fn bigsize(&self, what: BigSizeField, at: usize) -> Result<(u64, usize), CodecError> {
        let rest = self.buf.get(at..).unwrap_or(&[]);
        bigsize::read_field(rest, self.place, what)
    }

    fn next_record(&mut self) -> Result<(u64, &'a [u8]), CodecError> {
        let start = self.pos;
        let (ty, ty_len) = self.bigsize(BigSizeField::RecordType { offset: start }, start)?;
        if let Some(prev) = self.last {
            if ty == prev {
                return Err(CodecError::DuplicateRecord {
                    place: self.place,
                    ty,
                });
            }
            if ty < prev {
                return Err(CodecError::NotAscending {
                    place: self.place,
                    prev,
                    next: ty,
                });
            }
        }
        let len_at = start + ty_len;
        let (len, len_len) =
            self.bigsize(BigSizeField::RecordLength { ty, offset: len_at }, len_at)?;
        let value_at = len_at + len_len;
        let available = self.buf.len().saturating_sub(value_at);
        let value = usize::try_from(len)
            .ok()
            .filter(|&l| l <= available)
            .and_then(|l| self.buf.get(value_at..value_at + l))
            .ok_or(CodecError::RecordOverrun {
                place: self.place,
                ty,
                len,
                available,
            })?;
        self.pos = value_at + value.len();
        self.last = Some(ty);
        Ok((ty, value))
    }
}

impl<'a> Iterator for TlvReader<'a> {
    type Item = Result<(u64, &'a [u8]), CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_record();
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

impl std::iter::FusedIterator for TlvReader<'_> {}

/// The number of bytes a record of type `ty` with a `len`-byte value takes.
pub fn record_len(ty: u64, len: usize) -> usize {
    bigsize::encoded_len(ty) + bigsize::encoded_len(len as u64) + len
}

/// Appends TLV records to a byte vector.
///
/// The writer does not check the order of types: callers write them
/// ascending, as the format requires.
#[derive(Debug)]
pub struct TlvWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> TlvWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        TlvWriter { out }
    }

    /// Writes the type and length of a record whose `len` value bytes the
    /// caller then appends through [`TlvWriter::out`].
    pub fn header(&mut self, ty: u64, len: usize) {
        bigsize::write(self.out, ty);
        bigsize::write(self.out, len as u64);
    }

    /// The underlying vector, to append a value after [`TlvWriter::header`].
    pub fn out(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Writes a record with raw bytes as its value.
    pub fn bytes(&mut self, ty: u64, value: &[u8]) {
        self.header(ty, value.len());
        self.out.extend_from_slice(value);
    }

    /// Writes a one-byte record.
    pub fn u8(&mut self, ty: u64, value: u8) {
        self.bytes(ty, &[value]);
    }

    /// Writes a four-byte big-endian record.
    pub fn u32(&mut self, ty: u64, value: u32) {
        self.bytes(ty, &value.to_be_bytes());
    }

    /// Writes an eight-byte big-endian record.
    pub fn u64(&mut self, ty: u64, value: u64) {
        self.bytes(ty, &value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::BigSizeFault;

    fn collect(buf: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, CodecError> {
        TlvReader::new(buf, Place::Body)
            .map(|r| r.map(|(t, v)| (t, v.to_vec())))
            .collect()
    }

    #[test]
    fn writer_and_reader_agree() {
        let mut out = Vec::new();
        let mut w = TlvWriter::new(&mut out);
        w.bytes(0, b"");
        w.u8(1, 7);
        w.u32(2, 0x0102_0304);
        w.u64(0xfd, 9);
        w.bytes(70_000, &[0xaa; 300]);
        assert_eq!(&out[..2], &[0x00, 0x00]);
        assert_eq!(&out[2..5], &[0x01, 0x01, 0x07]);
        assert_eq!(&out[5..11], &[0x02, 0x04, 1, 2, 3, 4]);
        assert_eq!(&out[11..15], &[0xfd, 0x00, 0xfd, 0x08]);
        assert_eq!(
            out.len(),
            2 + 3 + 6 + record_len(0xfd, 8) + record_len(70_000, 300)
        );
        let recs = collect(&out).unwrap();
        assert_eq!(
            recs,
            vec![
                (0, vec![]),
                (1, vec![7]),
                (2, vec![1, 2, 3, 4]),
                (0xfd, 9u64.to_be_bytes().to_vec()),
                (70_000, vec![0xaa; 300]),
            ]
        );
    }

    #[test]
    fn empty_stream_has_no_records() {
        assert_eq!(collect(&[]).unwrap(), vec![]);
    }

    #[test]
    fn rejects_descending_and_duplicate_types() {
        let err = collect(&[11, 0, 9, 0]).unwrap_err();
        assert_eq!(
            err,
            CodecError::NotAscending {
                place: Place::Body,
                prev: 11,
                next: 9
            }
        );
        assert_eq!(
            err.to_string(),
            "record types are not ascending in the invoice body: 9 after 11"
        );
        let err = collect(&[4, 0, 4, 0]).unwrap_err();
        assert_eq!(
            err,
            CodecError::DuplicateRecord {
                place: Place::Body,
                ty: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "record type 4 (add index) appears twice in the invoice body"
        );
    }

    #[test]
    fn rejects_overrun_and_truncated_headers() {
        let err = collect(&[1, 0, 5, 9, 1, 2]).unwrap_err();
        assert_eq!(
            err,
            CodecError::RecordOverrun {
                place: Place::Body,
                ty: 5,
                len: 9,
                available: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "record type 5 (settle index) in the invoice body says it is 9 bytes long \
             but only 2 bytes remain"
        );
        // Huge length does not overflow.
        let err = collect(&[5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(
            err,
            CodecError::RecordOverrun { len: u64::MAX, .. }
        ));
        // Type with no length.
        let err = collect(&[1, 0, 5]).unwrap_err();
        assert_eq!(
            err,
            CodecError::BadBigSize {
                place: Place::Body,
                what: BigSizeField::RecordLength { ty: 5, offset: 3 },
                fault: BigSizeFault::Truncated {
                    needed: 1,
                    available: 0
                }
            }
        );
        // Truncated BigSize type.
        let err = collect(&[0xfe, 1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the record type at byte 0 of the invoice body is truncated: it needs 5 bytes \
             but only 2 remain"
        );
        // Non-canonical type.
        let err = collect(&[0xfd, 0, 1, 0]).unwrap_err();
        assert!(matches!(
            err,
            CodecError::BadBigSize {
                fault: BigSizeFault::NonCanonical { .. },
                ..
            }
        ));
    }

    #[test]
    fn stops_after_error() {
        let mut r = TlvReader::new(&[2, 0, 1, 0, 3, 0], Place::Htlc(0));
        assert!(r.next().unwrap().is_ok());
        assert!(r.next().unwrap().is_err());
        assert!(r.next().is_none());
    }
}
