//! A resume after a crash redoes at most one batch.
//!
//! The copy commits each batch with its cursor in one transaction, so a
//! process that dies before a batch's commit loses exactly that batch, and
//! one that dies after it loses nothing. The rerun's own report
//! (`copied_this_run`) shows how much it copied; it must be exactly the
//! invoices not yet committed, never the store again, and the result must be
//! the same as an uncrashed run's.

mod common;

use common::*;

const INVOICES: u64 = 2_000;
const BATCH: usize = 100;

/// Crashes a fresh copy of the store at `spec`, checks the committed count,
/// reruns, and returns how many invoices the rerun copied.
fn crash_then_rerun(base: &std::path::Path, r: &Reference, spec: &str, committed: u64) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (kv, sql) = (
        dir.path().join("kv.sqlite"),
        dir.path().join("native.sqlite"),
    );
    copy_store(base, &kv);
    crash_at(&kv, &sql, BATCH, spec);
    let (state, copied, _) = state_row(&sql).expect("a state row after the crash");
    assert_eq!(state, "Migrating", "{spec}");
    assert_eq!(
        copied as u64, committed,
        "{spec}: committed batches survive"
    );
    let report = migrate_ok(&kv, &sql, BATCH);
    assert_eq!(report["state"], "Locked", "{spec}");
    assert_eq!(report["resynced"], 0, "{spec}: nothing needed repair");
    assert_matches_reference(&kv, &sql, r, spec);
    report["copied_this_run"].as_u64().expect("copied_this_run")
}

#[test]
fn a_crash_around_a_batch_commit_redoes_at_most_that_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.sqlite");
    make_fixture(&base, INVOICES, 11);
    let r = reference(&base, &dir.path().join("ref"), BATCH);
    let batches = INVOICES / BATCH as u64;
    for k in [1, 2, batches / 2, batches] {
        // Died inside batch k's transaction: batches 1..k-1 are committed,
        // the rerun copies batch k again and everything after it.
        let before = crash_then_rerun(
            &base,
            &r,
            &format!("batch.before_commit:{k}"),
            (k - 1) * BATCH as u64,
        );
        assert_eq!(
            before,
            INVOICES - (k - 1) * BATCH as u64,
            "before commit {k}"
        );
        // Died just after batch k's commit: nothing is redone.
        let after = crash_then_rerun(
            &base,
            &r,
            &format!("batch.after_commit:{k}"),
            k * BATCH as u64,
        );
        assert_eq!(after, INVOICES - k * BATCH as u64, "after commit {k}");
        // The work lost to the crash is one batch at most.
        assert!(before - after <= BATCH as u64);
    }
}
