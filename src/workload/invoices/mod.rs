//! The invoice workload: lnd's invoices, from the KV `invoices` bucket to
//! the native `invoices` table and its five child tables.
//!
//! - `record.rs`: [`NativeInvoice`] (the rows one invoice owns), the
//!   mapping from a decoded KV invoice, its digest encoding, and
//!   [`ChildRows`];
//! - `decode.rs`: the codec and the mapping applied to a raw KV invoice,
//!   and its copy digest (every source backend);
//! - `compare.rs`: `diff`, the field-by-field comparison, secrets shown
//!   only as fingerprints;
//! - `duplicates.rs`: the queries naming two invoices that break one of
//!   lnd's unique constraints (any SQL dialect);
//! - `sqlite.rs`: the invoice rows on a SQLite native store (written,
//!   deleted, read back; the AMP staging move; the duplicate finder);
//! - `postgres/`: the same rows on a Postgres native store (`copy.rs`:
//!   binary `COPY`; `load.rs`: read back, times as Postgres keeps them).

use sha2::Sha256;

use super::Workload;

mod compare;
pub(crate) mod decode;
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

impl Workload for Invoices {
    type Record = NativeInvoice;
    type Children = ChildRows;

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
}
