//! The seal witness: the proof that lets `Tombstoned → Lock` skip a second
//! full digest of the KV store when the same run has just sealed it.
//!
//! It must say "untouched" exactly when no other connection has committed
//! to the KV store since the tombstone transaction computed its digest:
//! reads do not disturb it, and any foreign commit, even one outside the
//! invoices bucket, does.

use std::path::Path;

use oneway::fixture::{write_fixture, FixtureSpec};
use oneway::kv::{KvSource, TombstoneOutcome, DEFAULT_PREFIX};
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

    let (outcome, witness) = src.write_tombstone_if_unchanged(&verified).unwrap();
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
    let (first, _) = src.write_tombstone_if_unchanged(&verified).unwrap();
    assert_eq!(first, TombstoneOutcome::Written);

    // As after a crash between the KV commit and recording `Tombstoned`.
    let (again, witness) = src.write_tombstone_if_unchanged(&verified).unwrap();
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
    let (outcome, witness) = src.write_tombstone_if_unchanged(&verified).unwrap();
    assert!(
        matches!(outcome, TombstoneOutcome::SourceChanged(_)),
        "{outcome:?}"
    );
    assert!(witness.is_none());
    assert_eq!(tombstones(&kv), 0);
}
