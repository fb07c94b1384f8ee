//! lnd's KV store laid over Postgres ("kvdb on SQL", `kvdb/postgres`,
//! `kvdb/sqlbase`).
//!
//! lnd creates one table per prefix in schema `public` with the statement of
//! `sqlbase.newKVSchemaCreationCmd` after its Postgres replacements
//! (`BLOB` → `BYTEA`, `INTEGER PRIMARY KEY` → `BIGSERIAL PRIMARY KEY`):
//! [`create_table_sql`] builds the same text. A bucket is a row whose value
//! is NULL; a top-level bucket has no parent; every other row names its
//! bucket in `parent_id`; a bucket's `sequence` is NULL until set. Keys are
//! iterated in byte order (`ORDER BY key` on `BYTEA` compares bytes, as
//! bbolt's cursor does). lnd never writes NULL for an empty value.
//!
//! Reads stream: a [`BucketCursor`] is a server-side portal fetched a batch
//! at a time, so memory stays bounded by the batch whatever the bucket
//! holds; an [`InvoiceStream`] assembles invoices and their AMP HTLC sets
//! from it in key order, with the SQLite reader's classification of keys.
//! The tombstone is written with lnd's own `Put` statement
//! (`readwrite_bucket.go`), inside the caller's transaction.

use std::collections::VecDeque;

use postgres::{GenericClient, Portal, Row, Transaction};

use super::{sql, PgError, PgResult};
use crate::kv::{
    InvoiceBuckets, RawInvoice, ADD_INDEX_BUCKET, INVOICES_BUCKET, PAYMENT_HASHES_BUCKET,
    SETTLE_INDEX_BUCKET, TOMBSTONE_KEY, TOMBSTONE_VALUE,
};

/// The schema lnd puts its KV tables in.
pub const SCHEMA: &str = "public";

/// Rows fetched per round trip by default.
pub const DEFAULT_BATCH: i32 = 4096;

/// `<prefix>_kv`, when `prefix` is a plain identifier (`[a-z0-9_]+`, the
/// only names spliced into SQL here).
pub fn table_name(prefix: &str) -> PgResult<String> {
    let ok = !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(PgError::BadPrefix {
            prefix: prefix.to_owned(),
        });
    }
    Ok(format!("{prefix}_kv"))
}

/// lnd's statement creating the KV table for `table` in [`SCHEMA`]:
/// `newKVSchemaCreationCmd(table, "public", sqliteCmdReplacements)`.
pub fn create_table_sql(table: &str) -> String {
    let t = format!("{SCHEMA}.{table}");
    let sqlite = format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {t}
(
    key BLOB NOT NULL,
    value BLOB,
    parent_id BIGINT,
    id INTEGER PRIMARY KEY,
    sequence BIGINT,
    CONSTRAINT {table}_parent FOREIGN KEY (parent_id)
        REFERENCES {t} (id)
        ON UPDATE NO ACTION
        ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS {table}_p
    ON {t} (parent_id);
CREATE UNIQUE INDEX IF NOT EXISTS {table}_up
    ON {t}
    (parent_id, key) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS {table}_unp 
    ON {t} (key) WHERE parent_id IS NULL;
"
    );
    sqlite
        .replace("BLOB", "BYTEA")
        .replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY")
}

/// The table of [`create_table_sql`] without its foreign key and indexes,
/// for a bulk load that adds them afterwards ([`complete_table_sql`]):
/// checking a foreign key and keeping three indexes sorted row by row costs
/// far more than building them once. Refuses an existing table.
pub fn create_bare_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE {SCHEMA}.{table}
(
    key BYTEA NOT NULL,
    value BYTEA,
    parent_id BIGINT,
    id BIGSERIAL PRIMARY KEY,
    sequence BIGINT
);"
    )
}

/// Adds to a table made by [`create_bare_table_sql`] lnd's foreign key
/// (same name, same actions) and lnd's three indexes (lnd's own
/// statements): the result is, object for object, what
/// [`create_table_sql`] creates. Fails, naming the index, if two rows share
/// a bucket and key.
pub fn complete_table_sql(table: &str) -> String {
    let t = format!("{SCHEMA}.{table}");
    format!(
        "ALTER TABLE {t} ADD CONSTRAINT {table}_parent FOREIGN KEY (parent_id)
        REFERENCES {t} (id)
        ON UPDATE NO ACTION
        ON DELETE CASCADE;
CREATE INDEX IF NOT EXISTS {table}_p
    ON {t} (parent_id);
CREATE UNIQUE INDEX IF NOT EXISTS {table}_up
    ON {t}
    (parent_id, key) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS {table}_unp
    ON {t} (key) WHERE parent_id IS NULL;
"
    )
}

/// Runs [`create_table_sql`], as lnd does when it opens the backend.
pub fn create_table(client: &mut impl GenericClient, table: &str) -> PgResult<()> {
    client
        .batch_execute(&create_table_sql(table))
        .map_err(sql(format!("creating {table}")))
}

fn parent_clause(parent: Option<i64>) -> &'static str {
    match parent {
        None => "parent_id IS NULL AND $1::bigint IS NULL",
        Some(_) => "parent_id = $1",
    }
}

/// The row id of bucket `key` under `parent` (top level when `None`), as
/// lnd's `NestedReadWriteBucket` finds it: a row with a NULL value.
pub fn bucket(
    client: &mut impl GenericClient,
    table: &str,
    parent: Option<i64>,
    key: &[u8],
) -> PgResult<Option<i64>> {
    let q = format!(
        "SELECT id FROM {table} WHERE {} AND key = $2 AND value IS NULL",
        parent_clause(parent)
    );
    Ok(client
        .query_opt(&q, &[&parent, &key])
        .map_err(sql(format!("looking up a bucket in {table}")))?
        .map(|r| r.get(0)))
}

/// The value under `key` in bucket `parent` (lnd's `Get`): `None` for a
/// missing key or a sub-bucket.
pub fn value(
    client: &mut impl GenericClient,
    table: &str,
    parent: i64,
    key: &[u8],
) -> PgResult<Option<Vec<u8>>> {
    let q = format!("SELECT value FROM {table} WHERE parent_id = $1 AND key = $2");
    Ok(client
        .query_opt(&q, &[&parent, &key])
        .map_err(sql(format!("reading a value in {table}")))?
        .and_then(|r| r.get::<_, Option<Vec<u8>>>(0)))
}

/// The row ids of the invoice buckets, or `None` without an `invoices`
/// bucket.
pub fn invoice_buckets(
    client: &mut impl GenericClient,
    table: &str,
) -> PgResult<Option<InvoiceBuckets>> {
    let Some(invoices) = bucket(client, table, None, INVOICES_BUCKET)? else {
        return Ok(None);
    };
    Ok(Some(InvoiceBuckets {
        invoices,
        payment_hashes: bucket(client, table, Some(invoices), PAYMENT_HASHES_BUCKET)?,
        settle_index: bucket(client, table, Some(invoices), SETTLE_INDEX_BUCKET)?,
        add_index: bucket(client, table, Some(invoices), ADD_INDEX_BUCKET)?,
    }))
}

/// A bucket's sequence (0 when never set), as lnd's `Sequence`.
pub fn sequence(client: &mut impl GenericClient, table: &str, bucket: i64) -> PgResult<u64> {
    let q = format!("SELECT sequence FROM {table} WHERE id = $1 AND sequence IS NOT NULL");
    Ok(client
        .query_opt(&q, &[&bucket])
        .map_err(sql(format!("reading a bucket sequence in {table}")))?
        .map_or(0, |r| r.get::<_, i64>(0) as u64))
}

/// One row of a bucket: its key and its value (`None`: a sub-bucket).
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// The rows of one bucket in key order, from a server-side portal fetched
/// `batch` rows at a time (bounded memory). Lives inside the caller's
/// transaction, which gives it one consistent snapshot (use `REPEATABLE
/// READ` for a snapshot across several cursors).
pub struct BucketCursor<'a, 't> {
    tx: &'a mut Transaction<'t>,
    portal: Portal,
    batch: i32,
    rows: VecDeque<Row>,
    done: bool,
    table: String,
}

impl<'a, 't> BucketCursor<'a, 't> {
    /// Opens the rows of bucket `parent` (top level when `None`) whose key
    /// is at least `from`.
    pub fn open(
        tx: &'a mut Transaction<'t>,
        table: &str,
        parent: Option<i64>,
        from: &[u8],
        batch: i32,
    ) -> PgResult<BucketCursor<'a, 't>> {
        let q = format!(
            "SELECT key, value FROM {table} WHERE {} AND key >= $2 ORDER BY key",
            parent_clause(parent)
        );
        let portal = tx
            .bind(q.as_str(), &[&parent, &from])
            .map_err(sql(format!("opening a cursor on {table}")))?;
        Ok(BucketCursor {
            tx,
            portal,
            batch: batch.max(1),
            rows: VecDeque::new(),
            done: false,
            table: table.to_owned(),
        })
    }

    /// The next row, or `None` past the last.
    pub fn next_entry(&mut self) -> PgResult<Option<Entry>> {
        if self.rows.is_empty() && !self.done {
            let rows = self
                .tx
                .query_portal(&self.portal, self.batch)
                .map_err(sql(format!("reading {}", self.table)))?;
            self.done = rows.len() < self.batch as usize;
            self.rows.extend(rows);
        }
        Ok(self.rows.pop_front().map(|r| (r.get(0), r.get(1))))
    }
}

/// Invoices of the `invoices` bucket in key order, each with its AMP HTLC
/// sets (number ‖ set id), from a [`BucketCursor`].
///
/// Keys are classified as the SQLite reader does: 4 bytes an invoice, 36
/// bytes an AMP HTLC set of the invoice just read, a NULL value a
/// sub-bucket, `invoice-tombstone` the tombstone; anything else is an
/// error, so nothing in the bucket is skipped silently.
pub struct InvoiceStream<'a, 't> {
    cursor: BucketCursor<'a, 't>,
    pending: Option<RawInvoice>,
}

impl<'a, 't> InvoiceStream<'a, 't> {
    /// Streams the invoices numbered above `after` (all when `None`).
    pub fn open(
        tx: &'a mut Transaction<'t>,
        table: &str,
        buckets: &InvoiceBuckets,
        after: Option<u32>,
        batch: i32,
    ) -> PgResult<Option<InvoiceStream<'a, 't>>> {
        // Every key of invoice n sorts below the 4-byte key of n + 1.
        let from = match after {
            Some(n) => match n.checked_add(1) {
                Some(next) => next.to_be_bytes().to_vec(),
                None => return Ok(None),
            },
            None => Vec::new(),
        };
        let cursor = BucketCursor::open(tx, table, Some(buckets.invoices), &from, batch)?;
        Ok(Some(InvoiceStream {
            cursor,
            pending: None,
        }))
    }

    /// The next invoice with its AMP sets, or `None` past the last.
    pub fn next_invoice(&mut self) -> PgResult<Option<RawInvoice>> {
        while let Some((key, value)) = self.cursor.next_entry()? {
            let Some(value) = value else { continue }; // a sub-bucket
            match key.len() {
                4 => {
                    let num = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
                    let next = RawInvoice {
                        num,
                        value,
                        amp_sets: Vec::new(),
                    };
                    if let Some(done) = self.pending.replace(next) {
                        return Ok(Some(done));
                    }
                }
                36 => {
                    let num = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
                    let mut set_id = [0u8; 32];
                    set_id.copy_from_slice(&key[4..]);
                    match self.pending.as_mut() {
                        Some(inv) if inv.num == num => inv.amp_sets.push((set_id, value)),
                        _ => {
                            return Err(PgError::UnexpectedKey {
                                table: self.cursor.table.clone(),
                                key: hex::encode(&key),
                                why: format!(
                                    "is an AMP HTLC set for invoice {num:08x}, which does not exist"
                                ),
                            })
                        }
                    }
                }
                _ if key == TOMBSTONE_KEY => {}
                _ => {
                    return Err(PgError::UnexpectedKey {
                        table: self.cursor.table.clone(),
                        key: hex::encode(&key),
                        why: "is neither an invoice (4 bytes), an AMP HTLC set (36 bytes), a \
                              sub-bucket nor the tombstone"
                            .into(),
                    })
                }
            }
        }
        Ok(self.pending.take())
    }
}

/// Whether the `invoices` bucket carries the tombstone key (any value), as
/// lnd's `GetInvoiceBucketTombstone` asks.
pub fn tombstone_present(client: &mut impl GenericClient, table: &str) -> PgResult<bool> {
    let Some(invoices) = bucket(client, table, None, INVOICES_BUCKET)? else {
        return Ok(false);
    };
    Ok(value(client, table, invoices, TOMBSTONE_KEY)?.is_some())
}

/// What [`write_tombstone`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstone {
    /// The key was written now.
    Written,
    /// The key was there already (its value is left as it was).
    AlreadyPresent,
}

/// Writes `invoice-tombstone` = `1` into the `invoices` bucket with lnd's
/// `Put` statement (`SetInvoiceBucketTombstone`), in the caller's
/// transaction: it is durable when that commits. An empty node without an
/// `invoices` bucket gets one first, a bucket row as lnd creates it (lnd's
/// own call would fail there; the SQLite side does the same).
pub fn write_tombstone(client: &mut impl GenericClient, table: &str) -> PgResult<Tombstone> {
    let invoices = match bucket(client, table, None, INVOICES_BUCKET)? {
        Some(id) => id,
        None => client
            .query_one(
                &format!("INSERT INTO {table} (parent_id, key) VALUES($1, $2) RETURNING id"),
                &[&None::<i64>, &INVOICES_BUCKET],
            )
            .map_err(sql(format!("creating the invoices bucket in {table}")))?
            .get(0),
    };
    if value(client, table, invoices, TOMBSTONE_KEY)?.is_some() {
        return Ok(Tombstone::AlreadyPresent);
    }
    let put = format!(
        "INSERT INTO {table} (key, value, parent_id) VALUES($1, $2, $3) \
         ON CONFLICT (key, parent_id) WHERE parent_id IS NOT NULL \
         DO UPDATE SET value=$2 WHERE {table}.value IS NOT NULL"
    );
    let n = client
        .execute(&put, &[&TOMBSTONE_KEY, &TOMBSTONE_VALUE, &invoices])
        .map_err(sql(format!("writing the tombstone into {table}")))?;
    if n != 1 {
        return Err(PgError::UnexpectedKey {
            table: table.to_owned(),
            key: hex::encode(TOMBSTONE_KEY),
            why: "names a sub-bucket, so the tombstone cannot be written".into(),
        });
    }
    Ok(Tombstone::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert_eq!(table_name("channeldb").unwrap(), "channeldb_kv");
        for bad in ["", "Channeldb", "a;drop", "a b", "a-b"] {
            assert!(table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ddl_is_lnds_after_replacement() {
        let s = create_table_sql("channeldb_kv");
        assert!(s.starts_with("CREATE SCHEMA IF NOT EXISTS public;"));
        assert!(s.contains("key BYTEA NOT NULL,"));
        assert!(s.contains("id BIGSERIAL PRIMARY KEY,"));
        assert!(s.contains("CONSTRAINT channeldb_kv_parent FOREIGN KEY (parent_id)"));
        assert!(s.contains("CREATE UNIQUE INDEX IF NOT EXISTS channeldb_kv_unp"));
        assert!(!s.contains("BLOB"));
    }
}
