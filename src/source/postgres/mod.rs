//! The Postgres source: lnd's KV table (`<prefix>_kv`, lnd's
//! `kvdb/postgres` layout over `kvdb/sqlbase`) in the database lnd's
//! `db.postgres.dsn` names.
//!
//! Every answer is the SQLite source's for the same rows: the reads
//! ([`reads`]) classify keys as the SQLite reader does, the digests come
//! from the same walk ([`crate::kv::walk_tree`]), invoices are decoded by
//! the reader's functions, the identity by [`crate::identity`] over
//! [`reads::Reads`]. What differs is what a database is: a [`PgSnapshot`]
//! is a `REPEATABLE READ` transaction on a session of its own (writing only
//! its session's temporary payment-hash index), a
//! [`PgWitness`] an xid check on the table (`witness.rs` argues it), the
//! other holders are the other sessions of the database
//! (`pg_stat_activity`), and the tombstone transaction locks the table
//! (`SHARE ROW EXCLUSIVE`) instead of the file.
//!
//! Read-only except the tombstone: the sessions read, and only
//! [`seal_in`] (through [`Source::write_tombstone_if_unchanged`] and
//! [`Source::write_tombstone`]) writes.

mod reads;
mod snapshot;
mod witness;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use postgres::{Client, GenericClient};

use super::{
    InvoiceBuckets, Kind, OtherHolders, Snapshot, Source, SourceDigest, SourceIdentity, Stream,
    TombstoneOutcome, Witness,
};
use crate::error::{Error, PgContext, Result, Role};
use crate::postgres::dsn::session_marker;
use crate::postgres::kv as pgkv;
use crate::postgres::Dsn;
pub use snapshot::PgSnapshot;
use witness::DbId;
pub use witness::PgWitness;

/// lnd's KV store in a Postgres database: a session, the table, and the
/// name the store goes by in messages.
pub struct PgSource {
    client: Mutex<Client>,
    dsn: Dsn,
    prefix: String,
    table: String,
    shown: PathBuf,
}

impl PgSource {
    /// Connects to `dsn` and checks that the KV table `<prefix>_kv` is
    /// there with lnd's columns. `shown` names the store in messages (the
    /// redacted DSN and the table). Creates nothing.
    pub fn open(dsn: &Dsn, prefix: &str, shown: &Path) -> Result<PgSource> {
        let table = pgkv::table_name(prefix).pg(Role::Kv, "")?;
        let mut client = dsn.connect().pg(Role::Kv, "")?;
        check_table(&mut client, &table, shown)?;
        Ok(PgSource {
            client: Mutex::new(client),
            dsn: dsn.clone(),
            prefix: prefix.to_owned(),
            table,
            shown: shown.to_path_buf(),
        })
    }

    /// The session (a poisoned lock is taken over: the session itself is
    /// whole, and each use starts from a statement of its own).
    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a `REPEATABLE READ READ ONLY` transaction: several reads
    /// from one snapshot.
    fn in_snapshot<T>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut c = self.client();
        let mut tx = c
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .pg(Role::Kv, "starting a read transaction")?;
        let out = f(&mut tx)?;
        tx.commit().pg(Role::Kv, "ending a read transaction")?;
        Ok(out)
    }

    /// The tombstone transaction ([`seal_in`]), committed when it wrote,
    /// with a witness of the sealed state then (and for an unchanged
    /// `AlreadyPresent`).
    fn tombstone_transaction(
        &self,
        verified: Option<&SourceDigest>,
        since: Option<&dyn Witness>,
    ) -> Result<(TombstoneOutcome, Option<Box<dyn Witness>>)> {
        // The witness's own session, opened before the lock is taken.
        let mut own = self.dsn.connect().pg(Role::Kv, "")?;
        let mut c = self.client();
        let mut tx = c
            .transaction()
            .pg(Role::Kv, "starting the tombstone transaction")?;
        // Marked under the lock: nobody else can have written the table
        // since the check, so the mark is the sealed state's.
        let (outcome, mark) = witness::seal_marked(&mut tx, &self.table, verified, since)?;
        let Some(mark) = mark else {
            tx.rollback()
                .pg(Role::Kv, "ending the tombstone transaction")?;
            return Ok((outcome, None));
        };
        if outcome == TombstoneOutcome::Written {
            tx.commit().pg(Role::Kv, "committing the tombstone")?;
            crate::failpoint::hit("tombstone.after_commit");
        } else {
            tx.rollback()
                .pg(Role::Kv, "ending the tombstone transaction")?;
        }
        let db = DbId::read(&mut own, &self.table)?;
        let w = PgWitness::new(own, self.dsn.clone(), self.table.clone(), db, Some(mark));
        Ok((outcome, Some(Box::new(w))))
    }
}

/// Refuses a database without the KV table, or with one lacking lnd's
/// columns, naming what is there.
fn check_table(c: &mut Client, table: &str, shown: &Path) -> Result<()> {
    let action = "reading the schema";
    let cols: Vec<String> = c
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&table],
        )
        .pg(Role::Kv, action)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing = |why: String| Error::NoKvTable {
        path: shown.to_path_buf(),
        table: table.to_owned(),
        why,
    };
    if cols.is_empty() {
        let tables: Vec<String> = c
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY 1",
                &[],
            )
            .pg(Role::Kv, action)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        return Err(missing(if tables.is_empty() {
            "the database has no tables".into()
        } else {
            format!(
                "tables present: {}; is the table prefix right?",
                tables.join(", ")
            )
        }));
    }
    for needed in ["key", "value", "parent_id", "id", "sequence"] {
        if !cols.iter().any(|c| c == needed) {
            return Err(missing(format!(
                "column {needed:?} is missing (columns: {})",
                cols.join(", ")
            )));
        }
    }
    Ok(())
}

impl Source for PgSource {
    fn invoice_buckets(&self) -> Result<Option<InvoiceBuckets>> {
        self.in_snapshot(|tx| reads::invoice_buckets(tx, &self.table))
    }

    fn tombstone_present(&self) -> Result<bool> {
        pgkv::tombstone_present(&mut *self.client(), &self.table).pg(Role::Kv, "")
    }

    fn sequence(&self, bucket: i64) -> Result<u64> {
        pgkv::sequence(&mut *self.client(), &self.table, bucket).pg(Role::Kv, "")
    }

    fn invoice_numbers_between(
        &self,
        buckets: &InvoiceBuckets,
        lo: u32,
        hi: u32,
    ) -> Result<HashSet<u32>> {
        reads::numbers_between(&mut *self.client(), &self.table, buckets, lo, hi)
    }

    fn count_invoices(&self, buckets: &InvoiceBuckets) -> Result<u64> {
        reads::count_invoices(&mut *self.client(), &self.table, buckets)
    }

    fn invoice_bytes(&self, buckets: &InvoiceBuckets) -> Result<u64> {
        reads::invoice_bytes(&mut *self.client(), &self.table, buckets)
    }

    /// The table's size on disk with its indexes and TOAST
    /// (`pg_total_relation_size`); `u64::MAX` when it cannot be read.
    fn size_bound(&self) -> u64 {
        self.client()
            .query_one(
                "SELECT pg_total_relation_size(to_regclass($1))",
                &[&self.table],
            )
            .ok()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map_or(u64::MAX, |n| n as u64)
    }

    fn digest(&self) -> Result<SourceDigest> {
        self.in_snapshot(|tx| reads::walk(tx, &self.table, |_| {}))
    }

    /// A [`PgWitness`] of this database is asked inside the transaction,
    /// under the lock; any other witness is no evidence here.
    fn write_tombstone_if_unchanged(
        &self,
        verified: &SourceDigest,
        since: Option<&dyn Witness>,
    ) -> Result<(TombstoneOutcome, Option<Box<dyn Witness>>)> {
        self.tombstone_transaction(Some(verified), since)
    }

    fn write_tombstone(&self) -> Result<Box<dyn Witness>> {
        match self.tombstone_transaction(None, None)? {
            (_, Some(w)) => Ok(w),
            (outcome, None) => Err(Error::NotOnewayStore {
                path: self.shown.clone(),
                why: format!("could not be sealed: {outcome:?}"),
            }),
        }
    }

    fn identity(&self, buckets: Option<InvoiceBuckets>) -> Result<SourceIdentity> {
        self.in_snapshot(|tx| {
            let kv = reads::Reads {
                client: RefCell::new(tx),
                table: &self.table,
                shown: &self.shown,
            };
            crate::identity::current(&kv, buckets, &self.shown, &self.prefix)
        })
    }

    fn check_identity(
        &self,
        recorded: &SourceIdentity,
        buckets: Option<InvoiceBuckets>,
        native: &Path,
    ) -> Result<()> {
        self.in_snapshot(|tx| {
            let kv = reads::Reads {
                client: RefCell::new(tx),
                table: &self.table,
                shown: &self.shown,
            };
            crate::identity::check(recorded, &kv, buckets, &self.prefix, &self.shown, native)
        })
    }

    /// The other client sessions of this database (`pg_stat_activity`),
    /// except this process's own (named by [`session_marker`]).
    fn other_holders(&self) -> OtherHolders {
        match other_sessions(&mut *self.client()) {
            Ok(s) if s.is_empty() => OtherHolders::Nobody,
            Ok(s) => OtherHolders::Held(describe_sessions(&s, &self.shown)),
            Err(e) => OtherHolders::Unknown(e.to_string()),
        }
    }

    /// Insert and update on the table, and use of its id sequence: what
    /// lnd's `Put` of the tombstone needs.
    fn check_writable(&self) -> Result<()> {
        let row = self
            .client()
            .query_one(
                "SELECT has_table_privilege(to_regclass($1), 'INSERT'), \
                        has_table_privilege(to_regclass($1), 'UPDATE'), \
                        coalesce(has_sequence_privilege(pg_get_serial_sequence($1, 'id'), 'USAGE'), true), \
                        current_user::text",
                &[&self.table],
            )
            .pg(Role::Kv, "reading this user's privileges on the KV table")?;
        let (insert, update, seq, user): (bool, bool, bool, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let lacking: Vec<&str> = [
            (insert, "INSERT"),
            (update, "UPDATE"),
            (seq, "USAGE of its id sequence"),
        ]
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| *what)
        .collect();
        if lacking.is_empty() {
            return Ok(());
        }
        Err(Error::NotWritable {
            path: self.shown.clone(),
            why: format!(
                "PostgreSQL user {user} lacks {} on table {}",
                lacking.join(", "),
                self.table
            ),
        })
    }

    fn stream(&self, batch_size: usize, after: Option<u32>, kind: Kind) -> Result<Stream> {
        super::spawn(self.snapshot()?, batch_size, after, kind)
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>> {
        Ok(Box::new(PgSnapshot::open(
            &self.dsn,
            &self.table,
            self.shown.clone(),
        )?))
    }
}

/// lnd's tombstone written inside the caller's transaction `tx` on the
/// same database (the native store's, so that the tombstone and its
/// `Tombstoned` record commit together).
///
/// `tx` must be `READ COMMITTED` (Postgres's default), or must not have
/// read yet, so that its statements after the lock see every commit
/// before it. Locks the KV table `table` against writers (`SHARE ROW
/// EXCLUSIVE`: readers go on, lnd's writes wait until `tx` ends), then, if
/// the witness `since` (a [`PgWitness`] of this database and table) says
/// nothing was committed since the verified state, or else the source
/// digest computed now equals `verified`, writes lnd's tombstone with
/// lnd's `Put`. Nothing is written otherwise. The caller commits, or rolls
/// back, which leaves no tombstone.
pub fn seal_in(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    verified: &SourceDigest,
    since: Option<&dyn Witness>,
) -> Result<TombstoneOutcome> {
    witness::seal(tx, table, Some(verified), since)
}

/// [`seal_in`], and, when the store is sealed (the tombstone written, or
/// there already over the verified invoices), a witness of the sealed
/// state: marked inside `tx` under its lock, on a session of its own opened
/// from `dsn` before the lock. It speaks for the sealed state once the
/// caller commits `tx`; a caller that rolls back drops it.
pub fn seal_in_witnessed(
    tx: &mut postgres::Transaction<'_>,
    dsn: &Dsn,
    table: &str,
    verified: &SourceDigest,
    since: Option<&dyn Witness>,
) -> Result<(TombstoneOutcome, Option<PgWitness>)> {
    let mut own = dsn.connect().pg(Role::Kv, "")?;
    let db = DbId::read(&mut own, table)?;
    let (outcome, mark) = witness::seal_marked(tx, table, Some(verified), since)?;
    let Some(mark) = mark else {
        return Ok((outcome, None));
    };
    let w = PgWitness::new(own, dsn.clone(), table.to_owned(), db, Some(mark));
    Ok((outcome, Some(w)))
}

/// One other session of the database.
#[derive(Debug)]
struct Session {
    pid: i32,
    application: String,
    user: String,
    from: String,
    since: String,
}

/// The client sessions of the current database other than this process's.
/// A session whose details this user may not see (another user's, without
/// `pg_read_all_stats`) still shows, with what is visible.
fn other_sessions(c: &mut impl GenericClient) -> Result<Vec<Session>> {
    let rows = c
        .query(
            "SELECT pid, coalesce(application_name, ''), coalesce(usename::text, '?'), \
                    CASE WHEN client_addr IS NOT NULL THEN host(client_addr) \
                         WHEN client_port = -1 THEN 'a local socket' ELSE 'an unknown address' END, \
                    coalesce(to_char(backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), 'an unknown time') \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND (backend_type = 'client backend' OR backend_type IS NULL) \
               AND application_name IS DISTINCT FROM $1 \
             ORDER BY pid",
            &[&session_marker()],
        )
        .pg(Role::Kv, "listing the sessions of the database")?;
    Ok(rows
        .iter()
        .map(|r| Session {
            pid: r.get(0),
            application: r.get(1),
            user: r.get(2),
            from: r.get(3),
            since: r.get(4),
        })
        .collect())
}

/// The sessions, as a sentence naming each (never its query).
fn describe_sessions(sessions: &[Session], shown: &Path) -> String {
    let each: Vec<String> = sessions
        .iter()
        .map(|s| {
            let app = if s.application.is_empty() {
                "no application name".to_owned()
            } else {
                format!("application {:?}", s.application)
            };
            format!(
                "pid {} ({app}, user {}, from {}, since {})",
                s.pid, s.user, s.from, s.since
            )
        })
        .collect();
    let n = sessions.len();
    format!(
        "{n} other session{} connected to the database of {}: {}",
        if n == 1 { " is" } else { "s are" },
        shown.display(),
        each.join("; ")
    )
}
