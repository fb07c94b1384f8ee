//! The benchmark behind `oneway bench` and `cargo bench`.
//!
//! For each size it writes an lnd-format store with the fixture generator,
//! measures the floor — the time SQLite needs to copy the raw `channeldb_kv`
//! table into a new file (`ATTACH …; CREATE TABLE c AS SELECT * FROM
//! kv.channeldb_kv`, WAL, `synchronous=FULL`) — and then runs a real
//! `oneway migrate --json` child process on the store, which reports its
//! phase times and its own peak RSS. Durability is as in production:
//! verification included, transitions `synchronous=FULL`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Context, Error, Result, Role};
use crate::fixture::{write_fixture, FixtureSpec};

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

/// One migration run.
struct Run {
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
    let e = |action: &'static str| {
        let out = out.clone();
        move |err| Error::sqlite(Role::Native, out, action, err)
    };
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(e("setting WAL"))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(e("setting synchronous"))?;
    conn.execute("ATTACH DATABASE ?1 AS kv", [kv.display().to_string()])
        .map_err(e("attaching the KV store"))?;
    conn.execute_batch("BEGIN; CREATE TABLE c AS SELECT * FROM kv.channeldb_kv; COMMIT;")
        .map_err(e("copying the KV table"))?;
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
fn migrate_once(exe: &Path, kv: &Path, sql: &Path, batch_size: usize) -> Result<Run> {
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
        .map_err(|e| Error::Io {
            path: exe.to_path_buf(),
            action: "running oneway migrate".into(),
            source: e,
        })?;
    let total_s = started.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() || report["state"] != "Locked" {
        return Err(Error::NotOnewayStore {
            path: sql.to_path_buf(),
            why: format!(
                "was not migrated by the benchmark run: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let secs = |k: &str| report["seconds"][k].as_f64().unwrap_or(0.0);
    Ok(Run {
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

/// Benchmarks one store size: writes the store once, then `runs` times
/// measures the floor and migrates a fresh copy of the store with a child
/// `exe migrate` process, alternating so that both see the same machine.
pub fn run_size(
    exe: &Path,
    dir: &Path,
    invoices: u64,
    batch_size: usize,
    runs: usize,
) -> Result<BenchRow> {
    let source = dir.join(format!("bench-source-{invoices}.sqlite"));
    let kv = dir.join(format!("bench-kv-{invoices}.sqlite"));
    let sql = dir.join(format!("bench-native-{invoices}.sqlite"));
    for p in [&source, &kv, &sql] {
        remove_store(p);
    }
    write_fixture(
        &source,
        &FixtureSpec {
            invoices,
            seed: 1,
            ..Default::default()
        },
    )?;
    let kv_mib = std::fs::metadata(&source)
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0);
    let mut floors = Vec::new();
    let mut done = Vec::new();
    for _ in 0..runs.max(1) {
        remove_store(&kv);
        // Written to disk before anything is timed: neither the floor nor
        // the migration pays for flushing the copy.
        std::fs::copy(&source, &kv)
            .and_then(|_| std::fs::File::open(&kv)?.sync_all())
            .map_err(|e| Error::Io {
                path: kv.clone(),
                action: "copying the benchmark store".into(),
                source: e,
            })?;
        floors.push(floor_seconds(&kv, dir)?);
        done.push(migrate_once(exe, &kv, &sql, batch_size)?);
    }
    for p in [&source, &kv, &sql] {
        remove_store(p);
    }
    let floor_s = median(&mut floors);
    done.sort_by(|a, b| a.total_s.total_cmp(&b.total_s));
    let mid = &done[(done.len() - 1) / 2];
    Ok(BenchRow {
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
    })
}

/// Runs every size and returns the rows.
pub fn run(
    exe: &Path,
    dir: Option<PathBuf>,
    sizes: &[u64],
    batch_size: usize,
    runs: usize,
    mut each: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).map_err(|e| Error::Io {
                path: d.clone(),
                action: "creating the benchmark folder".into(),
                source: e,
            })?;
            d
        }
        None => {
            tmp = tempfile::tempdir().map_err(|e| Error::Io {
                path: std::env::temp_dir(),
                action: "creating a temporary folder".into(),
                source: e,
            })?;
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
