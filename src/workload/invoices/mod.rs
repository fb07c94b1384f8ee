//! The invoice workload: lnd's invoices, from the KV `invoices` bucket to
//! the native `invoices` table and its five child tables.
//!
//! - `record.rs`: [`NativeInvoice`] (the rows one invoice owns), the
//!   mapping from a decoded KV invoice, its digest encoding, and
//!   [`ChildRows`];
//! - `decode.rs`: the codec and the mapping applied to a raw KV invoice,
//!   its payment hash from the source's answer, and its copy digest
//!   ([`Workload::decode`] and [`Workload::finish`], for every source
//!   backend);
//! - `compare.rs`: `diff`, the field-by-field comparison, secrets shown
//!   only as fingerprints;
//! - `duplicates.rs`: the queries naming two invoices that break one of
//!   lnd's unique constraints (any SQL dialect);
//! - `sqlite.rs`: the invoice rows on a SQLite native store (written,
//!   deleted, read back; the AMP staging move; the duplicate finder);
//! - `postgres/`: the same rows on a Postgres native store (`copy.rs`:
//!   binary `COPY`; `load.rs`: read back, times as Postgres keeps them).

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Prepared, Workload};
use crate::error::Result;
use crate::kv::RawInvoice;

mod compare;
mod decode;
mod duplicates;
#[cfg(feature = "postgres")]
pub mod postgres;
mod record;
pub(crate) mod sqlite;

#[cfg(feature = "postgres")]
pub use duplicates::{duplicate_checks, duplicate_found};
#[cfg(feature = "postgres")]
pub(crate) use record::{attach_htlcs, HtlcRows};
pub use record::{ChildRows, NativeAmpHtlc, NativeAmpSet, NativeHtlc, NativeInvoice};

/// lnd's invoices: the one [`Workload`] today.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Invoices;

/// The invoice workload's [`Workload::Lookup`]: the payment hash of the
/// invoice with this number, which has no preimage. The source answers
/// with the keys of `invoices/paymenthashes` whose value is the number,
/// by its backend's rule (`crate::reader::Decoder`); exactly one key of
/// 32 bytes is the hash, anything else an invoice that cannot be migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentHashOf(pub u32);

impl Workload for Invoices {
    type Record = NativeInvoice;
    type Children = ChildRows;
    type Raw = RawInvoice;
    type Decoded = decode::Decoded;
    type Lookup = PaymentHashOf;

    const BUCKET: &'static [u8] = b"invoices";
    const TOMBSTONE_KEY: &'static [u8] = b"invoice-tombstone";
    const TOMBSTONE_VALUE: &'static [u8] = b"1";
    const ROOT_TABLE: &'static str = "invoices";
    /// AMP sub-invoices: their primary key is a random set id (see
    /// `sqlite::AMP_STAGING`).
    const STAGED_TABLE: Option<&'static str> = Some("amp_sub_invoices");

    #[inline]
    fn id(record: &NativeInvoice) -> i64 {
        record.id
    }

    #[inline]
    fn children(record: &NativeInvoice) -> ChildRows {
        record.child_rows()
    }

    #[inline]
    fn add_children(total: &mut ChildRows, more: ChildRows) {
        total.add(more);
    }

    fn child_tables(children: &ChildRows) -> Vec<(&'static str, u64)> {
        children.tables().to_vec()
    }

    #[inline]
    fn sequence(record: &NativeInvoice) -> u64 {
        record.max_settle_index() as u64
    }

    #[inline]
    fn feed_digest(record: &NativeInvoice, h: &mut Sha256) {
        record.feed_digest(h);
    }

    fn diff(want: &NativeInvoice, got: &NativeInvoice) -> Vec<String> {
        compare::diff(want, got)
    }

    #[inline]
    fn decode(raw: &RawInvoice, path: &Path) -> Result<decode::Decoded> {
        decode::decode_raw(raw, path)
    }

    #[inline]
    fn lookup(raw: &RawInvoice, (inv, _): &decode::Decoded) -> Option<PaymentHashOf> {
        inv.preimage.is_none().then_some(PaymentHashOf(raw.num))
    }

    /// The payment hash is the preimage's SHA-256, or else the one key
    /// the source found (`answer`).
    #[inline]
    fn finish(
        raw: &RawInvoice,
        (inv, sets): decode::Decoded,
        answer: Option<&[Vec<u8>]>,
        path: &Path,
    ) -> Result<Prepared> {
        let hash: [u8; 32] = match inv.preimage {
            Some(p) => Sha256::digest(p).into(),
            None => decode::hash_from_found(raw, answer.unwrap_or_default(), path)?,
        };
        decode::finish_prepare(raw, &inv, hash, &sets, path)
    }
}
