//! Invoice values and HTLC sets of lnd's `invoices` bucket.
//!
//! An invoice value is a u64 BE body length, the body TLV stream, then zero or
//! more HTLC records (u64 BE length + HTLC TLV stream) until the value ends.
//! An AMP HTLC set value is just such a run of HTLC records. Missing records
//! decode as their zero value; unknown records are errors (nothing is dropped
//! silently), except HTLC custom records (types ≥ 65536), which are kept.

use std::collections::BTreeMap;

use super::bigsize;
use super::gotime::{self, parse_go_time};
use super::tlv::{record_len, TlvReader, TlvWriter};
use super::{BigSizeField, CodecError, Place};
use crate::model::{AmpSetState, GoTime, Htlc, HtlcAmp, Invoice};

/// Lowest HTLC record type that is a custom record.
pub const CUSTOM_RECORD_MIN: u64 = 65_536;

// Body record types.
const MEMO: u64 = 0;
const PAY_REQ: u64 = 1;
const CREATION_DATE: u64 = 2;
const SETTLE_DATE: u64 = 3;
const ADD_INDEX: u64 = 4;
const SETTLE_INDEX: u64 = 5;
const PREIMAGE: u64 = 6;
const VALUE: u64 = 7;
const CLTV_DELTA: u64 = 8;
const EXPIRY: u64 = 9;
const PAY_ADDR: u64 = 10;
const FEATURES: u64 = 11;
const STATE: u64 = 12;
const AMT_PAID: u64 = 13;
const HODL: u64 = 14;
const AMP_STATE: u64 = 15;

// HTLC record types.
const H_CHAN_ID: u64 = 1;
const H_HTLC_ID: u64 = 3;
const H_AMT: u64 = 5;
const H_ACCEPT_HEIGHT: u64 = 7;
const H_ACCEPT_TIME: u64 = 9;
const H_RESOLVE_TIME: u64 = 11;
const H_EXPIRY_HEIGHT: u64 = 13;
const H_STATE: u64 = 15;
const H_MPP_TOTAL: u64 = 17;
const H_AMP: u64 = 19;
const H_AMP_HASH: u64 = 21;
const H_AMP_PREIMAGE: u64 = 23;

// AMP set record types (inside body record 15).
const S_SET_ID: u64 = 0;
const S_STATE: u64 = 1;
const S_SETTLE_INDEX: u64 = 2;
const S_SETTLE_DATE: u64 = 3;
const S_CIRCUIT_KEYS: u64 = 4;
const S_AMT_PAID: u64 = 5;

/// Root share and set id before the truncated child index in HTLC type 19.
const AMP_FIXED_LEN: usize = 64;

// ---------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------

fn fixed<const N: usize>(place: Place, ty: u64, v: &[u8]) -> Result<[u8; N], CodecError> {
    <[u8; N]>::try_from(v).map_err(|_| CodecError::WrongLength {
        place,
        ty,
        len: v.len(),
        expected: N,
    })
}

fn get_u8(place: Place, ty: u64, v: &[u8]) -> Result<u8, CodecError> {
    fixed::<1>(place, ty, v).map(|b| b[0])
}

fn get_u32(place: Place, ty: u64, v: &[u8]) -> Result<u32, CodecError> {
    fixed::<4>(place, ty, v).map(u32::from_be_bytes)
}

fn get_u64(place: Place, ty: u64, v: &[u8]) -> Result<u64, CodecError> {
    fixed::<8>(place, ty, v).map(u64::from_be_bytes)
}

fn get_time(place: Place, ty: u64, v: &[u8]) -> Result<GoTime, CodecError> {
    parse_go_time(v).map_err(|fault| CodecError::InvalidTime { place, ty, fault })
}

fn read_u64_be(buf: &[u8]) -> Option<u64> {
    let head: [u8; 8] = buf.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

// ---------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------

fn decode_features(place: Place, ty: u64, v: &[u8]) -> Result<Vec<u32>, CodecError> {
    // Bit numbers run to len*8 - 1, which must fit a u32.
    if v.len() > (1usize << 29) {
        return Err(CodecError::FeaturesTooLong {
            place,
            ty,
            len: v.len(),
        });
    }
    let mut bits = Vec::new();
    // The last byte holds bits 0..8, the one before it 8..16, and so on.
    for (group, &byte) in v.iter().rev().enumerate() {
        if byte == 0 {
            continue;
        }
        for b in 0..8u32 {
            if byte & (1 << b) != 0 {
                let bit = u32::try_from(group)
                    .ok()
                    .and_then(|g| g.checked_mul(8))
                    .and_then(|g| g.checked_add(b))
                    .ok_or(CodecError::FeaturesTooLong {
                        place,
                        ty,
                        len: v.len(),
                    })?;
                bits.push(bit);
            }
        }
    }
    Ok(bits)
}

fn features_len(features: &[u32]) -> usize {
    features.iter().max().map_or(0, |&max| max as usize / 8 + 1)
}

fn write_features(out: &mut Vec<u8>, features: &[u32], len: usize) {
    let start = out.len();
    out.resize(start + len, 0);
    let vector = &mut out[start..];
    for &bit in features {
        vector[len - 1 - bit as usize / 8] |= 1 << (bit % 8);
    }
}

// ---------------------------------------------------------------------------
// AMP state (body record 15)
// ---------------------------------------------------------------------------

fn decode_circuit_keys(place: Place, v: &[u8]) -> Result<Vec<(u64, u64)>, CodecError> {
    let (count, used) = bigsize::read_field(v, place, BigSizeField::CircuitKeyCount)?;
    let rest = v.get(used..).unwrap_or(&[]);
    let mismatch = CodecError::CircuitKeysLength {
        place,
        count,
        available: rest.len(),
    };
    match count.checked_mul(16).and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n == rest.len() => {}
        _ => return Err(mismatch),
    }
    Ok(rest
        .chunks_exact(16)
        .map(|c| {
            let mut chan = [0u8; 8];
            let mut htlc = [0u8; 8];
            chan.copy_from_slice(&c[..8]);
            htlc.copy_from_slice(&c[8..]);
            (u64::from_be_bytes(chan), u64::from_be_bytes(htlc))
        })
        .collect())
}

fn decode_amp_set(index: usize, stream: &[u8]) -> Result<AmpSetState, CodecError> {
    let place = Place::AmpSet(index);
    let mut set = AmpSetState {
        set_id: [0; 32],
        state: 0,
        settle_index: 0,
        settle_date: GoTime::ZERO,
        circuit_keys: Vec::new(),
        amt_paid_msat: 0,
    };
    for rec in TlvReader::new(stream, place) {
        let (ty, v) = rec?;
        match ty {
            S_SET_ID => set.set_id = fixed::<32>(place, ty, v)?,
            S_STATE => set.state = get_u8(place, ty, v)?,
            S_SETTLE_INDEX => set.settle_index = get_u64(place, ty, v)?,
            S_SETTLE_DATE => set.settle_date = get_time(place, ty, v)?,
            S_CIRCUIT_KEYS => set.circuit_keys = decode_circuit_keys(place, v)?,
            S_AMT_PAID => set.amt_paid_msat = get_u64(place, ty, v)?,
            _ => return Err(CodecError::UnknownRecord { place, ty }),
        }
    }
    Ok(set)
}

fn decode_amp_state(v: &[u8]) -> Result<Vec<AmpSetState>, CodecError> {
    let (count, mut pos) = bigsize::read_field(v, Place::Body, BigSizeField::AmpSetCount)?;
    // Every set takes at least one byte, so the remaining length bounds the
    // allocation whatever the count claims.
    let cap = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(v.len().saturating_sub(pos));
    let mut sets = Vec::with_capacity(cap);
    let mut index = 0usize;
    let mut remaining = count;
    while remaining > 0 {
        let rest = v.get(pos..).unwrap_or(&[]);
        let (len, used) =
            bigsize::read_field(rest, Place::Body, BigSizeField::AmpSetLength { index })?;
        let body = rest.get(used..).unwrap_or(&[]);
        let stream = usize::try_from(len)
            .ok()
            .and_then(|l| body.get(..l))
            .ok_or(CodecError::AmpSetTruncated {
                index,
                declared: len,
                available: body.len(),
            })?;
        sets.push(decode_amp_set(index, stream)?);
        pos += used + stream.len();
        index += 1;
        remaining -= 1;
    }
    let extra = v.len().saturating_sub(pos);
    if extra != 0 {
        return Err(CodecError::TrailingBytes {
            place: Place::Body,
            ty: AMP_STATE,
            extra,
        });
    }
    Ok(sets)
}

fn amp_set_stream_len(set: &AmpSetState) -> usize {
    let keys = set.circuit_keys.len();
    let keys_len = bigsize::encoded_len(keys as u64) + keys * 16;
    record_len(S_SET_ID, 32)
        + record_len(S_STATE, 1)
        + record_len(S_SETTLE_INDEX, 8)
        + record_len(S_SETTLE_DATE, gotime::encoded_len(&set.settle_date))
        + record_len(S_CIRCUIT_KEYS, keys_len)
        + record_len(S_AMT_PAID, 8)
}

fn amp_state_len(sets: &[AmpSetState]) -> usize {
    bigsize::encoded_len(sets.len() as u64)
        + sets
            .iter()
            .map(|s| {
                let l = amp_set_stream_len(s);
                bigsize::encoded_len(l as u64) + l
            })
            .sum::<usize>()
}

fn write_amp_state(w: &mut TlvWriter<'_>, sets: &[AmpSetState]) {
    w.header(AMP_STATE, amp_state_len(sets));
    let out = w.out();
    let start = out.len();
    bigsize::write(out, sets.len() as u64);
    for set in sets {
        bigsize::write(out, amp_set_stream_len(set) as u64);
        let mut s = TlvWriter::new(out);
        s.bytes(S_SET_ID, &set.set_id);
        s.u8(S_STATE, set.state);
        s.u64(S_SETTLE_INDEX, set.settle_index);
        s.header(S_SETTLE_DATE, gotime::encoded_len(&set.settle_date));
        gotime::write_go_time(s.out(), &set.settle_date);
        let keys = set.circuit_keys.len();
        s.header(
            S_CIRCUIT_KEYS,
            bigsize::encoded_len(keys as u64) + keys * 16,
        );
        let o = s.out();
        bigsize::write(o, keys as u64);
        for &(chan, htlc) in &set.circuit_keys {
            o.extend_from_slice(&chan.to_be_bytes());
            o.extend_from_slice(&htlc.to_be_bytes());
        }
        s.u64(S_AMT_PAID, set.amt_paid_msat);
    }
    debug_assert_eq!(w.out().len() - start, amp_state_len(sets));
}

// ---------------------------------------------------------------------------
// HTLCs
// ---------------------------------------------------------------------------

fn decode_htlc_amp(place: Place, v: &[u8]) -> Result<([u8; 32], [u8; 32], u32), CodecError> {
    let ty = H_AMP;
    if v.len() < AMP_FIXED_LEN || v.len() > AMP_FIXED_LEN + 4 {
        return Err(CodecError::LengthOutOfRange {
            place,
            ty,
            len: v.len(),
            min: AMP_FIXED_LEN,
            max: AMP_FIXED_LEN + 4,
        });
    }
    let (fixed_part, child) = v.split_at(AMP_FIXED_LEN);
    let mut root_share = [0u8; 32];
    let mut set_id = [0u8; 32];
    root_share.copy_from_slice(&fixed_part[..32]);
    set_id.copy_from_slice(&fixed_part[32..]);
    if child.first() == Some(&0) {
        return Err(CodecError::NonMinimalInteger { place, ty });
    }
    let child_index = child.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    Ok((root_share, set_id, child_index))
}

/// Decodes one HTLC TLV stream (without its length prefix).
fn decode_htlc(index: usize, stream: &[u8]) -> Result<Htlc, CodecError> {
    let place = Place::Htlc(index);
    let mut h = Htlc {
        chan_id: 0,
        htlc_id: 0,
        amt_msat: 0,
        accept_height: 0,
        accept_time_ns: 0,
        resolve_time_ns: 0,
        expiry_height: 0,
        state: 0,
        mpp_total_msat: 0,
        amp: None,
        custom_records: BTreeMap::new(),
    };
    let mut amp_record = None;
    let mut amp_hash = None;
    let mut amp_preimage = None;
    for rec in TlvReader::new(stream, place) {
        let (ty, v) = rec?;
        match ty {
            H_CHAN_ID => h.chan_id = get_u64(place, ty, v)?,
            H_HTLC_ID => h.htlc_id = get_u64(place, ty, v)?,
            H_AMT => h.amt_msat = get_u64(place, ty, v)?,
            H_ACCEPT_HEIGHT => h.accept_height = get_u32(place, ty, v)?,
            H_ACCEPT_TIME => h.accept_time_ns = get_u64(place, ty, v)?,
            H_RESOLVE_TIME => h.resolve_time_ns = get_u64(place, ty, v)?,
            H_EXPIRY_HEIGHT => h.expiry_height = get_u32(place, ty, v)?,
            H_STATE => h.state = get_u8(place, ty, v)?,
            H_MPP_TOTAL => h.mpp_total_msat = get_u64(place, ty, v)?,
            H_AMP => amp_record = Some(decode_htlc_amp(place, v)?),
            H_AMP_HASH => amp_hash = Some(fixed::<32>(place, ty, v)?),
            H_AMP_PREIMAGE => amp_preimage = Some(fixed::<32>(place, ty, v)?),
            CUSTOM_RECORD_MIN.. => {
                h.custom_records.insert(ty, v.to_vec());
            }
            _ => return Err(CodecError::UnknownRecord { place, ty }),
        }
    }
    match amp_record {
        Some((root_share, set_id, child_index)) => {
            h.amp = Some(HtlcAmp {
                root_share,
                set_id,
                child_index,
                hash: amp_hash.unwrap_or([0; 32]),
                preimage: amp_preimage,
            });
        }
        None => {
            let stray = if amp_hash.is_some() {
                Some(H_AMP_HASH)
            } else if amp_preimage.is_some() {
                Some(H_AMP_PREIMAGE)
            } else {
                None
            };
            if let Some(ty) = stray {
                return Err(CodecError::AmpPartWithoutRecord { place, ty });
            }
        }
    }
    Ok(h)
}

/// Decodes a run of (u64 BE length + HTLC stream) records filling all of
/// `bytes`, appending to `out`.
fn decode_htlc_records(mut bytes: &[u8], out: &mut Vec<Htlc>) -> Result<(), CodecError> {
    let mut index = 0usize;
    while !bytes.is_empty() {
        let Some(declared) = read_u64_be(bytes) else {
            return Err(CodecError::HtlcLengthMissing {
                index,
                available: bytes.len(),
            });
        };
        let rest = bytes.get(8..).unwrap_or(&[]);
        let stream = usize::try_from(declared)
            .ok()
            .and_then(|l| rest.get(..l))
            .ok_or(CodecError::HtlcTruncated {
                index,
                declared,
                available: rest.len(),
            })?;
        out.push(decode_htlc(index, stream)?);
        bytes = rest.get(stream.len()..).unwrap_or(&[]);
        index += 1;
    }
    Ok(())
}

fn write_htlc(out: &mut Vec<u8>, h: &Htlc) {
    let len_at = out.len();
    out.extend_from_slice(&[0; 8]);
    let start = out.len();
    let mut w = TlvWriter::new(out);
    w.u64(H_CHAN_ID, h.chan_id);
    w.u64(H_HTLC_ID, h.htlc_id);
    w.u64(H_AMT, h.amt_msat);
    w.u32(H_ACCEPT_HEIGHT, h.accept_height);
    w.u64(H_ACCEPT_TIME, h.accept_time_ns);
    w.u64(H_RESOLVE_TIME, h.resolve_time_ns);
    w.u32(H_EXPIRY_HEIGHT, h.expiry_height);
    w.u8(H_STATE, h.state);
    w.u64(H_MPP_TOTAL, h.mpp_total_msat);
    if let Some(amp) = &h.amp {
        let child = amp.child_index.to_be_bytes();
        let skip = child.iter().take_while(|&&b| b == 0).count();
        let child = &child[skip..];
        w.header(H_AMP, AMP_FIXED_LEN + child.len());
        let o = w.out();
        o.extend_from_slice(&amp.root_share);
        o.extend_from_slice(&amp.set_id);
        o.extend_from_slice(child);
        w.bytes(H_AMP_HASH, &amp.hash);
        if let Some(p) = &amp.preimage {
            w.bytes(H_AMP_PREIMAGE, p);
        }
    }
    for (&ty, v) in &h.custom_records {
        w.bytes(ty, v);
    }
    let len = (out.len() - start) as u64;
    out[len_at..start].copy_from_slice(&len.to_be_bytes());
}

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// The body stream of an encoded invoice: the bytes after its `u64` length,
/// as many as it declares.
fn invoice_body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    let Some(declared) = read_u64_be(bytes) else {
        return Err(CodecError::BodyLengthMissing {
            available: bytes.len(),
        });
    };
    let rest = bytes.get(8..).unwrap_or(&[]);
    usize::try_from(declared)
        .ok()
        .and_then(|l| rest.get(..l))
        .ok_or(CodecError::BodyTruncated {
            declared,
            available: rest.len(),
        })
}

/// The preimage of an encoded invoice (body record 6) without decoding the
/// rest, exactly as [`decode_invoice`] reads it: `None` when the record is
/// absent or all zeros (a hodl invoice whose preimage is not known yet).
/// The records before it are walked, so a malformed stream up to there is
/// an error here too.
pub fn invoice_preimage(bytes: &[u8]) -> Result<Option<[u8; 32]>, CodecError> {
    let place = Place::Body;
    for rec in TlvReader::new(invoice_body(bytes)?, place) {
        let (ty, v) = rec?;
        if ty == PREIMAGE {
            let p = fixed::<32>(place, ty, v)?;
            return Ok((p != [0; 32]).then_some(p));
        }
        if ty > PREIMAGE {
            break;
        }
    }
    Ok(None)
}

/// Decodes an invoice value from the `invoices` bucket.
///
/// Reads the u64 BE body length, the body stream, and then every HTLC record
/// that follows, whatever the feature bits say (legacy AMP invoices carry
/// both the AMP feature and inline HTLCs).
pub fn decode_invoice(bytes: &[u8]) -> Result<Invoice, CodecError> {
    let body = invoice_body(bytes)?;

    let place = Place::Body;
    let mut inv = Invoice {
        memo: Vec::new(),
        payment_request: Vec::new(),
        creation_date: GoTime::ZERO,
        settle_date: GoTime::ZERO,
        add_index: 0,
        settle_index: 0,
        preimage: None,
        value_msat: 0,
        cltv_delta: 0,
        expiry_ns: 0,
        payment_addr: [0; 32],
        features: Vec::new(),
        state: 0,
        amt_paid_msat: 0,
        hodl: false,
        amp_state: Vec::new(),
        htlcs: Vec::new(),
    };
    for rec in TlvReader::new(body, place) {
        let (ty, v) = rec?;
        match ty {
            MEMO => inv.memo = v.to_vec(),
            PAY_REQ => inv.payment_request = v.to_vec(),
            CREATION_DATE => inv.creation_date = get_time(place, ty, v)?,
            SETTLE_DATE => inv.settle_date = get_time(place, ty, v)?,
            ADD_INDEX => inv.add_index = get_u64(place, ty, v)?,
            SETTLE_INDEX => inv.settle_index = get_u64(place, ty, v)?,
            PREIMAGE => {
                let p = fixed::<32>(place, ty, v)?;
                inv.preimage = (p != [0; 32]).then_some(p);
            }
            VALUE => inv.value_msat = get_u64(place, ty, v)?,
            CLTV_DELTA => inv.cltv_delta = get_u32(place, ty, v)?,
            EXPIRY => inv.expiry_ns = get_u64(place, ty, v)?,
            PAY_ADDR => inv.payment_addr = fixed::<32>(place, ty, v)?,
            FEATURES => inv.features = decode_features(place, ty, v)?,
            STATE => inv.state = get_u8(place, ty, v)?,
            AMT_PAID => inv.amt_paid_msat = get_u64(place, ty, v)?,
            HODL => inv.hodl = get_u8(place, ty, v)? != 0,
            AMP_STATE => inv.amp_state = decode_amp_state(v)?,
            _ => return Err(CodecError::UnknownRecord { place, ty }),
        }
    }

    let htlc_bytes = bytes.get(8 + body.len()..).unwrap_or(&[]);
    decode_htlc_records(htlc_bytes, &mut inv.htlcs)?;
    Ok(inv)
}

/// Encodes an invoice exactly as lnd lays it out, inverting [`decode_invoice`].
///
/// Writes body records 0 to 14 always, record 15 only when `amp_state` is
/// non-empty, and then every HTLC in `inv.htlcs` in order (even for AMP
/// invoices: the caller decides what to put there). A `None` preimage is
/// written as 32 zero bytes. Features must be below 2^32 bits; HTLC custom
/// records must have types ≥ 65536 or the stream will not decode.
pub fn encode_invoice(inv: &Invoice) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        256 + inv.memo.len() + inv.payment_request.len() + inv.htlcs.len() * 128,
    );
    out.extend_from_slice(&[0; 8]);
    let start = out.len();
    let mut w = TlvWriter::new(&mut out);
    w.bytes(MEMO, &inv.memo);
    w.bytes(PAY_REQ, &inv.payment_request);
    w.header(CREATION_DATE, gotime::encoded_len(&inv.creation_date));
    gotime::write_go_time(w.out(), &inv.creation_date);
    w.header(SETTLE_DATE, gotime::encoded_len(&inv.settle_date));
    gotime::write_go_time(w.out(), &inv.settle_date);
    w.u64(ADD_INDEX, inv.add_index);
    w.u64(SETTLE_INDEX, inv.settle_index);
    w.bytes(PREIMAGE, &inv.preimage.unwrap_or([0; 32]));
    w.u64(VALUE, inv.value_msat);
    w.u32(CLTV_DELTA, inv.cltv_delta);
    w.u64(EXPIRY, inv.expiry_ns);
    w.bytes(PAY_ADDR, &inv.payment_addr);
    let flen = features_len(&inv.features);
    w.header(FEATURES, flen);
    write_features(w.out(), &inv.features, flen);
    w.u8(STATE, inv.state);
    w.u64(AMT_PAID, inv.amt_paid_msat);
    w.u8(HODL, u8::from(inv.hodl));
    if !inv.amp_state.is_empty() {
        write_amp_state(&mut w, &inv.amp_state);
    }
    let body_len = (out.len() - start) as u64;
    out[..8].copy_from_slice(&body_len.to_be_bytes());
    for h in &inv.htlcs {
        write_htlc(&mut out, h);
    }
    out
}

/// Decodes the HTLC set of one AMP sub-invoice (the value stored under
/// invoice number ‖ set id): a run of u64 BE length + HTLC stream records.
pub fn decode_htlc_set(bytes: &[u8]) -> Result<Vec<Htlc>, CodecError> {
    let mut htlcs = Vec::new();
    decode_htlc_records(bytes, &mut htlcs)?;
    Ok(htlcs)
}

/// Encodes an AMP HTLC set, inverting [`decode_htlc_set`].
pub fn encode_htlc_set(htlcs: &[Htlc]) -> Vec<u8> {
    let mut out = Vec::with_capacity(htlcs.len() * 128);
    for h in htlcs {
        write_htlc(&mut out, h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{BigSizeFault, GoTimeFault};

    fn time_bytes(t: &GoTime) -> Vec<u8> {
        crate::codec::encode_go_time(t)
    }

    /// Builds an invoice value from a body stream and raw HTLC streams.
    fn value(body: &[u8], htlcs: &[&[u8]]) -> Vec<u8> {
        let mut v = (body.len() as u64).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        for h in htlcs {
            v.extend_from_slice(&(h.len() as u64).to_be_bytes());
            v.extend_from_slice(h);
        }
        v
    }

    fn stream(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = TlvWriter::new(&mut out);
        for (ty, v) in records {
            w.bytes(*ty, v);
        }
        out
    }

    fn sample_htlc() -> Htlc {
        let mut custom = BTreeMap::new();
        custom.insert(65_536, vec![1, 2, 3]);
        custom.insert(5_482_373_484, vec![]);
        Htlc {
            chan_id: 0x0000_1234_0000_5678,
            htlc_id: 7,
            amt_msat: 1_000,
            accept_height: 800_000,
            accept_time_ns: 1_700_000_000_000_000_000,
            resolve_time_ns: 0,
            expiry_height: 800_040,
            state: 2,
            mpp_total_msat: 1_000,
            amp: None,
            custom_records: custom,
        }
    }

    fn sample_invoice() -> Invoice {
        Invoice {
            memo: vec![0xff, 0xfe, b'h', b'i'],
            payment_request: b"lnbc1...".to_vec(),
            creation_date: GoTime::from_unix(1_700_000_000, 5),
            settle_date: GoTime {
                version: 2,
                secs: 63_840_000_000,
                nanos: 1,
                offset_minutes: 120,
                offset_seconds: -3,
            },
            add_index: 42,
            settle_index: 3,
            preimage: Some([9; 32]),
            value_msat: 5_000,
            cltv_delta: 40,
            expiry_ns: 3_600_000_000_000,
            payment_addr: [7; 32],
            features: vec![9, 14, 17],
            state: 1,
            amt_paid_msat: 5_000,
            hodl: false,
            amp_state: Vec::new(),
            htlcs: vec![sample_htlc()],
        }
    }

    #[test]
    fn features_known_vector() {
        let mut out = Vec::new();
        let f = [14u32, 17];
        let len = features_len(&f);
        assert_eq!(len, 3);
        write_features(&mut out, &f, len);
        assert_eq!(out, [0x02, 0x40, 0x00]);
        assert_eq!(
            decode_features(Place::Body, FEATURES, &out).unwrap(),
            vec![14, 17]
        );
        // Bits 0 and 8 and 9.
        let mut out = Vec::new();
        write_features(&mut out, &[0, 8, 9], 2);
        assert_eq!(out, [0x03, 0x01]);
        assert_eq!(features_len(&[]), 0);
        // Non-minimal (leading zero) vectors still decode.
        assert_eq!(
            decode_features(Place::Body, FEATURES, &[0, 0, 0x80]).unwrap(),
            vec![7]
        );
    }

    #[test]
    fn round_trip_sample() {
        let inv = sample_invoice();
        let bytes = encode_invoice(&inv);
        assert_eq!(decode_invoice(&bytes).unwrap(), inv);
    }

    #[test]
    fn empty_body_decodes_to_zero_values() {
        let inv = decode_invoice(&value(&[], &[])).unwrap();
        assert!(inv.memo.is_empty() && inv.payment_request.is_empty());
        assert_eq!(inv.creation_date, GoTime::ZERO);
        assert_eq!(inv.settle_date, GoTime::ZERO);
        assert_eq!(inv.add_index, 0);
        assert_eq!(inv.preimage, None);
        assert_eq!(inv.payment_addr, [0; 32]);
        assert!(inv.features.is_empty());
        assert!(!inv.hodl);
        assert!(inv.amp_state.is_empty());
        assert!(inv.htlcs.is_empty());
    }

    #[test]
    fn old_invoice_missing_newer_records() {
        // An early invoice: memo, payreq, dates, add index, preimage, value,
        // cltv, expiry, state, amount paid; no settle index, no payment address,
        // no features, no hodl, no AMP state.
        let created = GoTime::from_unix(1_550_000_000, 0);
        let ct = time_bytes(&created);
        let st = time_bytes(&GoTime::ZERO);
        let body = stream(&[
            (0, b"coffee"),
            (1, b"lnbc"),
            (2, &ct),
            (3, &st),
            (4, &1u64.to_be_bytes()),
            (6, &[0; 32]),
            (7, &100u64.to_be_bytes()),
            (8, &144u32.to_be_bytes()),
            (9, &3_600_000_000_000u64.to_be_bytes()),
            (12, &[0]),
            (13, &0u64.to_be_bytes()),
        ]);
        let inv = decode_invoice(&value(&body, &[])).unwrap();
        assert_eq!(inv.memo, b"coffee");
        assert_eq!(inv.creation_date, created);
        assert_eq!(inv.settle_index, 0);
        assert_eq!(inv.preimage, None);
        assert_eq!(inv.cltv_delta, 144);
        assert_eq!(inv.payment_addr, [0; 32]);
        assert!(inv.features.is_empty());
        assert!(!inv.hodl);
    }

    #[test]
    fn hodl_nonzero_is_true_and_zero_preimage_is_none() {
        let body = stream(&[(6, &[0; 32]), (14, &[1])]);
        let inv = decode_invoice(&value(&body, &[])).unwrap();
        assert!(inv.hodl);
        assert_eq!(inv.preimage, None);
        let body = stream(&[(14, &[5])]);
        assert!(decode_invoice(&value(&body, &[])).unwrap().hodl);
    }

    #[test]
    fn encode_writes_every_body_record() {
        let mut inv = sample_invoice();
        inv.memo.clear();
        inv.payment_request.clear();
        inv.preimage = None;
        inv.features.clear();
        inv.htlcs.clear();
        let bytes = encode_invoice(&inv);
        let body = &bytes[8..];
        let types: Vec<u64> = TlvReader::new(body, Place::Body)
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(types, (0..=14).collect::<Vec<u64>>());
        let lens: Vec<usize> = TlvReader::new(body, Place::Body)
            .map(|r| r.unwrap().1.len())
            .collect();
        assert_eq!(lens, [0, 0, 15, 16, 8, 8, 32, 8, 4, 8, 32, 0, 1, 8, 1]);
        assert_eq!(
            u64::from_be_bytes(bytes[..8].try_into().unwrap()),
            body.len() as u64
        );
    }

    #[test]
    fn amp_state_round_trip_and_layout() {
        let mut inv = sample_invoice();
        inv.features = vec![30, 31];
        inv.htlcs.clear();
        inv.amp_state = vec![
            AmpSetState {
                set_id: [3; 32],
                state: 2,
                settle_index: 9,
                settle_date: GoTime::from_unix(1_700_000_100, 0),
                circuit_keys: vec![(1, 2), (3, 4)],
                amt_paid_msat: 77,
            },
            AmpSetState {
                set_id: [1; 32],
                state: 0,
                settle_index: 0,
                settle_date: GoTime::ZERO,
                circuit_keys: vec![],
                amt_paid_msat: 0,
            },
        ];
        let bytes = encode_invoice(&inv);
        assert_eq!(decode_invoice(&bytes).unwrap(), inv);
        // Record 15 is the last body record; its value starts with count 2.
        let (ty, v) = TlvReader::new(&bytes[8..], Place::Body)
            .map(|r| r.unwrap())
            .last()
            .unwrap();
        assert_eq!(ty, 15);
        assert_eq!(v[0], 2);
        // First set: 34 + 3 + 10 + 17 + (2 + 1 + 32) + 10 = 109 bytes.
        assert_eq!(v[1], 109);
        assert_eq!(&v[2..5], &[0, 32, 3]);
    }

    #[test]
    fn legacy_amp_invoice_keeps_inline_htlcs() {
        let mut inv = sample_invoice();
        inv.features = vec![30];
        let mut h = sample_htlc();
        h.amp = Some(HtlcAmp {
            root_share: [1; 32],
            set_id: [2; 32],
            child_index: 0,
            hash: [3; 32],
            preimage: Some([0; 32]),
        });
        inv.htlcs = vec![h.clone(), sample_htlc()];
        let bytes = encode_invoice(&inv);
        let back = decode_invoice(&bytes).unwrap();
        assert!(back.is_amp());
        assert_eq!(back.htlcs.len(), 2);
        assert_eq!(back, inv);
    }

    #[test]
    fn htlc_amp_layout() {
        let h = Htlc {
            amp: Some(HtlcAmp {
                root_share: [1; 32],
                set_id: [2; 32],
                child_index: 0x0102,
                hash: [3; 32],
                preimage: None,
            }),
            custom_records: BTreeMap::new(),
            ..sample_htlc()
        };
        let bytes = encode_htlc_set(std::slice::from_ref(&h));
        let recs: Vec<(u64, &[u8])> = TlvReader::new(&bytes[8..], Place::Htlc(0))
            .map(|r| r.unwrap())
            .collect();
        let types: Vec<u64> = recs.iter().map(|r| r.0).collect();
        assert_eq!(types, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21]);
        assert_eq!(recs[9].1.len(), 66);
        assert_eq!(&recs[9].1[64..], &[0x01, 0x02]);
        assert_eq!(decode_htlc_set(&bytes).unwrap(), vec![h.clone()]);

        // Child index 0 is written with no bytes.
        let mut h0 = h.clone();
        h0.amp.as_mut().unwrap().child_index = 0;
        let bytes = encode_htlc_set(std::slice::from_ref(&h0));
        let amp = TlvReader::new(&bytes[8..], Place::Htlc(0))
            .map(|r| r.unwrap())
            .find(|r| r.0 == 19)
            .unwrap();
        assert_eq!(amp.1.len(), 64);
        assert_eq!(decode_htlc_set(&bytes).unwrap(), vec![h0]);
    }

    #[test]
    fn htlc_amp_missing_hash_defaults_to_zero() {
        let mut amp = vec![1u8; 64];
        amp.push(5);
        let s = stream(&[(19, &amp)]);
        let set = decode_htlc_set(&value_htlcs(&[&s])).unwrap();
        let a = set[0].amp.as_ref().unwrap();
        assert_eq!(a.child_index, 5);
        assert_eq!(a.hash, [0; 32]);
        assert_eq!(a.preimage, None);
    }

    fn value_htlcs(htlcs: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for h in htlcs {
            v.extend_from_slice(&(h.len() as u64).to_be_bytes());
            v.extend_from_slice(h);
        }
        v
    }

    #[test]
    fn htlc_set_round_trip() {
        let hs = vec![sample_htlc(), sample_htlc(), sample_htlc()];
        assert_eq!(decode_htlc_set(&encode_htlc_set(&hs)).unwrap(), hs);
        assert_eq!(decode_htlc_set(&[]).unwrap(), vec![]);
        assert!(encode_htlc_set(&[]).is_empty());
    }

    // ----- error cases -----

    #[test]
    fn err_body_length_missing_and_truncated() {
        assert_eq!(
            decode_invoice(&[0, 0, 0]),
            Err(CodecError::BodyLengthMissing { available: 3 })
        );
        let mut v = 500u64.to_be_bytes().to_vec();
        v.extend_from_slice(&[0; 120]);
        let err = decode_invoice(&v).unwrap_err();
        assert_eq!(
            err,
            CodecError::BodyTruncated {
                declared: 500,
                available: 120
            }
        );
        assert_eq!(
            err.to_string(),
            "the body length prefix says 500 bytes but only 120 follow"
        );
        let mut v = u64::MAX.to_be_bytes().to_vec();
        v.push(0);
        assert!(matches!(
            decode_invoice(&v),
            Err(CodecError::BodyTruncated { .. })
        ));
    }

    #[test]
    fn err_wrong_width() {
        let body = stream(&[(7, &[1, 2, 3])]);
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record type 7 (value) in the invoice body is 3 bytes long, expected 8"
        );
        for (ty, len, expected) in [
            (4u64, 7usize, 8usize),
            (6, 31, 32),
            (8, 8, 4),
            (10, 0, 32),
            (12, 2, 1),
            (14, 0, 1),
        ] {
            let v = vec![1u8; len];
            let body = stream(&[(ty, &v)]);
            assert_eq!(
                decode_invoice(&value(&body, &[])),
                Err(CodecError::WrongLength {
                    place: Place::Body,
                    ty,
                    len,
                    expected
                }),
                "type {ty}"
            );
        }
        let h = stream(&[(7, &[0; 8])]);
        let err = decode_invoice(&value(&[], &[&[], &h])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record type 7 (accept height) in HTLC record 1 is 8 bytes long, expected 4"
        );
    }

    #[test]
    fn err_bad_time() {
        let mut t = time_bytes(&GoTime::ZERO);
        t[0] = 3;
        let body = stream(&[(2, &t)]);
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err,
            CodecError::InvalidTime {
                place: Place::Body,
                ty: 2,
                fault: GoTimeFault::Version(3)
            }
        );
        assert_eq!(
            err.to_string(),
            "record type 2 (creation date) in the invoice body is not a valid Go time: \
             Go time has version 3; only versions 1 and 2 exist"
        );
        // An empty time record is not the zero time.
        let body = stream(&[(3, &[])]);
        assert_eq!(
            decode_invoice(&value(&body, &[])),
            Err(CodecError::InvalidTime {
                place: Place::Body,
                ty: 3,
                fault: GoTimeFault::Empty
            })
        );
    }

    #[test]
    fn err_unknown_records() {
        let body = stream(&[(16, &[])]);
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown record type 16 in the invoice body"
        );
        // Odd unknown types are errors too (lnd would skip them; we keep all data).
        let body = stream(&[(17, &[])]);
        assert!(matches!(
            decode_invoice(&value(&body, &[])),
            Err(CodecError::UnknownRecord { ty: 17, .. })
        ));
        let h = stream(&[(2, &[])]);
        assert_eq!(
            decode_htlc_set(&value_htlcs(&[&h])),
            Err(CodecError::UnknownRecord {
                place: Place::Htlc(0),
                ty: 2
            })
        );
        let h = stream(&[(65_535, &[])]);
        assert_eq!(
            decode_htlc_set(&value_htlcs(&[&h])),
            Err(CodecError::UnknownRecord {
                place: Place::Htlc(0),
                ty: 65_535
            })
        );
    }

    #[test]
    fn err_not_ascending() {
        let mut body = stream(&[(11, &[])]);
        body.extend(stream(&[(9, &0u64.to_be_bytes())]));
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record types are not ascending in the invoice body: 9 after 11"
        );
    }

    #[test]
    fn err_htlc_truncation() {
        let h = stream(&[(1, &0u64.to_be_bytes())]);
        let mut v = value(&[], &[&h, &h, &h]);
        v.truncate(v.len() - 1);
        let err = decode_invoice(&v).unwrap_err();
        assert_eq!(
            err,
            CodecError::HtlcTruncated {
                index: 2,
                declared: 10,
                available: 9
            }
        );
        assert_eq!(
            err.to_string(),
            "HTLC record 2 is truncated: its length prefix says 10 bytes but only 9 follow"
        );
        let mut v = value(&[], &[&h]);
        v.extend_from_slice(&[0, 0, 0, 0, 0]);
        let err = decode_invoice(&v).unwrap_err();
        assert_eq!(
            err,
            CodecError::HtlcLengthMissing {
                index: 1,
                available: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "HTLC record 1 is truncated: only 5 bytes remain where an 8-byte length prefix \
             is expected"
        );
        assert!(matches!(
            decode_htlc_set(&[0, 0, 0]),
            Err(CodecError::HtlcLengthMissing {
                index: 0,
                available: 3
            })
        ));
    }

    #[test]
    fn err_htlc_amp_parts() {
        let h = stream(&[(21, &[0; 32])]);
        let err = decode_htlc_set(&value_htlcs(&[&h])).unwrap_err();
        assert_eq!(
            err,
            CodecError::AmpPartWithoutRecord {
                place: Place::Htlc(0),
                ty: 21
            }
        );
        assert_eq!(
            err.to_string(),
            "record type 21 (AMP hash) in HTLC record 0 is present but the AMP record \
             (type 19) is missing"
        );
        let h = stream(&[(23, &[0; 32])]);
        assert!(matches!(
            decode_htlc_set(&value_htlcs(&[&h])),
            Err(CodecError::AmpPartWithoutRecord { ty: 23, .. })
        ));
        // Too short, too long, non-minimal child index.
        for len in [63usize, 69] {
            let h = stream(&[(19, &vec![1; len])]);
            assert_eq!(
                decode_htlc_set(&value_htlcs(&[&h])),
                Err(CodecError::LengthOutOfRange {
                    place: Place::Htlc(0),
                    ty: 19,
                    len,
                    min: 64,
                    max: 68
                })
            );
        }
        let mut amp = vec![1u8; 64];
        amp.extend_from_slice(&[0, 5]);
        let h = stream(&[(19, &amp)]);
        assert_eq!(
            decode_htlc_set(&value_htlcs(&[&h])),
            Err(CodecError::NonMinimalInteger {
                place: Place::Htlc(0),
                ty: 19
            })
        );
    }

    fn amp_value(sets: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        bigsize::write(&mut v, sets.len() as u64);
        for s in sets {
            bigsize::write(&mut v, s.len() as u64);
            v.extend_from_slice(s);
        }
        v
    }

    #[test]
    fn amp_set_missing_records_are_zero() {
        let set = stream(&[(0, &[4; 32])]);
        let body = stream(&[(15, &amp_value(&[&set]))]);
        let inv = decode_invoice(&value(&body, &[])).unwrap();
        assert_eq!(
            inv.amp_state,
            vec![AmpSetState {
                set_id: [4; 32],
                state: 0,
                settle_index: 0,
                settle_date: GoTime::ZERO,
                circuit_keys: vec![],
                amt_paid_msat: 0
            }]
        );
    }

    #[test]
    fn err_amp_state() {
        // Unknown record in a set.
        let set = stream(&[(6, &[])]);
        let body = stream(&[(15, &amp_value(&[&set]))]);
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown record type 6 in AMP set 0 of record type 15 (AMP state)"
        );
    }

    #[test]
    fn err_amp_state_lengths() {
        // Count larger than the sets present.
        let mut v = amp_value(&[]);
        v[0] = 3;
        let body = stream(&[(15, &v)]);
        assert_eq!(
            decode_invoice(&value(&body, &[])),
            Err(CodecError::BadBigSize {
                place: Place::Body,
                what: BigSizeField::AmpSetLength { index: 0 },
                fault: BigSizeFault::Truncated {
                    needed: 1,
                    available: 0
                }
            })
        );
        // Huge count does not allocate or loop.
        let body = stream(&[(15, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])]);
        assert!(decode_invoice(&value(&body, &[])).is_err());
        // Set length past the end.
        let body = stream(&[(15, &[1, 40, 0, 0])]);
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err,
            CodecError::AmpSetTruncated {
                index: 0,
                declared: 40,
                available: 2
            }
        );
        // Trailing bytes after the declared sets.
        let mut v = amp_value(&[&[]]);
        v.push(0);
        let body = stream(&[(15, &v)]);
        assert_eq!(
            decode_invoice(&value(&body, &[])),
            Err(CodecError::TrailingBytes {
                place: Place::Body,
                ty: 15,
                extra: 1
            })
        );
    }

    #[test]
    fn err_amp_set_fields() {
        // Circuit keys: count says 2, only one pair present.
        let mut keys = vec![2u8];
        keys.extend_from_slice(&[0; 16]);
        let set = stream(&[(4, &keys)]);
        let body = stream(&[(15, &amp_value(&[&set]))]);
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err,
            CodecError::CircuitKeysLength {
                place: Place::AmpSet(0),
                count: 2,
                available: 16
            }
        );
        assert_eq!(
            err.to_string(),
            "record type 4 (circuit keys) in AMP set 0 of record type 15 (AMP state) declares \
             2 keys of 16 bytes each but 16 bytes follow the count"
        );
        // Circuit key count with a huge value does not overflow.
        let set = stream(&[(4, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])]);
        let body = stream(&[(15, &amp_value(&[&set]))]);
        assert!(matches!(
            decode_invoice(&value(&body, &[])),
            Err(CodecError::CircuitKeysLength { .. })
        ));
        // Bad settle date in a set.
        let set = stream(&[(3, &[1, 2])]);
        let body = stream(&[(15, &amp_value(&[&set]))]);
        assert!(matches!(
            decode_invoice(&value(&body, &[])),
            Err(CodecError::InvalidTime {
                place: Place::AmpSet(0),
                ty: 3,
                ..
            })
        ));
    }

    #[test]
    fn err_bigsize_in_stream() {
        // Non-canonical record type in the body.
        let body = [0xfd, 0x00, 0x01, 0x00];
        let err = decode_invoice(&value(&body, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the record type at byte 0 of the invoice body is not canonical: the value 1 is \
             written after marker 0xfd but fits a shorter form"
        );
    }
}
