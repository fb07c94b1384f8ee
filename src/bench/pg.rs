//! `oneway bench --postgres DSN`: the same measurement on a PostgreSQL
//! server, both stores in one database as lnd lays them out.
//!
//! For each size the fixture generator writes an lnd-format KV table once,
//! into a database of its own (`oneway_bench_<n>`). Each run then clones it
//! (`CREATE DATABASE … TEMPLATE`, not timed, followed by a `CHECKPOINT` so
//! the clone's writes are not paid for by what is timed), measures the floor
//! in the clone — the server copying the raw KV table, `CREATE TABLE c AS
//! SELECT * FROM channeldb_kv` in one committed transaction — drops that
//! copy, and runs a real `oneway migrate --postgres` child process on the
//! clone, which reports its phase times and its peak RSS. The databases are
//! dropped at the end. The DSN's role must be allowed to create databases.
//!
//! The child gets its DSN through `ONEWAY_POSTGRES_DSN`, never on its
//! command line, where other users could read a password.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use super::{median, row, BenchError, BenchRow, IoContext, Measurement};
use crate::fixture::{write_fixture_postgres, FixtureSpec};
use crate::postgres::{Dsn, PgError};

/// Databases this benchmark creates start with this.
pub const DB_PREFIX: &str = "oneway_bench_";

/// `text` (a key=value or URL DSN) naming the database `dbname` instead:
/// for a URL the path is replaced, for key=value a later `dbname` wins.
pub fn dsn_with_dbname(text: &str, dbname: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = text.strip_prefix(scheme) {
            let (main, query) = match rest.split_once('?') {
                Some((m, q)) => (m, format!("?{q}")),
                None => (rest, String::new()),
            };
            let authority = main.split_once('/').map_or(main, |(a, _)| a);
            return format!("{scheme}{authority}/{dbname}{query}");
        }
    }
    format!("{text} dbname={dbname}")
}

/// A session on the server's maintenance connection (the DSN as given),
/// for creating and dropping the benchmark's databases.
struct Server {
    text: String,
    admin: postgres::Client,
}

impl Server {
    fn connect(text: &str) -> Result<Server, BenchError> {
        let dsn = Dsn::parse(text).map_err(pg)?;
        let admin = dsn.connect().map_err(pg)?;
        Ok(Server {
            text: text.to_string(),
            admin,
        })
    }

    fn run(&mut self, sql: &str, action: &str) -> Result<(), BenchError> {
        self.admin
            .batch_execute(sql)
            .map_err(crate::postgres::sql(action))
            .map_err(pg)
    }

    fn drop_db(&mut self, name: &str) -> Result<(), BenchError> {
        self.run(
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            "dropping a benchmark database",
        )
    }

    /// A fresh clone of `template` named `name`, checkpointed.
    fn clone_db(&mut self, template: &str, name: &str) -> Result<(), BenchError> {
        self.drop_db(name)?;
        self.run(
            &format!("CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY"),
            "cloning the benchmark database",
        )?;
        self.run("CHECKPOINT", "checkpointing before the timed run")
    }
}

fn pg(e: PgError) -> BenchError {
    BenchError::Postgres(e)
}

/// The floor in the database `text` names: the server copying the raw KV
/// table in one committed transaction; the copy is dropped afterwards.
fn floor_seconds(text: &str) -> Result<f64, BenchError> {
    let mut c = Dsn::parse(text).and_then(|d| d.connect()).map_err(pg)?;
    let started = Instant::now();
    c.batch_execute("BEGIN; CREATE TABLE c AS SELECT * FROM channeldb_kv; COMMIT;")
        .map_err(crate::postgres::sql("copying the KV table (the floor)"))
        .map_err(pg)?;
    let secs = started.elapsed().as_secs_f64();
    c.batch_execute("DROP TABLE c")
        .map_err(crate::postgres::sql("dropping the floor's copy"))
        .map_err(pg)?;
    Ok(secs)
}

/// Migrates the database `text` names with a child `exe migrate --postgres`.
fn migrate_once(
    exe: &std::path::Path,
    text: &str,
    batch_size: usize,
) -> Result<Measurement, BenchError> {
    let started = Instant::now();
    let out = Command::new(exe)
        .args(["migrate", "--json", "--batch-size", &batch_size.to_string()])
        .env("ONEWAY_POSTGRES_DSN", text)
        .output()
        .ctx(exe, "running oneway migrate")?;
    let total_s = started.elapsed().as_secs_f64();
    let shown: String =
        Dsn::parse(text).map_or_else(|_| "(unparsed)".into(), |d| d.redacted().into());
    super::measurement(&out, total_s, PathBuf::from(shown))
}

/// Benchmarks one size on the server `text` names (see the module docs).
pub fn run_size(
    exe: &std::path::Path,
    text: &str,
    invoices: u64,
    batch_size: usize,
    runs: usize,
) -> Result<BenchRow, BenchError> {
    let mut server = Server::connect(text)?;
    let source = format!("{DB_PREFIX}{invoices}");
    let target = format!("{DB_PREFIX}{invoices}_run");
    server.drop_db(&source)?;
    server.run(
        &format!("CREATE DATABASE {source}"),
        "creating the benchmark database",
    )?;
    let source_text = dsn_with_dbname(&server.text, &source);
    let spec = FixtureSpec {
        invoices,
        seed: 1,
        ..Default::default()
    };
    write_fixture_postgres(&source_text, &spec)?;
    let kv_mib = table_mib(&source_text)?;
    let run_text = dsn_with_dbname(&server.text, &target);
    let mut floors = Vec::new();
    let mut done = Vec::new();
    for _ in 0..runs.max(1) {
        server.clone_db(&source, &target)?;
        floors.push(floor_seconds(&run_text)?);
        done.push(migrate_once(exe, &run_text, batch_size)?);
    }
    server.drop_db(&target)?;
    server.drop_db(&source)?;
    Ok(row(invoices, kv_mib, median(&mut floors), done))
}

/// The KV table's size with its indexes, MiB.
fn table_mib(text: &str) -> Result<f64, BenchError> {
    let mut c = Dsn::parse(text).and_then(|d| d.connect()).map_err(pg)?;
    let bytes: i64 = c
        .query_one("SELECT pg_total_relation_size('channeldb_kv')", &[])
        .map_err(crate::postgres::sql("measuring the KV table"))
        .map_err(pg)?
        .get(0);
    Ok(bytes as f64 / 1048576.0)
}

/// Runs every size on the server `text` names and returns the rows.
pub fn run(
    exe: &std::path::Path,
    text: &str,
    sizes: &[u64],
    batch_size: usize,
    runs: usize,
    mut each: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>, BenchError> {
    let mut rows = Vec::new();
    for &n in sizes {
        let row = run_size(exe, text, n, batch_size, runs)?;
        each(&row);
        rows.push(row);
    }
    Ok(rows)
}
