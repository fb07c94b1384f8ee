//! Reading the Postgres native store back: the copy map, counts, lnd's
//! sequences, invoices' rows, lnd's indexes, and read snapshots. Nothing
//! here writes.

use std::collections::{BTreeMap, HashSet};

use postgres::fallible_iterator::FallibleIterator;

use super::batch::{bounds, copy_map_range};
use super::prefetch::Prefetcher;
use super::PgTarget;
use crate::error::{PgContext, Result, Role};
use crate::postgres::lnd_schema::{
    self as pg_schema, COPY_FOREIGN_KEYS, COPY_INDEXES, COPY_UNIQUES,
};
use crate::postgres::load;
use crate::store::{CopyMap, CopyVisitor, NativeStore};
use crate::workload::invoices::{ChildRows, NativeInvoice};

/// The invoices `ids` read back with all their rows, through `conn`: one
/// range of ids when they are nearly contiguous (a batch's are), else one
/// per id.
pub(super) fn load_ids(
    conn: &mut impl postgres::GenericClient,
    ids: &[i64],
) -> crate::postgres::PgResult<BTreeMap<i64, NativeInvoice>> {
    let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(BTreeMap::new());
    };
    let wanted: HashSet<i64> = ids.iter().copied().collect();
    let span = i128::from(*hi) - i128::from(*lo) + 1;
    let ranges: Vec<(i64, i64)> = if span <= 2 * ids.len() as i128 + 64 {
        vec![(*lo, *hi)]
    } else {
        wanted.iter().map(|id| (*id, *id)).collect()
    };
    let mut out = BTreeMap::new();
    for (from, to) in ranges {
        for inv in load::load_range(conn, from, to)? {
            if wanted.contains(&inv.id) {
                out.insert(inv.id, inv);
            }
        }
    }
    Ok(out)
}

impl PgTarget {
    /// The copy-map rows with `lo < kv_num <= hi` (`None`: unbounded).
    pub(super) fn copy_map(&self, lo: Option<u32>, hi: Option<u32>) -> Result<CopyMap> {
        copy_map_range(&mut *self.conn.borrow_mut(), lo, hi)
            .pg(Role::Native, "reading the copy map")
    }

    /// Up to `limit` copied invoice numbers after `after`, in order.
    pub(super) fn copied_after(&self, after: Option<u32>, limit: usize) -> Result<Vec<u32>> {
        let (lo, _) = bounds(after, None);
        Ok(self
            .conn
            .borrow_mut()
            .query(
                "SELECT kv_num FROM oneway_invoice_map WHERE kv_num > $1 ORDER BY kv_num LIMIT $2",
                &[&lo, &(limit as i64)],
            )
            .pg(Role::Native, "reading the copy map")?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u32)
            .collect())
    }

    /// Whether any copy was read back equal already (`checked`).
    pub(super) fn any_copy_checked(&self) -> Result<bool> {
        self.settle_marks()?;
        Ok(self
            .conn
            .borrow_mut()
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM oneway_invoice_map WHERE checked)",
                &[],
            )
            .pg(Role::Native, "reading the copy map")?
            .get(0))
    }

    /// Calls `f(kv_num, digest, checked)` for every copy in key order until
    /// it breaks, streaming the rows (the driver reads them from the socket
    /// as `f` consumes them); returns whether it ran to the end.
    pub(super) fn for_each_copy(&self, f: &mut CopyVisitor<'_>) -> Result<bool> {
        self.settle_marks()?;
        let act = "reading the copy map";
        let mut conn = self.conn.borrow_mut();
        let mut rows = conn
            .query_raw(
                "SELECT kv_num, digest, checked FROM oneway_invoice_map ORDER BY kv_num",
                std::iter::empty::<i64>(),
            )
            .pg(Role::Native, act)?;
        while let Some(row) = rows.next().pg(Role::Native, act)? {
            let num = row.get::<_, i64>(0) as u32;
            if f(num, row.get::<_, &[u8]>(1), row.get(2)).is_break() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The child rows the copies own, by the map's per-invoice counts.
    pub(super) fn owned_child_rows(&self) -> Result<[(&'static str, u64); 5]> {
        let r = self
            .conn
            .borrow_mut()
            .query_one(
                "SELECT coalesce(sum(features), 0)::bigint, coalesce(sum(htlcs), 0)::bigint,
                        coalesce(sum(custom_records), 0)::bigint, coalesce(sum(amp_sets), 0)::bigint,
                        coalesce(sum(amp_htlcs), 0)::bigint
                 FROM oneway_invoice_map",
                &[],
            )
            .pg(Role::Native, "summing the copies' rows")?;
        let tables = ChildRows::default().tables();
        Ok(std::array::from_fn(|i| {
            (tables[i].0, r.get::<_, i64>(i) as u64)
        }))
    }

    /// Rows of one of lnd's or oneway's tables.
    pub(super) fn count(&self, table: &str) -> Result<u64> {
        Ok(self
            .conn
            .borrow_mut()
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .pg(Role::Native, "counting rows")?
            .get::<_, i64>(0) as u64)
    }

    /// AMP sets waiting in the staging table for the index build (0 when
    /// the table does not exist).
    pub(super) fn staged_amp_sets(&self) -> Result<u64> {
        if !self.has_table("oneway_amp_staging")? {
            return Ok(0);
        }
        self.count("oneway_amp_staging")
    }

    /// The highest settle index a copied invoice or AMP sub-invoice carries.
    pub(super) fn highest_settle_index(&self) -> Result<u64> {
        Ok(self
            .conn
            .borrow_mut()
            .query_one(
                "SELECT greatest(coalesce((SELECT max(settle_index) FROM invoices), 0),
                                 coalesce((SELECT max(settle_index) FROM amp_sub_invoices), 0))",
                &[],
            )
            .pg(Role::Native, "reading the highest settle index")?
            .get::<_, i64>(0) as u64)
    }

    /// The highest add index (native invoice id) copied.
    pub(super) fn highest_add_index(&self) -> Result<u64> {
        Ok(self
            .conn
            .borrow_mut()
            .query_one("SELECT coalesce(max(id), 0) FROM invoices", &[])
            .pg(Role::Native, "reading the highest copied add index")?
            .get::<_, i64>(0) as u64)
    }

    /// Reads back every invoice whose id is in `ids` (times as Postgres
    /// keeps them: to the microsecond, [`load::as_stored`]); with `staged`,
    /// their AMP sets still in the staging table are added as lnd's table
    /// would hold them. A dense set of ids is read as one range, a sparse
    /// one invoice by invoice.
    pub(super) fn load_invoices(
        &self,
        ids: &[i64],
        staged: bool,
    ) -> Result<BTreeMap<i64, NativeInvoice>> {
        let ahead = match self.prefetch.borrow_mut().as_mut() {
            Some(p) if !self.in_read.get() => p.take(ids),
            _ => None,
        };
        let mut out = match ahead {
            Some(answer) => {
                let wanted: HashSet<i64> = ids.iter().copied().collect();
                let mut out = answer.pg(Role::Native, "")?;
                out.retain(|id, _| wanted.contains(id));
                out
            }
            None => load_ids(&mut *self.conn.borrow_mut(), ids).pg(Role::Native, "")?,
        };
        if staged {
            self.add_staged(ids, &mut out)?;
        }
        Ok(out)
    }

    /// Starts reading back `ids` on the read-ahead session, for a
    /// `load_invoices` soon (see `super::prefetch`). Not inside
    /// [`PgTarget::in_snapshot`].
    pub(super) fn prefetch(&self, ids: &[i64]) -> Result<()> {
        if self.in_read.get() {
            return Ok(());
        }
        let mut slot = self.prefetch.borrow_mut();
        if slot.is_none() {
            *slot = Some(Prefetcher::start(&self.dsn, &self.path)?);
        }
        if let Some(p) = slot.as_mut() {
            p.ask(ids.to_vec());
        }
        Ok(())
    }

    /// Drops the read-ahead answers still owed and waits for the marks
    /// made meanwhile ([`PgTarget::settle_marks`]): called before every
    /// write.
    pub(super) fn settle_read_ahead(&self) -> Result<()> {
        if let Some(p) = self.prefetch.borrow_mut().as_mut() {
            p.discard();
        }
        self.settle_marks()
    }

    /// Waits for the marks committed in the background, failing with the
    /// first that failed: called before every read of the marks (and, by
    /// [`PgTarget::settle_read_ahead`], before every write).
    pub(super) fn settle_marks(&self) -> Result<()> {
        match self.prefetch.borrow_mut().as_mut() {
            Some(p) => p.settle(),
            None => Ok(()),
        }
    }

    /// Adds the AMP sets of `ids` still in `oneway_amp_staging` to their
    /// invoices, sorted by set id as lnd's table is read.
    fn add_staged(&self, ids: &[i64], loaded: &mut BTreeMap<i64, NativeInvoice>) -> Result<()> {
        if !self.has_table("oneway_amp_staging")? {
            return Ok(());
        }
        let rows = self
            .conn
            .borrow_mut()
            .query(
                "SELECT invoice_id, set_id, state, created_at, settled_at, settle_index
                 FROM oneway_amp_staging WHERE invoice_id = ANY($1)",
                &[&ids],
            )
            .pg(Role::Native, "reading the staged AMP sets")?;
        let mut touched = HashSet::new();
        for r in rows {
            let id: i64 = r.get(0);
            if let Some(inv) = loaded.get_mut(&id) {
                inv.amp_sets.push(crate::postgres::load::amp_set(&r));
                touched.insert(id);
            }
        }
        for id in touched {
            if let Some(inv) = loaded.get_mut(&id) {
                inv.amp_sets.sort_by(|a, b| a.set_id.cmp(&b.set_id));
            }
        }
        Ok(())
    }

    /// Whether every index, unique constraint and foreign key the bulk copy
    /// left out exists (they are built in one transaction after the copy).
    pub(super) fn indexes_built(&self) -> Result<bool> {
        let mut conn = self.conn.borrow_mut();
        let act = "looking for lnd's indexes";
        for (name, _, _) in COPY_INDEXES {
            let found = conn
                .query_opt(
                    "SELECT 1 FROM pg_class WHERE relname = $1 AND relkind = 'i'
                       AND relnamespace = current_schema()::regnamespace",
                    &[&name],
                )
                .pg(Role::Native, act)?;
            if found.is_none() {
                return Ok(false);
            }
        }
        for (name, table, _) in COPY_UNIQUES.iter().chain(&COPY_FOREIGN_KEYS) {
            if !pg_schema::has_constraint(&mut *conn, name, table).pg(Role::Native, act)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs `read` inside one `REPEATABLE READ` read-only transaction, so
    /// that everything it reads is of one commit even while a `migrate`
    /// writes meanwhile; rolled back afterwards.
    pub(super) fn in_snapshot(
        &self,
        read: &mut dyn FnMut(&dyn NativeStore) -> Result<()>,
    ) -> Result<()> {
        self.settle_marks()?;
        self.conn
            .borrow_mut()
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .pg(Role::Native, "starting a read")?;
        self.in_read.set(true);
        let result = read(self);
        self.in_read.set(false);
        let _ = self.conn.borrow_mut().batch_execute("ROLLBACK");
        result
    }
}
