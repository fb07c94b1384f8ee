//! The native store: the seam between the engine and a backend.
//!
//! The engine ([`crate::engine`]) knows the native store only as a
//! [`NativeStore`]: a typed API over lnd's invoice tables and oneway's own
//! bookkeeping (the state row, the journal, the copy map, the AMP staging
//! table, lnd's sequences and tracker). It never sees SQL. This module holds
//! the trait and the types that cross it; [`sqlite`] is the SQLite backend
//! (`lnd.sqlite`). Adding a backend means implementing [`NativeStore`] in a
//! module of its own and opening it in the workload's
//! [`crate::backends::Backends`], where the engine's store is chosen.
//!
//! oneway's bookkeeping, whatever the backend:
//! - the state row: the machine's state, the source identity, the copy
//!   cursor, the verification record;
//! - the journal: append-only, one row per transition and per security
//!   event;
//! - the copy map: KV invoice number → native id, a digest of the source
//!   bytes it was copied from, the child rows it owns, and `checked`, set
//!   once its rows were read back equal (invariants in [`CopyMap`]);
//! - the AMP staging table: AMP sub-invoices of copy batches, moved into
//!   lnd's table by the index build
//!   (`workload::invoices::sqlite::AMP_STAGING`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fsm::{Event, State};
use crate::lnd_schema::Stage;
use crate::options::Options;
use crate::source::{SourceDigest, TombstoneOutcome, Witness};
use crate::workload::{Invoices, Prepared, Workload};

mod lock;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

pub use lock::RunLock;
#[cfg(feature = "postgres")]
pub use postgres::PgTarget;
pub use sqlite::{Target, NATIVE_CACHE_KIB, NATIVE_PAGE_SIZE, ONEWAY_SCHEMA};

/// Opens the native store at `path`: `None` when there is none (no file,
/// or an empty one) and `create` is false. SQLite only; the engine opens
/// through the workload's `crate::backends::Backends`.
pub fn open(path: &Path, create: bool) -> Result<Option<Box<dyn NativeStore>>> {
    Ok(Target::open(path, create)?.map(|t| Box::new(t) as Box<dyn NativeStore>))
}

/// Refuses a file at `path` that is not a native store of this backend at
/// all (SQLite: no SQLite header), before anything is opened or locked.
pub fn check_file(path: &Path) -> Result<()> {
    crate::kv::check_sqlite_file(crate::error::Role::Native, path)
}

/// Checks, before any lock is taken or anything created, that the native
/// store `opts` names can be opened as one: for SQLite, its folder exists,
/// and a non-empty file there is a oneway or lnd store (a wrong path must
/// leave nothing behind); for Postgres, the database is reachable and holds
/// no foreign `oneway_state`.
pub fn preflight(opts: &Options) -> Result<()> {
    #[cfg(feature = "postgres")]
    if let Some(dsn) = opts.dsn() {
        PgTarget::open(dsn, &opts.sql, false)?;
        return Ok(());
    }
    if let Some(parent) = opts.sql.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::MissingFolder {
                role: crate::error::Role::Native,
                path: parent.to_path_buf(),
            });
        }
    }
    if std::fs::metadata(&opts.sql).is_ok_and(|m| m.is_dir() || m.len() > 0) {
        check_file(&opts.sql)?;
        // Also refuses a foreign store before any lock file exists.
        open(&opts.sql, false)?;
    }
    Ok(())
}

/// Narrows a native store left world-readable by an earlier version to its
/// owner (files only: a database's rights are the server's).
pub fn narrow(opts: &Options) -> Result<()> {
    if opts.on_files() {
        crate::files::narrow(&opts.sql)?;
    }
    Ok(())
}

/// Version of oneway's own tables; bumped on incompatible change.
pub const FORMAT_VERSION: i64 = 2;

pub use crate::identity::SourceIdentity;

/// The persisted state row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Persisted {
    /// The machine's state.
    pub state: State,
    /// Where the source is and what it is.
    pub identity: SourceIdentity,
    /// Batch size the migration runs with.
    pub batch_size: u64,
    /// Last copied invoice number.
    pub cursor: Option<u32>,
    /// Invoices copied so far (rows in the copy map).
    pub copied: u64,
    /// Copy generation: 1, plus one for each re-sync after a source change
    /// (`pass` in the state row and in JSON, for compatibility; not a
    /// verification pass).
    #[serde(rename = "pass")]
    pub generation: u64,
    /// Invoices counted by the last successful verification.
    pub verified_count: Option<u64>,
    /// Source digest recorded at verification.
    pub source_digest: Option<String>,
    /// Target digest recorded at verification.
    pub target_digest: Option<String>,
    /// Time of the last change.
    pub updated_at: String,
}

/// One journal row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    /// Sequence number.
    pub seq: i64,
    /// When.
    pub at: String,
    /// `transition` or `security`.
    pub kind: String,
    /// State before.
    pub from_state: Option<String>,
    /// State after.
    pub to_state: Option<String>,
    /// The event or the security event's name.
    pub event: Option<String>,
    /// JSON details.
    pub details: serde_json::Value,
}

/// Current UTC time, RFC 3339 with microseconds.
pub fn now_text() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let t = crate::timefmt::sql_time(
        i128::from(d.as_secs()) * 1_000_000_000 + i128::from(d.subsec_micros()) * 1000,
    );
    // "YYYY-MM-DD HH:MM:SS.ffffff+00:00" -> "YYYY-MM-DDTHH:MM:SS.ffffffZ"
    t.replacen(' ', "T", 1).replace("+00:00", "Z")
}

/// A clean verification's record.
#[derive(Debug, Clone, Copy)]
pub struct Verification<'a> {
    /// Invoices verified.
    pub invoices: u64,
    /// Digest of the verified source.
    pub source_digest: &'a str,
    /// Digest of the native rows built (`None` after a catch-up, which
    /// builds only the changed rows).
    pub target_digest: Option<&'a str>,
    /// The value of lnd's settle-index sequence.
    pub settle_index: u64,
}

/// The writes of one transition (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub enum Effect<'a> {
    /// Only the state row and the journal (the tombstone's record).
    Nothing,
    /// `Begin`: lnd's tables with golang-migrate's version dirty, oneway's
    /// tables, the state row, and lnd's settle-index sequence.
    CreateSchema {
        /// The source's identity.
        identity: &'a SourceIdentity,
        /// The batch size of the migration.
        batch_size: u64,
        /// lnd's settle-index sequence.
        settle_index: u64,
    },
    /// `VerificationPassed`, `Resynced`: the verification's counts and
    /// digests and lnd's settle sequence, then lnd's contract checked as it
    /// must hold before `Lock`.
    RecordVerification(Verification<'a>),
    /// `SourceChanged`: a new copy generation; the verification is void.
    ForgetVerification,
    /// `Lock`: golang-migrate's version clean and lnd's tracker at the
    /// invoice migration, then lnd's whole contract checked.
    RecordMigrated {
        /// The value lnd's settle-index sequence must hold.
        settle_index: u64,
    },
}

/// What [`NativeStore::seal_with_source`] did: the tombstone's outcome and,
/// when the store is sealed, a witness of the sealed state.
pub type Sealed = (TombstoneOutcome, Option<Box<dyn Witness>>);

/// What a batch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// A batch of the bulk copy, ahead of the cursor: it moves the cursor to
    /// its last invoice, and stages AMP sub-invoices for the index build to
    /// move (`workload::invoices::sqlite::AMP_STAGING`).
    Bulk,
    /// A repair behind the cursor (a re-copy of invoices whose source
    /// changed, or the removal of copies of deleted ones): the cursor stays
    /// and AMP sub-invoices go straight into lnd's table.
    Repair,
}

/// One batch: the source records in the key range `(after, last]`
/// (`last = None`: unbounded) as they are now, in key order.
pub struct Batch<'a, W: Workload = Invoices> {
    /// The range's lower bound (exclusive).
    pub after: Option<u32>,
    /// The range's upper bound (inclusive).
    pub last: Option<u32>,
    /// Every source record in the range.
    pub invoices: &'a [Prepared<W>],
    /// Bulk or repair.
    pub kind: BatchKind,
}

/// A bulk batch of the copy that has committed, with its records handed
/// back ([`NativeStore::submit_bulk`]).
pub struct Committed<W: Workload = Invoices> {
    /// What it changed.
    pub outcome: BatchOutcome,
    /// Its records, for the caller to free or reuse.
    pub invoices: Vec<Prepared<W>>,
}

/// Writes the bulk batch `(after, last]` at once through
/// [`NativeStore::write_batch`]: [`NativeStore::submit_bulk`] of a store
/// that keeps no batch in flight.
pub fn write_bulk_now<W: Workload, S: NativeStore<W> + ?Sized>(
    store: &mut S,
    after: Option<u32>,
    last: u32,
    invoices: Vec<Prepared<W>>,
    kv: &Path,
) -> Result<Vec<Committed<W>>> {
    let batch = Batch {
        after,
        last: Some(last),
        invoices: &invoices,
        kind: BatchKind::Bulk,
    };
    let outcome = store.write_batch(&batch, kv)?;
    Ok(vec![Committed { outcome, invoices }])
}

/// What a batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Invoices written (new, or re-copied).
    pub written: u64,
    /// Copies replaced because their source changed.
    pub recopied: u64,
    /// Copies removed because their source invoice is gone.
    pub removed: u64,
}

/// The outcome of one attempt at building lnd's indexes.
pub enum IndexBuild {
    /// Built and committed.
    Built,
    /// A unique constraint is violated by two copies: the transaction was
    /// rolled back. `invoices` are the KV numbers of the copies involved.
    Duplicate {
        /// The copies involved (one or two KV invoice numbers).
        invoices: Vec<u32>,
        /// The error to report if re-copying them does not help.
        error: Error,
    },
}

/// Copy-map rows: KV invoice number → (native id, source digest).
/// Invariants, which the catch-up verification rests on (spec §7.1): every
/// write of an invoice's rows replaces its map row, with `checked = 0`, in
/// the same transaction; `checked = 1` is written only after a comparison
/// found the rows equal to the source with the row's digest, and the digest
/// is part of the condition, so a copy replaced meanwhile is never marked.
pub type CopyMap = BTreeMap<u32, (i64, Vec<u8>)>;

/// Whether `mapped` holds `p` as it is now: mapped to the same native id,
/// from source bytes with the same digest.
pub fn is_current<W: Workload>(mapped: &CopyMap, p: &Prepared<W>) -> bool {
    matches!(mapped.get(&p.num), Some((id, d)) if *id == p.id() && d == &p.digest)
}

/// What [`NativeStore::for_each_copy`] calls with each copy: (KV invoice
/// number, source digest, checked); it breaks to stop the walk.
pub type CopyVisitor<'a> = dyn FnMut(u32, &[u8], bool) -> ControlFlow<()> + 'a;

/// The native store as the engine sees it: lnd's tables of one workload
/// `W` (its records and their child rows, `crate::workload`) and
/// oneway's bookkeeping (state row, journal, copy map, staging), behind one
/// backend. The engine holds a `dyn NativeStore` and never sees SQL; a new
/// backend implements this trait (the SQLite one is [`Target`]), for each
/// workload it stores (today `Invoices`, the default).
///
/// Contract for an implementation, which the engine's crash arguments rest
/// on (spec/state-machine.md):
/// - [`NativeStore::transition`] is one atomic, durable write: the effect,
///   the new state and its journal row commit together, after the machine
///   ([`crate::fsm::transition`]) accepted the event for the persisted state;
/// - every other write ([`NativeStore::write_batch`],
///   [`NativeStore::remove_copies`], [`NativeStore::build_indexes`], the
///   marks) is one transaction, allowed only while the persisted state
///   accepts [`crate::fsm::Event::BatchCopied`];
/// - the copy map's invariants (`copy_map.rs`) hold at every commit.
pub trait NativeStore<W: Workload = Invoices>: Send {
    /// Where the store is, for messages (a file path, or a DSN without
    /// its password).
    fn path(&self) -> &Path;

    /// The state row; `None` before `Begin`.
    fn load(&self) -> Result<Option<Persisted>>;

    /// One transition as one atomic, durable write (see the trait docs);
    /// `<failpoint>.before_commit` and `.after_commit` bracket the commit.
    fn transition(
        &mut self,
        from: State,
        event: Event,
        details: serde_json::Value,
        failpoint: &str,
        effect: Effect<'_>,
    ) -> Result<State>;

    /// For a store in the same database as its source (Postgres), the
    /// seal in ONE transaction: checks that the KV table `<prefix>_kv` is
    /// still what was verified (`since` untouched, or the digest equal to
    /// `verified`), writes lnd's tombstone, and records `Verified
    /// --TombstoneWritten--> Tombstoned` with `details(outcome)` and the
    /// failpoint `tombstoned`; on `SourceChanged` it writes nothing.
    /// With a sealed outcome comes a witness of the sealed state, when the
    /// backend can give one (it spares `Lock` a digest of the source).
    /// `Ok(None)` from a store that does not share its source's database
    /// (the default): the engine then writes the tombstone and records it
    /// in two transactions (spec/state-machine.md §6).
    fn seal_with_source(
        &mut self,
        prefix: &str,
        verified: &SourceDigest,
        since: Option<&dyn Witness>,
        details: &dyn Fn(&TombstoneOutcome) -> serde_json::Value,
    ) -> Result<Option<Sealed>> {
        let _ = (prefix, verified, since, details);
        Ok(None)
    }

    /// Appends a security event to the journal (its own write).
    fn security_event(
        &self,
        state: Option<State>,
        name: &str,
        details: serde_json::Value,
    ) -> Result<()>;

    /// Writes one batch (deletes, re-copies, inserts, cursor) in one
    /// transaction; `kv` names the source in a refused insert.
    fn write_batch(&mut self, batch: &Batch<'_, W>, kv: &Path) -> Result<BatchOutcome>;

    /// The copy's next bulk batch, the records after `after` up to `last`:
    /// written as [`NativeStore::write_batch`] writes a [`BatchKind::Bulk`]
    /// batch, but the call may return before the batch commits. A store
    /// that overlaps its batches (Postgres, `postgres/lanes.rs`) commits
    /// them in the order given, each with the cursor past it, and never one
    /// before the one it follows. Returns the batches committed since the
    /// last call, oldest first. A batch in flight that fails makes a later
    /// call, or [`NativeStore::finish_bulk`], fail, and no batch after it
    /// commits. The default writes the batch at once.
    fn submit_bulk(
        &mut self,
        after: Option<u32>,
        last: u32,
        invoices: Vec<Prepared<W>>,
        kv: &Path,
    ) -> Result<Vec<Committed<W>>> {
        write_bulk_now(self, after, last, invoices, kv)
    }

    /// Waits until every batch [`NativeStore::submit_bulk`] has in flight
    /// has committed; returns them, oldest first. Every other write of the
    /// store also waits for them first.
    fn finish_bulk(&mut self) -> Result<Vec<Committed<W>>> {
        Ok(Vec::new())
    }

    /// Removes the copies of the invoices `gone`, in one transaction.
    fn remove_copies(&mut self, gone: &[u32]) -> Result<u64>;

    /// Moves the staged AMP sets and builds lnd's indexes, in one
    /// transaction, with a page cache of `cache_kib` where that applies.
    fn build_indexes(&mut self, cache_kib: i64, kv: &Path) -> Result<IndexBuild>;

    /// Marks the copies in `(after, last]` checked. A store may commit the
    /// mark after this returns (Postgres, while it reads ahead); the mark
    /// is then committed, or its failure returned, before the store's next
    /// write and before its next read of the marks ([`NativeStore::any_copy_checked`],
    /// [`NativeStore::for_each_copy`], [`NativeStore::in_snapshot`]).
    fn mark_checked(&mut self, after: Option<u32>, last: Option<u32>) -> Result<()>;

    /// Marks each of `equal` checked if its map row still has its digest.
    fn mark_equal(&mut self, equal: &[&Prepared<W>]) -> Result<()>;

    /// The copy map in `(lo, hi]`.
    fn copy_map(&self, lo: Option<u32>, hi: Option<u32>) -> Result<CopyMap>;

    /// Whether the copy map holds `p` with `p`'s digest.
    fn copy_is_current(&self, p: &Prepared<W>) -> Result<bool> {
        Ok(is_current(
            &self.copy_map(p.num.checked_sub(1), Some(p.num))?,
            p,
        ))
    }

    /// Up to `limit` copied invoice numbers after `after`, in order.
    fn copied_after(&self, after: Option<u32>, limit: usize) -> Result<Vec<u32>>;

    /// Whether any copy was read back equal already.
    fn any_copy_checked(&self) -> Result<bool>;

    /// Calls `f(kv_num, digest, checked)` for every copy in key order until
    /// it breaks; returns whether it ran to the end.
    fn for_each_copy(&self, f: &mut CopyVisitor<'_>) -> Result<bool>;

    /// The child rows the copies own, by the map's per-record counts, as
    /// (child table, rows) in the order of `Workload::child_tables`.
    fn owned_child_rows(&self) -> Result<Vec<(&'static str, u64)>>;

    /// Rows of one of lnd's or oneway's tables.
    fn count(&self, table: &str) -> Result<u64>;

    /// Records in the workload's own table (lnd's `invoices`).
    fn native_invoices(&self) -> Result<u64> {
        self.count(W::ROOT_TABLE)
    }

    /// Rows of the copy map.
    fn copies(&self) -> Result<u64> {
        self.count("oneway_invoice_map")
    }

    /// Rows of the journal.
    fn journal_len(&self) -> Result<u64> {
        self.count("oneway_journal")
    }

    /// AMP sets waiting for the index build.
    fn staged_amp_sets(&self) -> Result<u64>;

    /// The highest settle index a copied invoice or AMP sub-invoice carries.
    fn highest_settle_index(&self) -> Result<u64>;

    /// The highest add index (native invoice id) copied.
    fn highest_add_index(&self) -> Result<u64>;

    /// Reads back the invoices `ids`; with `staged`, with their staged AMP
    /// sets.
    fn load_invoices(&self, ids: &[i64], staged: bool) -> Result<BTreeMap<i64, W::Record>>;

    /// Whether [`NativeStore::prefetch`] does anything: verification then
    /// takes the next batch from the decoder before comparing the current
    /// one (one batch more in memory). The default: no.
    fn reads_ahead(&self) -> bool {
        false
    }

    /// A hint that `load_invoices` of (a subset of) `ids`, without staged
    /// sets, comes next: a store may start reading them on a session of its
    /// own, as long as it never answers with rows read before one of its own
    /// writes. The default does nothing.
    fn prefetch(&self, ids: &[i64]) -> Result<()> {
        let _ = ids;
        Ok(())
    }

    /// What this store holds of `inv` once written, for comparing a source
    /// invoice with its copy read back: `inv` itself where every field is
    /// kept exactly (SQLite), its times floored to the microsecond on
    /// Postgres (all a `TIMESTAMP` keeps, as lnd's own writes there).
    fn as_stored<'i>(&self, inv: &'i W::Record) -> std::borrow::Cow<'i, W::Record> {
        std::borrow::Cow::Borrowed(inv)
    }

    /// The differences from lnd's contract at `stage`, one sentence each.
    fn contract(&self, stage: Stage, settle_index: u64) -> Result<Vec<String>>;

    /// Whether lnd's indexes exist yet.
    fn indexes_built(&self) -> Result<bool>;

    /// Runs `read` inside one read snapshot of the store.
    fn in_snapshot(&self, read: &mut dyn FnMut(&dyn NativeStore<W>) -> Result<()>) -> Result<()>;

    /// The referential-integrity check by row counts (the invariant on
    /// `crate::workload::invoices::ChildRows`): each child table must
    /// hold exactly the rows the `which` records own (`staged` rows added
    /// to the workload's `Workload::STAGED_TABLE`, whose bulk-copied rows
    /// wait outside it until the index build moves them). One sentence per
    /// table that does not.
    fn child_rows_differ(
        &self,
        owned: Vec<(&'static str, u64)>,
        staged: u64,
        which: &str,
    ) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for (table, owned) in owned {
            let mut rows = self.count(table)?;
            if Some(table) == W::STAGED_TABLE {
                rows += staged;
            }
            if rows != owned {
                found.push(format!(
                    "{table} holds {rows} rows but the {which} invoices own {owned}: \
                     the native store has rows that belong to no {which} invoice or lacks some"
                ));
            }
        }
        Ok(found)
    }
}
