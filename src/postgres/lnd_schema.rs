//! lnd's native invoice schema on PostgreSQL, as lnd's start-up leaves it
//! once its invoice migration has run: the contract a Postgres target meets.
//!
//! lnd writes its schema files once, in SQLite's dialect, and derives the
//! Postgres schema by text replacement when golang-migrate opens a file
//! (`sqldb/postgres.go`, `postgresSchemaReplacements`, applied by
//! `newReplacerFS` in `sqldb/migrations.go`): `BLOB` → `BYTEA`,
//! `INTEGER PRIMARY KEY` → `BIGSERIAL PRIMARY KEY`, ` TIMESTAMP` →
//! ` TIMESTAMP WITHOUT TIME ZONE`. The files' text is held once, for both
//! backends, in `crate::lnd_schema::files` ([`UP_FILES`], re-exported here
//! with lnd's table [`REPLACEMENTS`] and [`postgres_text`], which applies
//! it the same way). Checked against `lightningnetwork/lnd` at commit
//! `90ea05d5`.
//!
//! What lnd's start-up does on Postgres, and so what a migrated database
//! holds ([`create`], [`record_migrated`]):
//! 1. `CREATE TABLE IF NOT EXISTS migration_tracker (…)` from Go code, with
//!    no replacement ([`TRACKER_BOOT`]; plain `TIMESTAMP` is the same type);
//! 2. golang-migrate's pgx driver creates `schema_migrations (version bigint
//!    not null primary key, dirty boolean not null)` in the current schema
//!    ([`SCHEMA_MIGRATIONS`]) and, per file, sets (n, dirty), runs the file,
//!    sets (n, clean), each set a `TRUNCATE` and one `INSERT`;
//! 3. entry 7 (the KV invoice migration) runs at schema 6, and every entry
//!    adds its row to `migration_tracker`.
//!
//! So: the tables, constraints, indexes and `BIGSERIAL` sequences of files
//! 000001–000006, the seed rows of 000001 and 000003, `schema_migrations` =
//! (6, false), `migration_tracker` 1 to 7. oneway keeps `schema_migrations`
//! *dirty* until the migration is sealed ([`set_schema_version`]), as on
//! SQLite: an lnd started too early stops at "Dirty database version 6"
//! instead of replaying 000004 over the copied expiries.
//!
//! [`Schema`] is a structural picture of a database read from `pg_catalog`
//! (tables, columns with types, nullability and defaults, constraints by
//! name and definition, indexes by name and definition, owned sequences),
//! and [`Schema::differences`] names every object that differs.

use std::collections::{BTreeMap, BTreeSet};

use postgres::GenericClient;

use super::{sql, PgResult};
use crate::lnd_schema::COPIED_TABLES;

pub use crate::lnd_schema::files::{postgres_text, SchemaFile, EXPIRY_FIX, REPLACEMENTS, UP_FILES};

/// The golang-migrate schema version lnd records after its invoice
/// migration.
pub const SCHEMA_VERSION: i64 = 6;

/// The `migration_tracker` version of lnd's KV invoice migration.
pub const TRACKER_VERSION: i32 = 7;

/// lnd's `migration_tracker` creation in `NewPostgresStore`, run before any
/// schema file (not replaced: it is Go code).
pub const TRACKER_BOOT: &str = "CREATE TABLE IF NOT EXISTS migration_tracker (
    version INTEGER UNIQUE NOT NULL,
    migration_time TIMESTAMP NOT NULL
);";

/// golang-migrate's version table on Postgres (`database/pgx/v5`,
/// `ensureVersionTable`), in the current schema.
pub const SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS \"schema_migrations\" \
     (version bigint not null primary key, dirty boolean not null)";

/// lnd's native tables at schema version 6 (and golang-migrate's), in the
/// order lnd creates them.
pub const TABLE_NAMES: [&str; 12] = [
    "migration_tracker",
    "schema_migrations",
    "invoice_sequences",
    "invoices",
    "invoice_features",
    "invoice_htlcs",
    "invoice_htlc_custom_records",
    "amp_sub_invoices",
    "amp_sub_invoice_htlcs",
    "invoice_event_types",
    "invoice_events",
    "invoice_payment_hashes",
];

/// lnd's invoice event types (schema file 000003).
pub use crate::lnd_schema::EVENT_TYPES;

use crate::lnd_schema::EMPTY_TABLES;

/// Creates lnd's native schema at version 6 in the caller's transaction,
/// the way lnd's start-up does, and records `schema_migrations` = (6,
/// `dirty`). Idempotent, like lnd's files (`IF NOT EXISTS`, seed rows only
/// when absent), so it also completes a database lnd left at an earlier
/// schema version, and may run again on a resumed migration. Schema file
/// 000004 is the one file left out: it creates nothing, changes nothing on
/// the empty tables lnd runs it on, and over copied rows would overwrite
/// every expiry.
pub fn create(client: &mut impl GenericClient, dirty: bool) -> PgResult<()> {
    client
        .batch_execute(TRACKER_BOOT)
        .map_err(sql("creating migration_tracker"))?;
    client
        .batch_execute(SCHEMA_MIGRATIONS)
        .map_err(sql("creating schema_migrations"))?;
    for file in UP_FILES.iter().filter(|f| f.number != EXPIRY_FIX) {
        client
            .batch_execute(&postgres_text(file.up))
            .map_err(sql(format!(
                "running lnd's schema file {:06}_{}",
                file.number, file.name
            )))?;
    }
    set_schema_version(client, dirty)
}

/// lnd's named indexes on the tables a migration copies into (schema files
/// 000001 and 000002), as (name, table, column).
pub const COPY_INDEXES: [(&str, &str, &str); 13] = [
    ("invoices_hash_idx", "invoices", "hash"),
    ("invoices_preimage_idx", "invoices", "preimage"),
    ("invoices_payment_addr_idx", "invoices", "payment_addr"),
    ("invoices_state_idx", "invoices", "state"),
    ("invoices_created_at_idx", "invoices", "created_at"),
    ("invoices_settled_at_idx", "invoices", "settled_at"),
    (
        "invoice_feature_invoice_id_idx",
        "invoice_features",
        "invoice_id",
    ),
    ("invoice_htlc_invoice_id_idx", "invoice_htlcs", "invoice_id"),
    (
        "invoice_htlc_custom_records_htlc_id_idx",
        "invoice_htlc_custom_records",
        "htlc_id",
    ),
    (
        "amp_sub_invoices_invoice_id_idx",
        "amp_sub_invoices",
        "invoice_id",
    ),
    (
        "amp_htlcs_invoice_id_idx",
        "amp_sub_invoice_htlcs",
        "invoice_id",
    ),
    ("amp_htlcs_set_id_idx", "amp_sub_invoice_htlcs", "set_id"),
    ("amp_htlcs_htlc_id_idx", "amp_sub_invoice_htlcs", "htlc_id"),
];

/// lnd's inline UNIQUE constraints on the tables a migration copies into,
/// as (the name Postgres gives them, table, columns). No foreign key
/// depends on one (they reference primary keys), so they can be dropped.
pub const COPY_UNIQUES: [(&str, &str, &str); 6] = [
    ("invoices_hash_key", "invoices", "hash"),
    ("invoices_payment_addr_key", "invoices", "payment_addr"),
    (
        "invoices_payment_request_hash_key",
        "invoices",
        "payment_request_hash",
    ),
    (
        "invoice_features_feature_invoice_id_key",
        "invoice_features",
        "feature, invoice_id",
    ),
    (
        "invoice_htlcs_chan_id_htlc_id_key",
        "invoice_htlcs",
        "chan_id, htlc_id",
    ),
    (
        "amp_sub_invoices_set_id_invoice_id_key",
        "amp_sub_invoices",
        "set_id, invoice_id",
    ),
];

/// Drops [`COPY_INDEXES`] and [`COPY_UNIQUES`] before a bulk copy: keeping
/// nineteen B-trees (13 indexes, 6 unique constraints) sorted row by row
/// costs far more than building each once from the copied rows
/// ([`build_copy_indexes`]). Primary keys and foreign keys stay. Idempotent. Until the rebuild the schema is not lnd's, which
/// [`check`] reports object by object.
pub fn drop_copy_indexes(client: &mut impl GenericClient) -> PgResult<()> {
    for (name, table, _) in COPY_UNIQUES {
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name};
                 DROP INDEX IF EXISTS {name}"
            ))
            .map_err(sql(format!("dropping {name} for the copy")))?;
    }
    for (name, _, _) in COPY_INDEXES {
        client
            .batch_execute(&format!("DROP INDEX IF EXISTS {name}"))
            .map_err(sql(format!("dropping {name} for the copy")))?;
    }
    Ok(())
}

/// Keeps autovacuum off lnd's six copied tables (`COPIED_TABLES`) until
/// [`resume_autovacuum`]: the bulk copy's inserts would start it on them,
/// and the index build's DDL then waits for it to be cancelled (the server's `deadlock_timeout`,
/// a second by default, per collision). Idempotent.
pub fn pause_autovacuum(client: &mut impl GenericClient) -> PgResult<()> {
    alter_copied_tables(client, "SET (autovacuum_enabled = false)", "pausing")
}

/// Gives the copied tables back to autovacuum: the storage option
/// [`pause_autovacuum`] set is removed, which leaves the tables' options as
/// lnd's DDL makes them (none). Idempotent.
pub fn resume_autovacuum(client: &mut impl GenericClient) -> PgResult<()> {
    alter_copied_tables(client, "RESET (autovacuum_enabled)", "resuming")
}

/// `ALTER TABLE <table> <clause>` on each of `COPIED_TABLES`; `doing`
/// says to what end, in errors ("pausing autovacuum on …").
fn alter_copied_tables(client: &mut impl GenericClient, clause: &str, doing: &str) -> PgResult<()> {
    for table in COPIED_TABLES {
        client
            .batch_execute(&format!("ALTER TABLE {table} {clause}"))
            .map_err(sql(format!("{doing} autovacuum on {table}")))?;
    }
    Ok(())
}

/// Builds what [`drop_copy_indexes`] dropped, with lnd's names and
/// definitions, in one session: [`build_copy_unique_indexes`], then
/// [`build_named_indexes`] for every table, then [`attach_copy_uniques`].
/// Idempotent. A duplicate (two invoices with one payment hash, say) fails
/// here, naming the index. The index build of a migration runs the same
/// three steps with the named indexes on a second session
/// (`store::postgres`).
pub fn build_copy_indexes(client: &mut impl GenericClient) -> PgResult<()> {
    build_copy_unique_indexes(client)?;
    build_named_indexes(client, |_| true)?;
    attach_copy_uniques(client)
}

/// The B-tree behind each of [`COPY_UNIQUES`] whose constraint is missing,
/// as `CREATE UNIQUE INDEX` under the constraint's name. This takes only a
/// `SHARE` lock on the table, so that another session may build the named
/// indexes of the same table at the same time; [`attach_copy_uniques`]
/// then makes each index its constraint. Idempotent.
pub fn build_copy_unique_indexes(client: &mut impl GenericClient) -> PgResult<()> {
    add_missing(client, &COPY_UNIQUES, |name, table, cols| {
        format!("CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {table} ({cols})")
    })
}

/// Runs `statement(name, table, definition)` for each constraint of
/// `constraints` (name, table, definition) that `table` does not have.
fn add_missing(
    client: &mut impl GenericClient,
    constraints: &[(&str, &str, &str)],
    statement: impl Fn(&str, &str, &str) -> String,
) -> PgResult<()> {
    for (name, table, def) in constraints {
        if !has_constraint(client, name, table)? {
            client
                .batch_execute(&statement(name, table, def))
                .map_err(sql(format!("building {name}")))?;
        }
    }
    Ok(())
}

/// Turns each index [`build_copy_unique_indexes`] built into lnd's
/// constraint (`ADD CONSTRAINT … UNIQUE USING INDEX`, which renames
/// nothing here: the index already has the constraint's name). The catalog
/// then holds what lnd's inline `UNIQUE` creates: the constraint, owning a
/// unique B-tree of that name over the same columns, which the structural
/// [`check`] compares with a replay of lnd's files. Takes an `ACCESS
/// EXCLUSIVE` lock for a moment. Idempotent.
pub fn attach_copy_uniques(client: &mut impl GenericClient) -> PgResult<()> {
    add_missing(client, &COPY_UNIQUES, |name, table, _| {
        format!("ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}")
    })
}

/// lnd's own `CREATE INDEX` statements of [`COPY_INDEXES`] on the tables
/// `on` accepts. Idempotent.
pub fn build_named_indexes(
    client: &mut impl GenericClient,
    on: impl Fn(&str) -> bool,
) -> PgResult<()> {
    for (name, table, col) in COPY_INDEXES.iter().filter(|(_, t, _)| on(t)) {
        client
            .batch_execute(&format!(
                "CREATE INDEX IF NOT EXISTS {name} ON {table}({col})"
            ))
            .map_err(sql(format!("building {name}")))?;
    }
    Ok(())
}

/// lnd's foreign keys on the tables a migration copies into, as (the name
/// Postgres gives them, table, definition). Postgres checks a foreign key
/// row by row as a trigger; the bulk copy drops them
/// ([`drop_copy_foreign_keys`]) and [`build_copy_foreign_keys`] adds them
/// back, each validated once over the copied rows. The bulk copy also
/// stages AMP sets outside `amp_sub_invoices`, which the AMP HTLC rows'
/// foreign key would refuse until the index build moves them.
pub const COPY_FOREIGN_KEYS: [(&str, &str, &str); 7] = [
    (
        "invoice_features_invoice_id_fkey",
        "invoice_features",
        "FOREIGN KEY (invoice_id) REFERENCES invoices(id) ON DELETE CASCADE",
    ),
    (
        "invoice_htlcs_invoice_id_fkey",
        "invoice_htlcs",
        "FOREIGN KEY (invoice_id) REFERENCES invoices(id) ON DELETE CASCADE",
    ),
    (
        "invoice_htlc_custom_records_htlc_id_fkey",
        "invoice_htlc_custom_records",
        "FOREIGN KEY (htlc_id) REFERENCES invoice_htlcs(id) ON DELETE CASCADE",
    ),
    (
        "amp_sub_invoices_invoice_id_fkey",
        "amp_sub_invoices",
        "FOREIGN KEY (invoice_id) REFERENCES invoices(id) ON DELETE CASCADE",
    ),
    (
        "amp_sub_invoice_htlcs_invoice_id_fkey",
        "amp_sub_invoice_htlcs",
        "FOREIGN KEY (invoice_id) REFERENCES invoices(id) ON DELETE CASCADE",
    ),
    (
        "amp_sub_invoice_htlcs_set_id_fkey",
        "amp_sub_invoice_htlcs",
        "FOREIGN KEY (set_id) REFERENCES amp_sub_invoices(set_id) ON DELETE CASCADE",
    ),
    (
        "amp_sub_invoice_htlcs_htlc_id_fkey",
        "amp_sub_invoice_htlcs",
        "FOREIGN KEY (htlc_id) REFERENCES invoice_htlcs(id) ON DELETE CASCADE",
    ),
];

/// Drops [`COPY_FOREIGN_KEYS`] before a bulk copy. Idempotent.
pub fn drop_copy_foreign_keys(client: &mut impl GenericClient) -> PgResult<()> {
    for (name, table, _) in COPY_FOREIGN_KEYS {
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"
            ))
            .map_err(sql(format!("dropping {name} for the copy")))?;
    }
    Ok(())
}

/// Adds back what [`drop_copy_foreign_keys`] dropped, with lnd's names and
/// definitions; each is validated over the rows at once. Idempotent. A row
/// that refers to a missing parent fails here, naming the constraint.
pub fn build_copy_foreign_keys(client: &mut impl GenericClient) -> PgResult<()> {
    add_missing(client, &COPY_FOREIGN_KEYS, |name, table, def| {
        format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}")
    })
}

/// Whether `table` in the current schema has the constraint `name`.
pub fn has_constraint(client: &mut impl GenericClient, name: &str, table: &str) -> PgResult<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
             WHERE c.conname = $1 AND t.relname = $2
               AND t.relnamespace = current_schema()::regnamespace",
            &[&name, &table],
        )
        .map_err(sql(format!("looking for {name}")))?
        .is_some())
}

/// Sets golang-migrate's record to (6, `dirty`) as its pgx driver does: the
/// table emptied, one row inserted.
pub fn set_schema_version(client: &mut impl GenericClient, dirty: bool) -> PgResult<()> {
    client
        .batch_execute("TRUNCATE \"schema_migrations\"")
        .map_err(sql("emptying schema_migrations"))?;
    client
        .execute(
            "INSERT INTO \"schema_migrations\" (version, dirty) VALUES ($1, $2)",
            &[&SCHEMA_VERSION, &dirty],
        )
        .map_err(sql("setting schema_migrations"))?;
    Ok(())
}

/// Records what lnd records once its invoice migration has run:
/// `schema_migrations` = (6, clean) and `migration_tracker` rows 1 to 7 at
/// the server's current UTC time (rows already there are kept).
pub fn record_migrated(client: &mut impl GenericClient) -> PgResult<()> {
    set_schema_version(client, false)?;
    client
        .execute(
            "INSERT INTO migration_tracker (version, migration_time)
             SELECT v, now() AT TIME ZONE 'UTC' FROM generate_series(1, $1::int) AS v
             ON CONFLICT (version) DO NOTHING",
            &[&TRACKER_VERSION],
        )
        .map_err(sql("recording migration_tracker rows 1 to 7"))?;
    Ok(())
}

/// The structure of a Postgres database that lnd depends on, per table in
/// schema `public`: columns in order (name, type, NOT NULL, default),
/// constraints by name and definition, indexes by name and definition,
/// sequences owned by a column, and triggers by name. Two databases
/// compare equal exactly when lnd's queries cannot tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Table name → one line per item, sorted.
    pub tables: BTreeMap<String, BTreeSet<String>>,
}

impl Schema {
    /// Reads the tables of schema `namespace` that `keep` accepts, rendered
    /// without the namespace's qualification (so a scratch copy in another
    /// namespace compares equal to `public`).
    pub fn read(
        client: &mut impl GenericClient,
        namespace: &str,
        keep: impl Fn(&str) -> bool,
    ) -> PgResult<Schema> {
        let unqualify = |def: &str| def.replace(&format!("{namespace}."), "");
        let tables: Vec<(u32, String)> = client
            .query(
                "SELECT c.oid, c.relname::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 2",
                &[&namespace],
            )
            .map_err(sql(READ_ACT))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .filter(|(_, name): &(u32, String)| keep(name))
            .collect();
        let mut out = Schema::default();
        for (oid, name) in tables {
            let mut items = BTreeSet::new();
            table_columns(client, oid, &unqualify, &mut items)?;
            table_constraints(client, oid, &unqualify, &mut items)?;
            table_indexes(client, oid, &unqualify, &mut items)?;
            table_sequences(client, oid, &mut items)?;
            table_triggers(client, oid, &mut items)?;
            out.tables.insert(name, items);
        }
        Ok(out)
    }

    /// Reads lnd's native tables ([`TABLE_NAMES`]) in `public`, and any
    /// other table there that is neither a KV table (`*_kv`) nor oneway's
    /// bookkeeping (`oneway_*`).
    pub fn read_native(client: &mut impl GenericClient) -> PgResult<Schema> {
        Schema::read(client, "public", |t| {
            !t.ends_with("_kv") && !t.starts_with("oneway_")
        })
    }

    /// The schema [`create`] gives, built in a scratch namespace on the same
    /// server (so the server's own rendering is compared with itself) inside
    /// a transaction that is rolled back: nothing is left behind.
    pub fn expected(client: &mut postgres::Client) -> PgResult<Schema> {
        let mut tx = client
            .transaction()
            .map_err(sql("starting the expected schema's transaction"))?;
        tx.batch_execute("CREATE SCHEMA oneway_expected; SET LOCAL search_path TO oneway_expected")
            .map_err(sql("creating a scratch schema"))?;
        create(&mut tx, false)?;
        let want = Schema::read(&mut tx, "oneway_expected", |t| TABLE_NAMES.contains(&t))?;
        tx.rollback().map_err(sql("dropping the scratch schema"))?;
        Ok(want)
    }

    /// Every difference between `self` (what a database has) and `want`,
    /// one sentence per object, naming the table and the item.
    pub fn differences(&self, want: &Schema) -> Vec<String> {
        crate::lnd_schema::table_differences(&self.tables, &want.tables)
    }
}

/// How far lnd's bookkeeping must be at a given point of the migration
/// (the same stages as on SQLite).
pub use crate::lnd_schema::Stage;

/// Checks lnd's bookkeeping rows at `stage`: `schema_migrations`,
/// `migration_tracker`, the settle-index sequence (`settle_index`, the KV
/// store's), the event types, and the tables lnd's migration leaves empty.
/// One sentence per difference.
pub fn check_rows(
    client: &mut impl GenericClient,
    stage: Stage,
    settle_index: u64,
) -> PgResult<Vec<String>> {
    let mut out = Vec::new();
    check_schema_migrations(client, stage, &mut out)?;
    check_tracker(client, stage, &mut out)?;
    check_sequences(client, settle_index, &mut out)?;
    check_event_types(client, &mut out)?;
    check_empty_tables(client, &mut out)?;
    Ok(out)
}

/// What reading lnd's bookkeeping rows was doing, for its errors.
const ROWS_ACT: &str = "reading lnd's bookkeeping rows";

/// golang-migrate's version row: dirty until `Lock`, clean after.
fn check_schema_migrations(
    client: &mut impl GenericClient,
    stage: Stage,
    out: &mut Vec<String>,
) -> PgResult<()> {
    let versions: Vec<(i64, bool)> = client
        .query("SELECT version, dirty FROM \"schema_migrations\"", &[])
        .map_err(sql(ROWS_ACT))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want_dirty = stage == Stage::Migrating;
    if versions != [(SCHEMA_VERSION, want_dirty)] {
        out.push(format!(
            "schema_migrations holds {versions:?} (version, dirty), lnd needs [({SCHEMA_VERSION}, {want_dirty})] at this stage"
        ));
    }
    Ok(())
}

/// lnd's `migration_tracker`: rows 1 to 7 once `Locked`, none of the invoice migration's before.
fn check_tracker(
    client: &mut impl GenericClient,
    stage: Stage,
    out: &mut Vec<String>,
) -> PgResult<()> {
    let tracker: Vec<i32> = client
        .query(
            "SELECT version FROM migration_tracker ORDER BY version",
            &[],
        )
        .map_err(sql(ROWS_ACT))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ok = match stage {
        Stage::Locked => tracker == (1..=TRACKER_VERSION).collect::<Vec<_>>(),
        Stage::Migrating => tracker.iter().all(|v| (1..TRACKER_VERSION).contains(v)),
    };
    if !ok {
        out.push(format!(
            "migration_tracker holds versions {tracker:?}, lnd needs {} at this stage",
            match stage {
                Stage::Locked => format!("1 to {TRACKER_VERSION}"),
                Stage::Migrating => format!("none above {}", TRACKER_VERSION - 1),
            }
        ));
    }
    Ok(())
}

/// `invoice_sequences`: only `settle_index`, at the KV store's value.
fn check_sequences(
    client: &mut impl GenericClient,
    settle_index: u64,
    out: &mut Vec<String>,
) -> PgResult<()> {
    let sequences: Vec<(String, i64)> = client
        .query(
            "SELECT name, current_value FROM invoice_sequences ORDER BY name",
            &[],
        )
        .map_err(sql(ROWS_ACT))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if sequences != [("settle_index".to_owned(), settle_index as i64)] {
        out.push(format!(
            "invoice_sequences holds {sequences:?}, lnd needs only settle_index = {settle_index} (the KV store's settle index)"
        ));
    }
    Ok(())
}

/// lnd's seed rows of `invoice_event_types`.
fn check_event_types(client: &mut impl GenericClient, out: &mut Vec<String>) -> PgResult<()> {
    let types: Vec<(i64, String)> = client
        .query(
            "SELECT id, description FROM invoice_event_types ORDER BY id",
            &[],
        )
        .map_err(sql(ROWS_ACT))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(i64, String)> = EVENT_TYPES
        .iter()
        .map(|(i, d)| (*i, (*d).to_owned()))
        .collect();
    if types != want {
        out.push(format!(
            "invoice_event_types holds {types:?}, lnd seeds {want:?}"
        ));
    }
    Ok(())
}

/// The tables lnd's migration leaves empty.
fn check_empty_tables(client: &mut impl GenericClient, out: &mut Vec<String>) -> PgResult<()> {
    for table in EMPTY_TABLES {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(sql(ROWS_ACT))?
            .get(0);
        if n != 0 {
            out.push(format!(
                "{table} holds {n} rows, lnd's migration leaves it empty"
            ));
        }
    }
    Ok(())
}

/// Everything lnd needs of the database at `stage` besides the invoices'
/// own rows: the structure ([`Schema::read_native`] against
/// [`Schema::expected`]) and the bookkeeping rows ([`check_rows`]). One
/// sentence per difference, each naming the object.
pub fn check(
    client: &mut postgres::Client,
    stage: Stage,
    settle_index: u64,
) -> PgResult<Vec<String>> {
    let want = Schema::expected(client)?;
    let mut out = Schema::read_native(client)?.differences(&want);
    match check_rows(client, stage, settle_index) {
        Ok(rows) => out.extend(rows),
        // A missing or reshaped bookkeeping table is already named above.
        Err(_) if !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// What reading the catalog was doing, for its errors.
const READ_ACT: &str = "reading the schema from pg_catalog";

/// The columns, in order, with type, NOT NULL and default.
fn table_columns(
    client: &mut impl GenericClient,
    oid: u32,
    unqualify: &dyn Fn(&str) -> String,
    items: &mut BTreeSet<String>,
) -> PgResult<()> {
    let cols = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid)
             FROM pg_attribute a
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&oid],
        )
        .map_err(sql(READ_ACT))?;
    for (i, r) in cols.iter().enumerate() {
        let default: Option<String> = r.get(3);
        items.insert(format!(
            "column #{} {} {}{}{}",
            i + 1,
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            if r.get(2) { " NOT NULL" } else { "" },
            default
                .map(|d| format!(" DEFAULT {}", unqualify(&d)))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

/// The constraints (primary and foreign keys, unique, checks).
fn table_constraints(
    client: &mut impl GenericClient,
    oid: u32,
    unqualify: &dyn Fn(&str) -> String,
    items: &mut BTreeSet<String>,
) -> PgResult<()> {
    let query = "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = $1";
    named_definitions(client, query, "constraint", oid, unqualify, items)
}

/// The indexes, by name and definition.
fn table_indexes(
    client: &mut impl GenericClient,
    oid: u32,
    unqualify: &dyn Fn(&str) -> String,
    items: &mut BTreeSet<String>,
) -> PgResult<()> {
    let query = "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1";
    named_definitions(client, query, "index", oid, unqualify, items)
}

/// Adds `"<kind> <name> <definition>"` for every (name, definition) row
/// `query` gives for the table `oid`.
fn named_definitions(
    client: &mut impl GenericClient,
    query: &str,
    kind: &str,
    oid: u32,
    unqualify: &dyn Fn(&str) -> String,
    items: &mut BTreeSet<String>,
) -> PgResult<()> {
    for r in client.query(query, &[&oid]).map_err(sql(READ_ACT))? {
        items.insert(format!(
            "{kind} {} {}",
            r.get::<_, String>(0),
            unqualify(&r.get::<_, String>(1))
        ));
    }
    Ok(())
}

/// The sequences the table's columns own (`BIGSERIAL`).
fn table_sequences(
    client: &mut impl GenericClient,
    oid: u32,
    items: &mut BTreeSet<String>,
) -> PgResult<()> {
    let seqs = client
        .query(
            "SELECT s.relname::text, a.attname::text, format_type(q.seqtypid, NULL),
                    q.seqstart, q.seqincrement, q.seqmin, q.seqmax, q.seqcache, q.seqcycle
             FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_sequence q ON q.seqrelid = s.oid
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.refobjid = $1 AND d.classid = 'pg_class'::regclass
               AND d.deptype IN ('a', 'i')",
            &[&oid],
        )
        .map_err(sql(READ_ACT))?;
    for r in seqs {
        items.insert(format!(
            "sequence {} owned by {} as {} start {} increment {} min {} max {} cache {}{}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, i64>(5),
            r.get::<_, i64>(6),
            r.get::<_, i64>(7),
            if r.get(8) { " cycle" } else { "" },
        ));
    }
    Ok(())
}

/// The triggers.
fn table_triggers(
    client: &mut impl GenericClient,
    oid: u32,
    items: &mut BTreeSet<String>,
) -> PgResult<()> {
    let trig = client
        .query(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal",
            &[&oid],
        )
        .map_err(sql(READ_ACT))?;
    for r in trig {
        items.insert(format!("trigger {}", r.get::<_, String>(0)));
    }
    Ok(())
}
