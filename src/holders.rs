//! Which other processes have a SQLite database open (issue 9).
//!
//! lnd reads the `invoice-tombstone` only when it starts; an lnd that is
//! already running keeps writing invoices into the KV store after oneway has
//! sealed it. [`other_holders`] answers "does any other process hold the KV
//! store open right now?" so that the seal is never written under a live lnd.
//!
//! Two independent sources are read and their union reported:
//!
//! 1. **`/proc/locks`** (world-readable): every POSIX (`fcntl`), OFD and
//!    `flock` lock with its owner's pid and the locked file as
//!    `MAJOR:MINOR:INODE` (major and minor in hex, printed `%02x:%02x`, the
//!    inode in decimal), e.g.
//!    `2: POSIX  ADVISORY  READ 22060 fe:00:10010914 128 128`. In WAL mode
//!    every SQLite connection holds a shared lock on its `-shm` file for its
//!    whole life (the "DMS" byte, offset 128), so a running lnd shows here
//!    even to a user of another uid.
//! 2. **`/proc/<pid>/fd/*`** of every process: a descriptor whose target is
//!    one of the files (compared by device and inode, never by name). This
//!    sees idle connections that hold no lock, but only for processes whose
//!    `fd` directory this user may read (the same uid, or root).
//!
//! The files are the database itself and its side files `<db>-wal`,
//! `<db>-shm` and `<db>-journal` (those that exist). This process (its own
//! SQLite connections) is never reported.
//!
//! The detection only reads `/proc` and `stat`s paths; it never opens the
//! database or its side files (closing any descriptor of a file drops all of
//! this process's POSIX locks on it, which would break SQLite's locking in
//! this process).
//!
//! The limits are stated in [`LIMITS`] (and by [`describe_limits`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What [`other_holders`] cannot see. A caller that must not proceed while
/// the database is in use should treat an `Err` from [`other_holders`] as
/// "cannot tell", never as "nobody", and warn about these limits.
pub const LIMITS: &str = "\
Holder detection reads /proc on Linux and has these limits: \
(1) processes in another PID namespace (another container) whose locks are \
not translated into this namespace, and processes on another host sharing the \
file over a network file system, are invisible; \
(2) in rollback-journal mode (journal_mode=DELETE) an idle SQLite connection \
holds no lock at all, so only the /proc/<pid>/fd scan sees it, and that scan \
can read only processes of the same uid unless run as root (processes it \
could not read are counted as unreadable); in WAL mode every connection holds \
a lock on the -shm file for its whole life and is seen through /proc/locks by \
any user; \
(3) a process that holds a descriptor of a file that has since been deleted \
or replaced (another inode) is not matched; \
(4) an open-file-description (OFD) lock shows pid -1 in /proc/locks; it is \
attributed through /proc/<pid>/fdinfo where readable, otherwise reported as \
an unidentified holder; \
(5) the answer is a snapshot: a process may open the file right after it; \
(6) on systems other than Linux the check returns an Unsupported error.";

/// The limits of the detection, as one paragraph (see [`LIMITS`]).
pub fn describe_limits() -> &'static str {
    LIMITS
}

/// How a holder was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// A lock in `/proc/locks` (or, for an OFD lock, in `/proc/<pid>/fdinfo`).
    Locks,
    /// An open descriptor in `/proc/<pid>/fd`.
    Fd,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Locks => "a lock in /proc/locks",
            Via::Fd => "an open descriptor in /proc/<pid>/fd",
        })
    }
}

/// One other process that holds the database or a side file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, or `None` for an OFD lock (pid -1 in `/proc/locks`)
    /// that no readable process could be attributed.
    pub pid: Option<u32>,
    /// Its name from `/proc/<pid>/comm` ("?" when unknown).
    pub comm: String,
    /// The files it holds (full paths, sorted).
    pub files: Vec<PathBuf>,
    /// How it was seen (sorted, without duplicates).
    pub via: Vec<Via>,
}

/// The other processes holding a database, from [`other_holders`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// The holders, by pid (an unidentified holder last).
    pub holders: Vec<Holder>,
    /// Processes whose `/proc/<pid>/fd` could not be read (permission
    /// denied): the fd scan could not tell whether they hold the database.
    pub unreadable: usize,
}

impl Holders {
    /// True when no other holder was seen (by either source). Check
    /// [`Holders::unreadable`] too: an idle connection in rollback-journal
    /// mode of an unreadable process is not seen.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// The pids of the identified holders, sorted and deduplicated.
    pub fn pids(&self) -> Vec<u32> {
        self.holders.iter().filter_map(|h| h.pid).collect()
    }
}

fn file_names(files: &[PathBuf]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        })
        .collect();
    match names.as_slice() {
        [] => "nothing".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let via: Vec<String> = self.via.iter().map(|v| v.to_string()).collect();
        match self.pid {
            Some(pid) => write!(
                f,
                "process {pid} ({}) has {} open (seen through {})",
                self.comm,
                file_names(&self.files),
                via.join(" and ")
            ),
            None => write!(
                f,
                "an unidentified process holds an open-file-description lock on {}",
                file_names(&self.files)
            ),
        }
    }
}

impl fmt::Display for Holders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.holders.is_empty() {
            f.write_str("no other process was seen holding the database open")?;
        } else {
            let parts: Vec<String> = self.holders.iter().map(|h| h.to_string()).collect();
            f.write_str(&parts.join("; "))?;
        }
        match self.unreadable {
            0 => Ok(()),
            1 => write!(
                f,
                "; 1 process could not be inspected (its /proc/<pid>/fd is not readable by this user)"
            ),
            n => write!(
                f,
                "; {n} processes could not be inspected (their /proc/<pid>/fd is not readable by this user)"
            ),
        }
    }
}

/// The other processes that have `db`, `<db>-wal`, `<db>-shm` or
/// `<db>-journal` open: the union of `/proc/locks` and the `/proc/<pid>/fd`
/// scan (see the module documentation). This process is never reported.
///
/// Fails when `db` cannot be `stat`ed or `/proc` cannot be read; on systems
/// other than Linux always fails with [`io::ErrorKind::Unsupported`]. An
/// error means "cannot tell", not "nobody".
pub fn other_holders(db: &Path) -> io::Result<Holders> {
    #[cfg(target_os = "linux")]
    {
        linux::other_holders(db)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = db;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "finding the processes that hold a database open is implemented only on Linux",
        ))
    }
}

/// A file by identity: (major, minor, inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FileId {
    major: u64,
    minor: u64,
    ino: u64,
}

/// Major and minor of a `st_dev` as glibc encodes it (`gnu_dev_major`,
/// `gnu_dev_minor`); the kernel's `MAJOR()`/`MINOR()` printed in
/// `/proc/locks` and `/proc/self/mountinfo` are the same numbers.
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// One line of `/proc/locks` (or a `lock:` line of `/proc/<pid>/fdinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockLine {
    /// `POSIX`, `FLOCK`, `OFDLCK`, `LEASE`, ...
    kind: String,
    /// The owner's pid; -1 for OFD locks.
    pid: i64,
    file: FileId,
    /// The range as printed (`128 128`, `0 EOF`), to match an OFD lock with
    /// its fdinfo line.
    range: String,
}

/// Parses one lock line: `ID: [-> ]KIND FLAGS TYPE PID MAJ:MIN:INO START END`.
/// Lines without a file (`<none>:0`) or in an unknown layout give `None`.
fn parse_lock_line(line: &str) -> Option<LockLine> {
    let mut tokens: Vec<&str> = line.split_whitespace().collect();
    if tokens.first().is_some_and(|t| *t == "lock:") {
        tokens.remove(0);
    }
    // Drop the "N:" id and the "->" of a blocked waiter.
    let rest: Vec<&str> = tokens.into_iter().skip(1).filter(|t| *t != "->").collect();
    let kind = rest.first()?.to_string();
    let at = rest.iter().position(|t| t.matches(':').count() == 2)?;
    let pid: i64 = rest.get(at.checked_sub(1)?)?.parse().ok()?;
    let mut parts = rest[at].split(':');
    let major = u64::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u64::from_str_radix(parts.next()?, 16).ok()?;
    let ino: u64 = parts.next()?.parse().ok()?;
    let range = rest[at + 1..].join(" ");
    Some(LockLine {
        kind,
        pid,
        file: FileId { major, minor, ino },
        range,
    })
}

/// Undoes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0');
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The superblock device (major, minor) of the mount holding `dir`, from
/// mountinfo text: the last mount whose mount point is the longest prefix.
/// `/proc/locks` prints the superblock's device, which differs from
/// `stat`'s on some file systems (btrfs subvolumes).
fn mount_device(mountinfo: &str, dir: &Path) -> Option<(u64, u64)> {
    let mut best: Option<(usize, (u64, u64))> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let Some((Ok(maj), Ok(min))) = f[2]
            .split_once(':')
            .map(|(a, b)| (a.parse::<u64>(), b.parse::<u64>()))
        else {
            continue;
        };
        let dev = (maj, min);
        let point = unescape_mount_path(f[4]);
        if dir.starts_with(&point) {
            let depth = point.components().count();
            if best.is_none_or(|(d, _)| depth >= d) {
                best = Some((depth, dev));
            }
        }
    }
    best.map(|(_, dev)| dev)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// One of the files being watched.
    struct Watched {
        path: PathBuf,
        /// (dev, ino) as `stat` reports them.
        dev: u64,
        ino: u64,
        /// The identities a lock line may carry: stat's device, and the
        /// mount's superblock device when it differs.
        lock_ids: Vec<FileId>,
    }

    fn side_file(db: &Path, suffix: &str) -> PathBuf {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    }

    fn watched(db: &Path) -> io::Result<Vec<Watched>> {
        let mut out = Vec::new();
        let dir = std::fs::canonicalize(db)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let sb_dev = match (&dir, std::fs::read_to_string("/proc/self/mountinfo")) {
            (Some(dir), Ok(text)) => mount_device(&text, dir),
            _ => None,
        };
        for (i, suffix) in ["", "-wal", "-shm", "-journal"].iter().enumerate() {
            let path = side_file(db, suffix);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                // The database must exist; its side files may not.
                Err(e) if i > 0 && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot stat {}: {e}", path.display()),
                    ))
                }
            };
            let (major, minor) = split_dev(meta.dev());
            let mut lock_ids = vec![FileId {
                major,
                minor,
                ino: meta.ino(),
            }];
            if let Some((smaj, smin)) = sb_dev {
                if (smaj, smin) != (major, minor) {
                    lock_ids.push(FileId {
                        major: smaj,
                        minor: smin,
                        ino: meta.ino(),
                    });
                }
            }
            out.push(Watched {
                path,
                dev: meta.dev(),
                ino: meta.ino(),
                lock_ids,
            });
        }
        Ok(out)
    }

    /// This process's pid as the mounted `/proc` numbers it.
    fn own_pid() -> u32 {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(std::process::id)
    }

    fn comm(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end_matches('\n').to_string())
            .unwrap_or_else(|_| "?".into())
    }

    #[derive(Default)]
    struct Seen {
        files: BTreeSet<usize>,
        via: BTreeSet<Via>,
    }

    pub(super) fn other_holders(db: &Path) -> io::Result<Holders> {
        let files = watched(db)?;
        let mut tally = Tally {
            files: &files,
            me: own_pid(),
            by_pid: BTreeMap::new(),
            ofd: BTreeMap::new(),
            unreadable: 0,
        };
        tally.read_locks()?;
        tally.read_descriptors()?;
        Ok(tally.into_holders())
    }

    /// What the two sources, `/proc/locks` and every process's descriptors,
    /// show about the watched files.
    struct Tally<'a> {
        files: &'a [Watched],
        /// This process, never reported.
        me: u32,
        by_pid: BTreeMap<u32, Seen>,
        /// OFD locks not yet attributed: (file index, range) -> how many.
        ofd: BTreeMap<(usize, String), usize>,
        /// Processes whose descriptors this user may not read.
        unreadable: usize,
    }

    impl Tally<'_> {
        /// Records that process `pid` holds watched file `i`, seen `via`.
        fn saw(&mut self, pid: u32, i: usize, via: Via) {
            let s = self.by_pid.entry(pid).or_default();
            s.files.insert(i);
            s.via.insert(via);
        }

        /// Source 1: `/proc/locks`. A lock names its process, except an OFD
        /// lock, which is counted here and attributed through the
        /// descriptors.
        fn read_locks(&mut self) -> io::Result<()> {
            let locks = std::fs::read_to_string("/proc/locks")
                .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc/locks: {e}")))?;
            for line in locks.lines() {
                let Some(l) = parse_lock_line(line) else {
                    continue;
                };
                let Some(i) = self.files.iter().position(|w| w.lock_ids.contains(&l.file)) else {
                    continue;
                };
                match u32::try_from(l.pid) {
                    Ok(pid) if pid == self.me => {}
                    Ok(pid) if pid > 0 => self.saw(pid, i, Via::Locks),
                    // -1: an OFD lock (or 0, an owner this namespace cannot name).
                    _ => {
                        *self.ofd.entry((i, l.range)).or_default() += 1;
                    }
                }
            }
            Ok(())
        }

        /// Source 2: `/proc/<pid>/fd` of every process.
        fn read_descriptors(&mut self) -> io::Result<()> {
            let proc_dir = std::fs::read_dir("/proc")
                .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc: {e}")))?;
            for entry in proc_dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                self.read_process(&entry.path(), pid);
            }
            Ok(())
        }

        /// The descriptors of process `pid` (its folder `/proc/<pid>` is
        /// `dir`) open on a watched file.
        fn read_process(&mut self, dir: &Path, pid: u32) {
            let fds = match std::fs::read_dir(dir.join("fd")) {
                Ok(fds) => fds,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    if pid != self.me {
                        self.unreadable += 1;
                    }
                    return;
                }
                // The process exited meanwhile (or is a zombie).
                Err(_) => return,
            };
            for fd in fds.flatten() {
                // `metadata` follows the magic link to the open file itself,
                // even a deleted one, without opening it.
                let Ok(meta) = std::fs::metadata(fd.path()) else {
                    continue;
                };
                let Some(i) = self
                    .files
                    .iter()
                    .position(|w| w.dev == meta.dev() && w.ino == meta.ino())
                else {
                    continue;
                };
                // Attribute OFD locks through fdinfo (also for ourselves, so
                // that our own OFD locks are not reported).
                if !self.ofd.is_empty() {
                    self.attribute_ofd(&dir.join("fdinfo").join(fd.file_name()), pid, i);
                }
                if pid != self.me {
                    self.saw(pid, i, Via::Fd);
                }
            }
        }

        /// Attributes to process `pid` the OFD locks that the fdinfo file
        /// `info` of its descriptor on watched file `i` lists.
        fn attribute_ofd(&mut self, info: &Path, pid: u32, i: usize) {
            let info = std::fs::read_to_string(info).unwrap_or_default();
            for l in info.lines().filter(|l| l.starts_with("lock:")) {
                let Some(l) = parse_lock_line(l) else {
                    continue;
                };
                if l.kind != "OFDLCK" {
                    continue;
                }
                let key = (i, l.range);
                let Some(n) = self.ofd.get_mut(&key) else {
                    continue;
                };
                *n -= 1;
                if *n == 0 {
                    self.ofd.remove(&key);
                }
                if pid != self.me {
                    self.by_pid.entry(pid).or_default().via.insert(Via::Locks);
                }
            }
        }

        /// The holders by process, then one for the OFD locks no process
        /// could be found for.
        fn into_holders(self) -> Holders {
            let files = self.files;
            let paths = |set: &BTreeSet<usize>| -> Vec<PathBuf> {
                let mut v: Vec<PathBuf> = set.iter().map(|&i| files[i].path.clone()).collect();
                v.sort();
                v
            };
            let mut holders: Vec<Holder> = self
                .by_pid
                .into_iter()
                .map(|(pid, s)| Holder {
                    pid: Some(pid),
                    comm: comm(pid),
                    files: paths(&s.files),
                    via: s.via.into_iter().collect(),
                })
                .collect();
            if !self.ofd.is_empty() {
                let set: BTreeSet<usize> = self.ofd.keys().map(|(i, _)| *i).collect();
                holders.push(Holder {
                    pid: None,
                    comm: "?".into(),
                    files: paths(&set),
                    via: vec![Via::Locks],
                });
            }
            Holders {
                holders,
                unreadable: self.unreadable,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lock_lines_of_proc_locks_and_fdinfo() {
        // Lines as Linux 6.18 prints them (seen on this machine).
        let l = parse_lock_line("2: POSIX  ADVISORY  WRITE 22060 fe:00:10010914 120 120").unwrap();
        assert_eq!(l.kind, "POSIX");
        assert_eq!(l.pid, 22060);
        assert_eq!(
            l.file,
            FileId {
                major: 0xfe,
                minor: 0,
                ino: 10010914
            }
        );
        assert_eq!(l.range, "120 120");
        let l = parse_lock_line("6: FLOCK  ADVISORY  WRITE 22060 fe:00:10010673 0 EOF").unwrap();
        assert_eq!(
            (l.kind.as_str(), l.pid, l.range.as_str()),
            ("FLOCK", 22060, "0 EOF")
        );
        let l = parse_lock_line("3: OFDLCK ADVISORY  READ  -1 08:01:1234 128 128").unwrap();
        assert_eq!((l.kind.as_str(), l.pid), ("OFDLCK", -1));
        // A blocked waiter.
        let l = parse_lock_line("1: -> POSIX  ADVISORY  WRITE 77 103:02:55 0 EOF").unwrap();
        assert_eq!(
            (l.pid, l.file),
            (
                77,
                FileId {
                    major: 0x103,
                    minor: 2,
                    ino: 55
                }
            )
        );
        // fdinfo's form.
        let l = parse_lock_line("lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:42 0 EOF").unwrap();
        assert_eq!((l.kind.as_str(), l.pid, l.file.ino), ("OFDLCK", -1, 42));
        assert_eq!(
            parse_lock_line("4: POSIX  ADVISORY  READ 12 <none>:0 0 EOF"),
            None
        );
        assert_eq!(parse_lock_line(""), None);
    }

    #[test]
    fn splits_devices_as_glibc_does() {
        assert_eq!(split_dev(0xfe00), (0xfe, 0));
        assert_eq!(split_dev(0x0801), (8, 1));
        // major 259, minor 300: glibc's encoding.
        let dev = ((259u64 & 0xfff) << 8) | (300 & 0xff) | ((300u64 & !0xff) << 12);
        assert_eq!(split_dev(dev), (259, 300));
    }

    #[test]
    fn finds_the_mount_of_a_directory() {
        let info = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:45 / /srv/my\\040data rw - btrfs /dev/vdb rw
41 27 0:46 / /srv rw - ext4 /dev/vdc rw";
        assert_eq!(
            mount_device(info, Path::new("/srv/my data/lnd")),
            Some((0, 45))
        );
        assert_eq!(mount_device(info, Path::new("/srv/other")), Some((0, 46)));
        assert_eq!(mount_device(info, Path::new("/home/x")), Some((254, 0)));
    }

    #[test]
    fn reads_as_sentences() {
        let h = Holders {
            holders: vec![
                Holder {
                    pid: Some(1234),
                    comm: "lnd".into(),
                    files: vec![
                        PathBuf::from("/d/channel.sqlite"),
                        PathBuf::from("/d/channel.sqlite-shm"),
                    ],
                    via: vec![Via::Locks, Via::Fd],
                },
                Holder {
                    pid: None,
                    comm: "?".into(),
                    files: vec![PathBuf::from("/d/channel.sqlite-shm")],
                    via: vec![Via::Locks],
                },
            ],
            unreadable: 3,
        };
        assert_eq!(
            h.to_string(),
            "process 1234 (lnd) has channel.sqlite and channel.sqlite-shm open (seen through \
             a lock in /proc/locks and an open descriptor in /proc/<pid>/fd); an unidentified \
             process holds an open-file-description lock on channel.sqlite-shm; 3 processes \
             could not be inspected (their /proc/<pid>/fd is not readable by this user)"
        );
        assert_eq!(h.pids(), vec![1234]);
        assert!(!h.is_empty());
        assert!(Holders::default().is_empty());
    }
}
