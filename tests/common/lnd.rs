//! A test-only emulation of what lnd does to a native SQLite database
//! (`lnd.sqlite`) when it starts with `db.use-native-sql=true`, written from
//! lnd's source and independent of oneway's own schema code.
//!
//! Transcribed from lnd commit [`LND_COMMIT`] (`sqldb/migrations.go`,
//! `sqldb/sqlite.go`, `sqldb/sqlc/migrations/*.sql`,
//! `sqldb/sqlc/queries/{invoices,amp_invoices,invoice_events,migration}.sql`)
//! and golang-migrate v4.17 (`migrate.go`, `database/sqlite/sqlite.go`), the
//! versions lnd's `go.mod` names.
//!
//! What is emulated:
//! * opening: the pragmas lnd puts in its DSN, in its order, then
//!   `CREATE TABLE IF NOT EXISTS migration_tracker`;
//! * the base version: the largest `migration_tracker.version`, or, with an
//!   empty tracker, golang-migrate's schema version (`-1` when it has none);
//!   lnd's v0.19.0-rc1 repair (tracker at 2, schema 3 dirty -> schema 4 clean);
//! * for each entry of lnd's list above the base: golang-migrate's
//!   `Migrate(schema_version)` (dirty check, version existence check, up or
//!   down one file at a time, `schema_migrations` set dirty, file run in a
//!   transaction, set clean), then, in one transaction, the entry's code
//!   migration (a hook the caller supplies) and the tracker row.
//!
//! Schema files 000001-000007 and 000012 are re-expressed here in SQLite
//! form; the files that touch no invoice object (000008-000011, 000013-000015:
//! graph, payments, chain parameters; checked with grep at [`LND_COMMIT`]) are
//! replaced by stand-ins that create or drop one table
//! `lnd_schema_<N>_stand_in`. The same steps run on a fresh database and on a
//! migrated one, so comparisons are unaffected.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// The lnd commit (HEAD of the mirror) this emulation was written against.
pub const LND_COMMIT: &str = "90ea05d5a7f9239ede8eb4e2f36d9a66c39e67d5";

/// The tracker version of lnd's in-code KV invoice migration.
pub const KV_INVOICE_MIGRATION: u32 = 7;

/// The failure a test reports when lnd would reach its own invoice migration.
pub const OWN_MIGRATION_FAILURE: &str =
    "lnd would run its own KV invoice migration over this store";

// ---------------------------------------------------------------------------
// lnd's schema files
// ---------------------------------------------------------------------------

/// One golang-migrate file pair `0000NN_name.{up,down}.sql`.
#[derive(Debug, Clone, Copy)]
pub struct SchemaFile {
    /// The file number, golang-migrate's schema version.
    pub number: u32,
    /// The name after the number.
    pub name: &'static str,
    /// The up file (SQLite form).
    pub up: &'static str,
    /// The down file (SQLite form).
    pub down: &'static str,
    /// True for a stand-in of a file that touches no invoice object.
    pub stand_in: bool,
}

const UP_1: &str = "
CREATE TABLE IF NOT EXISTS invoice_sequences (
  name TEXT PRIMARY KEY,
  current_value BIGINT NOT NULL
);
INSERT INTO invoice_sequences (name, current_value) VALUES ('settle_index', 0)
  ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS invoices (
  id INTEGER PRIMARY KEY,
  hash BLOB NOT NULL UNIQUE,
  preimage BLOB,
  settle_index BIGINT,
  settled_at TIMESTAMP,
  memo TEXT,
  amount_msat BIGINT NOT NULL,
  cltv_delta INTEGER,
  expiry INTEGER NOT NULL,
  payment_addr BLOB UNIQUE,
  payment_request TEXT,
  payment_request_hash BLOB UNIQUE,
  state SMALLINT NOT NULL,
  amount_paid_msat BIGINT NOT NULL,
  is_amp BOOLEAN NOT NULL,
  is_hodl BOOLEAN NOT NULL,
  is_keysend BOOLEAN NOT NULL,
  created_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_hash_idx ON invoices (hash);
CREATE INDEX IF NOT EXISTS invoices_preimage_idx ON invoices (preimage);
CREATE INDEX IF NOT EXISTS invoices_payment_addr_idx ON invoices (payment_addr);
CREATE INDEX IF NOT EXISTS invoices_state_idx ON invoices (state);
CREATE INDEX IF NOT EXISTS invoices_created_at_idx ON invoices (created_at);
CREATE INDEX IF NOT EXISTS invoices_settled_at_idx ON invoices (settled_at);
CREATE TABLE IF NOT EXISTS invoice_features (
  feature INTEGER NOT NULL,
  invoice_id BIGINT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
  UNIQUE (feature, invoice_id)
);
CREATE INDEX IF NOT EXISTS invoice_feature_invoice_id_idx ON invoice_features (invoice_id);
CREATE TABLE IF NOT EXISTS invoice_htlcs (
  id INTEGER PRIMARY KEY,
  chan_id TEXT NOT NULL,
  htlc_id BIGINT NOT NULL,
  amount_msat BIGINT NOT NULL,
  total_mpp_msat BIGINT,
  accept_height INTEGER NOT NULL,
  accept_time TIMESTAMP NOT NULL,
  expiry_height INTEGER NOT NULL,
  state SMALLINT NOT NULL,
  resolve_time TIMESTAMP,
  invoice_id BIGINT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
  UNIQUE (chan_id, htlc_id)
);
CREATE INDEX IF NOT EXISTS invoice_htlc_invoice_id_idx ON invoice_htlcs (invoice_id);
CREATE TABLE IF NOT EXISTS invoice_htlc_custom_records (
  key BIGINT NOT NULL,
  value BLOB NOT NULL,
  htlc_id BIGINT NOT NULL REFERENCES invoice_htlcs (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS invoice_htlc_custom_records_htlc_id_idx
  ON invoice_htlc_custom_records (htlc_id);
";

const DOWN_1: &str = "
DROP INDEX IF EXISTS invoice_htlc_custom_records_htlc_id_idx;
DROP TABLE IF EXISTS invoice_htlc_custom_records;
DROP INDEX IF EXISTS invoice_htlc_invoice_id_idx;
DROP TABLE IF EXISTS invoice_htlcs;
DROP INDEX IF EXISTS invoice_feature_invoice_id_idx;
DROP TABLE IF EXISTS invoice_features;
DROP INDEX IF EXISTS invoices_settled_at_idx;
DROP INDEX IF EXISTS invoices_created_at_idx;
DROP INDEX IF EXISTS invoices_state_idx;
DROP INDEX IF EXISTS invoices_payment_addr_idx;
DROP INDEX IF EXISTS invoices_preimage_idx;
DROP INDEX IF EXISTS invoices_hash_idx;
DROP TABLE IF EXISTS invoices;
";

const UP_2: &str = "
CREATE TABLE IF NOT EXISTS amp_sub_invoices (
  set_id BLOB PRIMARY KEY,
  state SMALLINT NOT NULL,
  created_at TIMESTAMP NOT NULL,
  settled_at TIMESTAMP,
  settle_index BIGINT,
  invoice_id BIGINT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
  UNIQUE (set_id, invoice_id)
);
CREATE INDEX IF NOT EXISTS amp_sub_invoices_invoice_id_idx ON amp_sub_invoices (invoice_id);
CREATE TABLE IF NOT EXISTS amp_sub_invoice_htlcs (
  invoice_id BIGINT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
  set_id BLOB NOT NULL REFERENCES amp_sub_invoices (set_id) ON DELETE CASCADE,
  htlc_id BIGINT NOT NULL REFERENCES invoice_htlcs (id) ON DELETE CASCADE,
  root_share BLOB NOT NULL,
  child_index BIGINT NOT NULL,
  hash BLOB NOT NULL,
  preimage BLOB
);
CREATE INDEX IF NOT EXISTS amp_htlcs_invoice_id_idx ON amp_sub_invoice_htlcs (invoice_id);
CREATE INDEX IF NOT EXISTS amp_htlcs_set_id_idx ON amp_sub_invoice_htlcs (set_id);
CREATE INDEX IF NOT EXISTS amp_htlcs_htlc_id_idx ON amp_sub_invoice_htlcs (htlc_id);
";

// lnd's 000002 down file names tables and an index that 000002 never
// creates (amp_invoice_htlcs, amp_invoice_payments and its index): going down
// through it leaves both AMP tables and amp_sub_invoices_invoice_id_idx.
const DOWN_2: &str = "
DROP INDEX IF EXISTS amp_htlcs_htlc_id_idx;
DROP INDEX IF EXISTS amp_htlcs_invoice_id_idx;
DROP INDEX IF EXISTS amp_htlcs_set_id_idx;
DROP TABLE IF EXISTS amp_invoice_htlcs;
DROP INDEX IF EXISTS amp_invoice_payments_invoice_id_idx;
DROP TABLE IF EXISTS amp_invoice_payments;
";

const UP_3: &str = "
CREATE TABLE IF NOT EXISTS invoice_event_types (
  id INTEGER PRIMARY KEY,
  description TEXT NOT NULL
);
INSERT INTO invoice_event_types (id, description)
  SELECT id, description FROM (
    SELECT 0 AS id, 'invoice_created' AS description
    UNION ALL SELECT 1, 'invoice_canceled'
    UNION ALL SELECT 2, 'invoice_settled'
    UNION ALL SELECT 3, 'setid_created'
    UNION ALL SELECT 4, 'setid_canceled'
    UNION ALL SELECT 5, 'setid_settled'
  ) AS wanted
  WHERE NOT EXISTS (SELECT 1 FROM invoice_event_types t WHERE t.id = wanted.id);
CREATE TABLE IF NOT EXISTS invoice_events (
  id INTEGER PRIMARY KEY,
  added_at TIMESTAMP NOT NULL,
  event_type INTEGER NOT NULL REFERENCES invoice_event_types (id) ON DELETE CASCADE,
  invoice_id BIGINT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
  set_id BLOB REFERENCES amp_sub_invoices (set_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS invoice_events_added_at_idx ON invoice_events (added_at);
CREATE INDEX IF NOT EXISTS invoice_events_event_type_idx ON invoice_events (event_type);
CREATE INDEX IF NOT EXISTS invoice_events_invoice_id_idx ON invoice_events (invoice_id);
CREATE INDEX IF NOT EXISTS invoice_events_set_id_idx ON invoice_events (set_id);
";

const DOWN_3: &str = "
DROP TABLE IF EXISTS invoice_events;
DROP INDEX IF EXISTS invoice_events_added_at_idx;
DROP INDEX IF EXISTS invoice_events_event_type_idx;
DROP INDEX IF EXISTS invoice_events_invoice_id_idx;
DROP INDEX IF EXISTS invoice_events_set_id_idx;
DROP TABLE IF EXISTS invoice_event_types;
";

// Not DDL: every stored expiry is overwritten (24 h, or 30 days for AMP).
const UP_4: &str = "
UPDATE invoices SET expiry = 86400 WHERE is_amp = FALSE;
UPDATE invoices SET expiry = 2592000 WHERE is_amp = TRUE;
";

// lnd's down file holds only a comment: the old expiries are gone.
const DOWN_4: &str = "-- nothing to undo\n";

const UP_5: &str = "
CREATE TABLE IF NOT EXISTS migration_tracker (
  version INTEGER UNIQUE NOT NULL,
  migration_time TIMESTAMP NOT NULL
);
";

const DOWN_5: &str = "DROP TABLE IF EXISTS migration_tracker;\n";

const UP_6: &str = "
CREATE TABLE IF NOT EXISTS invoice_payment_hashes (
  id INTEGER PRIMARY KEY,
  add_index BIGINT NOT NULL,
  hash BLOB
);
CREATE INDEX IF NOT EXISTS invoice_payment_hashes_add_index_idx
  ON invoice_payment_hashes (add_index);
CREATE INDEX IF NOT EXISTS invoice_payment_hashes_hash_idx ON invoice_payment_hashes (hash);
";

const DOWN_6: &str = "DROP TABLE IF EXISTS invoice_payment_hashes;\n";

const UP_7: &str =
    "CREATE INDEX IF NOT EXISTS invoices_settle_index_idx ON invoices (settle_index);\n";

const DOWN_7: &str = "DROP INDEX IF EXISTS invoices_settle_index_idx;\n";

const UP_12: &str = "
DROP INDEX IF EXISTS invoices_hash_idx;
DROP INDEX IF EXISTS invoices_payment_addr_idx;
DROP INDEX IF EXISTS invoices_preimage_idx;
DROP INDEX IF EXISTS invoices_settled_at_idx;
";

const DOWN_12: &str = "
CREATE INDEX IF NOT EXISTS invoices_hash_idx ON invoices (hash);
CREATE INDEX IF NOT EXISTS invoices_payment_addr_idx ON invoices (payment_addr);
CREATE INDEX IF NOT EXISTS invoices_preimage_idx ON invoices (preimage);
CREATE INDEX IF NOT EXISTS invoices_settled_at_idx ON invoices (settled_at);
";

macro_rules! stand_in {
    ($n:literal, $name:literal) => {
        SchemaFile {
            number: $n,
            name: $name,
            up: concat!(
                "CREATE TABLE IF NOT EXISTS lnd_schema_",
                $n,
                "_stand_in (n INTEGER);\n"
            ),
            down: concat!("DROP TABLE IF EXISTS lnd_schema_", $n, "_stand_in;\n"),
            stand_in: true,
        }
    };
}

const fn real(number: u32, name: &'static str, up: &'static str, down: &'static str) -> SchemaFile {
    SchemaFile {
        number,
        name,
        up,
        down,
        stand_in: false,
    }
}

/// lnd's schema files 000001-000015, in order.
pub const SCHEMA_FILES: &[SchemaFile] = &[
    real(1, "invoices", UP_1, DOWN_1),
    real(2, "amp_invoices", UP_2, DOWN_2),
    real(3, "invoice_events", UP_3, DOWN_3),
    real(4, "invoice_expiry_fix", UP_4, DOWN_4),
    real(5, "migration_tracker", UP_5, DOWN_5),
    real(6, "invoice_migration", UP_6, DOWN_6),
    real(7, "invoice_add_settled_index", UP_7, DOWN_7),
    stand_in!(8, "graph"),
    stand_in!(9, "graph_v2"),
    stand_in!(10, "payments"),
    stand_in!(11, "payment_duplicates"),
    real(12, "drop_redundant_invoice_indexes", UP_12, DOWN_12),
    stand_in!(13, "payments_index_improvements"),
    stand_in!(14, "payments_no_fail_reason_index"),
    stand_in!(15, "chain_params"),
];

fn schema_file(number: i64) -> Option<&'static SchemaFile> {
    SCHEMA_FILES.iter().find(|f| i64::from(f.number) == number)
}

// ---------------------------------------------------------------------------
// lnd's migration list
// ---------------------------------------------------------------------------

/// The in-code (KV to SQL) migrations of lnd's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum CodeMigration {
    /// Version 7: KV invoices to SQL.
    Invoices,
    /// Version 10: KV graph to SQL.
    Graph,
    /// Version 14: KV payments to SQL.
    Payments,
}

/// One entry of lnd's migration list.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The tracker version.
    pub version: u32,
    /// lnd's name for the entry.
    pub name: &'static str,
    /// The schema version golang-migrate must reach first.
    pub schema_version: u32,
    /// The code migration run after the schema step, if any.
    pub code: Option<CodeMigration>,
}

const fn entry(version: u32, name: &'static str, schema_version: u32) -> Entry {
    Entry {
        version,
        name,
        schema_version,
        code: None,
    }
}

const fn code(version: u32, name: &'static str, schema_version: u32, c: CodeMigration) -> Entry {
    Entry {
        version,
        name,
        schema_version,
        code: Some(c),
    }
}

/// lnd's migration list, versions 1-18.
pub const MIGRATIONS: &[Entry] = &[
    entry(1, "000001_invoices", 1),
    entry(2, "000002_amp_invoices", 2),
    entry(3, "000003_invoice_events", 3),
    entry(4, "000004_invoice_expiry_fix", 4),
    entry(5, "000005_migration_tracker", 5),
    entry(6, "000006_invoice_migration", 6),
    code(7, "kv_invoice_migration", 6, CodeMigration::Invoices),
    entry(8, "000007_invoice_add_settled_index", 7),
    entry(9, "000008_graph", 8),
    code(10, "kv_graph_migration", 8, CodeMigration::Graph),
    entry(11, "000009_graph_v2", 9),
    entry(12, "000010_payments", 10),
    entry(13, "000011_payment_duplicates", 11),
    code(14, "kv_payments_migration", 11, CodeMigration::Payments),
    entry(15, "000012_drop_redundant_invoice_indexes", 12),
    entry(16, "000013_payments_index_improvements", 13),
    entry(17, "000014_payments_no_fail_reason_index", 14),
    entry(18, "000015_chain_params", 15),
];

/// The latest tracker version of the list.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map(|e| e.version).unwrap_or(0)
}

/// The latest schema version of the list.
pub fn latest_schema_version() -> u32 {
    MIGRATIONS
        .iter()
        .map(|e| e.schema_version)
        .max()
        .unwrap_or(0)
}

/// The list up to and including tracker version `last`.
pub fn migrations_until(last: u32) -> &'static [Entry] {
    let n = MIGRATIONS.iter().take_while(|e| e.version <= last).count();
    &MIGRATIONS[..n]
}

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------

/// What one start-up did, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Step {
    /// golang-migrate ran the up file `file`.
    SchemaUp(u32),
    /// golang-migrate ran the down file `file`.
    SchemaDown(u32),
    /// lnd ran a code migration (the caller's hook).
    Code(u32, CodeMigration),
    /// lnd inserted this version into `migration_tracker`.
    Tracker(u32),
    /// lnd's v0.19.0-rc1 repair forced schema version 4, clean.
    ForcedSchema4,
}

/// The log of one start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartUpLog {
    /// The version lnd started from.
    pub base_version: i64,
    /// Where it came from: `migration_tracker` or `schema_migrations`.
    pub base_source: &'static str,
    /// Everything that ran.
    pub steps: Vec<Step>,
}

impl StartUpLog {
    /// Up files run, in order.
    pub fn schema_up(&self) -> Vec<u32> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::SchemaUp(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Down files run, in order.
    pub fn schema_down(&self) -> Vec<u32> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::SchemaDown(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Code migrations run, in order.
    pub fn code_run(&self) -> Vec<(u32, CodeMigration)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Code(v, c) => Some((*v, *c)),
                _ => None,
            })
            .collect()
    }

    /// Tracker rows inserted, in order.
    pub fn tracker_inserted(&self) -> Vec<u32> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Tracker(v) => Some(*v),
                _ => None,
            })
            .collect()
    }

    /// True when nothing ran.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The caller's code migrations: called inside lnd's transaction, before the
/// tracker row; an error aborts the start-up.
pub type CodeHook<'a> = &'a mut dyn FnMut(CodeMigration, &Connection) -> Result<(), String>;

/// A hook under which every code migration does nothing (lnd with the KV
/// migrations disabled, or on a node without KV data).
pub fn no_op(_: CodeMigration, _: &Connection) -> Result<(), String> {
    Ok(())
}

/// A hook for a store oneway migrated: reaching lnd's own invoice migration
/// is a failure; the graph and payments migrations do nothing.
pub fn refuse_invoice_migration(c: CodeMigration, _: &Connection) -> Result<(), String> {
    match c {
        CodeMigration::Invoices => Err(OWN_MIGRATION_FAILURE.to_string()),
        _ => Ok(()),
    }
}

/// Opens `path` the way lnd's SQLite store does: its DSN pragmas in their
/// order, then `migration_tracker` created when missing.
pub fn open_as_lnd(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    for pragma in [
        "PRAGMA foreign_keys = on",
        "PRAGMA journal_mode = WAL",
        "PRAGMA busy_timeout = 5000",
        "PRAGMA synchronous = full",
        "PRAGMA fullfsync = true",
        "PRAGMA auto_vacuum = incremental",
    ] {
        // journal_mode answers with a row; the others with none.
        let mut st = conn.prepare(pragma).map_err(|e| format!("{pragma}: {e}"))?;
        let mut rows = st.query([]).map_err(|e| format!("{pragma}: {e}"))?;
        while rows.next().map_err(|e| format!("{pragma}: {e}"))?.is_some() {}
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS migration_tracker (
           version INTEGER UNIQUE NOT NULL,
           migration_time TIMESTAMP NOT NULL
         );",
    )
    .map_err(|e| format!("error creating migration tracker: {e}"))?;
    Ok(conn)
}

/// lnd's start-up over the whole list.
pub fn start_up(path: &Path, hook: CodeHook<'_>) -> Result<StartUpLog, String> {
    start_up_with(path, MIGRATIONS, hook)
}

/// lnd's start-up over `list` (a prefix of [`MIGRATIONS`], e.g.
/// [`migrations_until`]`(7)` for a node that stopped after version 7).
pub fn start_up_with(
    path: &Path,
    list: &[Entry],
    hook: CodeHook<'_>,
) -> Result<StartUpLog, String> {
    for (i, e) in list.iter().enumerate() {
        if e.version as usize != i + 1 {
            return Err(format!(
                "migration version {} is out of order. Expected {}",
                e.version,
                i + 1
            ));
        }
    }
    let conn = open_as_lnd(path)?;
    let clock = Instant::now();
    let tracked: Option<i64> = conn
        .query_row(
            "SELECT version FROM migration_tracker ORDER BY version DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| format!("error getting current database version: {e}"))?;
    let mut log = StartUpLog {
        base_version: 0,
        base_source: "migration_tracker",
        steps: Vec::new(),
    };
    let current = match tracked {
        Some(v) => v,
        None => {
            ensure_version_table(&conn)?;
            log.base_source = "schema_migrations";
            gm_version(&conn)?.0
        }
    };
    log.base_version = current;
    if tracked == Some(2) {
        ensure_version_table(&conn)?;
        if gm_version(&conn)? == (3, true) {
            gm_set_version(&conn, 4, false)?;
            log.steps.push(Step::ForcedSchema4);
        }
    }
    for e in list {
        if i64::from(e.version) <= current {
            continue;
        }
        ensure_version_table(&conn)?;
        gm_migrate(&conn, e.schema_version, &mut log.steps).map_err(|err| {
            format!(
                "error executing schema migrations to target version {}: {err} (log: {:?})",
                e.schema_version, log.steps
            )
        })?;
        let tx = conn
            .unchecked_transaction()
            .map_err(|err| format!("begin: {err}"))?;
        if let Some(c) = e.code {
            hook(c, &tx).map_err(|err| {
                format!(
                    "error applying migration '{}' (version {}) to schema version {}: {err} (log: {:?})",
                    e.name, e.version, e.schema_version, log.steps
                )
            })?;
        }
        tx.execute(
            "INSERT INTO migration_tracker (version, migration_time) VALUES (?1, ?2)",
            params![e.version, lnd_now(clock)],
        )
        .map_err(|err| format!("error setting migration version {}: {err}", e.version))?;
        tx.commit().map_err(|err| format!("commit: {err}"))?;
        if let Some(c) = e.code {
            log.steps.push(Step::Code(e.version, c));
        }
        log.steps.push(Step::Tracker(e.version));
    }
    Ok(log)
}

/// golang-migrate's SQLite driver, on creation.
fn ensure_version_table(conn: &Connection) -> Result<(), String> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version uint64, dirty bool);
         CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version);",
    )
    .map_err(|e| format!("schema_migrations: {e}"))
}

/// golang-migrate's `Version()`: the first row, or (-1, false) when there is
/// none or it cannot be read as (int, bool).
pub fn gm_version(conn: &Connection) -> Result<(i64, bool), String> {
    let row = conn
        .query_row(
            "SELECT version, dirty FROM schema_migrations LIMIT 1",
            [],
            |r| Ok((as_int(r.get_ref(0)?), as_bool(r.get_ref(1)?))),
        )
        .optional()
        .map_err(|e| format!("schema_migrations: {e}"))?;
    Ok(match row {
        Some((Some(v), Some(d))) => (v, d),
        _ => (-1, false),
    })
}

fn as_int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(v: ValueRef<'_>) -> Option<bool> {
    match v {
        ValueRef::Integer(i) => Some(i != 0),
        ValueRef::Text(t) => match std::str::from_utf8(t).ok()? {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// golang-migrate's `SetVersion`: all rows replaced, in a transaction.
fn gm_set_version(conn: &Connection, version: i64, dirty: bool) -> Result<(), String> {
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| format!("begin: {e}"))?;
    tx.execute("DELETE FROM schema_migrations", [])
        .map_err(|e| format!("schema_migrations: {e}"))?;
    if version >= 0 || (version == -1 && dirty) {
        tx.execute(
            "INSERT INTO schema_migrations (version, dirty) VALUES (?1, ?2)",
            params![version, dirty],
        )
        .map_err(|e| format!("schema_migrations: {e}"))?;
    }
    tx.commit().map_err(|e| format!("commit: {e}"))
}

/// golang-migrate's `Migrate(target)`.
fn gm_migrate(conn: &Connection, target: u32, steps: &mut Vec<Step>) -> Result<(), String> {
    let (current, dirty) = gm_version(conn)?;
    if dirty {
        return Err(format!(
            "Dirty database version {current}. Fix and force version."
        ));
    }
    let target = i64::from(target);
    for v in [current, target] {
        if v >= 0 && schema_file(v).is_none() {
            return Err(format!(
                "no migration found for version {v}: file does not exist"
            ));
        }
    }
    let mut from = current;
    if from < target {
        while from < target {
            let next = SCHEMA_FILES
                .iter()
                .find(|f| i64::from(f.number) > from)
                .expect("target exists");
            gm_step(conn, next.up, i64::from(next.number))?;
            steps.push(Step::SchemaUp(next.number));
            from = i64::from(next.number);
        }
    } else {
        while from > target && from >= 0 {
            let file = schema_file(from).expect("checked");
            let prev = SCHEMA_FILES
                .iter()
                .rev()
                .find(|f| i64::from(f.number) < from)
                .map(|f| i64::from(f.number));
            // Without a previous file golang-migrate only goes on to "no
            // version" when that is the target, never for a real target.
            let to = match prev {
                Some(p) => p,
                None if target == -1 => -1,
                None => return Err(format!("no migration before version {from}")),
            };
            gm_step(conn, file.down, to)?;
            steps.push(Step::SchemaDown(file.number));
            from = to;
        }
    }
    Ok(())
}

/// One golang-migrate step: dirty at `to`, the file in a transaction, clean.
fn gm_step(conn: &Connection, body: &str, to: i64) -> Result<(), String> {
    gm_set_version(conn, to, true)?;
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| format!("transaction start failed: {e}"))?;
    tx.execute_batch(body)
        .map_err(|e| format!("migration to {to} failed: {e}"))?;
    tx.commit()
        .map_err(|e| format!("transaction commit failed: {e}"))?;
    gm_set_version(conn, to, false)
}

/// `migration_time` as lnd stores it: modernc's SQLite driver binds a Go
/// `time.Time` as `Time.String()` (its default write format), and lnd passes
/// `time.Now()`, which carries a monotonic reading. Emulated in UTC with the
/// start-up's elapsed time as the monotonic part, e.g.
/// `2026-08-20 19:07:30.123456789 +0000 UTC m=+0.004512345`.
pub fn lnd_now(clock: Instant) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let mono = clock.elapsed();
    format!(
        "{} +0000 UTC m=+{}.{:09}",
        go_utc(now.as_secs() as i64, now.subsec_nanos()),
        mono.as_secs(),
        mono.subsec_nanos()
    )
}

/// `2006-01-02 15:04:05.999999999` (trailing fraction zeros trimmed, as Go
/// does) for Unix seconds and nanoseconds.
fn go_utc(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s
}

// ---------------------------------------------------------------------------
// Structural description
// ---------------------------------------------------------------------------

/// A comparable picture of a SQLite database's structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schema {
    /// The database pragmas that matter to lnd.
    pub pragmas: Pragmas,
    /// Every table except SQLite's own and oneway's bookkeeping.
    pub tables: BTreeMap<String, Table>,
    /// Views and triggers (`view name` / `trigger name on table`).
    pub other_objects: Vec<String>,
    /// oneway's bookkeeping: tables named `oneway_*` and the views and
    /// triggers on them (`table name`, `trigger name`), excluded from the
    /// comparison and from the snapshot.
    #[serde(skip)]
    pub oneway_objects: Vec<String>,
}

/// Database-level settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pragmas {
    /// `wal`, `delete`, ...
    pub journal_mode: String,
    /// 0 none, 1 full, 2 incremental.
    pub auto_vacuum: i64,
    /// Bytes.
    pub page_size: i64,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Columns in declaration order (lnd's `SELECT *` scans rely on it).
    pub columns: Vec<Column>,
    /// Foreign keys, sorted.
    pub foreign_keys: Vec<ForeignKey>,
    /// UNIQUE constraints and named unique indexes alike:
    /// `unique(table: a, b)` (with ` where ...` for a partial one), sorted.
    pub unique: Vec<String>,
    /// Non-unique indexes by name.
    pub indexes: BTreeMap<String, Index>,
    /// `WITHOUT ROWID`, `STRICT`, `AUTOINCREMENT`, when present.
    pub options: Vec<String>,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Declared type, upper-cased.
    pub decl_type: String,
    /// NOT NULL.
    pub not_null: bool,
    /// The default expression's text.
    pub default: Option<String>,
    /// Position in the PRIMARY KEY (1-based), 0 when not part of it.
    pub pk: i64,
}

/// One foreign key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ForeignKey {
    /// Child columns.
    pub from: Vec<String>,
    /// Parent table.
    pub table: String,
    /// Parent columns (empty = the parent's primary key).
    pub to: Vec<String>,
    /// ON DELETE action.
    pub on_delete: String,
    /// ON UPDATE action.
    pub on_update: String,
}

/// One non-unique index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Index {
    /// Indexed columns (`<expr>` for an expression), with ` DESC` when so.
    pub columns: Vec<String>,
    /// The WHERE clause of a partial index, whitespace-normalised.
    pub partial: Option<String>,
}

fn sql_err(what: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn pragma_text(conn: &Connection, name: &str) -> String {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| {
        Ok(match r.get_ref(0)? {
            ValueRef::Text(t) => String::from_utf8_lossy(t).to_lowercase(),
            ValueRef::Integer(i) => i.to_string(),
            other => format!("{other:?}"),
        })
    })
    .unwrap_or_else(|e| format!("error: {e}"))
}

fn pragma_int(conn: &Connection, name: &str) -> i64 {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap_or(-1)
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text after the last top-level ` WHERE ` of an index's SQL.
fn partial_clause(sql: Option<&str>) -> Option<String> {
    let sql = squash(sql?);
    let upper = sql.to_uppercase();
    let at = upper.rfind(" WHERE ")?;
    // The WHERE of a partial index follows the column list's parenthesis.
    if !sql[..at].trim_end().ends_with(')') {
        return None;
    }
    Some(
        sql[at + 7..]
            .trim()
            .trim_end_matches(';')
            .trim()
            .to_string(),
    )
}

/// The structure of the database behind `conn`.
pub fn schema(conn: &Connection) -> Result<Schema, String> {
    let pragmas = Pragmas {
        journal_mode: pragma_text(conn, "journal_mode"),
        auto_vacuum: pragma_int(conn, "auto_vacuum"),
        page_size: pragma_int(conn, "page_size"),
    };
    let mut objects: Vec<(String, String, String, Option<String>)> = {
        let mut st = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema")
            .map_err(sql_err("sqlite_schema"))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(sql_err("sqlite_schema"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("sqlite_schema"))?
    };
    objects.sort();
    let mut out = Schema {
        pragmas,
        tables: BTreeMap::new(),
        other_objects: Vec::new(),
        oneway_objects: Vec::new(),
    };
    for (kind, name, tbl, sql) in &objects {
        let oneway = name.starts_with("oneway_") || tbl.starts_with("oneway_");
        match kind.as_str() {
            "view" | "trigger" if oneway => out.oneway_objects.push(format!("{kind} {name}")),
            "view" => out.other_objects.push(format!("view {name}")),
            "trigger" => out.other_objects.push(format!("trigger {name} on {tbl}")),
            "table" if name.starts_with("sqlite_") => {}
            "table" if oneway => out.oneway_objects.push(format!("table {name}")),
            "table" => {
                let t = table(conn, name, sql.as_deref().unwrap_or(""), &objects)?;
                out.tables.insert(name.clone(), t);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn table(
    conn: &Connection,
    name: &str,
    sql: &str,
    objects: &[(String, String, String, Option<String>)],
) -> Result<Table, String> {
    let what = format!("table {name}");
    let columns: Vec<Column> = {
        let mut st = conn
            .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")
            .map_err(sql_err(&what))?;
        let rows = st
            .query_map([name], |r| {
                Ok(Column {
                    name: r.get(0)?,
                    decl_type: r.get::<_, String>(1)?.to_uppercase(),
                    not_null: r.get::<_, i64>(2)? != 0,
                    default: r.get(3)?,
                    pk: r.get(4)?,
                })
            })
            .map_err(sql_err(&what))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err(&what))?
    };
    let mut fks: BTreeMap<i64, ForeignKey> = BTreeMap::new();
    {
        let mut st = conn
            .prepare(
                "SELECT id, \"from\", \"table\", \"to\", on_delete, on_update
                 FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
            )
            .map_err(sql_err(&what))?;
        let rows = st
            .query_map([name], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .map_err(sql_err(&what))?;
        for row in rows {
            let (id, from, parent, to, del, upd) = row.map_err(sql_err(&what))?;
            let fk = fks.entry(id).or_insert_with(|| ForeignKey {
                from: Vec::new(),
                table: parent,
                to: Vec::new(),
                on_delete: del,
                on_update: upd,
            });
            fk.from.push(from);
            if let Some(to) = to {
                fk.to.push(to);
            }
        }
    }
    let mut foreign_keys: Vec<ForeignKey> = fks.into_values().collect();
    foreign_keys.sort();
    let mut unique = Vec::new();
    let mut indexes = BTreeMap::new();
    let list: Vec<(String, bool, String)> = {
        let mut st = conn
            .prepare("SELECT name, \"unique\", origin FROM pragma_index_list(?1)")
            .map_err(sql_err(&what))?;
        let rows = st
            .query_map([name], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?))
            })
            .map_err(sql_err(&what))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err(&what))?
    };
    for (index, is_unique, origin) in list {
        if origin == "pk" {
            continue; // the PRIMARY KEY is described by the columns
        }
        let cols: Vec<String> = {
            let mut st = conn
                .prepare("SELECT name, \"desc\" FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno")
                .map_err(sql_err(&what))?;
            let rows = st
                .query_map([&index], |r| {
                    let col: Option<String> = r.get(0)?;
                    let desc: i64 = r.get(1)?;
                    let col = col.unwrap_or_else(|| "<expr>".into());
                    Ok(if desc != 0 {
                        format!("{col} DESC")
                    } else {
                        col
                    })
                })
                .map_err(sql_err(&what))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(sql_err(&what))?
        };
        let sql = objects
            .iter()
            .find(|o| o.0 == "index" && o.1 == index)
            .and_then(|o| o.3.as_deref());
        let partial = partial_clause(sql);
        if is_unique {
            let mut u = format!("unique({name}: {})", cols.join(", "));
            if let Some(p) = &partial {
                u.push_str(&format!(" where {p}"));
            }
            unique.push(u);
        } else {
            indexes.insert(
                index,
                Index {
                    columns: cols,
                    partial,
                },
            );
        }
    }
    unique.sort();
    let mut options = Vec::new();
    let upper = squash(sql).to_uppercase();
    if upper.contains("WITHOUT ROWID") {
        options.push("WITHOUT ROWID".into());
    }
    if upper.trim_end_matches(';').trim_end().ends_with("STRICT") || upper.contains(") STRICT") {
        options.push("STRICT".into());
    }
    if upper.contains("AUTOINCREMENT") {
        options.push("AUTOINCREMENT".into());
    }
    Ok(Table {
        columns,
        foreign_keys,
        unique,
        indexes,
        options,
    })
}

/// Every difference between `want` (lnd's) and `got`, one line each.
/// `page_size` is not one: lnd works on any page size (it is only shown in
/// [`Schema::pragmas`]).
pub fn schema_diff(want: &Schema, got: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let p = (&want.pragmas, &got.pragmas);
    if p.0.journal_mode != p.1.journal_mode {
        out.push(format!(
            "pragma journal_mode: lnd's is {}, this store's is {}",
            p.0.journal_mode, p.1.journal_mode
        ));
    }
    if p.0.auto_vacuum != p.1.auto_vacuum {
        out.push(format!(
            "pragma auto_vacuum: lnd's is {}, this store's is {}",
            p.0.auto_vacuum, p.1.auto_vacuum
        ));
    }
    for name in want.tables.keys() {
        if !got.tables.contains_key(name) {
            out.push(format!("table {name} is missing"));
        }
    }
    for name in got.tables.keys() {
        if !want.tables.contains_key(name) {
            out.push(format!("table {name} is not lnd's"));
        }
    }
    for (name, w) in &want.tables {
        let Some(g) = got.tables.get(name) else {
            continue;
        };
        if w.columns != g.columns {
            out.push(format!(
                "table {name}: columns differ: lnd's {:?}, this store's {:?}",
                w.columns, g.columns
            ));
        }
        if w.foreign_keys != g.foreign_keys {
            out.push(format!(
                "table {name}: foreign keys differ: lnd's {:?}, this store's {:?}",
                w.foreign_keys, g.foreign_keys
            ));
        }
        let (wu, gu): (BTreeSet<_>, BTreeSet<_>) =
            (w.unique.iter().collect(), g.unique.iter().collect());
        for u in wu.difference(&gu) {
            out.push(format!("{u} is missing"));
        }
        for u in gu.difference(&wu) {
            out.push(format!("{u} is not lnd's"));
        }
        for (i, wi) in &w.indexes {
            match g.indexes.get(i) {
                None => out.push(format!("index {i} on {name} is missing")),
                Some(gi) if gi != wi => out.push(format!(
                    "index {i} on {name} differs: lnd's {wi:?}, this store's {gi:?}"
                )),
                _ => {}
            }
        }
        for i in g.indexes.keys() {
            if !w.indexes.contains_key(i) {
                out.push(format!("index {i} on {name} is not lnd's"));
            }
        }
        if w.options != g.options {
            out.push(format!(
                "table {name}: options differ: lnd's {:?}, this store's {:?}",
                w.options, g.options
            ));
        }
    }
    if want.other_objects != got.other_objects {
        out.push(format!(
            "views/triggers differ: lnd's {:?}, this store's {:?}",
            want.other_objects, got.other_objects
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------

/// Every row of every table (SQLite's own excepted), values with their
/// storage class, rows sorted; `migration_tracker.migration_time` is
/// replaced by `<now>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rows {
    /// Table name -> (column names, sorted rows).
    pub tables: BTreeMap<String, (Vec<String>, Vec<Vec<String>>)>,
}

impl Rows {
    /// Tables present in both whose rows differ, with a count of the rows
    /// only one side has.
    pub fn changed(&self, after: &Rows, skip: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, (cols, rows)) in &self.tables {
            if skip.contains(&name.as_str()) {
                continue;
            }
            let Some((cols2, rows2)) = after.tables.get(name) else {
                out.push(format!("table {name} ({} rows) disappeared", rows.len()));
                continue;
            };
            if cols != cols2 {
                out.push(format!(
                    "table {name}: columns changed from {cols:?} to {cols2:?}"
                ));
                continue;
            }
            if rows != rows2 {
                let a: BTreeSet<_> = rows.iter().collect();
                let b: BTreeSet<_> = rows2.iter().collect();
                out.push(format!(
                    "table {name}: {} of {} rows changed or removed, {} added",
                    a.difference(&b).count(),
                    rows.len(),
                    b.difference(&a).count()
                ));
            }
        }
        out
    }
}

fn render(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => format!("i:{i}"),
        ValueRef::Real(r) => format!("r:{r}"),
        ValueRef::Text(t) => format!("t:{:?}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("x:{}", hex::encode(b)),
    }
}

/// Every row of every table behind `conn`, canonically ordered.
pub fn dump_rows(conn: &Connection) -> Result<Rows, String> {
    let names: Vec<String> = {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
            .map_err(sql_err("tables"))?;
        let rows = st.query_map([], |r| r.get(0)).map_err(sql_err("tables"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("tables"))?
    };
    let mut tables = BTreeMap::new();
    for name in names {
        let mut st = conn
            .prepare(&format!("SELECT * FROM \"{name}\""))
            .map_err(sql_err(&name))?;
        let cols: Vec<String> = st.column_names().iter().map(|c| c.to_string()).collect();
        let now_col = if name == "migration_tracker" {
            cols.iter().position(|c| c == "migration_time")
        } else {
            None
        };
        let n = cols.len();
        let mut rows: Vec<Vec<String>> = st
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        if Some(i) == now_col {
                            Ok("<now>".to_string())
                        } else {
                            r.get_ref(i).map(render)
                        }
                    })
                    .collect()
            })
            .map_err(sql_err(&name))?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql_err(&name))?;
        rows.sort();
        tables.insert(name, (cols, rows));
    }
    Ok(Rows { tables })
}

// ---------------------------------------------------------------------------
// lnd's runtime queries
// ---------------------------------------------------------------------------

/// lnd's invoice queries (`invoices.sql`, `amp_invoices.sql`,
/// `invoice_events.sql`, `migration.sql`) as SQLite sees them: `$N` is `?N`,
/// `@x` and `sqlc.narg('x')` are `:x` (none of these files uses
/// `sqlc.slice`, which would become one `?`).
pub const QUERIES: &[(&str, &str)] = &[
    // invoices.sql
    ("InsertInvoice", "INSERT INTO invoices (hash, preimage, memo, amount_msat, cltv_delta, expiry, payment_addr, payment_request, payment_request_hash, state, amount_paid_msat, is_amp, is_hodl, is_keysend, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) RETURNING id"),
    ("InsertMigratedInvoice", "INSERT INTO invoices (hash, preimage, settle_index, settled_at, memo, amount_msat, cltv_delta, expiry, payment_addr, payment_request, payment_request_hash, state, amount_paid_msat, is_amp, is_hodl, is_keysend, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) RETURNING id"),
    ("InsertInvoiceFeature", "INSERT INTO invoice_features (invoice_id, feature) VALUES (?1, ?2)"),
    ("GetInvoiceFeatures", "SELECT * FROM invoice_features WHERE invoice_id = ?1"),
    ("GetInvoiceByHash", "SELECT i.* FROM invoices i WHERE i.hash = ?1"),
    ("GetInvoiceByAddr", "SELECT i.* FROM invoices i WHERE i.payment_addr = ?1"),
    ("GetInvoiceBySetID", "SELECT i.* FROM invoices i INNER JOIN amp_sub_invoices a ON i.id = a.invoice_id AND a.set_id = ?1"),
    ("FetchPendingInvoices", "SELECT invoices.* FROM invoices WHERE state IN (0, 3) AND id > :id_cursor ORDER BY id ASC LIMIT :num_limit"),
    ("FilterInvoicesBySettleIndex", "SELECT invoices.* FROM invoices WHERE settle_index >= :settle_index_get AND id > :id_cursor ORDER BY id ASC LIMIT :num_limit"),
    ("FilterInvoicesByAddIndex", "SELECT invoices.* FROM invoices WHERE id >= :add_index_get ORDER BY id ASC LIMIT :num_limit"),
    ("FilterInvoicesForward", "SELECT invoices.* FROM invoices WHERE id >= :add_index_get AND (NOT :pending_only OR state IN (0, 3)) AND created_at >= :created_after AND created_at < :created_before ORDER BY id ASC LIMIT :num_limit"),
    ("FilterInvoicesReverse", "SELECT invoices.* FROM invoices WHERE id <= :add_index_let AND (NOT :pending_only OR state IN (0, 3)) AND created_at >= :created_after AND created_at < :created_before ORDER BY id DESC LIMIT :num_limit"),
    ("UpdateInvoiceState", "UPDATE invoices SET state = ?2, preimage = COALESCE(preimage, ?3), settle_index = COALESCE(settle_index, ?4), settled_at = COALESCE(settled_at, ?5) WHERE id = ?1"),
    ("UpdateInvoiceAmountPaid", "UPDATE invoices SET amount_paid_msat = ?2 WHERE id = ?1"),
    ("NextInvoiceSettleIndex", "UPDATE invoice_sequences SET current_value = current_value + 1 WHERE name = 'settle_index' RETURNING current_value"),
    ("DeleteInvoice", "DELETE FROM invoices WHERE (id = :add_index OR :add_index IS NULL) AND (hash = :hash OR :hash IS NULL) AND (settle_index = :settle_index OR :settle_index IS NULL) AND (payment_addr = :payment_addr OR :payment_addr IS NULL)"),
    ("DeleteCanceledInvoices", "DELETE FROM invoices WHERE state = 2"),
    ("InsertInvoiceHTLC", "INSERT INTO invoice_htlcs (htlc_id, chan_id, amount_msat, total_mpp_msat, accept_height, accept_time, expiry_height, state, resolve_time, invoice_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id"),
    ("GetInvoiceHTLCs", "SELECT * FROM invoice_htlcs WHERE invoice_id = ?1"),
    ("UpdateInvoiceHTLC", "UPDATE invoice_htlcs SET state = ?4, resolve_time = ?5 WHERE htlc_id = ?1 AND chan_id = ?2 AND invoice_id = ?3"),
    ("UpdateInvoiceHTLCs", "UPDATE invoice_htlcs SET state = ?2, resolve_time = ?3 WHERE invoice_id = ?1 AND resolve_time IS NULL"),
    ("InsertInvoiceHTLCCustomRecord", "INSERT INTO invoice_htlc_custom_records (key, value, htlc_id) VALUES (?1, ?2, ?3)"),
    ("GetInvoiceHTLCCustomRecords", "SELECT ihcr.htlc_id, key, value FROM invoice_htlcs ih JOIN invoice_htlc_custom_records ihcr ON ih.id = ihcr.htlc_id WHERE ih.invoice_id = ?1"),
    ("InsertKVInvoiceKeyAndAddIndex", "INSERT INTO invoice_payment_hashes (id, add_index) VALUES (?1, ?2)"),
    ("SetKVInvoicePaymentHash", "UPDATE invoice_payment_hashes SET hash = ?2 WHERE id = ?1"),
    ("GetKVInvoicePaymentHashByAddIndex", "SELECT hash FROM invoice_payment_hashes WHERE add_index = ?1"),
    ("ClearKVInvoiceHashIndex", "DELETE FROM invoice_payment_hashes"),
    // amp_invoices.sql
    ("UpsertAMPSubInvoice", "INSERT INTO amp_sub_invoices (set_id, state, created_at, invoice_id) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (set_id, invoice_id) DO NOTHING"),
    ("GetAMPInvoiceID", "SELECT invoice_id FROM amp_sub_invoices WHERE set_id = ?1"),
    ("UpdateAMPSubInvoiceState", "UPDATE amp_sub_invoices SET state = ?2, settle_index = COALESCE(settle_index, ?3), settled_at = COALESCE(settled_at, ?4) WHERE set_id = ?1"),
    ("InsertAMPSubInvoiceHTLC", "INSERT INTO amp_sub_invoice_htlcs (invoice_id, set_id, htlc_id, root_share, child_index, hash, preimage) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
    ("FetchAMPSubInvoices", "SELECT * FROM amp_sub_invoices WHERE invoice_id = ?1 AND (set_id = :set_id OR :set_id IS NULL)"),
    ("FetchAMPSubInvoiceHTLCs", "SELECT amp.set_id, amp.root_share, amp.child_index, amp.hash, amp.preimage, invoice_htlcs.* FROM amp_sub_invoice_htlcs amp INNER JOIN invoice_htlcs ON amp.htlc_id = invoice_htlcs.id WHERE amp.invoice_id = ?1 AND (set_id = :set_id OR :set_id IS NULL)"),
    ("FetchSettledAMPSubInvoices", "SELECT a.set_id, a.settle_index AS amp_settle_index, a.settled_at AS amp_settled_at, i.* FROM amp_sub_invoices a INNER JOIN invoices i ON a.invoice_id = i.id WHERE (a.settle_index >= :settle_index_get OR :settle_index_get IS NULL) AND (a.settle_index <= :settle_index_let OR :settle_index_let IS NULL)"),
    ("UpdateAMPSubInvoiceHTLCPreimage", "UPDATE amp_sub_invoice_htlcs AS a SET preimage = ?5 WHERE a.invoice_id = ?1 AND a.set_id = ?2 AND a.htlc_id = (SELECT id FROM invoice_htlcs AS i WHERE i.chan_id = ?3 AND i.htlc_id = ?4)"),
    ("InsertAMPSubInvoice", "INSERT INTO amp_sub_invoices (set_id, state, created_at, settled_at, settle_index, invoice_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
    // invoice_events.sql
    ("OnInvoiceCreated", "INSERT INTO invoice_events (added_at, event_type, invoice_id) VALUES (?1, 0, ?2)"),
    ("OnInvoiceCanceled", "INSERT INTO invoice_events (added_at, event_type, invoice_id) VALUES (?1, 1, ?2)"),
    ("OnInvoiceSettled", "INSERT INTO invoice_events (added_at, event_type, invoice_id) VALUES (?1, 2, ?2)"),
    ("OnAMPSubInvoiceCreated", "INSERT INTO invoice_events (added_at, event_type, invoice_id, set_id) VALUES (?1, 3, ?2, ?3)"),
    ("OnAMPSubInvoiceCanceled", "INSERT INTO invoice_events (added_at, event_type, invoice_id, set_id) VALUES (?1, 4, ?2, ?3)"),
    ("OnAMPSubInvoiceSettled", "INSERT INTO invoice_events (added_at, event_type, invoice_id, set_id) VALUES (?1, 5, ?2, ?3)"),
    // migration.sql
    ("SetMigration", "INSERT INTO migration_tracker (version, migration_time) VALUES (?1, ?2)"),
    ("GetMigration", "SELECT migration_time FROM migration_tracker WHERE version = ?1"),
    ("GetDatabaseVersion", "SELECT version FROM migration_tracker ORDER BY version DESC LIMIT 1"),
];

fn query(name: &str) -> &'static str {
    QUERIES
        .iter()
        .find(|q| q.0 == name)
        .map(|q| q.1)
        .expect("known query")
}

/// Prepares every query of [`QUERIES`] and runs lnd's write path for one new
/// AMP invoice on the store behind `conn` (foreign keys on), inside a
/// transaction that is rolled back. Returns the failures; empty = lnd works
/// on this store.
pub fn runtime_checks(conn: &Connection, expected_next_settle_index: i64) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = conn.execute_batch("PRAGMA foreign_keys = on") {
        out.push(format!("foreign_keys: {e}"));
    }
    for (name, sql) in QUERIES {
        if let Err(e) = conn.prepare(sql) {
            out.push(format!("lnd cannot prepare {name}: {e}"));
        }
    }
    let tx = match conn.unchecked_transaction() {
        Ok(tx) => tx,
        Err(e) => {
            out.push(format!("begin: {e}"));
            return out;
        }
    };
    write_path(&tx, expected_next_settle_index, &mut out);
    if let Err(e) = tx.rollback() {
        out.push(format!("rollback: {e}"));
    }
    out
}

fn write_path(tx: &Connection, expected_next_settle_index: i64, out: &mut Vec<String>) {
    let at = lnd_now(Instant::now());
    // Values no store holds by chance: hashes of a label.
    let tag = |b: u8| {
        use sha2::Digest;
        sha2::Sha256::digest([b"oneway lnd contract ".as_slice(), &[b]].concat()).to_vec()
    };
    let max_id: i64 = tx
        .query_row("SELECT COALESCE(MAX(id), 0) FROM invoices", [], |r| {
            r.get(0)
        })
        .unwrap_or(0);
    let invoice: Result<i64, _> = tx.query_row(
        query("InsertInvoice"),
        params![
            tag(0xa1),
            Option::<Vec<u8>>::None,
            "oneway lnd contract",
            1_000i64,
            40i64,
            2_592_000i64,
            tag(0xa2),
            Option::<String>::None,
            Option::<Vec<u8>>::None,
            0i64,
            0i64,
            true,
            false,
            false,
            at
        ],
        |r| r.get(0),
    );
    let invoice = match invoice {
        Ok(id) => id,
        Err(e) => {
            out.push(format!("InsertInvoice failed: {e}"));
            return;
        }
    };
    if invoice <= max_id {
        out.push(format!(
            "InsertInvoice gave id {invoice}, not above the largest existing id {max_id}"
        ));
    }
    match tx.query_row(query("NextInvoiceSettleIndex"), [], |r| r.get::<_, i64>(0)) {
        Ok(n) if n == expected_next_settle_index => {}
        Ok(n) => out.push(format!(
            "NextInvoiceSettleIndex returned {n}, expected {expected_next_settle_index}"
        )),
        Err(e) => out.push(format!("NextInvoiceSettleIndex failed: {e}")),
    }
    let set_id = tag(0xa3);
    for (round, want) in [(1, 1usize), (2, 0usize)] {
        match tx.execute(
            query("UpsertAMPSubInvoice"),
            params![set_id, 0i64, at, invoice],
        ) {
            Ok(n) if n == want => {}
            Ok(n) => out.push(format!(
                "UpsertAMPSubInvoice (call {round}) changed {n} rows, expected {want}"
            )),
            Err(e) => out.push(format!("UpsertAMPSubInvoice (call {round}) failed: {e}")),
        }
    }
    let htlc: Result<i64, _> = tx.query_row(
        query("InsertInvoiceHTLC"),
        params![
            7i64,
            "987654321987654321",
            1_000i64,
            1_000i64,
            800_000i64,
            at,
            800_144i64,
            0i64,
            Option::<String>::None,
            invoice
        ],
        |r| r.get(0),
    );
    let htlc = match htlc {
        Ok(id) => id,
        Err(e) => {
            out.push(format!("InsertInvoiceHTLC failed: {e}"));
            return;
        }
    };
    if let Err(e) = tx.execute(
        query("InsertInvoiceHTLCCustomRecord"),
        params![65_537i64, b"lnd contract".to_vec(), htlc],
    ) {
        out.push(format!("InsertInvoiceHTLCCustomRecord failed: {e}"));
    }
    if let Err(e) = tx.execute(
        query("InsertAMPSubInvoiceHTLC"),
        params![
            invoice,
            set_id,
            htlc,
            tag(0xa4),
            0i64,
            tag(0xa5),
            Option::<Vec<u8>>::None
        ],
    ) {
        out.push(format!("InsertAMPSubInvoiceHTLC failed: {e}"));
    }
}

// ---------------------------------------------------------------------------
// The KV side
// ---------------------------------------------------------------------------

/// The settle index lnd's native store must hand out next for the KV store
/// at `kv`: the `sequence` of `invoices/invoice-settle-index`, plus one.
pub fn kv_next_settle_index(kv: &Path) -> i64 {
    let conn = Connection::open_with_flags(kv, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", kv.display()));
    let seq: Option<i64> = conn
        .query_row(
            "SELECT s.sequence FROM channeldb_kv s JOIN channeldb_kv b ON s.parent_id = b.id
             WHERE b.parent_id IS NULL AND b.key = CAST('invoices' AS BLOB)
               AND s.key = CAST('invoice-settle-index' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .optional()
        .expect("settle index bucket")
        .flatten();
    seq.unwrap_or(0) + 1
}

// ---------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------

/// Builds a fresh lnd database at `path` that stopped after tracker version
/// `last` (code migrations do nothing).
pub fn fresh_lnd_db(path: &Path, last: u32) -> StartUpLog {
    start_up_with(path, migrations_until(last), &mut no_op)
        .unwrap_or_else(|e| panic!("fresh lnd database at {last}: {e}"))
}

fn copy_with_wal(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    let side = |p: &Path, s: &str| {
        let mut o = p.as_os_str().to_owned();
        o.push(s);
        std::path::PathBuf::from(o)
    };
    if side(src, "-wal").exists() {
        std::fs::copy(side(src, "-wal"), side(dst, "-wal")).expect("copy -wal");
    }
}

fn open_plain(path: &Path) -> Connection {
    Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Everything that keeps lnd from taking the native store at `path` as a
/// database of its own that has run its invoice migration (tracker version
/// 7): one line per violation, empty when there is none. The store itself
/// is not touched (the checks run on a copy).
pub fn check_store(path: &Path, expected_next_settle_index: i64) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = Vec::new();

    // lnd's own databases: at version 7, and after a full start-up from there.
    let fresh = dir.path().join("fresh.sqlite");
    fresh_lnd_db(&fresh, KV_INVOICE_MIGRATION);
    let fresh_at_7 = schema(&open_plain(&fresh)).expect("schema of lnd at 7");
    let fresh_log = start_up(&fresh, &mut no_op).expect("lnd from 7 to the end");
    let fresh_full = schema(&open_plain(&fresh)).expect("schema of lnd at the end");

    let copy = dir.path().join("lnd.sqlite");
    copy_with_wal(path, &copy);
    let (before, rows_before) = {
        let c = open_plain(&copy);
        let tracker: Vec<i64> = c
            .prepare("SELECT version FROM migration_tracker ORDER BY version")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_default();
        let want: Vec<i64> = (1..=i64::from(KV_INVOICE_MIGRATION)).collect();
        if tracker != want {
            out.push(format!(
                "migration_tracker holds versions {tracker:?}, lnd's after its invoice migration: {want:?}"
            ));
        }
        let has_gm: bool = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .unwrap_or(false);
        if !has_gm {
            out.push("no schema_migrations table: golang-migrate sees no schema version".into());
        } else {
            let v = gm_version(&c).unwrap_or((-1, false));
            if v != (6, false) {
                out.push(format!(
                    "schema_migrations is (version {}, dirty {}), lnd's after version 7: (6, false)",
                    v.0, v.1
                ));
            }
        }
        (
            schema(&c).expect("schema of the store"),
            dump_rows(&c).expect("rows of the store"),
        )
    };
    for d in schema_diff(&fresh_at_7, &before) {
        out.push(format!("before start-up: {d}"));
    }

    // lnd starts on it.
    let started = start_up(&copy, &mut refuse_invoice_migration);
    match &started {
        Err(e) => out.push(format!("lnd's start-up fails: {e}")),
        Ok(log) if log.steps != fresh_log.steps => {
            out.push(format!(
                "lnd's start-up runs schema files up {:?} down {:?}, code migrations {:?}, tracker rows {:?}; on its own database at 7: up {:?}, down {:?}, code {:?}, tracker {:?}",
                log.schema_up(),
                log.schema_down(),
                log.code_run(),
                log.tracker_inserted(),
                fresh_log.schema_up(),
                fresh_log.schema_down(),
                fresh_log.code_run(),
                fresh_log.tracker_inserted()
            ));
            if log.schema_up().contains(&4) {
                out.push(
                    "lnd replays 000004_invoice_expiry_fix: every invoice expiry is overwritten"
                        .into(),
                );
            }
        }
        Ok(_) => {}
    }
    let c = open_as_lnd(&copy).expect("open the started store");
    let rows_after = dump_rows(&c).expect("rows after start-up");
    for d in rows_before.changed(&rows_after, &["migration_tracker", "schema_migrations"]) {
        out.push(format!("start-up changed data: {d}"));
    }
    if started.is_ok() {
        let after = schema(&c).expect("schema after start-up");
        for d in schema_diff(&fresh_full, &after) {
            out.push(format!("after start-up: {d}"));
        }
    }
    for d in runtime_checks(&c, expected_next_settle_index) {
        out.push(format!("at run time: {d}"));
    }
    out
}
