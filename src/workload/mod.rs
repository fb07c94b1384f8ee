//! The workload seam: what one kind of lnd record (today its invoices) is,
//! apart from where it is stored.
//!
//! The engine, the native store ([`crate::store::NativeStore`]) and the
//! source ([`crate::source::Source`]) move *records*: a KV record decoded
//! into the native rows it owns ([`Workload::Record`]), carried with its KV
//! number and the digest of its source bytes ([`Prepared`]). What a record
//! is, and every rule that depends on it, belongs to a [`Workload`]:
//! - where it lives in the KV store: the top-level bucket
//!   ([`Workload::BUCKET`]) and the key in it that is not a record but lnd's
//!   seal ([`Workload::TOMBSTONE_KEY`]; the source digest skips it);
//! - its identity in the native store ([`Workload::id`], the row id in
//!   [`Workload::ROOT_TABLE`]) and the child rows it owns
//!   ([`Workload::children`], [`Workload::child_tables`]), which the
//!   referential-integrity check counts;
//! - lnd's sequence it carries (for invoices, the settle index:
//!   [`Workload::sequence`]);
//! - its digest encoding ([`Workload::feed_digest`]) and its comparison for
//!   verification ([`Workload::diff`]);
//! - its decoding, from the bytes a source backend reads
//!   ([`Workload::Raw`]) to a [`Prepared`] record (see Decoding).
//!
//! [`invoices::Invoices`] is the one implementation. Its modules hold the
//! rest of the invoice workload: the decoding (`invoices/decode.rs`), and
//! the rows written and read back per native backend
//! (`invoices/sqlite.rs`; the Postgres writers are in
//! `crate::postgres::{copy, load}`).
//!
//! # Decoding
//!
//! A record is prepared in two steps, so that a source backend can resolve
//! in bulk what its records need besides their own bytes:
//! [`Workload::decode`] decodes the raw record, [`Workload::lookup`] names
//! what it still needs from the source (for invoices, the payment hash of
//! an invoice without a preimage: [`invoices::PaymentHashOf`]), and
//! [`Workload::finish`] maps it, with the source's answer, into a
//! [`Prepared`] record. A source backend's [`crate::source::Snapshot`]
//! only answers lookups; how, and inside which read transaction, is its
//! own rule and part of its consistency argument (`crate::reader::Decoder`
//! answers each lookup as it comes, the Postgres snapshot those of a whole
//! page in one query, both by the same rule).
//!
//! # Adding a workload
//!
//! A module beside [`invoices`] with a type implementing [`Workload`], its
//! record type, mapping and decoding, and per backend its row writer and
//! loader; then the native store and the source implement their traits for
//! it (`NativeStore<W>`, `Source<W>`, `Snapshot<W>`, `Stream<W>` take the
//! workload as a type parameter, [`invoices::Invoices`] by default; the
//! snapshot answers the workload's lookups), the workload implements
//! [`crate::backends::Backends`] (which opens them from the options), and
//! the engine, generic over the workload (`Migrator<W>`), is instantiated
//! with it.
//!
//! Invariants every workload keeps (the engine's verification and the
//! catch-up rest on them, `spec/formats.md` §4 and `spec/state-machine.md`
//! §7.1):
//! - no I/O here: decoding and mapping are pure functions of the KV bytes
//!   and of the source's answers to the record's lookups;
//! - equal records give equal digests, and [`Workload::diff`] is empty
//!   exactly when the two records are equal;
//! - a record's child rows refer only to the record itself (so counting the
//!   rows of each child table proves that no row belongs to no record);
//! - [`Workload::diff`] never shows a secret field's value, only a
//!   fingerprint.

use std::fmt;
use std::path::Path;

use sha2::Sha256;

use crate::error::Result;

pub mod invoices;

pub use invoices::Invoices;

/// One kind of lnd record, as the engine and the stores see it (see the
/// module documentation for what it owns and the invariants).
pub trait Workload: fmt::Debug + Clone + Copy + Send + Sync + 'static {
    /// Every native row one KV record owns.
    type Record: Clone + fmt::Debug + PartialEq + Send + Sync + 'static;
    /// How many rows of each child table a set of records owns.
    type Children: Copy + Default + fmt::Debug + Eq + Send + Sync + 'static;
    /// A record as a source backend reads it from the KV store: its key
    /// and bytes (for invoices, `crate::kv::RawInvoice`: the value and its
    /// AMP HTLC sets).
    type Raw;
    /// A raw record decoded, before its [`Workload::Lookup`] is answered.
    type Decoded;
    /// Something a decoded record needs from the source besides its own
    /// bytes (for invoices: the payment hash of an invoice without a
    /// preimage, which only an entry of `invoices/paymenthashes` holds).
    type Lookup: Copy + fmt::Debug;

    /// The KV store's top-level bucket holding the records.
    const BUCKET: &'static [u8];
    /// The key of [`Workload::BUCKET`] that seals the KV store for lnd:
    /// not a record, and not part of the source digest.
    const TOMBSTONE_KEY: &'static [u8];
    /// The value oneway writes under [`Workload::TOMBSTONE_KEY`].
    const TOMBSTONE_VALUE: &'static [u8];
    /// The native table of the records themselves.
    const ROOT_TABLE: &'static str;
    /// The child table whose rows a bulk copy stages outside lnd's table
    /// until the index build moves them, if any (the native store's
    /// staging; counted with the table by the child-row check).
    const STAGED_TABLE: Option<&'static str>;

    /// The record's row id in [`Workload::ROOT_TABLE`].
    fn id(record: &Self::Record) -> i64;

    /// The child rows `record` owns.
    fn children(record: &Self::Record) -> Self::Children;

    /// Adds `more` to `total`.
    fn add_children(total: &mut Self::Children, more: Self::Children);

    /// (child table, rows) pairs of `children`, in schema order.
    fn child_tables(children: &Self::Children) -> Vec<(&'static str, u64)>;

    /// The highest value of lnd's sequence that `record` carries (0 for
    /// none): the sequence the native store must continue from.
    fn sequence(record: &Self::Record) -> u64;

    /// Feeds a canonical, length-prefixed encoding of every row of
    /// `record` into `h` (`spec/formats.md` §4.4).
    fn feed_digest(record: &Self::Record, h: &mut Sha256);

    /// Every field that differs between the record built from the source
    /// (`want`) and its copy read back (`got`), one sentence each; empty
    /// when equal.
    fn diff(want: &Self::Record, got: &Self::Record) -> Vec<String>;

    /// Decodes `raw`, read from the KV store shown as `path`: the first of
    /// the two steps of preparing a record (see "Decoding" in the module
    /// documentation).
    fn decode(raw: &Self::Raw, path: &Path) -> Result<Self::Decoded>;

    /// What `decoded` (decoded from `raw`) needs the source to answer
    /// before [`Workload::finish`], if anything.
    fn lookup(raw: &Self::Raw, decoded: &Self::Decoded) -> Option<Self::Lookup>;

    /// The second step: the record prepared from `raw`, decoded into
    /// `decoded`, with the source's answer to its [`Workload::lookup`] (the
    /// KV keys found; `None` when it needed none).
    fn finish(
        raw: &Self::Raw,
        decoded: Self::Decoded,
        answer: Option<&[Vec<u8>]>,
        path: &Path,
    ) -> Result<Prepared<Self>>;
}

/// A decoded source record, ready to write or compare.
///
/// Invariants: `native` is what the workload's mapping built from exactly
/// the bytes `digest` was computed over (both inside one read of the
/// source), so a copy whose map row holds this digest was written from the
/// same bytes (`crate::store::is_current`); `W::id(&native)` is the row id
/// the copy map pairs with `num`.
#[derive(Debug, Clone)]
pub struct Prepared<W: Workload = Invoices> {
    /// The record's KV number (for invoices, lnd's invoice number).
    pub num: u32,
    /// Its native rows.
    pub native: W::Record,
    /// SHA-256 over the raw source bytes (`spec/formats.md` §4.2): equal
    /// digests mean nothing in the source changed.
    pub digest: [u8; 32],
}

impl<W: Workload> Prepared<W> {
    /// The record's row id in the native store.
    pub fn id(&self) -> i64 {
        W::id(&self.native)
    }
}
