//! Witnesses: the proofs that let a run skip re-digesting the KV store
//! (in the tombstone transaction, after its own verification pass; before
//! Lock, after its own tombstone).
//!
//! A witness must say "untouched" exactly when no other connection has
//! committed to the KV store since the state it witnessed: reads do not
//! disturb it, and any foreign commit, even one outside the invoices
//! bucket, does. The first tests check the mechanism on the library; the
//! last ones pause a real `oneway migrate` at the exact points where the
//! witnesses are used (`ONEWAY_FAILPOINT_PAUSE`), change the source there
//! as lnd would, and check that the run notices.

mod common;

use std::path::Path;

use oneway::__test_support::kv::{KvSource, TombstoneOutcome, DEFAULT_PREFIX};
use oneway::fixture::{write_fixture, FixtureSpec};
use rusqlite::Connection;

fn store(dir: &Path, invoices: u64) -> std::path::PathBuf {
    let kv = dir.join("channel.sqlite");
    write_fixture(
        &kv,
        &FixtureSpec {
            invoices,
            seed: 7,
            ..Default::default()
        },
    )
    .expect("fixture");
    kv
}

fn tombstones(kv: &Path) -> i64 {
    Connection::open(kv)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM channeldb_kv WHERE key = CAST('invoice-tombstone' AS BLOB)",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn witness_is_untouched_after_reads_and_touched_by_a_foreign_commit() {
    let dir = tempfile::tempdir().unwrap();
    let kv = store(dir.path(), 40);
    let src = KvSource::open(&kv, DEFAULT_PREFIX).unwrap();
    let verified = src.digest().unwrap();

    let (outcome, witness) = src.write_tombstone_if_unchanged(&verified, None).unwrap();
    assert_eq!(outcome, TombstoneOutcome::Written);
    assert_eq!(tombstones(&kv), 1);
    let witness = witness.expect("a written tombstone comes with a witness");
    assert!(witness.untouched().unwrap(), "nothing happened since");

    // Reading, from this process or another connection, is no change.
    let _ = src.digest().unwrap();
    let reader = Connection::open(&kv).unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM channeldb_kv", [], |r| r.get(0))
        .unwrap();
    assert!(witness.untouched().unwrap(), "reads are not writes");

    // A commit from any other connection, even to an unrelated bucket.
    reader
        .execute(
            "INSERT INTO channeldb_kv (key, value, parent_id) VALUES (CAST('late' AS BLOB), NULL, NULL)",
            [],
        )
        .unwrap();
    assert!(
        !witness.untouched().unwrap(),
        "a foreign commit after the seal must be seen"
    );
}

#[test]
fn a_rerun_finding_the_tombstone_unchanged_also_gets_a_witness() {
    let dir = tempfile::tempdir().unwrap();
    let kv = store(dir.path(), 25);
    let src = KvSource::open(&kv, DEFAULT_PREFIX).unwrap();
    let verified = src.digest().unwrap();
    let (first, _) = src.write_tombstone_if_unchanged(&verified, None).unwrap();
    assert_eq!(first, TombstoneOutcome::Written);

    // As after a crash between the KV commit and recording `Tombstoned`.
    let (again, witness) = src.write_tombstone_if_unchanged(&verified, None).unwrap();
    assert_eq!(again, TombstoneOutcome::AlreadyPresent { unchanged: true });
    assert_eq!(tombstones(&kv), 1, "nothing written twice");
    let witness = witness.expect("an unchanged sealed store comes with a witness");
    assert!(witness.untouched().unwrap());
    Connection::open(&kv)
        .unwrap()
        .execute(
            "DELETE FROM channeldb_kv WHERE key = CAST('invoice-tombstone' AS BLOB)",
            [],
        )
        .unwrap();
    assert!(
        !witness.untouched().unwrap(),
        "removing the tombstone is a change"
    );
}

#[test]
fn a_changed_source_gets_no_tombstone_and_no_witness() {
    let dir = tempfile::tempdir().unwrap();
    let kv = store(dir.path(), 25);
    let src = KvSource::open(&kv, DEFAULT_PREFIX).unwrap();
    let verified = src.digest().unwrap();
    // lnd writes an invoice value after verification.
    Connection::open(&kv)
        .unwrap()
        .execute(
            "UPDATE channeldb_kv SET value = value || X'00' WHERE id = (
                 SELECT c.id FROM channeldb_kv c JOIN channeldb_kv p ON c.parent_id = p.id
                 WHERE p.parent_id IS NULL AND p.key = CAST('invoices' AS BLOB)
                   AND length(c.key) = 4 AND c.value IS NOT NULL LIMIT 1)",
            [],
        )
        .unwrap();
    let (outcome, witness) = src.write_tombstone_if_unchanged(&verified, None).unwrap();
    assert!(
        matches!(outcome, TombstoneOutcome::SourceChanged(_)),
        "{outcome:?}"
    );
    assert!(witness.is_none());
    assert_eq!(tombstones(&kv), 0);
}

/// A `oneway migrate` child paused at failpoint `spec` until [`Paused::resume`].
fn settle_one(kv: &Path) -> u32 {
    let mut src = common::Source::open(kv);
    let num = *src.open_invoices().first().expect("an open invoice");
    src.settle(num);
    num
}

#[test]
fn a_run_whose_verified_snapshot_is_untouched_skips_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    common::make_fixture(&kv, 300, 5);
    let original = common::kv_dump(&kv);
    let paused = common::Paused::start(&kv, &sql, "verify.after_commit");
    // Reading the store while the run waits is no change.
    let _ = common::kv_dump(&kv);
    let out = paused.resume();
    out.assert_ok("migrate");
    assert_eq!(out.json()["state"], "Locked");
    assert!(
        out.stderr.contains("untouched since the verified snapshot"),
        "the tombstone used the verification's witness: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("untouched since this run sealed it"),
        "Lock used the tombstone's witness: {}",
        out.stderr
    );
    common::assert_kv_tombstoned(&original, &kv, "after the run");
    common::assert_verify_clean(&kv, &sql, 300);
}

#[test]
fn lnd_settling_an_invoice_after_verification_is_resynced_before_the_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    common::make_fixture(&kv, 300, 6);
    let paused = common::Paused::start(&kv, &sql, "verify.after_commit");
    assert_eq!(common::state_row(&sql).unwrap().0, "Verified");
    let settled = settle_one(&kv);
    // What the store holds now is what must end up migrated.
    let changed = dir.path().join("changed.sqlite");
    common::copy_store(&kv, &changed);
    let out = paused.resume();
    out.assert_ok("migrate");
    assert_eq!(out.json()["state"], "Locked");
    // The first tombstone attempt must not trust the touched witness (the
    // verification after the re-sync takes a fresh, untouched one).
    let before_resync = out.stderr.split("event=SourceChanged").next().expect("log");
    assert!(out.stderr.contains("event=SourceChanged"), "{}", out.stderr);
    assert!(
        !before_resync.contains("untouched since the verified snapshot"),
        "a touched witness must not be trusted: {}",
        out.stderr
    );
    let events: Vec<String> = common::journal(&sql)
        .into_iter()
        .filter(|e| e.kind == "transition")
        .filter_map(|e| e.event)
        .collect();
    assert!(
        events.iter().any(|e| e == "SourceChanged"),
        "invoice {settled:08x} settled after verification was noticed: {events:?}"
    );
    let r = common::reference(&changed, &dir.path().join("ref"), 50);
    common::assert_matches_reference(&kv, &sql, &r, "after the re-sync");
}

/// lnd writes after the tombstone but before `Locked` (it started before
/// the tombstone commit): lnd has never served from the native store, so
/// the run re-syncs the write under the seal, records `Resynced`, and locks
/// with every write present; nothing is refused, no backup needed.
#[test]
fn lnd_writing_after_the_tombstone_is_resynced_under_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    common::make_fixture(&kv, 300, 7);
    let paused = common::Paused::start(&kv, &sql, "tombstoned.after_commit");
    assert_eq!(common::state_row(&sql).unwrap().0, "Tombstoned");
    let settled = settle_one(&kv);
    let out = paused.resume();
    assert_eq!(out.code, Some(0), "re-synced and locked: {out:?}");
    assert_eq!(common::state_row(&sql).unwrap().0, "Locked");
    let events: Vec<String> = common::journal(&sql)
        .into_iter()
        .filter(|e| e.kind == "transition")
        .filter_map(|e| e.event)
        .collect();
    assert_eq!(
        events[events.len() - 2..],
        ["Resynced".to_string(), "Lock".to_string()],
        "{events:?}"
    );
    // The settlement lnd made after the tombstone is in the native store:
    // the locked pair verifies clean against the KV store as it is now.
    common::assert_verify_clean(&kv, &sql, 300);
    let state: i64 = rusqlite::Connection::open(&sql)
        .unwrap()
        .query_row(
            "SELECT state FROM invoices i JOIN oneway_invoice_map m ON m.invoice_id = i.id WHERE m.kv_num = ?1",
            [settled],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        state, 1,
        "invoice {settled:08x} is settled in the native store"
    );
}
