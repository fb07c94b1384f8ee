//! The run lock: one migrator per native store at a time.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::fsm::State;

/// An exclusive claim on a native store, held for a whole run.
///
/// It is an OS file lock (`flock`) on `<sql>.lock`: the kernel drops it when
/// the holding process dies, however it dies, so a killed migrator never
/// leaves a stale lock behind. The file's text (pid, start time) is only for
/// the message the loser prints.
pub(super) struct RunLock {
    _file: File,
}

impl RunLock {
    /// `at` and `tombstone_present` are what this run saw before it tried
    /// the lock (for the refusal's JSON).
    pub(super) fn acquire(
        sql: &Path,
        at: Option<State>,
        tombstone_present: bool,
    ) -> Result<RunLock> {
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
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).ctx(&path, "locking the run lock")
            }
        }
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{}\n{}", std::process::id(), crate::store::now_text()))
            .ctx(&path, "writing the run lock")?;
        Ok(RunLock { _file: file })
    }
}
