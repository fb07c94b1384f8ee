//! Durable writes between transitions on Postgres: copy batches, repairs,
//! the sweep of deleted invoices, the index build, and the copy map's
//! `checked` marks.
//!
//! Every one of them goes through [`PgTarget::write`], the one checked
//! path: one transaction with `synchronous_commit` off, the persisted state
//! read under a row lock and put to the machine ([`crate::fsm::transition`] with
//! [`crate::fsm::Event::BatchCopied`]), the body, and the commit between the failpoints
//! `<name>.before_commit` and `<name>.after_commit` when it has a name. As
//! on SQLite none is journaled, and a crash before a commit loses the whole
//! write (a batch and the cursor past it go together).
//!
//! Rows go in with one statement per table, binary `COPY` or an array per
//! column ([`crate::postgres::copy`]), and leave with one
//! `DELETE … = ANY(…)` per table: no statement per invoice.

use std::collections::HashSet;
use std::path::Path;

use postgres::error::SqlState;
use postgres::types::Type;
use postgres::Transaction;

use super::lanes::Lanes;
use super::{begin_write, BulkCopy, PgTarget};
use crate::error::{Error, PgContext, Result, Role};
use crate::postgres::copy::{self, AMP_STAGING_TABLE};
use crate::postgres::lnd_schema as pg_schema;
use crate::postgres::{id_range, PgError, PgResult};
use crate::reader::Prepared;
use crate::store::{is_current, Batch, BatchKind, BatchOutcome, CopyMap, IndexBuild};
use crate::workload::invoices::NativeInvoice;

/// How [`PgTarget::write_or_roll_back`] ends its transaction.
pub(super) enum Finish<T> {
    Commit(T),
    RollBack(T),
}

/// The server memory each index of the build may sort in (the server's,
/// not oneway's; for this one transaction): twice Postgres's default of
/// 64 MiB, which keeps the sort of a million invoices' hashes in memory
/// instead of in temporary files (BENCHMARKS.md).
pub const INDEX_BUILD_MEMORY_KIB: i64 = 131_072;

impl PgTarget {
    /// The one checked path for a durable write between transitions (see
    /// the module documentation).
    pub(super) fn write<T>(
        &mut self,
        failpoint: Option<&str>,
        commit: &str,
        body: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write_or_roll_back(failpoint, commit, |tx| Ok(Finish::Commit(body(tx)?)))
    }

    /// [`PgTarget::write`] whose body may also ask for a rollback.
    pub(super) fn write_or_roll_back<T>(
        &mut self,
        failpoint: Option<&str>,
        commit: &str,
        body: impl FnOnce(&mut Transaction<'_>) -> Result<Finish<T>>,
    ) -> Result<T> {
        self.settle_read_ahead()?;
        if !matches!(self.bulk, BulkCopy::Single) {
            self.end_bulk();
        }
        let mut conn = self.conn.borrow_mut();
        let mut tx = begin_write(&mut conn, &self.path)?;
        let out = match body(&mut tx)? {
            Finish::Commit(out) => out,
            // Dropping the transaction rolls it back.
            Finish::RollBack(out) => return Ok(out),
        };
        if let Some(name) = failpoint {
            crate::failpoint::hit(&format!("{name}.before_commit"));
        }
        tx.commit().pg(Role::Native, commit)?;
        if let Some(name) = failpoint {
            crate::failpoint::hit(&format!("{name}.after_commit"));
        }
        Ok(out)
    }

    /// Ends the copy's use of the lanes, waiting for its batches in flight
    /// (what they commit is a prefix of the copy; see `lanes.rs`). Every
    /// other write does this first.
    pub(super) fn end_bulk(&mut self) {
        self.bulk = BulkCopy::Idle;
    }

    /// How the copy starting after `after` writes its bulk batches: on the
    /// lanes, unless copies lie beyond `after` (`lanes.rs` says why).
    pub(super) fn start_bulk(&mut self, after: Option<u32>, kv: &Path) -> Result<BulkCopy> {
        self.settle_read_ahead()?;
        let (lo, _) = bounds(after, None);
        let row = self
            .conn
            .borrow_mut()
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM oneway_invoice_map WHERE kv_num > $1),
                        (SELECT coalesce(max(id), 0) + 1 FROM invoice_htlcs)",
                &[(&lo, Type::INT8)],
            )
            .pg(Role::Native, "starting the bulk copy")?;
        if row.get::<_, bool>(0) {
            return Ok(BulkCopy::Single);
        }
        let lanes = Lanes::start(&self.dsn, &self.path, kv, row.get(1))?;
        Ok(BulkCopy::Lanes(lanes))
    }

    /// Writes one batch in one transaction: removes copies of invoices gone
    /// from the range and outdated copies, copies the rest that is not
    /// current, and for a [`BatchKind::Bulk`] moves the cursor to `last`.
    pub(super) fn write_batch(&mut self, batch: &Batch<'_>, kv: &Path) -> Result<BatchOutcome> {
        let outcome = self.write(Some("batch"), "committing a batch", |tx| {
            let mapped = copy_map_range(tx, batch.after, batch.last)
                .pg(Role::Native, "reading the copy map")?;
            let present: HashSet<u32> = batch.invoices.iter().map(|p| p.num).collect();
            let gone: Vec<(u32, i64)> = mapped
                .iter()
                .filter(|(k, _)| !present.contains(k))
                .map(|(k, (id, _))| (*k, *id))
                .collect();
            let new: Vec<&Prepared> = batch
                .invoices
                .iter()
                .filter(|p| !is_current(&mapped, p))
                .collect();
            let outdated: Vec<(u32, i64)> = new
                .iter()
                .filter_map(|p| mapped.get(&p.num).map(|(id, _)| (p.num, *id)))
                .collect();
            remove(tx, &gone).pg(Role::Native, "removing copies of deleted invoices")?;
            remove(tx, &outdated).pg(Role::Native, "removing outdated copies")?;
            let outcome = BatchOutcome {
                removed: gone.len() as u64,
                recopied: outdated.len() as u64,
                written: new.len() as u64,
            };
            let first = copy::next_htlc_id(tx).pg(Role::Native, "")?;
            let max_settle = insert_new(tx, kv, &new, batch.kind, first)?;
            move_cursor(tx, batch, &outcome, max_settle)?;
            Ok(outcome)
        })?;
        tracing::debug!(?outcome, cursor = ?batch.last, "batch committed");
        Ok(outcome)
    }

    /// Removes the copies of the invoices `gone` (deleted from the source)
    /// in one transaction; returns how many.
    pub(super) fn remove_copies(&mut self, gone: &[u32]) -> Result<u64> {
        let action = "removing copies of deleted invoices";
        let path = self.path.clone();
        self.write(Some("batch"), action, |tx| {
            let nums: Vec<i64> = gone.iter().map(|k| i64::from(*k)).collect();
            let found: Vec<(u32, i64)> = tx
                .query(
                    "SELECT kv_num, invoice_id FROM oneway_invoice_map WHERE kv_num = ANY($1)",
                    &[&nums],
                )
                .pg(Role::Native, action)?
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
                .collect();
            if found.len() != gone.len() {
                return Err(Error::NotOnewayStore {
                    path,
                    why: format!(
                        "has copies of only {} of the {} deleted invoices to remove",
                        found.len(),
                        gone.len()
                    ),
                });
            }
            remove(tx, &found).pg(Role::Native, action)?;
            tx.execute(
                "UPDATE oneway_state SET copied = copied - $1 WHERE singleton = 1",
                &[&(gone.len() as i64)],
            )
            .pg(Role::Native, action)?;
            Ok(gone.len() as u64)
        })
    }

    /// Moves the staged AMP sets into lnd's table in set-id order, builds
    /// lnd's unique constraints, indexes and foreign keys, and moves lnd's
    /// id sequences past the copied ids, in one transaction (idempotent).
    /// A violated unique constraint rolls it all back and names the copies.
    /// `cache_kib` is the build's `maintenance_work_mem`, at least
    /// [`INDEX_BUILD_MEMORY_KIB`].
    pub(super) fn build_indexes(&mut self, cache_kib: i64, kv: &Path) -> Result<IndexBuild> {
        let kv = kv.to_path_buf();
        let memory = cache_kib.max(INDEX_BUILD_MEMORY_KIB);
        let mut second = self
            .dsn
            .connect()
            .pg(Role::Native, "opening the index build's second session")?;
        self.write_or_roll_back(Some("indexes"), "committing lnd's indexes", |tx| {
            tx.batch_execute(&format!("SET LOCAL maintenance_work_mem TO '{memory}kB'"))
                .pg(Role::Native, "setting maintenance_work_mem")?;
            let mut attempt = tx
                .transaction()
                .pg(Role::Native, "starting lnd's index build")?;
            match build(&mut attempt, &mut second, memory) {
                Ok(()) => {
                    attempt
                        .commit()
                        .pg(Role::Native, "releasing lnd's index build")?;
                    copy::reset_sequences(tx).pg(Role::Native, "")?;
                    Ok(Finish::Commit(IndexBuild::Built))
                }
                Err(err) if is_unique_violation(&err) => {
                    attempt
                        .rollback()
                        .pg(Role::Native, "rolling back lnd's index build")?;
                    duplicate(tx, &kv, err).map(Finish::RollBack)
                }
                Err(err) => Err(err).pg(Role::Native, ""),
            }
        })
    }

    /// Marks the copies in `(after, last]` checked, in a transaction of its
    /// own: while the store reads ahead, by the read-ahead's marks worker
    /// on a session of its own, without waiting for it (`prefetch.rs` says
    /// why that is sound), else on the store's session.
    pub(super) fn mark_checked(&mut self, after: Option<u32>, last: Option<u32>) -> Result<()> {
        let (lo, _) = bounds(after, None);
        let hi = last.map_or(-1, i64::from);
        if !self.in_read.get() {
            if let Some(p) = self.prefetch.get_mut().as_mut() {
                return p.mark(lo, hi);
            }
        }
        self.write(None, MARKING, |tx| mark_range(tx, lo, hi))
    }

    /// Marks each of `equal` checked if its map row still has that digest,
    /// in one statement.
    pub(super) fn mark_equal(&mut self, equal: &[&Prepared]) -> Result<()> {
        let nums: Vec<i64> = equal.iter().map(|p| i64::from(p.num)).collect();
        let digests: Vec<&[u8]> = equal.iter().map(|p| p.digest.as_slice()).collect();
        self.write(None, "marking verified copies", |tx| {
            tx.execute(
                "UPDATE oneway_invoice_map m SET checked = true
                 FROM unnest($1::bigint[], $2::bytea[]) AS e(kv_num, digest)
                 WHERE m.kv_num = e.kv_num AND m.digest = e.digest",
                &[&nums, &digests],
            )
            .pg(Role::Native, "marking verified copies")?;
            Ok(())
        })
    }
}

/// What marking verified copies is called in errors.
pub(super) const MARKING: &str = "marking verified copies";

/// Marks the copies with `lo < kv_num <= hi` checked, inside `tx` (which
/// holds the state row).
pub(super) fn mark_range(tx: &mut Transaction<'_>, lo: i64, hi: i64) -> Result<()> {
    tx.query_typed(
        "UPDATE oneway_invoice_map SET checked = true
         WHERE kv_num > $1 AND kv_num <= $2 AND NOT checked",
        &id_range(&lo, &hi),
    )
    .pg(Role::Native, MARKING)?;
    Ok(())
}

/// `lo < kv_num <= hi` as SQL bounds (`None`: unbounded).
pub(super) fn bounds(lo: Option<u32>, hi: Option<u32>) -> (i64, i64) {
    (lo.map_or(-1, i64::from), hi.map_or(i64::MAX, i64::from))
}

/// The copy-map rows with `lo < kv_num <= hi`.
pub(super) fn copy_map_range(
    client: &mut impl postgres::GenericClient,
    lo: Option<u32>,
    hi: Option<u32>,
) -> std::result::Result<CopyMap, postgres::Error> {
    let (lo, hi) = bounds(lo, hi);
    Ok(client
        .query_typed(
            "SELECT kv_num, invoice_id, digest FROM oneway_invoice_map
             WHERE kv_num > $1 AND kv_num <= $2",
            &id_range(&lo, &hi),
        )?
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u32, (r.get(1), r.get(2))))
        .collect())
}

/// Deletes the copies `(kv_num, native id)`: lnd's rows (children first,
/// so it works with or without the foreign keys) and their map rows.
fn remove(
    tx: &mut Transaction<'_>,
    copies: &[(u32, i64)],
) -> std::result::Result<(), postgres::Error> {
    if copies.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = copies.iter().map(|(_, id)| *id).collect();
    let nums: Vec<i64> = copies.iter().map(|(k, _)| i64::from(*k)).collect();
    for sql in [
        "DELETE FROM amp_sub_invoice_htlcs WHERE invoice_id = ANY($1)",
        "DELETE FROM invoice_htlc_custom_records WHERE htlc_id IN
             (SELECT id FROM invoice_htlcs WHERE invoice_id = ANY($1))",
        "DELETE FROM invoice_htlcs WHERE invoice_id = ANY($1)",
        "DELETE FROM amp_sub_invoices WHERE invoice_id = ANY($1)",
        "DELETE FROM oneway_amp_staging WHERE invoice_id = ANY($1)",
        "DELETE FROM invoice_features WHERE invoice_id = ANY($1)",
        "DELETE FROM invoices WHERE id = ANY($1)",
    ] {
        tx.execute(sql, &[&ids])?;
    }
    tx.execute(
        "DELETE FROM oneway_invoice_map WHERE kv_num = ANY($1)",
        &[&nums],
    )?;
    Ok(())
}

/// Copies the rows of `new` and their map rows (unchecked), HTLC ids from
/// `first` on; a bulk batch stages its AMP sets. Returns the highest settle
/// index written.
pub(super) fn insert_new(
    tx: &mut Transaction<'_>,
    kv: &Path,
    new: &[&Prepared],
    kind: BatchKind,
    first: i64,
) -> Result<i64> {
    if new.is_empty() {
        return Ok(0);
    }
    let rows: Vec<&NativeInvoice> = new.iter().map(|p| &p.native).collect();
    let mut attempt = tx.transaction().pg(Role::Native, "starting the copy")?;
    let bulk = kind == BatchKind::Bulk;
    let copied = copy::copy_invoices_to(&mut attempt, &rows, first, bulk)
        .and_then(|_| copy_map_rows(&mut attempt, new));
    match copied {
        Ok(()) => attempt.commit().pg(Role::Native, "copying invoices")?,
        Err(err) => {
            attempt
                .rollback()
                .pg(Role::Native, "rolling back a refused copy")?;
            return Err(insert_error(tx, err, kv, new));
        }
    }
    Ok(new
        .iter()
        .map(|p| p.native.max_settle_index())
        .max()
        .unwrap_or(0))
}

/// The map rows of `new`, one array per column in one statement
/// ([`copy::insert_columns`]: the map is one of the narrow tables).
fn copy_map_rows(tx: &mut Transaction<'_>, new: &[&Prepared]) -> PgResult<()> {
    let mut columns: [Vec<i64>; 7] = Default::default();
    let mut digests: Vec<&[u8]> = Vec::with_capacity(new.len());
    for p in new {
        let c = p.native.child_rows();
        let row = [
            i64::from(p.num),
            p.native.id,
            c.invoice_features as i64,
            c.invoice_htlcs as i64,
            c.invoice_htlc_custom_records as i64,
            c.amp_sub_invoices as i64,
            c.amp_sub_invoice_htlcs as i64,
        ];
        for (column, v) in columns.iter_mut().zip(row) {
            column.push(v);
        }
        digests.push(p.digest.as_slice());
    }
    let [nums, ids, features, htlcs, custom, sets, amp_htlcs] = &columns;
    let int8 = Type::INT8_ARRAY;
    copy::insert_columns(
        tx,
        "oneway_invoice_map",
        "kv_num, invoice_id, features, htlcs, custom_records, amp_sets, amp_htlcs, digest",
        new.len(),
        &[
            (nums, int8.clone()),
            (ids, int8.clone()),
            (features, int8.clone()),
            (htlcs, int8.clone()),
            (custom, int8.clone()),
            (sets, int8.clone()),
            (amp_htlcs, int8),
            (&digests, Type::BYTEA_ARRAY),
        ],
    )?;
    Ok(())
}

/// The batch's bookkeeping: the cursor (bulk batches), the number of
/// copies, and lnd's settle-index sequence.
fn move_cursor(
    tx: &mut Transaction<'_>,
    batch: &Batch<'_>,
    outcome: &BatchOutcome,
    max_settle: i64,
) -> Result<()> {
    let bulk = batch.kind == BatchKind::Bulk;
    let delta = outcome.written as i64 - outcome.recopied as i64 - outcome.removed as i64;
    if bulk || delta != 0 {
        tx.query_typed(
            "UPDATE oneway_state SET cursor = CASE WHEN $1 THEN coalesce($2, cursor) ELSE cursor END,
                 copied = copied + $3 WHERE singleton = 1",
            &[
                (&bulk, Type::BOOL),
                (&batch.last.map(i64::from), Type::INT8),
                (&delta, Type::INT8),
            ],
        )
        .pg(Role::Native, "moving the cursor")?;
    }
    raise_settle_sequence(tx, max_settle)
}

/// Raises lnd's settle-index sequence to `max_settle` (nothing for 0).
pub(super) fn raise_settle_sequence(tx: &mut Transaction<'_>, max_settle: i64) -> Result<()> {
    if max_settle > 0 {
        tx.query_typed(
            "UPDATE invoice_sequences SET current_value = greatest(current_value, $1)
             WHERE name = 'settle_index'",
            &[(&max_settle, Type::INT8)],
        )
        .pg(Role::Native, "updating the settle index sequence")?;
    }
    Ok(())
}

/// A refused copy: a violated unique constraint names the first invoice of
/// the batch that collides with a row already there, or the batch's range;
/// a value lnd's schema cannot hold names its invoice; anything else is a
/// Postgres error.
fn insert_error(tx: &mut Transaction<'_>, err: PgError, kv: &Path, new: &[&Prepared]) -> Error {
    let PgError::Unrepresentable { id, why } = &err else {
        if !is_unique_violation(&err) {
            return Error::Postgres {
                role: Role::Native,
                source: err,
            };
        }
        let culprit = colliding(tx, new).ok().flatten().unwrap_or(new[0]);
        return Error::BadInvoice {
            invoice_key: format!("{:08x}", culprit.num),
            path: kv.to_path_buf(),
            reason: format!(
                "the native store refuses it ({}): another invoice has the same add index ({}), payment \
                 hash ({}), payment address or HTLC circuit key",
                err,
                culprit.native.id,
                hex::encode(&culprit.native.hash)
            ),
        };
    };
    let num = new.iter().find(|p| p.native.id == *id).map_or(0, |p| p.num);
    Error::BadInvoice {
        invoice_key: format!("{num:08x}"),
        path: kv.to_path_buf(),
        reason: why.clone(),
    }
}

/// The first of `new` whose add index, payment hash or payment address an
/// invoice already in the store has (the copy was rolled back).
fn colliding<'a>(tx: &mut Transaction<'_>, new: &[&'a Prepared]) -> PgResult<Option<&'a Prepared>> {
    let ids: Vec<i64> = new.iter().map(|p| p.native.id).collect();
    let hashes: Vec<&[u8]> = new.iter().map(|p| p.native.hash.as_slice()).collect();
    let addrs: Vec<Option<&[u8]>> = new
        .iter()
        .map(|p| p.native.payment_addr.as_deref())
        .collect();
    let hits: HashSet<usize> = tx
        .query(
            "SELECT DISTINCT n.i::bigint FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])
                 WITH ORDINALITY AS n(id, hash, addr, i)
             JOIN invoices v ON v.id = n.id OR v.hash = n.hash OR v.payment_addr = n.addr",
            &[&ids, &hashes, &addrs],
        )
        .map_err(crate::postgres::sql("looking for the colliding invoice"))?
        .iter()
        .map(|r| r.get::<_, i64>(0) as usize - 1)
        .collect();
    Ok((0..new.len()).find(|i| hits.contains(i)).map(|i| new[i]))
}

/// Whether `err` is a violated unique constraint (or primary key).
fn is_unique_violation(err: &PgError) -> bool {
    match err {
        PgError::Sql { source, .. } => source.code() == Some(&SqlState::UNIQUE_VIOLATION),
        _ => false,
    }
}

/// The table the index build writes (moving the staged AMP sets into it):
/// its indexes are built by the build's own transaction, which holds a
/// `ROW EXCLUSIVE` lock on it until the commit.
const AMP_SETS_TABLE: &str = "amp_sub_invoices";

/// The columns of lnd's tables verification reads by
/// (`crate::postgres::load`), analyzed by the index build so that its plans
/// see the copied rows. The copy map is read by ranges of its primary key,
/// planned well without statistics; analyzing it would wait for the
/// autovacuum its inserts start.
const VERIFY_COLUMNS: &str = "invoices (id), invoice_features (invoice_id),
     invoice_htlcs (invoice_id), invoice_htlc_custom_records (htlc_id),
     amp_sub_invoices (invoice_id), amp_sub_invoice_htlcs (htlc_id)";

/// Builds what the bulk copy left out, after moving the staged AMP sets:
/// lnd's unique B-trees in `tx` while `second` (a session of its own, in
/// autocommit) builds lnd's other named indexes, on the server's other
/// core; then, once `second` is done, the unique constraints over those
/// B-trees, the foreign keys and the statistics, in `tx`.
///
/// No deadlock: until the join `tx` holds `SHARE` locks on the tables it
/// indexes (which `CREATE INDEX` on `second` shares) and `ROW EXCLUSIVE`
/// only on [`AMP_SETS_TABLE`] and the staging table, which `second` does
/// not touch; the `ACCESS EXCLUSIVE` locks of the constraints and the
/// lock that gives the tables back to autovacuum come after `second` has
/// finished. Crash safety: what `second` commits is a subset
/// of lnd's indexes, built idempotently; `indexes_built` stays false until
/// `tx` commits the rest, and a rerun's build skips what exists.
fn build(tx: &mut Transaction<'_>, second: &mut postgres::Client, memory: i64) -> PgResult<()> {
    tx.batch_execute(
        "INSERT INTO amp_sub_invoices (set_id, state, created_at, settled_at, settle_index, invoice_id)
             SELECT set_id, state, created_at, settled_at, settle_index, invoice_id
             FROM oneway_amp_staging ORDER BY set_id;
         DELETE FROM oneway_amp_staging;",
    )
    .map_err(crate::postgres::sql(format!(
        "moving the staged AMP sets out of {AMP_STAGING_TABLE}"
    )))?;
    std::thread::scope(|s| {
        let named = s.spawn(|| named_indexes(second, memory));
        let own = pg_schema::build_copy_unique_indexes(tx)
            .and_then(|()| pg_schema::build_named_indexes(tx, |t| t == AMP_SETS_TABLE));
        let named = named
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        own.and(named)
    })?;
    pg_schema::attach_copy_uniques(tx)?;
    pg_schema::resume_autovacuum(tx)?;
    pg_schema::build_copy_foreign_keys(tx)?;
    // Statistics of the columns verification reads by, for its plans:
    // lnd's tables were empty when created, and the read-back would
    // otherwise be planned for empty tables. A small sample is enough for
    // that. Naming the columns keeps the server's count of changes since
    // the last ANALYZE, so that autovacuum still analyzes every column
    // with the server's own target soon after, as it does after lnd's own
    // migration.
    tx.batch_execute(&format!(
        "SET LOCAL default_statistics_target TO 10; ANALYZE {VERIFY_COLUMNS}"
    ))
    .map_err(crate::postgres::sql(
        "collecting statistics of the copied rows",
    ))
}

/// The named indexes of the tables other than [`AMP_SETS_TABLE`], on the
/// index build's second session.
fn named_indexes(second: &mut postgres::Client, memory: i64) -> PgResult<()> {
    second
        .batch_execute(&format!("SET maintenance_work_mem TO '{memory}kB'"))
        .map_err(crate::postgres::sql("setting maintenance_work_mem"))?;
    pg_schema::build_named_indexes(second, |t| t != AMP_SETS_TABLE)
}

/// A failed index build: the two copies that break a unique constraint as
/// [`IndexBuild::Duplicate`] (the caller rolls back), else the error.
fn duplicate(tx: &mut Transaction<'_>, kv: &Path, err: PgError) -> Result<IndexBuild> {
    let dup = find_duplicate(tx).pg(Role::Native, "")?;
    match dup {
        Some((num, other, reason)) => Ok(IndexBuild::Duplicate {
            invoices: other.into_iter().chain([num]).collect(),
            error: Error::BadInvoice {
                invoice_key: format!("{num:08x}"),
                path: kv.to_path_buf(),
                reason,
            },
        }),
        None => Err(Error::Postgres {
            role: Role::Native,
            source: err,
        }),
    }
}

/// Two invoices that break one of lnd's unique constraints, as (KV number
/// of the later one, KV number of the other when it is in the copy map,
/// sentence naming the other and the shared value); as SQLite's
/// `native::find_duplicate` finds them.
fn find_duplicate(tx: &mut Transaction<'_>) -> PgResult<Option<(u32, Option<u32>, String)>> {
    let act = || crate::postgres::sql("looking for duplicates");
    for (what, query) in
        crate::workload::invoices::duplicate_checks(|c| format!("encode({c}, 'hex')"))
    {
        let rows: Vec<(i64, String)> = tx
            .query(&query, &[])
            .map_err(act())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let [(first, value), (second, _)] = rows.as_slice() else {
            continue;
        };
        let mut num = |id: i64| -> PgResult<Option<i64>> {
            Ok(tx
                .query_opt(
                    "SELECT kv_num FROM oneway_invoice_map WHERE invoice_id = $1",
                    &[&id],
                )
                .map_err(act())?
                .map(|r| r.get(0)))
        };
        let nums = (num(*first)?, num(*second)?);
        let found =
            crate::workload::invoices::duplicate_found(what, value, (*first, *second), nums);
        return Ok(Some(found));
    }
    Ok(None)
}
