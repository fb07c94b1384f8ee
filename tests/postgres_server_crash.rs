//! The PostgreSQL server crashing under a migration: a `oneway migrate`
//! child is held at a failpoint (mid-copy, mid-seal, before `Lock`), the
//! server is stopped with `pg_ctl stop -m immediate` (no shutdown
//! checkpoint: crash recovery at the next start, as after a power cut of
//! the database host) and started again, the child is let go and fails on
//! its dead connection, and a rerun must end in the same stores as an
//! uncrashed run.
//!
//! Also: the server crashed at random instants of a run, not at a failpoint.
//!
//! Alone in this file because they restart the shared test server: `cargo
//! test` runs test files one after the other, so no other test is using the
//! server meanwhile, and the tests here take [`SERVER`] in turn. Fails, not
//! skips, in CI without a server.
mod common;

use std::time::{Duration, Instant};

use common::pg::{
    assert_pg_dump_eq, connect, pg_args, pg_ctl, pg_dump, pg_fixture, pg_migrate, server, TestDb,
};
use common::Paused;

/// Held by each test for its whole run: one restarts the server under the
/// other otherwise.
static SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _alone = SERVER.lock().unwrap_or_else(|p| p.into_inner());
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

/// The server crashed at random instants of a run (not at a failpoint):
/// each time the child fails or finishes, the server comes back, and the
/// reruns end in the stores of an uncrashed run.
#[test]
fn server_crashes_at_random_instants_rerun_to_the_uncrashed_stores() {
    let Some(admin) = server() else { return };
    let _alone = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let (invoices, batch) = (5_000, 100);
    let want = {
        let db = TestDb::create(&admin);
        pg_fixture(&db.dsn, invoices, 23);
        pg_migrate(&db.dsn, batch, &[]).assert_ok("reference migration");
        pg_dump(&mut db.client())
    };
    let db = TestDb::create(&admin);
    pg_fixture(&db.dsn, invoices, 23);
    let span = {
        let probe = TestDb::create(&admin);
        pg_fixture(&probe.dsn, invoices, 23);
        let started = Instant::now();
        pg_migrate(&probe.dsn, batch, &[]).assert_ok("timing run");
        started.elapsed()
    };
    let b = batch.to_string();
    let args = pg_args("migrate", &db.dsn, &["--batch-size", &b, "--json"]);
    // Deterministic "random" instants spread over the first 80% of a run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut crashes = 0;
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = span.mul_f64(0.05 + (x % 750) as f64 / 1000.0);
        let child = common::command(&args, &[]).spawn().expect("spawn migrate");
        std::thread::sleep(at);
        crash_and_restart_server(&admin);
        crashes += 1;
        let out = child.wait_with_output().expect("wait");
        if out.status.success() {
            break;
        }
        // A Postgres error (1), or the seal's look at the other sessions
        // failing on the dead connection, which counts as held (5).
        assert!(
            matches!(out.status.code(), Some(1 | 5)),
            "the child failed otherwise: {out:?}"
        );
    }
    assert!(crashes >= 2, "only {crashes} server crashes");
    pg_migrate(&db.dsn, batch, &[]).assert_ok("rerun after the crashes");
    assert_pg_dump_eq(&pg_dump(&mut db.client()), &want, "after server crashes");
}
