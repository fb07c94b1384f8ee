//! The KV store: every row of `channeldb_kv` as (parent key path, key,
//! value, sequence) without row ids ([`KvDump`]), so that "identical to the
//! original except for one added tombstone row" is a set comparison; the
//! tombstone's row; the edits the "source changed" scenarios make; and raw
//! TLV surgery on invoice values for the bad-input tests.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use rusqlite::types::ValueRef;

use super::source::{Source, KV_TABLE};
use super::stores::{open_ro, render};

/// Every row of `channeldb_kv` as `parent-path :: key = value seq`, keys and
/// values with their storage class, without row ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvDump {
    /// The rendered rows.
    pub rows: BTreeSet<String>,
}

/// Renders one KV row the way [`kv_dump`] does.
pub fn kv_row(
    parent_path: &str,
    key: ValueRef<'_>,
    value: ValueRef<'_>,
    sequence: ValueRef<'_>,
) -> String {
    format!(
        "{parent_path} :: {} = {} seq {}",
        render(key),
        render(value),
        render(sequence)
    )
}

/// Dumps every row of `channeldb_kv` (see [`KvDump`]).
pub fn kv_dump(path: &Path) -> KvDump {
    let conn = open_ro(path);
    let mut st = conn
        .prepare(&format!(
            "SELECT id, parent_id, key, value, sequence FROM {KV_TABLE}"
        ))
        .expect("kv rows");
    struct Row {
        parent: Option<i64>,
        key: String,
        line: (String, String, String),
    }
    let mut by_id: HashMap<i64, Row> = HashMap::new();
    let mut q = st.query([]).expect("kv rows");
    while let Some(r) = q.next().expect("kv row") {
        let id: i64 = r.get(0).expect("id");
        by_id.insert(
            id,
            Row {
                parent: r.get(1).expect("parent"),
                key: render(r.get_ref(2).expect("key")),
                line: (
                    render(r.get_ref(2).expect("key")),
                    render(r.get_ref(3).expect("value")),
                    render(r.get_ref(4).expect("sequence")),
                ),
            },
        );
    }
    let mut paths: HashMap<i64, String> = HashMap::new();
    fn path_of(
        id: i64,
        by_id: &HashMap<i64, Row>,
        memo: &mut HashMap<i64, String>,
        depth: usize,
    ) -> String {
        if let Some(p) = memo.get(&id) {
            return p.clone();
        }
        let p = match by_id.get(&id) {
            None => format!("<missing row {id}>"),
            Some(r) if depth > 64 => format!("<cycle at {}>", r.key),
            Some(r) => match r.parent {
                None => format!("/{}", r.key),
                Some(parent) => format!("{}/{}", path_of(parent, by_id, memo, depth + 1), r.key),
            },
        };
        memo.insert(id, p.clone());
        p
    }
    let mut rows = BTreeSet::new();
    for r in by_id.values() {
        let parent = match r.parent {
            None => String::new(),
            Some(p) => path_of(p, &by_id, &mut paths, 0),
        };
        let (k, v, s) = &r.line;
        let line = format!("{parent} :: {k} = {v} seq {s}");
        assert!(rows.insert(line.clone()), "duplicate KV row {line}");
    }
    KvDump { rows }
}

/// The row the tombstone adds: `invoice-tombstone` = `1`, both BLOBs, in the
/// top-level `invoices` bucket.
pub fn tombstone_row() -> String {
    format!(
        "/x:{} :: x:{} = x:{} seq NULL",
        hex::encode(b"invoices"),
        hex::encode(b"invoice-tombstone"),
        hex::encode(b"1")
    )
}

/// The row of the top-level `invoices` bucket itself.
pub fn invoices_bucket_row() -> String {
    format!(" :: x:{} = NULL seq NULL", hex::encode(b"invoices"))
}

/// Asserts `now` is `original` plus exactly the rows `added`.
#[track_caller]
pub fn assert_kv_added(original: &KvDump, now: &KvDump, added: &[String], what: &str) {
    let gone: Vec<_> = original.rows.difference(&now.rows).take(5).collect();
    let new: BTreeSet<String> = now.rows.difference(&original.rows).cloned().collect();
    let want: BTreeSet<String> = added.iter().cloned().collect();
    assert!(gone.is_empty(), "{what}: KV rows lost or changed: {gone:?}");
    assert_eq!(new, want, "{what}: KV rows added");
}

/// Asserts the KV store is the original plus exactly the tombstone row.
#[track_caller]
pub fn assert_kv_tombstoned(original: &KvDump, kv: &Path, what: &str) {
    assert_kv_added(original, &kv_dump(kv), &[tombstone_row()], what);
}

/// Asserts the KV store is exactly the original (in particular: no tombstone).
#[track_caller]
pub fn assert_kv_unchanged(original: &KvDump, kv: &Path, what: &str) {
    assert_kv_added(original, &kv_dump(kv), &[], what);
}

/// Deletes the tombstone from the KV store, as a restored backup or a lost
/// write would leave it.
pub fn remove_tombstone(kv: &Path) {
    let c = rusqlite::Connection::open(kv).expect("open the KV store");
    let n = c
        .execute(
            "DELETE FROM channeldb_kv WHERE key = CAST('invoice-tombstone' AS BLOB)
             AND parent_id = (SELECT id FROM channeldb_kv WHERE parent_id IS NULL
                              AND key = CAST('invoices' AS BLOB))",
            [],
        )
        .expect("delete the tombstone");
    assert_eq!(n, 1, "the store carried a tombstone");
}

// ---------------------------------------------------------------------------
// Editing a KV store (`Source` is in `source.rs`)
// ---------------------------------------------------------------------------

/// The change every "source changed" scenario applies: `added` new invoices
/// and the settlement of the `settle_nth` settleable open invoice whose
/// number is at most `settle_below`. Returns (the settled number, the added numbers).
pub fn change_source(kv: &Path, added: u32, settle_below: u32, tag: &str) -> (u32, Vec<u32>) {
    let mut s = Source::open(kv);
    let target = *s
        .open_invoices()
        .iter()
        .rfind(|&&n| n <= settle_below)
        .expect("an open invoice early in the store");
    s.settle(target);
    let new = s.add_invoices(added, tag);
    (target, new)
}

// ---------------------------------------------------------------------------
// Raw TLV surgery on invoice values
// ---------------------------------------------------------------------------

/// One record of an invoice body: its type, where its length starts, where
/// its value starts, and the value's length.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Record type.
    pub ty: u64,
    /// Offset of the BigSize length in the whole value.
    pub len_at: usize,
    /// Offset of the record value in the whole value.
    pub at: usize,
    /// Length of the record value.
    pub len: usize,
}

/// The BigSize integer at `at` and its width, read with the library's codec:
/// these offsets only aim the surgery, they check nothing themselves.
fn bigsize(b: &[u8], at: usize) -> (u64, usize) {
    oneway::codec::bigsize::read(&b[at..])
        .unwrap_or_else(|e| panic!("no BigSize at offset {at}: {e}"))
}

/// The records of the body stream of an invoice value.
pub fn body_records(value: &[u8]) -> Vec<Rec> {
    let body_len = u64::from_be_bytes(value[..8].try_into().unwrap()) as usize;
    let end = 8 + body_len;
    let mut at = 8;
    let mut out = Vec::new();
    while at < end {
        let (ty, n) = bigsize(value, at);
        let len_at = at + n;
        let (len, m) = bigsize(value, len_at);
        let v = len_at + m;
        out.push(Rec {
            ty,
            len_at,
            at: v,
            len: len as usize,
        });
        at = v + len as usize;
    }
    out
}

/// The body record of type `ty`.
pub fn body_record(value: &[u8], ty: u64) -> Rec {
    *body_records(value)
        .iter()
        .find(|r| r.ty == ty)
        .unwrap_or_else(|| panic!("no body record of type {ty}"))
}
