//! Go's `time.Time` binary form (`MarshalBinary`, versions 1 and 2).
//!
//! Version 1 is 15 bytes: the version byte, seconds since
//! 0001-01-01T00:00:00Z as a big-endian i64, nanoseconds as a big-endian u32
//! and the zone offset in minutes as a big-endian i16 (`-1` means UTC).
//! Version 2 appends one signed byte of extra offset seconds (16 bytes).
//! Decoding keeps every field so that encoding reproduces the bytes exactly.

use std::fmt;

use super::CodecError;
use crate::model::GoTime;

/// Length of a version 1 Go time.
pub const GO_TIME_V1_LEN: usize = 15;
/// Length of a version 2 Go time.
pub const GO_TIME_V2_LEN: usize = 16;

/// Why bytes are not a Go time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoTimeFault {
    /// No bytes at all.
    Empty,
    /// A version byte other than 1 or 2.
    Version(u8),
    /// The right version but the wrong number of bytes.
    Length {
        /// The version byte.
        version: u8,
        /// The number of bytes present.
        len: usize,
        /// The number of bytes that version has.
        expected: usize,
    },
    /// Nanoseconds of one second or more.
    Nanos(u32),
}

impl fmt::Display for GoTimeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GoTimeFault::Empty => write!(f, "Go time has no bytes"),
            GoTimeFault::Version(v) => {
                write!(f, "Go time has version {v}; only versions 1 and 2 exist")
            }
            GoTimeFault::Length {
                version,
                len,
                expected,
            } => write!(
                f,
                "Go time of version {version} is {len} bytes long, expected {expected}"
            ),
            GoTimeFault::Nanos(n) => write!(
                f,
                "Go time has {n} nanoseconds, which is not below one second"
            ),
        }
    }
}

/// Parses a Go time, reporting a bare [`GoTimeFault`] (callers add the place).
pub(crate) fn parse_go_time(bytes: &[u8]) -> Result<GoTime, GoTimeFault> {
    let Some(&version) = bytes.first() else {
        return Err(GoTimeFault::Empty);
    };
    let expected = match version {
        1 => GO_TIME_V1_LEN,
        2 => GO_TIME_V2_LEN,
        v => return Err(GoTimeFault::Version(v)),
    };
    if bytes.len() != expected {
        return Err(GoTimeFault::Length {
            version,
            len: bytes.len(),
            expected,
        });
    }
    let mut secs = [0u8; 8];
    let mut nanos = [0u8; 4];
    let mut offset = [0u8; 2];
    secs.copy_from_slice(&bytes[1..9]);
    nanos.copy_from_slice(&bytes[9..13]);
    offset.copy_from_slice(&bytes[13..15]);
    let nanos = u32::from_be_bytes(nanos);
    if nanos >= 1_000_000_000 {
        return Err(GoTimeFault::Nanos(nanos));
    }
    let offset_seconds = if version == 2 {
        i8::from_be_bytes([bytes[15]])
    } else {
        0
    };
    Ok(GoTime {
        version,
        secs: i64::from_be_bytes(secs),
        nanos,
        offset_minutes: i16::from_be_bytes(offset),
        offset_seconds,
    })
}

/// Decodes a Go `time.Time` from its `MarshalBinary` bytes (version 1 or 2).
///
/// Rejects other versions, a length that does not match the version, and
/// nanoseconds of one second or more.
pub fn decode_go_time(bytes: &[u8]) -> Result<GoTime, CodecError> {
    parse_go_time(bytes).map_err(CodecError::GoTime)
}

/// The number of bytes [`encode_go_time`] produces for `t`.
pub fn encoded_len(t: &GoTime) -> usize {
    if t.version == 2 {
        GO_TIME_V2_LEN
    } else {
        GO_TIME_V1_LEN
    }
}

/// Appends the binary form of `t` to `out` (see [`encode_go_time`]).
pub fn write_go_time(out: &mut Vec<u8>, t: &GoTime) {
    let v2 = t.version == 2;
    out.push(if v2 { 2 } else { 1 });
    out.extend_from_slice(&t.secs.to_be_bytes());
    out.extend_from_slice(&t.nanos.to_be_bytes());
    out.extend_from_slice(&t.offset_minutes.to_be_bytes());
    if v2 {
        out.extend_from_slice(&t.offset_seconds.to_be_bytes());
    }
}

/// Encodes `t` as Go's `MarshalBinary` would, inverting [`decode_go_time`].
///
/// Version 2 writes 16 bytes including `offset_seconds`; any other version is
/// written as version 1 (15 bytes), which has no offset-seconds byte.
pub fn encode_go_time(t: &GoTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(t));
    write_go_time(&mut out, t);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GO_UNIX_OFFSET_SECS;

    #[test]
    fn known_vector_2021_utc_v1() {
        // 1609459200 + 62135596800 = 63745056000 = 0x0E_D780_5D00.
        let secs: i64 = 1_609_459_200 + GO_UNIX_OFFSET_SECS;
        assert_eq!(secs, 63_745_056_000);
        assert_eq!(secs, 0x0E_D780_5D00);
        let bytes = [
            0x01, // version
            0x00, 0x00, 0x00, 0x0E, 0xD7, 0x80, 0x5D, 0x00, // seconds
            0x00, 0x00, 0x00, 0x00, // nanos
            0xFF, 0xFF, // offset -1 = UTC
        ];
        let t = decode_go_time(&bytes).unwrap();
        assert_eq!(t, GoTime::from_unix(1_609_459_200, 0));
        assert_eq!(t.unix_secs(), 1_609_459_200);
        assert_eq!(encode_go_time(&t), bytes);
    }

    #[test]
    fn zero_time() {
        let bytes = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(decode_go_time(&bytes), Ok(GoTime::ZERO));
        assert_eq!(encode_go_time(&GoTime::ZERO), bytes);
    }

    #[test]
    fn v2_round_trip_keeps_offset_seconds() {
        // +05:30:15 -> 330 minutes, 15 seconds.
        let t = GoTime {
            version: 2,
            secs: 63_745_056_000,
            nanos: 123_456_789,
            offset_minutes: 330,
            offset_seconds: 15,
        };
        let bytes = encode_go_time(&t);
        assert_eq!(bytes.len(), 16);
        assert_eq!(
            bytes,
            [
                0x02, 0x00, 0x00, 0x00, 0x0E, 0xD7, 0x80, 0x5D, 0x00, 0x07, 0x5B, 0xCD, 0x15, 0x01,
                0x4A, 0x0F
            ]
        );
        assert_eq!(decode_go_time(&bytes), Ok(t));
        // Negative offset seconds survive too.
        let t2 = GoTime {
            offset_minutes: -61,
            offset_seconds: -7,
            ..t
        };
        assert_eq!(decode_go_time(&encode_go_time(&t2)), Ok(t2));
    }

    #[test]
    fn v1_round_trip_with_offset() {
        let t = GoTime {
            version: 1,
            secs: -5,
            nanos: 999_999_999,
            offset_minutes: -480,
            offset_seconds: 0,
        };
        let bytes = encode_go_time(&t);
        assert_eq!(bytes.len(), 15);
        assert_eq!(decode_go_time(&bytes), Ok(t));
    }

    #[test]
    fn rejects_bad_versions_and_lengths() {
        assert_eq!(
            decode_go_time(&[]),
            Err(CodecError::GoTime(GoTimeFault::Empty))
        );
        let mut v3 = encode_go_time(&GoTime::ZERO);
        v3[0] = 3;
        let err = decode_go_time(&v3).unwrap_err();
        assert_eq!(err, CodecError::GoTime(GoTimeFault::Version(3)));
        assert_eq!(
            err.to_string(),
            "Go time has version 3; only versions 1 and 2 exist"
        );
        let mut v0 = v3.clone();
        v0[0] = 0;
        assert_eq!(
            decode_go_time(&v0),
            Err(CodecError::GoTime(GoTimeFault::Version(0)))
        );

        // Version 1 with 16 bytes, version 2 with 15 bytes.
        let mut long_v1 = encode_go_time(&GoTime::ZERO);
        long_v1.push(0);
        assert_eq!(
            decode_go_time(&long_v1),
            Err(CodecError::GoTime(GoTimeFault::Length {
                version: 1,
                len: 16,
                expected: 15
            }))
        );
        let mut short_v2 = encode_go_time(&GoTime::ZERO);
        short_v2[0] = 2;
        assert_eq!(
            decode_go_time(&short_v2),
            Err(CodecError::GoTime(GoTimeFault::Length {
                version: 2,
                len: 15,
                expected: 16
            }))
        );
        assert_eq!(
            decode_go_time(&[1, 0, 0]),
            Err(CodecError::GoTime(GoTimeFault::Length {
                version: 1,
                len: 3,
                expected: 15
            }))
        );
    }

    #[test]
    fn rejects_nanos_of_a_second_or_more() {
        let mut bytes = encode_go_time(&GoTime::ZERO);
        bytes[9..13].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert_eq!(
            decode_go_time(&bytes),
            Err(CodecError::GoTime(GoTimeFault::Nanos(1_000_000_000)))
        );
    }
}
