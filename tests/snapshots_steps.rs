//! A real `oneway migrate` process, stopped right after each durable step
//! with a failpoint, and the persisted state snapshotted after every stop.
//!
//! The store is the committed fixture `fixtures/lnd-small.sqlite` (200
//! invoices, seed 7, invoice numbers 1..=202 with two deletion gaps), copied
//! into a temporary folder and migrated with `--batch-size 50`. Each stop
//! is a separate process that aborts (SIGABRT, like a crash) right after a
//! commit; the next process resumes from what was persisted:
//!
//! | step | failpoint                | what has just committed             |
//! |------|--------------------------|-------------------------------------|
//! | 1    | `begin.after_commit`     | schema + state row, `Migrating`     |
//! | 2    | `batch.after_commit`     | the 1st batch of 50                 |
//! | 3    | `batch.after_commit`     | the 2nd batch (a new process)       |
//! | 4    | `verify.after_commit`    | batches 3 and 4, then `Verified`    |
//! | 5    | `tombstone.after_commit` | the KV tombstone (still `Verified`) |
//! | 6    | `tombstoned.after_commit`| `Tombstoned`                        |
//! | 7    | `lock.after_commit`      | `Locked`                            |
//! | 8    | none                     | nothing: already completed          |

#[macro_use]
mod common;

use std::path::Path;

use common::{Out, Pair};
use oneway::__test_support::store::{JournalEntry, NativeStore, Target};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::{json, Value};

/// `oneway migrate --batch-size 50` on the pair, with `failpoint` armed.
fn migrate(p: &Pair, failpoint: Option<&str>) -> Out {
    let env: Vec<(&str, &str)> = failpoint
        .map(|fp| ("ONEWAY_FAILPOINT", fp))
        .into_iter()
        .collect();
    p.run_env("migrate", &["--batch-size", "50"], &env)
}

/// The tombstone row of the KV `invoices` bucket, read with plain SQL:
/// `None` when absent, else (value, SQLite storage class).
fn kv_tombstone(kv: &Path) -> Option<(Vec<u8>, String)> {
    let c = Connection::open_with_flags(kv, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row(
        "SELECT t.value, typeof(t.value) FROM channeldb_kv t
         JOIN channeldb_kv b ON t.parent_id = b.id
         WHERE b.parent_id IS NULL AND b.key = CAST('invoices' AS BLOB) AND b.value IS NULL
           AND t.key = CAST('invoice-tombstone' AS BLOB)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .unwrap()
}

fn tombstone_json(kv: &Path) -> Value {
    match kv_tombstone(kv) {
        None => json!({ "present": false }),
        Some((v, ty)) => json!({
            "present": true,
            "value": String::from_utf8_lossy(&v),
            "storage_class": ty,
        }),
    }
}

fn redact_journal(journal: &[JournalEntry]) -> Value {
    let mut v = serde_json::to_value(journal).unwrap();
    for row in v.as_array_mut().unwrap() {
        row["at"] = json!("[time]");
        let details = &mut row["details"];
        if details.get("kv").is_some() {
            details["kv"] = json!("[kv path]");
        }
        if details.get("pid").is_some() {
            details["pid"] = json!("[pid]");
        }
    }
    v
}

/// What one stop left behind, as a snapshot-ready value, and the raw
/// journal for cross-step checks.
struct Stop {
    snapshot: Value,
    journal: Vec<JournalEntry>,
    state: Value,
}

fn inspect(p: &Pair, step: &str, failpoint: Option<&str>, out: &Out) -> Stop {
    let t = Target::open(&p.sql, false)
        .unwrap()
        .expect("the native store exists after Begin");
    let persisted = t.load().unwrap().expect("a state row after Begin");
    let journal = t.journal().unwrap();
    let invoices = t.count("invoices").unwrap();
    let map = t.count("oneway_invoice_map").unwrap();
    // The copy map, the native rows and the persisted count agree at every stop.
    assert_eq!(invoices, map, "{step}: invoices vs copy map");
    assert_eq!(
        persisted.copied, map,
        "{step}: persisted copied vs copy map"
    );

    let mut state = serde_json::to_value(&persisted).unwrap();
    assert_eq!(
        state["identity"]["kv_path"],
        json!(p.kv.display().to_string()),
        "{step}: identity records the KV path"
    );
    state["identity"]["kv_path"] = json!("[kv path]");
    state["updated_at"] = json!("[time]");
    let exit = match (out.code, out.signal) {
        _ if out.aborted() => "aborted (SIGABRT)".to_string(),
        (Some(c), _) => format!("exit {c}"),
        (None, s) => format!("signal {s:?}"),
    };
    let snapshot = json!({
        "step": step,
        "failpoint": failpoint,
        "process": exit,
        "kv_tombstone": tombstone_json(&p.kv),
        "native_rows": { "invoices": invoices, "oneway_invoice_map": map },
        "state": state,
        "journal": redact_journal(&journal),
    });
    Stop {
        snapshot,
        journal,
        state,
    }
}

fn status_json(p: &Pair) -> Value {
    let mut v = p.status();
    assert_eq!(v["kv"], json!(p.kv.display().to_string()));
    assert_eq!(v["sql"], json!(p.sql.display().to_string()));
    v["kv"] = json!("[kv path]");
    v["sql"] = json!("[sql path]");
    if !v["updated_at"].is_null() {
        v["updated_at"] = json!("[time]");
    }
    v
}

#[test]
fn migration_step_by_step() {
    let p = Pair::from_fixture("lnd-small.sqlite");
    let steps: [(&str, Option<&str>); 8] = [
        ("steps_01_begin", Some("begin.after_commit")),
        ("steps_02_first_batch", Some("batch.after_commit")),
        ("steps_03_second_batch", Some("batch.after_commit")),
        ("steps_04_verified", Some("verify.after_commit")),
        ("steps_05_tombstone_written", Some("tombstone.after_commit")),
        ("steps_06_tombstoned", Some("tombstoned.after_commit")),
        ("steps_07_locked", Some("lock.after_commit")),
        ("steps_08_rerun_after_locked", None),
    ];
    let mut previous: Option<Stop> = None;
    for (name, failpoint) in steps {
        let out = migrate(&p, failpoint);
        let stderr = &out.stderr;
        match failpoint {
            Some(fp) => {
                assert!(
                    out.aborted(),
                    "{name}: expected an abort at {fp}; status {:?}/{:?}, stderr {stderr}",
                    out.code,
                    out.signal
                );
                assert!(
                    stderr.contains(&format!("failpoint {fp} reached")),
                    "{name}: stderr {stderr}"
                );
            }
            None => {
                assert_eq!(out.code, Some(0), "{name}: stderr {stderr}");
                assert!(
                    out.stdout.contains("invoice migration already completed"),
                    "{name}: stdout {}",
                    out.stdout
                );
            }
        }
        let stop = inspect(&p, name, failpoint, &out);
        if let Some(prev) = &previous {
            // The journal is append-only: every earlier row is still there, unchanged.
            assert!(
                stop.journal.len() >= prev.journal.len()
                    && stop.journal[..prev.journal.len()] == prev.journal[..],
                "{name}: the journal was rewritten"
            );
        }
        if failpoint.is_none() {
            // A rerun after Locked changes nothing at all.
            let prev = previous.as_ref().unwrap();
            assert_eq!(stop.journal, prev.journal, "{name}: journal changed");
            assert_eq!(stop.state, prev.state, "{name}: state row changed");
        }
        snapshot_json!(name, &stop.snapshot);
        if name == "steps_02_first_batch" {
            snapshot_json!("steps_status_migrating", status_json(&p));
        }
        previous = Some(stop);
    }
    snapshot_json!("steps_status_locked", status_json(&p));
}
