//! Reading lnd's KV store laid over SQLite (`<prefix>_kv`), and the one write
//! oneway ever makes to it: the tombstone.
//!
//! The reader opens the file with `SQLITE_OPEN_READ_ONLY`, so no code path
//! through [`KvSource`] can modify the source. The tombstone is written by
//! [`KvSource::write_tombstone_if_unchanged`] through a second, short-lived
//! read-write connection inside one `BEGIN IMMEDIATE` transaction that first
//! re-computes the source digest: if the invoices changed since they were
//! verified, nothing is written.
//!
//! Keys and values are bound as BLOBs throughout: lnd stores Go byte slices,
//! and SQLite never finds a TEXT value equal to a BLOB.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result, Role};
use crate::workload::{Invoices, Workload};

/// Name of the top-level invoices bucket (the invoice workload's).
pub const INVOICES_BUCKET: &[u8] = Invoices::BUCKET;
/// Sub-bucket: payment hash → invoice number.
pub const PAYMENT_HASHES_BUCKET: &[u8] = b"paymenthashes";
/// Sub-bucket: add index → invoice number.
pub const ADD_INDEX_BUCKET: &[u8] = b"invoice-add-index";
/// Sub-bucket: settle index → invoice number.
pub const SETTLE_INDEX_BUCKET: &[u8] = b"invoice-settle-index";
/// The tombstone key in the invoices bucket (the invoice workload's).
pub const TOMBSTONE_KEY: &[u8] = Invoices::TOMBSTONE_KEY;
/// The tombstone value: one byte, ASCII '1'.
pub const TOMBSTONE_VALUE: &[u8] = Invoices::TOMBSTONE_VALUE;
/// The key in `paymenthashes` holding the next invoice number.
pub const NEXT_INVOICE_KEY: &[u8] = b"nik";
/// SQLite's extended result code for "read-only, and a hot journal needs
/// rolling back".
const SQLITE_READONLY_ROLLBACK: std::os::raw::c_int = 776;
/// lnd's prefix for the channel database.
pub const DEFAULT_PREFIX: &str = "channeldb";

/// Validates a table prefix and returns the KV table name `<prefix>_kv`.
pub fn kv_table_name(prefix: &str) -> Result<String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !prefix.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(format!("{prefix}_kv"))
    } else {
        Err(Error::BadPrefix {
            prefix: prefix.to_string(),
        })
    }
}

/// Checks that `path` exists and starts with the SQLite header, without
/// creating anything.
pub fn check_sqlite_file(role: Role, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Missing {
                role,
                path: path.to_path_buf(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                action: format!("reading the metadata of the {role}"),
                source: e,
            }
        }
    })?;
    if meta.is_dir() {
        return Err(Error::NotSqlite {
            role,
            path: path.to_path_buf(),
            why: "it is a directory".into(),
        });
    }
    let mut header = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        action: format!("opening the {role}"),
        source: e,
    })?;
    let n = f.read(&mut header).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        action: format!("reading the {role}"),
        source: e,
    })?;
    if n < 16 || &header != b"SQLite format 3\0" {
        return Err(Error::NotSqlite {
            role,
            path: path.to_path_buf(),
            why: if n == 0 {
                "the file is empty".into()
            } else {
                "the file does not start with the SQLite header".into()
            },
        });
    }
    Ok(())
}

/// The row ids of the invoice buckets, found once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvoiceBuckets {
    /// The top-level `invoices` bucket.
    pub invoices: i64,
    /// `invoices/paymenthashes`, if present.
    pub payment_hashes: Option<i64>,
    /// `invoices/invoice-settle-index`, if present.
    pub settle_index: Option<i64>,
    /// `invoices/invoice-add-index`, if present.
    pub add_index: Option<i64>,
}

/// One invoice as stored: its number, its value and, for AMP invoices, the
/// HTLC sets stored under number ‖ set id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawInvoice {
    /// The invoice number (the 4-byte big-endian key).
    pub num: u32,
    /// The serialized invoice.
    pub value: Vec<u8>,
    /// (set id, serialized HTLC set) in key order.
    pub amp_sets: Vec<([u8; 32], Vec<u8>)>,
}

impl RawInvoice {
    /// The invoice key as 8 hex digits, for messages.
    pub fn key_hex(&self) -> String {
        format!("{:08x}", self.num)
    }
}

/// A content digest of the invoice buckets: every key, value and sequence
/// under `invoices` (recursively), except the tombstone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceDigest {
    /// Number of invoices (4-byte keys) in the bucket.
    pub invoices: u64,
    /// SHA-256 over the canonical walk, hex.
    pub sha256: String,
}

/// A read-only view of lnd's KV store.
pub struct KvSource {
    conn: Connection,
    path: PathBuf,
    table: String,
    /// Device and inode of the file at `path` when `conn` was opened.
    file: Option<FileId>,
}

/// A file's device and inode: which file a path named at some moment.
pub type FileId = (u64, u64);

/// The device and inode of the file `path` names now (`None` if it cannot
/// be read).
pub fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl KvSource {
    /// Opens the KV store read-only and checks that `<prefix>_kv` exists with
    /// lnd's columns. Creates nothing: a missing path or a file that is not
    /// SQLite is an error naming it.
    pub fn open(path: &Path, prefix: &str) -> Result<KvSource> {
        let table = kv_table_name(prefix)?;
        check_sqlite_file(Role::Kv, path)?;
        let before = file_id(path);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ctx(Role::Kv, path, "opening read-only")?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).ctx(
            Role::Kv,
            path,
            "setting the busy timeout",
        )?;
        // The file this connection reads is the one the path named before
        // and after the open (a swap in between shows as a difference).
        let after = file_id(path);
        let src = KvSource {
            conn,
            path: path.to_path_buf(),
            table,
            file: before.filter(|b| Some(*b) == after),
        };
        match src.check_table() {
            Err(Error::Sqlite {
                source: rusqlite::Error::SqliteFailure(f, _),
                ..
            }) if f.extended_code == SQLITE_READONLY_ROLLBACK => {
                // A hot rollback journal: a writer (lnd, or our own tombstone
                // transaction) died mid-commit. A read-only connection cannot
                // roll it back; one read-write open does, restoring the last
                // committed state exactly as lnd's next start would.
                tracing::warn!(kv = %path.display(), "rolling back a hot journal left by an interrupted writer");
                drop(src);
                let rw = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
                    .map_err(|e| {
                        Error::sqlite(Role::Kv, path, "opening to roll back a hot journal", e)
                    })?;
                rw.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ctx(Role::Kv, path, "rolling back a hot journal")?;
                drop(rw);
                KvSource::open(path, prefix)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(src),
        }
    }

    /// The KV store's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The KV table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn check_table(&self) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .ctx(Role::Kv, &self.path, "reading the schema")?;
        let cols: Vec<String> = stmt
            .query_map([&self.table], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .ctx(Role::Kv, &self.path, "reading the schema")?;
        if cols.is_empty() {
            let mut stmt = self
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .ctx(Role::Kv, &self.path, "listing tables")?;
            let tables: Vec<String> = stmt
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .ctx(Role::Kv, &self.path, "listing tables")?;
            let found = if tables.is_empty() {
                "the database has no tables".to_string()
            } else {
                format!(
                    "tables present: {}; is the table prefix right?",
                    tables.join(", ")
                )
            };
            return Err(Error::NoKvTable {
                path: self.path.clone(),
                table: self.table.clone(),
                why: found,
            });
        }
        for needed in ["key", "value", "parent_id", "id", "sequence"] {
            if !cols.iter().any(|c| c == needed) {
                return Err(Error::NoKvTable {
                    path: self.path.clone(),
                    table: self.table.clone(),
                    why: format!(
                        "column {needed:?} is missing (columns: {})",
                        cols.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Starts a read transaction: everything read until [`KvSource::end_read`]
    /// sees one consistent snapshot of the store.
    pub fn begin_read(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN")
            .ctx(Role::Kv, &self.path, "starting a read transaction")
    }

    /// Ends the read transaction started by [`KvSource::begin_read`].
    pub fn end_read(&self) -> Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .ctx(Role::Kv, &self.path, "ending a read transaction")
    }

    /// SQLite's `data_version` of this connection: unchanged between two
    /// reads exactly when no other connection committed in between. Inside
    /// a [`KvSource::begin_read`] transaction it belongs to that snapshot.
    pub fn data_version(&self) -> Result<i64> {
        read_data_version(&self.conn).ctx(Role::Kv, &self.path, "reading data_version")
    }

    /// Keeps this connection as a [`Witness`] of the state it read when
    /// [`KvSource::data_version`] returned `data_version`.
    pub fn into_witness(self, data_version: i64) -> Witness {
        Witness::new(self.conn, &self.path, data_version, self.file)
    }

    /// The id of bucket `name` under `parent` (top level when `None`).
    pub fn bucket(&self, parent: Option<i64>, name: &[u8]) -> Result<Option<i64>> {
        bucket_id(&self.conn, &self.table, parent, name).ctx(
            Role::Kv,
            &self.path,
            "finding a bucket",
        )
    }

    /// The value of `key` in bucket `bucket`; `None` when the key is absent
    /// or is a sub-bucket.
    pub fn value(&self, bucket: i64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT value FROM {} WHERE parent_id = ?1 AND key = ?2",
                    self.table
                ),
                params![bucket, key],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()
            .map(Option::flatten)
            .ctx(Role::Kv, &self.path, "reading a value")
    }

    /// Finds the invoice buckets; `None` when the store has no `invoices`
    /// bucket at all (a node that never created an invoice).
    pub fn invoice_buckets(&self) -> Result<Option<InvoiceBuckets>> {
        let Some(invoices) = self.bucket(None, INVOICES_BUCKET)? else {
            return Ok(None);
        };
        Ok(Some(InvoiceBuckets {
            invoices,
            payment_hashes: self.bucket(Some(invoices), PAYMENT_HASHES_BUCKET)?,
            settle_index: self.bucket(Some(invoices), SETTLE_INDEX_BUCKET)?,
            add_index: self.bucket(Some(invoices), ADD_INDEX_BUCKET)?,
        }))
    }

    /// Refuses keys in the invoices bucket that are not BLOBs. lnd binds Go
    /// byte slices, so such a key was written by something else; it would be
    /// invisible to lnd and sorts apart from the BLOB keys oneway walks.
    pub fn check_key_types(&self, buckets: &InvoiceBuckets) -> Result<()> {
        let bad: Option<String> = self
            .conn
            .query_row(
                &format!(
                    "SELECT quote(key) || ' (' || typeof(key) || ')' FROM {} WHERE parent_id = ?1 AND typeof(key) != 'blob' LIMIT 1",
                    self.table
                ),
                [buckets.invoices],
                |r| r.get(0),
            )
            .optional()
            .ctx(Role::Kv, &self.path, "checking key types")?;
        match bad {
            Some(key) => Err(Error::UnexpectedKey {
                path: self.path.clone(),
                key,
                why: "keys are BLOBs in lnd's store; a key of another type is invisible to lnd"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    /// True when the invoices bucket carries the tombstone key (any value).
    pub fn tombstone_present(&self) -> Result<bool> {
        tombstone_present(&self.conn, &self.table).ctx(
            Role::Kv,
            &self.path,
            "looking for the tombstone",
        )
    }

    /// The `sequence` of a bucket (0 when unset).
    pub fn sequence(&self, bucket: i64) -> Result<u64> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                &format!("SELECT sequence FROM {} WHERE id = ?1", self.table),
                [bucket],
                |r| r.get(0),
            )
            .optional()
            .ctx(Role::Kv, &self.path, "reading a bucket sequence")?
            .flatten();
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Reads up to `max` invoices with number greater than `after` (from the
    /// start when `None`), in key order, each with its AMP HTLC sets.
    ///
    /// Keys in the invoices bucket are classified by shape: 4 bytes is an
    /// invoice, 36 bytes an AMP HTLC set of invoice (first 4 bytes), a NULL
    /// value a sub-bucket, and `invoice-tombstone` the tombstone. Anything
    /// else is an error: nothing in the bucket is silently ignored.
    pub fn read_invoices(
        &self,
        buckets: &InvoiceBuckets,
        after: Option<u32>,
        max: usize,
    ) -> Result<Vec<RawInvoice>> {
        self.read_invoices_bounded(buckets, after, max, usize::MAX)
    }

    /// [`KvSource::read_invoices`], also stopping before the next invoice
    /// once the values read (invoices and their AMP sets) reach `max_bytes`:
    /// at least one invoice, and at most one invoice's bytes past the bound.
    pub fn read_invoices_bounded(
        &self,
        buckets: &InvoiceBuckets,
        after: Option<u32>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<RawInvoice>> {
        let mut out: Vec<RawInvoice> = Vec::with_capacity(max.min(4096));
        let mut bytes = 0usize;
        let Some(start_key) = invoice_start_key(after) else {
            return Ok(out);
        };
        let sql = format!(
            "SELECT key, value FROM {} WHERE parent_id = ?1 AND key >= ?2 ORDER BY key",
            self.table
        );
        let mut stmt =
            self.conn
                .prepare_cached(&sql)
                .ctx(Role::Kv, &self.path, "reading invoices")?;
        let mut rows = stmt.query(params![buckets.invoices, start_key]).ctx(
            Role::Kv,
            &self.path,
            "reading invoices",
        )?;
        while let Some(row) = rows.next().ctx(Role::Kv, &self.path, "reading invoices")? {
            let (key, value) = self.invoice_bucket_row(row)?;
            let is_bucket = matches!(value, rusqlite::types::ValueRef::Null);
            match key.len() {
                4 if !is_bucket => {
                    if out.len() == max || (!out.is_empty() && bytes >= max_bytes) {
                        break;
                    }
                    bytes += self.push_invoice(&mut out, key, value)?;
                }
                36 if !is_bucket => bytes += self.push_amp_set(&mut out, key, value)?,
                _ if is_bucket => {}
                _ if key == TOMBSTONE_KEY => {}
                _ => return Err(self.unknown_invoice_key(key)),
            }
        }
        Ok(out)
    }

    /// The key (a BLOB, as lnd writes keys) and value of one row of the
    /// `invoices` bucket.
    #[inline]
    fn invoice_bucket_row<'r>(
        &self,
        row: &'r rusqlite::Row<'_>,
    ) -> Result<(&'r [u8], rusqlite::types::ValueRef<'r>)> {
        let key = row
            .get_ref(0)
            .ctx(Role::Kv, &self.path, "reading invoices")?
            .as_blob()
            .map_err(|_| self.unexpected_text_key(row))?;
        let value = row
            .get_ref(1)
            .ctx(Role::Kv, &self.path, "reading invoices")?;
        Ok((key, value))
    }

    /// Appends the invoice under the 4-byte `key` to `out`; returns the
    /// bytes of its value.
    #[inline]
    fn push_invoice(
        &self,
        out: &mut Vec<RawInvoice>,
        key: &[u8],
        value: rusqlite::types::ValueRef<'_>,
    ) -> Result<usize> {
        let num = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        let value = self.blob_value(key, value)?.to_vec();
        let len = value.len();
        out.push(RawInvoice {
            num,
            value,
            amp_sets: Vec::new(),
        });
        Ok(len)
    }

    /// Appends the AMP HTLC set under the 36-byte `key` (invoice number ‖
    /// set id) to the last invoice of `out`, which must be that invoice;
    /// returns the bytes of its value.
    #[inline]
    fn push_amp_set(
        &self,
        out: &mut [RawInvoice],
        key: &[u8],
        value: rusqlite::types::ValueRef<'_>,
    ) -> Result<usize> {
        let num = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        let mut set_id = [0u8; 32];
        set_id.copy_from_slice(&key[4..]);
        let value = self.blob_value(key, value)?.to_vec();
        let len = value.len();
        match out.last_mut() {
            Some(inv) if inv.num == num => inv.amp_sets.push((set_id, value)),
            _ => {
                return Err(Error::UnexpectedKey {
                    path: self.path.clone(),
                    key: hex::encode(key),
                    why: format!("an AMP HTLC set for invoice {num:08x}, which does not exist"),
                })
            }
        }
        Ok(len)
    }

    /// The error for a key of the `invoices` bucket that has none of the
    /// shapes lnd writes there.
    fn unknown_invoice_key(&self, key: &[u8]) -> Error {
        Error::UnexpectedKey {
            path: self.path.clone(),
            key: hex::encode(key),
            why: "it is neither an invoice (4 bytes), an AMP HTLC set (36 bytes), a \
                  sub-bucket nor the tombstone"
                .into(),
        }
    }

    fn blob_value<'a>(&self, key: &[u8], value: rusqlite::types::ValueRef<'a>) -> Result<&'a [u8]> {
        value.as_blob().map_err(|_| Error::UnexpectedKey {
            path: self.path.clone(),
            key: hex::encode(key),
            why: format!(
                "its value is stored as {:?}, not as a BLOB as lnd writes it",
                value.data_type()
            ),
        })
    }

    fn unexpected_text_key(&self, row: &rusqlite::Row<'_>) -> Error {
        let shown = row
            .get_ref(0)
            .ok()
            .and_then(|v| v.as_str().ok().map(str::to_owned))
            .unwrap_or_default();
        Error::UnexpectedKey {
            path: self.path.clone(),
            key: format!("{shown:?} (TEXT)"),
            why: "keys are BLOBs in lnd's store; a TEXT key is invisible to lnd".into(),
        }
    }

    /// Streams every (payment hash, invoice number) pair of `paymenthashes`
    /// (skipping `nik`) to `f`, in key order.
    pub fn for_each_payment_hash(
        &self,
        buckets: &InvoiceBuckets,
        mut f: impl FnMut([u8; 32], u32) -> Result<()>,
    ) -> Result<()> {
        let Some(bucket) = buckets.payment_hashes else {
            return Ok(());
        };
        let sql = format!(
            "SELECT key, value FROM {} WHERE parent_id = ?1 ORDER BY key",
            self.table
        );
        let mut stmt =
            self.conn
                .prepare(&sql)
                .ctx(Role::Kv, &self.path, "reading the payment-hash index")?;
        let mut rows =
            stmt.query([bucket])
                .ctx(Role::Kv, &self.path, "reading the payment-hash index")?;
        while let Some(row) =
            rows.next()
                .ctx(Role::Kv, &self.path, "reading the payment-hash index")?
        {
            let key: Vec<u8> =
                row.get(0)
                    .ctx(Role::Kv, &self.path, "reading the payment-hash index")?;
            let value: Option<Vec<u8>> =
                row.get(1)
                    .ctx(Role::Kv, &self.path, "reading the payment-hash index")?;
            if key == NEXT_INVOICE_KEY {
                continue;
            }
            let (Ok(hash), Some(Ok(num))) = (
                <[u8; 32]>::try_from(key.as_slice()),
                value.as_deref().map(<[u8; 4]>::try_from),
            ) else {
                return Err(Error::UnexpectedKey {
                    path: self.path.clone(),
                    key: hex::encode(&key),
                    why: "an entry of invoices/paymenthashes must map a 32-byte hash to a 4-byte \
                          invoice number"
                        .into(),
                });
            };
            f(hash, u32::from_be_bytes(num))?;
        }
        Ok(())
    }

    /// Builds (or rebuilds) a temporary reverse index of `paymenthashes`,
    /// invoice number → payment hash, in this connection's TEMP database (not
    /// in the KV file). Needed for invoices whose preimage is unknown.
    ///
    /// Returns the index's high-water mark: the highest row id of the KV
    /// table when it was read, for [`KvSource::extend_hash_index`]. Inside a
    /// read transaction ([`KvSource::begin_read`]) the index and the mark
    /// belong to that transaction's snapshot.
    pub fn build_hash_index(&self, buckets: &InvoiceBuckets) -> Result<i64> {
        let action = "building the payment-hash reverse index";
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS oneway_hash_by_num (num BLOB NOT NULL, hash BLOB NOT NULL);
                 DELETE FROM temp.oneway_hash_by_num;",
            )
            .ctx(Role::Kv, &self.path, action)?;
        let mark = self.max_row_id().ctx(Role::Kv, &self.path, action)?;
        if let Some(bucket) = buckets.payment_hashes {
            self.conn
                .execute(
                    &format!(
                        "INSERT INTO temp.oneway_hash_by_num (num, hash)
                         SELECT value, key FROM {} WHERE parent_id = ?1 AND value IS NOT NULL AND key != ?2
                         AND id <= ?3",
                        self.table
                    ),
                    params![bucket, NEXT_INVOICE_KEY, mark],
                )
                .ctx(Role::Kv, &self.path, action)?;
        }
        self.conn
            .execute_batch("CREATE INDEX IF NOT EXISTS temp.oneway_hash_by_num_idx ON oneway_hash_by_num (num)")
            .ctx(Role::Kv, &self.path, action)?;
        Ok(mark)
    }

    /// Adds to the index of [`KvSource::build_hash_index`] the entries of
    /// `paymenthashes` whose row id is above `mark` (a previous high-water
    /// mark), and returns the new mark. Costs a range scan of the rows
    /// written since, not of the whole bucket.
    ///
    /// Not a substitute for a rebuild: the KV table's ids are SQLite rowids
    /// without `AUTOINCREMENT`, so after rows at the top of the table are
    /// deleted a new row may reuse an id at or below `mark`, and deleted
    /// entries stay in the index. A lookup that still fails afterwards must
    /// rebuild before concluding anything (see `reader::Decoder`).
    pub fn extend_hash_index(&self, buckets: &InvoiceBuckets, mark: i64) -> Result<i64> {
        let action = "extending the payment-hash reverse index";
        let new_mark = self.max_row_id().ctx(Role::Kv, &self.path, action)?;
        if let Some(bucket) = buckets.payment_hashes {
            self.conn
                .prepare_cached(&format!(
                    "INSERT INTO temp.oneway_hash_by_num (num, hash)
                     SELECT value, key FROM {} WHERE id > ?1 AND id <= ?2 AND parent_id = ?3
                     AND value IS NOT NULL AND key != ?4",
                    self.table
                ))
                .and_then(|mut st| st.execute(params![mark, new_mark, bucket, NEXT_INVOICE_KEY]))
                .ctx(Role::Kv, &self.path, action)?;
        }
        // Lower than `mark` when rows at the top were deleted: ids above it
        // are free again, and whatever takes them later is new.
        Ok(new_mark)
    }

    fn max_row_id(&self) -> rusqlite::Result<i64> {
        self.conn.query_row(
            &format!("SELECT coalesce(max(id), 0) FROM {}", self.table),
            [],
            |r| r.get(0),
        )
    }

    /// The payment hashes `paymenthashes` maps to invoice `num` (needs
    /// [`KvSource::build_hash_index`] first). Usually one; none when lnd would
    /// have skipped the invoice; more than one is an inconsistency.
    pub fn hashes_for(&self, num: u32) -> Result<Vec<Vec<u8>>> {
        let action = "looking up a payment hash";
        let mut st = self
            .conn
            .prepare_cached("SELECT hash FROM temp.oneway_hash_by_num WHERE num = ?1")
            .ctx(Role::Kv, &self.path, action)?;
        let rows = st
            .query_map([num.to_be_bytes()], |r| r.get::<_, Vec<u8>>(0))
            .ctx(Role::Kv, &self.path, action)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx(Role::Kv, &self.path, action)
    }

    /// The invoice numbers present with `lo <= num <= hi`.
    pub fn invoice_numbers_between(
        &self,
        buckets: &InvoiceBuckets,
        lo: u32,
        hi: u32,
    ) -> Result<std::collections::HashSet<u32>> {
        let action = "listing invoice keys";
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT key FROM {} WHERE parent_id = ?1 AND key >= ?2 AND key <= ?3 AND length(key) = 4 AND value IS NOT NULL",
                self.table
            ))
            .ctx(Role::Kv, &self.path, action)?;
        let rows = st
            .query_map(
                params![buckets.invoices, lo.to_be_bytes(), hi.to_be_bytes()],
                |r| {
                    let k: Vec<u8> = r.get(0)?;
                    Ok(u32::from_be_bytes([k[0], k[1], k[2], k[3]]))
                },
            )
            .ctx(Role::Kv, &self.path, action)?;
        rows.collect::<rusqlite::Result<_>>()
            .ctx(Role::Kv, &self.path, action)
    }

    /// Counts the invoices (4-byte keys with a value) in the invoices bucket.
    pub fn count_invoices(&self, buckets: &InvoiceBuckets) -> Result<u64> {
        self.conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM {} WHERE parent_id = ?1 AND length(key) = 4 AND value IS NOT NULL",
                    self.table
                ),
                [buckets.invoices],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .ctx(Role::Kv, &self.path, "counting invoices")
    }

    /// The bytes of the invoice values (and AMP HTLC sets) in the
    /// `invoices` bucket: the base of the room estimate
    /// (`files::estimated_need`). Reads lengths only.
    pub fn invoice_bytes(&self, buckets: &InvoiceBuckets) -> Result<u64> {
        self.conn
            .query_row(
                &format!(
                    "SELECT coalesce(sum(length(value)), 0) FROM {} WHERE parent_id = ?1",
                    self.table
                ),
                [buckets.invoices],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .ctx(Role::Kv, &self.path, "measuring the invoices")
    }

    /// In one walk of the invoice buckets (inside the caller's read
    /// transaction, for one snapshot): the [`SourceDigest`], and each
    /// invoice's copy digest exactly as [`crate::reader::Decoder::prepare`]
    /// computes it, without decoding the invoices (only their preimage
    /// record is read; a hodl invoice's payment hash comes from
    /// `invoices/paymenthashes`, as the reader resolves it). An invoice
    /// whose preimage record cannot be read or whose hash is not exactly one
    /// 32-byte entry gets `None`: the reader decides what is wrong with it.
    /// `irregular` is set for any row of the `invoices` bucket that is not
    /// an invoice, an AMP set of the invoice before it, or a sub-bucket.
    pub fn invoice_digests(&self, buckets: &InvoiceBuckets) -> Result<InvoiceDigests> {
        let mut walk = DigestWalk::default();
        let source = walk_invoice_tree(&self.conn, &self.table, |row| walk.visit(buckets, row))
            .ctx(Role::Kv, &self.path, "digesting the invoices")?;
        Ok(walk.finish(source))
    }

    /// Computes the [`SourceDigest`] of the invoice buckets.
    pub fn digest(&self) -> Result<SourceDigest> {
        source_digest(&self.conn, &self.table).ctx(
            Role::Kv,
            &self.path,
            "computing the source digest",
        )
    }

    /// Writes the tombstone (`invoice-tombstone` = `1` in the top-level
    /// `invoices` bucket) if, inside the same write transaction, the source
    /// digest still equals `verified`.
    ///
    /// Crash safety: the digest check and the insert are one `BEGIN
    /// IMMEDIATE` transaction on a connection with `synchronous=FULL`, so
    /// either the tombstone is durably present and the invoices are exactly
    /// those verified, or nothing was written. The caller records
    /// `Tombstoned` only after this returns `Written`; a crash in between is
    /// repaired on the next run, which finds the tombstone present in state
    /// `Verified` (see `spec/state-machine.md`).
    ///
    /// `since` is the witness of the verification snapshot, when this
    /// process made it: if no other connection has committed since, the
    /// store *is* the verified snapshot and the digest need not be computed
    /// again. It is asked inside the write transaction, so nobody can commit
    /// between that answer and the insert. Without a witness, or if it was
    /// touched, the digest is re-computed and compared as always.
    ///
    /// With `Written` or an unchanged `AlreadyPresent` comes a [`Witness`]:
    /// the write connection, holding the `data_version` SQLite reported
    /// inside the transaction, after the check.
    pub fn write_tombstone_if_unchanged(
        &self,
        verified: &SourceDigest,
        since: Option<&Witness>,
    ) -> Result<(TombstoneOutcome, Option<Witness>)> {
        self.tombstone_transaction(Some(verified), since)
    }

    /// Writes the tombstone whatever the invoices hold now (nothing when it
    /// is already there), durably, and returns a witness of the sealed
    /// state. Only for a sealed migration whose seal was lost, with no
    /// other process holding the store: the invoices are re-synced (or
    /// checked) against the native store afterwards.
    pub fn write_tombstone(&self) -> Result<Witness> {
        match self.tombstone_transaction(None, None)? {
            (_, Some(w)) => Ok(w),
            (outcome, None) => Err(Error::NotOnewayStore {
                path: self.path.clone(),
                why: format!("could not be sealed: {outcome:?}"),
            }),
        }
    }

    /// Inserts the tombstone inside the caller's write transaction on `rw`
    /// (creating the `invoices` bucket of an empty node, as lnd would).
    fn insert_tombstone<F>(
        &self,
        rw: &Connection,
        e: &impl Fn(&'static str) -> F,
    ) -> Result<TombstoneOutcome>
    where
        F: FnOnce(rusqlite::Error) -> Error,
    {
        let invoices = bucket_id(rw, &self.table, None, INVOICES_BUCKET)
            .map_err(e("finding the invoices bucket"))?;
        let invoices = match invoices {
            Some(id) => id,
            None => {
                // An empty node: create the bucket so the marker has a home,
                // exactly as lnd would (a bucket row with a NULL value).
                rw.execute(
                    &format!(
                        "INSERT INTO {} (key, value, parent_id) VALUES (?1, NULL, NULL)",
                        self.table
                    ),
                    [INVOICES_BUCKET],
                )
                .map_err(e("creating the invoices bucket"))?;
                rw.last_insert_rowid()
            }
        };
        crate::failpoint::hit("tombstone.before_insert");
        rw.execute(
            &format!(
                "INSERT INTO {} (key, value, parent_id) VALUES (?1, ?2, ?3)",
                self.table
            ),
            params![TOMBSTONE_KEY, TOMBSTONE_VALUE, invoices],
        )
        .map_err(e("writing the tombstone"))?;
        Ok(TombstoneOutcome::Written)
    }

    fn tombstone_transaction(
        &self,
        verified: Option<&SourceDigest>,
        since: Option<&Witness>,
    ) -> Result<(TombstoneOutcome, Option<Witness>)> {
        let path = &self.path;
        let e = |action: &'static str| {
            move |err: rusqlite::Error| Error::sqlite(Role::Kv, path, action, err)
        };
        let (rw, file) = self.open_for_tombstone(&e)?;
        rw.execute_batch("BEGIN IMMEDIATE")
            .map_err(e("starting the tombstone transaction"))?;
        let result = self.seal_in_transaction(&rw, verified, since, file, &e);
        match result {
            Ok((TombstoneOutcome::Written, data_version)) => {
                let witness = self.commit_tombstone(rw, data_version, file, &e)?;
                Ok((TombstoneOutcome::Written, Some(witness)))
            }
            Ok((outcome @ TombstoneOutcome::AlreadyPresent { unchanged: true }, data_version)) => {
                let _ = rw.execute_batch("ROLLBACK");
                let witness = Witness::new(rw, path, data_version, file);
                Ok((outcome, Some(witness)))
            }
            other => {
                let _ = rw.execute_batch("ROLLBACK");
                other.map(|(o, _)| (o, None))
            }
        }
    }

    /// Opens the write connection of the tombstone transaction, durable
    /// enough for it, and the identity of the file it opened (`None` when
    /// the path changed files while it opened).
    fn open_for_tombstone<F>(
        &self,
        e: &impl Fn(&'static str) -> F,
    ) -> Result<(Connection, Option<FileId>)>
    where
        F: FnOnce(rusqlite::Error) -> Error,
    {
        let path = &self.path;
        let before = file_id(path);
        let rw = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ctx(Role::Kv, path, "opening read-write for the tombstone")?;
        let file = before.filter(|b| Some(*b) == file_id(path));
        rw.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(e("setting the busy timeout"))?;
        // EXTRA: in rollback-journal mode a commit is durable against power
        // loss only once the directory entry of the deleted journal is
        // synced too, which FULL does not do (spec/state-machine.md §6).
        rw.pragma_update(None, "synchronous", "EXTRA")
            .map_err(e("setting synchronous=EXTRA"))?;
        Ok((rw, file))
    }

    /// Inside the tombstone transaction on `rw`: writes the tombstone when
    /// it is absent and (with `verified`) the source still has that digest.
    /// Returns what it did and the `data_version` read inside the
    /// transaction, after the check.
    fn seal_in_transaction<F>(
        &self,
        rw: &Connection,
        verified: Option<&SourceDigest>,
        since: Option<&Witness>,
        file: Option<FileId>,
        e: &impl Fn(&'static str) -> F,
    ) -> Result<(TombstoneOutcome, i64)>
    where
        F: FnOnce(rusqlite::Error) -> Error,
    {
        let present = tombstone_present(rw, &self.table).map_err(e("looking for the tombstone"))?;
        let Some(verified) = verified else {
            // Unconditional: seal what is there.
            let data_version = read_data_version(rw).map_err(e("reading data_version"))?;
            if present {
                return Ok((
                    TombstoneOutcome::AlreadyPresent { unchanged: true },
                    data_version,
                ));
            }
            return Ok((self.insert_tombstone(rw, e)?, data_version));
        };
        let now = self.digest_in_transaction(rw, verified, since, file, e)?;
        // Read while this transaction holds the write lock: no other
        // connection can commit between the digest and this value.
        let data_version = read_data_version(rw).map_err(e("reading data_version"))?;
        if present {
            let unchanged = now.sha256 == verified.sha256;
            return Ok((TombstoneOutcome::AlreadyPresent { unchanged }, data_version));
        }
        if now.sha256 != verified.sha256 {
            return Ok((TombstoneOutcome::SourceChanged(now), data_version));
        }
        Ok((self.insert_tombstone(rw, e)?, data_version))
    }

    /// The source digest inside the tombstone transaction: `verified`
    /// itself when the witness `since` shows that nobody committed since
    /// the verified snapshot, else computed again.
    fn digest_in_transaction<F>(
        &self,
        rw: &Connection,
        verified: &SourceDigest,
        since: Option<&Witness>,
        file: Option<FileId>,
        e: &impl Fn(&'static str) -> F,
    ) -> Result<SourceDigest>
    where
        F: FnOnce(rusqlite::Error) -> Error,
    {
        match since {
            // The witness speaks only for the file it was taken on: a
            // path that now names another file is digested again.
            Some(w) if file.is_some() && w.file == file && w.untouched()? => {
                tracing::debug!("KV store untouched since the verified snapshot");
                Ok(verified.clone())
            }
            _ => source_digest(rw, &self.table).map_err(e("re-computing the source digest")),
        }
    }

    /// Commits the tombstone written on `rw`, durably (the folder synced
    /// too), and returns the connection as the witness of the sealed state.
    fn commit_tombstone<F>(
        &self,
        rw: Connection,
        data_version: i64,
        file: Option<FileId>,
        e: &impl Fn(&'static str) -> F,
    ) -> Result<Witness>
    where
        F: FnOnce(rusqlite::Error) -> Error,
    {
        rw.execute_batch("COMMIT")
            .map_err(e("committing the tombstone"))?;
        sync_dir(&self.path).map_err(|source| Error::Io {
            path: self.path.to_path_buf(),
            action: "syncing the folder after the tombstone".into(),
            source,
        })?;
        crate::failpoint::hit("tombstone.after_commit");
        Ok(Witness::new(rw, &self.path, data_version, file))
    }
}

/// Syncs the folder holding `path`, so that a file created or deleted there
/// (SQLite's journal, its WAL) survives a power cut.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

fn read_data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// Evidence, held by this process, that nothing has written to the KV store
/// since a state it read: a connection and the `data_version` it reported
/// while reading that state.
///
/// SQLite changes a connection's `data_version` whenever *another*
/// connection (in any process) commits to the file, and never for the
/// connection's own commits. So an unchanged value means the KV store is
/// byte for byte the state that was read. Two witnesses are taken: by the
/// verification pass inside its snapshot (the tombstone transaction then
/// skips re-computing the digest), and by the tombstone transaction (the
/// Lock step then skips it too). A run resumed after a crash has no
/// witness and digests the store again.
pub struct Witness {
    conn: Connection,
    path: PathBuf,
    data_version: i64,
    /// The file the connection reads (device, inode), when known.
    file: Option<FileId>,
}

impl Witness {
    fn new(conn: Connection, path: &Path, data_version: i64, file: Option<FileId>) -> Witness {
        Witness {
            conn,
            path: path.to_path_buf(),
            data_version,
            file,
        }
    }

    /// True when the path still names the file this witness reads.
    pub fn same_file(&self) -> bool {
        self.file.is_some() && file_id(&self.path) == self.file
    }

    /// True when no other connection has committed to the KV store since
    /// the witnessed state was read.
    pub fn untouched(&self) -> Result<bool> {
        let now =
            read_data_version(&self.conn).ctx(Role::Kv, &self.path, "reading data_version")?;
        Ok(now == self.data_version)
    }
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("path", &self.path)
            .field("data_version", &self.data_version)
            .finish()
    }
}

/// What [`KvSource::invoice_digests`] found in one snapshot.
#[derive(Debug, Default)]
pub struct InvoiceDigests {
    /// The source digest of the invoice buckets.
    pub source: SourceDigest,
    /// Every invoice number in key order with its copy digest (`None`: the
    /// reader must look at it).
    pub invoices: Vec<(u32, Option<[u8; 32]>)>,
    /// A row the walk could not place (see the method).
    pub irregular: bool,
}

/// What [`KvSource::write_tombstone_if_unchanged`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TombstoneOutcome {
    /// The tombstone was written and committed.
    Written,
    /// The tombstone was already there (a crash after its commit, before
    /// `Tombstoned` was recorded); nothing written. `unchanged` tells
    /// whether the invoices still match the verified digest.
    AlreadyPresent {
        /// True when the source digest still equals the verified one.
        unchanged: bool,
    },
    /// The source differs from what was verified; nothing written.
    SourceChanged(SourceDigest),
}

/// The first key of the `invoices` bucket to read for the invoices after
/// `after` (all of them when `None`); `None` when no invoice can follow it.
///
/// Every key of invoice `n` (4 bytes, or 36 starting with them) sorts below
/// the 4-byte key of `n + 1`, so ">= n+1" starts exactly after the last AMP
/// set of `n`.
pub(crate) fn invoice_start_key(after: Option<u32>) -> Option<Vec<u8>> {
    match after {
        Some(n) => n.checked_add(1).map(|next| next.to_be_bytes().to_vec()),
        None => Some(Vec::new()),
    }
}

/// The state of [`KvSource::invoice_digests`] along its walk.
#[derive(Default)]
pub(crate) struct DigestWalk {
    out: InvoiceDigests,
    /// The invoice being read, its digest so far, and its hash if known.
    current: Option<(u32, Sha256, Option<[u8; 32]>)>,
    /// Invoices waiting for their hash from `paymenthashes`: where they are
    /// in `out.invoices`, and their digest so far.
    pending: std::collections::HashMap<u32, (usize, Sha256)>,
    /// The `paymenthashes` keys pointing to each invoice number.
    found: std::collections::HashMap<u32, Vec<Vec<u8>>>,
}

impl DigestWalk {
    /// Takes in one row of the tree.
    #[inline]
    pub(crate) fn visit(&mut self, buckets: &InvoiceBuckets, row: &TreeRow<'_>) {
        if row.depth == 0 && row.bucket == buckets.invoices {
            self.invoices_row(row);
        } else if Some(row.bucket) == buckets.payment_hashes {
            self.finish_current();
            self.payment_hash_row(row);
        }
    }

    /// A row of the `invoices` bucket: an invoice starts, or an AMP set of
    /// the current one follows; sub-buckets are passed over.
    #[inline]
    fn invoices_row(&mut self, row: &TreeRow<'_>) {
        let Some(value) = row.value else {
            return; // a sub-bucket
        };
        if !row.key_is_blob {
            self.out.irregular = true;
            return;
        }
        match row.key.len() {
            4 => self.start_invoice(row.key, value),
            36 => self.add_amp_set(row.key, value),
            _ => self.out.irregular = true,
        }
    }

    /// Ends the current invoice and starts digesting the one under `key`.
    #[inline]
    fn start_invoice(&mut self, key: &[u8], value: &[u8]) {
        self.finish_current();
        let num = u32::from_be_bytes(key.try_into().unwrap_or_default());
        let mut h = Sha256::new();
        h.update(num.to_be_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
        match crate::codec::invoice_preimage(value) {
            Ok(Some(p)) => self.current = Some((num, h, Some(Sha256::digest(p).into()))),
            Ok(None) => self.current = Some((num, h, None)),
            Err(_) => {
                self.out.invoices.push((num, None));
                self.current = None;
            }
        }
    }

    /// Adds the AMP set under `key` to the current invoice's digest, when
    /// it belongs to that invoice.
    #[inline]
    fn add_amp_set(&mut self, key: &[u8], value: &[u8]) {
        match &mut self.current {
            Some((num, h, _)) if key[..4] == num.to_be_bytes() => {
                h.update(&key[4..]);
                h.update((value.len() as u64).to_be_bytes());
                h.update(value);
            }
            _ => self.out.irregular = true,
        }
    }

    /// Notes which invoice a `paymenthashes` entry (other than `nik`) points to.
    #[inline]
    fn payment_hash_row(&mut self, row: &TreeRow<'_>) {
        if let (Some(v), true) = (row.value, row.key != NEXT_INVOICE_KEY) {
            if let Ok(b) = <[u8; 4]>::try_from(v) {
                self.found
                    .entry(u32::from_be_bytes(b))
                    .or_default()
                    .push(row.key.to_vec());
            }
        }
    }

    /// Records the current invoice's digest, or sets it aside until its
    /// hash is found in `paymenthashes`.
    #[inline]
    fn finish_current(&mut self) {
        let Some((num, mut h, hash)) = self.current.take() else {
            return;
        };
        match hash {
            Some(hash) => {
                h.update(hash);
                self.out.invoices.push((num, Some(h.finalize().into())));
            }
            None => {
                self.pending.insert(num, (self.out.invoices.len(), h));
                self.out.invoices.push((num, None));
            }
        }
    }

    /// Completes the pending digests whose invoice exactly one 32-byte
    /// `paymenthashes` entry points to, and returns what was found.
    pub(crate) fn finish(mut self, source: SourceDigest) -> InvoiceDigests {
        self.finish_current();
        for (num, (at, mut h)) in self.pending {
            if let Some([one]) = self.found.get(&num).map(Vec::as_slice) {
                if one.len() == 32 {
                    h.update(one);
                    self.out.invoices[at].1 = Some(h.finalize().into());
                }
            }
        }
        self.out.source = source;
        self.out
    }
}

fn bucket_id(
    conn: &Connection,
    table: &str,
    parent: Option<i64>,
    name: &[u8],
) -> rusqlite::Result<Option<i64>> {
    match parent {
        None => conn
            .prepare_cached(&format!(
                "SELECT id FROM {table} WHERE parent_id IS NULL AND key = ?1 AND value IS NULL"
            ))?
            .query_row([name], |r| r.get(0))
            .optional(),
        Some(p) => conn
            .prepare_cached(&format!(
                "SELECT id FROM {table} WHERE parent_id = ?1 AND key = ?2 AND value IS NULL"
            ))?
            .query_row(params![p, name], |r| r.get(0))
            .optional(),
    }
}

fn tombstone_present(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    let Some(invoices) = bucket_id(conn, table, None, INVOICES_BUCKET)? else {
        return Ok(false);
    };
    conn.prepare_cached(&format!(
        "SELECT 1 FROM {table} WHERE parent_id = ?1 AND key = ?2"
    ))?
    .query_row(params![invoices, TOMBSTONE_KEY], |_| Ok(()))
    .optional()
    .map(|o| o.is_some())
}

/// The digest walk: buckets depth-first, keys in byte order, each row
/// contributing (depth, key, value-or-bucket marker, sequence). The
/// tombstone row of the invoices bucket is skipped so that the digest before
/// and after the tombstone write compare equal.
fn source_digest(conn: &Connection, table: &str) -> rusqlite::Result<SourceDigest> {
    walk_invoice_tree(conn, table, |_| {})
}

/// One row of the `invoices` bucket tree, as [`walk_tree`] visits
/// it (the tombstone excepted).
pub(crate) struct TreeRow<'a> {
    /// 0 for rows of the `invoices` bucket itself, 1 for its sub-buckets' rows.
    pub(crate) depth: u8,
    /// The id of the bucket the row is in.
    pub(crate) bucket: i64,
    /// The key, and whether it is stored as a BLOB.
    pub(crate) key: &'a [u8],
    /// True when the key is a BLOB (lnd's keys always are).
    pub(crate) key_is_blob: bool,
    /// The value; `None` for a sub-bucket.
    pub(crate) value: Option<&'a [u8]>,
}

/// One row of a bucket as a backend reads it for [`walk_tree`]: the row's
/// key, value (`None`: a sub-bucket), id and sequence.
pub(crate) struct WalkRow<'a> {
    /// The key as stored.
    pub(crate) key: &'a [u8],
    /// True when the key is a BLOB (always, on Postgres: `BYTEA`).
    pub(crate) key_is_blob: bool,
    /// The value; `None` for a sub-bucket.
    pub(crate) value: Option<&'a [u8]>,
    /// The row id (read for sub-buckets only).
    pub(crate) id: i64,
    /// The bucket sequence (read for sub-buckets only).
    pub(crate) sequence: Option<i64>,
}

/// Walks the `invoices` bucket tree over SQLite in the source digest's
/// order ([`walk_tree`]).
fn walk_invoice_tree(
    conn: &Connection,
    table: &str,
    visit: impl FnMut(&TreeRow<'_>),
) -> rusqlite::Result<SourceDigest> {
    let root = bucket_id(conn, table, None, INVOICES_BUCKET)?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT key, value, id, sequence FROM {table} WHERE parent_id = ?1 ORDER BY key"
    ))?;
    let rows_of = |bucket: i64, each: &mut dyn FnMut(WalkRow<'_>)| -> rusqlite::Result<()> {
        let mut rows = stmt.query([bucket])?;
        while let Some(row) = rows.next()? {
            let key = row.get_ref(0)?;
            let value = row.get_ref(1)?;
            let is_bucket = matches!(value, rusqlite::types::ValueRef::Null);
            each(WalkRow {
                key: stored_bytes(key),
                key_is_blob: matches!(key, rusqlite::types::ValueRef::Blob(_)),
                value: (!is_bucket).then(|| stored_bytes(value)),
                id: if is_bucket { row.get(2)? } else { 0 },
                sequence: if is_bucket { row.get(3)? } else { None },
            });
        }
        Ok(())
    };
    walk_tree(root, rows_of, visit)
}

/// Walks the `invoices` bucket tree (its root `root`; `None` when there is
/// no such bucket) in the source digest's order (each bucket's rows in key
/// order, the bucket's own rows before its sub-buckets'), computing the
/// [`SourceDigest`] and showing every row to `visit`. `rows_of(bucket,
/// each)` is the backend's part: it shows `each` every row of `bucket`, in
/// key order (byte order of the keys).
pub(crate) fn walk_tree<E>(
    root: Option<i64>,
    mut rows_of: impl FnMut(i64, &mut dyn FnMut(WalkRow<'_>)) -> std::result::Result<(), E>,
    mut visit: impl FnMut(&TreeRow<'_>),
) -> std::result::Result<SourceDigest, E> {
    let mut tree = TreeDigest {
        hasher: Sha256::new(),
        invoices: 0,
    };
    let Some(root) = root else {
        // A missing bucket digests like an empty one: the tombstone write
        // creates the bucket on an empty node, and the bucket holding only
        // the (skipped) tombstone must still compare equal.
        tree.hasher.update([0xfe, 0]);
        return Ok(tree.finish());
    };
    // (bucket id, depth); a stack keeps the walk iterative.
    let mut stack = vec![(root, 0u8)];
    while let Some((bucket, depth)) = stack.pop() {
        let mut children = Vec::new();
        rows_of(bucket, &mut |row| {
            if let Some(child) = tree.row(bucket, depth, &row, &mut visit) {
                children.push(child);
            }
        })?;
        // Mark the end of this bucket so sibling/child boundaries are unambiguous.
        tree.hasher.update([0xfe, depth]);
        children.reverse();
        stack.extend(children);
    }
    Ok(tree.finish())
}

/// The [`SourceDigest`] being computed by [`walk_tree`].
struct TreeDigest {
    hasher: Sha256,
    /// Invoices seen (4-byte BLOB keys with a value in the `invoices` bucket).
    invoices: u64,
}

impl TreeDigest {
    /// Digests `row` of `bucket` (at `depth`), unless it is the tombstone,
    /// and shows it to `visit`; returns the sub-bucket it is, with its depth.
    #[inline]
    fn row(
        &mut self,
        bucket: i64,
        depth: u8,
        row: &WalkRow<'_>,
        visit: &mut impl FnMut(&TreeRow<'_>),
    ) -> Option<(i64, u8)> {
        if depth == 0 && row.key == TOMBSTONE_KEY {
            return None;
        }
        let tree_row = TreeRow {
            depth,
            bucket,
            key: row.key,
            key_is_blob: row.key_is_blob,
            value: row.value,
        };
        self.hasher.update([depth]);
        self.hasher.update((row.key.len() as u64).to_be_bytes());
        self.hasher.update(row.key);
        visit(&tree_row);
        match row.value {
            None => {
                self.hasher.update([0xff]);
                self.hasher.update(row.sequence.unwrap_or(0).to_be_bytes());
                Some((row.id, depth.saturating_add(1)))
            }
            Some(value) => {
                self.value(&tree_row, value);
                None
            }
        }
    }

    /// Digests `value`, the value of `row`, counting invoices.
    #[inline]
    fn value(&mut self, row: &TreeRow<'_>, value: &[u8]) {
        if row.depth == 0 && row.key.len() == 4 && row.key_is_blob {
            self.invoices += 1;
        }
        self.hasher.update([0x01]);
        self.hasher.update((value.len() as u64).to_be_bytes());
        self.hasher.update(value);
    }

    /// The digest of everything walked.
    fn finish(self) -> SourceDigest {
        SourceDigest {
            invoices: self.invoices,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// The bytes of a key or value as stored (BLOB or TEXT; nothing for
/// another type).
#[inline]
fn stored_bytes(v: rusqlite::types::ValueRef<'_>) -> &[u8] {
    match v {
        rusqlite::types::ValueRef::Blob(b) => b,
        rusqlite::types::ValueRef::Text(t) => t,
        _ => &[],
    }
}
