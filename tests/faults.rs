//! Fault injection: bad input, a full disk, a source that changes between
//! runs, operator mistakes, and every downgrade attempt, each on real stores
//! and real `oneway` processes.
//!
//! Every scenario checks content, not only exit codes: the KV rows (the
//! original, or the original plus exactly one tombstone row), the native rows
//! (canonical dumps compared with an uncrashed migration of the same source),
//! the persisted state and the journal. Failing runs must leave the state as
//! it was before the failing write; a repaired input must then migrate to the
//! same native store a clean run of the repaired source gives.
//!
//! What each test shows is tabulated in `RELIABILITY.md`.

#[macro_use]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::*;
use oneway::codec::{decode_invoice, encode_invoice};
use rusqlite::{params, Connection, OpenFlags};
use serde_json::Value;

/// Invoices in most fixtures here: small, but 12 batches of [`BATCH`].
const N: u64 = 300;
/// Batch size: small, so that every state boundary is reachable.
const BATCH: usize = 25;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A temporary folder with a pristine fixture (`base.sqlite`) and a working
/// pair (`kv.sqlite`, a copy of the fixture, and `native.sqlite`, absent).
struct Lab {
    dir: tempfile::TempDir,
    base: PathBuf,
    kv: PathBuf,
    sql: PathBuf,
}

impl Lab {
    fn new(invoices: u64, seed: u64) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.sqlite");
        make_fixture(&base, invoices, seed);
        let kv = dir.path().join("kv.sqlite");
        let sql = dir.path().join("native.sqlite");
        copy_store(&base, &kv);
        Lab { dir, base, kv, sql }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An uncrashed migration of a copy of `source`, in its own folder.
    fn reference_of(&self, source: &Path, name: &str) -> Reference {
        reference(source, &self.path(name), BATCH)
    }

    /// A second working pair, `<name>-kv.sqlite` (a copy of `source`) and
    /// `<name>-native.sqlite` (absent).
    fn pair(&self, source: &Path, name: &str) -> (PathBuf, PathBuf) {
        let kv = self.path(&format!("{name}-kv.sqlite"));
        let sql = self.path(&format!("{name}-native.sqlite"));
        copy_store(source, &kv);
        remove_store(&sql);
        (kv, sql)
    }

    fn migrate(&self, env: &[(&str, &str)]) -> Out {
        migrate(&self.kv, &self.sql, BATCH, env)
    }
}

/// Everything oneway persists about a migration, in comparable form: the
/// state row, the cursor, the journal (kind, states, event) and the count of
/// native invoices. `None` fields mean "no native store / no state".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Persisted {
    state: Option<(String, i64, i64)>,
    cursor: Option<i64>,
    native_invoices: i64,
    journal: Vec<String>,
}

/// Reads [`Persisted`] from the native store alone (the KV store may be
/// unreadable at that moment).
fn persisted(sql: &Path) -> Persisted {
    let state = state_row(sql);
    if state.is_none() {
        return Persisted {
            state,
            cursor: None,
            native_invoices: 0,
            journal: Vec::new(),
        };
    }
    let c = Connection::open_with_flags(sql, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let cursor = c
        .query_row("SELECT cursor FROM oneway_state", [], |r| r.get(0))
        .expect("cursor");
    let native_invoices = c
        .query_row("SELECT count(*) FROM invoices", [], |r| r.get(0))
        .expect("count");
    let journal = journal(sql)
        .iter()
        .map(|e| {
            format!(
                "{} {}->{} {}",
                e.kind,
                e.from.as_deref().unwrap_or("-"),
                e.to.as_deref().unwrap_or("-"),
                e.event.as_deref().unwrap_or("-")
            )
        })
        .collect();
    Persisted {
        state,
        cursor,
        native_invoices,
        journal,
    }
}

/// The transitions of a native store's journal, as `event` names.
fn transitions(sql: &Path) -> Vec<String> {
    journal(sql)
        .into_iter()
        .filter(|e| e.kind == "transition")
        .map(|e| e.event.unwrap_or_default())
        .collect()
}

/// Security rows of the journal.
fn security_rows(sql: &Path) -> Vec<JournalRow> {
    if state_row(sql).is_none() {
        return Vec::new();
    }
    journal(sql)
        .into_iter()
        .filter(|e| e.kind == "security")
        .collect()
}

const HAPPY: [&str; 4] = ["Begin", "VerificationPassed", "TombstoneWritten", "Lock"];

/// Asserts `out` failed with `code` and that its error line contains every
/// piece of `needles`; returns the error line.
#[track_caller]
fn assert_error(out: &Out, code: i32, needles: &[&str], what: &str) -> String {
    out.assert_code(code, what);
    let err = out.error();
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: the error should say {n:?}: {err:?}"
        );
    }
    err
}

/// Asserts the guard lets lnd keep running on KV and refuses SQL: the state
/// of a migration that has not finished and has not tombstoned anything.
#[track_caller]
fn assert_kv_still_usable(kv: &Path, sql: &Path, what: &str) {
    guard(kv, sql, "kv").assert_ok(what);
    guard(kv, sql, "sql").assert_code(3, what);
}

/// Opens a KV store for raw edits that [`Source`] does not offer.
fn kv_rw(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).expect("open KV")
}

/// The first invoice with number above `after` satisfying `pred`.
fn pick(kv: &Path, after: u32, pred: impl Fn(&oneway::model::Invoice) -> bool) -> u32 {
    Source::open(kv)
        .invoices()
        .into_iter()
        .find(|(n, i)| *n > after && pred(i))
        .map(|(n, _)| n)
        .unwrap_or_else(|| panic!("no suitable invoice after {after:08x}"))
}

/// Deletes invoice `num` the way lnd's DeleteInvoice does: the invoice
/// value, its payment-hash entry, its add-index entry and its payment-address
/// entry (AMP HTLC sets are not used for the invoices deleted here).
fn delete_invoice(kv: &Path, num: u32) {
    let s = Source::open(kv);
    let (_, inv) = s
        .invoices()
        .into_iter()
        .find(|(n, _)| *n == num)
        .expect("invoice to delete");
    assert!(!inv.is_amp(), "delete_invoice handles plain invoices only");
    let key = num.to_be_bytes();
    let c = kv_rw(kv);
    let tx = c.unchecked_transaction().expect("begin");
    let mut deleted = 0;
    deleted += tx
        .execute(
            &format!("DELETE FROM {KV_TABLE} WHERE parent_id = ?1 AND key = ?2"),
            params![s.invoices, key.as_slice()],
        )
        .expect("delete invoice");
    for bucket in [s.hashes, s.add_index, s.pay_addr] {
        deleted += tx
            .execute(
                &format!("DELETE FROM {KV_TABLE} WHERE parent_id = ?1 AND value = ?2"),
                params![bucket, key.as_slice()],
            )
            .expect("delete index entry");
    }
    tx.commit().expect("commit");
    assert!(deleted >= 3, "invoice {num:08x}: {deleted} rows deleted");
}

// ---------------------------------------------------------------------------
// 1. Bad input
// ---------------------------------------------------------------------------

/// Damages the lab's KV store with `damage`, requires `migrate` to fail
/// (exit 1) with an error containing `needles`, twice, without writing the
/// KV store and without moving the persisted state on the second attempt;
/// then `repair`s it, requires the KV store to be the original again, and a
/// rerun to finish equal to an uncrashed migration of the original.
/// Returns `oneway status` right after the first failure.
fn bad_input(
    lab: &Lab,
    damage: impl FnOnce(&Path),
    repair: impl FnOnce(&Path),
    needles: &[&str],
    what: &str,
) -> Value {
    let r = lab.reference_of(&lab.base, "ref");
    damage(&lab.kv);
    let damaged = kv_dump(&lab.kv);
    assert_ne!(damaged, r.kv_before, "{what}: the damage changed nothing");

    let out = lab.migrate(&[]);
    let err = assert_error(&out, 1, needles, what);
    eprintln!("{what}: {err}");
    assert!(
        err.contains(&lab.kv.display().to_string()),
        "{what}: the error names the KV store: {err}"
    );
    assert_kv_unchanged(&damaged, &lab.kv, what);
    let after_first = status(&lab.kv, &lab.sql);
    assert_eq!(after_first["state"], "Migrating", "{what}: {after_first}");
    assert_eq!(after_first["tombstone_present"], false, "{what}");
    assert_eq!(
        after_first["copied"], after_first["native_invoices"],
        "{what}: the copy map and the native rows agree: {after_first}"
    );
    assert_eq!(transitions(&lab.sql), ["Begin"], "{what}");
    assert_kv_still_usable(&lab.kv, &lab.sql, what);

    // A second attempt fails the same way and changes nothing.
    let before = persisted(&lab.sql);
    let native_before = native_dump(&lab.sql);
    let again = lab.migrate(&[]);
    assert_eq!(assert_error(&again, 1, needles, what), err, "{what}");
    assert_eq!(persisted(&lab.sql), before, "{what}: rerun");
    assert_native_eq(&native_dump(&lab.sql), &native_before, what);
    assert_kv_unchanged(&damaged, &lab.kv, what);

    repair(&lab.kv);
    assert_eq!(kv_dump(&lab.kv), r.kv_before, "{what}: the repair");
    let report = migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_eq!(report["state"], "Locked", "{what}: {report}");
    assert_matches_reference(&lab.kv, &lab.sql, &r, what);
    assert_eq!(transitions(&lab.sql), HAPPY, "{what}");
    after_first
}

/// How many invoices of the fixture come before `num` (the copy stops at
/// the batch holding a bad invoice: whole batches before it are kept).
fn invoices_before(kv: &Path, num: u32) -> u64 {
    Source::open(kv)
        .invoices()
        .iter()
        .filter(|(n, _)| *n < num)
        .count() as u64
}

/// Asserts the copy kept exactly the whole batches before the bad invoice.
#[track_caller]
fn assert_stopped_before(s: &Value, before: u64, what: &str) {
    let whole = before / BATCH as u64 * BATCH as u64;
    assert_eq!(s["copied"], whole, "{what}: {s}");
}

#[test]
fn bad_input_truncated_value_is_named_and_a_repaired_store_completes() {
    let lab = Lab::new(N, 31);
    let num = pick(&lab.kv, 110, |_| true);
    let original = Source::open(&lab.kv).value(num);
    let key = format!("invoice {num:08x}");
    let s = bad_input(
        &lab,
        |kv| {
            let v = Source::open(kv).value(num);
            Source::open(kv).set_value(num, &v[..v.len() / 2]);
        },
        |kv| Source::open(kv).set_value(num, &original),
        &[&key, "is malformed"],
        "truncated value",
    );
    assert_stopped_before(&s, invoices_before(&lab.base, num), "truncated value");
}

#[test]
fn bad_input_tlv_length_past_the_end_is_named_and_a_repaired_store_completes() {
    let lab = Lab::new(N, 32);
    // The last body record of an invoice whose length fits one byte: one
    // more than its real length makes it run past the end of the body.
    let num = pick(&lab.kv, 130, |_| true);
    let original = Source::open(&lab.kv).value(num);
    let last = *body_records(&original).last().expect("records");
    assert!(last.len < 0xfc, "one-byte BigSize length");
    let key = format!("invoice {num:08x}");
    let ty = format!("record type {}", last.ty);
    let s = bad_input(
        &lab,
        |kv| {
            let mut v = original.clone();
            v[last.len_at] += 1;
            Source::open(kv).set_value(num, &v);
        },
        |kv| Source::open(kv).set_value(num, &original),
        &[&key, "is malformed", &ty],
        "TLV length past the end",
    );
    assert_stopped_before(&s, invoices_before(&lab.base, num), "TLV length");
}

#[test]
fn bad_input_bad_time_encoding_is_named_and_a_repaired_store_completes() {
    let lab = Lab::new(N, 33);
    let num = pick(&lab.kv, 160, |_| true);
    let original = Source::open(&lab.kv).value(num);
    // Record 2 is the creation date, Go's time.Time binary form; its first
    // byte is the encoding version (1 or 2).
    let created = body_record(&original, 2);
    assert!(matches!(original[created.at], 1 | 2));
    let key = format!("invoice {num:08x}");
    let s = bad_input(
        &lab,
        |kv| {
            let mut v = original.clone();
            v[created.at] = 9;
            Source::open(kv).set_value(num, &v);
        },
        |kv| Source::open(kv).set_value(num, &original),
        &[&key, "is malformed", "version 9"],
        "bad time encoding",
    );
    assert_stopped_before(&s, invoices_before(&lab.base, num), "bad time");
}

#[test]
fn bad_input_payment_hash_not_found_is_named_and_a_restored_entry_completes() {
    let lab = Lab::new(N, 34);
    // A hodl invoice whose preimage is unknown: only invoices/paymenthashes
    // knows its hash. lnd's migration would skip it; oneway must stop.
    let num = pick(&lab.kv, 100, |i| i.preimage.is_none() && !i.is_amp());
    let entry = Source::open(&lab.kv)
        .hash_entry(num)
        .expect("a payment-hash entry");
    let key = format!("invoice {num:08x}");
    let s = bad_input(
        &lab,
        |kv| Source::open(kv).delete_hash_entry(&entry),
        |kv| Source::open(kv).put_hash_entry(&entry, num),
        &[&key, "cannot be migrated", "payment hash cannot be found"],
        "payment hash not found",
    );
    assert_stopped_before(&s, invoices_before(&lab.base, num), "no hash");
}

/// Invoice `to` is given invoice `from`'s preimage, hence its payment hash;
/// lnd's unique index on the hash must refuse, naming both invoices, and the
/// rerun after the repair must replace the outdated copy before it builds the
/// index again.
fn duplicate_payment_hash(seed: u64, later_takes_earlier: bool) {
    let lab = Lab::new(N, seed);
    let with_preimage = |i: &oneway::model::Invoice| i.preimage.is_some() && !i.is_amp();
    let a = pick(&lab.kv, 20, with_preimage);
    let b = pick(&lab.kv, 200, with_preimage);
    let (from, to) = if later_takes_earlier { (a, b) } else { (b, a) };
    let original = Source::open(&lab.kv).value(to);
    let (ka, kb) = (format!("invoice {a:08x}"), format!("invoice {b:08x}"));
    let what = format!("duplicate payment hash ({to:08x} takes {from:08x}'s)");
    let s = bad_input(
        &lab,
        |kv| {
            let src = Source::open(kv);
            let mut inv = decode_invoice(&src.value(to)).expect("decode");
            inv.preimage = decode_invoice(&src.value(from)).expect("decode").preimage;
            drop(src);
            Source::open(kv).set_value(to, &encode_invoice(&inv));
        },
        |kv| Source::open(kv).set_value(to, &original),
        &[&kb, &ka, "cannot be migrated", "shares its payment hash"],
        &what,
    );
    // Every invoice was copied; lnd's unique index on the hash refused.
    assert_eq!(s["copied"], N, "{what}: {s}");
}

#[test]
fn bad_input_duplicate_payment_hash_names_both_and_a_repaired_store_completes() {
    duplicate_payment_hash(35, true);
}

#[test]
fn bad_input_duplicate_payment_hash_in_the_earlier_invoice_is_repaired_too() {
    duplicate_payment_hash(37, false);
}

/// A legacy AMP invoice's shard is given another legacy AMP invoice's set
/// id, so both own an AMP sub-invoice with that id: lnd's primary key on
/// `amp_sub_invoices.set_id` must refuse when the staged sets are moved in,
/// naming both invoices, and the repaired store must complete.
#[test]
fn bad_input_duplicate_amp_set_id_names_both_and_a_repaired_store_completes() {
    let lab = Lab::new(N, 38);
    let legacy = |i: &oneway::model::Invoice| {
        i.is_amp() && i.amp_state.is_empty() && i.htlcs.iter().any(|h| h.amp.is_some())
    };
    let from = pick(&lab.kv, 20, legacy);
    let to = pick(&lab.kv, from, legacy);
    let original = Source::open(&lab.kv).value(to);
    let (kf, kt) = (format!("invoice {from:08x}"), format!("invoice {to:08x}"));
    let what = format!("duplicate AMP set id ({to:08x} takes {from:08x}'s)");
    let s = bad_input(
        &lab,
        |kv| {
            let src = Source::open(kv);
            let theirs = decode_invoice(&src.value(from)).expect("decode");
            let set_id = theirs.htlcs[0].amp.as_ref().expect("AMP shard").set_id;
            let mut inv = decode_invoice(&src.value(to)).expect("decode");
            drop(src);
            inv.htlcs[0].amp.as_mut().expect("AMP shard").set_id = set_id;
            Source::open(kv).set_value(to, &encode_invoice(&inv));
        },
        |kv| Source::open(kv).set_value(to, &original),
        &[&kt, &kf, "cannot be migrated", "shares its AMP set id"],
        &what,
    );
    // Every invoice was copied; the move of the staged AMP sets refused.
    assert_eq!(s["copied"], N, "{what}: {s}");
}

#[test]
fn bad_input_in_an_invoice_already_copied_is_named_and_a_repaired_store_completes() {
    // The damage happens between runs, behind the cursor: the copy does not
    // read that invoice again, the verification does and must stop.
    let lab = Lab::new(N, 36);
    crash_at(&lab.kv, &lab.sql, BATCH, "batch.after_commit:4");
    let num = pick(&lab.kv, 20, |_| true);
    let original = Source::open(&lab.kv).value(num);
    let key = format!("invoice {num:08x}");
    let s = bad_input(
        &lab,
        |kv| Source::open(kv).set_value(num, &original[..original.len() - 3]),
        |kv| Source::open(kv).set_value(num, &original),
        &[&key, "is malformed"],
        "damage behind the cursor",
    );
    assert_eq!(s["copied"], N, "the copy finished first: {s}");
}

/// The run lock file next to a native store.
fn lock_file(sql: &Path) -> PathBuf {
    with_suffix(sql, ".lock")
}

#[test]
fn bad_input_kv_file_not_sqlite_is_named_before_and_during_a_migration() {
    let lab = Lab::new(N, 38);
    let r = lab.reference_of(&lab.base, "ref");
    let original = std::fs::read(&lab.kv).expect("read KV");
    // Same length, not SQLite (a file overwritten by something else).
    let garbage: Vec<u8> = (0..original.len()).map(|i| (i * 7 + 3) as u8).collect();
    let kv_text = lab.kv.display().to_string();

    // Before anything: nothing may be created next to the native path.
    std::fs::write(&lab.kv, &garbage).expect("write");
    for out in [lab.migrate(&[]), guard(&lab.kv, &lab.sql, "kv")] {
        assert_error(
            &out,
            1,
            &["KV store", &kv_text, "not a SQLite database"],
            "not SQLite",
        );
    }
    assert!(!lab.sql.exists() && !lock_file(&lab.sql).exists());
    assert_eq!(
        std::fs::read(&lab.kv).expect("read"),
        garbage,
        "KV untouched"
    );

    // During a migration (stopped after 3 batches): the state stays put.
    std::fs::write(&lab.kv, &original).expect("restore");
    crash_at(&lab.kv, &lab.sql, BATCH, "batch.after_commit:3");
    let before = persisted(&lab.sql);
    let native_before = native_dump(&lab.sql);
    std::fs::write(&lab.kv, &garbage).expect("write");
    for out in [
        lab.migrate(&[]),
        guard(&lab.kv, &lab.sql, "kv"),
        guard(&lab.kv, &lab.sql, "sql"),
        verify(&lab.kv, &lab.sql),
    ] {
        assert_error(&out, 1, &[&kv_text, "not a SQLite database"], "not SQLite");
    }
    assert_eq!(
        std::fs::read(&lab.kv).expect("read"),
        garbage,
        "KV untouched"
    );
    std::fs::write(&lab.kv, &original).expect("restore");
    assert_eq!(persisted(&lab.sql), before);
    assert_native_eq(&native_dump(&lab.sql), &native_before, "not SQLite");
    assert_eq!(before.state.as_ref().map(|s| s.1), Some(3 * BATCH as i64));
    migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_matches_reference(&lab.kv, &lab.sql, &r, "KV restored");
    assert_eq!(transitions(&lab.sql), HAPPY);
}

#[test]
fn bad_input_wrong_table_prefix_or_renamed_table_is_named_then_completes() {
    let lab = Lab::new(N, 39);
    let r = lab.reference_of(&lab.base, "ref");
    crash_at(&lab.kv, &lab.sql, BATCH, "batch.after_commit:2");
    let before = persisted(&lab.sql);
    let kv_before = kv_dump(&lab.kv);

    // The operator gives the wrong prefix on the rerun.
    let out = run(
        &pair_args(
            "migrate",
            &lab.kv,
            &lab.sql,
            &["--table-prefix", "lnd", "--batch-size", "25"],
        ),
        &[],
    );
    assert_error(&out, 1, &["lnd_kv", "channeldb_kv"], "wrong prefix");
    assert_eq!(persisted(&lab.sql), before, "wrong prefix");

    // The KV table was renamed (another prefix): the error names the table
    // looked for and the tables present.
    kv_rw(&lab.kv)
        .execute_batch("ALTER TABLE channeldb_kv RENAME TO walletdb_kv")
        .expect("rename");
    let out = lab.migrate(&[]);
    assert_error(&out, 1, &["channeldb_kv", "walletdb_kv"], "renamed table");
    assert_eq!(persisted(&lab.sql), before, "renamed table");
    // Pointing oneway at the renamed table is another source: refused.
    let out = run(
        &pair_args(
            "migrate",
            &lab.kv,
            &lab.sql,
            &["--table-prefix", "walletdb", "--json"],
        ),
        &[],
    );
    assert_error(&out, 3, &["different KV store", "table prefix"], "prefix");
    assert_eq!(persisted(&lab.sql), before, "other prefix");

    kv_rw(&lab.kv)
        .execute_batch("ALTER TABLE walletdb_kv RENAME TO channeldb_kv")
        .expect("rename back");
    assert_eq!(kv_dump(&lab.kv), kv_before);
    migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_matches_reference(&lab.kv, &lab.sql, &r, "table restored");
}

/// An empty node (no `invoices` bucket) migrates to `Locked` with zero
/// invoices and gets the bucket created to hold the tombstone; a crash at
/// any step, including between the tombstone's KV commit and the
/// `Tombstoned` record, reruns to the same end.
#[test]
fn bad_input_no_invoices_bucket_locks_empty_from_every_crash_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = fixture_path("edge-empty-node.sqlite");
    let original = kv_dump(&base);
    assert!(!original.rows.contains(&invoices_bucket_row()));
    let added = [invoices_bucket_row(), tombstone_row()];

    let (kv, sql) = (
        dir.path().join("ref-kv.sqlite"),
        dir.path().join("ref.sqlite"),
    );
    copy_store(&base, &kv);
    let report = migrate_ok(&kv, &sql, BATCH);
    assert_eq!(
        (report["state"].as_str(), report["invoices"].as_u64()),
        (Some("Locked"), Some(0))
    );
    let clean = native_dump(&sql);
    assert_eq!(clean.invoices(), 0);
    assert_eq!(
        clean.tables["migration_tracker"],
        ["i:1", "i:2", "i:3", "i:4", "i:5", "i:6", "i:7"],
        "lnd's tracker rows 1 to 7"
    );
    assert_kv_added(&original, &kv_dump(&kv), &added, "empty node");

    for (i, point) in [
        "begin.after_commit",
        "batch.after_commit",
        "indexes.after_commit",
        "verify.after_commit",
        "tombstone.before_insert",
        "tombstone.after_commit",
        "tombstoned.before_commit",
        "tombstoned.after_commit",
        "lock.before_commit",
    ]
    .into_iter()
    .enumerate()
    {
        let kv = dir.path().join(format!("kv-{i}.sqlite"));
        let sql = dir.path().join(format!("native-{i}.sqlite"));
        copy_store(&base, &kv);
        crash_at(&kv, &sql, BATCH, point);
        let written = kv_dump(&kv) != original;
        assert_eq!(
            written,
            !matches!(
                point,
                "begin.after_commit"
                    | "batch.after_commit"
                    | "indexes.after_commit"
                    | "verify.after_commit"
                    | "tombstone.before_insert"
            ),
            "{point}: the bucket and tombstone appear only with the tombstone commit"
        );
        let again = migrate_ok(&kv, &sql, BATCH);
        assert_eq!(again["state"], "Locked", "{point}: {again}");
        assert_kv_added(&original, &kv_dump(&kv), &added, point);
        assert_native_eq(&native_dump(&sql), &clean, point);
        assert_eq!(transitions(&sql), HAPPY, "{point}");
        guard(&kv, &sql, "kv").assert_code(3, point);
        guard(&kv, &sql, "sql").assert_ok(point);
    }
}

// ---------------------------------------------------------------------------
// 2. A full disk on the target
// ---------------------------------------------------------------------------

/// Pages of a native store (through its WAL).
fn page_count(sql: &Path) -> i64 {
    Connection::open_with_flags(sql, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open")
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("page_count")
}

/// Pages of the native store of `source` right after the failpoint `point`.
fn pages_after(lab: &Lab, source: &Path, point: &str) -> i64 {
    let name = format!("probe-{}", point.replace([':', '.'], "-"));
    let (kv, sql) = lab.pair(source, &name);
    crash_at(&kv, &sql, BATCH, point);
    page_count(&sql)
}

/// The persisted state and native rows of `source` stopped at `point` (the
/// expectation for a run that failed at the write right after `point`).
fn stopped_at(lab: &Lab, source: &Path, point: &str) -> (Persisted, NativeDump) {
    let name = format!("twin-{}", point.replace([':', '.'], "-"));
    let (kv, sql) = lab.pair(source, &name);
    crash_at(&kv, &sql, BATCH, point);
    (persisted(&sql), native_dump(&sql))
}

/// Runs `migrate` with the native store capped at `cap` pages and requires
/// it to fail as on a full disk: exit 1, an error saying the native store
/// (by path) is full and what was being written, the KV store untouched.
#[track_caller]
fn migrate_on_full_disk(kv: &Path, sql: &Path, cap: i64, action: &str, what: &str) {
    let kv_before = kv_dump(kv);
    let out = migrate(
        kv,
        sql,
        BATCH,
        &[("ONEWAY_MAX_PAGE_COUNT", &cap.to_string())],
    );
    let sql_text = sql.display().to_string();
    let err = assert_error(
        &out,
        1,
        &["native SQL store", &sql_text, "is full while", action],
        what,
    );
    eprintln!("{what} (cap {cap} pages): {err}");
    assert_kv_unchanged(&kv_before, kv, what);
    assert_eq!(status(kv, sql)["tombstone_present"], false, "{what}");
}

/// The rerun without the cap equals an uncrashed migration.
#[track_caller]
fn rerun_uncapped(kv: &Path, sql: &Path, r: &Reference, what: &str) {
    let report = migrate_ok(kv, sql, BATCH);
    assert_eq!(report["state"], "Locked", "{what}: {report}");
    assert_matches_reference(kv, sql, r, what);
}

#[test]
fn disk_full_during_begin_leaves_no_state_and_a_rerun_completes() {
    let lab = Lab::new(N, 41);
    let r = lab.reference_of(&lab.base, "ref");
    let begun = pages_after(&lab, &lab.base, "begin.after_commit");
    migrate_on_full_disk(
        &lab.kv,
        &lab.sql,
        begun - 1,
        "creating the schema",
        "full during Begin",
    );
    // Nothing was committed: no oneway state, no tables of lnd's.
    assert_eq!(state_row(&lab.sql), None);
    assert_eq!(status(&lab.kv, &lab.sql)["state"], "Fresh");
    assert_kv_still_usable(&lab.kv, &lab.sql, "full during Begin");
    rerun_uncapped(&lab.kv, &lab.sql, &r, "full during Begin");
    assert_eq!(transitions(&lab.sql), HAPPY);
}

#[test]
fn disk_full_mid_copy_keeps_the_batches_before_and_a_rerun_completes() {
    let lab = Lab::new(N, 42);
    let r = lab.reference_of(&lab.base, "ref");
    let begun = pages_after(&lab, &lab.base, "begin.after_commit");
    let copied = pages_after(&lab, &lab.base, "indexes.before_commit");
    assert!(
        copied > begun + 3,
        "the copy takes pages: {begun} -> {copied}"
    );
    // One third and two thirds of the way through the copy's pages.
    for cap in [
        begun + (copied - begun) / 3,
        begun + (copied - begun) * 2 / 3,
    ] {
        let (kv, sql) = lab.pair(&lab.base, &format!("cap-{cap}"));
        let what = format!("full mid-copy at {cap} pages");
        migrate_on_full_disk(&kv, &sql, cap, "inserting an invoice", &what);
        // The failing batch left nothing: the store is exactly what a
        // process stopped right after the last good batch has.
        let got = persisted(&sql);
        let kept = got.state.as_ref().expect("state").1;
        assert!(kept > 0 && kept < N as i64, "{what}: {got:?}");
        assert_eq!(kept % BATCH as i64, 0, "{what}: whole batches only");
        let point = format!("batch.after_commit:{}", kept / BATCH as i64);
        let (want, want_rows) = stopped_at(&lab, &lab.base, &point);
        assert_eq!(got, want, "{what}: vs {point}");
        assert_native_eq(&native_dump(&sql), &want_rows, &what);
        assert_kv_still_usable(&kv, &sql, &what);
        rerun_uncapped(&kv, &sql, &r, &what);
    }
}

#[test]
fn disk_full_during_the_index_build_keeps_the_copy_and_a_rerun_completes() {
    let lab = Lab::new(N, 43);
    let r = lab.reference_of(&lab.base, "ref");
    let copied = pages_after(&lab, &lab.base, "indexes.before_commit");
    let indexed = pages_after(&lab, &lab.base, "indexes.after_commit");
    assert!(
        indexed > copied + 1,
        "the indexes take pages: {copied} -> {indexed}"
    );
    let what = "full during the index build";
    migrate_on_full_disk(
        &lab.kv,
        &lab.sql,
        (copied + indexed) / 2,
        "creating lnd's indexes",
        what,
    );
    let (want, want_rows) = stopped_at(&lab, &lab.base, "indexes.before_commit");
    assert_eq!(persisted(&lab.sql), want, "{what}");
    assert_eq!(want.state.as_ref().map(|s| s.1), Some(N as i64));
    assert_native_eq(&native_dump(&lab.sql), &want_rows, what);
    assert_kv_still_usable(&lab.kv, &lab.sql, what);
    rerun_uncapped(&lab.kv, &lab.sql, &r, what);
}

#[test]
fn disk_full_during_verification_repairs_keeps_the_state_and_a_rerun_completes() {
    // The copy and the indexes are done; then lnd settles every open invoice
    // (all behind the cursor). The verification must re-copy them, which
    // needs pages the capped store does not have.
    let lab = Lab::new(N, 44);
    crash_at(&lab.kv, &lab.sql, BATCH, "indexes.after_commit");
    let mut src = Source::open(&lab.kv);
    let open = src.open_invoices();
    assert!(open.len() > 20, "{} open invoices", open.len());
    for &num in &open {
        src.settle(num);
    }
    drop(src);
    let changed = lab.path("changed.sqlite");
    copy_store(&lab.kv, &changed);
    let r = lab.reference_of(&changed, "ref");
    let before = persisted(&lab.sql);
    let what = "full during verification repairs";
    migrate_on_full_disk(
        &lab.kv,
        &lab.sql,
        page_count(&lab.sql),
        "inserting an invoice",
        what,
    );
    // Repairs do not move the state, the cursor or the counts, and nothing
    // was recorded as verified.
    assert_eq!(persisted(&lab.sql), before, "{what}");
    let v = verify(&lab.kv, &lab.sql);
    let outdated = v.json()["outdated"].as_u64().expect("outdated");
    assert!(
        outdated > 0,
        "{what}: some settlements are not copied yet: {v:?}"
    );
    assert_kv_still_usable(&lab.kv, &lab.sql, what);
    rerun_uncapped(&lab.kv, &lab.sql, &r, what);
}

// ---------------------------------------------------------------------------
// 3. The source changes between runs
// ---------------------------------------------------------------------------

/// The cursor of a native store, as an invoice number.
fn cursor(kv: &Path, sql: &Path) -> u32 {
    let s = status(kv, sql);
    u32::from_str_radix(s["cursor"].as_str().expect("a cursor"), 16).expect("hex cursor")
}

/// A copy of the (changed) KV store `kv`, migrated cleanly: what the
/// interrupted migration must end up equal to.
fn reference_of_now(lab: &Lab, kv: &Path, name: &str) -> Reference {
    let snapshot = lab.path(&format!("{name}-source.sqlite"));
    copy_store(kv, &snapshot);
    lab.reference_of(&snapshot, name)
}

/// The verified source digest of the reference migration `name`.
fn ref_digest(lab: &Lab, name: &str) -> Value {
    let dir = lab.path(name);
    status(&dir.join("ref-kv.sqlite"), &dir.join("ref-native.sqlite"))["source_digest"].clone()
}

/// The journal's transition rows with their details.
fn transition_rows(sql: &Path) -> Vec<JournalRow> {
    journal(sql)
        .into_iter()
        .filter(|e| e.kind == "transition")
        .collect()
}

#[test]
fn source_changed_while_migrating_is_copied_and_verified_before_the_tombstone() {
    let lab = Lab::new(N, 51);
    crash_at(&lab.kv, &lab.sql, BATCH, "batch.after_commit:4");
    let at = cursor(&lab.kv, &lab.sql);
    assert_eq!(status(&lab.kv, &lab.sql)["copied"], 4 * BATCH as u64);
    // lnd runs on: 20 new invoices, and an invoice already copied is settled.
    let (settled, added) = change_source(&lab.kv, 20, at, "migrating");
    assert!(settled <= at, "the settled invoice is behind the cursor");
    let r = reference_of_now(&lab, &lab.kv, "ref");
    let changed = kv_dump(&lab.kv);
    // Read-only, the verification sees the settled copy as outdated and
    // the new invoices as not copied yet (the migration is unfinished).
    let v = verify(&lab.kv, &lab.sql).json();
    assert_eq!(v["outdated"], 1, "{v}");
    assert!(
        v["not_copied_yet"].as_u64().unwrap() > added.len() as u64,
        "{v}"
    );
    assert_eq!(v["mismatch_count"], 0, "{v}");
    assert_kv_still_usable(&lab.kv, &lab.sql, "changed while migrating");

    let report = migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_eq!(report["invoices"], N + 20, "{report}");
    assert_eq!(
        report["resynced"], 1,
        "the settled invoice was re-copied: {report}"
    );
    assert_matches_reference(&lab.kv, &lab.sql, &r, "changed while migrating");
    assert_kv_tombstoned(&changed, &lab.kv, "changed while migrating");
    // Changes inside Migrating are part of the copy: one verification, of
    // the changed source.
    let t = transition_rows(&lab.sql);
    let events: Vec<_> = t.iter().map(|e| e.event.clone().unwrap()).collect();
    assert_eq!(events, HAPPY);
    assert_eq!(t[1].details["invoices"], N + 20);
    assert_eq!(t[1].details["source_digest"], ref_digest(&lab, "ref"));
}

#[test]
fn source_changed_while_verified_is_resynced_and_journaled_before_the_tombstone() {
    let lab = Lab::new(N, 52);
    crash_at(&lab.kv, &lab.sql, BATCH, "verify.after_commit");
    let verified = status(&lab.kv, &lab.sql);
    assert_eq!(verified["state"], "Verified");
    let (settled, added) = change_source(&lab.kv, 20, cursor(&lab.kv, &lab.sql), "verified");
    let r = reference_of_now(&lab, &lab.kv, "ref");
    let changed = kv_dump(&lab.kv);

    // The tombstone step finds the source changed, writes nothing to it and
    // goes back to Migrating (stopped right there).
    crash_at(&lab.kv, &lab.sql, BATCH, "resync.after_commit");
    assert_kv_unchanged(&changed, &lab.kv, "resync: no tombstone");
    let s = status(&lab.kv, &lab.sql);
    assert_eq!(
        (
            s["state"].as_str(),
            s["pass"].as_u64(),
            s["verified_count"].is_null()
        ),
        (Some("Migrating"), Some(2), true),
        "{s}"
    );
    assert_eq!(s["copied"], N, "nothing new copied yet: {s}");
    assert_kv_still_usable(&lab.kv, &lab.sql, "after the re-sync");
    let last = transition_rows(&lab.sql).pop().expect("a transition");
    assert_eq!(
        (
            last.from.as_deref(),
            last.to.as_deref(),
            last.event.as_deref()
        ),
        (Some("Verified"), Some("Migrating"), Some("SourceChanged"))
    );
    assert_eq!(last.details["verified_invoices"], N);
    assert_eq!(last.details["current_invoices"], N + 20);
    assert_eq!(last.details["verified_digest"], verified["source_digest"]);
    assert_eq!(last.details["current_digest"], ref_digest(&lab, "ref"));

    let report = migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_eq!(
        report["resynced"], 1,
        "invoice {settled:08x} re-copied: {report}"
    );
    assert_eq!(
        report["copied_this_run"],
        added.len() as u64 + 1,
        "{report}"
    );
    assert_matches_reference(&lab.kv, &lab.sql, &r, "changed while verified");
    assert_kv_tombstoned(&changed, &lab.kv, "changed while verified");
    let t = transition_rows(&lab.sql);
    let events: Vec<_> = t.iter().map(|e| e.event.clone().unwrap()).collect();
    assert_eq!(
        events,
        [
            "Begin",
            "VerificationPassed",
            "SourceChanged",
            "VerificationPassed",
            "TombstoneWritten",
            "Lock"
        ]
    );
    assert_eq!(t[3].details["invoices"], N + 20);
    assert_eq!(t[4].details["source_digest"], ref_digest(&lab, "ref"));
}

/// An open invoice deleted from the source after it was copied, in
/// `Migrating` (behind the cursor) or in `Verified`: its copy is removed
/// before anything is tombstoned.
fn deleted_after_copy(seed: u64, stop: &str, journaled: &[&str]) {
    let lab = Lab::new(N, seed);
    crash_at(&lab.kv, &lab.sql, BATCH, stop);
    let at = cursor(&lab.kv, &lab.sql);
    let victim = *Source::open(&lab.kv)
        .open_invoices()
        .iter()
        .find(|&&n| n > 30 && n <= at)
        .expect("an open invoice behind the cursor");
    let copied_before = status(&lab.kv, &lab.sql)["copied"].as_u64().unwrap();
    let victim_id: i64 = Connection::open(&lab.sql)
        .unwrap()
        .query_row(
            "SELECT invoice_id FROM oneway_invoice_map WHERE kv_num = ?1",
            [victim],
            |r| r.get(0),
        )
        .expect("the victim was copied");
    delete_invoice(&lab.kv, victim);
    let r = reference_of_now(&lab, &lab.kv, "ref");
    assert_eq!(r.invoices, N - 1);
    let changed = kv_dump(&lab.kv);

    let report = migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_eq!(report["invoices"], N - 1, "{stop}: {report}");
    assert_matches_reference(&lab.kv, &lab.sql, &r, stop);
    assert_kv_tombstoned(&changed, &lab.kv, stop);
    let gone = native_dump(&lab.sql).tables["invoices"]
        .iter()
        .all(|row| !row.starts_with(&format!("i:{victim_id}|")));
    assert!(gone, "{stop}: the copy of {victim:08x} is gone");
    assert!(copied_before > 0);
    assert_eq!(status(&lab.kv, &lab.sql)["copied"], N - 1);
    assert_eq!(transitions(&lab.sql), journaled, "{stop}");
}

#[test]
fn invoice_deleted_after_copy_while_migrating_is_removed_before_the_tombstone() {
    deleted_after_copy(53, "batch.after_commit:6", &HAPPY);
}

#[test]
fn invoice_deleted_after_copy_while_verified_is_resynced_before_the_tombstone() {
    deleted_after_copy(
        54,
        "verify.after_commit",
        &[
            "Begin",
            "VerificationPassed",
            "SourceChanged",
            "VerificationPassed",
            "TombstoneWritten",
            "Lock",
        ],
    );
}

// ---------------------------------------------------------------------------
// 4. Operator mistakes after the tombstone
// ---------------------------------------------------------------------------

/// SHA-256 of a file's bytes, or "absent".
fn file_digest(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    match std::fs::read(path) {
        Ok(b) => hex::encode(Sha256::digest(b)),
        Err(_) => "absent".into(),
    }
}

/// Requires `migrate` and both guards to refuse with exit 3 and an error
/// containing `needle`, without writing the KV store.
#[track_caller]
fn assert_refused_everywhere(kv: &Path, sql: &Path, needle: &str, what: &str) {
    let kv_before = kv_dump(kv);
    let out = migrate(kv, sql, BATCH, &[]);
    assert_error(&out, 3, &[needle], &format!("{what}: migrate"));
    for backend in ["kv", "sql"] {
        let out = guard(kv, sql, backend);
        assert_error(&out, 3, &[needle], &format!("{what}: guard {backend}"));
    }
    assert_eq!(kv_dump(kv), kv_before, "{what}: the KV store was written");
}

const RESTORE: &str = "restore the native store from backup";

#[test]
fn native_store_deleted_after_the_tombstone_is_never_recreated() {
    let lab = Lab::new(N, 61);
    let r = lab.reference_of(&lab.base, "ref");
    migrate_ok(&lab.kv, &lab.sql, BATCH);
    let kept = lab.path("kept-native.sqlite");
    copy_store(&lab.sql, &kept);
    remove_store(&lab.sql);

    assert_refused_everywhere(&lab.kv, &lab.sql, RESTORE, "deleted");
    // status and verify do not create it either.
    assert_eq!(status(&lab.kv, &lab.sql)["state"], "Fresh");
    // verify says what migrate and the guard say: restore it (exit 3).
    let out = verify(&lab.kv, &lab.sql);
    assert_error(&out, 3, &[RESTORE], "deleted: verify");
    for p in [
        lab.sql.clone(),
        with_suffix(&lab.sql, "-wal"),
        with_suffix(&lab.sql, "-shm"),
    ] {
        assert!(!p.exists(), "{} was created", p.display());
    }
    assert_kv_tombstoned(&r.kv_before, &lab.kv, "deleted");

    // Restoring the store from the backup is the way out.
    copy_store(&kept, &lab.sql);
    let again = migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_eq!(again["already_completed"], true, "{again}");
    guard(&lab.kv, &lab.sql, "sql").assert_ok("restored");
    assert_matches_reference(&lab.kv, &lab.sql, &r, "restored");
}

#[test]
fn native_store_replaced_after_the_tombstone_is_refused_and_left_as_found() {
    let lab = Lab::new(N, 62);
    let r = lab.reference_of(&lab.base, "ref");
    // Backups of the same pair taken before the tombstone, and a store
    // migrated from another node's KV store.
    let (mkv, migrating) = lab.pair(&lab.base, "backup-migrating");
    crash_at(&mkv, &migrating, BATCH, "batch.after_commit:3");
    let (fkv, fresh) = lab.pair(&lab.base, "backup-fresh");
    crash_at(&fkv, &fresh, BATCH, "begin.before_commit");
    assert!(fresh.exists() && state_row(&fresh).is_none());
    let other_base = lab.path("other-base.sqlite");
    make_fixture(&other_base, 120, 99);
    let (okv, other) = lab.pair(&other_base, "other");
    migrate_ok(&okv, &other, BATCH);

    migrate_ok(&lab.kv, &lab.sql, BATCH);
    let kept = lab.path("kept-native.sqlite");
    copy_store(&lab.sql, &kept);

    let empty = lab.path("empty.sqlite");
    std::fs::write(&empty, b"").expect("empty file");
    let cases: [(&str, &Path, &str); 4] = [
        ("an empty file", &empty, RESTORE),
        ("a backup from before Begin committed", &fresh, RESTORE),
        ("a backup from Migrating", &migrating, RESTORE),
        (
            "a store migrated from another KV store",
            &other,
            "different KV store",
        ),
    ];
    for (what, replacement, needle) in cases {
        remove_store(&lab.sql);
        copy_store(replacement, &lab.sql);
        let bytes = file_digest(&lab.sql);
        let state = state_row(&lab.sql);
        let rows = state.as_ref().map(|_| native_dump(&lab.sql));
        let transitions_before = state.as_ref().map(|_| transitions(&lab.sql));
        let security_before = security_rows(&lab.sql).len();

        assert_refused_everywhere(&lab.kv, &lab.sql, needle, what);
        assert_kv_tombstoned(&r.kv_before, &lab.kv, what);
        // Left as found: no schema added, no state moved, no row copied.
        assert_eq!(state_row(&lab.sql), state, "{what}");
        if state.is_none() {
            assert_eq!(file_digest(&lab.sql), bytes, "{what}: the file was written");
        } else {
            assert_native_eq(&native_dump(&lab.sql), rows.as_ref().unwrap(), what);
            assert_eq!(Some(transitions(&lab.sql)), transitions_before, "{what}");
            // Each refusal was journaled as a security event (an identity
            // mismatch found by `migrate` is a plain error, not an event).
            let got: Vec<String> = security_rows(&lab.sql)[security_before..]
                .iter()
                .map(|e| {
                    let d = &e.details;
                    let what = d
                        .get("backend")
                        .or(d.get("operation"))
                        .unwrap_or(&Value::Null);
                    format!(
                        "{} {} {}",
                        e.event.as_deref().unwrap_or("-"),
                        what.as_str().unwrap_or("-"),
                        d["reason"].as_str().unwrap_or("-")
                    )
                })
                .collect();
            let want: Vec<&str> = if needle == RESTORE {
                vec![
                    "OperationRefused migrate NativeStoreMissing",
                    "BackendRefused kv NativeStoreMissing",
                    "BackendRefused sql NativeStoreMissing",
                ]
            } else {
                vec![
                    "BackendRefused kv SourceMismatch",
                    "BackendRefused sql SourceMismatch",
                ]
            };
            assert_eq!(got, want, "{what}");
        }
    }

    // The real store, restored, still works and still equals the reference.
    remove_store(&lab.sql);
    copy_store(&kept, &lab.sql);
    let again = migrate_ok(&lab.kv, &lab.sql, BATCH);
    assert_eq!(again["already_completed"], true, "{again}");
    guard(&lab.kv, &lab.sql, "kv").assert_code(3, "restored");
    guard(&lab.kv, &lab.sql, "sql").assert_ok("restored");
    assert_matches_reference(&lab.kv, &lab.sql, &r, "restored");
}

#[test]
fn native_store_paired_with_another_kv_store_is_refused_and_nothing_moves() {
    let lab = Lab::new(N, 63);
    let other_base = lab.path("other-base.sqlite");
    make_fixture(&other_base, 200, 64);
    // A's native store, Locked and stopped mid-copy, each pointed at B.
    let (_, locked) = lab.pair(&lab.base, "a-locked");
    migrate_ok(&lab.path("a-locked-kv.sqlite"), &locked, BATCH);
    let (_, migrating) = lab.pair(&lab.base, "a-migrating");
    crash_at(
        &lab.path("a-migrating-kv.sqlite"),
        &migrating,
        BATCH,
        "batch.after_commit:2",
    );
    for (what, sql) in [("Locked", &locked), ("Migrating", &migrating)] {
        let (bkv, _) = lab.pair(&other_base, &format!("b-{what}"));
        let b_before = kv_dump(&bkv);
        let rows = native_dump(sql);
        let state = state_row(sql);
        let transitions_before = transitions(sql);
        let needles = [
            "different KV store",
            "invoice 00000001 has different immutable fields",
        ];
        assert_error(&migrate(&bkv, sql, BATCH, &[]), 3, &needles, what);
        assert_error(&verify(&bkv, sql), 3, &needles, what);
        for backend in ["kv", "sql"] {
            assert_error(&guard(&bkv, sql, backend), 3, &needles, what);
        }
        assert_kv_unchanged(&b_before, &bkv, what);
        assert_eq!(state_row(sql), state, "{what}");
        assert_native_eq(&native_dump(sql), &rows, what);
        assert_eq!(transitions(sql), transitions_before, "{what}");
        let sec: Vec<_> = security_rows(sql)
            .iter()
            .map(|e| e.details["reason"].as_str().unwrap_or("-").to_string())
            .collect();
        assert_eq!(sec, ["SourceMismatch", "SourceMismatch"], "{what}");
    }
}

// ---------------------------------------------------------------------------
// 5. Downgrade attempts in every state, as a snapshot
// ---------------------------------------------------------------------------

/// The value of `field="…"` or `field=…` in the guard's security log line.
fn log_field(stderr: &str, field: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("oneway::security"))
        .unwrap_or("");
    let Some(at) = line.find(&format!(" {field}=")) else {
        return "-".into();
    };
    let rest = &line[at + field.len() + 2..];
    match rest.strip_prefix('"') {
        Some(q) => q[..q.find('"').unwrap_or(q.len())].to_string(),
        None => rest.split_whitespace().next().unwrap_or("-").to_string(),
    }
}

/// `KvTombstoned` → `kv_tombstoned` (the refusal's JSON `reason`).
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// One row per backend: what `oneway guard --backend B --json` answered on
/// the pair, and whether it journaled a security event.
fn guard_rows(case: &str, kv: &Path, sql: &Path, out: &mut String) -> [bool; 2] {
    let mut allowed = [false; 2];
    for (i, backend) in ["kv", "sql"].into_iter().enumerate() {
        let before = security_rows(sql).len();
        // With RUST_LOG the security event is logged too (the default human
        // output prints the refusal once, as the error line).
        let o = run(
            &pair_args("guard", kv, sql, &["--backend", backend, "--json"]),
            &[("RUST_LOG", "warn")],
        );
        let journaled = security_rows(sql).len() - before;
        let j = o.json();
        let (decision, reason, state, tomb) = match o.code {
            Some(0) => {
                assert_eq!(j["allowed"], true, "{case}: {j}");
                assert_eq!(journaled, 0, "{case}: an allowed backend is not an event");
                let state = j["state"].as_str().unwrap_or("none").to_string();
                (
                    "allowed",
                    "-".to_string(),
                    state,
                    j["tombstone_present"].to_string(),
                )
            }
            Some(3) => {
                assert_eq!(j["exit_code"], 3, "{case}: {j}");
                assert_eq!(j["allowed"], false, "{case}: {j}");
                let (reason, state, tomb) = (
                    log_field(&o.stderr, "reason"),
                    log_field(&o.stderr, "state"),
                    log_field(&o.stderr, "tombstone_present"),
                );
                // The refusal's JSON says what the security event logs.
                assert_eq!(j["reason"], snake(&reason), "{case}: {j}");
                assert_eq!(j["state"].as_str().unwrap_or("none"), state, "{case}: {j}");
                assert_eq!(j["tombstone_present"].to_string(), tomb, "{case}: {j}");
                ("refused", reason, state, tomb)
            }
            _ => panic!("{case}: guard {backend}: {o:?}"),
        };
        allowed[i] = o.ok();
        let has_store = state_row(sql).is_some();
        if o.code == Some(3) {
            assert_eq!(journaled, usize::from(has_store), "{case}: {backend}");
        }
        writeln!(
            out,
            "{case:<44} {backend:<4} {:<4} {decision:<8} {reason:<18} {state:<10} {tomb:<5} {}",
            o.code.unwrap(),
            if journaled > 0 { "yes" } else { "no" }
        )
        .unwrap();
        if o.code == Some(3) {
            let msg = j["message"]
                .as_str()
                .unwrap_or_default()
                .replace(&kv.display().to_string(), "[kv]")
                .replace(&sql.display().to_string(), "[sql]");
            writeln!(out, "    {msg}").unwrap();
        }
    }
    allowed
}

#[test]
fn downgrade_attempts_in_every_state_snapshot() {
    let lab = Lab::new(120, 71);
    let other_base = lab.path("other-base.sqlite");
    make_fixture(&other_base, 60, 72);
    let (okv, other) = lab.pair(&other_base, "other");
    migrate_ok(&okv, &other, BATCH);

    // (case, how to build it: a failpoint, "" for a full run, or a special)
    let cases: &[(&str, &str)] = &[
        ("no native store", "none"),
        ("native file, Begin not committed", "begin.before_commit"),
        ("Migrating, mid-copy", "batch.after_commit:2"),
        ("Migrating, copy and indexes done", "indexes.after_commit"),
        ("Verified", "verify.after_commit"),
        (
            "Verified, tombstone written, not recorded",
            "tombstone.after_commit",
        ),
        ("Tombstoned", "tombstoned.after_commit"),
        ("Locked", ""),
        ("mistake: tombstoned, native store deleted", "deleted"),
        ("mistake: tombstoned, native store empty file", "empty"),
        ("mistake: tombstoned, native from Migrating", "old-backup"),
        ("mistake: tombstoned, native of another KV", "foreign"),
        ("mistake: Locked native, another KV store", "other-kv"),
    ];
    let mut table = String::new();
    writeln!(
        table,
        "{:<44} {:<4} {:<4} {:<8} {:<18} {:<10} {:<5} journaled",
        "case", "ask", "exit", "decision", "reason", "state", "tomb"
    )
    .unwrap();
    for (i, (case, how)) in cases.iter().enumerate() {
        let (kv, sql) = lab.pair(&lab.base, &format!("case-{i}"));
        match *how {
            "none" => {}
            "" => {
                migrate_ok(&kv, &sql, BATCH);
            }
            "deleted" | "empty" | "old-backup" | "foreign" => {
                let backup = lab.path(&format!("case-{i}-backup.sqlite"));
                let bkv = lab.path(&format!("case-{i}-backup-kv.sqlite"));
                copy_store(&lab.base, &bkv);
                crash_at(&bkv, &backup, BATCH, "batch.after_commit:2");
                migrate_ok(&kv, &sql, BATCH);
                remove_store(&sql);
                match *how {
                    "empty" => std::fs::write(&sql, b"").expect("empty"),
                    "old-backup" => copy_store(&backup, &sql),
                    "foreign" => copy_store(&other, &sql),
                    _ => {}
                }
            }
            "other-kv" => {
                migrate_ok(&kv, &sql, BATCH);
                copy_store(&other_base, &kv);
            }
            point => {
                crash_at(&kv, &sql, BATCH, point);
            }
        }
        let kv_before = kv_dump(&kv);
        let rows_before = state_row(&sql).map(|_| native_dump(&sql));
        let allowed = guard_rows(case, &kv, &sql, &mut table);
        // Never both; never KV next to a tombstone; SQL only when Locked.
        assert!(!(allowed[0] && allowed[1]), "{case}: both backends allowed");
        let tombstone = kv_before.rows.contains(&tombstone_row());
        if tombstone {
            assert!(!allowed[0], "{case}: KV allowed next to a tombstone");
        }
        if allowed[1] {
            assert_eq!(
                state_row(&sql).map(|s| s.0).as_deref(),
                Some("Locked"),
                "{case}"
            );
        }
        // The guard writes nothing but its journal rows.
        assert_eq!(
            kv_dump(&kv),
            kv_before,
            "{case}: the guard wrote the KV store"
        );
        if let Some(rows) = rows_before {
            assert_native_eq(&native_dump(&sql), &rows, case);
        }
        if *how == "deleted" {
            assert!(!sql.exists(), "{case}: the guard created a native store");
        }
    }
    snapshot!("faults_downgrade_table", table);
}
