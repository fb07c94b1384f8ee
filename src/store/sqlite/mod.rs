//! The SQLite native store ([`Target`]): lnd's tables and oneway's
//! bookkeeping in one file (`lnd.sqlite`), one transaction per write.
//!
//! The native SQLite file holds lnd's tables (their rows:
//! `crate::workload::invoices::sqlite`) and four of oneway's:
//! - `oneway_state`: one row (`singleton = 1`) with the machine's state, the
//!   source identity, the copy cursor, and the verification record;
//! - `oneway_journal`: append-only (triggers refuse UPDATE and DELETE), one
//!   row per transition and per security event;
//! - `oneway_invoice_map`: KV invoice number → native id and a digest of the
//!   source bytes it was copied from, which makes a copy idempotent and lets a
//!   re-sync copy only what changed; the number of child rows of each lnd
//!   table the invoice owns; and `checked`, set once its rows were read back
//!   and found equal to the source with that digest. Two invariants, which
//!   the catch-up verification rests on (`spec/state-machine.md` §7.1):
//!   every write of an invoice's rows replaces its map row (with
//!   `checked = 0`) in the same transaction, and `checked = 1` is written
//!   only after a comparison found the rows equal;
//! - `oneway_amp_staging`: AMP sub-invoice rows written by copy batches,
//!   moved into `amp_sub_invoices` in set-id order by the index build
//!   (`workload::invoices::sqlite::AMP_STAGING` says why).
//!
//! Durability: the connection runs in WAL mode. Transitions run with
//! `synchronous=FULL`, so a transition is on disk when [`Target::transition`]
//! returns. Batches run with `synchronous=NORMAL`: in WAL mode a process
//! crash never loses a committed batch, and a power cut can lose only the
//! last batches, together with the cursor that points past them (they are
//! one transaction), so a rerun copies them again. See `spec/state-machine.md`.

mod batch;
mod copy_map;
mod effect;
mod reads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::error::{Context, Error, Result, Role};
use crate::fsm::{self, Event, State};
use crate::lnd_schema::{self, Existing, Stage};
use crate::reader::Prepared;
use crate::store::{
    now_text, Batch, BatchOutcome, CopyMap, CopyVisitor, Effect, IndexBuild, JournalEntry,
    NativeStore, Persisted, SourceIdentity, FORMAT_VERSION,
};
use crate::workload::invoices::NativeInvoice;

/// Page size of a native store oneway creates, in bytes.
pub const NATIVE_PAGE_SIZE: i64 = 16384;

/// The native connection's page cache, in KiB: large enough for the hot
/// index pages of a big store, small enough for the memory bound
/// (BENCHMARKS.md).
pub const NATIVE_CACHE_KIB: i64 = 16384;

/// oneway's own tables (see the module documentation).
pub const ONEWAY_SCHEMA: &str = "
CREATE TABLE oneway_state (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    state TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    source_identity TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    cursor INTEGER,
    copied INTEGER NOT NULL DEFAULT 0,
    pass INTEGER NOT NULL DEFAULT 1,
    verified_count INTEGER,
    source_digest TEXT,
    target_digest TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE oneway_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    event TEXT,
    details TEXT NOT NULL
);
CREATE TRIGGER oneway_journal_no_update BEFORE UPDATE ON oneway_journal
BEGIN SELECT RAISE(ABORT, 'oneway_journal is append-only'); END;
CREATE TRIGGER oneway_journal_no_delete BEFORE DELETE ON oneway_journal
BEGIN SELECT RAISE(ABORT, 'oneway_journal is append-only'); END;
CREATE TABLE oneway_invoice_map (
    kv_num INTEGER PRIMARY KEY,
    invoice_id INTEGER NOT NULL,
    digest BLOB NOT NULL,
    checked INTEGER NOT NULL DEFAULT 0,
    features INTEGER NOT NULL DEFAULT 0,
    htlcs INTEGER NOT NULL DEFAULT 0,
    custom_records INTEGER NOT NULL DEFAULT 0,
    amp_sets INTEGER NOT NULL DEFAULT 0,
    amp_htlcs INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE oneway_amp_staging (
    set_id BLOB NOT NULL,
    state SMALLINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    settled_at TIMESTAMP,
    settle_index BIGINT,
    invoice_id BIGINT NOT NULL
);
CREATE INDEX oneway_amp_staging_invoice ON oneway_amp_staging(invoice_id);
";

/// A zero-byte file with no (or an empty) `-wal` file next to it.
fn is_empty_file(path: &Path) -> bool {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.is_file().then_some(m.len()));
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    matches!(len(path), Ok(Some(0))) && !matches!(len(Path::new(&wal)), Ok(Some(n)) if n > 0)
}

/// The native store, opened for oneway's work.
pub struct Target {
    conn: Connection,
    path: PathBuf,
}

impl Target {
    /// Opens the native store at `path`. Returns `Ok(None)` when it does not
    /// exist and `create` is false. An existing file must be SQLite; an empty
    /// file is treated as a new store, and as a missing one (left untouched)
    /// when `create` is false.
    pub fn open(path: &Path, create: bool) -> Result<Option<Target>> {
        let exists = path.exists();
        if !exists && !create {
            return Ok(None);
        }
        if exists && !create && is_empty_file(path) {
            // Opening it would write a SQLite header (the switch to WAL):
            // a command that only reads or refuses must not.
            return Ok(None);
        }
        if exists
            && std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        {
            crate::kv::check_sqlite_file(Role::Native, path)?;
        }
        if !exists {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                if !parent.is_dir() {
                    return Err(Error::Missing {
                        role: Role::Native,
                        path: parent.to_path_buf(),
                    });
                }
            }
        }
        let flags = if create {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).ctx(Role::Native, path, "opening")?;
        let t = Target {
            conn,
            path: path.to_path_buf(),
        };
        t.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .ctx(Role::Native, &t.path, "setting the busy timeout")?;
        // Refuse a store oneway did not create before changing anything in
        // it (switching to WAL is a persistent change to the file).
        t.refuse_foreign()?;
        t.configure()?;
        Ok(Some(t))
    }

    /// The connection's settings for oneway's work (see each).
    fn configure(&self) -> Result<()> {
        let t = self;
        // 16 KiB pages for a new store (a no-op for an existing one: the
        // page size is fixed by the first write). Fewer, fuller b-tree pages
        // make the bulk copy, the index build and the read-back measurably
        // faster and the page cache smaller in RSS than 4 KiB pages; 64 KiB
        // pages cost far more memory (BENCHMARKS.md).
        t.conn
            .pragma_update(None, "page_size", NATIVE_PAGE_SIZE)
            .ctx(Role::Native, &t.path, "setting the page size")?;
        // No `auto_vacuum`: lnd asks for `incremental`, but only after
        // `journal_mode=WAL`, which has already written the header of a new
        // file, so SQLite keeps lnd's own databases at `none` (the
        // emulation in `tests/common/lnd.rs` checks it). This file matches.
        t.conn.pragma_update(None, "journal_mode", "WAL").ctx(
            Role::Native,
            &t.path,
            "switching to WAL",
        )?;
        t.conn
            .pragma_update(None, "cache_size", -NATIVE_CACHE_KIB)
            .ctx(Role::Native, &t.path, "setting the cache size")?;
        // Foreign keys are declared (as in lnd's schema) but not enforced row
        // by row while copying: every child row is written in the same
        // transaction as its parent, deletes remove children explicitly, and
        // the verification pass proves, before `Verified`, that no row refers
        // to a missing parent (by row counts: `native::ChildRows`) once
        // instead of with a parent lookup per inserted row.
        t.conn.pragma_update(None, "foreign_keys", "OFF").ctx(
            Role::Native,
            &t.path,
            "configuring foreign keys",
        )?;
        t.conn.set_prepared_statement_cache_capacity(64);
        #[cfg(feature = "failpoints")]
        if let Ok(pages) = std::env::var("ONEWAY_MAX_PAGE_COUNT") {
            // A size limit for fault-injection tests: SQLite fails writes
            // beyond it with SQLITE_FULL, exactly as on a full disk.
            t.conn.pragma_update(None, "max_page_count", pages).ctx(
                Role::Native,
                &t.path,
                "setting max_page_count",
            )?;
        }
        Ok(())
    }

    /// Creates the native store at `path` (which must not hold a store).
    pub fn create(path: &Path) -> Result<Target> {
        Target::open(path, true)?.ok_or_else(|| Error::Missing {
            role: Role::Native,
            path: path.to_path_buf(),
        })
    }

    /// The underlying connection (for the store's own modules).
    fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Wraps a SQLite error with this store's path and `action`.
    fn err(&self, action: &str, e: rusqlite::Error) -> Error {
        Error::sqlite(Role::Native, &self.path, action, e)
    }

    fn has_state_table(&self) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'oneway_state'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .ctx(Role::Native, &self.path, "reading the schema")
    }

    /// Refuses a store that has tables but no oneway state, unless it is an
    /// lnd native database whose invoice migration never completed
    /// ([`lnd_schema::classify`]): oneway continues into that one, and
    /// merges into nothing else.
    fn refuse_foreign(&self) -> Result<()> {
        if self.has_state_table()? {
            return Ok(());
        }
        let existing =
            lnd_schema::classify(&self.conn).ctx(Role::Native, &self.path, "reading the schema")?;
        match existing {
            Existing::Empty | Existing::LndBeforeInvoices => Ok(()),
            Existing::LndMigrated { version } => Err(Error::LndMigrated {
                path: self.path.clone(),
                version,
            }),
            Existing::Foreign(why) => Err(Error::NotOnewayStore {
                path: self.path.clone(),
                why: format!(
                    "{why}: refusing to migrate into a store oneway did not create (give a new path)"
                ),
            }),
        }
    }

    fn set_sync(&self, full: bool) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })
            .ctx(Role::Native, &self.path, "setting synchronous")
    }

    /// Every journal row, oldest first.
    pub fn journal(&self) -> Result<Vec<JournalEntry>> {
        if !self.has_state_table()? {
            return Ok(Vec::new());
        }
        let mut st = self
            .conn
            .prepare("SELECT seq, at, kind, from_state, to_state, event, details FROM oneway_journal ORDER BY seq")
            .ctx(Role::Native, &self.path, "reading the journal")?;
        let rows = st
            .query_map([], |r| {
                let details: String = r.get(6)?;
                Ok(JournalEntry {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    from_state: r.get(3)?,
                    to_state: r.get(4)?,
                    event: r.get(5)?,
                    details: serde_json::from_str(&details)
                        .unwrap_or(serde_json::Value::String(details)),
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .ctx(Role::Native, &self.path, "reading the journal")?;
        Ok(rows)
    }
}

impl NativeStore for Target {
    /// The native store's path.
    fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state row; `None` means `Fresh` (no oneway tables yet).
    ///
    /// A store that has tables but no oneway state is refused unless it is
    /// an lnd database oneway may continue into (see `refuse_foreign`).
    fn load(&self) -> Result<Option<Persisted>> {
        if !self.has_state_table()? {
            self.refuse_foreign()?;
            return Ok(None);
        }
        let row = self
            .conn
            .query_row(
                "SELECT state, format_version, source_identity, batch_size, cursor, copied, pass,
                        verified_count, source_digest, target_digest, updated_at
                 FROM oneway_state WHERE singleton = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<i64>>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, Option<String>>(9)?,
                        r.get::<_, String>(10)?,
                    ))
                },
            )
            .optional()
            .ctx(Role::Native, &self.path, "reading the state row")?;
        let Some(r) = row else {
            return Err(Error::NotOnewayStore {
                path: self.path.clone(),
                why: "has oneway's tables but no state row: it was tampered with; restore it from backup".into(),
            });
        };
        let state = State::from_name(&r.0).ok_or_else(|| Error::NotOnewayStore {
            path: self.path.clone(),
            why: format!("records an unknown state {:?}", r.0),
        })?;
        if r.1 != FORMAT_VERSION {
            return Err(Error::NotOnewayStore {
                path: self.path.clone(),
                why: format!(
                    "uses oneway format version {}, this oneway knows {FORMAT_VERSION}",
                    r.1
                ),
            });
        }
        let identity: SourceIdentity =
            serde_json::from_str(&r.2).map_err(|e| Error::NotOnewayStore {
                path: self.path.clone(),
                why: format!("has an unreadable source identity: {e}"),
            })?;
        Ok(Some(Persisted {
            state,
            identity,
            batch_size: r.3 as u64,
            cursor: r.4.map(|c| c as u32),
            copied: r.5 as u64,
            generation: r.6 as u64,
            verified_count: r.7.map(|c| c as u64),
            source_digest: r.8,
            target_digest: r.9,
            updated_at: r.10,
        }))
    }

    /// Performs one transition as one SQLite transaction: asks the pure
    /// machine for the next state, checks the persisted state is still
    /// `from`, runs `effect` (everything else belonging to the step),
    /// updates the state row and appends the journal row, and commits with
    /// `synchronous=FULL`.
    ///
    /// `Begin` is special: its effect creates the schema and inserts the
    /// state row. The failpoints `<failpoint>.before_commit` and
    /// `<failpoint>.after_commit` bracket the commit.
    fn transition(
        &mut self,
        from: State,
        event: Event,
        details: serde_json::Value,
        failpoint: &str,
        effect: Effect<'_>,
    ) -> Result<State> {
        let to = fsm::transition(from, event).map_err(|refusal| Error::IllegalTransition {
            state: from,
            event,
            refusal,
        })?;
        self.set_sync(true)?;
        let path = self.path.clone();
        let path = &path;
        let e = |action: &'static str| move |err| Error::sqlite(Role::Native, path, action, err);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e("starting a transition"))?;
        if from != State::Fresh {
            let current: String = tx
                .query_row(
                    "SELECT state FROM oneway_state WHERE singleton = 1",
                    [],
                    |r| r.get(0),
                )
                .map_err(e("reading the state row"))?;
            if current != from.name() {
                return Err(Error::NotOnewayStore {
                    path: self.path.clone(),
                    why: format!("changed state under us: expected {from}, found {current}"),
                });
            }
        }
        effect::apply(&effect, &tx, path)?;
        let now = now_text();
        tx.execute(
            "UPDATE oneway_state SET state = ?1, updated_at = ?2 WHERE singleton = 1",
            params![to.name(), now],
        )
        .map_err(e("updating the state row"))?;
        tx.execute(
            "INSERT INTO oneway_journal (at, kind, from_state, to_state, event, details)
             VALUES (?1, 'transition', ?2, ?3, ?4, ?5)",
            params![
                now,
                from.name(),
                to.name(),
                event.name(),
                details.to_string()
            ],
        )
        .map_err(e("appending to the journal"))?;
        crate::failpoint::hit(&format!("{failpoint}.before_commit"));
        tx.commit().map_err(e("committing the transition"))?;
        crate::failpoint::hit(&format!("{failpoint}.after_commit"));
        tracing::info!(from = %from, to = %to, event = %event, "state transition");
        Ok(to)
    }

    /// Appends a security event to the journal (its own small transaction).
    fn security_event(
        &self,
        state: Option<State>,
        name: &str,
        details: serde_json::Value,
    ) -> Result<()> {
        if !self.has_state_table()? {
            return Ok(());
        }
        self.set_sync(true)?;
        self.conn
            .execute(
                "INSERT INTO oneway_journal (at, kind, from_state, to_state, event, details)
                 VALUES (?1, 'security', ?2, ?2, ?3, ?4)",
                params![
                    now_text(),
                    state.map(State::name),
                    name,
                    details.to_string()
                ],
            )
            .ctx(
                Role::Native,
                &self.path,
                "appending a security event to the journal",
            )?;
        Ok(())
    }

    /// Counts rows of a native table (for status and tests).
    fn count(&self, table: &str) -> Result<u64> {
        self.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .ctx(Role::Native, &self.path, "counting rows")
    }

    fn write_batch(&mut self, batch: &Batch<'_>, kv: &Path) -> Result<BatchOutcome> {
        Target::write_batch(self, batch, kv)
    }

    fn remove_copies(&mut self, gone: &[u32]) -> Result<u64> {
        Target::remove_copies(self, gone)
    }

    fn build_indexes(&mut self, cache_kib: i64, kv: &Path) -> Result<IndexBuild> {
        Target::build_indexes(self, cache_kib, kv)
    }

    fn mark_checked(&mut self, after: Option<u32>, last: Option<u32>) -> Result<()> {
        Target::mark_checked(self, after, last)
    }

    fn mark_equal(&mut self, equal: &[&Prepared]) -> Result<()> {
        Target::mark_equal(self, equal)
    }

    fn copy_map(&self, lo: Option<u32>, hi: Option<u32>) -> Result<CopyMap> {
        Target::copy_map(self, lo, hi)
    }

    fn copied_after(&self, after: Option<u32>, limit: usize) -> Result<Vec<u32>> {
        Target::copied_after(self, after, limit)
    }

    fn any_copy_checked(&self) -> Result<bool> {
        Target::any_copy_checked(self)
    }

    fn for_each_copy(&self, f: &mut CopyVisitor<'_>) -> Result<bool> {
        Target::for_each_copy(self, f)
    }

    fn owned_child_rows(&self) -> Result<Vec<(&'static str, u64)>> {
        Target::owned_child_rows(self).map(Vec::from)
    }

    fn staged_amp_sets(&self) -> Result<u64> {
        Target::staged_amp_sets(self)
    }

    fn highest_settle_index(&self) -> Result<u64> {
        Target::highest_settle_index(self)
    }

    fn highest_add_index(&self) -> Result<u64> {
        Target::highest_add_index(self)
    }

    fn load_invoices(&self, ids: &[i64], staged: bool) -> Result<BTreeMap<i64, NativeInvoice>> {
        Target::load_invoices(self, ids, staged)
    }

    fn contract(&self, stage: Stage, settle_index: u64) -> Result<Vec<String>> {
        Target::contract(self, stage, settle_index)
    }

    fn indexes_built(&self) -> Result<bool> {
        Target::indexes_built(self)
    }

    fn in_snapshot(&self, read: &mut dyn FnMut(&dyn NativeStore) -> Result<()>) -> Result<()> {
        Target::in_snapshot(self, |t| read(t))
    }
}
