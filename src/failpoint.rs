//! Deterministic crash injection at durable-write boundaries.
//!
//! The engine calls [`hit`] with a name at every point where a crash would
//! leave a distinct on-disk situation (before and after each transition's
//! commit, each batch commit, the tombstone write, the lock). Normally this
//! does nothing but one relaxed atomic load. When the environment variable
//! `ONEWAY_FAILPOINT` is set to `NAME` or `NAME:N`, the N-th hit (default 1)
//! of that failpoint aborts the process on the spot with
//! [`std::process::abort`] — no destructors, no flushes, no rollback: the
//! same thing a `SIGKILL` or a power cut does to SQLite's view of the world.
//!
//! With `ONEWAY_FAILPOINT_PAUSE=DIR` as well, the armed hit pauses instead
//! of aborting: it creates `DIR/reached` and goes on once `DIR/resume`
//! exists, so a test can change the source at that exact point of a live
//! run (see `tests/seal_witness.rs`). `NAME:N,M,…` arms several hits; each
//! pauses in turn, and removes `DIR/reached` and then `DIR/resume` before
//! going on, so the test waits for `resume` to vanish and then for the next
//! `reached` (see `tests/live_hashes.rs`). Without a pause, the first armed
//! hit aborts.
//!
//! The variable is read once. It exists for the crash tests
//! (`tests/crash.rs`); production runs never set it. [`NAMES`] lists every
//! failpoint so the tests can drive each one.
//!
//! All of this is compiled only with the `failpoints` feature (the tests
//! turn it on); without it [`hit`] is empty and no variable is read.

#[cfg(feature = "failpoints")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

/// Every failpoint the engine contains, in the order a migration passes them.
pub const NAMES: &[&str] = &[
    "begin.before_commit",
    "begin.after_commit",
    "batch.before_commit",
    "batch.after_commit",
    "indexes.before_commit",
    "indexes.after_commit",
    "verify.before_commit",
    "verify.after_commit",
    "tombstone.before_insert",
    "tombstone.after_commit",
    "tombstoned.before_commit",
    "tombstoned.after_commit",
    "resync.before_commit",
    "resync.after_commit",
    "resynced.before_commit",
    "resynced.after_commit",
    "lock.before_commit",
    "lock.after_commit",
];

#[cfg(feature = "failpoints")]
struct Armed {
    name: String,
    /// The armed hits (1-based), ascending.
    at: Vec<u64>,
    hits: AtomicU64,
    /// `ONEWAY_FAILPOINT_PAUSE`: pause here instead of aborting.
    pause: Option<std::path::PathBuf>,
}

#[cfg(feature = "failpoints")]
fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("ONEWAY_FAILPOINT").ok()?;
            let (name, at) = match spec.split_once(':') {
                Some((n, k)) => (
                    n.to_string(),
                    k.split(',')
                        .map(|k| k.parse().unwrap_or(1u64).max(1))
                        .collect(),
                ),
                None => (spec, vec![1]),
            };
            Some(Armed {
                name,
                at,
                hits: AtomicU64::new(0),
                pause: std::env::var_os("ONEWAY_FAILPOINT_PAUSE").map(Into::into),
            })
        })
        .as_ref()
}

/// Marks a failpoint; does nothing without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Marks a failpoint; aborts the process if it is the armed one and this is
/// the armed hit.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if let Some(a) = armed() {
        let n = if a.name == name {
            a.hits.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        if a.at.contains(&n) {
            if let Some(dir) = &a.pause {
                pause(name, dir);
                return;
            }
            eprintln!("oneway: failpoint {name} reached (hit {n}), aborting");
            std::process::abort();
        }
    }
}

/// Creates `DIR/reached`, then waits until the test creates `DIR/resume`:
/// lets a test act (as lnd would) at an exact point of a live run. Aborts
/// if nobody answers within a minute, so a broken test cannot hang.
#[cfg(feature = "failpoints")]
fn pause(name: &str, dir: &std::path::Path) {
    eprintln!("oneway: failpoint {name} reached, pausing");
    if std::fs::write(dir.join("reached"), name).is_err() {
        std::process::abort();
    }
    let resume = dir.join("resume");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !resume.exists() {
        if std::time::Instant::now() > deadline {
            eprintln!("oneway: failpoint {name}: nobody resumed the pause, aborting");
            std::process::abort();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Ready for the next armed hit: `reached` goes first, so a test that
    // saw `resume` vanish never sees a stale `reached`.
    let _ = std::fs::remove_file(dir.join("reached"));
    let _ = std::fs::remove_file(resume);
}
