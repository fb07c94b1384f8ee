//! Durable writes between transitions: copy batches, repairs, the sweep of
//! deleted invoices, the index build, and the copy map's `checked` marks.
//!
//! Every one of them goes through [`Target::write`], the one checked path:
//! it opens an immediate transaction at `synchronous=NORMAL`, asks the
//! machine ([`fsm::transition`] with [`Event::BatchCopied`]) whether the
//! persisted state allows a write now, runs the body, and commits between
//! the failpoints `<name>.before_commit` and `<name>.after_commit` when it
//! has a name. None is journaled: each is an in-state event whose effect is
//! recorded by its own rows (the cursor, the copy map), and the transition
//! that ends the state journals the result (spec/state-machine.md §3).
//!
//! Crash safety: each write is one transaction, so a crash before its commit
//! loses the whole write (a batch and the cursor that points past it go
//! together) and the rerun does it again; a crash after it keeps it all.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{params, Transaction, TransactionBehavior};

use super::copy_map;
use super::Target;
use crate::error::{Context, Error, Result, Role};
use crate::fsm::{self, Event, State};
use crate::reader::Prepared;
use crate::store::{is_current, Batch, BatchKind, BatchOutcome, CopyMap, IndexBuild};
use crate::workload::invoices::sqlite as invoice_rows;

impl Target {
    /// The one checked path for a durable write between transitions (see
    /// the module documentation). `failpoint` names the failpoints around
    /// the commit (`None`: none); `commit` is what a failed commit was doing.
    pub(super) fn write<T>(
        &mut self,
        failpoint: Option<&str>,
        commit: &str,
        body: impl FnOnce(&Transaction<'_>, &Path) -> Result<T>,
    ) -> Result<T> {
        self.write_or_roll_back(failpoint, commit, |tx, path| {
            Ok(Finish::Commit(body(tx, path)?))
        })
    }

    /// [`Target::write`] whose body may also ask for a rollback.
    fn write_or_roll_back<T>(
        &mut self,
        failpoint: Option<&str>,
        commit: &str,
        body: impl FnOnce(&Transaction<'_>, &Path) -> Result<Finish<T>>,
    ) -> Result<T> {
        self.set_sync(false)?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(Role::Native, &path, "starting a batch")?;
        let state = state_in(&tx, &path)?;
        fsm::transition(state, Event::BatchCopied).map_err(|refusal| Error::IllegalTransition {
            state,
            event: Event::BatchCopied,
            refusal,
        })?;
        let out = match body(&tx, &path)? {
            Finish::Commit(out) => out,
            // Dropping the transaction rolls it back.
            Finish::RollBack(out) => return Ok(out),
        };
        if let Some(name) = failpoint {
            crate::failpoint::hit(&format!("{name}.before_commit"));
        }
        tx.commit().ctx(Role::Native, &path, commit)?;
        if let Some(name) = failpoint {
            crate::failpoint::hit(&format!("{name}.after_commit"));
        }
        Ok(out)
    }
}

impl Target {
    /// Writes one batch in one transaction: deletes copies of invoices gone
    /// from the source in the range, re-copies invoices whose source digest
    /// changed, inserts new ones, and for a [`BatchKind::Bulk`] moves the
    /// cursor to `last`. `kv` names the source in a refused insert.
    pub(super) fn write_batch(&mut self, batch: &Batch<'_>, kv: &Path) -> Result<BatchOutcome> {
        let outcome = self.write(Some("batch"), "committing a batch", |tx, sql| {
            let mapped = copy_map::range(tx, batch.after, batch.last).ctx(
                Role::Native,
                sql,
                "reading the copy map",
            )?;
            let mut outcome = BatchOutcome {
                removed: remove_gone(tx, sql, &mapped, batch.invoices)?,
                recopied: remove_outdated(tx, sql, &mapped, batch.invoices)?,
                ..BatchOutcome::default()
            };
            let max_settle = insert_new(tx, sql, kv, &mapped, batch, &mut outcome)?;
            move_cursor(tx, sql, batch, &outcome, max_settle)?;
            Ok(outcome)
        })?;
        debug_assert!(outcome.recopied <= outcome.written);
        tracing::debug!(?outcome, cursor = ?batch.last, "batch committed");
        Ok(outcome)
    }

    /// Removes the copies of the invoices `gone` (deleted from the source)
    /// in one transaction; returns how many.
    pub(super) fn remove_copies(&mut self, gone: &[u32]) -> Result<u64> {
        let action = "removing copies of deleted invoices";
        self.write(Some("batch"), action, |tx, sql| {
            for k in gone {
                let id: i64 = tx
                    .query_row(
                        "SELECT invoice_id FROM oneway_invoice_map WHERE kv_num = ?1",
                        [k],
                        |r| r.get(0),
                    )
                    .ctx(Role::Native, sql, action)?;
                remove_copy(tx, *k, id).ctx(Role::Native, sql, action)?;
            }
            tx.execute(
                "UPDATE oneway_state SET copied = copied - ?1 WHERE singleton = 1",
                [gone.len() as i64],
            )
            .ctx(Role::Native, sql, action)?;
            Ok(gone.len() as u64)
        })
    }

    /// Moves the staged AMP sub-invoices into lnd's table and creates lnd's
    /// unique constraints and indexes, in one transaction (idempotent: the
    /// move empties the staging table and the indexes are created `IF NOT
    /// EXISTS`). The build runs with a page cache of `cache_kib`.
    pub(super) fn build_indexes(&mut self, cache_kib: i64, kv: &Path) -> Result<IndexBuild> {
        let normal_cache = super::NATIVE_CACHE_KIB;
        self.write_or_roll_back(Some("indexes"), "committing lnd's indexes", |tx, sql| {
            let cache = |kib: i64| {
                tx.pragma_update(None, "cache_size", -kib).ctx(
                    Role::Native,
                    sql,
                    "setting the cache size",
                )
            };
            cache(cache_kib)?;
            let built = tx
                .execute_batch(invoice_rows::AMP_STAGING)
                .and_then(|_| crate::lnd_schema::create_indexes(tx));
            cache(normal_cache)?;
            match built {
                Ok(()) => Ok(Finish::Commit(IndexBuild::Built)),
                Err(err) => duplicate(tx, sql, kv, err).map(Finish::RollBack),
            }
        })
    }
}

/// How [`Target::write_or_roll_back`] ends its transaction.
enum Finish<T> {
    Commit(T),
    RollBack(T),
}

/// The persisted state inside `tx`; an unknown name is an error, never
/// taken for a known state.
fn state_in(tx: &Transaction<'_>, path: &Path) -> Result<State> {
    let name: String = tx
        .query_row(
            "SELECT state FROM oneway_state WHERE singleton = 1",
            [],
            |r| r.get(0),
        )
        .ctx(Role::Native, path, "reading the state row")?;
    State::from_name(&name).ok_or_else(|| Error::NotOnewayStore {
        path: path.to_path_buf(),
        why: format!("records an unknown state {name:?}"),
    })
}

/// A failed index build: a violated unique constraint between two copies
/// is [`IndexBuild::Duplicate`] (the caller rolls back), anything else a
/// SQLite error.
fn duplicate(
    tx: &Transaction<'_>,
    sql: &Path,
    kv: &Path,
    err: rusqlite::Error,
) -> Result<IndexBuild> {
    if let rusqlite::Error::SqliteFailure(f, _) = &err {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            let dup = invoice_rows::find_duplicate(tx).ctx(
                Role::Native,
                sql,
                "looking for duplicates",
            )?;
            if let Some((num, other, reason)) = dup {
                return Ok(IndexBuild::Duplicate {
                    invoices: other.into_iter().chain([num]).collect(),
                    error: Error::BadInvoice {
                        invoice_key: format!("{num:08x}"),
                        path: kv.to_path_buf(),
                        reason,
                    },
                });
            }
        }
    }
    Err(Error::sqlite(
        Role::Native,
        sql,
        "creating lnd's indexes",
        err,
    ))
}

/// Deletes one copy: lnd's rows of native invoice `id` and its map row.
fn remove_copy(tx: &Transaction<'_>, kv_num: u32, id: i64) -> rusqlite::Result<()> {
    invoice_rows::delete(tx, id)?;
    tx.prepare_cached("DELETE FROM oneway_invoice_map WHERE kv_num = ?1")?
        .execute([kv_num])?;
    Ok(())
}

/// Copies whose source invoice disappeared from the range go first, so
/// that a new invoice may take over what they held (lnd can delete an
/// invoice and later accept the same payment hash again).
fn remove_gone(
    tx: &Transaction<'_>,
    sql: &Path,
    mapped: &CopyMap,
    invoices: &[Prepared],
) -> Result<u64> {
    let present: HashSet<u32> = invoices.iter().map(|p| p.num).collect();
    let mut removed = 0;
    for (kv_num, (id, _)) in mapped.iter().filter(|(k, _)| !present.contains(k)) {
        remove_copy(tx, *kv_num, *id).ctx(
            Role::Native,
            sql,
            "removing a copy of a deleted invoice",
        )?;
        removed += 1;
    }
    Ok(removed)
}

/// Outdated copies next, for the same reason.
fn remove_outdated(
    tx: &Transaction<'_>,
    sql: &Path,
    mapped: &CopyMap,
    invoices: &[Prepared],
) -> Result<u64> {
    let mut recopied = 0;
    for p in invoices.iter().filter(|p| !is_current(mapped, p)) {
        if let Some((id, _)) = mapped.get(&p.num) {
            remove_copy(tx, p.num, *id).ctx(Role::Native, sql, "removing an outdated copy")?;
            recopied += 1;
        }
    }
    Ok(recopied)
}

/// Inserts the rows and map rows of every invoice of the batch not already
/// current; returns the highest settle index written.
fn insert_new(
    tx: &Transaction<'_>,
    sql: &Path,
    kv: &Path,
    mapped: &CopyMap,
    batch: &Batch<'_>,
    outcome: &mut BatchOutcome,
) -> Result<i64> {
    let prep = |e| Error::sqlite(Role::Native, sql, "preparing the inserts", e);
    let mut rows = invoice_rows::Inserter::new(tx, batch.kind == BatchKind::Bulk).map_err(prep)?;
    let mut map_row = tx
        .prepare_cached(
            "INSERT INTO oneway_invoice_map (kv_num, invoice_id, digest, features, htlcs,
                 custom_records, amp_sets, amp_htlcs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(prep)?;
    let mut max_settle = 0i64;
    for p in batch.invoices.iter().filter(|p| !is_current(mapped, p)) {
        rows.insert(&p.native)
            .map_err(|err| insert_error(err, kv, sql, p))?;
        let c = p.native.child_rows();
        map_row
            .execute(params![
                p.num,
                p.native.id,
                p.digest.as_slice(),
                c.invoice_features as i64,
                c.invoice_htlcs as i64,
                c.invoice_htlc_custom_records as i64,
                c.amp_sub_invoices as i64,
                c.amp_sub_invoice_htlcs as i64
            ])
            .map_err(|err| insert_error(err, kv, sql, p))?;
        max_settle = max_settle.max(p.native.max_settle_index());
        outcome.written += 1;
    }
    Ok(max_settle)
}

/// The batch's bookkeeping: the cursor (bulk batches), the number of
/// copies, and lnd's settle-index sequence.
fn move_cursor(
    tx: &Transaction<'_>,
    sql: &Path,
    batch: &Batch<'_>,
    outcome: &BatchOutcome,
    max_settle: i64,
) -> Result<()> {
    let bulk = batch.kind == BatchKind::Bulk;
    let delta = outcome.written as i64 - outcome.recopied as i64 - outcome.removed as i64;
    if bulk || delta != 0 {
        tx.prepare_cached(
            "UPDATE oneway_state SET cursor = CASE WHEN ?1 THEN coalesce(?2, cursor) ELSE cursor END,
                 copied = copied + ?3 WHERE singleton = 1",
        )
        .and_then(|mut s| s.execute(params![bulk, batch.last.map(i64::from), delta]))
        .ctx(Role::Native, sql, "moving the cursor")?;
    }
    if max_settle > 0 {
        tx.prepare_cached(
            "UPDATE invoice_sequences SET current_value = max(current_value, ?1) WHERE name = 'settle_index'",
        )
        .and_then(|mut s| s.execute([max_settle]))
        .ctx(Role::Native, sql, "updating the settle index sequence")?;
    }
    Ok(())
}

/// A refused insert: a violated unique constraint names the invoice and
/// what it collides on; anything else is a SQLite error.
fn insert_error(err: rusqlite::Error, kv: &Path, sql: &Path, p: &Prepared) -> Error {
    if let rusqlite::Error::SqliteFailure(f, msg) = &err {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return Error::BadInvoice {
                invoice_key: format!("{:08x}", p.num),
                path: kv.to_path_buf(),
                reason: format!(
                    "the native store refuses it ({}): another invoice has the same add index ({}), payment \
                     hash ({}), payment address or HTLC circuit key",
                    msg.as_deref().unwrap_or("constraint violation"),
                    p.native.id,
                    hex::encode(&p.native.hash)
                ),
            };
        }
    }
    Error::sqlite(Role::Native, sql, "inserting an invoice", err)
}
