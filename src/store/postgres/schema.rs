//! oneway's tables in Postgres, what a database without them holds, what a
//! transition writes besides the state row and its journal row, and lnd's
//! contract.
//!
//! An effect runs inside the transition's own transaction, so the effect,
//! the new state and the journal row commit together or not at all; where
//! an effect ends in a check of lnd's contract, a difference fails the
//! whole transition, which then commits nothing.

use postgres::{GenericClient, Transaction};

use crate::error::{Error, Mismatch, PgContext, Result, Role};
use crate::identity::SourceIdentity;
use crate::lnd_schema::{Existing, Stage};
use crate::postgres::lnd_schema::{self as pg_schema, Schema, TABLE_NAMES};
use crate::postgres::{copy, sql, PgResult};
use crate::store::{now_text, Effect, Verification, FORMAT_VERSION};

/// oneway's own tables on Postgres (the SQLite ones' names, columns and
/// meaning; see the module documentation of `super`).
///
/// The copy map is stored half full (`fillfactor = 50`): verification sets
/// `checked` on every row once, and with room on the row's page Postgres
/// writes the new row version there without touching the primary key's
/// index (a HOT update), about 2.5 times faster than with full pages; the
/// table ends the same size either way.
pub const ONEWAY_SCHEMA_PG: &str = "
CREATE TABLE oneway_state (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    state TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    source_identity TEXT NOT NULL,
    batch_size BIGINT NOT NULL,
    cursor BIGINT,
    copied BIGINT NOT NULL DEFAULT 0,
    pass BIGINT NOT NULL DEFAULT 1,
    verified_count BIGINT,
    source_digest TEXT,
    target_digest TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE oneway_journal (
    seq BIGSERIAL PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    event TEXT,
    details TEXT NOT NULL
);
CREATE FUNCTION oneway_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'oneway_journal is append-only';
END
$$;
REVOKE ALL ON FUNCTION oneway_journal_append_only() FROM PUBLIC;
CREATE TRIGGER oneway_journal_no_update BEFORE UPDATE ON oneway_journal
    FOR EACH ROW EXECUTE FUNCTION oneway_journal_append_only();
CREATE TRIGGER oneway_journal_no_delete BEFORE DELETE ON oneway_journal
    FOR EACH ROW EXECUTE FUNCTION oneway_journal_append_only();
CREATE TRIGGER oneway_journal_no_truncate BEFORE TRUNCATE ON oneway_journal
    FOR EACH STATEMENT EXECUTE FUNCTION oneway_journal_append_only();
CREATE TABLE oneway_invoice_map (
    kv_num BIGINT PRIMARY KEY,
    invoice_id BIGINT NOT NULL,
    digest BYTEA NOT NULL,
    checked BOOLEAN NOT NULL DEFAULT false,
    features BIGINT NOT NULL DEFAULT 0,
    htlcs BIGINT NOT NULL DEFAULT 0,
    custom_records BIGINT NOT NULL DEFAULT 0,
    amp_sets BIGINT NOT NULL DEFAULT 0,
    amp_htlcs BIGINT NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
CREATE TABLE oneway_amp_staging (
    set_id BYTEA NOT NULL,
    state SMALLINT NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    settled_at TIMESTAMP WITHOUT TIME ZONE,
    settle_index BIGINT,
    invoice_id BIGINT NOT NULL
);
CREATE INDEX oneway_amp_staging_invoice ON oneway_amp_staging(invoice_id);
";

const SCHEMA_ACT: &str = "reading the schema";

/// Whether the table `name` exists in the session's current schema.
pub(super) fn has_table(
    client: &mut impl GenericClient,
    name: &str,
) -> std::result::Result<bool, postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_class WHERE relname = $1 AND relkind IN ('r', 'p')
               AND relnamespace = current_schema()::regnamespace",
            &[&name],
        )?
        .is_some())
}

/// What the database holds when it has no oneway state: `None` when it
/// has oneway's state table, else the classification of the rest (lnd's KV
/// tables, `*_kv`, do not count: they are the source).
pub(super) fn existing(client: &mut impl GenericClient) -> PgResult<Option<Existing>> {
    let tables: Vec<String> = client
        .query(
            "SELECT relname::text FROM pg_class WHERE relkind IN ('r', 'p')
               AND relnamespace = current_schema()::regnamespace",
            &[],
        )
        .map_err(sql(SCHEMA_ACT))?
        .iter()
        .map(|r| r.get(0))
        .filter(|t: &String| !t.ends_with("_kv"))
        .collect();
    if tables.iter().any(|t| t == "oneway_state") {
        return Ok(None);
    }
    if tables.is_empty() {
        return Ok(Some(Existing::Empty));
    }
    if tables.iter().any(|t| t == "migration_tracker") {
        let version: Option<i32> = client
            .query_one("SELECT max(version) FROM migration_tracker", &[])
            .map_err(sql(SCHEMA_ACT))?
            .get(0);
        if let Some(v) = version.filter(|v| *v >= pg_schema::TRACKER_VERSION) {
            return Ok(Some(Existing::LndMigrated {
                version: i64::from(v),
            }));
        }
    }
    if let Some(other) = tables.iter().find(|t| !TABLE_NAMES.contains(&t.as_str())) {
        return Ok(Some(Existing::Foreign(format!(
            "has table {other}, which is neither oneway's, a KV table, nor part of lnd's invoice schema"
        ))));
    }
    Ok(Some(lnd_before_invoices(client, &tables)?))
}

/// The rest of [`existing`] for a database of lnd's tables only.
fn lnd_before_invoices(client: &mut impl GenericClient, tables: &[String]) -> PgResult<Existing> {
    if tables.iter().any(|t| t == "schema_migrations") {
        let row = client
            .query_opt("SELECT version, dirty FROM schema_migrations LIMIT 1", &[])
            .map_err(sql(SCHEMA_ACT))?
            .map(|r| (r.get::<_, i64>(0), r.get::<_, bool>(1)));
        match row {
            Some((v, true)) => {
                return Ok(Existing::Foreign(format!(
                    "is lnd's, but its schema migration to version {v} stopped halfway (dirty)"
                )))
            }
            Some((v, false)) if v > pg_schema::SCHEMA_VERSION => {
                return Ok(Existing::Foreign(format!(
                    "is lnd's at schema version {v}, beyond the invoice migration's {}",
                    pg_schema::SCHEMA_VERSION
                )))
            }
            _ => {}
        }
    }
    for table in tables
        .iter()
        .filter(|t| crate::lnd_schema::copied_or_empty(t))
    {
        let any = client
            .query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
            .map_err(sql(SCHEMA_ACT))?;
        if any.is_some() {
            return Ok(Existing::Foreign(format!(
                "is lnd's and its table {table} already holds rows, though its invoice migration never completed"
            )));
        }
    }
    Ok(Existing::LndBeforeInvoices)
}

/// Runs `effect` inside the transition's transaction.
pub(super) fn apply(
    effect: &Effect<'_>,
    tx: &mut Transaction<'_>,
    expected: &Schema,
) -> Result<()> {
    match *effect {
        Effect::Nothing => Ok(()),
        Effect::CreateSchema {
            identity,
            batch_size,
            settle_index,
        } => create_schema(tx, identity, batch_size, settle_index),
        Effect::RecordVerification(v) => {
            record_verification(tx, &v)?;
            check_contract(tx, expected, Stage::Migrating, v.settle_index)
        }
        Effect::ForgetVerification => tx
            .execute(
                "UPDATE oneway_state SET pass = pass + 1, verified_count = NULL,
                     source_digest = NULL, target_digest = NULL WHERE singleton = 1",
                &[],
            )
            .map(|_| ())
            .pg(Role::Native, "recording the source change"),
        Effect::RecordMigrated { settle_index } => {
            copy::reset_sequences(tx).pg(Role::Native, "")?;
            pg_schema::record_migrated(tx).pg(Role::Native, "")?;
            check_contract(tx, expected, Stage::Locked, settle_index)
        }
    }
}

/// lnd's schema (golang-migrate's version dirty) without the indexes,
/// unique constraints and foreign keys the bulk copy would maintain row by
/// row, oneway's tables, and the state row (in state `Fresh`; the
/// transition then moves it on), and lnd's settle-index sequence.
fn create_schema(
    tx: &mut Transaction<'_>,
    identity: &SourceIdentity,
    batch_size: u64,
    settle_index: u64,
) -> Result<()> {
    pg_schema::create(tx, true).pg(Role::Native, "")?;
    pg_schema::drop_copy_indexes(tx).pg(Role::Native, "")?;
    pg_schema::drop_copy_foreign_keys(tx).pg(Role::Native, "")?;
    pg_schema::pause_autovacuum(tx).pg(Role::Native, "")?;
    tx.batch_execute(ONEWAY_SCHEMA_PG)
        .pg(Role::Native, "creating oneway's tables")?;
    tx.execute(
        "INSERT INTO oneway_state (singleton, state, format_version, source_identity, batch_size, updated_at)
         VALUES (1, 'Fresh', $1, $2, $3, $4)",
        &[
            &(FORMAT_VERSION as i32),
            &serde_json::to_string(identity).unwrap_or_default(),
            &(batch_size as i64),
            &now_text(),
        ],
    )
    .pg(Role::Native, "inserting the state row")?;
    set_settle_index(tx, settle_index)
}

fn set_settle_index(tx: &mut Transaction<'_>, settle_index: u64) -> Result<()> {
    tx.execute(
        "UPDATE invoice_sequences SET current_value = $1 WHERE name = 'settle_index'",
        &[&(settle_index as i64)],
    )
    .map(|_| ())
    .pg(Role::Native, "setting lnd's settle index sequence")
}

/// A clean verification's count and digests in the state row, and lnd's
/// settle-index sequence.
fn record_verification(tx: &mut Transaction<'_>, v: &Verification<'_>) -> Result<()> {
    tx.execute(
        "UPDATE oneway_state SET verified_count = $1, source_digest = $2, target_digest = $3
         WHERE singleton = 1",
        &[&(v.invoices as i64), &v.source_digest, &v.target_digest],
    )
    .pg(Role::Native, "recording the verification")?;
    set_settle_index(tx, v.settle_index)
}

/// The differences from lnd's contract at `stage`, one sentence each: the
/// structure against `expected`, then lnd's bookkeeping rows.
pub(super) fn contract(
    client: &mut impl GenericClient,
    expected: &Schema,
    stage: Stage,
    settle_index: u64,
) -> Result<Vec<String>> {
    let mut out = Schema::read_native(client)
        .pg(Role::Native, "")?
        .differences(expected);
    match pg_schema::check_rows(client, stage, settle_index) {
        Ok(rows) => out.extend(rows),
        // A missing or reshaped bookkeeping table is already named above.
        Err(_) if !out.is_empty() => {}
        Err(e) => return Err(e).pg(Role::Native, ""),
    }
    Ok(out)
}

/// Checks lnd's contract inside `tx`; any difference fails the step as a
/// verification failure naming each object.
fn check_contract(
    tx: &mut Transaction<'_>,
    expected: &Schema,
    stage: Stage,
    settle_index: u64,
) -> Result<()> {
    let found = contract(tx, expected, stage, settle_index)?;
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::VerificationFailed {
        total: found.len() as u64,
        mismatches: found.into_iter().map(Mismatch::store_wide).collect(),
    })
}
