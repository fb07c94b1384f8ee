//! The run lock: one migrator per native store at a time.
//!
//! Whatever the backend, the claim dies with its holder, however it dies, so
//! a killed migrator never leaves a stale lock behind:
//! - SQLite: an OS file lock (`flock`) on `<sql>.lock`, which the kernel
//!   drops when the process dies;
//! - PostgreSQL: a session advisory lock ([`ADVISORY_KEY`]) on a connection
//!   of its own, which the server drops when the session ends (the process
//!   died, the connection broke, the server restarted). Advisory locks are
//!   per database, and one database holds one lnd's stores.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::fsm::State;
use crate::options::Options;

/// An exclusive claim on a native store, held for a whole run (see the
/// module documentation); released when dropped.
pub struct RunLock {
    _held: Held,
}

/// What keeps the claim alive: held, never read; dropping it releases the
/// claim.
enum Held {
    File(#[allow(dead_code)] File),
    #[cfg(feature = "postgres")]
    Session(#[allow(dead_code)] Box<postgres::Client>),
}

/// The advisory lock key of a migration on Postgres: "oneway" in ASCII and
/// the number of this lock's format.
#[cfg(feature = "postgres")]
pub const ADVISORY_KEY: i64 = 0x6f6e_6577_6179_0001;

impl RunLock {
    /// Claims the native store `opts` names. `at` and `tombstone_present`
    /// are what this run saw before it tried the lock (for the refusal's
    /// JSON).
    pub fn acquire(opts: &Options, at: Option<State>, tombstone_present: bool) -> Result<RunLock> {
        #[cfg(feature = "postgres")]
        if let Some(dsn) = opts.dsn() {
            return advisory(dsn, &opts.sql, at, tombstone_present);
        }
        Ok(RunLock {
            _held: Held::File(file_lock(&opts.sql, at, tombstone_present)?),
        })
    }
}

/// The SQLite run lock: `flock` on `<sql>.lock`.
fn file_lock(sql: &Path, at: Option<State>, tombstone_present: bool) -> Result<File> {
    let path = crate::files::lock_path(sql);
    // Mode 0600, never through a symbolic link (`files::open_lock`).
    let mut file = crate::files::open_lock(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let mut lines = text.lines();
            return Err(Error::InProgress {
                pid: lines.next().unwrap_or("unknown").to_string(),
                since: lines.next().unwrap_or("unknown").to_string(),
                path,
                at,
                tombstone_present,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).ctx(&path, "locking the run lock"),
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}\n{}", std::process::id(), crate::store::now_text()))
        .ctx(&path, "writing the run lock")?;
    Ok(file)
}

/// The Postgres run lock: `pg_try_advisory_lock` on a session of its own;
/// the loser is told the holder's backend pid and since when it holds it.
#[cfg(feature = "postgres")]
fn advisory(
    dsn: &crate::postgres::Dsn,
    shown: &Path,
    at: Option<State>,
    tombstone_present: bool,
) -> Result<RunLock> {
    use crate::error::{PgContext, Role};
    let mut client = dsn
        .connect()
        .pg(Role::Native, "connecting for the run lock")?;
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&ADVISORY_KEY])
        .pg(Role::Native, "taking the run lock (an advisory lock)")?
        .get(0);
    if got {
        return Ok(RunLock {
            _held: Held::Session(Box::new(client)),
        });
    }
    // The holder, for the message: an advisory lock on a bigint key is
    // listed with the key's high half as classid and low half as objid.
    let holder = client
        .query_opt(
            "SELECT a.pid::text, COALESCE(a.backend_start::text, 'unknown') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = \
             (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.classid::bigint = ($1::bigint >> 32) \
             AND l.objid::bigint = ($1::bigint & 4294967295) LIMIT 1",
            &[&ADVISORY_KEY],
        )
        .pg(Role::Native, "reading who holds the run lock")?;
    let (pid, since) = holder.map_or(("unknown".into(), "unknown".into()), |r| {
        (
            format!("server backend {}", r.get::<_, String>(0)),
            r.get(1),
        )
    });
    Err(Error::InProgress {
        path: std::path::PathBuf::from(format!(
            "{} (advisory lock {ADVISORY_KEY:#x})",
            shown.display()
        )),
        pid,
        since,
        at,
        tombstone_present,
    })
}
