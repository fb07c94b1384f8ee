//! Issue 9: which other processes hold the KV store open
//! (`oneway::holders`), checked against real second processes: the lnd
//! stand-in (`examples/lnd_standin.rs`) holding a store in WAL and in
//! rollback-journal mode, and the stand-in's own writes.
#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{lnd_standin, lnd_standin_bin, make_fixture, migrate_ok, with_suffix, Source};
use oneway::__test_support::holders::{other_holders, Holder, Via};
use oneway::model::state;

/// A fixture KV store of `n` invoices in a fresh folder.
fn store(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = dir.path().join("channel.sqlite");
    make_fixture(&kv, n, 9);
    (dir, kv)
}

/// The `MAJ:MIN:INO` token `/proc/locks` prints for `path`: major and minor
/// in hex (`%02x`), computed here independently of the library.
fn lock_token(path: &Path) -> String {
    let m = std::fs::metadata(path).expect("stat");
    let dev = m.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major:02x}:{minor:02x}:{}", m.ino())
}

/// The lines of `/proc/locks` on `path` owned by `pid`.
fn lock_lines(path: &Path, pid: u32) -> Vec<String> {
    let token = lock_token(path);
    std::fs::read_to_string("/proc/locks")
        .expect("/proc/locks")
        .lines()
        .filter(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            t.iter().any(|x| *x == token)
                && t.iter().position(|x| *x == token).map(|i| t[i - 1]) == Some(&pid.to_string())
        })
        .map(str::to_string)
        .collect()
}

fn holder_of(kv: &Path, pid: u32) -> Holder {
    let h = other_holders(kv).expect("other_holders");
    h.holders
        .iter()
        .find(|x| x.pid == Some(pid))
        .cloned()
        .unwrap_or_else(|| panic!("process {pid} not reported: {h}"))
}

/// The tests of this file run one at a time: each reads the whole
/// `/proc/locks` and every descriptor of this process, and one of them
/// checks this process's own locks on a file it holds; tests running beside
/// it in the same process only add noise to what is being observed.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn stop(mut child: Child) {
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn wal_holder_is_seen_through_its_shm_lock_and_its_descriptors_and_gone_after_exit() {
    let _serial = serial();
    let (_dir, kv) = store(40);
    let shm = with_suffix(&kv, "-shm");
    let (child, _out) = lnd_standin(&kv, &["--hold-only", "--interval-ms", "50"]);
    let pid = child.id();

    // The lock as the kernel prints it: a shared POSIX lock on the -shm
    // file's DMS byte (offset 128), e.g.
    // `1: POSIX  ADVISORY  READ 31925 fe:00:10010794 128 128`.
    let shm_locks = lock_lines(&shm, pid);
    assert!(
        shm_locks
            .iter()
            .any(|l| l.contains("POSIX") && l.contains("READ") && l.ends_with(" 128 128")),
        "no DMS lock of {pid} on -shm ({}) in /proc/locks: {shm_locks:?}",
        lock_token(&shm)
    );

    let h = holder_of(&kv, pid);
    assert_eq!(h.via, vec![Via::Locks, Via::Fd], "{h}");
    assert_eq!(h.comm, "lnd_standin");
    for f in [&kv, &with_suffix(&kv, "-wal"), &shm] {
        assert!(h.files.contains(f), "{} missing from {h}", f.display());
    }
    let all = other_holders(&kv).unwrap();
    assert_eq!(all.pids(), vec![pid], "{all}");
    let text = all.to_string();
    assert!(
        text.starts_with(&format!(
            "process {pid} (lnd_standin) has channel.sqlite, channel.sqlite-shm and channel.sqlite-wal open"
        )),
        "{text}"
    );

    stop(child);
    // Killed in WAL mode: the -wal and -shm files stay, nobody holds them.
    assert!(shm.exists());
    let after = other_holders(&kv).unwrap();
    assert!(after.is_empty(), "{after}");
}

#[test]
fn rollback_journal_holder_holds_no_lock_and_is_seen_through_its_descriptor() {
    let _serial = serial();
    let (_dir, kv) = store(40);
    let (child, _out) = lnd_standin(&kv, &["--rollback", "--hold-only", "--interval-ms", "50"]);
    let pid = child.id();
    assert_eq!(
        lock_lines(&kv, pid),
        Vec::<String>::new(),
        "an idle connection locks nothing"
    );
    let h = holder_of(&kv, pid);
    assert_eq!(h.via, vec![Via::Fd], "{h}");
    assert_eq!(h.files, vec![kv.clone()]);
    assert_eq!(
        other_holders(&kv).unwrap().to_string(),
        format!("process {pid} (lnd_standin) has channel.sqlite open (seen through an open descriptor in /proc/<pid>/fd)")
    );
    stop(child);
    assert!(other_holders(&kv).unwrap().is_empty());
}

#[test]
fn our_own_connections_are_not_reported() {
    let _serial = serial();
    let (_dir, kv) = store(40);
    let conn = rusqlite::Connection::open(&kv).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM channeldb_kv", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
    // We do hold the DMS lock, under our own pid...
    let me = std::process::id();
    assert!(!lock_lines(&with_suffix(&kv, "-shm"), me).is_empty());
    // ...and are not reported for it, nor for our descriptors.
    let h = other_holders(&kv).unwrap();
    assert!(h.is_empty(), "{h}");

    // A second process next to ours: only it is reported, and our locks
    // (checked again afterwards) survive the scan.
    let (child, _out) = lnd_standin(&kv, &["--hold-only", "--interval-ms", "50"]);
    assert_eq!(other_holders(&kv).unwrap().pids(), vec![child.id()]);
    stop(child);
    assert!(!lock_lines(&with_suffix(&kv, "-shm"), me).is_empty());
    assert!(other_holders(&kv).unwrap().is_empty());
    drop(conn);
}

#[test]
fn a_missing_database_is_an_error_not_nobody() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let e = other_holders(&dir.path().join("nope.sqlite")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    assert!(oneway::__test_support::holders::describe_limits().contains("PID namespace"));
}

/// Run as root, the detection is repeated as an unprivileged user (65534)
/// through the stand-in's `--print-holders`: a WAL holder of another uid is
/// still seen (through /proc/locks), and the processes it may not inspect are
/// counted. Skipped (with a note) when not root.
#[test]
fn an_unprivileged_user_sees_a_wal_holder_of_another_uid_through_its_lock() {
    let _serial = serial();
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        eprintln!("skipped: needs root to run the detection as another user");
        return;
    }
    let (dir, kv) = store(40);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (wal, _out) = lnd_standin(&kv, &["--hold-only", "--interval-ms", "50"]);
    let ask = || {
        use std::os::unix::process::CommandExt;
        let out = Command::new(lnd_standin_bin())
            .arg("--kv")
            .arg(&kv)
            .arg("--print-holders")
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run --print-holders as 65534");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let seen = ask();
    assert!(
        seen.contains(&format!("holder {} lnd_standin Locks\n", wal.id())),
        "{seen}"
    );
    let unreadable: usize = seen
        .lines()
        .find_map(|l| l.strip_prefix("unreadable "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(unreadable > 0, "{seen}");
    stop(wal);

    // In rollback-journal mode the same holder is invisible to that user:
    // the documented limit.
    let (rollback, _out) = lnd_standin(&kv, &["--rollback", "--hold-only", "--interval-ms", "50"]);
    let seen = ask();
    assert!(!seen.contains("holder "), "{seen}");
    stop(rollback);
}

/// Invoice number → state, from the store.
fn states(kv: &Path) -> BTreeMap<u32, u8> {
    Source::open(kv)
        .invoices()
        .into_iter()
        .map(|(n, i)| (n, i.state))
        .collect()
}

#[test]
fn standin_writes_exactly_what_it_prints_and_oneway_migrates_the_result() {
    let _serial = serial();
    for mode in [&[][..], &["--rollback"][..]] {
        let (dir, kv) = store(60);
        let mut expected = states(&kv);
        let mut args = vec!["--ops", "9", "--interval-ms", "20"];
        args.extend_from_slice(mode);
        let (mut child, out) = lnd_standin(&kv, &args);
        let lines: Vec<String> = out.map(|l| l.unwrap()).collect();
        assert!(child.wait().unwrap().success());
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert_eq!(lines.last().map(String::as_str), Some("stopped"));
        let mut kinds = Vec::new();
        for l in &lines[..9] {
            let (what, num) = l.split_once(' ').unwrap();
            let num = u32::from_str_radix(num, 16).unwrap();
            match what {
                "added" => assert_eq!(expected.insert(num, state::OPEN), None, "{l}"),
                "settled" => {
                    assert_eq!(
                        expected.insert(num, state::SETTLED),
                        Some(state::OPEN),
                        "{l}"
                    )
                }
                "deleted" => assert!(expected.remove(&num).is_some(), "{l}"),
                _ => panic!("unexpected line {l:?}"),
            }
            kinds.push(what.to_string());
        }
        assert_eq!(
            kinds,
            ["added", "settled", "deleted"].repeat(3),
            "mode {mode:?}"
        );
        assert_eq!(states(&kv), expected, "mode {mode:?}");
        // No dangling index entries: a deleted invoice has no payment-hash entry.
        let src = Source::open(&kv);
        for l in lines.iter().filter(|l| l.starts_with("deleted ")) {
            let num = u32::from_str_radix(&l[8..], 16).unwrap();
            assert_eq!(src.hash_entry(num), None, "{l}");
        }
        drop(src);
        assert!(other_holders(&kv).unwrap().is_empty());
        // oneway takes the store lnd left: every invoice migrates.
        let report = migrate_ok(&kv, &dir.path().join("lnd.sqlite"), 25);
        assert_eq!(report["invoices"], expected.len() as u64, "{report}");
    }
}

#[test]
fn standin_stops_when_its_stop_file_appears() {
    let _serial = serial();
    let (dir, kv) = store(40);
    let stop_file = dir.path().join("stop");
    let (mut child, mut out) = lnd_standin(
        &kv,
        &[
            "--interval-ms",
            "30",
            "--stop-file",
            stop_file.to_str().unwrap(),
        ],
    );
    let first = out.next().unwrap().unwrap();
    assert!(first.starts_with("added "), "{first}");
    std::fs::write(&stop_file, b"").unwrap();
    let t0 = Instant::now();
    let rest: Vec<String> = out.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    assert!(other_holders(&kv).unwrap().is_empty());
}
