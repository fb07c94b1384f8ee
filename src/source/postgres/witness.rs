//! "Nothing was committed to the KV table since": the Postgres [`Witness`],
//! the commit marker of a snapshot, and the tombstone transaction.
//!
//! # Why the witness is sound
//!
//! A [`Mark`] is taken inside the transaction whose state it witnesses:
//! from that transaction's snapshot `S`, the low 32 bits of `S.xmin` (every
//! transaction id below it had finished when `S` was taken), the number of
//! rows of the KV table `S` sees, and the distinct creating transaction ids
//! (`xmin`) of the rows `S` sees whose id is not below `S.xmin` (usually
//! none or a handful: recent writes).
//!
//! Later, [`PgWitness::untouched_in`] reads the table in a fresh statement
//! (which sees every commit before it) and says "untouched" only when the
//! row count is the same and every row whose `xmin` is not below `S.xmin`
//! is one of the recorded ids. Any commit after `S` that changed the table
//! did it by inserting or updating a row (a new row version whose `xmin`
//! is the writer's transaction or subtransaction id, which is not below
//! `S.xmin` since it had not finished when `S` was taken, and was not
//! visible to `S`, so is not recorded), or by deleting rows only (the count
//! drops). So "untouched" is never said after such a commit. The reverse
//! mistake is possible and safe: rows frozen or aged past 2^31
//! transactions may compare as recent and make a witness say "touched"
//! (the caller then digests again). Ids compare by `age()`, modulo 2^32, as
//! Postgres itself compares them. Row locks (`SELECT … FOR UPDATE`) and
//! `VACUUM` change no `xmin` the check looks at.
//!
//! The recorded ids make the check immune to what other databases of the
//! cluster do: `S.xmin` is cluster-wide, so a long transaction elsewhere
//! holds it back, but rows that were already visible to `S` are recorded
//! and do not count as new.
//!
//! A [`Version`] is a hash of `S` itself (`pg_current_snapshot()`: xmin,
//! xmax and the ids in progress): two snapshots with the same text saw the
//! same set of finished transactions, so nobody committed between them.
//! Any commit anywhere in the cluster changes it, so it is conservative.

use std::any::Any;
use std::sync::{Mutex, MutexGuard};

use postgres::{Client, GenericClient, Transaction};
use sha2::{Digest, Sha256};

use super::reads;
use crate::error::{PgContext, Result, Role};
use crate::kv::{SourceDigest, INVOICES_BUCKET, TOMBSTONE_KEY};
use crate::postgres::kv::{self as pgkv, Tombstone};
use crate::postgres::Dsn;
use crate::source::{TombstoneOutcome, Version, Witness};

/// What a snapshot saw of the KV table (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The low 32 bits of the snapshot's xmin.
    xmin: i64,
    /// The rows of the table it saw.
    rows: i64,
    /// The distinct `xmin`s (32 bits) of the rows it saw that are not
    /// below `xmin`.
    recent: Vec<i64>,
}

/// Which database and table: the cluster's system identifier (when it can
/// be read), the database's and the KV table's oids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbId {
    system: Option<i64>,
    database: u32,
    table: Option<u32>,
}

impl DbId {
    /// The identity of the database `c` is connected to, and of `table` in it.
    pub(crate) fn read(c: &mut impl GenericClient, table: &str) -> Result<DbId> {
        let system = c
            .query_opt("SELECT system_identifier FROM pg_control_system()", &[])
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0));
        let row = c
            .query_one(
                "SELECT d.oid, to_regclass($1)::oid FROM pg_database d \
                 WHERE d.datname = current_database()",
                &[&table],
            )
            .pg(Role::Kv, "reading which database this is")?;
        Ok(DbId {
            system,
            database: row.get(0),
            table: row.get(1),
        })
    }
}

/// The statement of [`take_mark`] and of [`PgWitness::untouched_in`]:
/// the row count, and the recent `xmin`s (`age()` no greater than that of
/// `$1`, a 32-bit id), with `$1` defaulting to the current snapshot's xmin.
///
/// The reference id and its age are computed once (`s`, materialized),
/// not for every row: the scan's per-row work is one `age()` and a
/// comparison. (Written as a join with the age computed per row, the same
/// answer took three times as long on a 900,000-row table.) Both ages are
/// taken in this one statement, so against the same current transaction.
fn mark_sql(table: &str) -> String {
    format!(
        "WITH s AS MATERIALIZED (SELECT x, age(x::text::xid) AS a FROM (SELECT coalesce($1::bigint, \
             pg_snapshot_xmin(pg_current_snapshot())::text::bigint % 4294967296) AS x) q) \
         SELECT s.x, c.n, c.recent FROM s, LATERAL (SELECT count(*) AS n, \
             coalesce(array_agg(DISTINCT t.xmin::text::bigint) \
                 FILTER (WHERE age(t.xmin) <= s.a), '{{}}') AS recent \
             FROM {table} t) c"
    )
}

/// The [`Mark`] of the snapshot `c`'s current statement (or transaction,
/// in `REPEATABLE READ`) reads.
pub(crate) fn take_mark(c: &mut impl GenericClient, table: &str) -> Result<Mark> {
    let row = c
        .query_one(&mark_sql(table), &[&None::<i64>])
        .pg(Role::Kv, "reading the witness mark of the KV table")?;
    let mut recent: Vec<i64> = row.get(2);
    recent.sort_unstable();
    Ok(Mark {
        xmin: row.get(0),
        rows: row.get(1),
        recent,
    })
}

/// The commit marker of the snapshot `c` reads (module docs).
pub(crate) fn version(c: &mut impl GenericClient) -> Result<Version> {
    let text: String = c
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .pg(Role::Kv, "reading the snapshot")?
        .get(0);
    let h = Sha256::digest(text.as_bytes());
    Ok(Version::new(i64::from_be_bytes(
        h[..8].try_into().unwrap_or_default(),
    )))
}

/// A session of its own and the mark of the state it witnesses (the
/// module documentation says what a mark holds).
pub struct PgWitness {
    client: Mutex<Client>,
    dsn: Dsn,
    table: String,
    db: DbId,
    /// `None`: the witnessed state is not known (says "touched").
    mark: Option<Mark>,
}

impl PgWitness {
    pub(crate) fn new(
        client: Client,
        dsn: Dsn,
        table: String,
        db: DbId,
        mark: Option<Mark>,
    ) -> PgWitness {
        PgWitness {
            client: Mutex::new(client),
            dsn,
            table,
            db,
            mark,
        }
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether nothing was committed to the KV table since the witnessed
    /// state, asked on `c` (a session of the same database: the caller's
    /// transaction, after it locked the table, so that the answer holds
    /// until it commits). `c` must see every commit before the question:
    /// `READ COMMITTED`, or a transaction that has not read yet.
    pub(crate) fn untouched_in(&self, c: &mut impl GenericClient) -> Result<bool> {
        let Some(mark) = &self.mark else {
            return Ok(false);
        };
        let row = c
            .query_one(&mark_sql(&self.table), &[&Some(mark.xmin)])
            .pg(Role::Kv, "asking whether the KV table changed")?;
        let (rows, mut recent): (i64, Vec<i64>) = (row.get(1), row.get(2));
        recent.sort_unstable();
        Ok(rows == mark.rows && recent.iter().all(|x| mark.recent.binary_search(x).is_ok()))
    }

    /// Whether `c` is connected to the database and table this witness
    /// speaks for.
    pub(crate) fn same_db(&self, c: &mut impl GenericClient) -> Result<bool> {
        Ok(self.db.table.is_some() && DbId::read(c, &self.table)? == self.db)
    }
}

impl std::fmt::Debug for PgWitness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWitness")
            .field("dsn", &self.dsn.redacted())
            .field("table", &self.table)
            .field("mark", &self.mark.as_ref().map(|m| (m.xmin, m.rows)))
            .finish()
    }
}

impl Witness for PgWitness {
    /// A new session through the DSN reaches the same cluster, database and
    /// table (by oid: a table dropped and made again is another one).
    fn same_file(&self) -> bool {
        self.dsn
            .connect()
            .ok()
            .and_then(|mut c| self.same_db(&mut c).ok())
            .unwrap_or(false)
    }

    fn untouched(&self) -> Result<bool> {
        self.untouched_in(&mut *self.client())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The tombstone transaction's work inside `tx` (`super::seal_in`);
/// without `verified`, writes the tombstone whatever the invoices hold.
pub(crate) fn seal(
    tx: &mut Transaction<'_>,
    table: &str,
    verified: Option<&SourceDigest>,
    since: Option<&dyn Witness>,
) -> Result<TombstoneOutcome> {
    Ok(seal_checked(tx, table, verified, since)?.0)
}

/// [`seal`], and, when it sealed (the tombstone written, or there already
/// over the verified invoices), the [`Mark`] of the sealed state, taken
/// inside `tx` under its lock: it speaks for the sealed state once `tx`
/// commits.
pub(crate) fn seal_marked(
    tx: &mut Transaction<'_>,
    table: &str,
    verified: Option<&SourceDigest>,
    since: Option<&dyn Witness>,
) -> Result<(TombstoneOutcome, Option<Mark>)> {
    let (outcome, untouched) = seal_checked(tx, table, verified, since)?;
    let sealed = matches!(
        outcome,
        TombstoneOutcome::Written | TombstoneOutcome::AlreadyPresent { unchanged: true }
    );
    if !sealed {
        return Ok((outcome, None));
    }
    let derived = match untouched {
        Some(mark) => mark.after(tx, table, &outcome)?,
        None => None,
    };
    let mark = match derived {
        Some(mark) => mark,
        None => take_mark(tx, table)?,
    };
    Ok((outcome, Some(mark)))
}

/// The seal's check and write; with the mark of `since` when that witness
/// found the table untouched (under the lock, so still true).
fn seal_checked(
    tx: &mut Transaction<'_>,
    table: &str,
    verified: Option<&SourceDigest>,
    since: Option<&dyn Witness>,
) -> Result<(TombstoneOutcome, Option<Mark>)> {
    tx.batch_execute(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
        .pg(Role::Kv, "locking the KV table for the tombstone")?;
    let present = pgkv::tombstone_present(tx, table).pg(Role::Kv, "")?;
    let Some(verified) = verified else {
        if present {
            return Ok((TombstoneOutcome::AlreadyPresent { unchanged: true }, None));
        }
        return Ok((write(tx, table)?, None));
    };
    let witness = since.and_then(|w| w.as_any().downcast_ref::<PgWitness>());
    let (now, untouched) = match witness {
        Some(w) if w.same_db(tx)? && w.untouched_in(tx)? => {
            tracing::debug!("KV table untouched since the verified snapshot");
            (verified.clone(), w.mark.clone())
        }
        _ => (reads::walk(tx, table, |_| {})?, None),
    };
    if present {
        let unchanged = now.sha256 == verified.sha256;
        return Ok((TombstoneOutcome::AlreadyPresent { unchanged }, untouched));
    }
    if now.sha256 != verified.sha256 {
        return Ok((TombstoneOutcome::SourceChanged(now), None));
    }
    Ok((write(tx, table)?, untouched))
}

impl Mark {
    /// The mark of the table after the seal wrote `outcome` over the state
    /// `self` marks (checked untouched under the lock), without reading the
    /// whole table again: the same rows, plus the tombstone row, whose
    /// creating id joins the recent ones. `None` (take a fresh mark) when
    /// the write also created the `invoices` bucket: two rows, not one.
    ///
    /// Sound as a mark (module docs): every row visible now whose `xmin`
    /// is not below `self.xmin` was either recorded in `self` or is the
    /// tombstone row, recorded here; any later commit that writes the table
    /// adds a row version with an id recorded nowhere, or only deletes.
    fn after(
        &self,
        tx: &mut Transaction<'_>,
        table: &str,
        outcome: &TombstoneOutcome,
    ) -> Result<Option<Mark>> {
        if *outcome != TombstoneOutcome::Written {
            return Ok(Some(self.clone()));
        }
        let row = tx
            .query_opt(
                &format!(
                    "SELECT b.xmin::text::bigint, t.xmin::text::bigint \
                     FROM {table} b JOIN {table} t ON t.parent_id = b.id \
                     WHERE b.parent_id IS NULL AND b.key = $1 AND t.key = $2"
                ),
                &[&INVOICES_BUCKET, &TOMBSTONE_KEY],
            )
            .pg(Role::Kv, "reading the tombstone row's creator")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (bucket, tombstone): (i64, i64) = (row.get(0), row.get(1));
        if bucket == tombstone {
            return Ok(None);
        }
        let mut recent = self.recent.clone();
        if let Err(at) = recent.binary_search(&tombstone) {
            recent.insert(at, tombstone);
        }
        Ok(Some(Mark {
            xmin: self.xmin,
            rows: self.rows + 1,
            recent,
        }))
    }
}

fn write(tx: &mut Transaction<'_>, table: &str) -> Result<TombstoneOutcome> {
    crate::failpoint::hit("tombstone.before_insert");
    match pgkv::write_tombstone(tx, table).pg(Role::Kv, "")? {
        Tombstone::Written => Ok(TombstoneOutcome::Written),
        // Unreachable under the lock after the check above.
        Tombstone::AlreadyPresent => Ok(TombstoneOutcome::AlreadyPresent { unchanged: true }),
    }
}
