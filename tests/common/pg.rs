//! A real PostgreSQL server for the tests: the one `.ci/postgres` starts
//! (`source .ci/postgres` in a shell; `.ci/run` does it for CI), named by
//! `ONEWAY_TEST_POSTGRES`.
//!
//! * [`server`]: the DSN; without it a test skips locally and *fails* when
//!   `CI` is set, so CI never passes by skipping.
//! * [`TestDb`]: a fresh database per test (`oneway_t_<pid>_<n>_<nanos>`),
//!   dropped (with `FORCE`) when the value goes out of scope.
//! * [`pg_ctl`]: runs the server's `pg_ctl` (as the server's OS user), for
//!   tests that stop or crash the server (`stop -m immediate`) and restart it.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, Config, NoTls};

/// The variable naming the test server.
pub const ENV: &str = "ONEWAY_TEST_POSTGRES";

/// The test server's DSN, or `None` (after printing why) when there is none
/// and `CI` is not set. Panics in CI without a server.
pub fn server() -> Option<String> {
    match std::env::var(ENV) {
        Ok(dsn) if !dsn.trim().is_empty() => Some(dsn),
        _ if std::env::var_os("CI").is_some() => panic!(
            "CI is set but {ENV} is not: the Postgres tests need a server \
             (`source .ci/postgres` starts one; .ci/run does)"
        ),
        _ => {
            eprintln!("skipped: no {ENV}");
            None
        }
    }
}

/// Connects to `dsn` (key=value or URL).
pub fn connect(dsn: &str) -> Client {
    dsn.parse::<Config>()
        .expect("a valid DSN")
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"))
}

/// `dsn` with its database replaced by `dbname`, in the same form.
pub fn with_dbname(dsn: &str, dbname: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = dsn.strip_prefix(scheme) {
            let (main, query) = match rest.split_once('?') {
                Some((m, q)) => (m, format!("?{q}")),
                None => (rest, String::new()),
            };
            let authority = main.split_once('/').map_or(main, |(a, _)| a);
            return format!("{scheme}{authority}/{dbname}{query}");
        }
    }
    // key=value: a later key overrides an earlier one.
    format!("{dsn} dbname={dbname}")
}

/// A database of its own for one test, dropped on drop.
pub struct TestDb {
    /// The DSN of the new database.
    pub dsn: String,
    /// Its name.
    pub name: String,
    admin: String,
}

impl TestDb {
    /// Creates `oneway_t_<unique>` on the server `admin` names.
    pub fn create(admin: &str) -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "oneway_t_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        connect(admin)
            .batch_execute(&format!(
                "CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"
            ))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDb {
            dsn: with_dbname(admin, &name),
            name,
            admin: admin.to_owned(),
        }
    }

    /// A fresh database on the test server, or `None` when the test skips
    /// (see [`server`]).
    pub fn fresh() -> Option<TestDb> {
        server().map(|s| TestDb::create(&s))
    }

    /// A session on this database.
    pub fn client(&self) -> Client {
        connect(&self.dsn)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let dropped = self.admin.parse::<Config>().ok().and_then(|c| {
            c.connect(NoTls)
                .ok()?
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .ok()
        });
        if dropped.is_none() {
            eprintln!("note: test database {} was not dropped", self.name);
        }
    }
}

/// Runs the test server's `pg_ctl` with `args` (the data folder is added),
/// as the server's OS user; returns whether it succeeded.
pub fn pg_ctl(args: &[&str]) -> bool {
    let bin = std::env::var("ONEWAY_TEST_PG_BIN").expect("ONEWAY_TEST_PG_BIN");
    let data = std::env::var("ONEWAY_TEST_PG_DATA").expect("ONEWAY_TEST_PG_DATA");
    let runas = std::env::var("ONEWAY_TEST_PG_RUNAS").unwrap_or_default();
    let pg_ctl = format!("{bin}/pg_ctl");
    let mut cmd = if runas.is_empty() {
        Command::new(&pg_ctl)
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", &runas, "--", &pg_ctl]);
        c
    };
    cmd.args(["-D", &data]).args(args);
    cmd.status().is_ok_and(|s| s.success())
}

/// The argument list `cmd --postgres DSN extra…` (the DSN on the command
/// line: the test server trusts its clients and has no password).
pub fn pg_args(cmd: &str, dsn: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![cmd.to_string(), "--postgres".into(), dsn.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `oneway fixture --postgres DSN --invoices N --seed S`.
pub fn pg_fixture(dsn: &str, invoices: u64, seed: u64) {
    let n = invoices.to_string();
    let s = seed.to_string();
    super::run(
        &pg_args("fixture", dsn, &["--invoices", &n, "--seed", &s]),
        &[],
    )
    .assert_ok("oneway fixture --postgres");
}

/// `oneway migrate --postgres DSN --batch-size B --json` with `env`.
pub fn pg_migrate(dsn: &str, batch: usize, env: &[(&str, &str)]) -> super::Out {
    let b = batch.to_string();
    super::run(
        &pg_args("migrate", dsn, &["--batch-size", &b, "--json"]),
        env,
    )
}

/// A canonical picture of a migrated Postgres database, equal for two
/// databases holding the same stores however many crashes and reruns made
/// them: lnd's native tables as `tests/common/native.rs` reads them (HTLC
/// surrogate ids replaced by their natural key), the KV table without its
/// row ids (the tombstone's id comes from a sequence a rolled-back attempt
/// may have advanced), golang-migrate's version and the machine's state.
pub fn pg_dump(c: &mut Client) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut queries: Vec<(String, String)> = super::native::NATIVE_TABLES
        .iter()
        .map(|(t, q)| (t.to_string(), q.to_string()))
        .collect();
    queries.push((
        "channeldb_kv".into(),
        "SELECT parent_id, key, value, sequence FROM channeldb_kv".into(),
    ));
    queries.push((
        "schema_migrations".into(),
        "SELECT version, dirty FROM schema_migrations".into(),
    ));
    queries.push((
        "oneway_state".into(),
        "SELECT state FROM oneway_state".into(),
    ));
    for (table, q) in queries {
        let mut rows: Vec<String> = c
            .query(&format!("SELECT t::text FROM ({q}) t"), &[])
            .unwrap_or_else(|e| panic!("dumping {table}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        rows.sort();
        out.insert(table, rows);
    }
    out
}

/// Asserts two dumps are equal, naming the first table that differs.
#[track_caller]
pub fn assert_pg_dump_eq(
    got: &std::collections::BTreeMap<String, Vec<String>>,
    want: &std::collections::BTreeMap<String, Vec<String>>,
    what: &str,
) {
    for (table, rows) in want {
        let other = got.get(table).cloned().unwrap_or_default();
        if &other != rows {
            let missing: Vec<_> = rows.iter().filter(|r| !other.contains(r)).take(3).collect();
            let extra: Vec<_> = other.iter().filter(|r| !rows.contains(r)).take(3).collect();
            panic!(
                "{what}: table {table} differs ({} rows vs {} expected); missing {missing:?}; \
                 extra {extra:?}",
                other.len(),
                rows.len()
            );
        }
    }
    assert_eq!(got.len(), want.len(), "{what}: table sets differ");
}

/// Ends every session on database `name` but the caller's (a dropped
/// connection, as a server restart or a network cut leaves it); returns how
/// many were ended.
pub fn terminate_sessions(admin: &str, name: &str) -> u64 {
    let mut c = connect(admin);
    c.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&name],
    )
    .expect("pg_terminate_backend")
    .len() as u64
}

/// The native rows of every invoice of a fresh SQLite fixture (seed
/// `seed`), decoded with the library's codec: rows to copy into Postgres.
pub fn native_invoices(n: u64, seed: u64) -> Vec<oneway::__test_support::native::NativeInvoice> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.sqlite");
    let spec = oneway::fixture::FixtureSpec {
        invoices: n,
        seed,
        ..oneway::fixture::FixtureSpec::default()
    };
    oneway::fixture::write_fixture(&path, &spec).unwrap();
    let src = oneway::__test_support::kv::KvSource::open(&path, "channeldb").unwrap();
    let buckets = src.invoice_buckets().unwrap().unwrap();
    let mut hashes: std::collections::HashMap<u32, [u8; 32]> = std::collections::HashMap::new();
    src.for_each_payment_hash(&buckets, |h, num| {
        hashes.insert(num, h);
        Ok(())
    })
    .unwrap();
    src.read_invoices(&buckets, None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|raw| {
            let inv = oneway::codec::decode_invoice(&raw.value).unwrap();
            let sets: Vec<_> = raw
                .amp_sets
                .iter()
                .map(|(id, v)| (*id, oneway::codec::decode_htlc_set(v).unwrap()))
                .collect();
            oneway::__test_support::native::NativeInvoice::from_kv(&inv, hashes[&raw.num], &sets)
                .unwrap()
        })
        .collect()
}
