//! Reading the native store back: counts, lnd's sequences, invoices' rows,
//! lnd's contract, and read snapshots. Nothing here writes.

use std::collections::{BTreeMap, HashSet};

use super::Target;
use crate::error::{Context, Result, Role};
use crate::lnd_schema::{self, Stage};
use crate::store::NativeStore;
use crate::workload::invoices::sqlite as invoice_rows;
use crate::workload::invoices::{NativeAmpSet, NativeInvoice};

impl Target {
    /// Adds the AMP sets of `ids` still in `oneway_amp_staging` to their
    /// invoices, sorted as [`native::load`] reads them from
    /// `amp_sub_invoices`.
    fn add_staged(&self, ids: &[i64], loaded: &mut BTreeMap<i64, NativeInvoice>) -> Result<()> {
        let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(());
        };
        if !self.has_table("oneway_amp_staging")? {
            return Ok(());
        }
        let e = |e| self.err("reading the staged AMP sets", e);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT invoice_id, set_id, state, created_at, settled_at, settle_index
                 FROM oneway_amp_staging WHERE invoice_id BETWEEN ?1 AND ?2",
            )
            .map_err(e)?;
        let mut rows = st.query([lo, hi]).map_err(e)?;
        let mut touched = HashSet::new();
        while let Some(r) = rows.next().map_err(e)? {
            let id: i64 = r.get(0).map_err(e)?;
            if let Some(inv) = loaded.get_mut(&id) {
                inv.amp_sets.push(NativeAmpSet {
                    set_id: r.get(1).map_err(e)?,
                    state: r.get(2).map_err(e)?,
                    created_at: r.get(3).map_err(e)?,
                    settled_at: r.get(4).map_err(e)?,
                    settle_index: r.get(5).map_err(e)?,
                });
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

    pub(super) fn has_table(&self, name: &str) -> Result<bool> {
        self.has_object("table", name)
    }

    fn has_object(&self, kind: &str, name: &str) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT count(*) FROM sqlite_master WHERE type = ?1 AND name = ?2")
            .and_then(|mut st| st.query_row([kind, name], |r| r.get::<_, i64>(0)))
            .map(|n| n > 0)
            .ctx(Role::Native, &self.path, "reading the schema")
    }
}

impl Target {
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
        self.conn
            .query_row(
                "SELECT max(coalesce((SELECT max(settle_index) FROM invoices), 0),
                            coalesce((SELECT max(settle_index) FROM amp_sub_invoices), 0))",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .ctx(Role::Native, &self.path, "reading the highest settle index")
    }

    /// The highest add index (native invoice id) copied.
    pub(super) fn highest_add_index(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT coalesce(max(id), 0) FROM invoices", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .ctx(
                Role::Native,
                &self.path,
                "reading the highest copied add index",
            )
    }

    /// Reads back every invoice whose id is in `ids`; with `staged`, their
    /// AMP sets still in the staging table are added as lnd's table would
    /// hold them.
    pub(super) fn load_invoices(
        &self,
        ids: &[i64],
        staged: bool,
    ) -> Result<BTreeMap<i64, NativeInvoice>> {
        let mut loaded = invoice_rows::load_many(&self.conn, ids).ctx(
            Role::Native,
            &self.path,
            "reading invoices back",
        )?;
        if staged {
            self.add_staged(ids, &mut loaded)?;
        }
        Ok(loaded)
    }

    /// The differences from lnd's contract at `stage`, one sentence each
    /// ([`lnd_schema::check`]).
    pub(super) fn contract(&self, stage: Stage, settle_index: u64) -> Result<Vec<String>> {
        lnd_schema::check(&self.conn, stage, settle_index, super::ONEWAY_SCHEMA).ctx(
            Role::Native,
            &self.path,
            "checking lnd's schema and bookkeeping",
        )
    }

    /// Whether every index of [`lnd_schema::files::sqlite_deferred_indexes`]
    /// exists (they are built in one transaction after the copy).
    pub(super) fn indexes_built(&self) -> Result<bool> {
        let statements = lnd_schema::files::sqlite_deferred_indexes();
        let names: Vec<&str> = statements
            .iter()
            .filter_map(|s| lnd_schema::files::index_name(s))
            .collect();
        for name in &names {
            if !self.has_object("index", name)? {
                return Ok(false);
            }
        }
        Ok(!names.is_empty())
    }

    /// Runs `read` inside one read transaction, so that everything it reads
    /// is of one commit even while a `migrate` writes meanwhile.
    pub(super) fn in_snapshot<T>(&self, read: impl FnOnce(&Target) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN DEFERRED").ctx(
            Role::Native,
            &self.path,
            "starting a read",
        )?;
        let result = read(self);
        let _ = self.conn.execute_batch("ROLLBACK");
        result
    }
}
