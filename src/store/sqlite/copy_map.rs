//! The copy map (`oneway_invoice_map`): which KV invoice was copied to
//! which native invoice, from which source bytes, owning how many child
//! rows, and whether its rows were read back equal.
//!
//! Invariants (the catch-up verification rests on them, spec §7.1):
//! - every write of an invoice's rows replaces its map row, with
//!   `checked = 0`, in the same transaction ([`super::batch`]);
//! - `checked = 1` is written only after a comparison found the rows equal
//!   to the source with the row's `digest` ([`Target::mark_checked`],
//!   [`Target::mark_equal`]), and the digest is part of the condition, so a
//!   copy replaced meanwhile is never marked.

use std::ops::ControlFlow;

use rusqlite::params;

use super::Target;
use crate::error::{Context, Error, Result, Role};
use crate::reader::Prepared;
use crate::store::CopyMap;
use crate::workload::invoices::ChildRows;

/// `lo < kv_num <= hi` as SQL bounds (`None`: unbounded).
pub(super) fn bounds(lo: Option<u32>, hi: Option<u32>) -> (i64, i64) {
    (lo.map_or(-1, i64::from), hi.map_or(i64::MAX, i64::from))
}

/// The copy-map rows with `lo < kv_num <= hi` on `conn`.
pub(super) fn range(
    conn: &rusqlite::Connection,
    lo: Option<u32>,
    hi: Option<u32>,
) -> rusqlite::Result<CopyMap> {
    let mut st = conn.prepare_cached(
        "SELECT kv_num, invoice_id, digest FROM oneway_invoice_map WHERE kv_num > ?1 AND kv_num <= ?2",
    )?;
    let (lo, hi) = bounds(lo, hi);
    let rows = st.query_map([lo, hi], |r| {
        Ok((r.get::<_, i64>(0)? as u32, (r.get(1)?, r.get(2)?)))
    })?;
    rows.collect()
}

impl Target {
    /// The copy-map rows with `lo < kv_num <= hi` (`None`: unbounded).
    pub(super) fn copy_map(&self, lo: Option<u32>, hi: Option<u32>) -> Result<CopyMap> {
        range(self.conn(), lo, hi).ctx(Role::Native, &self.path, "reading the copy map")
    }

    /// Up to `limit` copied invoice numbers after `after`, in order.
    pub(super) fn copied_after(&self, after: Option<u32>, limit: usize) -> Result<Vec<u32>> {
        let (lo, _) = bounds(after, None);
        self.conn()
            .prepare_cached(
                "SELECT kv_num FROM oneway_invoice_map WHERE kv_num > ?1 ORDER BY kv_num LIMIT ?2",
            )
            .and_then(|mut st| {
                st.query_map(params![lo, limit as i64], |r| {
                    r.get::<_, i64>(0).map(|k| k as u32)
                })?
                .collect()
            })
            .ctx(Role::Native, &self.path, "reading the copy map")
    }

    /// Whether any copy was read back equal already (`checked`).
    pub(super) fn any_copy_checked(&self) -> Result<bool> {
        self.conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM oneway_invoice_map WHERE checked = 1)",
                [],
                |r| r.get(0),
            )
            .ctx(Role::Native, &self.path, "reading the copy map")
    }

    /// Calls `f(kv_num, digest, checked)` for every copy in key order until
    /// it breaks; returns whether it ran to the end.
    pub(super) fn for_each_copy(
        &self,
        mut f: impl FnMut(u32, &[u8], bool) -> ControlFlow<()>,
    ) -> Result<bool> {
        let e = |e| self.err("reading the copy map", e);
        let mut st = self
            .conn()
            .prepare("SELECT kv_num, digest, checked FROM oneway_invoice_map ORDER BY kv_num")
            .map_err(e)?;
        let mut rows = st.query([]).map_err(e)?;
        while let Some(row) = rows.next().map_err(e)? {
            let num = row.get::<_, i64>(0).map_err(e)? as u32;
            let digest: Vec<u8> = row.get(1).map_err(e)?;
            let checked: bool = row.get(2).map_err(e)?;
            if f(num, &digest, checked).is_break() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The child rows the copies own, by the map's per-invoice counts.
    pub(super) fn owned_child_rows(&self) -> Result<[(&'static str, u64); 5]> {
        let owned: [i64; 5] = self
            .conn()
            .query_row(
                "SELECT coalesce(sum(features), 0), coalesce(sum(htlcs), 0), coalesce(sum(custom_records), 0),
                        coalesce(sum(amp_sets), 0), coalesce(sum(amp_htlcs), 0) FROM oneway_invoice_map",
                [],
                |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]),
            )
            .ctx(Role::Native, &self.path, "summing the copies' rows")?;
        let tables = ChildRows::default().tables();
        Ok(std::array::from_fn(|i| (tables[i].0, owned[i] as u64)))
    }

    /// Marks the copies in `(after, last]` checked: their rows were just read
    /// back and found equal. Its own small transaction.
    pub(super) fn mark_checked(&mut self, after: Option<u32>, last: Option<u32>) -> Result<()> {
        let (lo, _) = bounds(after, None);
        let hi = last.map_or(-1, i64::from);
        self.write(None, "marking verified copies", |tx, path| {
            tx.prepare_cached(
                "UPDATE oneway_invoice_map SET checked = 1
                 WHERE kv_num > ?1 AND kv_num <= ?2 AND checked = 0",
            )
            .and_then(|mut st| st.execute([lo, hi]))
            .ctx(Role::Native, path, "marking verified copies")?;
            Ok(())
        })
    }

    /// Marks each of `equal` checked if its map row still has that digest.
    pub(super) fn mark_equal(&mut self, equal: &[&Prepared]) -> Result<()> {
        self.write(None, "marking verified copies", |tx, path| {
            let e = |e| Error::sqlite(Role::Native, path, "marking verified copies", e);
            let mut st = tx
                .prepare_cached(
                    "UPDATE oneway_invoice_map SET checked = 1 WHERE kv_num = ?1 AND digest = ?2",
                )
                .map_err(e)?;
            for p in equal {
                st.execute(params![p.num, p.digest.as_slice()]).map_err(e)?;
            }
            Ok(())
        })
    }
}
