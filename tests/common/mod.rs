//! Shared helpers for the fault-injection and crash tests (`tests/crash.rs`,
//! `tests/faults.rs`).
//!
//! * [`run`] / [`migrate`] / [`status`] / [`guard`] / [`verify`] run the real
//!   `oneway` binary in a child process, never the library, with a clean
//!   environment (no failpoint or size limit inherited from the test runner).
//! * [`NativeDump`] is a canonical, order-free picture of lnd's native invoice
//!   tables: surrogate HTLC row ids are replaced by the natural key
//!   (chan_id, htlc_id), every value carries its SQLite storage class, rows
//!   are sorted. Two stores holding the same invoices dump equal, however
//!   many crashes and reruns produced them.
//! * [`KvDump`] is every row of `channeldb_kv` as (parent key path, key,
//!   value, sequence), without row ids, so "identical to the original except
//!   for one added tombstone row" is a set comparison.
//! * [`Source`] edits a KV store the way lnd would (new invoices, an open
//!   invoice settled later) and reads or rewrites raw invoice values for the
//!   bad-input tests.
#![allow(dead_code, unused_macros)]

/// `insta::assert_snapshot!` into the repository's `snapshots/` folder, named
/// without the test module (needs `#[macro_use] mod common;`).
macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}

/// [`snapshot!`] for a value serialised as JSON.
macro_rules! snapshot_json {
    ($name:expr, $value:expr) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_json_snapshot!($name, $value);
        })
    };
}

/// An emulation of lnd's start-up on a native database (`lnd.sqlite`).
pub mod lnd;
pub mod pg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use oneway::fixture::{write_fixture, FixtureSpec, FixtureSummary};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_oneway");

/// Editing a KV store as lnd would ([`Source`]); also included by
/// `examples/lnd_standin.rs`.
pub mod source;
pub use source::{Source, KV_TABLE};

/// Environment variables of the engine's fault injection; removed from every
/// child unless a test sets them explicitly.
const FAULT_ENV: &[&str] = &["ONEWAY_FAILPOINT", "ONEWAY_MAX_PAGE_COUNT", "RUST_LOG"];

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// What a child `oneway` did.
#[derive(Debug, Clone)]
pub struct Out {
    /// The exit code, `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    fn from_output(o: Output) -> Out {
        Out::from_parts(o.status, &o.stdout, &o.stderr)
    }

    /// Builds an `Out` from a status and the captured streams.
    pub fn from_parts(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> Out {
        Out {
            code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }

    /// True when the process exited with code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// True when a failpoint aborted the process (SIGABRT).
    pub fn aborted(&self) -> bool {
        self.signal == Some(libc_sigabrt())
    }

    /// The error line (`oneway: error: ...`) without its prefix, or "".
    pub fn error(&self) -> String {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("oneway: error: "))
            .unwrap_or("")
            .to_string()
    }

    /// stdout parsed as JSON (for `--json` commands).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Panics with everything the child printed unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self, what: &str) -> &Out {
        assert!(self.ok(), "{what}: expected exit 0, got {self:?}");
        self
    }

    /// Panics unless the child exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32, what: &str) -> &Out {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: wrong exit, child said {self:?}"
        );
        self
    }
}

/// SIGABRT's number (6 on every Unix this runs on).
fn libc_sigabrt() -> i32 {
    6
}

/// SIGKILL's number.
pub const SIGKILL: i32 = 9;

/// A `oneway` command with a clean fault-injection environment plus `env`.
pub fn command<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for k in FAULT_ENV {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `oneway args…` to completion.
pub fn run<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Out {
    let out = command(args, env)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    Out::from_output(out)
}

/// The argument list of `oneway migrate --json` on a pair.
pub fn migrate_args(kv: &Path, sql: &Path, batch: usize) -> Vec<std::ffi::OsString> {
    pair_args(
        "migrate",
        kv,
        sql,
        &["--batch-size", &batch.to_string(), "--json"],
    )
}

/// `oneway migrate --json` with `env`.
pub fn migrate(kv: &Path, sql: &Path, batch: usize, env: &[(&str, &str)]) -> Out {
    run(&migrate_args(kv, sql, batch), env)
}

/// `oneway migrate` until it succeeds; panics on any failure.
#[track_caller]
pub fn migrate_ok(kv: &Path, sql: &Path, batch: usize) -> Value {
    let out = migrate(kv, sql, batch, &[]);
    out.assert_ok("oneway migrate");
    out.json()
}

/// `oneway migrate` with the failpoint `spec` armed; asserts the child was
/// aborted there.
#[track_caller]
pub fn crash_at(kv: &Path, sql: &Path, batch: usize, spec: &str) -> Out {
    let out = migrate(kv, sql, batch, &[("ONEWAY_FAILPOINT", spec)]);
    let name = spec.split(':').next().unwrap_or(spec);
    assert!(
        out.aborted() && out.stderr.contains(&format!("failpoint {name} reached")),
        "failpoint {spec} was not reached: {out:?}"
    );
    out
}

/// The argument list `cmd --kv KV --sql SQL extra…`.
pub fn pair_args(cmd: &str, kv: &Path, sql: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![
        cmd.into(),
        "--kv".into(),
        kv.into(),
        "--sql".into(),
        sql.into(),
    ];
    v.extend(extra.iter().map(|s| s.into()));
    v
}

/// `oneway status --json`; panics unless it exits 0.
#[track_caller]
pub fn status(kv: &Path, sql: &Path) -> Value {
    let out = run(&pair_args("status", kv, sql, &["--json"]), &[]);
    out.assert_ok("oneway status");
    out.json()
}

/// `oneway verify --json`.
pub fn verify(kv: &Path, sql: &Path) -> Out {
    run(&pair_args("verify", kv, sql, &["--json"]), &[])
}

/// Asserts `oneway verify` finds every invoice equal and none outdated.
#[track_caller]
pub fn assert_verify_clean(kv: &Path, sql: &Path, invoices: u64) {
    let out = verify(kv, sql);
    out.assert_ok("oneway verify");
    let v = out.json();
    assert_eq!(v["mismatch_count"], 0, "verify: {v}");
    assert_eq!(v["outdated"], 0, "verify: {v}");
    assert_eq!(v["invoices"], invoices, "verify: {v}");
}

/// `oneway guard --backend <backend>` (plain output).
pub fn guard(kv: &Path, sql: &Path, backend: &str) -> Out {
    run(&pair_args("guard", kv, sql, &["--backend", backend]), &[])
}

// ---------------------------------------------------------------------------
// Stores on disk
// ---------------------------------------------------------------------------

/// Writes a fixture KV store with lnd's prefix.
pub fn make_fixture(path: &Path, invoices: u64, seed: u64) -> FixtureSummary {
    write_fixture(
        path,
        &FixtureSpec {
            invoices,
            seed,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Copies a store file, with its `-wal` file when there is one (a native
/// store left by a killed process keeps committed data there).
pub fn copy_store(src: &Path, dst: &Path) {
    std::fs::copy(src, dst)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
    let wal_src = with_suffix(src, "-wal");
    let wal_dst = with_suffix(dst, "-wal");
    let _ = std::fs::remove_file(with_suffix(dst, "-shm"));
    if wal_src.exists() {
        std::fs::copy(&wal_src, &wal_dst).expect("copy -wal");
    } else {
        let _ = std::fs::remove_file(&wal_dst);
    }
}

/// Removes a store file and its `-wal`/`-shm` companions.
pub fn remove_store(path: &Path) {
    for p in [
        path.to_path_buf(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
    ] {
        let _ = std::fs::remove_file(p);
    }
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn open_rw(path: &Path) -> Connection {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    c.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    c
}

/// One SQLite value with its storage class: `NULL`, `i:1`, `r:1.5`,
/// `t:"text"`, `x:00ff`.
pub fn render(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => format!("i:{i}"),
        ValueRef::Real(r) => format!("r:{r}"),
        ValueRef::Text(t) => format!("t:{:?}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("x:{}", hex::encode(b)),
    }
}

fn rows(conn: &Connection, sql: &str) -> Vec<String> {
    let mut st = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = st.column_count();
    let mut out: Vec<String> = st
        .query_map([], |r| {
            let mut cols = Vec::with_capacity(n);
            for i in 0..n {
                cols.push(render(r.get_ref(i)?));
            }
            Ok(cols.join("|"))
        })
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    out.sort();
    out
}

/// The canonical queries: lnd's invoice tables with HTLC surrogate ids
/// replaced by (chan_id, htlc_id). LEFT JOINs keep orphans visible.
const NATIVE_TABLES: &[(&str, &str)] = &[
    (
        "invoices",
        "SELECT id, hash, preimage, settle_index, settled_at, memo, amount_msat, cltv_delta, expiry,
                payment_addr, payment_request, payment_request_hash, state, amount_paid_msat, is_amp,
                is_hodl, is_keysend, created_at FROM invoices",
    ),
    ("invoice_features", "SELECT invoice_id, feature FROM invoice_features"),
    (
        "invoice_htlcs",
        "SELECT chan_id, htlc_id, invoice_id, amount_msat, total_mpp_msat, accept_height, accept_time,
                expiry_height, state, resolve_time FROM invoice_htlcs",
    ),
    (
        "invoice_htlc_custom_records",
        "SELECT h.chan_id, h.htlc_id, h.invoice_id, c.key, c.value FROM invoice_htlc_custom_records c
         LEFT JOIN invoice_htlcs h ON h.id = c.htlc_id",
    ),
    (
        "amp_sub_invoices",
        "SELECT set_id, invoice_id, state, created_at, settled_at, settle_index FROM amp_sub_invoices",
    ),
    (
        "amp_sub_invoice_htlcs",
        "SELECT a.set_id, h.chan_id, h.htlc_id, a.invoice_id, a.root_share, a.child_index, a.hash, a.preimage
         FROM amp_sub_invoice_htlcs a LEFT JOIN invoice_htlcs h ON h.id = a.htlc_id",
    ),
    ("invoice_sequences", "SELECT name, current_value FROM invoice_sequences"),
    ("migration_tracker", "SELECT version FROM migration_tracker"),
];

/// A canonical picture of lnd's tables in a native store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeDump {
    /// Table → sorted rendered rows.
    pub tables: BTreeMap<&'static str, Vec<String>>,
}

impl NativeDump {
    /// SHA-256 over the canonical rows.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (t, rows) in &self.tables {
            h.update(t.as_bytes());
            h.update((rows.len() as u64).to_be_bytes());
            for r in rows {
                h.update((r.len() as u64).to_be_bytes());
                h.update(r.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// Rows of `invoices`.
    pub fn invoices(&self) -> usize {
        self.tables["invoices"].len()
    }

    /// Only the rows of the per-invoice tables that belong to invoices whose
    /// id satisfies `keep` (to compare a partly migrated store with a
    /// reference); the sequence and tracker tables are left out.
    pub fn restricted(&self, keep: impl Fn(i64) -> bool) -> NativeDump {
        let mut tables = BTreeMap::new();
        for (t, rows) in &self.tables {
            let col = match *t {
                "invoices" | "invoice_features" => 0,
                "amp_sub_invoices" => 1,
                "invoice_htlcs" | "invoice_htlc_custom_records" => 2,
                "amp_sub_invoice_htlcs" => 3,
                _ => continue,
            };
            let invoice_id = |r: &String| -> Option<i64> {
                r.split('|').nth(col)?.strip_prefix("i:")?.parse().ok()
            };
            let kept = rows
                .iter()
                .filter(|r| invoice_id(r).is_some_and(&keep))
                .cloned()
                .collect();
            tables.insert(*t, kept);
        }
        NativeDump { tables }
    }
}

/// Dumps lnd's tables of the native store at `path` canonically.
pub fn native_dump(path: &Path) -> NativeDump {
    let conn = open_rw(path);
    let mut tables = BTreeMap::new();
    for (name, sql) in NATIVE_TABLES {
        tables.insert(*name, rows(&conn, sql));
    }
    NativeDump { tables }
}

/// Panics with the first differing rows unless the two dumps are equal.
#[track_caller]
pub fn assert_native_eq(got: &NativeDump, want: &NativeDump, what: &str) {
    if got == want {
        return;
    }
    let mut report = String::new();
    for (t, want_rows) in &want.tables {
        let got_rows = got.tables.get(t).cloned().unwrap_or_default();
        let w: BTreeSet<&String> = want_rows.iter().collect();
        let g: BTreeSet<&String> = got_rows.iter().collect();
        let missing: Vec<_> = w.difference(&g).take(3).collect();
        let extra: Vec<_> = g.difference(&w).take(3).collect();
        if !missing.is_empty() || !extra.is_empty() || want_rows.len() != got_rows.len() {
            report.push_str(&format!(
                "\n  {t}: {} rows, want {}; missing {missing:?}; unexpected {extra:?}",
                got_rows.len(),
                want_rows.len()
            ));
        }
    }
    panic!("{what}: the native store differs from the reference:{report}");
}

/// Asserts SQLite finds the native store sound: integrity, and every
/// foreign key resolved. The one exception is the copy's staging of AMP
/// sub-invoices (`native::AMP_STAGING`): until the index build moves them
/// into `amp_sub_invoices`, an AMP HTLC row's set id may resolve in
/// `oneway_amp_staging` instead, and nowhere else.
#[track_caller]
pub fn assert_native_sound(path: &Path) {
    let conn = open_rw(path);
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(ok, "ok", "integrity_check of {}", path.display());
    let violations: Vec<(String, i64, String)> = conn
        .prepare("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let unresolved: Vec<&(String, i64, String)> = violations
        .iter()
        .filter(|(table, rowid, parent)| {
            let staged = table == "amp_sub_invoice_htlcs"
                && parent == "amp_sub_invoices"
                && conn
                    .query_row(
                        "SELECT count(*) FROM amp_sub_invoice_htlcs h JOIN oneway_amp_staging s
                         ON s.set_id = h.set_id AND s.invoice_id = h.invoice_id WHERE h.rowid = ?1",
                        [rowid],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap()
                    == 1;
            !staged
        })
        .collect();
    assert!(
        unresolved.is_empty(),
        "foreign_key_check of {}: {unresolved:?}",
        path.display()
    );
}

/// Asserts the copy's AMP staging table is empty (as it must be from
/// `Verified` on).
#[track_caller]
pub fn assert_nothing_staged(path: &Path) {
    let staged: i64 = open_rw(path)
        .query_row("SELECT count(*) FROM oneway_amp_staging", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        staged,
        0,
        "AMP sub-invoices still staged in {}",
        path.display()
    );
}

/// oneway's own record of the state, read directly from the native store.
pub fn state_row(path: &Path) -> Option<(String, i64, i64)> {
    if !path.exists() {
        return None;
    }
    let conn = open_rw(path);
    let has: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'oneway_state'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("schema")
        > 0;
    if !has {
        return None;
    }
    conn.query_row("SELECT state, copied, pass FROM oneway_state", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()
    .expect("state row")
}

/// One row of `oneway_journal` (without its sequence number and time).
#[derive(Debug, Clone)]
pub struct JournalRow {
    /// `transition`, `security` or another kind of entry.
    pub kind: String,
    /// The state before.
    pub from: Option<String>,
    /// The state after.
    pub to: Option<String>,
    /// The event (`Begin`, `BackendRefused`, ...).
    pub event: Option<String>,
    /// The JSON details (a string where they are not JSON).
    pub details: Value,
}

/// The journal of a native store, oldest first.
pub fn journal(path: &Path) -> Vec<JournalRow> {
    let conn = open_ro(path);
    let mut st = conn
        .prepare(
            "SELECT kind, from_state, to_state, event, details FROM oneway_journal ORDER BY seq",
        )
        .expect("journal");
    st.query_map([], |r| {
        let d: String = r.get(4)?;
        Ok(JournalRow {
            kind: r.get(0)?,
            from: r.get(1)?,
            to: r.get(2)?,
            event: r.get(3)?,
            details: serde_json::from_str(&d).unwrap_or(Value::String(d)),
        })
    })
    .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
    .expect("journal rows")
}

// ---------------------------------------------------------------------------
// The KV store
// ---------------------------------------------------------------------------

/// Every row of `channeldb_kv` as `parent-path :: key = value seq`, keys and
/// values with their storage class, without row ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvDump {
    /// The rendered rows.
    pub rows: BTreeSet<String>,
}

/// Renders one KV row the way [`kv_dump`] does.
pub fn kv_row(
    parent_path: &str,
    key: ValueRef<'_>,
    value: ValueRef<'_>,
    sequence: ValueRef<'_>,
) -> String {
    format!(
        "{parent_path} :: {} = {} seq {}",
        render(key),
        render(value),
        render(sequence)
    )
}

/// Dumps every row of `channeldb_kv` (see [`KvDump`]).
pub fn kv_dump(path: &Path) -> KvDump {
    let conn = open_ro(path);
    let mut st = conn
        .prepare(&format!(
            "SELECT id, parent_id, key, value, sequence FROM {KV_TABLE}"
        ))
        .expect("kv rows");
    struct Row {
        parent: Option<i64>,
        key: String,
        line: (String, String, String),
    }
    let mut by_id: HashMap<i64, Row> = HashMap::new();
    let mut q = st.query([]).expect("kv rows");
    while let Some(r) = q.next().expect("kv row") {
        let id: i64 = r.get(0).expect("id");
        by_id.insert(
            id,
            Row {
                parent: r.get(1).expect("parent"),
                key: render(r.get_ref(2).expect("key")),
                line: (
                    render(r.get_ref(2).expect("key")),
                    render(r.get_ref(3).expect("value")),
                    render(r.get_ref(4).expect("sequence")),
                ),
            },
        );
    }
    let mut paths: HashMap<i64, String> = HashMap::new();
    fn path_of(
        id: i64,
        by_id: &HashMap<i64, Row>,
        memo: &mut HashMap<i64, String>,
        depth: usize,
    ) -> String {
        if let Some(p) = memo.get(&id) {
            return p.clone();
        }
        let p = match by_id.get(&id) {
            None => format!("<missing row {id}>"),
            Some(r) if depth > 64 => format!("<cycle at {}>", r.key),
            Some(r) => match r.parent {
                None => format!("/{}", r.key),
                Some(parent) => format!("{}/{}", path_of(parent, by_id, memo, depth + 1), r.key),
            },
        };
        memo.insert(id, p.clone());
        p
    }
    let mut rows = BTreeSet::new();
    for r in by_id.values() {
        let parent = match r.parent {
            None => String::new(),
            Some(p) => path_of(p, &by_id, &mut paths, 0),
        };
        let (k, v, s) = &r.line;
        let line = format!("{parent} :: {k} = {v} seq {s}");
        assert!(rows.insert(line.clone()), "duplicate KV row {line}");
    }
    KvDump { rows }
}

/// The row the tombstone adds: `invoice-tombstone` = `1`, both BLOBs, in the
/// top-level `invoices` bucket.
pub fn tombstone_row() -> String {
    format!(
        "/x:{} :: x:{} = x:{} seq NULL",
        hex::encode(b"invoices"),
        hex::encode(b"invoice-tombstone"),
        hex::encode(b"1")
    )
}

/// The row of the top-level `invoices` bucket itself.
pub fn invoices_bucket_row() -> String {
    format!(" :: x:{} = NULL seq NULL", hex::encode(b"invoices"))
}

/// Asserts `now` is `original` plus exactly the rows `added`.
#[track_caller]
pub fn assert_kv_added(original: &KvDump, now: &KvDump, added: &[String], what: &str) {
    let gone: Vec<_> = original.rows.difference(&now.rows).take(5).collect();
    let new: BTreeSet<String> = now.rows.difference(&original.rows).cloned().collect();
    let want: BTreeSet<String> = added.iter().cloned().collect();
    assert!(gone.is_empty(), "{what}: KV rows lost or changed: {gone:?}");
    assert_eq!(new, want, "{what}: KV rows added");
}

/// Asserts the KV store is the original plus exactly the tombstone row.
#[track_caller]
pub fn assert_kv_tombstoned(original: &KvDump, kv: &Path, what: &str) {
    assert_kv_added(original, &kv_dump(kv), &[tombstone_row()], what);
}

/// Asserts the KV store is exactly the original (in particular: no tombstone).
#[track_caller]
pub fn assert_kv_unchanged(original: &KvDump, kv: &Path, what: &str) {
    assert_kv_added(original, &kv_dump(kv), &[], what);
}

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

/// (event, Unix seconds) of every transition in a native store's journal.
pub fn journal_times(sql: &Path) -> Vec<(String, f64)> {
    let conn = open_rw(sql);
    let mut st = conn
        .prepare("SELECT event, at FROM oneway_journal WHERE kind = 'transition' ORDER BY seq")
        .expect("journal");
    st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
        .expect("journal rows")
        .into_iter()
        .map(|(e, at)| (e, unix_seconds(&at)))
        .collect()
}

/// Parses the journal's UTC time, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, to Unix seconds.
pub fn unix_seconds(at: &str) -> f64 {
    let msg = format!("unexpected journal time {at:?}");
    let (date, time) = at.trim_end_matches('Z').split_once('T').expect(&msg);
    let d: Vec<i64> = date.split('-').map(|x| x.parse().expect(&msg)).collect();
    let t: Vec<f64> = time.split(':').map(|x| x.parse().expect(&msg)).collect();
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
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

// ---------------------------------------------------------------------------
// Editing a KV store (`Source` is in `source.rs`)
// ---------------------------------------------------------------------------

/// The change every "source changed" scenario applies: `added` new invoices
/// and the settlement of the `settle_nth` settleable open invoice whose
/// number is at most `settle_below`. Returns (the settled number, the added numbers).
pub fn change_source(kv: &Path, added: u32, settle_below: u32, tag: &str) -> (u32, Vec<u32>) {
    let mut s = Source::open(kv);
    let target = *s
        .open_invoices()
        .iter()
        .rfind(|&&n| n <= settle_below)
        .expect("an open invoice early in the store");
    s.settle(target);
    let new = s.add_invoices(added, tag);
    (target, new)
}

// ---------------------------------------------------------------------------
// Raw TLV surgery on invoice values
// ---------------------------------------------------------------------------

/// One record of an invoice body: its type, where its length starts, where
/// its value starts, and the value's length.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Record type.
    pub ty: u64,
    /// Offset of the BigSize length in the whole value.
    pub len_at: usize,
    /// Offset of the record value in the whole value.
    pub at: usize,
    /// Length of the record value.
    pub len: usize,
}

fn bigsize(b: &[u8], at: usize) -> (u64, usize) {
    match b[at] {
        0xfd => (u64::from(u16::from_be_bytes([b[at + 1], b[at + 2]])), 3),
        0xfe => (
            u64::from(u32::from_be_bytes(b[at + 1..at + 5].try_into().unwrap())),
            5,
        ),
        0xff => (u64::from_be_bytes(b[at + 1..at + 9].try_into().unwrap()), 9),
        x => (u64::from(x), 1),
    }
}

/// The records of the body stream of an invoice value.
pub fn body_records(value: &[u8]) -> Vec<Rec> {
    let body_len = u64::from_be_bytes(value[..8].try_into().unwrap()) as usize;
    let end = 8 + body_len;
    let mut at = 8;
    let mut out = Vec::new();
    while at < end {
        let (ty, n) = bigsize(value, at);
        let len_at = at + n;
        let (len, m) = bigsize(value, len_at);
        let v = len_at + m;
        out.push(Rec {
            ty,
            len_at,
            at: v,
            len: len as usize,
        });
        at = v + len as usize;
    }
    out
}

/// The body record of type `ty`.
pub fn body_record(value: &[u8], ty: u64) -> Rec {
    *body_records(value)
        .iter()
        .find(|r| r.ty == ty)
        .unwrap_or_else(|| panic!("no body record of type {ty}"))
}

// ---------------------------------------------------------------------------
// A stand-in for a running lnd (`examples/lnd_standin.rs`)
// ---------------------------------------------------------------------------

/// The `lnd_standin` example binary of this build: next to the test binary,
/// `target/<profile>/deps/<test>-<hash>` → `target/<profile>/examples/lnd_standin`.
/// `cargo test --test <name>` does not build examples, so it is built here
/// once per test process (`cargo build --example lnd_standin` with the same
/// profile and target directory; a no-op when it is up to date).
pub fn lnd_standin_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name")
            .to_string();
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.args([
            "build",
            "--quiet",
            "--example",
            "lnd_standin",
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                c.arg("--release");
            }
            other => {
                c.args(["--profile", other]);
            }
        }
        let status = c.status().expect("run cargo build --example lnd_standin");
        assert!(status.success(), "cargo build --example lnd_standin failed");
        let bin = profile_dir.join("examples").join("lnd_standin");
        assert!(bin.is_file(), "no stand-in at {}", bin.display());
        bin
    })
    .clone()
}

/// Starts the lnd stand-in on the KV store `kv` with `args` (see
/// `examples/lnd_standin.rs`), stdout piped, and waits for its `opened …`
/// line, so that the store is open (and its journal mode set) on return.
/// Returns the child and a reader of its further stdout lines.
pub fn lnd_standin(
    kv: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = Command::new(lnd_standin_bin())
        .arg("--kv")
        .arg(kv)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lnd_standin");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines
        .next()
        .expect("lnd_standin printed nothing")
        .expect("read stdout");
    assert!(first.starts_with("opened "), "lnd_standin said {first:?}");
    (child, lines)
}

/// A `oneway migrate` child paused at a failpoint (`ONEWAY_FAILPOINT` with
/// `ONEWAY_FAILPOINT_PAUSE`), so a test can change the stores at exactly
/// that point and let it go on.
pub struct Paused {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Paused {
    pub fn start(kv: &Path, sql: &Path, spec: &str) -> Paused {
        let dir = tempfile::tempdir().unwrap();
        let pause = dir.path().to_str().unwrap().to_string();
        let child = command(
            &migrate_args(kv, sql, 50),
            &[
                ("ONEWAY_FAILPOINT", spec),
                ("ONEWAY_FAILPOINT_PAUSE", &pause),
                ("RUST_LOG", "oneway=debug"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oneway migrate");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.path().join("reached").exists() {
            assert!(Instant::now() < deadline, "failpoint {spec} never reached");
            std::thread::sleep(Duration::from_millis(5));
        }
        Paused { child, dir }
    }

    pub fn resume(self) -> Out {
        std::fs::write(self.dir.path().join("resume"), b"").unwrap();
        let out = self.child.wait_with_output().expect("wait");
        Out::from_parts(out.status, &out.stdout, &out.stderr)
    }
}

/// Deletes the tombstone from the KV store, as a restored backup or a lost
/// write would leave it.
pub fn remove_tombstone(kv: &Path) {
    let c = rusqlite::Connection::open(kv).expect("open the KV store");
    let n = c
        .execute(
            "DELETE FROM channeldb_kv WHERE key = CAST('invoice-tombstone' AS BLOB)
             AND parent_id = (SELECT id FROM channeldb_kv WHERE parent_id IS NULL
                              AND key = CAST('invoices' AS BLOB))",
            [],
        )
        .expect("delete the tombstone");
    assert_eq!(n, 1, "the store carried a tombstone");
}
