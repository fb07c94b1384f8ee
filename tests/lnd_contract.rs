//! The contract between oneway's native store and lnd, checked with the
//! emulation of lnd's start-up in `tests/common/lnd.rs` (written from lnd's
//! source, independent of oneway's schema code).

#[macro_use]
mod common;

use std::path::Path;

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
    let kv = dir.join("k.sqlite");
    let sql = dir.join("lnd.sqlite");
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
    common::run(&common::pair_args("migrate", &kv, &sql, &[]), &[]).assert_ok("oneway migrate");
    (kv, sql)
}

/// Documents the store oneway writes BEFORE the schema fix: lnd would replay
/// its schema files over it and cannot prepare its AMP upsert. Flip to
/// `assert!(violations.is_empty())` once the store follows the contract.
#[test]
fn pre_fix_store_violates_the_lnd_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = migrated_store(dir.path());
    let violations = lnd::check_store(&sql, lnd::kv_next_settle_index(&kv));
    for v in &violations {
        eprintln!("violation: {v}");
    }
    let has = |needle: &str| violations.iter().any(|v| v.contains(needle));
    assert!(
        has("migration_tracker holds versions [7]"),
        "{violations:#?}"
    );
    assert!(has("no schema_migrations table"), "{violations:#?}");
    assert!(
        has("unique(amp_sub_invoices: set_id, invoice_id) is missing"),
        "{violations:#?}"
    );
    assert!(
        has("lnd replays 000004_invoice_expiry_fix"),
        "{violations:#?}"
    );
    assert!(
        has("start-up changed data: table invoices"),
        "{violations:#?}"
    );
    assert!(
        has("lnd cannot prepare UpsertAMPSubInvoice"),
        "{violations:#?}"
    );
}
