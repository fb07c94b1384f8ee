//! An operator's tool (issue 10): what is checked before anything is copied,
//! bounded batches whatever `--batch-size` says, machine-readable refusals,
//! and the messages for the usual mistakes.

#[macro_use]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use oneway::__test_support::kv::{KvSource, RawInvoice};
use oneway::__test_support::reader;
use oneway::__test_support::source;
use serde_json::Value;

// ---------------------------------------------------------------------------
// A KV store this user cannot write
// ---------------------------------------------------------------------------

/// `nobody`, who a root test runner becomes for the child (`setpriv`), so
/// that file permissions mean something.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs `oneway args…` as an unprivileged user: as `nobody` (through
/// `setpriv`) when the tests run as root, as the test's own user otherwise.
fn run_unprivileged(args: &[std::ffi::OsString]) -> Out {
    let (uid, gid) = (format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"));
    let launcher: &[&str] = if is_root() {
        &["setpriv", &uid, &gid, "--clear-groups"]
    } else {
        &[]
    };
    let o = command_via(launcher, args, &[]).output().unwrap_or_else(|e| {
        panic!("cannot run oneway unprivileged (setpriv is needed when the tests run as root): {e}")
    });
    Out::from_parts(o.status, &o.stdout, &o.stderr)
}

fn chown_nobody(p: &Path) {
    if is_root() {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

#[test]
fn a_kv_store_this_user_cannot_write_is_refused_before_anything_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The KV store in a folder of its own, the native store in another one
    // that the unprivileged user owns.
    let kv_dir = dir.path().join("lnd");
    let out_dir = dir.path().join("out");
    for d in [&kv_dir, &out_dir] {
        std::fs::create_dir(d).unwrap();
        chown_nobody(d);
    }
    let kv = kv_dir.join("channel.sqlite");
    let sql = out_dir.join("native.sqlite");
    make_fixture(&kv, 60, 91);
    let original = kv_dump(&kv);

    // A read-only file.
    std::fs::set_permissions(&kv, std::fs::Permissions::from_mode(0o444)).unwrap();
    let o = run_unprivileged(&migrate_args(&kv, &sql, 20));
    o.assert_code(1, "migrate on a read-only KV store");
    let err = o.error();
    assert!(err.contains(&kv.display().to_string()), "{err}");
    assert!(err.contains("cannot be written"), "{err}");
    assert!(err.contains("not writable by this user"), "{err}");
    assert!(err.contains("nothing was copied"), "{err}");
    assert_eq!(o.json()["reason"], "kv_not_writable");
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        0,
        "nothing created, not even the lock"
    );

    // A writable file in a folder the user cannot write (SQLite's journal).
    chown_nobody(&kv);
    std::fs::set_permissions(&kv, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&kv_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let o = run_unprivileged(&migrate_args(&kv, &sql, 20));
    o.assert_code(1, "migrate with the KV store's folder read-only");
    let err = o.error();
    assert!(
        err.contains(&format!("its folder {} is not writable", kv_dir.display())),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);

    // The control: the same user, the folder writable again, migrates.
    std::fs::set_permissions(&kv_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_unprivileged(&migrate_args(&kv, &sql, 20));
    o.assert_ok("migrate with write access");
    assert_eq!(o.json()["state"], "Locked");
    assert_kv_tombstoned(&original, &kv, "after the control run");
}

// ---------------------------------------------------------------------------
// Bounded batches
// ---------------------------------------------------------------------------

#[test]
fn a_huge_batch_size_still_gives_batches_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    make_fixture(&kv, 5000, 92);
    let src = KvSource::open(&kv, "channeldb").unwrap();
    let buckets = src.invoice_buckets().unwrap().unwrap();
    let total = src.count_invoices(&buckets).unwrap() as usize;
    let bytes = src.invoice_bytes(&buckets).unwrap() as usize;
    assert!(bytes > 2 * reader::MAX_BATCH_BYTES, "{bytes}");

    // What the copy and the verification read through.
    let stream = source::open(&kv, "channeldb")
        .unwrap()
        .stream(1_000_000_000, None, reader::Kind::Copy)
        .unwrap();
    let mut sizes = Vec::new();
    for m in stream {
        if let reader::Msg::Batch(b) = m.unwrap() {
            if b.is_empty() {
                break;
            }
            sizes.push(b.len());
        }
    }
    assert_eq!(sizes.iter().sum::<usize>(), total);
    assert!(sizes.len() >= 3, "batches: {sizes:?}");

    // Each batch's raw bytes stay within the bound plus one invoice.
    let mut after = None;
    let mut largest = 0usize;
    loop {
        let raws = src
            .read_invoices_bounded(&buckets, after, usize::MAX, reader::MAX_BATCH_BYTES)
            .unwrap();
        let Some(last) = raws.last() else { break };
        after = Some(last.num);
        let size =
            |r: &RawInvoice| r.value.len() + r.amp_sets.iter().map(|(_, v)| v.len()).sum::<usize>();
        let sum: usize = raws.iter().map(size).sum();
        let biggest = raws.iter().map(size).max().unwrap();
        assert!(
            sum < reader::MAX_BATCH_BYTES + biggest,
            "a batch of {sum} bytes"
        );
        largest = largest.max(raws.len());
    }
    assert!(largest < total, "one batch held every invoice");

    // And the binary accepts the flag and migrates correctly (with this
    // process's connections closed: oneway seals only a store nobody else
    // holds open).
    drop(src);
    let sql = dir.path().join("native.sqlite");
    let v = migrate_ok(&kv, &sql, 1_000_000_000);
    assert_eq!(v["invoices"], total as u64);
    assert_verify_clean(&kv, &sql, total as u64);
}

// ---------------------------------------------------------------------------
// Machine-readable refusals
// ---------------------------------------------------------------------------

fn redact(v: &mut Value, paths: &[(&Path, &str)]) {
    if let Some(m) = v["message"].as_str() {
        let mut m = m.to_string();
        for (p, name) in paths {
            m = m.replace(&p.display().to_string(), name);
        }
        v["message"] = Value::String(m);
    }
}

#[test]
fn refusals_under_json_are_one_object_with_a_stable_reason_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 80, 93);
    let other_kv = dir.path().join("other.sqlite");
    make_fixture(&other_kv, 40, 94);
    let lost = dir.path().join("lost.sqlite");
    let paths = [
        (kv.as_path(), "[kv]"),
        (sql.as_path(), "[sql]"),
        (other_kv.as_path(), "[other kv]"),
        (lost.as_path(), "[lost]"),
    ];
    let mut cases = Vec::new();
    let mut ask = |case: &str, args: Vec<std::ffi::OsString>| {
        let o = run(&args, &[]);
        // stdout is exactly one JSON object.
        let mut v = o.json();
        assert!(v.is_object(), "{case}: {v}");
        assert_eq!(v["exit_code"], o.code.unwrap(), "{case}: {v}");
        if o.code != Some(0) {
            // Printed once on stderr, nothing else there.
            assert_eq!(o.stderr.lines().count(), 1, "{case}: {}", o.stderr);
        }
        redact(&mut v, &paths);
        cases.push(serde_json::json!({ "case": case, "answer": v }));
    };
    ask(
        "guard sql, no native store",
        pair_args("guard", &kv, &sql, &["--backend", "sql", "--json"]),
    );
    ask(
        "guard kv, no native store",
        pair_args("guard", &kv, &sql, &["--backend", "kv", "--json"]),
    );
    migrate_ok(&kv, &sql, 20);
    ask(
        "guard kv, Locked",
        pair_args("guard", &kv, &sql, &["--backend", "kv", "--json"]),
    );
    ask(
        "guard sql, Locked",
        pair_args("guard", &kv, &sql, &["--backend", "sql", "--json"]),
    );
    ask(
        "guard kv, another KV store",
        pair_args("guard", &other_kv, &sql, &["--backend", "kv", "--json"]),
    );
    ask(
        "migrate, another KV store",
        pair_args("migrate", &other_kv, &sql, &["--json"]),
    );
    ask(
        "migrate, tombstoned KV store without its native store",
        pair_args("migrate", &kv, &lost, &["--json"]),
    );
    ask(
        "verify, tombstoned KV store without its native store",
        pair_args("verify", &kv, &lost, &["--json"]),
    );
    snapshot_json!("preflight_refusal_json", cases);
}

// ---------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------

#[test]
fn the_usual_mistakes_are_named_as_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("channel.sqlite");
    make_fixture(&kv, 20, 95);

    // A missing folder is a missing folder, not a missing store.
    let sql = dir.path().join("no-such-folder").join("native.sqlite");
    let o = migrate(&kv, &sql, 20, &[]);
    o.assert_code(1, "migrate into a missing folder");
    let err = o.error();
    assert!(
        err.contains(&format!(
            "the folder {} for the native SQL store does not exist",
            dir.path().join("no-such-folder").display()
        )),
        "{err}"
    );
    assert_eq!(o.json()["reason"], "missing_folder");

    // verify before any migration says what to do.
    let sql = dir.path().join("native.sqlite");
    let o = verify(&kv, &sql);
    o.assert_code(1, "verify before migrate");
    assert!(o.error().contains("run `oneway migrate` first"), "{o:?}");
    assert!(!sql.exists(), "verify created the native store");

    // --sql is the store to read, except for migrate.
    for cmd in ["status", "verify", "guard"] {
        let o = run(&[cmd, "--help"], &[]);
        assert!(
            o.stdout.contains(
                "lnd's native SQL database to read (only `migrate` creates or continues it)"
            ),
            "{cmd}: {}",
            o.stdout
        );
    }
    let o = run(&["migrate", "--help"], &[]);
    assert!(
        o.stdout
            .contains("lnd's native SQL database to create or continue"),
        "{}",
        o.stdout
    );
}
