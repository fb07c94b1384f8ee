//! lnd changing its KV table on PostgreSQL while oneway migrates it (the
//! Postgres twin of `tests/faults.rs` §4, `tests/seal_witness.rs` and
//! `tests/catch_up.rs`): a real `oneway migrate --postgres` child is held at
//! a failpoint, lnd's KV table is edited there as lnd would
//! (`tests/common/pg_source.rs`), and the run must end sealed with every
//! change copied, never sealed unverified:
//!
//! * invoices added and a copied invoice settled while `Migrating`;
//! * the same while `Verified` (the seal sees the change: `SourceChanged`);
//! * an invoice settled after the tombstone, before `Lock` (`Resynced`);
//! * a copied invoice deleted as lnd deletes a canceled one;
//! * changes between a run stopped at `Verified` and its rerun (catch-up).
//!
//! Each run ends equal (lnd's tables, the KV table, the state) to a clean
//! migration of a database that had the same changes from the start, and
//! `oneway verify --postgres` finds nothing. Every test works in databases
//! of its own (`TestDb`).
mod common;

use common::pg::{assert_pg_dump_eq, pg_args, pg_dump, pg_fixture, pg_migrate, TestDb};
use common::pg_source::{pg_change_source, with_session, PgSource};
use common::{run, Out, Paused};

type Dump = std::collections::BTreeMap<String, Vec<String>>;

const INVOICES: u64 = 600;
const BATCH: usize = 50;

/// A fresh database holding the fixture `seed`, or `None` when the test
/// skips (no server, outside CI).
fn store(seed: u64) -> Option<TestDb> {
    let db = TestDb::fresh()?;
    pg_fixture(&db.dsn, INVOICES, seed);
    Some(db)
}

/// The stores a clean migration ends in when the fixture `seed` had the
/// changes `edit` makes from the start.
fn reference(seed: u64, edit: impl FnOnce(&str)) -> Dump {
    let db = store(seed).expect("a server");
    edit(&db.dsn);
    pg_migrate(&db.dsn, BATCH, &[]).assert_ok("the reference migration");
    pg_dump(&mut db.client())
}

/// `oneway migrate --postgres` held at failpoint `point`.
fn paused(db: &TestDb, point: &str) -> Paused {
    let b = BATCH.to_string();
    Paused::start_with(
        &pg_args("migrate", &db.dsn, &["--batch-size", &b, "--json"]),
        point,
    )
}

/// The state row, read on a session that has ended when this returns.
fn state(db: &TestDb) -> String {
    with_session(&db.dsn, |c| {
        c.query_one("SELECT state FROM oneway_state", &[])
            .expect("the state row")
            .get(0)
    })
}

/// The events of the journal's transitions, in order.
fn events(db: &TestDb) -> Vec<String> {
    db.client()
        .query(
            "SELECT event FROM oneway_journal WHERE kind = 'transition' ORDER BY seq",
            &[],
        )
        .expect("the journal")
        .iter()
        .filter_map(|r| r.get(0))
        .collect()
}

/// The native state of the copy of KV invoice `num`, if it has one.
fn native_state(db: &TestDb, num: u32) -> Option<i16> {
    db.client()
        .query_opt(
            "SELECT i.state FROM invoices i JOIN oneway_invoice_map m ON m.invoice_id = i.id \
             WHERE m.kv_num = $1",
            &[&i64::from(num)],
        )
        .expect("the invoice map")
        .map(|r| r.get(0))
}

/// `oneway verify --postgres` finds every invoice equal.
fn assert_verify_clean(db: &TestDb, what: &str) {
    let out = run(&pg_args("verify", &db.dsn, &["--json"]), &[]);
    let report = out.assert_ok(&format!("verify {what}")).json();
    assert!(report["invoices"].as_u64().unwrap_or(0) > 0, "{report}");
}

/// The run ended `Locked`, verifies clean and equals `want`.
fn assert_locked_as(db: &TestDb, out: &Out, want: &Dump, what: &str) {
    out.assert_ok(what);
    assert_eq!(out.json()["state"], "Locked", "{what}: {out:?}");
    assert_verify_clean(db, what);
    assert_pg_dump_eq(&pg_dump(&mut db.client()), want, what);
}

fn settle_below(dsn: &str, below: u32) -> u32 {
    let mut s = PgSource::open(dsn);
    let num = *s
        .open_invoices()
        .iter()
        .rfind(|&&n| n <= below)
        .expect("an open invoice early in the store");
    s.settle(num);
    s.close();
    num
}

#[test]
fn invoices_added_and_one_settled_while_migrating_are_all_copied() {
    let Some(db) = store(31) else { return };
    let p = paused(&db, "batch.after_commit:4");
    assert_eq!(state(&db), "Migrating");
    let (settled, added) = pg_change_source(&db.dsn, 15, 100, "migrating");
    let out = p.resume();
    let want = reference(31, |dsn| {
        pg_change_source(dsn, 15, 100, "migrating");
    });
    assert_locked_as(&db, &out, &want, "changed while Migrating");
    assert_eq!(native_state(&db, settled), Some(1), "{settled:08x} settled");
    for num in added {
        assert_eq!(native_state(&db, num), Some(0), "{num:08x} copied open");
    }
}

#[test]
fn a_change_while_verified_is_seen_by_the_seal_and_resynced() {
    let Some(db) = store(32) else { return };
    let p = paused(&db, "verify.after_commit");
    assert_eq!(state(&db), "Verified");
    let (settled, _) = pg_change_source(&db.dsn, 10, 300, "verified");
    let out = p.resume();
    let want = reference(32, |dsn| {
        pg_change_source(dsn, 10, 300, "verified");
    });
    assert_locked_as(&db, &out, &want, "changed while Verified");
    let events = events(&db);
    assert!(
        events.iter().any(|e| e == "SourceChanged"),
        "the change after verification was noticed: {events:?}"
    );
    // The touched verification witness was not trusted before the re-sync.
    let before = out.stderr.split("event=SourceChanged").next().unwrap_or("");
    assert!(
        !before.contains("untouched since the verified snapshot"),
        "a touched witness was trusted: {}",
        out.stderr
    );
    assert_eq!(native_state(&db, settled), Some(1));
}

#[test]
fn lnd_writing_after_the_tombstone_is_resynced_under_the_seal() {
    let Some(db) = store(33) else { return };
    let p = paused(&db, "tombstoned.after_commit");
    assert_eq!(state(&db), "Tombstoned");
    let settled = settle_below(&db.dsn, u32::MAX);
    let out = p.resume();
    assert_eq!(out.code, Some(0), "re-synced and locked: {out:?}");
    assert_eq!(out.json()["state"], "Locked");
    let events = events(&db);
    assert_eq!(
        events[events.len() - 2..],
        ["Resynced".to_string(), "Lock".to_string()],
        "{events:?}"
    );
    assert_eq!(
        native_state(&db, settled),
        Some(1),
        "invoice {settled:08x}, settled after the tombstone, is settled in the native store"
    );
    assert_verify_clean(&db, "after the re-sync under the seal");
    let want = reference(33, |dsn| {
        settle_below(dsn, u32::MAX);
    });
    assert_pg_dump_eq(&pg_dump(&mut db.client()), &want, "resynced");
}

#[test]
fn an_invoice_deleted_after_it_was_copied_is_removed_from_the_copy() {
    let Some(db) = store(34) else { return };
    let p = paused(&db, "batch.after_commit:4");
    let mut s = PgSource::open(&db.dsn);
    let gone = s
        .canceled_invoices()
        .into_iter()
        .filter(|&n| n <= 100)
        .find(|&n| s.has_pay_addr_entry(n))
        .expect("a copied canceled invoice with a payment address entry");
    let keys = s.delete_invoice(gone);
    // The payment hash, payment address and add index entries and the value
    // (a canceled invoice has no settle index entry).
    assert_eq!(keys.len(), 4, "{keys:?}");
    s.close();
    let out = p.resume();
    let want = reference(34, |dsn| {
        let mut s = PgSource::open(dsn);
        s.delete_invoice(gone);
    });
    assert_locked_as(&db, &out, &want, "deleted while Migrating");
    assert_eq!(native_state(&db, gone), None, "{gone:08x} has no copy");
    let mut c = db.client();
    for (bucket, key) in keys {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM channeldb_kv WHERE parent_id = $1 AND key = $2",
                &[&bucket, &key],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{} in bucket {bucket} is gone", hex::encode(&key));
    }
}

#[test]
fn changes_between_a_run_stopped_at_verified_and_the_rerun_are_caught_up() {
    let Some(db) = store(35) else { return };
    let crashed = pg_migrate(
        &db.dsn,
        BATCH,
        &[("ONEWAY_FAILPOINT", "verify.after_commit")],
    );
    assert!(crashed.aborted(), "stopped at Verified: {crashed:?}");
    assert_eq!(state(&db), "Verified");
    let edit = |dsn: &str| {
        let (_, added) = pg_change_source(dsn, 15, 300, "catch-up");
        let mut s = PgSource::open(dsn);
        let gone = *s.canceled_invoices().first().expect("a canceled invoice");
        s.delete_invoice(gone);
        added
    };
    let added = edit(&db.dsn);
    let b = BATCH.to_string();
    let out = run(
        &pg_args("migrate", &db.dsn, &["--batch-size", &b, "--json"]),
        &[("RUST_LOG", "oneway=info")],
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("catch-up verification done"))
        .unwrap_or_else(|| panic!("the rerun caught up: {}", out.stderr))
        .to_owned();
    // The settled invoice and the added ones read back, the deleted one
    // removed, nothing else.
    assert!(
        line.contains(&format!("verified_again={}", added.len() + 1)),
        "{line}"
    );
    assert!(line.contains("removed=1"), "{line}");
    assert!(
        !out.stderr.contains("verification pass done"),
        "no full pass: {}",
        out.stderr
    );
    let want = reference(35, |dsn| {
        edit(dsn);
    });
    assert_locked_as(&db, &out, &want, "caught up");
}

/// Raw rows of a KV table: (parent, key, value, sequence), sorted.
type KvRows = Vec<(Option<i64>, Vec<u8>, Option<Vec<u8>>, Option<i64>)>;

/// The same edits on the same fixture write the same KV rows through
/// `PgSource` into Postgres as through `Source` into SQLite (whose writes
/// the SQLite tests check against lnd's): the Postgres edits are lnd's.
#[test]
fn the_postgres_edits_write_the_rows_the_sqlite_edits_write() {
    let Some(db) = store(36) else { return };
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    common::make_fixture(&kv, INVOICES, 36);

    let (settled, added) = common::change_source(&kv, 12, 200, "twin");
    let mut lite = common::Source::open(&kv);
    let gone = lite.canceled_invoices()[0];
    lite.delete_invoice(gone);
    drop(lite);
    let (pg_settled, pg_added) = pg_change_source(&db.dsn, 12, 200, "twin");
    let mut s = PgSource::open(&db.dsn);
    assert_eq!(s.canceled_invoices()[0], gone);
    s.delete_invoice(gone);
    s.close();
    assert_eq!((settled, added), (pg_settled, pg_added));

    let q = "SELECT parent_id, key, value, sequence FROM channeldb_kv";
    let c = rusqlite::Connection::open(&kv).unwrap();
    let mut st = c.prepare(q).unwrap();
    let mut want: KvRows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut got: KvRows = db
        .client()
        .query(q, &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got.len(), want.len(), "row counts");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "first differing row");
    }
}
