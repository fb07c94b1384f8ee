//! `oneway verify` on an unfinished migration (issue 10, item 3): after a
//! crash it reports how far the migration is and compares only what is
//! final; invoices not copied yet and AMP sets still staged are progress,
//! not mismatches (exit 0); a real difference in a copied invoice is still
//! a mismatch (exit 1). From `Verified` on the comparison is complete.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rusqlite::Connection;
use serde_json::Value;

const N: u64 = 600;
const BATCH: usize = 50;

fn store(dir: &Path) -> (PathBuf, PathBuf) {
    let kv = dir.join("channel.sqlite");
    let sql = dir.join("native.sqlite");
    make_fixture(&kv, N, 7);
    (kv, sql)
}

fn verify_text(kv: &Path, sql: &Path) -> Out {
    run(&pair_args("verify", kv, sql, &[]), &[])
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {v}"))
}

fn one(sql: &Path, query: &str) -> i64 {
    Connection::open(sql)
        .unwrap()
        .query_row(query, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn after_a_crash_mid_copy_verify_reports_progress_and_no_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path());
    crash_at(&kv, &sql, BATCH, "batch.after_commit:3");
    let copied = 3 * BATCH as u64;

    let out = verify(&kv, &sql);
    out.assert_ok("verify after a crash mid-copy");
    let v = out.json();
    assert_eq!(v["state"], "Migrating", "{v}");
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(n(&v, "invoices"), N, "{v}");
    assert_eq!(n(&v, "copied"), copied, "{v}");
    assert_eq!(n(&v, "compared"), copied, "{v}");
    assert_eq!(n(&v, "not_copied_yet"), N - copied, "{v}");
    assert_eq!(n(&v, "mismatch_count"), 0, "{v}");
    assert_eq!(n(&v, "outdated"), 0, "{v}");
    assert_eq!(v["indexes_built"], false, "{v}");
    assert_eq!(v["cursor"].as_str().map(str::len), Some(8), "{v}");

    let out = verify_text(&kv, &sql);
    out.assert_ok("verify (text) after a crash mid-copy");
    let text = &out.stdout;
    for needle in [
        "the migration is unfinished (state Migrating): run `oneway migrate` to finish it",
        &format!("copied:          {copied} invoices (cursor "),
        &format!("not copied yet:  {} invoices", N - copied),
        "lnd's indexes:   not built yet",
        &format!("compared {copied} copies with the source: 0 mismatching fields"),
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(!text.contains("changed"), "{text}");
    assert!(text.lines().all(|l| l.len() <= 80), "{text}");
    assert_eq!(out.stderr, "", "nothing on stderr");

    // The migration then finishes, and verify is the full comparison.
    migrate_ok(&kv, &sql, BATCH);
    let v = verify(&kv, &sql).json();
    assert_eq!(
        (&v["state"], &v["complete"], &v["mismatch_count"]),
        (&"Locked".into(), &true.into(), &0.into()),
        "{v}"
    );
    assert_eq!((n(&v, "copied"), n(&v, "not_copied_yet")), (N, 0), "{v}");
    assert_eq!(v["indexes_built"], true, "{v}");
}

#[test]
fn after_the_copy_before_the_index_build_staged_amp_sets_are_not_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path());
    // Every batch committed, the index build (which moves the staged AMP
    // sets into lnd's table) rolled back by the crash.
    crash_at(&kv, &sql, BATCH, "indexes.before_commit");
    let staged = one(&sql, "SELECT count(*) FROM oneway_amp_staging") as u64;
    assert!(staged > 0, "the fixture has AMP sets");
    assert_eq!(one(&sql, "SELECT count(*) FROM amp_sub_invoices"), 0);

    let out = verify(&kv, &sql);
    out.assert_ok("verify with staged AMP sets");
    let v = out.json();
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(n(&v, "copied"), N, "{v}");
    assert_eq!(n(&v, "compared"), N, "{v}");
    assert_eq!(n(&v, "not_copied_yet"), 0, "{v}");
    assert_eq!(n(&v, "staged_amp_sets"), staged, "{v}");
    assert_eq!(n(&v, "mismatch_count"), 0, "{v}");
    assert_eq!(v["indexes_built"], false, "{v}");
    let text = verify_text(&kv, &sql).stdout;
    assert!(
        text.contains(&format!("AMP sets staged: {staged} ")),
        "{text}"
    );

    // A staged AMP set that differs from its source is a mismatch where it
    // is staged.
    Connection::open(&sql)
        .unwrap()
        .execute_batch(
            "UPDATE oneway_amp_staging SET state = state + 1
             WHERE rowid = (SELECT min(rowid) FROM oneway_amp_staging)",
        )
        .unwrap();
    let out = verify(&kv, &sql);
    out.assert_code(1, "a changed staged AMP set");
    let v = out.json();
    assert!(n(&v, "mismatch_count") >= 1, "{v}");
    assert!(v.to_string().contains("amp_sets"), "{v}");
}

#[test]
fn a_real_mismatch_in_a_copied_invoice_is_reported_while_migrating() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path());
    crash_at(&kv, &sql, BATCH, "batch.after_commit:3");
    let (num, id): (i64, i64) = Connection::open(&sql)
        .unwrap()
        .query_row(
            "SELECT kv_num, invoice_id FROM oneway_invoice_map ORDER BY kv_num LIMIT 1 OFFSET 10",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    Connection::open(&sql)
        .unwrap()
        .execute(
            "UPDATE invoices SET amount_msat = amount_msat + 1 WHERE id = ?1",
            [id],
        )
        .unwrap();

    let out = verify(&kv, &sql);
    out.assert_code(1, "verify with a changed copy");
    let v = out.json();
    assert_eq!(v["complete"], false, "{v}");
    assert_eq!(n(&v, "mismatch_count"), 1, "{v}");
    assert_eq!(
        v["mismatches"][0]["invoice_key"],
        format!("{num:08x}"),
        "{v}"
    );
    assert!(v["mismatches"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("amount_msat"));
    assert_eq!(n(&v, "not_copied_yet"), N - 3 * BATCH as u64, "{v}");

    let out = verify_text(&kv, &sql);
    out.assert_code(1, "verify (text) with a changed copy");
    assert!(
        out.stdout.contains("1 mismatching fields"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("amount_msat"), "{}", out.stdout);

    // A copy without its invoices row is a mismatch too, not progress.
    Connection::open(&sql)
        .unwrap()
        .execute_batch(&format!(
            "PRAGMA foreign_keys = OFF; DELETE FROM invoices WHERE id = {id}"
        ))
        .unwrap();
    let v = verify(&kv, &sql).json();
    let all = v.to_string();
    assert!(all.contains("missing from the native store"), "{v}");
}

#[test]
fn source_changes_while_migrating_are_work_to_do_not_faults() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path());
    crash_at(&kv, &sql, BATCH, "batch.after_commit:4");
    // lnd runs on: 20 new invoices, and an invoice already copied settles.
    let (settled, added) = change_source(&kv, 20, 4 * BATCH as u32, "unfinished");
    assert!(settled <= 4 * BATCH as u32);
    let out = verify(&kv, &sql);
    out.assert_ok("verify of a changed source while migrating");
    let v = out.json();
    assert_eq!(n(&v, "outdated"), 1, "the settled copy: {v}");
    assert_eq!(
        n(&v, "not_copied_yet"),
        N - 4 * BATCH as u64 + added.len() as u64,
        "{v}"
    );
    assert_eq!(n(&v, "mismatch_count"), 0, "{v}");
    let text = verify_text(&kv, &sql).stdout;
    assert!(text.contains("out of date:     1 copies"), "{text}");
    migrate_ok(&kv, &sql, BATCH);
    let v = verify(&kv, &sql).json();
    assert_eq!((n(&v, "outdated"), n(&v, "mismatch_count")), (0, 0), "{v}");
}

#[test]
fn verify_before_any_migration_says_to_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    make_fixture(&kv, 20, 1);
    let sql = dir.path().join("native.sqlite");
    let out = verify_text(&kv, &sql);
    out.assert_code(1, "verify before migrate");
    assert_eq!(out.stdout, "", "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "printed once: {out:?}");
    assert!(lines[0].starts_with("oneway: error: "), "{out:?}");
    assert!(lines[0].contains("run `oneway migrate` first"), "{out:?}");
    assert!(!sql.exists());
}
