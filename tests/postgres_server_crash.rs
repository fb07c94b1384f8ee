//! The PostgreSQL server crashing under a migration: a `oneway migrate`
//! child is held at a failpoint (mid-copy, mid-seal, before `Lock`), the
//! server is stopped with `pg_ctl stop -m immediate` (no shutdown
//! checkpoint: crash recovery at the next start, as after a power cut of
//! the database host) and started again, the child is let go and fails on
//! its dead connection, and a rerun must end in the same stores as an
//! uncrashed run.
//!
//! One test, alone in this file, because it restarts the shared test server:
//! `cargo test` runs test files one after the other, so no other test is
//! using the server meanwhile. Fails, not skips, in CI without a server.
mod common;

use std::time::{Duration, Instant};

use common::pg::{
    assert_pg_dump_eq, connect, pg_args, pg_ctl, pg_dump, pg_fixture, pg_migrate, server, TestDb,
};
use common::Paused;

const INVOICES: u64 = 600;
const BATCH: usize = 50;

/// Stops the server as a crash would, starts it again with the options it
/// ran with (`restart` reads them from `postmaster.opts`), and waits until
/// it accepts connections.
fn crash_and_restart_server(admin: &str) {
    let log = format!(
        "{}/server.log",
        std::env::var("ONEWAY_TEST_PG_DIR").expect("ONEWAY_TEST_PG_DIR")
    );
    assert!(
        pg_ctl(&["-m", "immediate", "-w", "-t", "60", "-l", &log, "restart"]),
        "pg_ctl restart -m immediate failed"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::panic::catch_unwind(|| connect(admin)).is_err() {
        assert!(Instant::now() < deadline, "the server did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_server_crash_mid_copy_mid_seal_and_before_lock_reruns_to_the_uncrashed_stores() {
    let Some(admin) = server() else { return };
    let want = {
        let db = TestDb::create(&admin);
        pg_fixture(&db.dsn, INVOICES, 21);
        pg_migrate(&db.dsn, BATCH, &[]).assert_ok("reference migration");
        pg_dump(&mut db.client())
    };
    let points = [
        "batch.after_commit:5",
        "indexes.before_commit",
        "tombstoned.before_commit",
        "tombstoned.after_commit",
        "lock.before_commit",
    ];
    for point in points {
        let db = TestDb::create(&admin);
        pg_fixture(&db.dsn, INVOICES, 21);
        let b = BATCH.to_string();
        let paused = Paused::start_with(
            &pg_args("migrate", &db.dsn, &["--batch-size", &b, "--json"]),
            point,
        );
        crash_and_restart_server(&admin);
        let out = paused.resume();
        assert_eq!(out.code, Some(1), "{point}: {out:?}");
        assert!(out.error().contains("PostgreSQL"), "{point}: {out:?}");
        pg_migrate(&db.dsn, BATCH, &[]).assert_ok(&format!("rerun after {point}"));
        assert_pg_dump_eq(&pg_dump(&mut db.client()), &want, point);
    }
}
