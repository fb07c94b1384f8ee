//! A test-only emulation of lnd on PostgreSQL (`db.backend=postgres`,
//! `db.use-native-sql=true`): what lnd does to its database at start-up,
//! the invoice queries its SQL invoice store runs afterwards, and its KV
//! invoice store's tombstone check. Written from lnd's source at
//! [`super::lnd::LND_COMMIT`], independent of oneway's schema code
//! (`src/postgres/lnd_schema.rs`):
//!
//! * `sqldb/postgres.go`: `NewPostgresStore` creates `migration_tracker`
//!   (Go text, no replacement) before anything else; `ExecuteMigrations`
//!   serves the schema files through `postgresSchemaReplacements`
//!   ([`REPLACEMENTS`]) to golang-migrate's pgx/v5 driver;
//! * `sqldb/migrations.go`: `ApplyMigrations` (the base version from
//!   `migration_tracker`, else golang-migrate's; the v0.19.0-rc1 repair;
//!   per entry above the base, `Migrate(schema_version)` then, in one
//!   transaction, the code migration and the tracker row);
//! * golang-migrate v4.17 `migrate.go` and `database/pgx/v5`: the version
//!   table `schema_migrations (version bigint not null primary key, dirty
//!   boolean not null)` in the current schema, `Version` (first row, none =
//!   -1), `SetVersion` (`TRUNCATE` and one `INSERT`, in a transaction), a
//!   dirty version refused, each file run as one multi-statement `Exec`
//!   (one implicit transaction) between "dirty" and "clean". The advisory
//!   lock golang-migrate takes is not emulated (one session at a time here);
//! * `sqldb/sqlc/{invoices,amp_invoices,invoice_events,migration}.sql.go`:
//!   the queries as sqlc generated them for Postgres ([`QUERIES`]), used
//!   the way `invoices/sql_store.go` uses them;
//! * `channeldb/invoices.go` `GetInvoiceBucketTombstone` over
//!   `kvdb/sqlbase` (`ReadBucket`, `Get`), checked by `config_builder.go`
//!   when lnd starts with the KV invoice store ([`kv_start`]).
//!
//! The schema files are the SQLite-dialect transcriptions of
//! [`super::lnd::SCHEMA_FILES`] (stand-ins for the files that touch no
//! invoice object), given lnd's replacements here.

use std::collections::BTreeMap;
use std::time::SystemTime;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Transaction};

pub use super::lnd::{
    migrations_until, CodeMigration, Entry, StartUpLog, Step, KV_INVOICE_MIGRATION, MIGRATIONS,
    OWN_MIGRATION_FAILURE, SCHEMA_FILES,
};

/// lnd's `postgresSchemaReplacements` (`sqldb/postgres.go`), restated. lnd
/// iterates a Go map; no replacement's output contains another's search
/// text, so any order gives the same file.
pub const REPLACEMENTS: [(&str, &str); 3] = [
    ("BLOB", "BYTEA"),
    ("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY"),
    (" TIMESTAMP", " TIMESTAMP WITHOUT TIME ZONE"),
];

/// A schema file as lnd's `replacerFS` serves it on Postgres.
pub fn postgres_form(sqlite_dialect: &str) -> String {
    let mut s = sqlite_dialect.to_owned();
    for (from, to) in REPLACEMENTS {
        s = s.replace(from, to);
    }
    s
}

/// `NewPostgresStore`'s tracker creation (Go code: not replaced).
pub const TRACKER_BOOT: &str = "
	CREATE TABLE IF NOT EXISTS migration_tracker (
		version INTEGER UNIQUE NOT NULL,
		migration_time TIMESTAMP NOT NULL
	);";

/// The KV invoice store's tombstone key (`channeldb/invoices.go`).
pub const TOMBSTONE_KEY: &[u8] = b"invoice-tombstone";

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------

/// The caller's code migrations: run inside lnd's transaction, before the
/// tracker row; an error aborts the start-up (the transaction rolls back).
pub type PgHook<'a> = &'a mut dyn FnMut(CodeMigration, &mut Transaction<'_>) -> Result<(), String>;

/// Every code migration does nothing.
pub fn no_op(_: CodeMigration, _: &mut Transaction<'_>) -> Result<(), String> {
    Ok(())
}

/// For a store oneway migrated: lnd reaching its own invoice migration is a
/// failure; the graph and payments migrations do nothing.
pub fn refuse_invoice_migration(c: CodeMigration, _: &mut Transaction<'_>) -> Result<(), String> {
    match c {
        CodeMigration::Invoices => Err(OWN_MIGRATION_FAILURE.to_owned()),
        _ => Ok(()),
    }
}

/// The start-up of the lnd whose list ends at its invoice migration
/// (tracker version 7), the one oneway records its result for; lnd's own
/// invoice migration is refused. On a store oneway migrated it does
/// nothing.
pub fn start_up(client: &mut Client) -> Result<StartUpLog, String> {
    start_up_with(
        client,
        migrations_until(KV_INVOICE_MIGRATION),
        &mut refuse_invoice_migration,
    )
}

/// The start-up of lnd at [`super::lnd::LND_COMMIT`] (the whole list, tracker 1-18);
/// lnd's own invoice migration is refused.
pub fn start_up_latest(client: &mut Client) -> Result<StartUpLog, String> {
    start_up_with(client, MIGRATIONS, &mut refuse_invoice_migration)
}

/// lnd's `NewPostgresStore` then `ApplyMigrations` over `list` (a prefix
/// of [`MIGRATIONS`]).
pub fn start_up_with(
    client: &mut Client,
    list: &[Entry],
    hook: PgHook<'_>,
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
    client
        .batch_execute(TRACKER_BOOT)
        .map_err(|e| format!("error creating migration tracker: {}", db_err(&e)))?;
    let (mut log, current) = base_version(client)?;
    for e in list {
        if i64::from(e.version) <= current {
            continue;
        }
        ensure_version_table(client)?;
        gm_migrate(client, e.schema_version, &mut log.steps).map_err(|err| {
            format!(
                "error executing schema migrations to target version {}: {err} (log: {:?})",
                e.schema_version, log.steps
            )
        })?;
        apply_entry(client, e, hook, &log.steps)?;
        if let Some(c) = e.code {
            log.steps.push(Step::Code(e.version, c));
        }
        log.steps.push(Step::Tracker(e.version));
    }
    Ok(log)
}

/// `GetDatabaseVersion`, else golang-migrate's version; the v0.19.0-rc1
/// repair when the tracker says 2.
fn base_version(client: &mut Client) -> Result<(StartUpLog, i64), String> {
    let tracked: Option<i32> = client
        .query_opt(query("GetDatabaseVersion"), &[])
        .map_err(|e| format!("error getting current database version: {}", db_err(&e)))?
        .map(|r| r.get(0));
    let mut log = StartUpLog {
        base_version: 0,
        base_source: "migration_tracker",
        steps: Vec::new(),
    };
    let current = match tracked {
        Some(v) => i64::from(v),
        None => {
            ensure_version_table(client)?;
            log.base_source = "schema_migrations";
            gm_version(client)?.0
        }
    };
    log.base_version = current;
    if tracked == Some(2) {
        ensure_version_table(client)?;
        if gm_version(client)? == (3, true) {
            gm_set_version(client, 4, false)?;
            log.steps.push(Step::ForcedSchema4);
        }
    }
    Ok((log, current))
}

/// One entry's transaction: its code migration, then `SetMigration`.
fn apply_entry(
    client: &mut Client,
    e: &Entry,
    hook: PgHook<'_>,
    steps: &[Step],
) -> Result<(), String> {
    let mut tx = client
        .transaction()
        .map_err(|err| format!("begin: {}", db_err(&err)))?;
    if let Some(c) = e.code {
        hook(c, &mut tx).map_err(|err| {
            format!(
                "error applying migration '{}' (version {}) to schema version {}: {err} (log: {steps:?})",
                e.name, e.version, e.schema_version
            )
        })?;
    }
    let version = i32::try_from(e.version).expect("small version");
    tx.execute(query("SetMigration"), &[&version, &SystemTime::now()])
        .map_err(|err| {
            format!(
                "error setting migration version {}: {}",
                e.version,
                db_err(&err)
            )
        })?;
    tx.commit()
        .map_err(|err| format!("commit: {}", db_err(&err)))
}

/// golang-migrate's pgx/v5 `ensureVersionTable`: created in the current
/// schema (`public` under lnd's DSN) unless `information_schema` lists it.
fn ensure_version_table(client: &mut Client) -> Result<(), String> {
    let n: i64 = client
        .query_one(
            "SELECT COUNT(1) FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name = 'schema_migrations' LIMIT 1",
            &[],
        )
        .map_err(|e| format!("schema_migrations: {}", db_err(&e)))?
        .get(0);
    if n == 1 {
        return Ok(());
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS \"public\".\"schema_migrations\" \
             (version bigint not null primary key, dirty boolean not null)",
        )
        .map_err(|e| format!("schema_migrations: {}", db_err(&e)))
}

/// golang-migrate's `Version()`: the first row; (-1, false) when there is
/// none or no table.
pub fn gm_version(client: &mut impl GenericClient) -> Result<(i64, bool), String> {
    match client.query_opt(
        "SELECT version, dirty FROM \"public\".\"schema_migrations\" LIMIT 1",
        &[],
    ) {
        Ok(Some(r)) => Ok((r.get(0), r.get(1))),
        Ok(None) => Ok((-1, false)),
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => Ok((-1, false)),
        Err(e) => Err(format!("schema_migrations: {}", db_err(&e))),
    }
}

/// golang-migrate's `SetVersion`: emptied and one row, in a transaction.
fn gm_set_version(client: &mut Client, version: i64, dirty: bool) -> Result<(), String> {
    let mut tx = client
        .transaction()
        .map_err(|e| format!("transaction start failed: {}", db_err(&e)))?;
    tx.batch_execute("TRUNCATE \"public\".\"schema_migrations\"")
        .map_err(|e| format!("schema_migrations: {}", db_err(&e)))?;
    if version >= 0 || (version == -1 && dirty) {
        tx.execute(
            "INSERT INTO \"public\".\"schema_migrations\" (version, dirty) VALUES ($1, $2)",
            &[&version, &dirty],
        )
        .map_err(|e| format!("schema_migrations: {}", db_err(&e)))?;
    }
    tx.commit()
        .map_err(|e| format!("transaction commit failed: {}", db_err(&e)))
}

fn file(number: i64) -> Option<&'static super::lnd::SchemaFile> {
    SCHEMA_FILES.iter().find(|f| i64::from(f.number) == number)
}

/// golang-migrate's `Migrate(target)`.
fn gm_migrate(client: &mut Client, target: u32, steps: &mut Vec<Step>) -> Result<(), String> {
    let (current, dirty) = gm_version(client)?;
    if dirty {
        return Err(format!(
            "Dirty database version {current}. Fix and force version."
        ));
    }
    let target = i64::from(target);
    for v in [current, target] {
        if v >= 0 && file(v).is_none() {
            return Err(format!(
                "no migration found for version {v}: file does not exist"
            ));
        }
    }
    let mut from = current;
    while from < target {
        let next = SCHEMA_FILES
            .iter()
            .find(|f| i64::from(f.number) > from)
            .expect("the target exists");
        gm_step(client, next.up, i64::from(next.number))?;
        steps.push(Step::SchemaUp(next.number));
        from = i64::from(next.number);
    }
    while from > target && from >= 0 {
        let f = file(from).expect("checked");
        let to = SCHEMA_FILES
            .iter()
            .rev()
            .find(|p| i64::from(p.number) < from)
            .map_or(-1, |p| i64::from(p.number));
        gm_step(client, f.down, to)?;
        steps.push(Step::SchemaDown(f.number));
        from = to;
    }
    Ok(())
}

/// One step: dirty at `to`, the file as one `Exec` (one implicit
/// transaction on Postgres), clean.
fn gm_step(client: &mut Client, body: &str, to: i64) -> Result<(), String> {
    gm_set_version(client, to, true)?;
    client
        .batch_execute(&postgres_form(body))
        .map_err(|e| format!("migration failed: {}", db_err(&e)))?;
    gm_set_version(client, to, false)
}

/// The server's message (the driver's `Display` says only "db error").
pub fn db_err(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{} ({}{})",
            d.message(),
            d.code().code(),
            d.constraint()
                .map(|c| format!(", constraint {c}"))
                .unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// lnd's invoice queries, as sqlc generated them for Postgres
// ---------------------------------------------------------------------------

/// `sqldb/sqlc/{invoices,amp_invoices,invoice_events,migration}.sql.go`,
/// whitespace folded, `SELECT` lists as sqlc expanded them.
pub const QUERIES: &[(&str, &str)] = &[
    // invoices.sql
    ("InsertInvoice", "INSERT INTO invoices (hash, preimage, memo, amount_msat, cltv_delta, expiry, payment_addr, payment_request, payment_request_hash, state, amount_paid_msat, is_amp, is_hodl, is_keysend, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id"),
    ("InsertMigratedInvoice", "INSERT INTO invoices (hash, preimage, settle_index, settled_at, memo, amount_msat, cltv_delta, expiry, payment_addr, payment_request, payment_request_hash, state, amount_paid_msat, is_amp, is_hodl, is_keysend, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id"),
    ("InsertInvoiceFeature", "INSERT INTO invoice_features (invoice_id, feature) VALUES ($1, $2)"),
    ("GetInvoiceFeatures", "SELECT feature, invoice_id FROM invoice_features WHERE invoice_id = $1"),
    ("GetInvoiceByHash", "SELECT i.id, i.hash, i.preimage, i.settle_index, i.settled_at, i.memo, i.amount_msat, i.cltv_delta, i.expiry, i.payment_addr, i.payment_request, i.payment_request_hash, i.state, i.amount_paid_msat, i.is_amp, i.is_hodl, i.is_keysend, i.created_at FROM invoices i WHERE i.hash = $1"),
    ("GetInvoiceByAddr", "SELECT i.id, i.hash, i.preimage, i.settle_index, i.settled_at, i.memo, i.amount_msat, i.cltv_delta, i.expiry, i.payment_addr, i.payment_request, i.payment_request_hash, i.state, i.amount_paid_msat, i.is_amp, i.is_hodl, i.is_keysend, i.created_at FROM invoices i WHERE i.payment_addr = $1"),
    ("GetInvoiceBySetID", "SELECT i.id, i.hash, i.preimage, i.settle_index, i.settled_at, i.memo, i.amount_msat, i.cltv_delta, i.expiry, i.payment_addr, i.payment_request, i.payment_request_hash, i.state, i.amount_paid_msat, i.is_amp, i.is_hodl, i.is_keysend, i.created_at FROM invoices i INNER JOIN amp_sub_invoices a ON i.id = a.invoice_id AND a.set_id = $1"),
    ("FetchPendingInvoices", "SELECT invoices.id, invoices.hash, invoices.preimage, invoices.settle_index, invoices.settled_at, invoices.memo, invoices.amount_msat, invoices.cltv_delta, invoices.expiry, invoices.payment_addr, invoices.payment_request, invoices.payment_request_hash, invoices.state, invoices.amount_paid_msat, invoices.is_amp, invoices.is_hodl, invoices.is_keysend, invoices.created_at FROM invoices WHERE state IN (0, 3) AND id > $1 ORDER BY id ASC LIMIT $2"),
    ("FilterInvoicesBySettleIndex", "SELECT invoices.id, invoices.hash, invoices.preimage, invoices.settle_index, invoices.settled_at, invoices.memo, invoices.amount_msat, invoices.cltv_delta, invoices.expiry, invoices.payment_addr, invoices.payment_request, invoices.payment_request_hash, invoices.state, invoices.amount_paid_msat, invoices.is_amp, invoices.is_hodl, invoices.is_keysend, invoices.created_at FROM invoices WHERE settle_index >= $1 AND id > $2 ORDER BY id ASC LIMIT $3"),
    ("FilterInvoicesByAddIndex", "SELECT invoices.id, invoices.hash, invoices.preimage, invoices.settle_index, invoices.settled_at, invoices.memo, invoices.amount_msat, invoices.cltv_delta, invoices.expiry, invoices.payment_addr, invoices.payment_request, invoices.payment_request_hash, invoices.state, invoices.amount_paid_msat, invoices.is_amp, invoices.is_hodl, invoices.is_keysend, invoices.created_at FROM invoices WHERE id >= $1 ORDER BY id ASC LIMIT $2"),
    ("FilterInvoicesForward", "SELECT invoices.id, invoices.hash, invoices.preimage, invoices.settle_index, invoices.settled_at, invoices.memo, invoices.amount_msat, invoices.cltv_delta, invoices.expiry, invoices.payment_addr, invoices.payment_request, invoices.payment_request_hash, invoices.state, invoices.amount_paid_msat, invoices.is_amp, invoices.is_hodl, invoices.is_keysend, invoices.created_at FROM invoices WHERE id >= $1 AND (NOT $2 OR state IN (0, 3)) AND created_at >= $3 AND created_at < $4 ORDER BY id ASC LIMIT $5"),
    ("FilterInvoicesReverse", "SELECT invoices.id, invoices.hash, invoices.preimage, invoices.settle_index, invoices.settled_at, invoices.memo, invoices.amount_msat, invoices.cltv_delta, invoices.expiry, invoices.payment_addr, invoices.payment_request, invoices.payment_request_hash, invoices.state, invoices.amount_paid_msat, invoices.is_amp, invoices.is_hodl, invoices.is_keysend, invoices.created_at FROM invoices WHERE id <= $1 AND (NOT $2 OR state IN (0, 3)) AND created_at >= $3 AND created_at < $4 ORDER BY id DESC LIMIT $5"),
    ("UpdateInvoiceState", "UPDATE invoices SET state = $2, preimage = COALESCE(preimage, $3), settle_index = COALESCE(settle_index, $4), settled_at = COALESCE(settled_at, $5) WHERE id = $1"),
    ("UpdateInvoiceAmountPaid", "UPDATE invoices SET amount_paid_msat = $2 WHERE id = $1"),
    ("NextInvoiceSettleIndex", "UPDATE invoice_sequences SET current_value = current_value + 1 WHERE name = 'settle_index' RETURNING current_value"),
    ("DeleteInvoice", "DELETE FROM invoices WHERE (id = $1 OR $1 IS NULL) AND (hash = $2 OR $2 IS NULL) AND (settle_index = $3 OR $3 IS NULL) AND (payment_addr = $4 OR $4 IS NULL)"),
    ("DeleteCanceledInvoices", "DELETE FROM invoices WHERE state = 2"),
    ("InsertInvoiceHTLC", "INSERT INTO invoice_htlcs (htlc_id, chan_id, amount_msat, total_mpp_msat, accept_height, accept_time, expiry_height, state, resolve_time, invoice_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id"),
    ("GetInvoiceHTLCs", "SELECT id, chan_id, htlc_id, amount_msat, total_mpp_msat, accept_height, accept_time, expiry_height, state, resolve_time, invoice_id FROM invoice_htlcs WHERE invoice_id = $1"),
    ("UpdateInvoiceHTLC", "UPDATE invoice_htlcs SET state=$4, resolve_time=$5 WHERE htlc_id = $1 AND chan_id = $2 AND invoice_id = $3"),
    ("UpdateInvoiceHTLCs", "UPDATE invoice_htlcs SET state=$2, resolve_time=$3 WHERE invoice_id = $1 AND resolve_time IS NULL"),
    ("InsertInvoiceHTLCCustomRecord", "INSERT INTO invoice_htlc_custom_records (key, value, htlc_id) VALUES ($1, $2, $3)"),
    ("GetInvoiceHTLCCustomRecords", "SELECT ihcr.htlc_id, key, value FROM invoice_htlcs ih JOIN invoice_htlc_custom_records ihcr ON ih.id=ihcr.htlc_id WHERE ih.invoice_id = $1"),
    ("InsertKVInvoiceKeyAndAddIndex", "INSERT INTO invoice_payment_hashes (id, add_index) VALUES ($1, $2)"),
    ("SetKVInvoicePaymentHash", "UPDATE invoice_payment_hashes SET hash = $2 WHERE id = $1"),
    ("GetKVInvoicePaymentHashByAddIndex", "SELECT hash FROM invoice_payment_hashes WHERE add_index = $1"),
    ("ClearKVInvoiceHashIndex", "DELETE FROM invoice_payment_hashes"),
    // amp_invoices.sql
    ("UpsertAMPSubInvoice", "INSERT INTO amp_sub_invoices (set_id, state, created_at, invoice_id) VALUES ($1, $2, $3, $4) ON CONFLICT (set_id, invoice_id) DO NOTHING"),
    ("GetAMPInvoiceID", "SELECT invoice_id FROM amp_sub_invoices WHERE set_id = $1"),
    ("UpdateAMPSubInvoiceState", "UPDATE amp_sub_invoices SET state = $2, settle_index = COALESCE(settle_index, $3), settled_at = COALESCE(settled_at, $4) WHERE set_id = $1"),
    ("InsertAMPSubInvoiceHTLC", "INSERT INTO amp_sub_invoice_htlcs (invoice_id, set_id, htlc_id, root_share, child_index, hash, preimage) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
    ("FetchAMPSubInvoices", "SELECT set_id, state, created_at, settled_at, settle_index, invoice_id FROM amp_sub_invoices WHERE invoice_id = $1 AND (set_id = $2 OR $2 IS NULL)"),
    ("FetchAMPSubInvoiceHTLCs", "SELECT amp.set_id, amp.root_share, amp.child_index, amp.hash, amp.preimage, invoice_htlcs.id, invoice_htlcs.chan_id, invoice_htlcs.htlc_id, invoice_htlcs.amount_msat, invoice_htlcs.total_mpp_msat, invoice_htlcs.accept_height, invoice_htlcs.accept_time, invoice_htlcs.expiry_height, invoice_htlcs.state, invoice_htlcs.resolve_time, invoice_htlcs.invoice_id FROM amp_sub_invoice_htlcs amp INNER JOIN invoice_htlcs ON amp.htlc_id = invoice_htlcs.id WHERE amp.invoice_id = $1 AND (set_id = $2 OR $2 IS NULL)"),
    ("FetchSettledAMPSubInvoices", "SELECT a.set_id, a.settle_index as amp_settle_index, a.settled_at as amp_settled_at, i.id, i.hash, i.preimage, i.settle_index, i.settled_at, i.memo, i.amount_msat, i.cltv_delta, i.expiry, i.payment_addr, i.payment_request, i.payment_request_hash, i.state, i.amount_paid_msat, i.is_amp, i.is_hodl, i.is_keysend, i.created_at FROM amp_sub_invoices a INNER JOIN invoices i ON a.invoice_id = i.id WHERE (a.settle_index >= $1 OR $1 IS NULL) AND (a.settle_index <= $2 OR $2 IS NULL)"),
    ("UpdateAMPSubInvoiceHTLCPreimage", "UPDATE amp_sub_invoice_htlcs AS a SET preimage = $5 WHERE a.invoice_id = $1 AND a.set_id = $2 AND a.htlc_id = (SELECT id FROM invoice_htlcs AS i WHERE i.chan_id = $3 AND i.htlc_id = $4)"),
    ("InsertAMPSubInvoice", "INSERT INTO amp_sub_invoices (set_id, state, created_at, settled_at, settle_index, invoice_id) VALUES ($1, $2, $3, $4, $5, $6)"),
    // invoice_events.sql
    ("OnInvoiceCreated", "INSERT INTO invoice_events (added_at, event_type, invoice_id) VALUES ($1, 0, $2)"),
    ("OnInvoiceCanceled", "INSERT INTO invoice_events (added_at, event_type, invoice_id) VALUES ($1, 1, $2)"),
    ("OnInvoiceSettled", "INSERT INTO invoice_events (added_at, event_type, invoice_id) VALUES ($1, 2, $2)"),
    ("OnAMPSubInvoiceCreated", "INSERT INTO invoice_events (added_at, event_type, invoice_id, set_id) VALUES ($1, 3, $2, $3)"),
    ("OnAMPSubInvoiceCanceled", "INSERT INTO invoice_events (added_at, event_type, invoice_id, set_id) VALUES ($1, 4, $2, $3)"),
    ("OnAMPSubInvoiceSettled", "INSERT INTO invoice_events (added_at, event_type, invoice_id, set_id) VALUES ($1, 5, $2, $3)"),
    // migration.sql
    ("SetMigration", "INSERT INTO migration_tracker (version, migration_time) VALUES ($1, $2)"),
    ("GetMigration", "SELECT migration_time FROM migration_tracker WHERE version = $1"),
    ("GetDatabaseVersion", "SELECT version FROM migration_tracker ORDER BY version DESC LIMIT 1"),
];

/// The text of the query lnd calls `name`.
pub fn query(name: &str) -> &'static str {
    QUERIES
        .iter()
        .find(|q| q.0 == name)
        .map(|q| q.1)
        .unwrap_or_else(|| panic!("unknown lnd query {name}"))
}

// ---------------------------------------------------------------------------
// The dump
// ---------------------------------------------------------------------------

/// True for a table lnd's native store does not own here: the KV tables
/// (`<prefix>_kv`) and oneway's bookkeeping (`oneway*`).
fn not_native(table: &str) -> bool {
    table.ends_with("_kv") || table.starts_with("oneway")
}

/// Columns whose values are secrets: shown as a digest.
const SECRET_COLUMNS: [&str; 2] = ["preimage", "root_share"];

/// Every table, view and sequence of schema `public` except the KV tables
/// and oneway's: structure (columns in order with type, NOT NULL and
/// default; constraints; indexes; triggers), every row (sorted; preimages
/// and AMP root shares as SHA-256 digests), and each sequence's position.
/// Includes `schema_migrations` and `migration_tracker`. Two dumps are
/// equal exactly when lnd could not tell the databases apart.
pub fn dump(client: &mut impl GenericClient) -> Result<String, String> {
    let sql = |e: postgres::Error| format!("dump: {}", db_err(&e));
    let rels = client
        .query(
            "SELECT c.oid, c.relname::text, c.relkind::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
             ORDER BY c.relname",
            &[],
        )
        .map_err(sql)?;
    let mut out = String::new();
    for r in rels {
        let (oid, name, kind): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        if not_native(&name) {
            continue;
        }
        out.push_str(&format!("{kind} {name}\n"));
        dump_structure(client, oid, &mut out)?;
        if kind == "r" || kind == "p" {
            dump_rows(client, oid, &name, &mut out)?;
        }
    }
    dump_sequences(client, &mut out)?;
    Ok(out)
}

fn dump_structure(
    client: &mut impl GenericClient,
    oid: u32,
    out: &mut String,
) -> Result<(), String> {
    let sql = |e: postgres::Error| format!("dump: {}", db_err(&e));
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
        .map_err(sql)?;
    for (i, c) in cols.iter().enumerate() {
        let default: Option<String> = c.get(3);
        out.push_str(&format!(
            "  column {} {} {}{}{}\n",
            i + 1,
            c.get::<_, String>(0),
            c.get::<_, String>(1),
            if c.get(2) { " NOT NULL" } else { "" },
            default.map(|d| format!(" DEFAULT {d}")).unwrap_or_default()
        ));
    }
    for (what, q) in [
        (
            "constraint",
            "SELECT conname::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = $1 ORDER BY 1",
        ),
        (
            "index",
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1 ORDER BY 1",
        ),
        (
            "trigger",
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger
             WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY 1",
        ),
        (
            "view",
            "SELECT pg_get_viewdef($1::oid) WHERE (SELECT relkind FROM pg_class WHERE oid = $1) IN ('v', 'm')",
        ),
    ] {
        for r in client.query(q, &[&oid]).map_err(sql)? {
            out.push_str(&format!("  {what} {}\n", r.get::<_, String>(0)));
        }
    }
    Ok(())
}

fn dump_rows(
    client: &mut impl GenericClient,
    oid: u32,
    name: &str,
    out: &mut String,
) -> Result<(), String> {
    let sql = |e: postgres::Error| format!("dump of {name}: {}", db_err(&e));
    let cols: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .map_err(sql)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let list: Vec<String> = cols
        .iter()
        .map(|c| {
            let q = format!("\"{}\"", c.replace('"', "\"\""));
            if SECRET_COLUMNS.contains(&c.as_str()) {
                format!("'sha256:' || encode(sha256({q}), 'hex')")
            } else {
                q
            }
        })
        .collect();
    let q = format!(
        "SELECT r FROM (SELECT ROW({})::text AS r FROM \"{}\") AS t ORDER BY r COLLATE \"C\"",
        list.join(", "),
        name.replace('"', "\"\"")
    );
    for r in client.query(&q, &[]).map_err(sql)? {
        out.push_str(&format!("  row {}\n", r.get::<_, String>(0)));
    }
    Ok(())
}

/// Sequences of schema `public` not owned by a table left out of the dump:
/// (name, owner `table.column` or `-`).
fn sequences(client: &mut impl GenericClient) -> Result<Vec<(String, String)>, String> {
    let rows = client
        .query(
            "SELECT s.relname::text,
                    coalesce((SELECT t.relname::text || '.' || a.attname::text
                              FROM pg_depend d
                              JOIN pg_class t ON t.oid = d.refobjid
                              JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
                              WHERE d.objid = s.oid AND d.classid = 'pg_class'::regclass
                                AND d.deptype IN ('a', 'i') LIMIT 1), '-')
             FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
             WHERE n.nspname = 'public' AND s.relkind = 'S' ORDER BY 1",
            &[],
        )
        .map_err(|e| format!("sequences: {}", db_err(&e)))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(_, owner)| !not_native(owner.split('.').next().unwrap_or("")))
        .collect())
}

/// One sequence's position: `(last_value, is_called)`.
fn position(client: &mut impl GenericClient, seq: &str) -> Result<(i64, bool), String> {
    let r = client
        .query_one(
            &format!(
                "SELECT last_value, is_called FROM \"public\".\"{}\"",
                seq.replace('"', "\"\"")
            ),
            &[],
        )
        .map_err(|e| format!("sequence {seq}: {}", db_err(&e)))?;
    Ok((r.get(0), r.get(1)))
}

fn dump_sequences(client: &mut impl GenericClient, out: &mut String) -> Result<(), String> {
    for (seq, owner) in sequences(client)? {
        let def = client
            .query_one(
                "SELECT data_type::text, start_value, increment_by, max_value, cycle
                 FROM pg_sequences WHERE schemaname = 'public' AND sequencename = $1",
                &[&seq],
            )
            .map_err(|e| format!("sequence {seq}: {}", db_err(&e)))?;
        let (last, called) = position(client, &seq)?;
        out.push_str(&format!(
            "sequence {seq} owned by {owner} as {} start {} by {} max {} cycle {} at {last} called {called}\n",
            def.get::<_, String>(0),
            def.get::<_, i64>(1),
            def.get::<_, i64>(2),
            def.get::<_, i64>(3),
            def.get::<_, bool>(4),
        ));
    }
    Ok(())
}

/// Every sequence's position, to put back with [`restore_sequences`]:
/// `nextval` is not undone by a rollback.
pub fn save_sequences(client: &mut impl GenericClient) -> Result<Vec<(String, i64, bool)>, String> {
    let mut out = Vec::new();
    for (seq, _) in sequences(client)? {
        let (last, called) = position(client, &seq)?;
        out.push((seq, last, called));
    }
    Ok(out)
}

/// Puts sequences back where [`save_sequences`] found them.
pub fn restore_sequences(
    client: &mut impl GenericClient,
    saved: &[(String, i64, bool)],
) -> Result<(), String> {
    for (seq, last, called) in saved {
        let name = format!("\"public\".\"{}\"", seq.replace('"', "\"\""));
        client
            .execute(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&name, last, called],
            )
            .map_err(|e| format!("restoring sequence {seq}: {}", db_err(&e)))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Runtime: lnd's reads
// ---------------------------------------------------------------------------

/// Runs `f` in a savepoint of `tx`: kept when it succeeds; rolled back,
/// and its failure recorded as `what: why`, when it fails.
fn step<T>(
    tx: &mut Transaction<'_>,
    out: &mut Vec<String>,
    what: &str,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<T, String>,
) -> Option<T> {
    let mut sp = match tx.transaction() {
        Ok(sp) => sp,
        Err(e) => {
            out.push(format!("{what}: savepoint: {}", db_err(&e)));
            return None;
        }
    };
    match f(&mut sp) {
        Ok(v) => match sp.commit() {
            Ok(()) => Some(v),
            Err(e) => {
                out.push(format!("{what}: release: {}", db_err(&e)));
                None
            }
        },
        Err(why) => {
            out.push(format!("{what}: {why}"));
            let _ = sp.rollback();
            None
        }
    }
}

/// Runs lnd's query `name` and returns its rows.
fn run(
    tx: &mut Transaction<'_>,
    name: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<postgres::Row>, String> {
    tx.query(query(name), params)
        .map_err(|e| format!("lnd's {name} failed: {}", db_err(&e)))
}

/// Runs lnd's query `name` and checks how many rows it returned.
fn expect_rows(
    tx: &mut Transaction<'_>,
    name: &str,
    params: &[&(dyn ToSql + Sync)],
    want: i64,
) -> Result<Vec<postgres::Row>, String> {
    let rows = run(tx, name, params)?;
    if rows.len() as i64 != want {
        return Err(format!(
            "lnd's {name} returned {} rows, the store holds {want}",
            rows.len()
        ));
    }
    Ok(rows)
}

fn count(tx: &mut Transaction<'_>, sql: &str) -> Result<i64, String> {
    tx.query_one(sql, &[])
        .map(|r| r.get(0))
        .map_err(|e| format!("{sql}: {}", db_err(&e)))
}

/// Far past and future bounds for lnd's created-at filters.
fn time_bounds() -> (SystemTime, SystemTime) {
    let year = std::time::Duration::from_secs(365 * 86_400);
    (SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH + year * 1000)
}

/// Prepares every query of [`QUERIES`] and runs lnd's reads (lookups by
/// hash, payment address and set id; add-index, settle-index, pending and
/// created-at filters; features, HTLCs, custom records; AMP sub-invoices
/// and their HTLCs; the tracker) against the store's own rows, each
/// checked against what the store holds, in a transaction that is rolled
/// back. Returns the failures; empty = lnd reads this store.
pub fn runtime_checks(client: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for (name, sql) in QUERIES {
        if let Err(e) = client.prepare(sql) {
            out.push(format!("lnd cannot prepare {name}: {}", db_err(&e)));
        }
    }
    let mut tx = match client.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            out.push(format!("begin: {}", db_err(&e)));
            return out;
        }
    };
    step(&mut tx, &mut out, "invoice lookups", reads_invoices);
    step(&mut tx, &mut out, "invoice filters", reads_filters);
    step(&mut tx, &mut out, "AMP lookups", reads_amp);
    step(&mut tx, &mut out, "the migration tracker", |tx| {
        let v: i32 = run(tx, "GetDatabaseVersion", &[])?
            .first()
            .map(|r| r.get(0))
            .ok_or("lnd's GetDatabaseVersion found no version")?;
        if v < KV_INVOICE_MIGRATION as i32 {
            return Err(format!("lnd's GetDatabaseVersion returned {v}"));
        }
        expect_rows(tx, "GetMigration", &[&(KV_INVOICE_MIGRATION as i32)], 1).map(drop)
    });
    if let Err(e) = tx.rollback() {
        out.push(format!("rollback: {}", db_err(&e)));
    }
    out
}

fn reads_invoices(tx: &mut Transaction<'_>) -> Result<(), String> {
    let sample = tx
        .query_opt(
            "SELECT id, hash, payment_addr FROM invoices ORDER BY id LIMIT 1",
            &[],
        )
        .map_err(|e| db_err(&e))?;
    let Some(sample) = sample else {
        return expect_rows(tx, "GetInvoiceByHash", &[&vec![0u8; 32]], 0).map(drop);
    };
    let (id, hash, addr): (i64, Vec<u8>, Option<Vec<u8>>) =
        (sample.get(0), sample.get(1), sample.get(2));
    let got: i64 = expect_rows(tx, "GetInvoiceByHash", &[&hash], 1)?[0].get(0);
    if got != id {
        return Err(format!("GetInvoiceByHash found invoice {got}, not {id}"));
    }
    if let Some(addr) = addr {
        let got: i64 = expect_rows(tx, "GetInvoiceByAddr", &[&addr], 1)?[0].get(0);
        if got != id {
            return Err(format!("GetInvoiceByAddr found invoice {got}, not {id}"));
        }
    }
    let features = count(
        tx,
        &format!("SELECT count(*) FROM invoice_features WHERE invoice_id = {id}"),
    )?;
    expect_rows(tx, "GetInvoiceFeatures", &[&id], features)?;
    let with_htlcs: Option<i64> = tx
        .query_opt("SELECT min(invoice_id) FROM invoice_htlcs", &[])
        .map_err(|e| db_err(&e))?
        .and_then(|r| r.get(0));
    for inv in [Some(id), with_htlcs].into_iter().flatten() {
        let n = count(
            tx,
            &format!("SELECT count(*) FROM invoice_htlcs WHERE invoice_id = {inv}"),
        )?;
        expect_rows(tx, "GetInvoiceHTLCs", &[&inv], n)?;
        let n = count(
            tx,
            &format!(
                "SELECT count(*) FROM invoice_htlc_custom_records r
                 JOIN invoice_htlcs h ON h.id = r.htlc_id WHERE h.invoice_id = {inv}"
            ),
        )?;
        expect_rows(tx, "GetInvoiceHTLCCustomRecords", &[&inv], n)?;
    }
    run(tx, "GetKVInvoicePaymentHashByAddIndex", &[&id]).map(drop)
}

fn reads_filters(tx: &mut Transaction<'_>) -> Result<(), String> {
    let total = count(tx, "SELECT count(*) FROM invoices")?;
    let settled = count(tx, "SELECT count(*) FROM invoices WHERE settle_index >= 1")?;
    let pending = count(tx, "SELECT count(*) FROM invoices WHERE state IN (0, 3)")?;
    let all = i64::MAX;
    let (after, before) = time_bounds();
    expect_rows(tx, "FilterInvoicesByAddIndex", &[&1i64, &all], total)?;
    expect_rows(
        tx,
        "FilterInvoicesBySettleIndex",
        &[&1i64, &0i64, &all],
        settled,
    )?;
    expect_rows(tx, "FetchPendingInvoices", &[&0i64, &all], pending)?;
    for pending_only in [false, true] {
        let want = if pending_only { pending } else { total };
        expect_rows(
            tx,
            "FilterInvoicesForward",
            &[&1i64, &pending_only, &after, &before, &all],
            want,
        )?;
        expect_rows(
            tx,
            "FilterInvoicesReverse",
            &[&all, &pending_only, &after, &before, &all],
            want,
        )?;
    }
    Ok(())
}

fn reads_amp(tx: &mut Transaction<'_>) -> Result<(), String> {
    let sets = count(tx, "SELECT count(*) FROM amp_sub_invoices")?;
    let none_i = None::<i64>;
    expect_rows(tx, "FetchSettledAMPSubInvoices", &[&none_i, &none_i], sets)?;
    let sample = tx
        .query_opt(
            "SELECT set_id, invoice_id FROM amp_sub_invoices ORDER BY invoice_id, set_id LIMIT 1",
            &[],
        )
        .map_err(|e| db_err(&e))?;
    let Some(sample) = sample else {
        return expect_rows(tx, "GetAMPInvoiceID", &[&vec![0u8; 32]], 0).map(drop);
    };
    let (set, inv): (Vec<u8>, i64) = (sample.get(0), sample.get(1));
    let got: i64 = expect_rows(tx, "GetAMPInvoiceID", &[&set], 1)?[0].get(0);
    let by_set: i64 = expect_rows(tx, "GetInvoiceBySetID", &[&set], 1)?[0].get(0);
    if got != inv || by_set != inv {
        return Err(format!(
            "set id lookups found invoices {got} and {by_set}, not {inv}"
        ));
    }
    let n = count(
        tx,
        &format!("SELECT count(*) FROM amp_sub_invoices WHERE invoice_id = {inv}"),
    )?;
    let none_b = None::<Vec<u8>>;
    expect_rows(tx, "FetchAMPSubInvoices", &[&inv, &none_b], n)?;
    expect_rows(tx, "FetchAMPSubInvoices", &[&inv, &Some(set.clone())], 1)?;
    let n = count(
        tx,
        &format!("SELECT count(*) FROM amp_sub_invoice_htlcs WHERE invoice_id = {inv}"),
    )?;
    expect_rows(tx, "FetchAMPSubInvoiceHTLCs", &[&inv, &none_b], n).map(drop)
}

// ---------------------------------------------------------------------------
// Runtime: lnd's writes
// ---------------------------------------------------------------------------

/// A value no store holds by chance: the hash of a label.
fn tag(b: u8) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest([b"oneway lnd contract ".as_slice(), &[b]].concat()).to_vec()
}

const CHAN: &str = "987654321987654321";

/// What lnd's next writes must not collide with.
struct Tops {
    invoice: i64,
    htlc: i64,
    settle: i64,
}

fn tops(tx: &mut Transaction<'_>) -> Result<Tops, String> {
    Ok(Tops {
        invoice: count(tx, "SELECT coalesce(max(id), 0) FROM invoices")?,
        htlc: count(tx, "SELECT coalesce(max(id), 0) FROM invoice_htlcs")?,
        settle: count(
            tx,
            "SELECT greatest(coalesce((SELECT max(settle_index) FROM invoices), 0),
                             coalesce((SELECT max(settle_index) FROM amp_sub_invoices), 0))",
        )?,
    })
}

/// lnd's write path on this store, in a transaction that is rolled back
/// (and the sequences put back, as `nextval` survives a rollback): a new
/// invoice (`InsertInvoice` leaving the id to the `BIGSERIAL`), features,
/// an HTLC with a custom record, settled with `NextInvoiceSettleIndex`;
/// then an AMP invoice with a sub-invoice, its HTLC and preimage, settled;
/// then a delete and the canceled-invoice sweep. Every new id must lie
/// above the copied ones and the next settle index above every stored one
/// and, when the KV table `channeldb_kv` is in the database, equal to its
/// settle-index sequence plus one. Returns the failures.
pub fn write_path(client: &mut Client) -> Vec<String> {
    let expected = match kv_next_settle_index(client, "channeldb_kv") {
        Ok(n) => n,
        Err(e) => return vec![e],
    };
    write_path_expecting(client, expected)
}

/// [`write_path`] with the settle index lnd must hand out next given
/// (`None`: only above every stored one).
pub fn write_path_expecting(client: &mut Client, next_settle: Option<i64>) -> Vec<String> {
    let mut out = Vec::new();
    let saved = match save_sequences(client) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    match client.transaction() {
        Ok(mut tx) => {
            if let Some(top) = step(&mut tx, &mut out, "reading the store's tops", tops) {
                step(&mut tx, &mut out, "lnd adds and settles an invoice", |tx| {
                    plain_invoice(tx, &top, next_settle)
                });
                step(
                    &mut tx,
                    &mut out,
                    "lnd adds and settles an AMP invoice",
                    |tx| amp_invoice(tx, &top),
                );
                step(&mut tx, &mut out, "lnd deletes invoices", delete_invoices);
            }
            if let Err(e) = tx.rollback() {
                out.push(format!("rollback: {}", db_err(&e)));
            }
        }
        Err(e) => out.push(format!("begin: {}", db_err(&e))),
    }
    if let Err(e) = restore_sequences(client, &saved) {
        out.push(e);
    }
    out
}

fn insert_invoice(tx: &mut Transaction<'_>, label: u8, amp: bool, top: i64) -> Result<i64, String> {
    let now = SystemTime::now();
    let expiry: i32 = if amp { 2_592_000 } else { 86_400 };
    let rows = run(
        tx,
        "InsertInvoice",
        &[
            &tag(label),
            &None::<Vec<u8>>,
            &Some("oneway lnd contract"),
            &1_000i64,
            &40i32,
            &expiry,
            &Some(tag(label + 1)),
            &None::<String>,
            &None::<Vec<u8>>,
            &0i16,
            &0i64,
            &amp,
            &false,
            &false,
            &now,
        ],
    )?;
    let id: i64 = rows[0].get(0);
    if id <= top {
        return Err(format!(
            "InsertInvoice gave id {id}, not above the largest stored id {top}"
        ));
    }
    for feature in [9i32, 14] {
        run(tx, "InsertInvoiceFeature", &[&id, &feature])?;
    }
    run(tx, "OnInvoiceCreated", &[&now, &id])?;
    Ok(id)
}

fn insert_htlc(tx: &mut Transaction<'_>, invoice: i64, htlc: i64, top: i64) -> Result<i64, String> {
    let rows = run(
        tx,
        "InsertInvoiceHTLC",
        &[
            &htlc,
            &CHAN,
            &1_000i64,
            &Some(1_000i64),
            &800_000i32,
            &SystemTime::now(),
            &800_144i32,
            &0i16,
            &None::<SystemTime>,
            &invoice,
        ],
    )?;
    let id: i64 = rows[0].get(0);
    if id <= top {
        return Err(format!(
            "InsertInvoiceHTLC gave id {id}, not above the largest stored id {top}"
        ));
    }
    run(
        tx,
        "InsertInvoiceHTLCCustomRecord",
        &[&65_537i64, &b"lnd contract".to_vec(), &id],
    )?;
    Ok(id)
}

fn next_settle_index(tx: &mut Transaction<'_>, above: i64) -> Result<i64, String> {
    let rows = run(tx, "NextInvoiceSettleIndex", &[])?;
    let n: i64 = rows
        .first()
        .map(|r| r.get(0))
        .ok_or("NextInvoiceSettleIndex found no settle_index row")?;
    if n <= above {
        return Err(format!(
            "NextInvoiceSettleIndex returned {n}, not above the largest stored settle index {above}"
        ));
    }
    Ok(n)
}

fn changed(
    tx: &mut Transaction<'_>,
    name: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, String> {
    tx.execute(query(name), params)
        .map_err(|e| format!("lnd's {name} failed: {}", db_err(&e)))
}

fn one_changed(
    tx: &mut Transaction<'_>,
    name: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), String> {
    match changed(tx, name, params)? {
        1 => Ok(()),
        n => Err(format!("lnd's {name} changed {n} rows, expected 1")),
    }
}

fn plain_invoice(tx: &mut Transaction<'_>, top: &Tops, want: Option<i64>) -> Result<(), String> {
    let id = insert_invoice(tx, 0xa0, false, top.invoice)?;
    insert_htlc(tx, id, 7, top.htlc)?;
    let now = Some(SystemTime::now());
    one_changed(tx, "UpdateInvoiceHTLC", &[&7i64, &CHAN, &id, &1i16, &now])?;
    one_changed(tx, "UpdateInvoiceAmountPaid", &[&id, &1_000i64])?;
    let n = next_settle_index(tx, top.settle)?;
    if let Some(w) = want.filter(|w| *w != n) {
        return Err(format!(
            "NextInvoiceSettleIndex returned {n}, the KV store's next is {w}"
        ));
    }
    run(tx, "OnInvoiceSettled", &[&now, &id])?;
    one_changed(
        tx,
        "UpdateInvoiceState",
        &[&id, &1i16, &Some(tag(0xa9)), &Some(n), &now],
    )?;
    let rows = expect_rows(tx, "FilterInvoicesBySettleIndex", &[&n, &0i64, &10i64], 1)?;
    if rows[0].get::<_, i64>(0) != id {
        return Err("the new settle index does not find the new invoice".into());
    }
    changed(tx, "UpdateInvoiceHTLCs", &[&id, &1i16, &now]).map(drop)
}

fn amp_invoice(tx: &mut Transaction<'_>, top: &Tops) -> Result<(), String> {
    let id = insert_invoice(tx, 0xb0, true, top.invoice)?;
    let set = tag(0xb2);
    let now = SystemTime::now();
    for (round, want) in [(1, 1u64), (2, 0)] {
        let n = changed(tx, "UpsertAMPSubInvoice", &[&set, &0i16, &now, &id])?;
        if n != want {
            return Err(format!(
                "UpsertAMPSubInvoice (call {round}) changed {n} rows, expected {want}"
            ));
        }
    }
    run(tx, "OnAMPSubInvoiceCreated", &[&now, &id, &set])?;
    let htlc = insert_htlc(tx, id, 8, top.htlc)?;
    run(
        tx,
        "InsertAMPSubInvoiceHTLC",
        &[
            &id,
            &set,
            &htlc,
            &tag(0xb3),
            &0i64,
            &tag(0xb4),
            &None::<Vec<u8>>,
        ],
    )?;
    one_changed(
        tx,
        "UpdateAMPSubInvoiceHTLCPreimage",
        &[&id, &set, &CHAN, &8i64, &Some(tag(0xb5))],
    )?;
    let n = next_settle_index(tx, top.settle)?;
    let at = Some(now);
    changed(
        tx,
        "UpdateAMPSubInvoiceState",
        &[&set, &1i16, &Some(n), &at],
    )?;
    run(tx, "OnAMPSubInvoiceSettled", &[&now, &id, &set])?;
    let rows = expect_rows(tx, "FetchSettledAMPSubInvoices", &[&Some(n), &Some(n)], 1)?;
    if rows[0].get::<_, Vec<u8>>(0) != set {
        return Err("the new AMP settle index does not find the new sub-invoice".into());
    }
    Ok(())
}

fn delete_invoices(tx: &mut Transaction<'_>) -> Result<(), String> {
    let id = insert_invoice(tx, 0xc0, false, 0)?;
    let none_b = None::<Vec<u8>>;
    let none_i = None::<i64>;
    run(tx, "OnInvoiceCanceled", &[&SystemTime::now(), &id])?;
    one_changed(
        tx,
        "UpdateInvoiceState",
        &[&id, &2i16, &none_b, &none_i, &None::<SystemTime>],
    )?;
    let swept = changed(tx, "DeleteCanceledInvoices", &[])?;
    if swept == 0 {
        return Err("DeleteCanceledInvoices left the canceled invoice".into());
    }
    let id = insert_invoice(tx, 0xc4, false, 0)?;
    one_changed(tx, "DeleteInvoice", &[&Some(id), &none_b, &none_i, &none_b])
}

// ---------------------------------------------------------------------------
// The KV side
// ---------------------------------------------------------------------------

/// What lnd's start-up with the KV invoice store finds (`config_builder.go`
/// calling `GetInvoiceBucketTombstone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvStart {
    /// No tombstone: lnd starts on its KV invoices.
    Starts,
    /// "invoices bucket tombstoned, please switch back to native SQL".
    Tombstoned,
    /// "invoice bucket does not exist": lnd stops too, for another reason.
    NoInvoicesBucket,
    /// The key names a sub-bucket (NULL value): sqlbase's `Get`
    /// dereferences a nil value and lnd panics.
    Panics,
}

/// lnd's check, through sqlbase's `ReadBucket` (a row with no parent, the
/// key and a NULL value) and `Get` (the row under it with the key).
pub fn kv_start(client: &mut impl GenericClient, table: &str) -> Result<KvStart, String> {
    let bucket = client
        .query_opt(
            &format!("SELECT id FROM {table} WHERE parent_id IS NULL AND key=$1 AND value IS NULL"),
            &[&b"invoices".as_slice()],
        )
        .map_err(|e| format!("{table}: {}", db_err(&e)))?;
    let Some(bucket) = bucket else {
        return Ok(KvStart::NoInvoicesBucket);
    };
    let id: i64 = bucket.get(0);
    let row = client
        .query_opt(
            &format!("SELECT value FROM {table} WHERE parent_id={id} AND key=$1"),
            &[&TOMBSTONE_KEY],
        )
        .map_err(|e| format!("{table}: {}", db_err(&e)))?;
    Ok(match row.map(|r| r.get::<_, Option<Vec<u8>>>(0)) {
        None => KvStart::Starts,
        Some(Some(_)) => KvStart::Tombstoned,
        Some(None) => KvStart::Panics,
    })
}

/// True when lnd's KV invoice store refuses to start because of the
/// tombstone.
pub fn kv_refuses(client: &mut impl GenericClient, table: &str) -> bool {
    matches!(kv_start(client, table), Ok(KvStart::Tombstoned))
}

/// The settle index lnd's native store must hand out next for the KV
/// table `table` when it is in the database: the `sequence` of
/// `invoices/invoice-settle-index`, plus one; `None` without the table.
pub fn kv_next_settle_index(
    client: &mut impl GenericClient,
    table: &str,
) -> Result<Option<i64>, String> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{table}")],
        )
        .map_err(|e| format!("{table}: {}", db_err(&e)))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let seq: Option<Option<i64>> = client
        .query_opt(
            &format!(
                "SELECT s.sequence FROM {table} s JOIN {table} b ON s.parent_id = b.id
                 WHERE b.parent_id IS NULL AND b.key = $1 AND s.key = $2 AND s.value IS NULL"
            ),
            &[&b"invoices".as_slice(), &b"invoice-settle-index".as_slice()],
        )
        .map_err(|e| format!("{table}: {}", db_err(&e)))?
        .map(|r| r.get(0));
    Ok(Some(seq.flatten().unwrap_or(0) + 1))
}

// ---------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------

/// Everything that keeps lnd (its list up to tracker 7) from taking this
/// database as its own after its invoice migration: its start-up must do
/// nothing and change nothing, its reads and writes must succeed; one line
/// per failure. The dump is compared before and after all of it.
pub fn lnd_rejects(client: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let before = match dump(client) {
        Ok(d) => d,
        Err(e) => return vec![e],
    };
    match start_up(client) {
        Ok(log) if log.is_empty() => {}
        Ok(log) => out.push(format!("lnd's start-up ran {:?}", log.steps)),
        Err(e) => out.push(format!("lnd's start-up fails: {e}")),
    }
    match dump(client) {
        Ok(after) if after == before => {}
        Ok(after) => out.push(format!(
            "lnd's start-up changed the database:\n{}",
            dump_diff(&before, &after)
        )),
        Err(e) => out.push(e),
    }
    out.extend(
        runtime_checks(client)
            .into_iter()
            .map(|e| format!("at run time: {e}")),
    );
    out.extend(
        write_path(client)
            .into_iter()
            .map(|e| format!("writing: {e}")),
    );
    match dump(client) {
        Ok(after) if after == before => {}
        Ok(after) => out.push(format!(
            "the rolled-back checks changed the database:\n{}",
            dump_diff(&before, &after)
        )),
        Err(e) => out.push(e),
    }
    out
}

/// The lines only one of two dumps has, marked `-` (before) and `+`.
pub fn dump_diff(before: &str, after: &str) -> String {
    let a: std::collections::BTreeSet<&str> = before.lines().collect();
    let b: std::collections::BTreeSet<&str> = after.lines().collect();
    let mut out: Vec<String> = a.difference(&b).map(|l| format!("- {l}")).collect();
    out.extend(b.difference(&a).map(|l| format!("+ {l}")));
    out.join("\n")
}

/// Asserts [`lnd_rejects`] finds nothing.
pub fn assert_lnd_accepts(client: &mut Client) {
    let found = lnd_rejects(client);
    assert!(
        found.is_empty(),
        "lnd would not take this store:\n{}",
        found.join("\n")
    );
}

/// [`assert_lnd_accepts`] on the database `dsn` names.
pub fn assert_lnd_accepts_dsn(dsn: &str) {
    assert_lnd_accepts(&mut super::pg::connect(dsn));
}

/// Tables in [`dump`] order, for tests that count what a dump covers.
pub fn dumped_tables(d: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut current = None;
    for line in d.lines() {
        if let Some(t) = line.strip_prefix("r ") {
            current = Some(t.to_owned());
            out.insert(t.to_owned(), 0);
        } else if line.starts_with("  row ") {
            if let Some(t) = &current {
                *out.get_mut(t).expect("inserted") += 1;
            }
        } else if !line.starts_with("  ") {
            current = None;
        }
    }
    out
}
