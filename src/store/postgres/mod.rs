//! The PostgreSQL native store ([`PgTarget`]): lnd's invoice tables and
//! oneway's bookkeeping in the database lnd's `db.postgres.dsn` names, the
//! same one that holds lnd's KV table (`public.channeldb_kv`).
//!
//! oneway's four tables carry the names and meaning they have on SQLite
//! (`super::sqlite`): `oneway_state` (one row), `oneway_journal`
//! (append-only: a trigger refuses UPDATE, DELETE and TRUNCATE),
//! `oneway_invoice_map` (the copy map and its invariants, [`super::CopyMap`])
//! and `oneway_amp_staging` (AMP sets of bulk batches, moved into lnd's
//! table by the index build). They are created by the `Begin` transition
//! with lnd's schema ([`crate::postgres::lnd_schema::create`], golang-migrate's
//! version dirty), in one transaction; Postgres grants nothing on a new table
//! to other roles, and the trigger function's default `EXECUTE` grant to
//! `PUBLIC` is revoked.
//!
//! For the bulk copy lnd's secondary indexes, unique constraints and the
//! foreign keys of the copied tables are dropped at `Begin` and built once
//! by [`NativeStore::build_indexes`] over the copied rows; until then the
//! structural check ([`NativeStore::contract`]) names each missing object.
//!
//! One connection serves the store, but for the copy's bulk batches, which
//! go through two sessions of their own and commit in order (`lanes.rs`),
//! for the index build's second session and for verification's read-ahead
//! (`prefetch.rs`). Transitions commit with
//! `synchronous_commit` on (the server's default): a transition is durable
//! when it returns. Batches and marks commit with `synchronous_commit` off:
//! a server crash can lose only the last of them, together with the cursor
//! that points past them (one transaction), so a rerun copies them again;
//! Postgres never applies a later commit without an earlier one.

mod batch;
mod lanes;
mod prefetch;
mod reads;
mod schema;
mod worker;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use postgres::{Client, GenericClient};

use crate::error::{Error, PgContext, Result, Role};
use crate::fsm::{self, Event, State};
use crate::lnd_schema::{Existing, Stage};
use crate::postgres::lnd_schema::Schema;
use crate::postgres::Dsn;
use crate::reader::Prepared;
use crate::source::{SourceDigest, TombstoneOutcome, Witness};
use crate::store::{
    self, now_text, Batch, BatchOutcome, Committed, CopyMap, CopyVisitor, Effect, IndexBuild,
    JournalEntry, NativeStore, Persisted, Sealed, SourceIdentity, FORMAT_VERSION,
};
use crate::workload::invoices::NativeInvoice;

/// The native store in PostgreSQL, opened for oneway's work.
pub struct PgTarget {
    /// The one session (reads take `&self`, so it sits in a cell; no
    /// borrow is held across a call back into the store).
    conn: RefCell<Client>,
    /// The database, for the sessions of a seal's witness and of the
    /// expected schema.
    dsn: Dsn,
    /// The redacted DSN, for messages.
    path: PathBuf,
    /// lnd's schema on this server, derived when first needed
    /// ([`PgTarget::expected`]).
    expected: std::cell::OnceCell<Schema>,
    /// Verification's read-ahead, started by the first
    /// [`NativeStore::prefetch`].
    prefetch: RefCell<Option<prefetch::Prefetcher>>,
    /// Inside [`NativeStore::in_snapshot`]: no read-ahead.
    in_read: std::cell::Cell<bool>,
    /// How the copy in progress writes its bulk batches.
    bulk: BulkCopy,
}

/// How [`NativeStore::submit_bulk`] writes the batches of a copy.
enum BulkCopy {
    /// No copy in progress: the next batch decides.
    Idle,
    /// One batch at a time on the store's session (copies lie beyond the
    /// copy's start; see `lanes.rs`).
    Single,
    /// On the lanes.
    Lanes(lanes::Lanes),
}

impl PgTarget {
    /// Opens the native store in the database `dsn` names; `shown` (the
    /// redacted DSN) is what [`NativeStore::path`] returns. `None` when the
    /// database holds neither oneway's tables nor lnd's native tables and
    /// `create` is false. An lnd database whose invoice migration never ran
    /// opens with no state ([`NativeStore::load`] is `None`), to continue
    /// into; anything else that is not oneway's is refused.
    pub fn open(dsn: &Dsn, shown: &Path, create: bool) -> Result<Option<PgTarget>> {
        let mut client = dsn.connect().pg(Role::Native, "connecting")?;
        let existing = schema::existing(&mut client).pg(Role::Native, "")?;
        match existing {
            None => {}
            Some(Existing::Empty) if !create => return Ok(None),
            Some(e) => refuse(shown, e)?,
        }
        Ok(Some(PgTarget {
            conn: RefCell::new(client),
            dsn: dsn.clone(),
            path: shown.to_path_buf(),
            expected: std::cell::OnceCell::new(),
            prefetch: RefCell::new(None),
            in_read: std::cell::Cell::new(false),
            bulk: BulkCopy::Idle,
        }))
    }

    /// Creates the native store in the database `dsn` names (see
    /// [`PgTarget::open`]).
    pub fn create(dsn: &Dsn, shown: &Path) -> Result<PgTarget> {
        PgTarget::open(dsn, shown, true)?.ok_or_else(|| Error::Missing {
            role: Role::Native,
            path: shown.to_path_buf(),
        })
    }

    /// Every journal row, oldest first.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        if !self.has_table("oneway_journal")? {
            return Ok(Vec::new());
        }
        let rows = self
            .conn
            .borrow_mut()
            .query(
                "SELECT seq, at, kind, from_state, to_state, event, details
                 FROM oneway_journal ORDER BY seq",
                &[],
            )
            .pg(Role::Native, "reading the journal")?;
        Ok(rows
            .iter()
            .map(|r| {
                let details: String = r.get(6);
                JournalEntry {
                    seq: r.get(0),
                    at: r.get(1),
                    kind: r.get(2),
                    from_state: r.get(3),
                    to_state: r.get(4),
                    event: r.get(5),
                    details: serde_json::from_str(&details)
                        .unwrap_or(serde_json::Value::String(details)),
                }
            })
            .collect())
    }

    /// lnd's schema as [`crate::postgres::lnd_schema::create`] gives it on
    /// this server, derived once, when a contract check first needs it, on
    /// a session of its own (its scratch schema is created and rolled back:
    /// it cannot run inside the store's transition or read snapshot, and
    /// the commands that only read — `status`, `guard` — never need it).
    fn expected(&self) -> Result<&Schema> {
        if let Some(s) = self.expected.get() {
            return Ok(s);
        }
        let mut c = self.dsn.connect().pg(Role::Native, "")?;
        let schema = Schema::expected(&mut c).pg(Role::Native, "")?;
        Ok(self.expected.get_or_init(|| schema))
    }

    /// Whether the table `name` exists in the session's schema.
    fn has_table(&self, name: &str) -> Result<bool> {
        schema::has_table(&mut *self.conn.borrow_mut(), name).pg(Role::Native, "reading the schema")
    }

    /// A state row's name as a [`State`]; an unknown name is an error,
    /// never taken for a known state.
    fn state_named(&self, name: &str) -> Result<State> {
        state_named(&self.path, name)
    }

    /// The persisted state read inside `tx`, locking the state row until the
    /// transaction ends.
    fn state_for_update(&self, tx: &mut impl GenericClient) -> Result<State> {
        state_for_update(tx, &self.path)
    }

    fn no_state_row(&self) -> Error {
        no_state_row(&self.path)
    }
}

/// A transaction for a write between transitions on `conn`: commits with
/// `synchronous_commit` off, holds the state row, and is refused unless
/// the state accepts such a write (`path` names the store in errors).
fn begin_write<'c>(conn: &'c mut Client, path: &Path) -> Result<postgres::Transaction<'c>> {
    let mut tx = conn.transaction().pg(Role::Native, "starting a batch")?;
    tx.batch_execute("SET LOCAL synchronous_commit TO off")
        .pg(Role::Native, "starting a batch")?;
    accepts_batch(state_for_update(&mut tx, path)?)?;
    Ok(tx)
}

/// The persisted state read inside `tx`, locking the state row until the
/// transaction ends (`path` names the store in errors).
fn state_for_update(tx: &mut impl GenericClient, path: &Path) -> Result<State> {
    let row = tx
        .query_typed_opt(
            "SELECT state FROM oneway_state WHERE singleton = 1 FOR UPDATE",
            &[],
        )
        .pg(Role::Native, "reading the state row")?;
    let Some(row) = row else {
        return Err(no_state_row(path));
    };
    state_named(path, row.get(0))
}

/// The error for a store with oneway's tables but no state row.
fn no_state_row(path: &Path) -> Error {
    Error::NotOnewayStore {
        path: path.to_path_buf(),
        why: "has oneway's tables but no state row: it was tampered with; restore it from backup"
            .into(),
    }
}

/// The state row's name `name` as a [`State`] of the store at `path`; an
/// unknown name is an error, never taken for a known state.
fn state_named(path: &Path, name: &str) -> Result<State> {
    State::from_name(name).ok_or_else(|| Error::NotOnewayStore {
        path: path.to_path_buf(),
        why: format!("records an unknown state {name:?}"),
    })
}

/// Refuses a batch (or any write between transitions) in a `state` that
/// does not accept [`Event::BatchCopied`].
fn accepts_batch(state: State) -> Result<()> {
    fsm::transition(state, Event::BatchCopied)
        .map(|_| ())
        .map_err(|refusal| Error::IllegalTransition {
            state,
            event: Event::BatchCopied,
            refusal,
        })
}

/// Refuses a database with no oneway state that oneway may not continue
/// into (see [`Existing`]).
fn refuse(shown: &Path, existing: Existing) -> Result<()> {
    match existing {
        Existing::Empty | Existing::LndBeforeInvoices => Ok(()),
        Existing::LndMigrated { version } => Err(Error::LndMigrated {
            path: shown.to_path_buf(),
            version,
        }),
        Existing::Foreign(why) => Err(Error::NotOnewayStore {
            path: shown.to_path_buf(),
            why: format!(
                "{why}: refusing to migrate into a database oneway did not prepare (give another database)"
            ),
        }),
    }
}

impl PgTarget {
    /// The seal in one transaction (see
    /// [`NativeStore::seal_with_source`]): the state row locked and checked,
    /// the KV table locked against writers and checked against the
    /// verification, the tombstone, the state and the journal row; nothing
    /// committed when the source changed.
    fn seal_jointly(
        &self,
        prefix: &str,
        verified: &SourceDigest,
        since: Option<&dyn Witness>,
        details: &dyn Fn(&TombstoneOutcome) -> serde_json::Value,
    ) -> Result<Sealed> {
        self.settle_read_ahead()?;
        let event = Event::TombstoneWritten;
        let table = crate::postgres::kv::table_name(prefix).pg(Role::Kv, "")?;
        let mut conn = self.conn.borrow_mut();
        let mut tx = conn.transaction().pg(Role::Native, "starting the seal")?;
        let from = self.state_for_update(&mut tx)?;
        let to = fsm::transition(from, event).map_err(|refusal| Error::IllegalTransition {
            state: from,
            event,
            refusal,
        })?;
        let (outcome, witness) = crate::source::postgres::seal_in_witnessed(
            &mut tx, &self.dsn, &table, verified, since,
        )?;
        if matches!(outcome, TombstoneOutcome::SourceChanged(_)) {
            // Dropped: rolled back, nothing written.
            return Ok((outcome, None));
        }
        finish_transition(tx, from, to, event, &details(&outcome), "tombstoned")?;
        tracing::info!(from = %from, to = %to, event = %event, "state transition");
        debug_assert_eq!(to, State::Tombstoned);
        Ok((outcome, witness.map(|w| Box::new(w) as Box<dyn Witness>)))
    }
}

impl NativeStore for PgTarget {
    fn seal_with_source(
        &mut self,
        prefix: &str,
        verified: &SourceDigest,
        since: Option<&dyn Witness>,
        details: &dyn Fn(&TombstoneOutcome) -> serde_json::Value,
    ) -> Result<Option<Sealed>> {
        self.seal_jointly(prefix, verified, since, details)
            .map(Some)
    }

    fn as_stored<'i>(&self, inv: &'i NativeInvoice) -> std::borrow::Cow<'i, NativeInvoice> {
        std::borrow::Cow::Owned(crate::postgres::load::as_stored(inv))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The state row; `None` before `Begin`. A database with tables but no
    /// oneway state is refused unless oneway may continue into it.
    fn load(&self) -> Result<Option<Persisted>> {
        if !self.has_table("oneway_state")? {
            let existing = schema::existing(&mut *self.conn.borrow_mut()).pg(Role::Native, "")?;
            if let Some(e) = existing {
                refuse(&self.path, e)?;
            }
            return Ok(None);
        }
        let row = self
            .conn
            .borrow_mut()
            .query_opt(
                "SELECT state, format_version, source_identity, batch_size, cursor, copied, pass,
                        verified_count, source_digest, target_digest, updated_at
                 FROM oneway_state WHERE singleton = 1",
                &[],
            )
            .pg(Role::Native, "reading the state row")?;
        let Some(r) = row else {
            return Err(self.no_state_row());
        };
        let state = self.state_named(r.get(0))?;
        let version: i32 = r.get(1);
        if i64::from(version) != FORMAT_VERSION {
            return Err(Error::NotOnewayStore {
                path: self.path.clone(),
                why: format!(
                    "uses oneway format version {version}, this oneway knows {FORMAT_VERSION}"
                ),
            });
        }
        let identity: SourceIdentity =
            serde_json::from_str(r.get(2)).map_err(|e| Error::NotOnewayStore {
                path: self.path.clone(),
                why: format!("has an unreadable source identity: {e}"),
            })?;
        Ok(Some(Persisted {
            state,
            identity,
            batch_size: r.get::<_, i64>(3) as u64,
            cursor: r.get::<_, Option<i64>>(4).map(|c| c as u32),
            copied: r.get::<_, i64>(5) as u64,
            generation: r.get::<_, i64>(6) as u64,
            verified_count: r.get::<_, Option<i64>>(7).map(|c| c as u64),
            source_digest: r.get(8),
            target_digest: r.get(9),
            updated_at: r.get(10),
        }))
    }

    /// One transition as one transaction: the machine's answer, the
    /// persisted state checked under a row lock, the effect, the state row
    /// and the journal row, committed with `synchronous_commit` on between
    /// `<failpoint>.before_commit` and `.after_commit`.
    fn transition(
        &mut self,
        from: State,
        event: Event,
        details: serde_json::Value,
        failpoint: &str,
        effect: Effect<'_>,
    ) -> Result<State> {
        self.settle_read_ahead()?;
        self.end_bulk();
        let to = fsm::transition(from, event).map_err(|refusal| Error::IllegalTransition {
            state: from,
            event,
            refusal,
        })?;
        let mut conn = self.conn.borrow_mut();
        let mut tx = conn
            .transaction()
            .pg(Role::Native, "starting a transition")?;
        if from != State::Fresh {
            let current = self.state_for_update(&mut tx)?;
            if current != from {
                return Err(Error::NotOnewayStore {
                    path: self.path.clone(),
                    why: format!("changed state under us: expected {from}, found {current}"),
                });
            }
        }
        let expected = self.expected()?;
        schema::apply(&effect, &mut tx, expected)?;
        finish_transition(tx, from, to, event, &details, failpoint)?;
        tracing::info!(from = %from, to = %to, event = %event, "state transition");
        Ok(to)
    }

    fn security_event(
        &self,
        state: Option<State>,
        name: &str,
        details: serde_json::Value,
    ) -> Result<()> {
        if !self.has_table("oneway_journal")? {
            return Ok(());
        }
        let state = state.map(State::name);
        self.conn
            .borrow_mut()
            .execute(
                "INSERT INTO oneway_journal (at, kind, from_state, to_state, event, details)
                 VALUES ($1, 'security', $2, $2, $3, $4)",
                &[&now_text(), &state, &name, &details.to_string()],
            )
            .pg(Role::Native, "appending a security event to the journal")?;
        Ok(())
    }

    fn write_batch(&mut self, batch: &Batch<'_>, kv: &Path) -> Result<BatchOutcome> {
        PgTarget::write_batch(self, batch, kv)
    }

    fn submit_bulk(
        &mut self,
        after: Option<u32>,
        last: u32,
        invoices: Vec<Prepared>,
        kv: &Path,
    ) -> Result<Vec<Committed>> {
        // On the lanes when the copy may use them (`lanes.rs`), else at once.
        if matches!(self.bulk, BulkCopy::Idle) {
            self.bulk = self.start_bulk(after, kv)?;
        }
        let BulkCopy::Lanes(lanes) = &mut self.bulk else {
            return store::write_bulk_now(self, after, last, invoices, kv);
        };
        let submitted = lanes.submit(after, last, invoices);
        if submitted.is_err() {
            self.end_bulk();
        }
        submitted
    }

    fn finish_bulk(&mut self) -> Result<Vec<Committed>> {
        match std::mem::replace(&mut self.bulk, BulkCopy::Idle) {
            BulkCopy::Lanes(mut lanes) => lanes.finish(),
            BulkCopy::Idle | BulkCopy::Single => Ok(Vec::new()),
        }
    }

    fn remove_copies(&mut self, gone: &[u32]) -> Result<u64> {
        PgTarget::remove_copies(self, gone)
    }

    fn build_indexes(&mut self, cache_kib: i64, kv: &Path) -> Result<IndexBuild> {
        PgTarget::build_indexes(self, cache_kib, kv)
    }

    fn mark_checked(&mut self, after: Option<u32>, last: Option<u32>) -> Result<()> {
        PgTarget::mark_checked(self, after, last)
    }

    fn mark_equal(&mut self, equal: &[&Prepared]) -> Result<()> {
        PgTarget::mark_equal(self, equal)
    }

    fn copy_map(&self, lo: Option<u32>, hi: Option<u32>) -> Result<CopyMap> {
        PgTarget::copy_map(self, lo, hi)
    }

    fn copied_after(&self, after: Option<u32>, limit: usize) -> Result<Vec<u32>> {
        PgTarget::copied_after(self, after, limit)
    }

    fn any_copy_checked(&self) -> Result<bool> {
        PgTarget::any_copy_checked(self)
    }

    fn for_each_copy(&self, f: &mut CopyVisitor<'_>) -> Result<bool> {
        PgTarget::for_each_copy(self, f)
    }

    fn owned_child_rows(&self) -> Result<Vec<(&'static str, u64)>> {
        PgTarget::owned_child_rows(self).map(Vec::from)
    }

    fn count(&self, table: &str) -> Result<u64> {
        PgTarget::count(self, table)
    }

    fn staged_amp_sets(&self) -> Result<u64> {
        PgTarget::staged_amp_sets(self)
    }

    fn highest_settle_index(&self) -> Result<u64> {
        PgTarget::highest_settle_index(self)
    }

    fn highest_add_index(&self) -> Result<u64> {
        PgTarget::highest_add_index(self)
    }

    fn load_invoices(&self, ids: &[i64], staged: bool) -> Result<BTreeMap<i64, NativeInvoice>> {
        PgTarget::load_invoices(self, ids, staged)
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    fn prefetch(&self, ids: &[i64]) -> Result<()> {
        PgTarget::prefetch(self, ids)
    }

    fn contract(&self, stage: Stage, settle_index: u64) -> Result<Vec<String>> {
        let expected = self.expected()?;
        schema::contract(&mut *self.conn.borrow_mut(), expected, stage, settle_index)
    }

    fn indexes_built(&self) -> Result<bool> {
        PgTarget::indexes_built(self)
    }

    fn in_snapshot(&self, read: &mut dyn FnMut(&dyn NativeStore) -> Result<()>) -> Result<()> {
        PgTarget::in_snapshot(self, read)
    }
}

/// The state row and the journal row of a transition, and its commit
/// between the failpoints.
fn finish_transition(
    mut tx: postgres::Transaction<'_>,
    from: State,
    to: State,
    event: Event,
    details: &serde_json::Value,
    failpoint: &str,
) -> Result<()> {
    let now = now_text();
    // Durable when it returns, whatever the server's default says.
    tx.batch_execute("SET LOCAL synchronous_commit TO on")
        .pg(Role::Native, "asking for a durable commit")?;
    tx.execute(
        "UPDATE oneway_state SET state = $1, updated_at = $2 WHERE singleton = 1",
        &[&to.name(), &now],
    )
    .pg(Role::Native, "updating the state row")?;
    tx.execute(
        "INSERT INTO oneway_journal (at, kind, from_state, to_state, event, details)
         VALUES ($1, 'transition', $2, $3, $4, $5)",
        &[
            &now,
            &from.name(),
            &to.name(),
            &event.name(),
            &details.to_string(),
        ],
    )
    .pg(Role::Native, "appending to the journal")?;
    crate::failpoint::hit(&format!("{failpoint}.before_commit"));
    tx.commit().pg(Role::Native, "committing the transition")?;
    crate::failpoint::hit(&format!("{failpoint}.after_commit"));
    Ok(())
}
