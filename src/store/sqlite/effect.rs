//! What a transition writes besides the state row and its journal row.
//!
//! [`Target::transition`](super::Target::transition) runs the effect inside
//! the transition's own transaction, so the effect, the new state and the
//! journal row commit together or not at all. Where an effect ends in a
//! check of lnd's contract ([`crate::lnd_schema::check`]), a difference
//! fails the whole transition, which then commits nothing.

use std::path::Path;

use rusqlite::{params, Transaction};

use super::ONEWAY_SCHEMA;
use crate::error::{Context, Error, Mismatch, Result, Role};
use crate::identity::SourceIdentity;
use crate::lnd_schema::{self, Stage};
use crate::store::{now_text, Effect, Verification, FORMAT_VERSION};

/// Runs `effect` inside the transition's transaction.
pub(super) fn apply(effect: &Effect<'_>, tx: &Transaction<'_>, sql: &Path) -> Result<()> {
    match *effect {
        Effect::Nothing => Ok(()),
        Effect::CreateSchema {
            identity,
            batch_size,
            settle_index,
        } => create_schema(tx, identity, batch_size, settle_index).ctx(
            Role::Native,
            sql,
            "creating the schema",
        ),
        Effect::RecordVerification(v) => {
            record_verification(tx, &v).ctx(Role::Native, sql, "recording the verification")?;
            check_contract(tx, sql, Stage::Migrating, v.settle_index)
        }
        Effect::ForgetVerification => tx
            .execute(
                "UPDATE oneway_state SET pass = pass + 1, verified_count = NULL,
                     source_digest = NULL, target_digest = NULL WHERE singleton = 1",
                [],
            )
            .map(|_| ())
            .ctx(Role::Native, sql, "recording the source change"),
        Effect::RecordMigrated { settle_index } => {
            let now = crate::timefmt::sql_time(crate::timefmt::now_nanos());
            lnd_schema::record_migrated(tx, &now).ctx(Role::Native, sql, "recording the lock")?;
            check_contract(tx, sql, Stage::Locked, settle_index)
        }
    }
}

/// Creates lnd's schema, oneway's tables and the state row (in state
/// `Fresh`; the transition then moves it to `Migrating`).
fn create_schema(
    tx: &Transaction<'_>,
    identity: &SourceIdentity,
    batch_size: u64,
    settle_index: u64,
) -> rusqlite::Result<()> {
    tx.execute_batch(&lnd_schema::files::sqlite_begin())?;
    // Dirty until `Locked`: an lnd started on the store too early stops
    // before touching it (see `lnd_schema`).
    lnd_schema::set_schema_version(tx, true)?;
    tx.execute_batch(ONEWAY_SCHEMA)?;
    tx.execute(
        "INSERT INTO oneway_state (singleton, state, format_version, source_identity, batch_size, updated_at)
         VALUES (1, 'Fresh', ?1, ?2, ?3, ?4)",
        params![
            FORMAT_VERSION,
            serde_json::to_string(identity).unwrap_or_default(),
            batch_size as i64,
            now_text()
        ],
    )?;
    set_settle_index(tx, settle_index)
}

fn set_settle_index(tx: &Transaction<'_>, settle_index: u64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE invoice_sequences SET current_value = ?1 WHERE name = 'settle_index'",
        [settle_index as i64],
    )
    .map(|_| ())
}

/// A clean verification's count and digests in the state row, and lnd's
/// settle-index sequence.
fn record_verification(tx: &Transaction<'_>, v: &Verification<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE oneway_state SET verified_count = ?1, source_digest = ?2, target_digest = ?3
         WHERE singleton = 1",
        params![v.invoices as i64, v.source_digest, v.target_digest],
    )?;
    set_settle_index(tx, v.settle_index)
}

/// Checks lnd's contract ([`lnd_schema::check`]) inside `tx`; any
/// difference fails the step as a verification failure naming each object.
fn check_contract(tx: &Transaction<'_>, sql: &Path, stage: Stage, settle_index: u64) -> Result<()> {
    let found = lnd_schema::check(tx, stage, settle_index, ONEWAY_SCHEMA).ctx(
        Role::Native,
        sql,
        "checking lnd's schema and bookkeeping",
    )?;
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::VerificationFailed {
        total: found.len() as u64,
        mismatches: found.into_iter().map(Mismatch::store_wide).collect(),
    })
}
