//! lnd on PostgreSQL, end to end, through the real `oneway` binary against
//! the real server `.ci/postgres` starts (`ONEWAY_TEST_POSTGRES`; these tests
//! fail, not skip, in CI without it). Every test works in a database of its
//! own (`TestDb`).
//!
//! * the whole flow: `fixture --postgres`, `migrate`, `status`, `verify`,
//!   lnd's start-up and queries on the result (`tests/common/lnd_pg.rs`),
//!   the guard, a rerun that changes nothing;
//! * the crash matrix: a child aborted at every failpoint of the engine, then
//!   rerun, ends in the same stores (canonical dump) as an uncrashed run;
//! * random `SIGKILL`s of oneway, rerun until done: the same stores;
//! * a dropped connection (the server ends oneway's sessions mid-copy and
//!   mid-seal): a clear error, and a rerun completes; one batch's session
//!   ended while the next is in flight on the other: the next rolls back;
//! * the advisory lock: a second migrator exits 4;
//! * a session of another program on the database: the seal is refused
//!   (exit 5) and the rerun after it leaves completes;
//! * bad input: a DSN that does not parse, a server that does not answer, a
//!   database without lnd's KV table; the password never printed.
mod common;

use std::time::{Duration, Instant};

use common::pg::{
    assert_pg_dump_eq, pg_args, pg_dump, pg_fixture, pg_migrate, terminate_sessions, TestDb,
};
use common::{command, run, Out, Paused, SIGKILL};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Dump = std::collections::BTreeMap<String, Vec<String>>;

/// The matrix's store: 600 invoices in batches of 50.
const INVOICES: u64 = 600;
const BATCH: usize = 50;

/// A fresh database holding the fixture `seed`, or `None` when the test
/// skips (no server, outside CI).
fn store(invoices: u64, seed: u64) -> Option<TestDb> {
    let db = TestDb::fresh()?;
    pg_fixture(&db.dsn, invoices, seed);
    Some(db)
}

/// The stores an uncrashed migration of the fixture `seed` ends in.
fn reference(invoices: u64, seed: u64, batch: usize) -> Dump {
    let db = store(invoices, seed).expect("a server");
    pg_migrate(&db.dsn, batch, &[]).assert_ok("reference migration");
    pg_dump(&mut db.client())
}

/// `oneway <cmd> --postgres DSN extra…`.
fn pg(cmd: &str, db: &TestDb, extra: &[&str]) -> Out {
    run(&pg_args(cmd, &db.dsn, extra), &[])
}

#[test]
fn migrates_end_to_end_and_the_guard_refuses_the_kv_backend() {
    let Some(db) = store(2000, 7) else { return };
    let before = pg("guard", &db, &["--backend", "kv", "--json"]);
    before.assert_ok("guard kv before the migration");

    let out = pg_migrate(&db.dsn, 300, &[]);
    out.assert_ok("migrate --postgres");
    let report = out.json();
    assert_eq!(report["state"], "Locked");
    assert_eq!(report["invoices"], 2000);
    assert_eq!(report["already_completed"], false);

    let status = pg("status", &db, &["--json"]);
    let status = status.assert_ok("status").json();
    assert_eq!(status["state"], "Locked");
    assert_eq!(status["tombstone_present"], true);
    assert_eq!(status["source_invoices"], 2000);
    assert_eq!(status["native_invoices"], 2000);

    let verify = pg("verify", &db, &["--json"]);
    let verify = verify.assert_ok("verify").json();
    assert_eq!(verify["invoices"], 2000, "{verify}");
    assert_autovacuum_analyzes_after(&mut db.client());

    // lnd, starting on the result, changes nothing and runs every query it
    // needs; its KV backend refuses the sealed store.
    common::lnd_pg::assert_lnd_accepts(&mut db.client());
    assert!(common::lnd_pg::kv_refuses(&mut db.client(), "channeldb_kv"));

    let kv = pg("guard", &db, &["--backend", "kv", "--json"]);
    kv.assert_code(3, "guard kv after the migration");
    assert_eq!(kv.json()["reason"], "kv_tombstoned");
    pg("guard", &db, &["--backend", "sql"]).assert_ok("guard sql");

    let dump = pg_dump(&mut db.client());
    let again = pg_migrate(&db.dsn, 300, &[]);
    assert_eq!(again.assert_ok("rerun").json()["already_completed"], true);
    assert_pg_dump_eq(&pg_dump(&mut db.client()), &dump, "a rerun");

    // lnd's sequences are past every copied id: its next invoice and HTLC
    // cannot collide with a copied one.
    let mut c = db.client();
    for (table, seq) in [
        ("invoices", "invoices_id_seq"),
        ("invoice_htlcs", "invoice_htlcs_id_seq"),
    ] {
        let row = c
            .query_one(
                &format!(
                    "SELECT COALESCE((SELECT max(id) FROM {table}), 0), \
                     (SELECT last_value FROM {seq})"
                ),
                &[],
            )
            .unwrap();
        let (max, last): (i64, i64) = (row.get(0), row.get(1));
        assert!(last >= max, "{seq} at {last} but {table} holds id {max}");
    }
}

/// The index build analyzed only the columns verification reads by (with a
/// small sample), which leaves the server's count of changes since the last
/// full analysis: autovacuum then analyzes every column with the server's
/// own target, as it does after lnd's own migration (which analyzes
/// nothing). Unless autovacuum got there first, a column verification does
/// not read has no statistics yet.
fn assert_autovacuum_analyzes_after(c: &mut postgres::Client) {
    let stats = |c: &mut postgres::Client, column: &str| -> bool {
        c.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stats \
                            WHERE tablename = 'invoices' AND attname = $1)",
            &[&column],
        )
        .unwrap()
        .get(0)
    };
    assert!(stats(c, "id"), "verification's column is analyzed");
    // Autovacuum, paused on the copied tables from `Begin` to the index
    // build, has them back: no storage option is left on lnd's tables.
    let options: Vec<String> = c
        .query(
            "SELECT relname FROM pg_class WHERE reloptions IS NOT NULL \
             AND relnamespace = current_schema()::regnamespace AND relname NOT LIKE 'oneway%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(options.is_empty(), "storage options left on {options:?}");
    let auto: bool = c
        .query_one(
            "SELECT last_autoanalyze IS NOT NULL FROM pg_stat_user_tables \
             WHERE relname = 'invoices'",
            &[],
        )
        .unwrap()
        .get(0);
    if !auto {
        assert!(
            !stats(c, "amount_msat"),
            "the other columns are left to autovacuum"
        );
    }
}

/// Every failpoint a Postgres migration passes, with the hit to crash at.
fn crash_points() -> Vec<String> {
    let batches = INVOICES.div_ceil(BATCH as u64);
    let mut points = Vec::new();
    for name in oneway::__test_support::failpoint::NAMES {
        // The re-sync failpoints need a source that changes under a run;
        // tests/crash.rs covers them on SQLite, with the same engine.
        if name.starts_with("resync") || name.starts_with("tombstone.") {
            continue;
        }
        points.push(name.to_string());
    }
    for hit in [2, batches / 2, batches] {
        points.push(format!("batch.before_commit:{hit}"));
        points.push(format!("batch.after_commit:{hit}"));
    }
    points
}

#[test]
fn a_crash_at_every_failpoint_reruns_to_the_uncrashed_stores() {
    if TestDb::fresh().is_none() {
        return;
    }
    let want = reference(INVOICES, 11, BATCH);
    for point in crash_points() {
        let db = store(INVOICES, 11).unwrap();
        let crashed = pg_migrate(&db.dsn, BATCH, &[("ONEWAY_FAILPOINT", &point)]);
        let name = point.split(':').next().unwrap();
        assert!(
            crashed.aborted()
                && crashed
                    .stderr
                    .contains(&format!("failpoint {name} reached")),
            "failpoint {point} was not reached: {crashed:?}"
        );
        if point == "indexes.before_commit" {
            // The build's second session committed lnd's named indexes;
            // the build's own transaction (constraints, keys) did not.
            assert_eq!(
                index_objects(&mut db.client()),
                (true, false),
                "(a named index, a unique constraint) after the crash"
            );
        }
        pg_migrate(&db.dsn, BATCH, &[]).assert_ok(&format!("rerun after {point}"));
        assert_pg_dump_eq(&pg_dump(&mut db.client()), &want, &point);
    }
}

/// Whether lnd's named index `invoices_state_idx` and its unique
/// constraint `invoices_hash_key` exist.
fn index_objects(c: &mut postgres::Client) -> (bool, bool) {
    let row = c
        .query_one(
            "SELECT to_regclass('invoices_state_idx') IS NOT NULL, \
                    EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'invoices_hash_key')",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn random_kills_of_oneway_rerun_to_the_uncrashed_stores() {
    if TestDb::fresh().is_none() {
        return;
    }
    let (invoices, batch) = (10_000, 200);
    let want = reference(invoices, 5, batch);
    // How long an uncrashed run takes here, to spread the kills over it.
    let mut span = {
        let probe = store(invoices, 5).unwrap();
        let started = Instant::now();
        pg_migrate(&probe.dsn, batch, &[]).assert_ok("timing run");
        started.elapsed()
    };
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    // A busy machine can make the timing run slower than the killed ones,
    // so that a child finishes before three kills landed: then the kills
    // come sooner, on a fresh database.
    for attempt in 0..4 {
        let db = store(invoices, 5).unwrap();
        let kills = kill_at_random(&db, batch, span, &mut rng);
        if kills < 3 {
            eprintln!("attempt {attempt}: only {kills} kills landed; sooner");
            span = span.mul_f64(0.5);
            continue;
        }
        pg_migrate(&db.dsn, batch, &[]).assert_ok("final rerun");
        assert_pg_dump_eq(&pg_dump(&mut db.client()), &want, "after random kills");
        return;
    }
    panic!("fewer than three kills landed in four attempts: the test proved little");
}

/// Up to 12 runs of `migrate` on `db`, each killed at a random instant in
/// the first 70% of `span` unless it finished first (then no more runs);
/// returns how many kills landed.
fn kill_at_random(db: &TestDb, batch: usize, span: Duration, rng: &mut SmallRng) -> u32 {
    let b = batch.to_string();
    let args = pg_args("migrate", &db.dsn, &["--batch-size", &b, "--json"]);
    let mut kills = 0;
    for round in 0..12 {
        let mut child = command(&args, &[]).spawn().expect("spawn migrate");
        std::thread::sleep(span.mul_f64(rng.random_range(0.02..0.7)));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let status = child.wait().expect("wait");
        if status.success() {
            break;
        }
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(SIGKILL) || status.code() == Some(4),
            "round {round}: the child failed on its own: {status:?}"
        );
    }
    kills
}

#[test]
fn a_dropped_connection_fails_clearly_and_the_rerun_completes() {
    if TestDb::fresh().is_none() {
        return;
    }
    let admin = common::pg::server().unwrap();
    let want = reference(INVOICES, 3, BATCH);
    for point in ["batch.after_commit:4", "tombstoned.before_commit"] {
        let db = store(INVOICES, 3).unwrap();
        let paused = Paused::start_with(
            &pg_args("migrate", &db.dsn, &["--batch-size", "50", "--json"]),
            point,
        );
        assert!(
            terminate_sessions(&admin, &db.name) >= 1,
            "no session ended"
        );
        let out = paused.resume();
        assert_eq!(out.code, Some(1), "{point}: {out:?}");
        assert!(
            out.error().contains("PostgreSQL"),
            "{point}: the error does not say what failed: {out:?}"
        );
        pg_migrate(&db.dsn, BATCH, &[]).assert_ok(&format!("rerun after {point}"));
        assert_pg_dump_eq(&pg_dump(&mut db.client()), &want, point);
    }
}

/// The bulk copy writes on two sessions (`src/store/postgres/lanes.rs`):
/// while the third batch waits before its commit, the fourth has its rows
/// inserted on the other session and waits for the third. The server ends
/// the third batch's session only; the fourth must then roll back, not
/// commit past the gap, and the rerun ends in the uncrashed run's store.
#[test]
fn a_failed_batch_rolls_back_the_batch_in_flight_after_it() {
    let Some(db) = store(INVOICES, 5) else { return };
    let want = reference(INVOICES, 5, BATCH);
    let paused = Paused::start_with(
        &pg_args("migrate", &db.dsn, &["--batch-size", "50", "--json"]),
        "batch.before_commit:3",
    );
    let mut admin = db.client();
    let sessions = |admin: &mut postgres::Client, last: &str| -> Vec<i32> {
        admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND state = 'idle in transaction' \
                 AND query LIKE $1",
                &[&last],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // The fourth batch: its rows in (the savepoint around them released),
    // waiting for the third.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sessions(&mut admin, "RELEASE %").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no batch in flight on a second session"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The third batch: paused after moving the cursor, before its commit.
    let third = sessions(&mut admin, "UPDATE %");
    assert_eq!(third.len(), 1, "the third batch's session: {third:?}");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&third[0]])
        .unwrap();
    let out = paused.resume();
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.error().contains("PostgreSQL"), "{out:?}");
    let row = admin
        .query_one(
            "SELECT copied, (SELECT count(*) FROM invoices), \
                    (SELECT count(*) FROM oneway_invoice_map) FROM oneway_state",
            &[],
        )
        .unwrap();
    let found: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        found,
        (100, 100, 100),
        "only the first two batches may have committed (copied, invoices, map rows)"
    );
    // The seal refuses while another session is on the database.
    drop(admin);
    pg_migrate(&db.dsn, BATCH, &[]).assert_ok("rerun after the failed batch");
    assert_pg_dump_eq(&pg_dump(&mut db.client()), &want, "rerun");
}

#[test]
fn a_second_migrator_is_refused_by_the_advisory_lock() {
    let Some(db) = store(300, 2) else { return };
    let paused = Paused::start_with(
        &pg_args("migrate", &db.dsn, &["--batch-size", "50", "--json"]),
        "batch.after_commit:2",
    );
    let second = pg_migrate(&db.dsn, 50, &[]);
    second.assert_code(4, "a second migrator");
    assert_eq!(second.json()["reason"], "migration_in_progress");
    paused.resume().assert_ok("the first migrator");
    // The lock died with its session: a third run finds nothing to do.
    let third = pg_migrate(&db.dsn, 50, &[]);
    assert_eq!(third.assert_ok("third").json()["already_completed"], true);
}

#[test]
fn another_session_on_the_database_blocks_the_seal_until_it_leaves() {
    let Some(db) = store(400, 4) else { return };
    let lnd_like = db.client();
    let held = pg_migrate(&db.dsn, 100, &[]);
    held.assert_code(5, "migrate while another session is connected");
    assert_eq!(held.json()["reason"], "kv_in_use");
    let status = pg("status", &db, &["--json"]).json();
    assert_eq!(status["state"], "Verified", "{status}");
    assert_eq!(status["tombstone_present"], false);
    drop(lnd_like);
    // The server may take a moment to retire the session.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = pg_migrate(&db.dsn, 100, &[]);
        if out.ok() {
            assert_eq!(out.json()["state"], "Locked");
            break;
        }
        assert!(Instant::now() < deadline, "never sealed: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bad_input_is_refused_clearly_and_the_password_never_printed() {
    let Some(db) = TestDb::fresh() else { return };
    let secret = "s3cret-pw-do-not-print";
    // A DSN that does not parse: bad usage, exit 2.
    let bad = run(
        &pg_args(
            "status",
            &format!("host=/tmp port=notanumber password={secret}"),
            &["--json"],
        ),
        &[],
    );
    bad.assert_code(2, "an unparsable DSN");
    assert_eq!(bad.json()["reason"], "bad_dsn");
    // Nothing listens there: a connection error naming the redacted DSN.
    let down = run(
        &pg_args(
            "migrate",
            &format!("host=127.0.0.1 port=1 user=oneway password={secret} connect_timeout=2"),
            &["--json"],
        ),
        &[],
    );
    down.assert_code(1, "an unreachable server");
    assert!(down.error().contains("password=***"), "{down:?}");
    // A database without lnd's KV table: nothing is created there.
    let dsn = format!("{} password={secret}", db.dsn);
    let empty = run(&pg_args("migrate", &dsn, &["--json"]), &[]);
    empty.assert_code(1, "a database without lnd's KV table");
    assert!(empty.error().contains("channeldb_kv"), "{empty:?}");
    let tables: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "a refused run created tables");
    for out in [&bad, &down, &empty] {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "the password was printed: {out:?}"
        );
    }
}

/// What an init container runs before lnd starts (`guard`, `status`) needs
/// no right to write: a role that may only read the tables gets its
/// answers (the refusal is still given when it cannot be journaled).
#[test]
fn the_guard_and_status_work_for_a_role_that_may_only_read() {
    let Some(db) = store(300, 9) else { return };
    pg_migrate(&db.dsn, 100, &[]).assert_ok("migrate");
    let role = format!("ro_{}", db.name);
    db.client()
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
        ))
        .expect("a read-only role");
    let ro = format!("{} user={role}", db.dsn);
    let status = run(&pg_args("status", &ro, &["--json"]), &[]);
    assert_eq!(status.assert_ok("status").json()["state"], "Locked");
    run(&pg_args("guard", &ro, &["--backend", "sql"]), &[]).assert_ok("guard sql");
    let kv = run(&pg_args("guard", &ro, &["--backend", "kv", "--json"]), &[]);
    kv.assert_code(3, "guard kv");
    assert_eq!(kv.json()["reason"], "kv_tombstoned");
    db.client()
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .expect("dropping the role");
}
