//! Secrets stay secret (issue 10): the files oneway creates are private
//! whatever the umask, the run lock never follows a link, a refused run
//! leaves no lock behind, and no preimage, AMP root share or AMP child
//! preimage appears in any output, log or the journal, even when a mismatch
//! is found in exactly those fields.

#[macro_use]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use oneway::codec::{decode_htlc_set, decode_invoice};
use oneway::model::Htlc;
use rusqlite::Connection;

/// A shell that sets `umask 022` and then execs the binary with the
/// arguments, for [`command_via`].
const UMASK_022: &[&str] = &["sh", "-c", "umask 022; exec \"$0\" \"$@\""];

/// Runs `oneway args…` under `umask 022`, with a clean environment plus
/// `env`; returns the raw exit code, stdout and stderr.
fn run_umask022(
    args: &[std::ffi::OsString],
    env: &[(&str, &str)],
) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    let o = command_via(UMASK_022, args, env)
        .output()
        .expect("run oneway under sh");
    (o.status.code(), o.stdout, o.stderr)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Every file in `dir` other than the KV store and its companions.
fn created_files(dir: &Path, kv: &Path) -> Vec<PathBuf> {
    let kv_name = kv.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&kv_name)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_file_oneway_creates_is_private_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 300, 81);
    std::fs::set_permissions(&kv, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Stopped mid-copy by an abort: the -wal and -shm are still there.
    let (code, _, err) = run_umask022(
        &migrate_args(&kv, &sql, 50),
        &[("ONEWAY_FAILPOINT", "batch.after_commit:2")],
    );
    assert_eq!(
        code,
        None,
        "aborted at the failpoint: {}",
        String::from_utf8_lossy(&err)
    );
    let files = created_files(dir.path(), &kv);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "native.sqlite",
        "native.sqlite-shm",
        "native.sqlite-wal",
        "native.sqlite.lock",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for f in &files {
        assert_eq!(mode(f), 0o600, "{} after the crash", f.display());
    }

    // The rerun to Locked, then status and a guard (which open the store
    // again and make new -wal/-shm files) keep them private.
    let (code, _, err) = run_umask022(&migrate_args(&kv, &sql, 50), &[]);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    for args in [
        pair_args("status", &kv, &sql, &[]),
        pair_args("guard", &kv, &sql, &["--backend", "sql"]),
    ] {
        let (code, _, err) = run_umask022(&args, &[]);
        assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    }
    let files = created_files(dir.path(), &kv);
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{} after the run", f.display());
    }
}

#[test]
fn sqlite_gives_the_wal_and_shm_it_creates_the_store_s_private_mode() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 200, 88);
    crash_at(&kv, &sql, 20, "begin.after_commit");
    // Checkpoint and close: no -wal or -shm left for oneway to narrow.
    let c = Connection::open(&sql).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    for suffix in ["-wal", "-shm"] {
        assert!(!with_suffix(&sql, suffix).exists(), "{suffix} left");
    }
    // A run paused after its first batch: SQLite made both files by now.
    let pause = tempfile::tempdir().unwrap();
    let pause_dir = pause.path().to_str().unwrap();
    let mut c = command_via(
        UMASK_022,
        &migrate_args(&kv, &sql, 20),
        &[
            ("ONEWAY_FAILPOINT", "batch.after_commit:1"),
            ("ONEWAY_FAILPOINT_PAUSE", pause_dir),
        ],
    );
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let t = std::time::Instant::now();
    while !pause.path().join("reached").exists() {
        assert!(t.elapsed().as_secs() < 60, "the run never paused");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let modes: Vec<(String, u32)> = ["-wal", "-shm"]
        .iter()
        .map(|s| (s.to_string(), mode(&with_suffix(&sql, s))))
        .collect();
    std::fs::write(pause.path().join("resume"), "").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        modes,
        [("-wal".to_string(), 0o600), ("-shm".to_string(), 0o600)]
    );
}

#[test]
fn a_native_store_left_world_readable_is_narrowed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 100, 82);
    crash_at(&kv, &sql, 20, "batch.after_commit:1");
    for f in [
        sql.clone(),
        with_suffix(&sql, "-wal"),
        with_suffix(&sql, ".lock"),
    ] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, _, err) = run_umask022(&migrate_args(&kv, &sql, 20), &[]);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&err));
    for f in created_files(dir.path(), &kv) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn a_symlinked_lock_is_refused_and_its_target_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 50, 83);
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, with_suffix(&sql, ".lock")).unwrap();

    let o = migrate(&kv, &sql, 20, &[]);
    o.assert_code(1, "migrate with a symlinked lock");
    let err = o.error();
    assert!(err.contains("native.sqlite.lock"), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(o.json()["reason"], "unsafe_path", "{o:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(mode(&victim), 0o644, "the link's target keeps its mode");
    assert!(
        std::fs::symlink_metadata(with_suffix(&sql, ".lock"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is left as found"
    );
    assert!(!sql.exists(), "nothing is created when the lock is refused");

    // A hard link is refused too: the lock is truncated on every run.
    std::fs::remove_file(with_suffix(&sql, ".lock")).unwrap();
    std::fs::hard_link(&victim, with_suffix(&sql, ".lock")).unwrap();
    let o = migrate(&kv, &sql, 20, &[]);
    o.assert_code(1, "migrate with a hard-linked lock");
    assert!(o.error().contains("hard links"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!sql.exists());
}

#[test]
fn a_refused_run_creates_no_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 50, 84);
    migrate_ok(&kv, &sql, 20);
    // The native store (and its lock) lost after the tombstone.
    remove_store(&sql);
    std::fs::remove_file(with_suffix(&sql, ".lock")).unwrap();
    let o = migrate(&kv, &sql, 20, &[]);
    o.assert_code(3, "migrate next to a tombstoned KV store");
    assert_eq!(o.json()["reason"], "native_store_missing");
    assert!(
        !with_suffix(&sql, ".lock").exists(),
        "a refused run left a lock file"
    );
    assert!(!sql.exists());

    // Paired with another KV store: refused before the lock too.
    let other_kv = dir.path().join("other.sqlite");
    let other_sql = dir.path().join("other-native.sqlite");
    make_fixture(&other_kv, 30, 85);
    migrate_ok(&other_kv, &other_sql, 20);
    std::fs::remove_file(with_suffix(&other_sql, ".lock")).unwrap();
    let fresh_kv = dir.path().join("fresh.sqlite");
    make_fixture(&fresh_kv, 30, 86);
    let o = migrate(&fresh_kv, &other_sql, 20, &[]);
    o.assert_code(3, "migrate with another KV store");
    assert_eq!(o.json()["reason"], "source_mismatch");
    assert!(
        !with_suffix(&other_sql, ".lock").exists(),
        "a refused run left a lock file"
    );
}

// ---------------------------------------------------------------------------
// No secret in any output
// ---------------------------------------------------------------------------

/// Every preimage, AMP root share and AMP child preimage in the KV store.
fn secrets_of(kv: &Path) -> Vec<[u8; 32]> {
    let c = Connection::open(kv).unwrap();
    let invoices: i64 = c
        .query_row(
            &format!("SELECT id FROM {KV_TABLE} WHERE parent_id IS NULL AND key = CAST('invoices' AS BLOB)"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut st = c
        .prepare(&format!(
            "SELECT key, value FROM {KV_TABLE} WHERE parent_id = ?1 AND value IS NOT NULL \
             AND length(key) IN (4, 36)"
        ))
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = st
        .query_map([invoices], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut out = Vec::new();
    fn htlcs(hs: &[Htlc], out: &mut Vec<[u8; 32]>) {
        for h in hs {
            if let Some(a) = &h.amp {
                out.push(a.root_share);
                out.extend(a.preimage);
            }
            for v in h.custom_records.values() {
                if let Ok(b) = <[u8; 32]>::try_from(v.as_slice()) {
                    out.push(b); // keysend preimages travel in a custom record
                }
            }
        }
    }
    for (key, value) in rows {
        if key.len() == 4 {
            let inv = decode_invoice(&value).unwrap();
            out.extend(inv.preimage);
            htlcs(&inv.htlcs, &mut out);
        } else {
            htlcs(&decode_htlc_set(&value).unwrap(), &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Panics naming the first secret found in `bytes`, in any of its forms.
#[track_caller]
fn assert_no_secret(what: &str, bytes: &[u8], secrets: &[[u8; 32]]) {
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for s in secrets {
        let lower = hex::encode(s);
        for form in [lower.clone(), lower.to_uppercase()] {
            assert!(
                !find(form.as_bytes()),
                "{what} prints secret {lower} as hex"
            );
        }
        assert!(!find(s), "{what} contains secret {lower} raw");
        // Half a secret is a secret too (hex split across a line, a prefix).
        assert!(
            !find(&lower.as_bytes()[..32]),
            "{what} prints half of secret {lower}"
        );
    }
}

fn one_i64(sql: &Path, q: &str) -> i64 {
    Connection::open(sql)
        .unwrap()
        .query_row(q, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn no_preimage_root_share_or_amp_preimage_in_any_output_log_or_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    let summary = make_fixture(&kv, 400, 87);
    assert!(
        summary.amp > 0 && summary.keysend > 0 && summary.settled > 0,
        "{summary:?}"
    );
    let secrets = secrets_of(&kv);
    assert!(secrets.len() > 100, "found only {} secrets", secrets.len());

    // Copied and indexed, not yet verified; then the copy is damaged in the
    // secret fields themselves, with other invoices' secrets.
    crash_at(&kv, &sql, 50, "indexes.after_commit");
    let c = Connection::open(&sql).unwrap();
    let first = one_i64(
        &sql,
        "SELECT min(id) FROM invoices WHERE preimage IS NOT NULL",
    );
    let amp_row = one_i64(
        &sql,
        "SELECT min(rowid) FROM amp_sub_invoice_htlcs WHERE preimage IS NOT NULL",
    );
    let record = one_i64(
        &sql,
        "SELECT min(rowid) FROM invoice_htlc_custom_records WHERE length(value) = 32",
    );
    c.execute_batch(&format!(
        "UPDATE invoices SET preimage = (SELECT preimage FROM invoices WHERE preimage IS NOT NULL AND id > {first} ORDER BY id LIMIT 1) WHERE id = {first};
         UPDATE amp_sub_invoice_htlcs SET
             root_share = (SELECT root_share FROM amp_sub_invoice_htlcs WHERE rowid > {amp_row} ORDER BY rowid LIMIT 1),
             preimage = (SELECT preimage FROM amp_sub_invoice_htlcs WHERE preimage IS NOT NULL AND rowid > {amp_row} ORDER BY rowid LIMIT 1)
         WHERE rowid = {amp_row};
         UPDATE invoice_htlc_custom_records SET value = (SELECT preimage FROM invoices WHERE preimage IS NOT NULL ORDER BY id DESC LIMIT 1) WHERE rowid = {record};"
    ))
    .unwrap();
    drop(c);

    let debug = [("RUST_LOG", "oneway=debug")];
    let mut seen_fingerprints = 0;
    for (what, args) in [
        ("verify", pair_args("verify", &kv, &sql, &[])),
        ("verify --json", pair_args("verify", &kv, &sql, &["--json"])),
        (
            "verify --log-json",
            pair_args("verify", &kv, &sql, &["--log-json"]),
        ),
        (
            "migrate",
            pair_args("migrate", &kv, &sql, &["--batch-size", "50"]),
        ),
        (
            "migrate --json",
            pair_args("migrate", &kv, &sql, &["--json"]),
        ),
        (
            "migrate --log-json",
            pair_args("migrate", &kv, &sql, &["--log-json", "--json"]),
        ),
        ("status --json", pair_args("status", &kv, &sql, &["--json"])),
        (
            "guard sql --json",
            pair_args("guard", &kv, &sql, &["--backend", "sql", "--json"]),
        ),
    ] {
        let (code, out, err) = run_umask022(&args, &debug);
        assert_no_secret(&format!("{what}: stdout"), &out, &secrets);
        assert_no_secret(&format!("{what}: stderr"), &err, &secrets);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
        if what.starts_with("verify") || what.starts_with("migrate") {
            assert_eq!(code, Some(1), "{what}: {all}");
            for field in [
                "preimage: source sha256:",
                "amp.root_share: source sha256:",
                "amp.preimage: source sha256:",
                "custom_records: source sha256:",
            ] {
                // migrate's error lists the first five mismatches only.
                if what.starts_with("verify") || all.contains(field) {
                    assert!(all.contains(field), "{what}: {field} not named: {all}");
                    seen_fingerprints += 1;
                }
            }
        }
    }
    assert!(
        seen_fingerprints >= 12,
        "mismatches named with fingerprints: {seen_fingerprints}"
    );

    // The journal, every column of every row.
    let c = Connection::open(&sql).unwrap();
    let mut st = c.prepare("SELECT * FROM oneway_journal").unwrap();
    let n = st.column_count();
    let mut rows = st.query([]).unwrap();
    let mut journal = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        for i in 0..n {
            match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                    journal.extend_from_slice(t);
                }
                other => journal.extend_from_slice(format!("{other:?}").as_bytes()),
            }
            journal.push(b'\n');
        }
    }
    assert!(!journal.is_empty());
    assert_no_secret("oneway_journal", &journal, &secrets);
    assert_no_secret(
        "oneway_state",
        format!("{:?}", state_row(&sql)).as_bytes(),
        &secrets,
    );
}
