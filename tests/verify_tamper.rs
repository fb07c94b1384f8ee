//! The verification pass against a native store changed behind oneway's
//! back: every kind of damage is found and named, by `oneway verify` on a
//! locked pair and by `oneway migrate` before it records `Verified`.
//!
//! Referential integrity is proved by row counts instead of `PRAGMA
//! foreign_key_check` (`native::ChildRows`); the orphan and misattributed
//! rows below are the cases that argument has to catch.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::*;
use rusqlite::Connection;
use serde_json::Value;

/// A locked pair made from the committed 200-invoice fixture.
fn locked_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let kv = dir.join("channel.sqlite");
    let sql = dir.join("native.sqlite");
    copy_store(&fixture_path("lnd-small.sqlite"), &kv);
    migrate_ok(&kv, &sql, 50);
    assert_verify_clean(&kv, &sql, 200);
    (kv, sql)
}

/// Runs `statements` on the native store as some other program might:
/// foreign keys not enforced (SQLite's default; rusqlite's bundled build
/// turns them on).
fn tamper(sql: &Path, statements: &str) {
    let c = Connection::open(sql).unwrap();
    c.pragma_update(None, "foreign_keys", "OFF").unwrap();
    c.execute_batch(statements).unwrap();
}

fn one(sql: &Path, query: &str) -> i64 {
    Connection::open(sql)
        .unwrap()
        .query_row(query, [], |r| r.get(0))
        .unwrap()
}

/// Runs `oneway verify --json`, expects exit 1, returns the report.
#[track_caller]
fn verify_fails(kv: &Path, sql: &Path) -> Value {
    let out = verify(kv, sql);
    out.assert_code(1, "oneway verify on a tampered store");
    let v = out.json();
    assert_eq!(v["outdated"], 0, "{v}");
    assert!(v["mismatch_count"].as_u64().unwrap() >= 1, "{v}");
    v
}

fn details(v: &Value) -> Vec<String> {
    v["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m["invoice_key"], m["detail"]))
        .collect()
}

#[test]
fn a_child_row_of_no_invoice_is_found_by_the_row_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = locked_pair(dir.path());
    let htlcs = one(&sql, "SELECT count(*) FROM invoice_htlcs");
    // An HTLC of an invoice that does not exist: no invoice's read-back
    // sees it, and the foreign key it breaks is not enforced.
    tamper(
        &sql,
        "INSERT INTO invoice_htlcs (chan_id, htlc_id, amount_msat, accept_height, accept_time,
             expiry_height, state, invoice_id)
         VALUES ('1', 999999, 1, 1, '2024-01-01 00:00:00+00:00', 1, 0, 987654321)",
    );
    let v = verify_fails(&kv, &sql);
    let d = details(&v);
    let want = format!(
        "invoice_htlcs holds {} rows but the verified invoices own {htlcs}",
        htlcs + 1
    );
    assert!(d.iter().any(|m| m.contains(&want)), "{d:?}");
    assert_eq!(v["mismatch_count"], 1, "{d:?}");
}

#[test]
fn an_orphan_in_every_child_table_is_named_per_table() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = locked_pair(dir.path());
    tamper(
        &sql,
        "INSERT INTO invoice_features (feature, invoice_id) VALUES (9, 987654321);
         INSERT INTO invoice_htlc_custom_records (key, value, htlc_id) VALUES (65536, x'01', 987654321);
         INSERT INTO amp_sub_invoices (set_id, state, created_at, invoice_id)
             VALUES (x'ee', 0, '2024-01-01 00:00:00+00:00', 987654321);",
    );
    let d = details(&verify_fails(&kv, &sql));
    for table in [
        "invoice_features holds",
        "invoice_htlc_custom_records holds",
        "amp_sub_invoices holds",
    ] {
        assert!(d.iter().any(|m| m.contains(table)), "{table}: {d:?}");
    }
    assert!(
        !d.iter().any(|m| m.contains("invoice_htlcs holds")),
        "an untouched table is not named: {d:?}"
    );
}

#[test]
fn an_amp_row_moved_to_another_invoice_is_not_credited_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = locked_pair(dir.path());
    // Point one AMP HTLC row at a different invoice while keeping its HTLC:
    // its HTLC now lacks its AMP row, and the row belongs to nobody.
    let moved = one(
        &sql,
        "SELECT rowid FROM amp_sub_invoice_htlcs ORDER BY rowid LIMIT 1",
    );
    let other = one(
        &sql,
        &format!(
            "SELECT min(id) FROM invoices WHERE id <> (SELECT invoice_id FROM amp_sub_invoice_htlcs WHERE rowid = {moved})"
        ),
    );
    tamper(
        &sql,
        &format!("UPDATE amp_sub_invoice_htlcs SET invoice_id = {other} WHERE rowid = {moved}"),
    );
    let d = details(&verify_fails(&kv, &sql));
    assert!(
        d.iter().any(|m| m.contains("htlcs[") && m.contains("amp")),
        "the HTLC is named as lacking its AMP row: {d:?}"
    );
}

#[test]
fn a_duplicated_feature_row_and_a_changed_field_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = locked_pair(dir.path());
    let id = one(&sql, "SELECT min(invoice_id) FROM invoice_features");
    tamper(
        &sql,
        &format!(
            "DROP INDEX invoice_features_unique;
             INSERT INTO invoice_features (feature, invoice_id)
                 SELECT feature, invoice_id FROM invoice_features WHERE invoice_id = {id} LIMIT 1;
             UPDATE invoices SET amount_paid_msat = amount_paid_msat + 1 WHERE id = (SELECT max(id) FROM invoices);"
        ),
    );
    let d = details(&verify_fails(&kv, &sql));
    assert!(d.iter().any(|m| m.contains("features")), "{d:?}");
    assert!(d.iter().any(|m| m.contains("amount_paid_msat")), "{d:?}");
}

#[test]
fn a_migration_does_not_record_verified_over_an_orphan_row() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    copy_store(&fixture_path("lnd-small.sqlite"), &kv);
    let original = kv_dump(&kv);
    // Stop right after the indexes are committed, then plant an orphan.
    let out = crash_at(&kv, &sql, 50, "indexes.after_commit");
    assert!(out.aborted(), "the failpoint aborts: {}", out.stderr);
    tamper(
        &sql,
        "INSERT INTO invoice_features (feature, invoice_id) VALUES (9, 987654321)",
    );
    let out = migrate(&kv, &sql, 50, &[]);
    out.assert_code(1, "migrate over an orphan row");
    assert!(
        out.stderr.contains("invoice_features holds"),
        "{}",
        out.stderr
    );
    assert_eq!(
        state_row(&sql).map(|s| s.0).as_deref(),
        Some("Migrating"),
        "no Verified over a failed verification"
    );
    assert_kv_unchanged(&original, &kv, "no tombstone after a failed verification");
}

/// Each edit lnd would trip over, and `verify` must name (issue 8): the
/// object named in the message, exit 1.
#[test]
fn edits_to_lnds_bookkeeping_and_schema_are_named() {
    let cases: [(&str, &str, &str); 8] = [
        (
            "a zeroed settle_index sequence",
            "UPDATE invoice_sequences SET current_value = 0 WHERE name = 'settle_index'",
            "invoice_sequences holds",
        ),
        (
            "a deleted migration_tracker row",
            "DELETE FROM migration_tracker WHERE version = 7",
            "migration_tracker holds versions [1, 2, 3, 4, 5, 6]",
        ),
        (
            "a changed payment_request_hash",
            "UPDATE invoices SET payment_request_hash = zeroblob(32)
                 WHERE id = (SELECT min(id) FROM invoices WHERE payment_request_hash IS NOT NULL)",
            "payment_request_hash",
        ),
        (
            "a dropped unique index",
            "DROP INDEX invoices_payment_addr_unique",
            "table invoices: unique (payment_addr) is missing",
        ),
        (
            "a dropped lnd index",
            "DROP INDEX amp_htlcs_set_id_idx",
            "table amp_sub_invoice_htlcs: index amp_htlcs_set_id_idx (set_id) is missing",
        ),
        (
            "a dirty schema_migrations",
            "UPDATE schema_migrations SET dirty = 1",
            "schema_migrations holds [(6, true)]",
        ),
        (
            "an added index lnd does not have",
            "CREATE UNIQUE INDEX extra ON amp_sub_invoice_htlcs(set_id, htlc_id)",
            "table amp_sub_invoice_htlcs: unique (set_id, htlc_id) is not part of lnd's schema",
        ),
        (
            "a deleted event type",
            "DELETE FROM invoice_event_types WHERE id = 5",
            "invoice_event_types holds",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (kv0, sql0) = locked_pair(dir.path());
    for (i, (what, statements, named)) in cases.iter().enumerate() {
        let case = dir.path().join(format!("case{i}"));
        std::fs::create_dir(&case).unwrap();
        let (kv, sql) = (case.join("channel.sqlite"), case.join("native.sqlite"));
        copy_store(&kv0, &kv);
        copy_store(&sql0, &sql);
        tamper(&sql, statements);
        let out = verify(&kv, &sql);
        out.assert_code(1, what);
        let d = details(&out.json());
        assert!(
            d.iter().any(|m| m.contains(named)),
            "{what}: want {named:?} in {d:?}"
        );
    }
}
