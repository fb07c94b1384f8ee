//! The reference run: an uncrashed migration of a KV store, the expectation
//! for every crashed-and-rerun migration of the same store.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::kv::{assert_kv_tombstoned, kv_dump, KvDump};
use super::native::{
    assert_native_eq, assert_native_sound, journal_times, native_dump, NativeDump,
};
use super::run::{assert_verify_clean, migrate_ok, status};
use super::stores::{copy_store, remove_store};

/// The result of an uncrashed migration of a KV store: the expectation for
/// every crashed-and-rerun migration of the same store.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The source before migration.
    pub kv_before: KvDump,
    /// The native store after migration.
    pub native: NativeDump,
    /// Invoices in the source.
    pub invoices: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// The run's `--json` report.
    pub report: Value,
    /// Seconds from the child's start to each transition it journaled
    /// (`Begin`, `VerificationPassed`, `TombstoneWritten`, `Lock`).
    pub transitions: BTreeMap<String, f64>,
}

/// Migrates a copy of `source` (in `dir`) without any fault and records the
/// outcome.
pub fn reference(source: &Path, dir: &Path, batch: usize) -> Reference {
    std::fs::create_dir_all(dir).expect("reference dir");
    let kv = dir.join("ref-kv.sqlite");
    let sql = dir.join("ref-native.sqlite");
    copy_store(source, &kv);
    remove_store(&sql);
    let kv_before = kv_dump(&kv);
    let wall = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    let report = migrate_ok(&kv, &sql, batch);
    let seconds = started.elapsed().as_secs_f64();
    let t0 = wall
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let transitions = journal_times(&sql)
        .into_iter()
        .map(|(event, at)| (event, at - t0))
        .collect();
    assert_eq!(report["state"], "Locked");
    assert_kv_tombstoned(&kv_before, &kv, "reference run");
    assert_native_sound(&sql);
    let native = native_dump(&sql);
    let invoices = report["invoices"].as_u64().expect("invoices");
    assert_eq!(native.invoices() as u64, invoices);
    Reference {
        kv_before,
        native,
        invoices,
        seconds,
        report,
        transitions,
    }
}
/// Asserts a finished pair equals the reference: state Locked, tombstone,
/// KV otherwise untouched, native rows identical, `oneway verify` clean.
#[track_caller]
pub fn assert_matches_reference(kv: &Path, sql: &Path, r: &Reference, what: &str) {
    let s = status(kv, sql);
    assert_eq!(s["state"], "Locked", "{what}: {s}");
    assert_eq!(s["tombstone_present"], true, "{what}: {s}");
    assert_eq!(s["native_invoices"], r.invoices, "{what}: {s}");
    assert_eq!(s["copied"], r.invoices, "{what}: {s}");
    assert_kv_tombstoned(&r.kv_before, kv, what);
    assert_native_sound(sql);
    let got = native_dump(sql);
    assert_native_eq(&got, &r.native, what);
    assert_eq!(got.digest(), r.native.digest());
    assert_verify_clean(kv, sql, r.invoices);
}
