//! The contract between oneway's native store and lnd, checked with the
//! emulation of lnd's start-up in `tests/common/lnd.rs` (written from lnd's
//! source, independent of oneway's schema code).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::lnd::{self, Step};
use rusqlite::Connection;

fn open(path: &Path) -> Connection {
    Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn tracker(path: &Path) -> Vec<i64> {
    open(path)
        .prepare("SELECT version FROM migration_tracker ORDER BY version")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("tracker")
}

fn schema_migrations(path: &Path) -> Vec<(i64, i64)> {
    open(path)
        .prepare("SELECT version, dirty FROM schema_migrations")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("schema_migrations")
}

#[test]
fn empty_file_becomes_a_fresh_lnd_database_and_a_restart_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lnd.sqlite");
    let log = lnd::start_up(&db, &mut lnd::no_op).expect("start-up");

    assert_eq!(log.base_source, "schema_migrations");
    assert_eq!(log.base_version, -1);
    assert_eq!(log.schema_up(), (1..=15).collect::<Vec<u32>>());
    assert!(log.schema_down().is_empty());
    assert_eq!(
        log.code_run(),
        vec![
            (7, lnd::CodeMigration::Invoices),
            (10, lnd::CodeMigration::Graph),
            (14, lnd::CodeMigration::Payments)
        ]
    );
    assert_eq!(log.tracker_inserted(), (1..=18).collect::<Vec<u32>>());
    assert_eq!(lnd::latest_version(), 18);
    assert_eq!(lnd::latest_schema_version(), 15);
    assert_eq!(tracker(&db), (1..=18).collect::<Vec<i64>>());
    assert_eq!(schema_migrations(&db), vec![(15, 0)]);

    let schema = lnd::schema(&open(&db)).unwrap();
    let rows = lnd::dump_rows(&open(&db)).unwrap();
    assert_eq!(schema.pragmas.journal_mode, "wal");

    let again = lnd::start_up(&db, &mut lnd::no_op).expect("second start-up");
    assert_eq!(again.base_source, "migration_tracker");
    assert_eq!(again.base_version, 18);
    assert!(again.is_empty(), "second start-up ran {:?}", again.steps);
    assert_eq!(lnd::schema(&open(&db)).unwrap(), schema);
    assert_eq!(lnd::dump_rows(&open(&db)).unwrap(), rows);
    assert_eq!(schema_migrations(&db), vec![(15, 0)]);
}

#[test]
fn a_database_stopped_at_7_ends_like_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let at7 = dir.path().join("at7.sqlite");
    let log7 = lnd::fresh_lnd_db(&at7, 7);
    assert_eq!(log7.schema_up(), (1..=6).collect::<Vec<u32>>());
    assert_eq!(log7.code_run(), vec![(7, lnd::CodeMigration::Invoices)]);
    assert_eq!(tracker(&at7), (1..=7).collect::<Vec<i64>>());
    assert_eq!(schema_migrations(&at7), vec![(6, 0)]);

    let rest = lnd::start_up(&at7, &mut lnd::refuse_invoice_migration).expect("from 7");
    assert_eq!(rest.base_version, 7);
    assert_eq!(rest.schema_up(), (7..=15).collect::<Vec<u32>>());
    assert_eq!(rest.tracker_inserted(), (8..=18).collect::<Vec<u32>>());

    let full = dir.path().join("full.sqlite");
    lnd::start_up(&full, &mut lnd::no_op).expect("fresh");
    assert_eq!(
        lnd::schema(&open(&at7)).unwrap(),
        lnd::schema(&open(&full)).unwrap()
    );
    assert_eq!(
        lnd::dump_rows(&open(&at7)).unwrap(),
        lnd::dump_rows(&open(&full)).unwrap()
    );
    // lnd's own database at 7 passes the contract.
    assert_eq!(lnd::check_store(&at7_copy(&dir), 1), Vec::<String>::new());
}

fn at7_copy(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("at7-again.sqlite");
    lnd::fresh_lnd_db(&p, 7);
    p
}

#[test]
fn golang_migrate_goes_down_and_stops_on_a_dirty_version() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lnd.sqlite");
    lnd::fresh_lnd_db(&db, 7);
    // A schema ahead of the tracker: lnd's entry 8 wants schema 7, the
    // recorded 9 is walked down through 9 and 8.
    open(&db)
        .execute("UPDATE schema_migrations SET version = 9", [])
        .unwrap();
    let log = lnd::start_up_with(&db, lnd::migrations_until(8), &mut lnd::no_op).unwrap();
    assert_eq!(
        log.steps,
        vec![Step::SchemaDown(9), Step::SchemaDown(8), Step::Tracker(8)]
    );
    assert_eq!(schema_migrations(&db), vec![(7, 0)]);

    open(&db)
        .execute("UPDATE schema_migrations SET dirty = 1", [])
        .unwrap();
    let err = lnd::start_up(&db, &mut lnd::no_op).unwrap_err();
    assert!(
        err.contains("Dirty database version 7. Fix and force version."),
        "{err}"
    );
}

#[test]
fn runtime_checks_pass_on_lnds_own_database_and_leave_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lnd.sqlite");
    lnd::fresh_lnd_db(&db, 7);
    let c = lnd::open_as_lnd(&db).unwrap();
    let rows = lnd::dump_rows(&c).unwrap();
    assert_eq!(lnd::runtime_checks(&c, 1), Vec::<String>::new());
    assert_eq!(lnd::dump_rows(&c).unwrap(), rows);
    let wrong = lnd::runtime_checks(&c, 5);
    assert_eq!(
        wrong,
        vec!["NextInvoiceSettleIndex returned 1, expected 5".to_string()]
    );
}

#[test]
fn schema_of_lnd_at_version_7() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lnd.sqlite");
    lnd::fresh_lnd_db(&db, 7);
    let schema = lnd::schema(&open(&db)).unwrap();
    snapshot_json!("lnd_schema_at_version_7", schema);
}

/// A fixture KV store of 300 invoices migrated by today's binary.
fn migrated_store(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let kv = fixture_kv(dir);
    let sql = dir.join("lnd.sqlite");
    common::run(&common::pair_args("migrate", &kv, &sql, &[]), &[]).assert_ok("oneway migrate");
    (kv, sql)
}

/// A fixture KV store of 300 invoices (seed 7), not migrated yet.
fn fixture_kv(dir: &Path) -> PathBuf {
    let kv = dir.join("k.sqlite");
    common::run(
        &[
            "fixture".as_ref(),
            "--out".as_ref(),
            kv.as_os_str(),
            "--invoices".as_ref(),
            "300".as_ref(),
            "--seed".as_ref(),
            "7".as_ref(),
        ] as &[&std::ffi::OsStr],
        &[],
    )
    .assert_ok("oneway fixture");
    kv
}

/// lnd takes a store oneway migrated as its own: start-up replayed with
/// lnd's migration list changes no row, applies only lnd's entries after 7,
/// leaves a schema equal to lnd's own database's, and every lnd invoice
/// query prepares and the write path runs.
#[test]
fn lnd_takes_a_migrated_fixture_store_as_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = migrated_store(dir.path());
    let violations = lnd::check_store(&sql, lnd::kv_next_settle_index(&kv));
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The same for the stores written by other encoders than oneway's own
/// generator: the independent Python encoder and the edge-case stores.
#[test]
fn lnd_takes_every_committed_fixture_migrated_as_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for name in [
        "independent/lnd-python.sqlite",
        "lnd-small.sqlite",
        "lnd-tiny.sqlite",
        "edge-empty-node.sqlite",
        "edge-legacy-amp.sqlite",
        "edge-old-invoice.sqlite",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let kv = dir.path().join("channel.sqlite");
        let sql = dir.path().join("lnd.sqlite");
        common::copy_store(&root.join(name), &kv);
        common::run(&common::pair_args("migrate", &kv, &sql, &[]), &[]).assert_ok(name);
        let violations = lnd::check_store(&sql, lnd::kv_next_settle_index(&kv));
        assert!(violations.is_empty(), "{name}: {violations:#?}");
    }
}

/// The emulation is not blind: each damage oneway's store must not have
/// (and the pre-fix store had) is reported.
#[test]
fn the_emulation_reports_damaged_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = migrated_store(dir.path());
    let next = lnd::kv_next_settle_index(&kv);
    let cases: [(&str, &str); 4] = [
        (
            "DROP TABLE schema_migrations; DELETE FROM migration_tracker;",
            "lnd would run its own KV invoice migration over this store",
        ),
        (
            "DROP TABLE schema_migrations; DELETE FROM migration_tracker;",
            "start-up changed data: table invoices",
        ),
        (
            "UPDATE invoice_sequences SET current_value = 0",
            "NextInvoiceSettleIndex",
        ),
        (
            "PRAGMA writable_schema = OFF; CREATE TABLE amp2 AS SELECT * FROM amp_sub_invoices;
             DROP TABLE amp_sub_invoices;
             CREATE TABLE amp_sub_invoices (set_id BLOB PRIMARY KEY, state SMALLINT NOT NULL,
                 created_at TIMESTAMP NOT NULL, settled_at TIMESTAMP, settle_index BIGINT,
                 invoice_id BIGINT NOT NULL REFERENCES invoices(id) ON DELETE CASCADE);
             INSERT INTO amp_sub_invoices SELECT * FROM amp2; DROP TABLE amp2;
             CREATE INDEX amp_sub_invoices_invoice_id_idx ON amp_sub_invoices(invoice_id);",
            "lnd cannot prepare UpsertAMPSubInvoice",
        ),
    ];
    for (i, (damage, named)) in cases.iter().enumerate() {
        let copy = dir.path().join(format!("damaged{i}.sqlite"));
        common::copy_store(&sql, &copy);
        let c = open(&copy);
        c.pragma_update(None, "foreign_keys", "OFF").unwrap();
        c.execute_batch(damage).unwrap();
        drop(c);
        let violations = lnd::check_store(&copy, next);
        assert!(
            violations.iter().any(|v| v.contains(named)),
            "{damage}: want {named:?} in {violations:#?}"
        );
    }
}

/// A 300-invoice fixture migrated into a database lnd created and stopped
/// at `last` (its invoice migration failed or never ran).
fn migrated_into_lnds_own(dir: &Path, last: u32) -> (PathBuf, PathBuf, Vec<(i64, String)>) {
    let kv = fixture_kv(dir);
    let sql = dir.join(format!("lnd-at-{last}.sqlite"));
    lnd::fresh_lnd_db(&sql, last);
    let rows = tracker_rows(&sql);
    common::run(&common::pair_args("migrate", &kv, &sql, &[]), &[])
        .assert_ok("migrate into lnd's own database");
    (kv, sql, rows)
}

#[test]
fn oneway_continues_into_an_lnd_database_whose_invoice_migration_never_ran() {
    for last in [6, 3, 1] {
        let dir = tempfile::tempdir().unwrap();
        let (kv, sql, lnds_rows) = migrated_into_lnds_own(dir.path(), last);
        let violations = lnd::check_store(&sql, lnd::kv_next_settle_index(&kv));
        assert!(
            violations.is_empty(),
            "lnd stopped at {last}: {violations:#?}"
        );
        // lnd's own tracker rows keep their times; oneway adds the rest.
        let after = tracker_rows(&sql);
        assert_eq!(after[..last as usize], lnds_rows[..], "lnd's rows are kept");
        assert_eq!(after.len(), 7, "{after:?}");
    }
}

#[test]
fn oneway_refuses_an_lnd_database_that_records_the_invoice_migration() {
    for last in [7, lnd::latest_version()] {
        let dir = tempfile::tempdir().unwrap();
        let kv = fixture_kv(dir.path());
        let sql = dir.path().join("lnd.sqlite");
        lnd::fresh_lnd_db(&sql, last);
        let before = std::fs::read(&sql).unwrap();
        let rows = lnd::dump_rows(&open(&sql)).unwrap();
        let out = common::run(&common::pair_args("migrate", &kv, &sql, &[]), &[]);
        out.assert_code(3, "migrate into an lnd database past its invoice migration");
        assert!(
            out.stderr
                .contains("already records lnd's invoice migration"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("version {last}")),
            "{}",
            out.stderr
        );
        assert_eq!(std::fs::read(&sql).unwrap(), before, "not a byte written");
        assert!(lnd::dump_rows(&open(&sql))
            .unwrap()
            .changed(&rows, &[])
            .is_empty());
        assert!(!with_suffix(&sql, ".lock").exists(), "no lock file left");
    }
}

fn tracker_rows(sql: &Path) -> Vec<(i64, String)> {
    open(sql)
        .prepare("SELECT version, migration_time FROM migration_tracker ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut o = p.as_os_str().to_owned();
    o.push(s);
    PathBuf::from(o)
}

/// An lnd started on the store before oneway finished stops on the dirty
/// schema version and changes nothing.
#[test]
fn lnd_refuses_a_store_that_is_not_locked_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kv = fixture_kv(dir.path());
    let sql = dir.path().join("half.sqlite");
    let out = common::run(
        &common::pair_args("migrate", &kv, &sql, &[]),
        &[("ONEWAY_FAILPOINT", "tombstone.after_commit")],
    );
    assert!(out.aborted(), "{}", out.stderr);
    let rows = lnd::dump_rows(&open(&sql)).unwrap();
    let schema = lnd::schema(&open(&sql)).unwrap();
    let err = lnd::start_up(&sql, &mut lnd::refuse_invoice_migration).unwrap_err();
    assert!(err.contains("Dirty database version 6"), "{err}");
    let c = open(&sql);
    assert!(lnd::dump_rows(&c).unwrap().changed(&rows, &[]).is_empty());
    assert!(lnd::schema_diff(&schema, &lnd::schema(&c).unwrap()).is_empty());
}

/// The schema of a migrated store, as the emulation sees it: any drift
/// from lnd's shows here as well as in the contract check.
#[test]
fn schema_of_a_migrated_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sql) = migrated_store(dir.path());
    let schema = lnd::schema(&open(&sql)).unwrap();
    snapshot_json!("lnd_schema_of_a_migrated_store", schema);
}
