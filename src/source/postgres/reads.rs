//! The reads of lnd's KV table on Postgres, over any session or
//! transaction (`GenericClient`): the same answers as the SQLite reader
//! (`crate::kv`) gives for the same rows, through the same backend-neutral
//! parts (the digest walk [`crate::kv::walk_tree`], the key
//! classification).

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{GenericClient, Statement};

use crate::error::{Error, PgContext, Result, Role};
use crate::kv::{
    invoice_start_key, walk_tree, InvoiceBuckets, RawInvoice, SourceDigest, TreeRow, WalkRow,
    INVOICES_BUCKET, TOMBSTONE_KEY,
};
use crate::postgres::kv as pgkv;

/// Rows fetched per round trip at most when reading invoices (a batch of
/// invoices is also bounded by its bytes, `reader::MAX_BATCH_BYTES`, so a
/// larger page would mostly fetch rows read again by the next batch).
const PAGE_ROWS: i64 = 2048;

/// The statement reading a page of a bucket in key order, from a key on.
pub(crate) fn page_sql(table: &str) -> String {
    format!(
        "SELECT key, value FROM {table} WHERE parent_id = $1 AND key >= $2 ORDER BY key LIMIT $3"
    )
}

/// Prepares [`page_sql`].
pub(crate) fn prepare_page(c: &mut impl GenericClient, table: &str) -> Result<Statement> {
    c.prepare(&page_sql(table))
        .pg(Role::Kv, &format!("preparing the invoice reads of {table}"))
}

/// Up to `max` invoices numbered above `after`, in key order, each with its
/// AMP HTLC sets, stopping before the next invoice once the values read
/// reach `max_bytes` (at least one invoice). Keys are classified exactly as
/// the SQLite reader does (`KvSource::read_invoices_bounded`); `shown`
/// names the store in errors. Pages of at most [`PAGE_ROWS`] rows, each
/// starting just past the last key of the one before (keyset pagination:
/// the smallest key above `k` is `k ‖ 0x00`).
pub(crate) fn read_invoices(
    c: &mut impl GenericClient,
    page: &Statement,
    buckets: &InvoiceBuckets,
    after: Option<u32>,
    max: usize,
    max_bytes: usize,
    shown: &Path,
) -> Result<Vec<RawInvoice>> {
    let mut out: Vec<RawInvoice> = Vec::with_capacity(max.min(4096));
    let Some(mut from) = invoice_start_key(after) else {
        return Ok(out);
    };
    let limit = (max as i64).saturating_add(1).clamp(2, PAGE_ROWS);
    let mut bytes = 0usize;
    loop {
        let rows = c
            .query(page, &[&buckets.invoices, &from, &limit])
            .pg(Role::Kv, "reading the invoices bucket")?;
        for row in &rows {
            let key: &[u8] = row.get(0);
            let value: Option<&[u8]> = row.get(1);
            match (key.len(), value) {
                (4, Some(v)) => {
                    if out.len() == max || (!out.is_empty() && bytes >= max_bytes) {
                        return Ok(out);
                    }
                    out.push(RawInvoice {
                        num: u32::from_be_bytes([key[0], key[1], key[2], key[3]]),
                        value: v.to_vec(),
                        amp_sets: Vec::new(),
                    });
                    bytes += v.len();
                }
                (36, Some(v)) => bytes += push_amp_set(&mut out, key, v, shown)?,
                (_, None) => {}
                _ if key == TOMBSTONE_KEY => {}
                _ => return Err(unknown_invoice_key(key, shown)),
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == limit => {
                from = last.get::<_, &[u8]>(0).to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// Appends the AMP HTLC set under the 36-byte `key` to the last invoice of
/// `out`, which must be that invoice; returns the bytes of its value.
fn push_amp_set(out: &mut [RawInvoice], key: &[u8], value: &[u8], shown: &Path) -> Result<usize> {
    let num = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let mut set_id = [0u8; 32];
    set_id.copy_from_slice(&key[4..]);
    match out.last_mut() {
        Some(inv) if inv.num == num => inv.amp_sets.push((set_id, value.to_vec())),
        _ => {
            return Err(Error::UnexpectedKey {
                path: shown.to_path_buf(),
                key: hex::encode(key),
                why: format!("an AMP HTLC set for invoice {num:08x}, which does not exist"),
            })
        }
    }
    Ok(value.len())
}

/// The error for a key of the `invoices` bucket that has none of the shapes
/// lnd writes there (the SQLite reader's words).
#[cold]
fn unknown_invoice_key(key: &[u8], shown: &Path) -> Error {
    Error::UnexpectedKey {
        path: shown.to_path_buf(),
        key: hex::encode(key),
        why: "it is neither an invoice (4 bytes), an AMP HTLC set (36 bytes), a \
              sub-bucket nor the tombstone"
            .into(),
    }
}

/// The invoice buckets' ids (`None`: no `invoices` bucket).
pub(crate) fn invoice_buckets(
    c: &mut impl GenericClient,
    table: &str,
) -> Result<Option<InvoiceBuckets>> {
    pgkv::invoice_buckets(c, table).pg(Role::Kv, "")
}

/// The invoice numbers present with `lo <= num <= hi`.
pub(crate) fn numbers_between(
    c: &mut impl GenericClient,
    table: &str,
    buckets: &InvoiceBuckets,
    lo: u32,
    hi: u32,
) -> Result<HashSet<u32>> {
    let q = format!(
        "SELECT key FROM {table} WHERE parent_id = $1 AND key >= $2 AND key <= $3 \
         AND length(key) = 4 AND value IS NOT NULL"
    );
    let rows = c
        .query(
            &q,
            &[
                &buckets.invoices,
                &&lo.to_be_bytes()[..],
                &&hi.to_be_bytes()[..],
            ],
        )
        .pg(Role::Kv, "listing invoice keys")?;
    Ok(rows
        .iter()
        .map(|r| {
            let k: &[u8] = r.get(0);
            u32::from_be_bytes([k[0], k[1], k[2], k[3]])
        })
        .collect())
}

/// How many invoices (4-byte keys with a value) the `invoices` bucket holds.
pub(crate) fn count_invoices(
    c: &mut impl GenericClient,
    table: &str,
    buckets: &InvoiceBuckets,
) -> Result<u64> {
    let q = format!(
        "SELECT count(*) FROM {table} WHERE parent_id = $1 AND length(key) = 4 AND value IS NOT NULL"
    );
    let n: i64 = c
        .query_one(&q, &[&buckets.invoices])
        .pg(Role::Kv, "counting invoices")?
        .get(0);
    Ok(n as u64)
}

/// The bytes of the values in the `invoices` bucket (invoices and AMP sets).
pub(crate) fn invoice_bytes(
    c: &mut impl GenericClient,
    table: &str,
    buckets: &InvoiceBuckets,
) -> Result<u64> {
    let q =
        format!("SELECT coalesce(sum(length(value)), 0)::bigint FROM {table} WHERE parent_id = $1");
    let n: i64 = c
        .query_one(&q, &[&buckets.invoices])
        .pg(Role::Kv, "measuring the invoices")?
        .get(0);
    Ok(n as u64)
}

/// The source digest walk ([`walk_tree`]) over the table: each bucket's
/// rows streamed in key order (`ORDER BY key` on `BYTEA` is byte order, as
/// SQLite's on BLOBs), every row shown to `visit`. Call it inside one
/// snapshot (a `REPEATABLE READ` transaction, or a transaction holding the
/// table's lock): it reads one statement per bucket.
pub(crate) fn walk(
    c: &mut impl GenericClient,
    table: &str,
    visit: impl FnMut(&TreeRow<'_>),
) -> Result<SourceDigest> {
    let action = "digesting the invoice buckets";
    let root = pgkv::bucket(c, table, None, INVOICES_BUCKET).pg(Role::Kv, action)?;
    let stmt = c
        .prepare(&format!(
            "SELECT key, value, id, sequence FROM {table} WHERE parent_id = $1 ORDER BY key"
        ))
        .pg(Role::Kv, action)?;
    let rows_of = |bucket: i64, each: &mut dyn FnMut(WalkRow<'_>)| -> Result<()> {
        let mut rows = c
            .query_raw(&stmt, std::iter::once(bucket))
            .pg(Role::Kv, action)?;
        while let Some(row) = rows.next().pg(Role::Kv, action)? {
            let value: Option<&[u8]> = row.get(1);
            each(WalkRow {
                key: row.get(0),
                key_is_blob: true,
                value,
                id: row.get(2),
                sequence: row.get(3),
            });
        }
        Ok(())
    };
    walk_tree(root, rows_of, visit)
}

/// A session seen through the backend-neutral [`crate::identity::KvReads`]:
/// the identity's reads, for [`crate::identity::current`] and
/// [`crate::identity::check`].
pub(crate) struct Reads<'a, C: GenericClient> {
    /// The session (a `RefCell`: the trait reads through `&self`).
    pub(crate) client: RefCell<&'a mut C>,
    /// The KV table.
    pub(crate) table: &'a str,
    /// The store's name in messages.
    pub(crate) shown: &'a Path,
}

impl<C: GenericClient> crate::identity::KvReads for Reads<'_, C> {
    fn bucket(&self, parent: Option<i64>, name: &[u8]) -> Result<Option<i64>> {
        pgkv::bucket(*self.client.borrow_mut(), self.table, parent, name).pg(Role::Kv, "")
    }

    fn value(&self, bucket: i64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        pgkv::value(*self.client.borrow_mut(), self.table, bucket, key).pg(Role::Kv, "")
    }

    fn read_invoices(
        &self,
        buckets: &InvoiceBuckets,
        after: Option<u32>,
        max: usize,
    ) -> Result<Vec<RawInvoice>> {
        let mut c = self.client.borrow_mut();
        let page = prepare_page(*c, self.table)?;
        read_invoices(*c, &page, buckets, after, max, usize::MAX, self.shown)
    }
}
