//! The benchmark behind `oneway bench` and `cargo bench`.
//!
//! For each size it writes an lnd-format store with the fixture generator,
//! measures the floor — the time SQLite needs to copy the raw `channeldb_kv`
//! table into a new file (`ATTACH …; CREATE TABLE c AS SELECT * FROM
//! kv.channeldb_kv`, WAL, `synchronous=FULL`) — and then runs a real
//! `oneway migrate --json` child process on the store, which reports its
//! phase times and its own peak RSS. Durability is as in production:
//! verification included, transitions `synchronous=FULL`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Context, Error, Result, Role};
use crate::fixture::{write_fixture, FixtureError, FixtureSpec};

#[cfg(feature = "postgres")]
pub mod pg;

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The store to benchmark could not be written.
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    /// SQLite failed while the floor was measured (the error names the
    /// copy and what was being done).
    #[error(transparent)]
    Floor(Error),
    /// A file-system operation failed.
    #[error("{}: {action} failed: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL step of `bench --postgres` failed (the DSN is only
    /// ever shown redacted).
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Postgres(crate::postgres::PgError),
    /// The child `oneway migrate` failed or did not lock the migration.
    #[error(
        "the native store {} was not migrated by the benchmark run: {output}",
        sql.display()
    )]
    NotMigrated {
        /// The native store the child was to create.
        sql: PathBuf,
        /// What the child printed, stdout then stderr.
        output: String,
    },
}

/// `.ctx(path, action)` for the benchmark's file-system failures.
trait IoContext<T> {
    fn ctx(self, path: &Path, action: &'static str) -> Result<T, BenchError>;
}

impl<T> IoContext<T> for std::result::Result<T, io::Error> {
    fn ctx(self, path: &Path, action: &'static str) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::Io {
            path: path.to_path_buf(),
            action,
            source,
        })
    }
}

/// Runs per size unless told otherwise: the figures are medians, because a
/// shared virtual machine's disk makes single runs vary by a third.
pub const DEFAULT_RUNS: usize = 3;

/// One line of the benchmark table: the median of several runs.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Invoices in the store.
    pub invoices: u64,
    /// Size of the KV file, MiB.
    pub kv_mib: f64,
    /// Runs measured (each: the floor, then a migration of a fresh copy).
    pub runs: usize,
    /// Seconds to copy the raw KV table with SQLite (the floor), median.
    pub floor_s: f64,
    /// Seconds in the copy phase (including building lnd's indexes), of the
    /// median run.
    pub copy_s: f64,
    /// Seconds in verification, of the median run.
    pub verify_s: f64,
    /// Seconds writing the tombstone and locking, of the median run.
    pub tombstone_s: f64,
    /// Wall time of the whole `oneway migrate` process, median.
    pub total_s: f64,
    /// Fastest run's wall time.
    pub total_min_s: f64,
    /// Slowest run's wall time.
    pub total_max_s: f64,
    /// Invoices per second over the whole migration (median run).
    pub invoices_per_s: f64,
    /// `total_s / floor_s` (medians).
    pub ratio_to_floor: f64,
    /// Peak resident memory of the migrating process, MiB: the highest of
    /// all runs.
    pub peak_rss_mib: f64,
}

/// What one migration run measured.
struct Measurement {
    total_s: f64,
    copy_s: f64,
    verify_s: f64,
    tombstone_s: f64,
    peak_rss_mib: f64,
}

/// Measures the floor: SQLite copying the raw KV table into a new file.
pub fn floor_seconds(kv: &Path, dir: &Path) -> Result<f64> {
    let out = dir.join("floor.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
    }
    let started = Instant::now();
    let conn = rusqlite::Connection::open(&out).ctx(Role::Native, &out, "opening")?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .ctx(Role::Native, &out, "setting WAL")?;
    conn.pragma_update(None, "synchronous", "FULL").ctx(
        Role::Native,
        &out,
        "setting synchronous",
    )?;
    conn.execute("ATTACH DATABASE ?1 AS kv", [kv.display().to_string()])
        .ctx(Role::Native, &out, "attaching the KV store")?;
    conn.execute_batch("BEGIN; CREATE TABLE c AS SELECT * FROM kv.channeldb_kv; COMMIT;")
        .ctx(Role::Native, &out, "copying the KV table")?;
    drop(conn);
    let secs = started.elapsed().as_secs_f64();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
    }
    Ok(secs)
}

fn remove_store(p: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
    }
}

/// Migrates `kv` into a new `sql` with a child `exe migrate` process.
fn migrate_once(
    exe: &Path,
    kv: &Path,
    sql: &Path,
    batch_size: usize,
) -> Result<Measurement, BenchError> {
    remove_store(sql);
    let started = Instant::now();
    let out = Command::new(exe)
        .arg("migrate")
        .arg("--kv")
        .arg(kv)
        .arg("--sql")
        .arg(sql)
        .arg("--batch-size")
        .arg(batch_size.to_string())
        .arg("--json")
        .output()
        .ctx(exe, "running oneway migrate")?;
    let total_s = started.elapsed().as_secs_f64();
    measurement(&out, total_s, sql.to_path_buf())
}

/// What a child `oneway migrate --json` reported, or why it did not lock
/// the migration of `sql`.
fn measurement(
    out: &std::process::Output,
    total_s: f64,
    sql: PathBuf,
) -> Result<Measurement, BenchError> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() || report["state"] != "Locked" {
        return Err(BenchError::NotMigrated {
            sql,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let secs = |k: &str| report["seconds"][k].as_f64().unwrap_or(0.0);
    Ok(Measurement {
        total_s,
        copy_s: secs("copy"),
        verify_s: secs("verify"),
        tombstone_s: secs("tombstone"),
        peak_rss_mib: report["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
    })
}

/// The median of `v` (the lower middle one for an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// The files of one size's benchmark: the store written once, the copy of
/// it that each run migrates, and the native store each run creates.
struct Files {
    source: PathBuf,
    kv: PathBuf,
    sql: PathBuf,
}

impl Files {
    fn new(dir: &Path, invoices: u64) -> Files {
        Files {
            source: dir.join(format!("bench-source-{invoices}.sqlite")),
            kv: dir.join(format!("bench-kv-{invoices}.sqlite")),
            sql: dir.join(format!("bench-native-{invoices}.sqlite")),
        }
    }

    fn remove(&self) {
        for p in [&self.source, &self.kv, &self.sql] {
            remove_store(p);
        }
    }

    /// A fresh copy of the source as the KV store, written to disk before
    /// anything is timed: neither the floor nor the migration pays for
    /// flushing it.
    fn fresh_copy(&self) -> Result<(), BenchError> {
        remove_store(&self.kv);
        std::fs::copy(&self.source, &self.kv)
            .and_then(|_| std::fs::File::open(&self.kv)?.sync_all())
            .ctx(&self.kv, "copying the benchmark store")
    }
}

/// Benchmarks one store size: writes the store once, then `runs` times
/// measures the floor and migrates a fresh copy of the store with a child
/// `exe migrate` process, alternating so that both see the same machine.
pub fn run_size(
    exe: &Path,
    dir: &Path,
    invoices: u64,
    batch_size: usize,
    runs: usize,
) -> Result<BenchRow, BenchError> {
    let files = Files::new(dir, invoices);
    files.remove();
    write_fixture(
        &files.source,
        &FixtureSpec {
            invoices,
            seed: 1,
            ..Default::default()
        },
    )?;
    let kv_mib = std::fs::metadata(&files.source)
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0);
    let mut floors = Vec::new();
    let mut done = Vec::new();
    for _ in 0..runs.max(1) {
        files.fresh_copy()?;
        floors.push(floor_seconds(&files.kv, dir).map_err(BenchError::Floor)?);
        done.push(migrate_once(exe, &files.kv, &files.sql, batch_size)?);
    }
    files.remove();
    Ok(row(invoices, kv_mib, median(&mut floors), done))
}

/// The row of one size: the median run's phases, the range of all runs'
/// wall times and the highest peak memory.
fn row(invoices: u64, kv_mib: f64, floor_s: f64, mut done: Vec<Measurement>) -> BenchRow {
    done.sort_by(|a, b| a.total_s.total_cmp(&b.total_s));
    let mid = &done[(done.len() - 1) / 2];
    BenchRow {
        invoices,
        kv_mib,
        runs: done.len(),
        floor_s,
        copy_s: mid.copy_s,
        verify_s: mid.verify_s,
        tombstone_s: mid.tombstone_s,
        total_s: mid.total_s,
        total_min_s: done[0].total_s,
        total_max_s: done[done.len() - 1].total_s,
        invoices_per_s: invoices as f64 / mid.total_s,
        ratio_to_floor: mid.total_s / floor_s,
        peak_rss_mib: done.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
    }
}

/// Runs every size and returns the rows.
pub fn run(
    exe: &Path,
    dir: Option<PathBuf>,
    sizes: &[u64],
    batch_size: usize,
    runs: usize,
    mut each: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>, BenchError> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).ctx(&d, "creating the benchmark folder")?;
            d
        }
        None => {
            tmp = tempfile::tempdir().ctx(&std::env::temp_dir(), "creating a temporary folder")?;
            tmp.path().to_path_buf()
        }
    };
    let mut rows = Vec::new();
    for &n in sizes {
        let row = run_size(exe, &dir, n, batch_size, runs)?;
        each(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The table header matching [`markdown_row`].
pub const MARKDOWN_HEADER: &str = "| invoices | KV MiB | runs | floor s | copy s | verify s | tombstone s | total s | total range s | invoices/s | total/floor | peak RSS MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

/// One row as a markdown table line.
pub fn markdown_row(r: &BenchRow) -> String {
    format!(
        "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}–{:.2} | {:.0} | {:.1} | {:.1} |",
        r.invoices,
        r.kv_mib,
        r.runs,
        r.floor_s,
        r.copy_s,
        r.verify_s,
        r.tombstone_s,
        r.total_s,
        r.total_min_s,
        r.total_max_s,
        r.invoices_per_s,
        r.ratio_to_floor,
        r.peak_rss_mib
    )
}
