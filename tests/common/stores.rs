//! Stores on disk: fixture KV stores, copies of store files with their
//! companions, connections, and SQLite values rendered with their storage
//! class.

use std::path::{Path, PathBuf};

use oneway::fixture::{write_fixture, FixtureSpec, FixtureSummary};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

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

/// A read-only connection to a store.
pub fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// A read-write connection to a store that waits up to 10 s for a lock.
pub fn open_rw(path: &Path) -> Connection {
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

/// Every row of `sql`, its columns rendered by [`render`] and joined by
/// `|`, sorted.
pub fn rows(conn: &Connection, sql: &str) -> Vec<String> {
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
