//! BigSize integers as lnd's `tlv` package reads and writes them.
//!
//! One byte for values below `0xfd`; otherwise a marker byte followed by the
//! value big-endian: `0xfd` + u16, `0xfe` + u32, `0xff` + u64. A value written
//! in a longer form than it needs is not canonical and is rejected, as lnd's
//! `tlv.ReadVarInt` does.

use std::fmt;

/// Why a BigSize integer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BigSizeFault {
    /// The buffer ends before the integer does.
    Truncated {
        /// Bytes the integer needs, marker included.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The value fits a shorter form than the one used.
    NonCanonical {
        /// The marker byte (`0xfd`, `0xfe` or `0xff`).
        marker: u8,
        /// The value that was read.
        value: u64,
    },
}

impl fmt::Display for BigSizeFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BigSizeFault::Truncated { needed, available } => write!(
                f,
                "truncated: it needs {needed} bytes but only {available} remain"
            ),
            BigSizeFault::NonCanonical { marker, value } => write!(
                f,
                "not canonical: the value {value} is written after marker 0x{marker:02x} \
                 but fits a shorter form"
            ),
        }
    }
}

/// Reads one BigSize integer from the start of `buf`.
///
/// Returns the value and the number of bytes it took.
pub fn read(buf: &[u8]) -> Result<(u64, usize), BigSizeFault> {
    let Some(&marker) = buf.first() else {
        return Err(BigSizeFault::Truncated {
            needed: 1,
            available: 0,
        });
    };
    let (width, min) = match marker {
        0..=0xfc => return Ok((u64::from(marker), 1)),
        0xfd => (2usize, 0xfd_u64),
        0xfe => (4, 0x1_0000),
        0xff => (8, 0x1_0000_0000),
    };
    let needed = 1 + width;
    let Some(payload) = buf.get(1..needed) else {
        return Err(BigSizeFault::Truncated {
            needed,
            available: buf.len(),
        });
    };
    let value = payload
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if value < min {
        return Err(BigSizeFault::NonCanonical { marker, value });
    }
    Ok((value, needed))
}

/// [`read`], a fault reported as the BigSize `what` of the stream at
/// `place`.
pub(crate) fn read_field(
    buf: &[u8],
    place: super::Place,
    what: super::BigSizeField,
) -> Result<(u64, usize), super::CodecError> {
    read(buf).map_err(|fault| super::CodecError::BadBigSize { place, what, fault })
}

/// The number of bytes [`write()`] uses for `value`.
pub fn encoded_len(value: u64) -> usize {
    match value {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Appends `value` to `out` in its canonical BigSize form.
pub fn write(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=0xfc => out.push(value as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, v);
        assert_eq!(out.len(), encoded_len(v));
        out
    }

    #[test]
    fn boundaries_encode_and_decode() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (0xfc, &[0xfc]),
            (0xfd, &[0xfd, 0x00, 0xfd]),
            (0xffff, &[0xfd, 0xff, 0xff]),
            (0x1_0000, &[0xfe, 0x00, 0x01, 0x00, 0x00]),
            (0xffff_ffff, &[0xfe, 0xff, 0xff, 0xff, 0xff]),
            (
                0x1_0000_0000,
                &[0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
            ),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for &(value, bytes) in cases {
            assert_eq!(enc(value), bytes, "encoding {value:#x}");
            assert_eq!(read(bytes), Ok((value, bytes.len())), "decoding {value:#x}");
            // Trailing bytes are not consumed.
            let mut longer = bytes.to_vec();
            longer.push(0xaa);
            assert_eq!(read(&longer), Ok((value, bytes.len())));
        }
    }

    #[test]
    fn non_canonical_rejected() {
        let cases: &[(&[u8], u8, u64)] = &[
            (&[0xfd, 0x00, 0xfc], 0xfd, 0xfc),
            (&[0xfd, 0x00, 0x00], 0xfd, 0),
            (&[0xfe, 0x00, 0x00, 0xff, 0xff], 0xfe, 0xffff),
            (
                &[0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff],
                0xff,
                0xffff_ffff,
            ),
        ];
        for &(bytes, marker, value) in cases {
            assert_eq!(
                read(bytes),
                Err(BigSizeFault::NonCanonical { marker, value })
            );
        }
    }

    #[test]
    fn truncated_rejected() {
        assert_eq!(
            read(&[]),
            Err(BigSizeFault::Truncated {
                needed: 1,
                available: 0
            })
        );
        assert_eq!(
            read(&[0xfd, 0x01]),
            Err(BigSizeFault::Truncated {
                needed: 3,
                available: 2
            })
        );
        assert_eq!(
            read(&[0xfe, 0x01, 0x00, 0x00]),
            Err(BigSizeFault::Truncated {
                needed: 5,
                available: 4
            })
        );
        assert_eq!(
            read(&[0xff]),
            Err(BigSizeFault::Truncated {
                needed: 9,
                available: 1
            })
        );
    }

    #[test]
    fn fault_messages_are_sentences() {
        let msg = BigSizeFault::NonCanonical {
            marker: 0xfd,
            value: 0xfc,
        }
        .to_string();
        assert_eq!(
            msg,
            "not canonical: the value 252 is written after marker 0xfd but fits a shorter form"
        );
    }
}
