//! Decoding one KV invoice into the invoice workload's record: the codec
//! (`crate::codec`), the mapping ([`NativeInvoice::from_kv`]), and the copy
//! digest of the raw bytes (`spec/formats.md` §4.2): the invoice
//! workload's [`Workload::decode`](crate::workload::Workload::decode) and
//! [`Workload::finish`](crate::workload::Workload::finish), shared by every
//! source backend; each resolves the payment hash of an invoice without a
//! preimage in its own way (an index of `invoices/paymenthashes`) between
//! [`decode_raw`] and [`finish_prepare`].

use std::path::Path;

use sha2::{Digest, Sha256};

use super::record::NativeInvoice;
use crate::codec;
use crate::error::{Error, Result};
use crate::kv::RawInvoice;
use crate::model::Htlc;
use crate::workload::Prepared;

/// An invoice's AMP HTLC sets, decoded: (set id, HTLCs) in key order.
pub(crate) type AmpSets = Vec<([u8; 32], Vec<Htlc>)>;

/// A raw invoice decoded: the invoice and its AMP HTLC sets.
pub(crate) type Decoded = (crate::model::Invoice, AmpSets);

/// Decodes `raw` (an invoice of the KV store shown as `path`) and its AMP
/// HTLC sets: the first half of preparing it, for every backend; the
/// payment hash is resolved by the caller, then [`finish_prepare`].
pub(super) fn decode_raw(raw: &RawInvoice, path: &Path) -> Result<Decoded> {
    let inv = codec::decode_invoice(&raw.value)
        .map_err(|source| codec_error(raw.key_hex(), source, path))?;
    let mut sets = Vec::with_capacity(raw.amp_sets.len());
    for (set_id, bytes) in &raw.amp_sets {
        let htlcs = codec::decode_htlc_set(bytes).map_err(|source| {
            let key = format!("{} (AMP set {})", raw.key_hex(), hex::encode(set_id));
            codec_error(key, source, path)
        })?;
        sets.push((*set_id, htlcs));
    }
    Ok((inv, sets))
}

/// The [`Prepared`] invoice of `raw`, decoded by [`decode_raw`] into `inv`
/// and `sets`, with payment hash `hash`.
#[inline]
pub(super) fn finish_prepare(
    raw: &RawInvoice,
    inv: &crate::model::Invoice,
    hash: [u8; 32],
    sets: &[([u8; 32], Vec<Htlc>)],
    path: &Path,
) -> Result<Prepared> {
    let native =
        NativeInvoice::from_kv(inv, hash, sets).map_err(|reason| bad_invoice(raw, reason, path))?;
    Ok(Prepared {
        num: raw.num,
        native,
        digest: copy_digest(raw, &hash),
    })
}

/// The payment hash of `raw`, whose preimage is unknown, from `found`: the
/// keys of `invoices/paymenthashes` pointing to it (exactly one, of 32
/// bytes, or the invoice cannot be migrated).
pub(super) fn hash_from_found(
    raw: &RawInvoice,
    found: &[Vec<u8>],
    path: &Path,
) -> Result<[u8; 32]> {
    let reason = match found {
        [one] if one.len() == 32 => {
            let mut h = [0u8; 32];
            h.copy_from_slice(one);
            return Ok(h);
        }
        [] => "its preimage is unknown and no entry of invoices/paymenthashes \
               points to it, so its payment hash cannot be found (lnd would skip \
               it silently; oneway stops instead)"
            .into(),
        [one] => format!(
            "its preimage is unknown and the invoices/paymenthashes key pointing to it is {} bytes long, not 32",
            one.len()
        ),
        many => format!(
            "its preimage is unknown and {} entries of invoices/paymenthashes point to it",
            many.len()
        ),
    };
    Err(bad_invoice(raw, reason, path))
}

/// The error for a record under `invoice_key` that does not decode.
#[cold]
fn codec_error(invoice_key: String, source: codec::CodecError, path: &Path) -> Error {
    Error::Codec {
        invoice_key,
        path: path.to_path_buf(),
        source,
    }
}

/// The error for `raw`, which decodes but cannot be migrated.
#[cold]
fn bad_invoice(raw: &RawInvoice, reason: String, path: &Path) -> Error {
    Error::BadInvoice {
        invoice_key: raw.key_hex(),
        path: path.to_path_buf(),
        reason,
    }
}

/// The copy digest of `raw` (`spec/formats.md`): its number, value and AMP
/// sets as stored, and its payment hash. [`KvSource::invoice_digests`]
/// computes the same digest without decoding.
#[inline]
fn copy_digest(raw: &RawInvoice, hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(raw.num.to_be_bytes());
    h.update((raw.value.len() as u64).to_be_bytes());
    h.update(&raw.value);
    for (set_id, bytes) in &raw.amp_sets {
        h.update(set_id);
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    h.update(hash);
    h.finalize().into()
}
