//! Issue 9 through the CLI: a real second process writing to the KV store
//! as a running lnd does (`examples/lnd_standin.rs`), and the other ways the
//! two stores were made to disagree. Each scenario ends with both stores
//! agreeing, or with a precise refusal that loses nothing.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Instant;

use common::*;

fn store(dir: &Path, invoices: u64) -> (PathBuf, PathBuf) {
    let kv = dir.join("channel.sqlite");
    make_fixture(&kv, invoices, 11);
    (kv, dir.join("lnd.sqlite"))
}

/// Stops the stand-in with its stop file and returns every write it
/// reported (`added …`, `settled …`, `deleted …`).
fn stop_standin(
    mut child: Child,
    out: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    stop_file: &Path,
) -> Vec<String> {
    std::fs::write(stop_file, b"stop").unwrap();
    let status = child.wait().expect("wait for the stand-in");
    assert!(status.success(), "the stand-in stops cleanly: {status:?}");
    out.map_while(|l| l.ok())
        .filter(|l| l.starts_with("added") || l.starts_with("settled") || l.starts_with("deleted"))
        .collect()
}

fn kv_arg(kv: &Path, cmd: &str, sql: &Path, extra: &[&str]) -> Out {
    run(&pair_args(cmd, kv, sql, extra), &[])
}

/// The acceptance: with lnd writing, `migrate` copies and verifies,
/// then exits by itself (5) without the tombstone; once lnd stops, a rerun
/// seals with every write present.
#[test]
fn a_running_lnd_is_never_sealed_over_and_the_rerun_keeps_every_write() {
    for mode in [&[][..], &["--rollback"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let (kv, sql) = store(dir.path(), 3000);
        let stop = dir.path().join("stop");
        let mut args = vec!["--interval-ms", "20", "--stop-file", stop.to_str().unwrap()];
        args.extend_from_slice(mode);
        let (child, out) = lnd_standin(&kv, &args);

        let started = Instant::now();
        let first = kv_arg(&kv, "migrate", &sql, &["--json"]);
        let first_s = started.elapsed().as_secs_f64();
        first.assert_code(5, "migrate while lnd runs");
        let v = first.json();
        assert_eq!(v["reason"], "kv_in_use", "{v}");
        assert_eq!(v["allowed"], false, "{v}");
        assert_eq!(v["tombstone_present"], false, "{v}");
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains("lnd_standin"),
            "names the holder: {message}"
        );
        assert!(
            message.contains("run `oneway migrate` again to seal"),
            "{message}"
        );
        assert!(
            !status(&kv, &sql)["tombstone_present"].as_bool().unwrap(),
            "{mode:?}: no tombstone while lnd runs"
        );
        let s = status(&kv, &sql);
        assert!(
            matches!(s["state"].as_str(), Some("Migrating" | "Verified")),
            "{s}"
        );

        let writes = stop_standin(child, out, &stop);
        assert!(!writes.is_empty(), "the stand-in wrote while oneway ran");

        let started = Instant::now();
        let second = migrate_ok(&kv, &sql, 1000);
        let second_s = started.elapsed().as_secs_f64();
        assert_eq!(second["state"], "Locked", "{second}");
        let invoices = status(&kv, &sql)["source_invoices"].as_u64().unwrap();
        assert_verify_clean(&kv, &sql, invoices);
        assert_native_sound(&sql);
        eprintln!(
            "{mode:?}: first run {first_s:.2} s (stopped, exit 5), rerun {second_s:.2} s, {} writes by the stand-in",
            writes.len()
        );
    }
}

/// An idle holder (lnd started, not writing) after `Verified`: the run
/// stops before the tombstone, writing nothing to the KV store.
#[test]
fn an_idle_holder_stops_the_run_before_the_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 500);
    let before = kv_dump(&kv);
    let (mut child, _out) = lnd_standin(&kv, &["--hold-only"]);
    let out = kv_arg(&kv, "migrate", &sql, &[]);
    out.assert_code(5, "migrate beside an idle lnd");
    assert!(
        out.stderr.contains("copied and verified 500 invoices"),
        "{}",
        out.stderr
    );
    assert_eq!(state_row(&sql).unwrap().0, "Verified");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_kv_unchanged(&before, &kv, "nothing written while held");
    assert_eq!(migrate_ok(&kv, &sql, 1000)["state"], "Locked");
}

/// A tombstone lost after `Locked` (power cut before it was durable, a
/// restored backup): every command says what is true, and `migrate` puts
/// it back because nothing changed.
#[test]
fn a_lost_tombstone_after_locked_is_reported_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 300);
    migrate_ok(&kv, &sql, 1000);
    remove_tombstone(&kv);

    let s = status(&kv, &sql);
    assert_eq!(
        (s["state"].as_str(), s["tombstone_present"].as_bool()),
        (Some("Locked"), Some(false))
    );
    let v = verify(&kv, &sql);
    v.assert_code(1, "verify with the seal lost");
    assert!(
        v.stdout.contains("lost its invoice-tombstone"),
        "{}",
        v.stdout
    );
    let g = kv_arg(&kv, "guard", &sql, &["--backend", "kv", "--json"]);
    g.assert_code(3, "guard kv with the seal lost");
    assert_eq!(g.json()["reason"], "kv_seal_lost", "{}", g.stdout);
    assert!(
        !g.stdout.contains("the KV store is tombstoned"),
        "{}",
        g.stdout
    );
    guard(&kv, &sql, "sql").assert_code(0, "the native store is the truth");

    let m = migrate_ok(&kv, &sql, 1000);
    assert_eq!(m["seal_restored"], true, "{m}");
    assert_eq!(status(&kv, &sql)["tombstone_present"], true);
    assert_verify_clean(&kv, &sql, 300);
    assert!(journal(&sql)
        .iter()
        .any(|e| e.event.as_deref() == Some("seal_restored")));
}

/// A lost tombstone and changed invoices after `Locked`: lnd may have run
/// on both stores, so `migrate` refuses, names the case and writes nothing.
#[test]
fn a_lost_tombstone_over_changed_invoices_is_refused_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 300);
    migrate_ok(&kv, &sql, 1000);
    remove_tombstone(&kv);
    Source::open(&kv).add_invoices(3, "after-lock");
    let before = kv_dump(&kv);
    let out = kv_arg(&kv, "migrate", &sql, &["--json"]);
    out.assert_code(3, "migrate over a lost seal and changed invoices");
    assert_eq!(
        out.json()["reason"],
        "seal_lost_and_changed",
        "{}",
        out.stdout
    );
    assert_kv_unchanged(&before, &kv, "nothing written");
    let v = verify(&kv, &sql);
    v.assert_code(1, "verify names the differences");
    assert!(
        v.stdout.contains("lost its invoice-tombstone"),
        "{}",
        v.stdout
    );
}

/// With the run paused after `Verified`, the KV path is replaced by another
/// file (the same store plus writes): the verified snapshot's witness speaks
/// only for the old file, so the new one is digested, found changed and
/// re-synced before it is sealed.
#[test]
fn a_kv_file_swapped_under_a_paused_run_is_not_sealed_unverified() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 400);
    let other = dir.path().join("other.sqlite");
    copy_store(&kv, &other);
    Source::open(&other).add_invoices(57, "swapped");
    let paused = Paused::start(&kv, &sql, "verify.after_commit");
    assert_eq!(state_row(&sql).unwrap().0, "Verified");
    std::fs::rename(&other, &kv).unwrap();
    let _ = std::fs::remove_file(with_suffix(&kv, "-wal"));
    let out = paused.resume();
    out.assert_ok("migrate after the swap");
    assert_eq!(state_row(&sql).unwrap().0, "Locked");
    assert_verify_clean(&kv, &sql, 457);
}

/// A KV store that went back in time under the seal (an older backup put
/// back before `Lock`): a re-sync would delete invoices that may exist only
/// in the native store now, so it is refused, naming why.
#[test]
fn a_kv_store_rolled_back_under_the_seal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 300);
    let backup = dir.path().join("backup.sqlite");
    copy_store(&kv, &backup);
    Source::open(&kv).add_invoices(5, "later");
    crash_at(&kv, &sql, 1000, "tombstoned.after_commit");
    assert_eq!(state_row(&sql).unwrap().0, "Tombstoned");
    copy_store(&backup, &kv);
    let out = kv_arg(&kv, "migrate", &sql, &["--json"]);
    out.assert_code(3, "migrate over a rolled-back KV store");
    let v = out.json();
    assert_eq!(v["reason"], "source_changed_after_tombstone", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("went back in time"),
        "{v}"
    );
    assert_eq!(state_row(&sql).unwrap().0, "Tombstoned");
}
