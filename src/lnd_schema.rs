//! lnd's native SQL invoice database, as lnd's own start-up leaves it once its
//! invoice migration has run: the contract the native store must meet.
//!
//! lnd (checked against `lightningnetwork/lnd` at commit `90ea05d5`, August
//! 2026; the schema files have not changed since v0.19) builds its native
//! database with golang-migrate from the schema files 000001–000006, runs the
//! KV invoice migration as its migration-list entry 7 (still at schema
//! version 6), and records every entry in `migration_tracker`. On its next
//! start it takes the largest `migration_tracker.version` as the current
//! version and applies only the entries after it. A store lnd is to take as
//! "invoices migrated" therefore holds, object for object:
//! - every table, column, constraint and named index of schema files
//!   000001–000006 (their text is in [`files`], the one source of lnd's DDL
//!   for both backends), with the seed rows of 000001 and 000003;
//! - golang-migrate's SQLite bookkeeping `schema_migrations` at version 6,
//!   not dirty ([`SCHEMA_VERSION`]);
//! - `migration_tracker` rows 1 to 7 ([`TRACKER_VERSION`]);
//! - `invoice_sequences.settle_index` equal to the KV store's settle index.
//!
//! Two deliberate differences, both invisible to lnd:
//! - lnd declares five UNIQUE constraints inline; oneway creates the same
//!   constraints as named unique indexes after the bulk copy (same table,
//!   same columns in the same order, so the same conflict targets for
//!   `ON CONFLICT` and the same errors): building an index from sorted data
//!   once is far cheaper than updating it on every insert;
//! - oneway's bookkeeping tables (`oneway_*`) stay in the file. lnd never
//!   reads a table it does not know, and none of its later schema files
//!   touches one.
//!
//! Until `Locked`, `schema_migrations` is recorded *dirty*: an lnd started
//! on the store too early stops with "Dirty database version 6" before
//! touching anything, instead of re-running its schema files (000004 would
//! rewrite every expiry) or its own KV migration over the copy.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension};

pub(crate) mod files;

/// The file name of lnd's native SQLite database, beside `channel.sqlite`
/// in `<lnddir>/data/graph/<network>/`.
pub const LND_NATIVE_FILE: &str = "lnd.sqlite";

/// The golang-migrate schema version lnd records once its invoice
/// migration has run (entry 7 of lnd's migration list runs at schema 6).
pub const SCHEMA_VERSION: i64 = 6;

/// The `migration_tracker` version of lnd's KV invoice migration.
pub const TRACKER_VERSION: i64 = 7;

/// The UNIQUE constraints lnd declares inline on the tables oneway copies
/// into, as (table, columns, the name of the unique index oneway builds for
/// it after the copy).
pub const UNIQUE_CONSTRAINTS: [(&str, &str, &str); 5] = [
    ("invoices", "hash", "invoices_hash_unique"),
    ("invoices", "payment_addr", "invoices_payment_addr_unique"),
    (
        "invoices",
        "payment_request_hash",
        "invoices_payment_request_hash_unique",
    ),
    (
        "invoice_features",
        "feature, invoice_id",
        "invoice_features_unique",
    ),
    ("invoice_htlcs", "chan_id, htlc_id", "invoice_htlcs_unique"),
];

/// The tables a migration copies rows into (the invoices and their child
/// rows). Their named indexes and the constraints of [`UNIQUE_CONSTRAINTS`]
/// are built after the bulk copy ([`files::sqlite_deferred_indexes`]).
pub const COPIED_TABLES: [&str; 6] = [
    "invoices",
    "invoice_features",
    "invoice_htlcs",
    "invoice_htlc_custom_records",
    "amp_sub_invoices",
    "amp_sub_invoice_htlcs",
];

/// Tables lnd's invoice migration leaves empty.
pub(crate) const EMPTY_TABLES: [&str; 2] = ["invoice_events", "invoice_payment_hashes"];

/// lnd's invoice event types (schema file 000003).
pub const EVENT_TYPES: [(i64, &str); 6] = [
    (0, "invoice_created"),
    (1, "invoice_canceled"),
    (2, "invoice_settled"),
    (3, "setid_created"),
    (4, "setid_canceled"),
    (5, "setid_settled"),
];

/// Every difference between the tables a database has and the tables lnd
/// wants (each a set of item descriptions), one sentence per object naming
/// the table and the item; shared by the SQLite and Postgres checks.
pub(crate) fn table_differences(
    have: &BTreeMap<String, BTreeSet<String>>,
    want: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (table, items) in want {
        match have.get(table) {
            None => out.push(format!("table {table} is missing")),
            Some(found) => {
                for item in items.difference(found) {
                    out.push(format!("table {table}: {item} is missing"));
                }
                for item in found.difference(items) {
                    out.push(format!("table {table}: {item} is not part of lnd's schema"));
                }
            }
        }
    }
    for table in have.keys().filter(|t| !want.contains_key(*t)) {
        out.push(format!(
            "table {table} is not part of lnd's schema at version {SCHEMA_VERSION}"
        ));
    }
    out
}

/// Builds, after the bulk copy, the unique indexes that stand for lnd's
/// inline UNIQUE constraints and lnd's named indexes. A constraint the table
/// already enforces (a database lnd created declares them inline) gets no
/// second index: nothing lnd lacks is added.
pub fn create_indexes(conn: &Connection) -> rusqlite::Result<()> {
    for (table, cols, name) in UNIQUE_CONSTRAINTS {
        let wanted: Vec<String> = cols.split(", ").map(str::to_owned).collect();
        if !unique_on(conn, table, &wanted)? {
            conn.execute_batch(&format!("CREATE UNIQUE INDEX {name} ON {table}({cols});"))?;
        }
    }
    files::sqlite_deferred_indexes()
        .iter()
        .try_for_each(|ix| conn.execute_batch(ix))
}

/// Whether `table` has a unique index (named or implicit) on exactly `cols`.
fn unique_on(conn: &Connection, table: &str, cols: &[String]) -> rusqlite::Result<bool> {
    Ok(read_indexes(conn, table)?
        .into_iter()
        .any(|ix| ix.unique && ix.partial.is_none() && ix.columns == cols))
}

/// One index as SQLite describes it.
struct IndexInfo {
    name: String,
    unique: bool,
    /// `c` created by CREATE INDEX, `u` by a UNIQUE constraint, `pk` by a
    /// PRIMARY KEY.
    origin: String,
    partial: Option<String>,
    columns: Vec<String>,
}

fn read_indexes(conn: &Connection, table: &str) -> rusqlite::Result<Vec<IndexInfo>> {
    let mut list =
        conn.prepare("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1)")?;
    let rows: Vec<(String, bool, String, bool)> = list
        .query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, unique, origin, partial) in rows {
        let mut cols = conn.prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?;
        let columns = cols
            .query_map([&name], |r| r.get::<_, Option<String>>(0))?
            .map(|c| c.map(|c| c.unwrap_or_else(|| "<expr>".into())))
            .collect::<rusqlite::Result<_>>()?;
        let partial = if partial {
            conn.query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .optional()?
        } else {
            None
        };
        out.push(IndexInfo {
            name,
            unique,
            origin,
            partial,
            columns,
        });
    }
    Ok(out)
}

/// The structure of a SQLite database that lnd depends on, normalised so
/// that two databases compare equal exactly when lnd cannot tell them apart:
/// table by table, the columns (name, declared type, NOT NULL, default,
/// primary-key position), the foreign keys, the uniqueness constraints
/// (however they are enforced: inline or as a named unique index on the same
/// columns) and the other indexes by name. Triggers by name and table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Table name → its description, one line per item, sorted.
    pub tables: BTreeMap<String, BTreeSet<String>>,
}

impl Schema {
    /// Reads the schema of every table except SQLite's own.
    pub fn read(conn: &Connection) -> rusqlite::Result<Schema> {
        let names: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut tables = BTreeMap::new();
        for name in names {
            tables.insert(name.clone(), describe_table(conn, &name)?);
        }
        Ok(Schema { tables })
    }

    /// The schema a native store must have: lnd's at version 6 plus
    /// oneway's bookkeeping, built in a scratch in-memory database by a
    /// replay of lnd's schema files ([`files::sqlite_replay`]) and
    /// oneway's tables.
    pub fn expected(oneway_tables: &str) -> rusqlite::Result<Schema> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(&files::sqlite_replay())?;
        conn.execute_batch(oneway_tables)?;
        Schema::read(&conn)
    }

    /// Every difference between `self` (what the store has) and `want`, as
    /// sentences naming the table and the item.
    pub fn differences(&self, want: &Schema) -> Vec<String> {
        table_differences(&self.tables, &want.tables)
    }
}

fn describe_table(conn: &Connection, table: &str) -> rusqlite::Result<BTreeSet<String>> {
    let mut items = BTreeSet::new();
    let mut cols =
        conn.prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")?;
    let rows = cols.query_map([table], |r| {
        Ok(format!(
            "column {} {}{}{}{}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?.to_uppercase(),
            if r.get::<_, bool>(2)? {
                " NOT NULL"
            } else {
                ""
            },
            r.get::<_, Option<String>>(3)?
                .map(|d| format!(" DEFAULT {d}"))
                .unwrap_or_default(),
            match r.get::<_, i64>(4)? {
                0 => String::new(),
                n => format!(" PRIMARY KEY #{n}"),
            },
        ))
    })?;
    for row in rows {
        items.insert(row?);
    }
    let mut fks = conn.prepare(
        "SELECT \"from\", \"table\", \"to\", on_update, on_delete FROM pragma_foreign_key_list(?1)",
    )?;
    let rows = fks.query_map([table], |r| {
        Ok(format!(
            "foreign key {} -> {}({}) on update {} on delete {}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    for row in rows {
        items.insert(row?);
    }
    for ix in read_indexes(conn, table)? {
        let cols = ix.columns.join(", ");
        let item = match (ix.unique, ix.origin.as_str()) {
            (_, "pk") => continue, // described by the columns' PRIMARY KEY
            (true, _) if ix.partial.is_none() => format!("unique ({cols})"),
            _ => format!(
                "index {} ({cols}){}{}",
                ix.name,
                if ix.unique { " unique" } else { "" },
                ix.partial
                    .map(|p| format!(" partial: {p}"))
                    .unwrap_or_default()
            ),
        };
        items.insert(item);
    }
    let mut trig =
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1")?;
    let rows = trig.query_map([table], |r| {
        Ok(format!("trigger {}", r.get::<_, String>(0)?))
    })?;
    for row in rows {
        items.insert(row?);
    }
    Ok(items)
}

/// How far lnd's bookkeeping must be at a given point of the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before `Locked`: `schema_migrations` = (6, dirty), no tracker row
    /// above 6.
    Migrating,
    /// `Locked`: `schema_migrations` = (6, clean), tracker rows 1 to 7.
    Locked,
}

/// Checks lnd's bookkeeping rows: `schema_migrations`, `migration_tracker`,
/// the settle-index sequence, the event types and the tables lnd's migration
/// leaves empty. Returns one sentence per difference.
pub fn check_rows(
    conn: &Connection,
    stage: Stage,
    settle_index: u64,
) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    let versions: Vec<(i64, bool)> = conn
        .prepare("SELECT version, dirty FROM schema_migrations")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let want_dirty = stage == Stage::Migrating;
    if versions != [(SCHEMA_VERSION, want_dirty)] {
        out.push(format!(
            "schema_migrations holds {versions:?} (version, dirty), lnd needs [({SCHEMA_VERSION}, {want_dirty})] at this stage"
        ));
    }
    let tracker: Vec<i64> = conn
        .prepare("SELECT version FROM migration_tracker ORDER BY version")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let tracker_ok = match stage {
        Stage::Locked => tracker == (1..=TRACKER_VERSION).collect::<Vec<_>>(),
        Stage::Migrating => tracker.iter().all(|v| (1..TRACKER_VERSION).contains(v)),
    };
    if !tracker_ok {
        out.push(format!(
            "migration_tracker holds versions {tracker:?}, lnd needs {} at this stage",
            match stage {
                Stage::Locked => format!("1 to {TRACKER_VERSION}"),
                Stage::Migrating => format!("none above {}", TRACKER_VERSION - 1),
            }
        ));
    }
    let sequences: Vec<(String, i64)> = conn
        .prepare("SELECT name, current_value FROM invoice_sequences ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if sequences != [("settle_index".to_owned(), settle_index as i64)] {
        out.push(format!(
            "invoice_sequences holds {sequences:?}, lnd needs only settle_index = {settle_index} (the KV store's settle index)"
        ));
    }
    let types: Vec<(i64, String)> = conn
        .prepare("SELECT id, description FROM invoice_event_types ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let want: Vec<(i64, String)> = EVENT_TYPES
        .iter()
        .map(|(i, d)| (*i, (*d).to_owned()))
        .collect();
    if types != want {
        out.push(format!(
            "invoice_event_types holds {types:?}, lnd seeds {want:?}"
        ));
    }
    for table in EMPTY_TABLES {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        if n != 0 {
            out.push(format!(
                "{table} holds {n} rows, lnd's migration leaves it empty"
            ));
        }
    }
    Ok(out)
}

/// Records what lnd's start-up records once its invoice migration has run:
/// `schema_migrations` = (6, clean) and `migration_tracker` rows 1 to 7 (rows
/// lnd already wrote into a database it created are kept).
pub fn record_migrated(conn: &Connection, now: &str) -> rusqlite::Result<()> {
    set_schema_version(conn, false)?;
    let mut st = conn.prepare(
        "INSERT OR IGNORE INTO migration_tracker (version, migration_time) VALUES (?1, ?2)",
    )?;
    for v in 1..=TRACKER_VERSION {
        st.execute(rusqlite::params![v, now])?;
    }
    Ok(())
}

/// Sets golang-migrate's record to schema version 6, dirty or not, as its
/// SQLite driver does (the table holds one row).
pub fn set_schema_version(conn: &Connection, dirty: bool) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM schema_migrations", [])?;
    conn.execute(
        "INSERT INTO schema_migrations (version, dirty) VALUES (?1, ?2)",
        rusqlite::params![SCHEMA_VERSION, dirty],
    )?;
    Ok(())
}

/// What an existing database that oneway did not create holds of lnd's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// No table at all: a new store.
    Empty,
    /// lnd's native database whose invoice migration never completed
    /// (`migration_tracker` ≤ 6, clean schema ≤ 6, every invoice table
    /// empty, no other table): oneway may continue into it.
    LndBeforeInvoices,
    /// lnd's invoice migration has run or was skipped (tracker ≥ 7).
    LndMigrated {
        /// The highest `migration_tracker` version.
        version: i64,
    },
    /// Anything else, with the reason.
    Foreign(String),
}

/// Classifies a database that has no oneway state.
pub fn classify(conn: &Connection) -> rusqlite::Result<Existing> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if tables.is_empty() {
        return Ok(Existing::Empty);
    }
    if tables.iter().any(|t| t == "migration_tracker") {
        let version: Option<i64> =
            conn.query_row("SELECT max(version) FROM migration_tracker", [], |r| {
                r.get(0)
            })?;
        if let Some(v) = version.filter(|v| *v >= TRACKER_VERSION) {
            return Ok(Existing::LndMigrated { version: v });
        }
    }
    if let Some(other) = tables.iter().find(|t| !files::is_lnd_table(t)) {
        return Ok(Existing::Foreign(format!(
            "has table {other}, which is neither oneway's nor part of lnd's invoice schema"
        )));
    }
    if tables.iter().any(|t| t == "schema_migrations") {
        let row: Option<(i64, bool)> = conn
            .query_row(
                "SELECT version, dirty FROM schema_migrations LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((v, true)) => {
                return Ok(Existing::Foreign(format!(
                    "is lnd's, but its schema migration to version {v} stopped halfway (dirty)"
                )))
            }
            Some((v, false)) if v > SCHEMA_VERSION => {
                return Ok(Existing::Foreign(format!(
                "is lnd's at schema version {v}, beyond the invoice migration's {SCHEMA_VERSION}"
            )))
            }
            _ => {}
        }
    }
    for table in tables.iter().filter(|t| copied_or_empty(t)) {
        let any: Option<i64> = conn
            .query_row(&format!("SELECT 1 FROM {table} LIMIT 1"), [], |r| r.get(0))
            .optional()?;
        if any.is_some() {
            return Ok(Existing::Foreign(format!(
                "is lnd's and its table {table} already holds rows, though its invoice migration never completed"
            )));
        }
    }
    Ok(Existing::LndBeforeInvoices)
}

/// Whether `table` is one of lnd's tables that hold invoices or their
/// events: all empty in a database whose invoice migration has not run.
pub(crate) fn copied_or_empty(table: &str) -> bool {
    COPIED_TABLES.contains(&table) || EMPTY_TABLES.contains(&table)
}

/// Everything lnd needs of the store at `stage` besides the invoices' own
/// rows: the schema ([`Schema::expected`], given oneway's own tables), the
/// journal mode, and the bookkeeping rows ([`check_rows`]). One sentence
/// per difference, each naming the object.
pub fn check(
    conn: &Connection,
    stage: Stage,
    settle_index: u64,
    oneway_tables: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut out = Schema::read(conn)?.differences(&Schema::expected(oneway_tables)?);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        out.push(format!("the journal mode is {mode}, lnd uses wal"));
    }
    match check_rows(conn, stage, settle_index) {
        Ok(rows) => out.extend(rows),
        // A missing or reshaped bookkeeping table is already named above.
        Err(_) if !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}
