//! Which KV store a native store belongs to (`src/identity.rs`,
//! `spec/state-machine.md` §8.2), through the CLI: the pairing survives the
//! deletion of any invoice, and tells any two nodes apart, with or without
//! lnd's node key.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

const BATCH: usize = 25;

/// The identity recorded in a native store.
fn identity(sql: &Path) -> Value {
    let c = Connection::open_with_flags(sql, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let json: String = c
        .query_row("SELECT source_identity FROM oneway_state", [], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

fn set_identity(sql: &Path, id: &Value) {
    let c = Connection::open(sql).unwrap();
    c.execute(
        "UPDATE oneway_state SET source_identity = ?1",
        [id.to_string()],
    )
    .unwrap();
}

/// The recorded anchor numbers.
fn anchors(sql: &Path) -> Vec<u32> {
    identity(sql)["anchors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[0].as_u64().unwrap() as u32)
        .collect()
}

/// Removes lnd's node key (`graph-node`/`source`) from a KV store.
fn drop_node_key(kv: &Path) {
    let n = Connection::open(kv)
        .unwrap()
        .execute(
            "DELETE FROM channeldb_kv WHERE key = CAST('source' AS BLOB) AND parent_id =
             (SELECT id FROM channeldb_kv WHERE parent_id IS NULL AND key = CAST('graph-node' AS BLOB))",
            [],
        )
        .unwrap();
    assert_eq!(n, 1, "the fixture has a node key");
}

fn delete_invoices(kv: &Path, nums: &[u32]) {
    let mut s = Source::open(kv);
    let present: Vec<u32> = s.invoices().iter().map(|(n, _)| *n).collect();
    for n in nums {
        if present.contains(n) {
            s.delete_invoice(*n);
        }
    }
}

/// A temporary folder with store `name` made from `seed`.
fn store(dir: &Path, name: &str, invoices: u64, seed: u64) -> PathBuf {
    let kv = dir.join(format!("{name}.sqlite"));
    make_fixture(&kv, invoices, seed);
    kv
}

/// Requires `migrate`, `verify` and both guards to refuse with exit 3 and
/// an error containing every needle, moving nothing.
#[track_caller]
fn refused(kv: &Path, sql: &Path, needles: &[&str], what: &str) {
    let kv_before = kv_dump(kv);
    let state = state_row(sql);
    let rows = native_dump(sql);
    let outs = [
        ("migrate", migrate(kv, sql, BATCH, &[])),
        ("verify", verify(kv, sql)),
        ("guard kv", guard(kv, sql, "kv")),
        ("guard sql", guard(kv, sql, "sql")),
    ];
    for (cmd, out) in outs {
        out.assert_code(3, &format!("{what}: {cmd}"));
        let err = out.error();
        for n in needles {
            assert!(err.contains(n), "{what}: {cmd} should say {n:?}: {err}");
        }
    }
    assert_kv_unchanged(&kv_before, kv, what);
    assert_eq!(state_row(sql), state, "{what}");
    assert_native_eq(&native_dump(sql), &rows, what);
}

#[test]
fn identity_records_the_node_key_and_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let kv = store(dir.path(), "a", 300, 21);
    let sql = dir.path().join("a-native.sqlite");
    crash_at(&kv, &sql, BATCH, "begin.after_commit");
    let id = identity(&sql);
    let key = id["node_pubkey"].as_str().expect("a node key");
    assert_eq!(key.len(), 66);
    assert!(key.starts_with("02") || key.starts_with("03"), "{key}");
    let nums = anchors(&sql);
    // The first 8 invoices and settled ones beyond them.
    let all: Vec<u32> = Source::open(&kv)
        .invoices()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(&nums[..8], &all[..8]);
    assert!(nums.len() > 8, "{nums:?}");
    assert_eq!(id["anchor"][0], nums[0]);
}

#[test]
fn the_paired_store_is_accepted_after_every_anchor_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let base = store(dir.path(), "base", 300, 22);
    let total = Source::open(&base).invoices().len() as u64;
    // With the node key, and without it (an older lnd store): deleting the
    // first anchors is what lnd does (canceled invoices); in the second case
    // the settled anchors remain and prove the pairing.
    for with_key in [true, false] {
        let what = if with_key { "node key" } else { "no node key" };
        let kv = dir.path().join(format!("kv-{with_key}.sqlite"));
        let sql = dir.path().join(format!("native-{with_key}.sqlite"));
        copy_store(&base, &kv);
        if !with_key {
            drop_node_key(&kv);
        }
        crash_at(&kv, &sql, BATCH, "batch.after_commit:3");
        let nums = anchors(&sql);
        let gone: Vec<u32> = if with_key {
            nums.clone()
        } else {
            nums[..8].to_vec()
        };
        delete_invoices(&kv, &gone);
        guard(&kv, &sql, "kv").assert_ok(what);
        let out = migrate_ok(&kv, &sql, BATCH);
        assert_eq!(out["state"], "Locked", "{what}");
        let left = Source::open(&kv).invoices().len() as u64;
        assert_verify_clean(&kv, &sql, left);
        guard(&kv, &sql, "sql").assert_ok(what);
        let again = migrate_ok(&kv, &sql, BATCH);
        assert_eq!(again["already_completed"], true, "{what}");
        assert!(left < total, "{what}: invoices were deleted");
    }
}

#[test]
fn another_node_with_our_anchors_deleted_is_refused_by_its_node_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(dir.path(), "a", 300, 23);
    let b = store(dir.path(), "b", 300, 24);
    for stop in ["Migrating", "Locked"] {
        let sql = dir.path().join(format!("a-{stop}.sqlite"));
        let akv = dir.path().join(format!("a-{stop}-kv.sqlite"));
        copy_store(&a, &akv);
        if stop == "Locked" {
            migrate_ok(&akv, &sql, BATCH);
        } else {
            crash_at(&akv, &sql, BATCH, "batch.after_commit:2");
        }
        let bkv = dir.path().join(format!("b-{stop}.sqlite"));
        copy_store(&b, &bkv);
        // B's invoices with A's anchor numbers are gone: nothing but the
        // node key tells the stores apart.
        delete_invoices(&bkv, &anchors(&sql));
        let a_key = identity(&sql)["node_pubkey"].as_str().unwrap().to_string();
        refused(
            &bkv,
            &sql,
            &[
                "different KV store",
                &format!("lnd node {a_key}"),
                "graph-node/source",
            ],
            stop,
        );
    }
}

#[test]
fn another_node_without_node_keys_and_without_our_anchors_is_refused_as_unproven() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(dir.path(), "a", 300, 25);
    let b = store(dir.path(), "b", 300, 26);
    drop_node_key(&a);
    drop_node_key(&b);
    let sql = dir.path().join("a-native.sqlite");
    migrate_ok(&a, &sql, BATCH);
    assert_eq!(identity(&sql)["node_pubkey"], Value::Null);
    delete_invoices(&b, &anchors(&sql));
    refused(
        &b,
        &sql,
        &[
            "cannot be shown to come from the KV store",
            "none of the",
            "neither store records lnd's node key",
            "move the native store aside",
        ],
        "unproven",
    );
    // A's own store, untouched, is still its pair.
    let again = migrate_ok(&a, &sql, BATCH);
    assert_eq!(again["already_completed"], true);
    guard(&a, &sql, "sql").assert_ok("A");
}

#[test]
fn a_store_that_lost_its_node_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kv = store(dir.path(), "a", 300, 27);
    let sql = dir.path().join("a-native.sqlite");
    crash_at(&kv, &sql, BATCH, "batch.after_commit:2");
    drop_node_key(&kv);
    refused(
        &kv,
        &sql,
        &["different KV store", "has no node key"],
        "lost key",
    );
}

#[test]
fn an_identity_written_by_an_older_version_still_loads_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let kv = store(dir.path(), "a", 300, 28);
    let sql = dir.path().join("a-native.sqlite");
    crash_at(&kv, &sql, BATCH, "batch.after_commit:2");
    // The old format: prefix, bucket row and one anchor.
    let id = identity(&sql);
    let old = serde_json::json!({
        "kv_path": id["kv_path"],
        "table_prefix": id["table_prefix"],
        "invoices_bucket_id": id["invoices_bucket_id"],
        "anchor": id["anchor"],
    });
    set_identity(&sql, &old);
    assert_eq!(status(&kv, &sql)["state"], "Migrating");
    guard(&kv, &sql, "kv").assert_ok("old identity, anchor present");
    // Its one anchor gone and no node key recorded: no evidence left.
    let first = id["anchor"][0].as_u64().unwrap() as u32;
    let probe = dir.path().join("probe.sqlite");
    copy_store(&kv, &probe);
    delete_invoices(&probe, &[first]);
    let out = guard(&probe, &sql, "kv");
    out.assert_code(3, "old identity, anchor deleted");
    assert!(
        out.error().contains("none of the 1 invoices"),
        "{}",
        out.error()
    );
    // With its anchor present, the migration finishes.
    let out = migrate_ok(&kv, &sql, BATCH);
    assert_eq!(out["state"], "Locked");
}
