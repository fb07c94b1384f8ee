//! Bytes to model and back: lnd's KV serialisation of invoices.
//!
//! [`decode_invoice`] reads the value stored under an invoice number in the
//! `invoices` bucket; [`decode_htlc_set`] reads the value stored under
//! invoice number ‖ set id for AMP invoices; [`decode_go_time`] reads Go's
//! `time.Time` binary form. Each has an exact inverse (`encode_*`). The
//! decoders borrow the input while parsing, never panic, and report what is
//! wrong and where through [`CodecError`]; the caller adds the invoice key.

use std::fmt;

pub mod bigsize;
pub mod gotime;
pub mod invoice;
pub mod tlv;

pub use bigsize::BigSizeFault;
pub use gotime::{decode_go_time, encode_go_time, GoTimeFault};
pub use invoice::{
    decode_htlc_set, decode_invoice, encode_htlc_set, encode_invoice, invoice_preimage,
};

/// Which TLV stream a problem was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// The invoice body stream.
    Body,
    /// The HTLC record at this 0-based position (inline after the body, or
    /// within an AMP HTLC set).
    Htlc(usize),
    /// The AMP set at this 0-based position inside body record 15.
    AmpSet(usize),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Place::Body => write!(f, "the invoice body"),
            Place::Htlc(i) => write!(f, "HTLC record {i}"),
            Place::AmpSet(i) => write!(f, "AMP set {i} of record type 15 (AMP state)"),
        }
    }
}

/// Which BigSize integer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BigSizeField {
    /// A record type, at this byte offset of its stream.
    RecordType {
        /// Byte offset within the stream.
        offset: usize,
    },
    /// A record length, at this byte offset of its stream.
    RecordLength {
        /// The record's type.
        ty: u64,
        /// Byte offset within the stream.
        offset: usize,
    },
    /// The number of AMP sets at the start of body record 15.
    AmpSetCount,
    /// The length prefix of the AMP set at this 0-based position.
    AmpSetLength {
        /// Position of the set.
        index: usize,
    },
    /// The number of circuit keys at the start of AMP set record 4.
    CircuitKeyCount,
}

impl fmt::Display for BigSizeField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BigSizeField::RecordType { offset } => write!(f, "the record type at byte {offset}"),
            BigSizeField::RecordLength { ty, offset } => {
                write!(f, "the length of record type {ty} at byte {offset}")
            }
            BigSizeField::AmpSetCount => write!(f, "the AMP set count in record type 15"),
            BigSizeField::AmpSetLength { index } => {
                write!(f, "the length of AMP set {index} in record type 15")
            }
            BigSizeField::CircuitKeyCount => {
                write!(f, "the circuit key count in record type 4")
            }
        }
    }
}

/// The name of record type `ty` in the stream at `place`, for messages.
pub fn field_name(place: Place, ty: u64) -> &'static str {
    match place {
        Place::Body => match ty {
            0 => "memo",
            1 => "payment request",
            2 => "creation date",
            3 => "settle date",
            4 => "add index",
            5 => "settle index",
            6 => "preimage",
            7 => "value",
            8 => "final CLTV delta",
            9 => "expiry",
            10 => "payment address",
            11 => "features",
            12 => "state",
            13 => "amount paid",
            14 => "hodl",
            15 => "AMP state",
            _ => "unknown",
        },
        Place::Htlc(_) => match ty {
            1 => "channel id",
            3 => "HTLC id",
            5 => "amount",
            7 => "accept height",
            9 => "accept time",
            11 => "resolve time",
            13 => "expiry height",
            15 => "state",
            17 => "MPP total",
            19 => "AMP record",
            21 => "AMP hash",
            23 => "AMP preimage",
            65536.. => "custom record",
            _ => "unknown",
        },
        Place::AmpSet(_) => match ty {
            0 => "set id",
            1 => "state",
            2 => "settle index",
            3 => "settle date",
            4 => "circuit keys",
            5 => "amount paid",
            _ => "unknown",
        },
    }
}

/// What is wrong with a serialized value. Display prints a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The invoice value is shorter than its 8-byte body length prefix.
    #[error("the value is {available} bytes long, too short for the 8-byte body length prefix")]
    BodyLengthMissing {
        /// Bytes in the value.
        available: usize,
    },
    /// The body length prefix runs past the end of the value.
    #[error("the body length prefix says {declared} bytes but only {available} follow")]
    BodyTruncated {
        /// The length the prefix declares.
        declared: u64,
        /// Bytes after the prefix.
        available: usize,
    },
    /// Bytes remain after the last HTLC record, too few for a length prefix.
    #[error(
        "HTLC record {index} is truncated: only {available} bytes remain where an 8-byte \
         length prefix is expected"
    )]
    HtlcLengthMissing {
        /// Position of the HTLC record.
        index: usize,
        /// Bytes left.
        available: usize,
    },
    /// An HTLC record's length prefix runs past the end of the value.
    #[error(
        "HTLC record {index} is truncated: its length prefix says {declared} bytes but only \
         {available} follow"
    )]
    HtlcTruncated {
        /// Position of the HTLC record.
        index: usize,
        /// The length the prefix declares.
        declared: u64,
        /// Bytes after the prefix.
        available: usize,
    },
    /// A BigSize integer is truncated or not canonical.
    #[error("{what} of {place} is {fault}")]
    BadBigSize {
        /// The stream.
        place: Place,
        /// Which integer.
        what: BigSizeField,
        /// What is wrong with it.
        fault: BigSizeFault,
    },
    /// A record type is lower than the one before it.
    #[error("record types are not ascending in {place}: {next} after {prev}")]
    NotAscending {
        /// The stream.
        place: Place,
        /// The earlier type.
        prev: u64,
        /// The later, lower type.
        next: u64,
    },
    /// A record type appears twice in a row.
    #[error("record type {ty} ({}) appears twice in {place}", field_name(*.place, *.ty))]
    DuplicateRecord {
        /// The stream.
        place: Place,
        /// The repeated type.
        ty: u64,
    },
    /// A record's length runs past the end of its stream.
    #[error(
        "record type {ty} ({}) in {place} says it is {len} bytes long but only {available} \
         bytes remain",
        field_name(*.place, *.ty)
    )]
    RecordOverrun {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
        /// The declared length.
        len: u64,
        /// Bytes left in the stream.
        available: usize,
    },
    /// A record type this stream does not define (data would be lost).
    #[error("unknown record type {ty} in {place}")]
    UnknownRecord {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
    },
    /// A fixed-width record has the wrong width.
    #[error(
        "record type {ty} ({}) in {place} is {len} bytes long, expected {expected}",
        field_name(*.place, *.ty)
    )]
    WrongLength {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
        /// Its length.
        len: usize,
        /// The width it must have.
        expected: usize,
    },
    /// A variable-width record is outside its allowed range of lengths.
    #[error(
        "record type {ty} ({}) in {place} is {len} bytes long, expected {min} to {max}",
        field_name(*.place, *.ty)
    )]
    LengthOutOfRange {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
        /// Its length.
        len: usize,
        /// Shortest allowed.
        min: usize,
        /// Longest allowed.
        max: usize,
    },
    /// A truncated integer starts with a zero byte (lnd writes them minimally).
    #[error(
        "record type {ty} ({}) in {place} holds a truncated integer with a leading zero byte, \
         which is not minimal",
        field_name(*.place, *.ty)
    )]
    NonMinimalInteger {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
    },
    /// A time record is not a Go time.
    #[error(
        "record type {ty} ({}) in {place} is not a valid Go time: {fault}",
        field_name(*.place, *.ty)
    )]
    InvalidTime {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
        /// Why not.
        fault: GoTimeFault,
    },
    /// A feature vector so long that its bits do not fit a u32.
    #[error(
        "record type {ty} ({}) in {place} is {len} bytes long, too long for feature bits \
         numbered by a u32",
        field_name(*.place, *.ty)
    )]
    FeaturesTooLong {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
        /// Its length.
        len: usize,
    },
    /// An AMP hash or preimage record without the AMP record (type 19).
    #[error(
        "record type {ty} ({}) in {place} is present but the AMP record (type 19) is missing",
        field_name(*.place, *.ty)
    )]
    AmpPartWithoutRecord {
        /// The stream.
        place: Place,
        /// Type 21 or 23.
        ty: u64,
    },
    /// An AMP set's length prefix runs past the end of body record 15.
    #[error(
        "AMP set {index} is truncated: its length prefix says {declared} bytes but only \
         {available} remain in record type 15 (AMP state) of the invoice body"
    )]
    AmpSetTruncated {
        /// Position of the set.
        index: usize,
        /// The length the prefix declares.
        declared: u64,
        /// Bytes left in the record.
        available: usize,
    },
    /// The circuit key count does not match the bytes that follow it.
    #[error(
        "record type 4 (circuit keys) in {place} declares {count} keys of 16 bytes each but \
         {available} bytes follow the count"
    )]
    CircuitKeysLength {
        /// The stream.
        place: Place,
        /// The declared count.
        count: u64,
        /// Bytes after the count.
        available: usize,
    },
    /// A structured record has bytes left over after its content.
    #[error(
        "record type {ty} ({}) in {place} has {extra} unread bytes after its content",
        field_name(*.place, *.ty)
    )]
    TrailingBytes {
        /// The stream.
        place: Place,
        /// The record type.
        ty: u64,
        /// Bytes left over.
        extra: usize,
    },
    /// A stand-alone Go time (see [`decode_go_time`]) is invalid.
    #[error("{0}")]
    GoTime(GoTimeFault),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names() {
        assert_eq!(field_name(Place::Body, 7), "value");
        assert_eq!(field_name(Place::Body, 16), "unknown");
        assert_eq!(field_name(Place::Htlc(3), 19), "AMP record");
        assert_eq!(field_name(Place::Htlc(3), 65536), "custom record");
        assert_eq!(field_name(Place::Htlc(3), 2), "unknown");
        assert_eq!(field_name(Place::AmpSet(0), 4), "circuit keys");
    }

    #[test]
    fn messages_are_sentences() {
        let e = CodecError::WrongLength {
            place: Place::Body,
            ty: 7,
            len: 3,
            expected: 8,
        };
        assert_eq!(
            e.to_string(),
            "record type 7 (value) in the invoice body is 3 bytes long, expected 8"
        );
        let e = CodecError::UnknownRecord {
            place: Place::Body,
            ty: 16,
        };
        assert_eq!(e.to_string(), "unknown record type 16 in the invoice body");
        let e = CodecError::BodyTruncated {
            declared: 500,
            available: 120,
        };
        assert_eq!(
            e.to_string(),
            "the body length prefix says 500 bytes but only 120 follow"
        );
        let e = CodecError::InvalidTime {
            place: Place::AmpSet(1),
            ty: 3,
            fault: GoTimeFault::Version(3),
        };
        assert_eq!(
            e.to_string(),
            "record type 3 (settle date) in AMP set 1 of record type 15 (AMP state) is not a \
             valid Go time: Go time has version 3; only versions 1 and 2 exist"
        );
    }
}
