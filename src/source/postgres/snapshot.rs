//! The Postgres [`Snapshot`]: a session of its own whose reads between
//! `begin_read` and `end_read` are one `REPEATABLE READ` transaction
//! (which writes nothing but the session's temporary payment-hash index),
//! decoding invoices exactly as the SQLite `Decoder` does (the workload's
//! `decode` and `finish`), with the lookups of a whole batch answered in
//! one query.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use postgres::types::Type;
use postgres::{Client, Statement};

use super::reads;
use super::witness::{self, DbId, Mark, PgWitness};
use crate::error::{PgContext, Result, Role};
use crate::kv::{DigestWalk, InvoiceBuckets, RawInvoice, NEXT_INVOICE_KEY, PAYMENT_HASHES_BUCKET};
use crate::postgres::Dsn;
use crate::reader::MAX_BATCH_BYTES;
use crate::source::{InvoiceDigests, Prepared, Snapshot, SourceDigest, Version, Witness};
use crate::workload::invoices::PaymentHashOf;
use crate::workload::{Invoices, Workload};

/// How a read transaction starts. Not `READ ONLY`: the payment-hash index
/// is a temporary table of this session, filled inside the transaction so
/// that it reads the same snapshot; nothing else is ever written.
const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";

/// The session's payment-hash index (`TEMP`: private to the session,
/// dropped with it, never in lnd's database).
const HASH_INDEX: &str = "oneway_hash_index";

/// The lookup index of [`HASH_INDEX`], by invoice number (built after each
/// full fill; later additions maintain it).
const HASH_INDEX_NUM: &str = "oneway_hash_index_num";

/// Marks kept for [`Snapshot::into_witness`] (the last versions read).
const MARKS_KEPT: usize = 4;

/// A reader on a session of its own (see the module docs).
///
/// Payment hashes of invoices without a preimage come from a reverse index
/// of `invoices/paymenthashes` in a temporary table of the session (on the
/// server, as the SQLite `Decoder` keeps its own in SQLite's TEMP
/// database: a million entries held in the process would cost more memory
/// than the whole migration may use), looked up once per batch for all its
/// invoices without a preimage, by the rule of the SQLite `Decoder`
/// (`reader.rs`): exactly one 32-byte hash is taken as found; any other
/// answer is final only from an index fully built in the current read
/// transaction; otherwise the entries with ids above the last high-water
/// mark are added and, failing that, the index is rebuilt in the current
/// transaction.
pub struct PgSnapshot {
    client: RefCell<Client>,
    dsn: Dsn,
    table: String,
    shown: PathBuf,
    db: DbId,
    buckets: Option<InvoiceBuckets>,
    page: Statement,
    index: Option<HashIndex>,
    reads: u64,
    reading: Option<u64>,
    /// The marks of the last versions read, for a witness.
    marks: RefCell<Vec<(Version, Mark)>>,
}

/// The state of the session's payment-hash index ([`HASH_INDEX`]).
struct HashIndex {
    /// The highest row id of the table when it was last read.
    mark: i64,
    /// The read transaction of its last full build.
    built_in: Option<u64>,
}

/// Payment hashes by invoice number, as the index answered.
type Found = HashMap<u32, Vec<Vec<u8>>>;

impl PgSnapshot {
    /// Opens a session of its own on `dsn` and finds the invoice buckets.
    pub(crate) fn open(dsn: &Dsn, table: &str, shown: PathBuf) -> Result<PgSnapshot> {
        let mut client = dsn.connect().pg(Role::Kv, "")?;
        // Pages of a bucket in key order must come from lnd's (parent_id,
        // key) index, not from a sort of the whole bucket, which a table
        // without statistics (never analyzed: a restored or fresh
        // database) would get: 40 ms a page instead of 1 for 50,000
        // invoices. Only this session's own plans are affected.
        client
            .batch_execute("SET enable_sort = off; SET enable_bitmapscan = off")
            .pg(Role::Kv, "setting the planner for key-order reads")?;
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE {HASH_INDEX} (num BYTEA NOT NULL, hash BYTEA NOT NULL)"
            ))
            .pg(Role::Kv, "creating the session's payment-hash index")?;
        let buckets = reads::invoice_buckets(&mut client, table)?;
        let page = reads::prepare_page(&mut client, table)?;
        let db = DbId::read(&mut client, table)?;
        Ok(PgSnapshot {
            client: RefCell::new(client),
            dsn: dsn.clone(),
            table: table.to_owned(),
            shown,
            db,
            buckets,
            page,
            index: None,
            reads: 0,
            reading: None,
            marks: RefCell::new(Vec::new()),
        })
    }

    /// Runs `f` inside the current read transaction, or one of its own.
    fn with_read<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self.client.borrow_mut();
        if self.reading.is_some() {
            return f(&mut c);
        }
        c.batch_execute(BEGIN)
            .pg(Role::Kv, "starting a read transaction")?;
        let result = f(&mut c);
        let ended = c
            .batch_execute("COMMIT")
            .pg(Role::Kv, "ending a read transaction");
        let out = result?;
        ended?;
        Ok(out)
    }

    /// Builds the index from scratch, in the current read transaction.
    fn rebuild_hash_index(&mut self) -> Result<()> {
        let c = self.client.get_mut();
        if let Some(b) = self.buckets.as_mut() {
            if b.payment_hashes.is_none() {
                b.payment_hashes = crate::postgres::kv::bucket(
                    c,
                    &self.table,
                    Some(b.invoices),
                    PAYMENT_HASHES_BUCKET,
                )
                .pg(Role::Kv, "")?;
            }
        }
        c.batch_execute(&format!(
            "DROP INDEX IF EXISTS pg_temp.{HASH_INDEX_NUM}; TRUNCATE {HASH_INDEX}"
        ))
        .pg(Role::Kv, "emptying the payment-hash index")?;
        let mark = extend(c, &self.table, self.buckets, None)?;
        // The lookup's index is built once the rows are in: one sort
        // instead of an insertion per row, about 40% less work for the
        // whole build. Then statistics, or the planner takes the new table
        // for empty and scans all of it for every batch's lookup.
        c.batch_execute(&format!(
            "CREATE INDEX {HASH_INDEX_NUM} ON {HASH_INDEX} (num); ANALYZE {HASH_INDEX}"
        ))
        .pg(Role::Kv, "indexing the payment-hash index")?;
        self.index = Some(HashIndex {
            mark,
            built_in: self.reading,
        });
        Ok(())
    }

    /// The payment hashes `paymenthashes` maps to each of `nums` (one query;
    /// the index is built first when there is none).
    fn lookup(&mut self, nums: &[u32]) -> Result<Found> {
        if self.index.is_none() {
            self.rebuild_hash_index()?;
        }
        let keys: Vec<Vec<u8>> = nums.iter().map(|n| n.to_be_bytes().to_vec()).collect();
        let rows = self
            .client
            .get_mut()
            .query_typed(
                &format!("SELECT num, hash FROM {HASH_INDEX} WHERE num = ANY($1)"),
                &[(&keys, Type::BYTEA_ARRAY)],
            )
            .pg(Role::Kv, "reading the payment-hash index")?;
        let mut found = Found::new();
        for row in rows {
            let num: &[u8] = row.get(0);
            if let Ok(num) = <[u8; 4]>::try_from(num) {
                found
                    .entry(u32::from_be_bytes(num))
                    .or_default()
                    .push(row.get(1));
            }
        }
        Ok(found)
    }

    /// The payment hashes of invoice `num`, given what the batch's lookup
    /// found, by the rule in the type's documentation.
    fn hashes_for(&mut self, num: u32, found: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
        let usable = |found: &[Vec<u8>]| matches!(found, [one] if one.len() == 32);
        let index = self.index.as_ref().expect("built by the lookup");
        let final_here = self.reading.is_some() && index.built_in == self.reading;
        if usable(&found) || final_here {
            return Ok(found);
        }
        if found.is_empty() {
            let since = index.mark;
            let mark = extend(
                self.client.get_mut(),
                &self.table,
                self.buckets,
                Some(since),
            )?;
            if let Some(index) = self.index.as_mut() {
                index.mark = mark;
            }
            let found = self.lookup(&[num])?.remove(&num).unwrap_or_default();
            if usable(&found) {
                return Ok(found);
            }
        }
        tracing::debug!(
            invoice = format_args!("{num:08x}"),
            "payment hash not in the index: rebuilding it"
        );
        self.rebuild_hash_index()?;
        Ok(self.lookup(&[num])?.remove(&num).unwrap_or_default())
    }

    /// Decodes a page of raw invoices into their native rows and copy
    /// digests ([`Workload::decode`], then [`Workload::finish`]), answering
    /// the lookups of the whole page (the payment hashes of the invoices
    /// without a preimage) in one query.
    fn prepare_all(&mut self, raws: &[RawInvoice]) -> Result<Vec<Prepared>> {
        let decoded = raws
            .iter()
            .map(|raw| Invoices::decode(raw, &self.shown))
            .collect::<Result<Vec<_>>>()?;
        let missing: Vec<u32> = raws
            .iter()
            .zip(&decoded)
            .filter_map(|(raw, d)| Invoices::lookup(raw, d))
            .map(|PaymentHashOf(num)| num)
            .collect();
        let mut found = if missing.is_empty() {
            Found::new()
        } else {
            self.lookup(&missing)?
        };
        let mut out = Vec::with_capacity(raws.len());
        for (raw, d) in raws.iter().zip(decoded) {
            let answer = match Invoices::lookup(raw, &d) {
                Some(PaymentHashOf(num)) => {
                    let here = found.remove(&num).unwrap_or_default();
                    Some(self.hashes_for(num, here)?)
                }
                None => None,
            };
            out.push(Invoices::finish(raw, d, answer.as_deref(), &self.shown)?);
        }
        Ok(out)
    }
}

/// Adds to the session's index the entries of `paymenthashes` (other than
/// `nik`) with row ids above `since` (all when `None`) and at most the
/// table's highest id now, which it returns as the new high-water mark.
fn extend(
    c: &mut Client,
    table: &str,
    buckets: Option<InvoiceBuckets>,
    since: Option<i64>,
) -> Result<i64> {
    let action = "reading the payment-hash index";
    let mark: i64 = c
        .query_one(&format!("SELECT coalesce(max(id), 0) FROM {table}"), &[])
        .pg(Role::Kv, action)?
        .get(0);
    let Some(bucket) = buckets.and_then(|b| b.payment_hashes) else {
        return Ok(mark);
    };
    let from = since.unwrap_or(i64::MIN);
    c.execute(
        &format!(
            "INSERT INTO {HASH_INDEX} (num, hash) SELECT value, key FROM {table} \
             WHERE parent_id = $1 AND value IS NOT NULL AND length(value) = 4 \
             AND key <> $2 AND id > $3 AND id <= $4"
        ),
        &[&bucket, &NEXT_INVOICE_KEY, &from, &mark],
    )
    .pg(Role::Kv, action)?;
    Ok(mark)
}

impl Snapshot for PgSnapshot {
    fn begin_read(&mut self) -> Result<()> {
        self.client
            .get_mut()
            .batch_execute(BEGIN)
            .pg(Role::Kv, "starting a read transaction")?;
        self.reads += 1;
        self.reading = Some(self.reads);
        Ok(())
    }

    fn end_read(&mut self) -> Result<()> {
        self.reading = None;
        self.client
            .get_mut()
            .batch_execute("COMMIT")
            .pg(Role::Kv, "ending a read transaction")
    }

    /// Up to `max` invoices after `after`, fewer once their values reach
    /// [`MAX_BATCH_BYTES`], read and resolved in one read transaction.
    fn batch(&mut self, after: Option<u32>, max: usize) -> Result<Vec<Prepared>> {
        let Some(b) = self.buckets else {
            return Ok(Vec::new());
        };
        let own = self.reading.is_none();
        if own {
            self.begin_read()?;
        }
        let result = reads::read_invoices(
            self.client.get_mut(),
            &self.page,
            &b,
            after,
            max,
            MAX_BATCH_BYTES,
            &self.shown,
        )
        .and_then(|raws| self.prepare_all(&raws));
        if own {
            let ended = self.end_read();
            if result.is_ok() {
                ended?;
            }
        }
        result
    }

    fn invoice_digests(&self, buckets: &InvoiceBuckets) -> Result<InvoiceDigests> {
        self.with_read(|c| {
            let mut walk = DigestWalk::default();
            let source = reads::walk(c, &self.table, |row| walk.visit(buckets, row))?;
            Ok(walk.finish(source))
        })
    }

    fn digest(&self) -> Result<SourceDigest> {
        self.with_read(|c| reads::walk(c, &self.table, |_| {}))
    }

    fn count_invoices(&self) -> Result<u64> {
        match self.buckets {
            Some(b) => self.with_read(|c| reads::count_invoices(c, &self.table, &b)),
            None => Ok(0),
        }
    }

    /// A hash of the snapshot (see `witness.rs`); the snapshot's mark of
    /// the KV table is kept with it for [`Snapshot::into_witness`].
    fn version(&self) -> Result<Version> {
        let (version, mark) =
            self.with_read(|c| Ok((witness::version(c)?, witness::take_mark(c, &self.table)?)))?;
        let mut marks = self.marks.borrow_mut();
        marks.retain(|(v, _)| *v != version);
        if marks.len() == MARKS_KEPT {
            marks.remove(0);
        }
        marks.push((version, mark));
        Ok(version)
    }

    /// A session of its own is a connection (TLS, authentication) and a
    /// payment-hash index built on the server: the first verification
    /// pass reads on the copy's, by the index's own rule (module docs).
    /// (SQLite's decoder does not carry over: its connection's page cache
    /// would stay beside the index build, for no measurable gain.)
    fn carries_over(&self) -> bool {
        true
    }

    /// A witness of the state read at `at`; one that always says "touched"
    /// when `at` was not read by this snapshot.
    fn into_witness(self: Box<Self>, at: Version) -> Box<dyn Witness> {
        let mark = self
            .marks
            .borrow()
            .iter()
            .find(|(v, _)| *v == at)
            .map(|(_, m)| m.clone());
        Box::new(PgWitness::new(
            self.client.into_inner(),
            self.dsn,
            self.table,
            self.db,
            mark,
        ))
    }
}
