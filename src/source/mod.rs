//! The source: the seam between the engine and lnd's KV store.
//!
//! The engine ([`crate::engine`]) knows the KV store only as a [`Source`]
//! (opened by the workload's [`crate::backends::Backends`], the one place
//! a source backend is chosen), the [`Witness`]es it hands out, and a
//! [`Snapshot`] reader for the catch-up verification. It never sees a
//! connection, a file layout or SQL. This module holds the traits and the
//! types that cross them; [`sqlite`] is the SQLite backend
//! (`channel.sqlite`), which delegates to [`crate::kv`],
//! [`crate::reader`], [`crate::identity`], [`crate::holders`] and
//! [`crate::files`].
//!
//! lnd lays its KV store over one table (`<prefix>_kv`: id, key, value,
//! parent id, sequence) whatever the database, so the data that crosses the
//! seam ([`InvoiceBuckets`], [`SourceDigest`], [`InvoiceDigests`],
//! [`TombstoneOutcome`], [`SourceIdentity`]) is the same for every backend;
//! it is defined beside the SQLite reader in `kv.rs` for now and re-exported
//! here. The decoder thread ([`spawn`], [`Stream`]) is backend-neutral: it
//! reads any [`Snapshot`] and delivers [`Msg`]s of decoded [`Prepared`]
//! invoices.
//!
//! # Adding a backend
//!
//! A module beside [`sqlite`] implementing [`Source`], [`Witness`] and
//! [`Snapshot`] (answering the workload's lookups), and a branch in the
//! workload's [`crate::backends::Backends::open_source`]. For lnd on
//! Postgres (the KV table `channeldb_kv` in the same database as the
//! native tables):
//! [`Source::other_holders`] lists the other sessions in `pg_stat_activity`;
//! a [`Witness`] is a session that can tell whether anything committed to
//! the KV table since its snapshot (an xid check); [`Snapshot`] is a
//! `REPEATABLE READ` transaction; [`Source::stream`] hands such a snapshot to
//! [`spawn`], the decoder thread every backend shares.
//!
//! Invariants every backend keeps (the engine's crash and seal arguments
//! rest on them, `spec/state-machine.md` §6 and §7):
//! - **never writes, except the tombstone**: reads only, and
//!   [`Source::write_tombstone_if_unchanged`] /
//!   [`Source::write_tombstone`] are one durable transaction each, the
//!   conditional one re-checking the digest (or the witness) inside it;
//! - a [`Witness`] says "untouched" only when nothing was committed to the
//!   store since the state it witnesses was read, by anyone;
//! - everything a [`Snapshot`] reads between [`Snapshot::begin_read`] and
//!   [`Snapshot::end_read`] comes from one consistent state of the store;
//! - the digests are the ones of `spec/formats.md` §4, whatever the backend.

use std::any::Any;
use std::fmt;
use std::path::Path;

use crate::error::Result;
use crate::workload::{Invoices, Workload};

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod sqlite;
mod stream;

pub use crate::identity::SourceIdentity;
pub use crate::kv::{InvoiceBuckets, InvoiceDigests, SourceDigest, TombstoneOutcome};
pub use crate::reader::{Kind, Msg, Prepared};
#[cfg(feature = "postgres")]
pub use postgres::PgSource;
pub use sqlite::SqliteSource;
pub use stream::{spawn, Stream};

/// Opens the SQLite source at `path` with lnd's table prefix `prefix`,
/// read-only. The engine opens through the workload's
/// `crate::backends::Backends`.
pub fn open(path: &Path, prefix: &str) -> Result<Box<dyn Source>> {
    Ok(Box::new(SqliteSource::open(path, prefix)?))
}

/// lnd's KV store, as the engine reads it and seals it, for the records
/// of workload `W` (its bucket, its tombstone: `crate::workload`).
///
/// Per-invoice work does not go through this trait: the bulk copy and the
/// verification passes read batches from a [`Stream`], the catch-up from a
/// [`Snapshot`]; the methods here are called a few times per run.
pub trait Source<W: Workload = Invoices> {
    /// The invoice buckets' ids (`None`: lnd has written no invoice yet).
    fn invoice_buckets(&self) -> Result<Option<InvoiceBuckets>>;

    /// Whether lnd's `invoice-tombstone` key is in the `invoices` bucket.
    fn tombstone_present(&self) -> Result<bool>;

    /// The sequence of bucket `bucket` (lnd's add and settle indexes).
    fn sequence(&self, bucket: i64) -> Result<u64>;

    /// The invoice numbers present with `lo <= num <= hi`.
    fn invoice_numbers_between(
        &self,
        buckets: &InvoiceBuckets,
        lo: u32,
        hi: u32,
    ) -> Result<std::collections::HashSet<u32>>;

    /// How many invoices the `invoices` bucket holds.
    fn count_invoices(&self, buckets: &InvoiceBuckets) -> Result<u64>;

    /// The bytes of the invoices' values: the base of the room estimate.
    fn invoice_bytes(&self, buckets: &InvoiceBuckets) -> Result<u64>;

    /// An upper bound of the invoices' bytes that costs nothing to learn
    /// (for SQLite, the file and its WAL), checked before
    /// [`Source::invoice_bytes`] is asked.
    fn size_bound(&self) -> u64;

    /// The source digest of the invoice buckets, as they are now.
    fn digest(&self) -> Result<SourceDigest>;

    /// Writes the tombstone if, inside the same write transaction, the
    /// source digest still equals `verified`, or `since` (a witness of the
    /// verified state, when this process made one) says nothing was
    /// committed since. With `Written` or an unchanged `AlreadyPresent`
    /// comes a witness of the sealed state.
    fn write_tombstone_if_unchanged(
        &self,
        verified: &SourceDigest,
        since: Option<&dyn Witness>,
    ) -> Result<(TombstoneOutcome, Option<Box<dyn Witness>>)>;

    /// Writes the tombstone whatever the invoices hold (nothing when it is
    /// there), durably; a witness of the sealed state. Only for a sealed
    /// migration whose seal was lost, with no other holder.
    fn write_tombstone(&self) -> Result<Box<dyn Witness>>;

    /// The identity of the store as it is now (recorded at `Begin`).
    fn identity(&self, buckets: Option<InvoiceBuckets>) -> Result<SourceIdentity>;

    /// Refuses a store that is not the one `recorded` was taken from, or
    /// cannot be shown to be (`identity.rs` says how); `native` names the
    /// native store in the error.
    fn check_identity(
        &self,
        recorded: &SourceIdentity,
        buckets: Option<InvoiceBuckets>,
        native: &Path,
    ) -> Result<()>;

    /// Who else holds the store open now (lnd, or anything else that could
    /// write past a seal).
    fn other_holders(&self) -> OtherHolders;

    /// Refuses a store this process could not write the tombstone to.
    fn check_writable(&self) -> Result<()>;

    /// A decoder thread streaming the invoices after `after` in batches of
    /// at most `batch_size`: a [`Snapshot`] of this store handed to
    /// [`spawn`].
    fn stream(&self, batch_size: usize, after: Option<u32>, kind: Kind) -> Result<Stream<W>>;

    /// A reader of its own, for reading several things from one snapshot.
    fn snapshot(&self) -> Result<Box<dyn Snapshot<W>>>;
}

/// What [`Source::other_holders`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherHolders {
    /// Nobody else holds the store.
    Nobody,
    /// Others hold it: who, as a sentence.
    Held(String),
    /// Whether others hold it cannot be told: why (counts as held).
    Unknown(String),
}

/// Evidence, held by this process, that nothing has been committed to the
/// store since a state it read (SQLite: a connection and its
/// `data_version`).
pub trait Witness: fmt::Debug + Send {
    /// True when the store's location still names the store this witness
    /// reads (SQLite: the same file, by device and inode).
    fn same_file(&self) -> bool;

    /// True when nobody has committed to the store since the witnessed
    /// state was read.
    fn untouched(&self) -> Result<bool>;

    /// For the backend that made it (a witness speaks only for its own
    /// backend's store).
    fn as_any(&self) -> &dyn Any;
}

/// A commit marker of a [`Snapshot`]'s store: equal markers mean nobody
/// committed in between (SQLite: `data_version`; a Postgres backend might
/// keep a transaction id here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(i64);

impl Version {
    /// The marker `v`, for a backend's [`Snapshot::version`].
    #[allow(dead_code)] // without the `postgres` feature, only SQLite's
    pub(crate) fn new(v: i64) -> Version {
        Version(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A reader with a connection of its own, whose reads between
/// [`Snapshot::begin_read`] and [`Snapshot::end_read`] all come from one
/// snapshot of the store: the catch-up verification's walk and the
/// invoices it decodes again.
pub trait Snapshot<W: Workload = Invoices>: Send {
    /// Starts a read transaction.
    fn begin_read(&mut self) -> Result<()>;

    /// Ends the read transaction.
    fn end_read(&mut self) -> Result<()>;

    /// Up to `max` invoices after `after`, decoded (inside the current read
    /// transaction, or one of its own).
    fn batch(&mut self, after: Option<u32>, max: usize) -> Result<Vec<Prepared<W>>>;

    /// The source digest and every invoice's copy digest, in one walk of
    /// the current snapshot, without decoding.
    fn invoice_digests(&self, buckets: &InvoiceBuckets) -> Result<InvoiceDigests>;

    /// The source digest of the current snapshot (`spec/formats.md` §4).
    fn digest(&self) -> Result<SourceDigest>;

    /// How many invoices the source holds (0 without an `invoices`
    /// bucket).
    fn count_invoices(&self) -> Result<u64>;

    /// The store's commit marker, as of the current read transaction.
    fn version(&self) -> Result<Version>;

    /// Keeps this reader as a [`Witness`] of the state it read at `at`.
    fn into_witness(self: Box<Self>, at: Version) -> Box<dyn Witness>;

    /// Whether a copy stream read to its end hands this reader back for
    /// the next stream ([`Stream::into_reader`]) instead of closing it: for
    /// a backend whose reader is costly to open again and keeps something
    /// the next stream can use. False by default.
    fn carries_over(&self) -> bool {
        false
    }
}
