//! The files oneway creates, and the checks made before a run starts.
//!
//! The native store holds every payment preimage of the node, so every file
//! oneway creates (the store, its `-wal`, `-shm` and `-journal`, the run
//! lock) is mode [`PRIVATE_MODE`] whatever the umask: the store is created
//! here before SQLite opens it, SQLite gives its companion files the mode of
//! the database file, and [`narrow`] puts right any that are wider. Paths
//! are opened with `O_NOFOLLOW` where oneway creates or truncates a file, so
//! a symbolic link planted at that path cannot make a run write elsewhere.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The mode of every file oneway creates: read and write for the owner only.
pub const PRIVATE_MODE: u32 = 0o600;

/// Files SQLite keeps next to a database (the database itself is `""`).
const COMPANIONS: [&str; 4] = ["", "-wal", "-shm", "-journal"];

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The run lock's path: `<sql>.lock`.
pub fn lock_path(sql: &Path) -> PathBuf {
    with_suffix(sql, ".lock")
}

fn is_symlink_error(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// Opens (creating it mode [`PRIVATE_MODE`] when absent) the run lock at
/// `path`, refusing a symbolic link, anything but a regular file, and a file
/// with other hard links: the lock is truncated and rewritten on every run,
/// so it must be oneway's own file.
pub fn open_lock(path: &Path) -> Result<File> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_MODE)
        .custom_flags(nofollow())
        .open(path);
    let file = match opened {
        Err(e) if is_symlink_error(&e) => {
            return Err(Error::UnsafePath {
                path: path.to_path_buf(),
                why: "is a symbolic link; oneway does not follow links for its run lock \
                      (remove it if no oneway run is going, then rerun)"
                    .into(),
            })
        }
        opened => opened.ctx(path, "creating the run lock")?,
    };
    let meta = file
        .metadata()
        .ctx(path, "reading the run lock's metadata")?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(Error::UnsafePath {
            path: path.to_path_buf(),
            why: "is not a plain file of its own (a special file or one with other hard links); \
                  oneway rewrites its run lock, so it refuses to use it (remove it if no oneway \
                  run is going, then rerun)"
                .into(),
        });
    }
    if meta.mode() & 0o7777 != PRIVATE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))
            .ctx(path, "making the run lock private")?;
    }
    Ok(file)
}

/// Makes sure the native store at `path` exists as a private file before
/// SQLite opens it: a new one is created mode [`PRIVATE_MODE`] (never
/// through a symbolic link); an existing (empty) one is narrowed to it.
pub fn create_native(path: &Path) -> Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .custom_flags(nofollow())
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => narrow(path),
        Err(e) => Err(e).ctx(path, "creating the native SQL store"),
    }
}

/// Narrows the native store at `sql` and each of its companion files that
/// exists (`-wal`, `-shm`, `-journal`) to [`PRIVATE_MODE`] when its mode is
/// wider (any group or other bit set).
pub fn narrow(sql: &Path) -> Result<()> {
    for suffix in COMPANIONS {
        let p = with_suffix(sql, suffix);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_file() && meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(PRIVATE_MODE))
                .ctx(&p, "making the native store's file private")?;
        }
    }
    Ok(())
}

/// Refuses, before anything is copied, a KV store that this user cannot
/// write: the tombstone that seals it at the end of the migration is a write
/// to the file, and SQLite creates its journal next to it. Uses `access(2)`,
/// which answers for the real user; for root it fails only on a read-only
/// file system or an immutable file.
pub fn check_kv_writable(kv: &Path) -> Result<()> {
    use rustix::fs::Access;
    let refuse = |path: &Path, what: &str, e: rustix::io::Errno| Error::NotWritable {
        path: path.to_path_buf(),
        why: format!("{what} ({})", std::io::Error::from(e)),
    };
    rustix::fs::access(kv, Access::WRITE_OK)
        .map_err(|e| refuse(kv, "the file is not writable by this user", e))?;
    let dir = match kv.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    rustix::fs::access(dir, Access::WRITE_OK).map_err(|e| {
        refuse(
            kv,
            &format!(
                "its folder {} is not writable by this user, and SQLite writes its journal there",
                dir.display()
            ),
            e,
        )
    })
}

/// How many bytes the native store may need, estimated from the bytes of
/// the invoices in the KV store: the finished store comes to about twice
/// them, and the index build's write-ahead log briefly adds up to as much
/// again (`README.md`). What the store already holds is subtracted.
pub fn estimated_need(invoice_bytes: u64, native_now: u64) -> u64 {
    (invoice_bytes.saturating_mul(3) + (1 << 20)).saturating_sub(native_now)
}

/// The room decision, pure: `Ok` when `available` covers `needed`,
/// otherwise the refusal naming the folder and both numbers.
pub fn room_decision(folder: &Path, needed: u64, available: u64, invoice_bytes: u64) -> Result<()> {
    if available >= needed {
        return Ok(());
    }
    Err(Error::NoRoom {
        folder: folder.to_path_buf(),
        needed,
        available,
        invoice_bytes,
    })
}

/// Refuses up front when the folder of the native store `sql` has less free
/// space (for this user) than [`estimated_need`].
///
/// `invoice_bytes` is asked only when `upper_bound` (the KV store's size on
/// disk, which holds every invoice byte and more) would not fit: reading
/// every invoice's length is a pass over the store, and most folders have
/// room for three KV stores anyway.
pub fn check_room(
    sql: &Path,
    upper_bound: u64,
    invoice_bytes: impl FnOnce() -> Result<u64>,
) -> Result<()> {
    let folder = match sql.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let native_now: u64 = COMPANIONS
        .iter()
        .filter_map(|s| std::fs::metadata(with_suffix(sql, s)).ok())
        .map(|m| m.len())
        .sum();
    let vfs = rustix::fs::statvfs(&folder)
        .map_err(std::io::Error::from)
        .ctx(&folder, "reading the free space")?;
    let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    if available >= estimated_need(upper_bound, native_now) {
        return Ok(());
    }
    let invoice_bytes = invoice_bytes()?;
    room_decision(
        &folder,
        estimated_need(invoice_bytes, native_now),
        available,
        invoice_bytes,
    )
}

/// Bytes in binary units for messages (`12.3 MiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_refused_naming_the_folder_and_the_numbers() {
        let folder = Path::new("/srv/lnd");
        assert!(room_decision(folder, 100, 100, 10).is_ok());
        let e = room_decision(folder, 3 << 30, 1 << 30, 1 << 30).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/srv/lnd"), "{msg}");
        assert!(msg.contains("3.0 GiB"), "{msg}");
        assert!(msg.contains("1.0 GiB free"), "{msg}");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.reason(), "insufficient_space");
    }

    #[test]
    fn the_estimate_is_three_times_the_invoices_less_what_exists() {
        assert_eq!(estimated_need(0, 0), 1 << 20);
        assert_eq!(estimated_need(100 << 20, 0), 301 << 20);
        assert_eq!(estimated_need(100 << 20, 200 << 20), 101 << 20);
        assert_eq!(estimated_need(1, u64::MAX), 0);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
