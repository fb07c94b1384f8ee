//! `oneway verify` on an unfinished migration (`Fresh`, `Migrating`).
//!
//! Before `Verified` most of what a full comparison would call a difference
//! is the migration's own work still to do: invoices after the cursor are
//! not copied yet, AMP sets wait in `oneway_amp_staging` for the index
//! build, copies whose source changed since will be re-copied. This pass
//! reports those as progress and compares only what is final: the copies
//! whose source is unchanged since they were copied, field by field (their
//! staged AMP sets included, where they are), plus the store-wide counts
//! that hold at every commit. Everything is read in one snapshot of each
//! store, so a `migrate` running meanwhile cannot make it see half a batch.

use std::collections::HashSet;

use super::{is_current, map_range, Coverage, Phase, Run, Target, VerifyReport};
use crate::error::{Mismatch, Result};
use crate::fsm::State;
use crate::native::{self, NativeAmpSet, NativeInvoice};
use crate::reader::{self, Msg, Prepared};

/// Mismatches listed in a report (as the full comparison lists).
const MAX_MISMATCHES_SHOWN: usize = 20;

impl Run<'_> {
    /// The read-only comparison of an unfinished migration. `None` when the
    /// store is no longer unfinished once read in a snapshot (a running
    /// `migrate` reached `Verified` meanwhile): the caller compares it in
    /// full.
    pub(super) fn verify_unfinished(&mut self, t: &Target) -> Result<Option<VerifyReport>> {
        t.conn()
            .execute_batch("BEGIN DEFERRED")
            .map_err(|e| t.err("starting a read", e))?;
        let result = self.verify_unfinished_in_snapshot(t);
        let _ = t.conn().execute_batch("ROLLBACK");
        result
    }

    fn verify_unfinished_in_snapshot(&mut self, t: &Target) -> Result<Option<VerifyReport>> {
        // The first read opens the native snapshot: the state, the cursor,
        // the copy map and the rows below are all of one commit.
        let Some(p) = t.load()? else {
            return Ok(None);
        };
        if !matches!(p.state, State::Fresh | State::Migrating) {
            return Ok(None);
        }
        let staging = has_table(t, "oneway_amp_staging")?;
        let mut coverage = Coverage {
            state: p.state,
            complete: false,
            copied: t.count("oneway_invoice_map")?,
            not_copied_yet: 0,
            compared: 0,
            staged_amp_sets: if staging {
                t.count("oneway_amp_staging")?
            } else {
                0
            },
            indexes_built: indexes_built(t)?,
            cursor: p.cursor.map(|c| format!("{c:08x}")),
        };
        let mut stream = self.stream(None, reader::Kind::Verify)?;
        let digest = self.first_digest(&mut stream)?;
        self.m.progress.start(Phase::Verify, digest.invoices);
        let mut report = VerifyReport::starting(&digest.sha256);
        let mut children = native::ChildRows::default();
        let mut prev: Option<u32> = None;
        loop {
            let batch = match stream.next() {
                Some(Ok(Msg::Batch(b))) => b,
                Some(Ok(Msg::RowsDigest(d))) => {
                    report.target_digest = d;
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => Vec::new(),
            };
            let last = batch.last().map(|b| b.num);
            let mapped =
                map_range(t.conn(), prev, last).map_err(|e| t.err("reading the copy map", e))?;
            let present: HashSet<u32> = batch.iter().map(|p| p.num).collect();
            // Copies of invoices deleted from the source since: the
            // migration drops them.
            report.outdated += mapped.keys().filter(|k| !present.contains(k)).count() as u64;
            let mut matched: Vec<&Prepared> = Vec::with_capacity(batch.len());
            for p in &batch {
                report.invoices += 1;
                report.max_settle_index = report
                    .max_settle_index
                    .max(p.native.max_settle_index() as u64);
                if is_current(&mapped, p) {
                    coverage.compared += 1;
                    children.add(p.native.child_rows());
                    matched.push(p);
                } else if mapped.contains_key(&p.num) {
                    report.outdated += 1;
                } else {
                    coverage.not_copied_yet += 1;
                }
            }
            let ids: Vec<i64> = matched.iter().map(|p| p.native.id).collect();
            let mut loaded =
                native::load_many(t.conn(), &ids).map_err(|e| t.err("reading invoices back", e))?;
            if staging {
                add_staged(t, &ids, &mut loaded)?;
            }
            for p in matched {
                let diffs = match loaded.get(&p.native.id) {
                    Some(got) => native::diff(&p.native, got),
                    None => vec![format!(
                        "invoices row {} is missing from the native store",
                        p.native.id
                    )],
                };
                for d in diffs {
                    report.mismatch_count += 1;
                    if report.mismatches.len() < MAX_MISMATCHES_SHOWN {
                        report.mismatches.push(Mismatch {
                            invoice_key: format!("{:08x}", p.num),
                            detail: d,
                        });
                    }
                }
            }
            let n = batch.len() as u64;
            stream.recycle(batch);
            self.m.progress.advance(n);
            match last {
                Some(l) => prev = Some(l),
                None => break,
            }
        }
        self.m.progress.finish();
        // Every committed batch writes a copy and its map row together.
        let native_count = t.count("invoices")?;
        if native_count != coverage.copied {
            report.mismatch_count += 1;
            report.mismatches.push(Mismatch {
                invoice_key: "*".into(),
                detail: format!(
                    "the native store has {native_count} invoices but its copy map {}",
                    coverage.copied
                ),
            });
        }
        if report.outdated == 0 {
            // Every copy is current, so the child tables must hold exactly
            // the rows the compared copies own (staged AMP sets included).
            let found =
                super::child_rows_differ(t, children.tables(), coverage.staged_amp_sets, "copied")?;
            report.mismatch_count += found.len() as u64;
            report
                .mismatches
                .extend(found.into_iter().map(|detail| Mismatch {
                    invoice_key: "*".into(),
                    detail,
                }));
        }
        report.coverage = coverage;
        Ok(Some(report))
    }
}

/// Adds the AMP sets of `ids` still in `oneway_amp_staging` to their
/// invoices, as [`native::load`] reads them from `amp_sub_invoices`.
fn add_staged(
    t: &Target,
    ids: &[i64],
    loaded: &mut std::collections::BTreeMap<i64, NativeInvoice>,
) -> Result<()> {
    let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
        return Ok(());
    };
    let e = |e| t.err("reading the staged AMP sets", e);
    let mut st = t
        .conn()
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

fn has_table(t: &Target, name: &str) -> Result<bool> {
    t.conn()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| t.err("reading the schema", e))
}

/// Whether every index of [`crate::lnd_schema::LND_INDEXES`] exists (they
/// are built in one transaction after the copy).
pub(super) fn indexes_built(t: &Target) -> Result<bool> {
    let names: Vec<&str> = crate::lnd_schema::LND_INDEXES
        .split("IF NOT EXISTS ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let mut st = t
        .conn()
        .prepare_cached("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1")
        .map_err(|e| t.err("reading the schema", e))?;
    for name in &names {
        let n: i64 = st
            .query_row([name], |r| r.get(0))
            .map_err(|e| t.err("reading the schema", e))?;
        if n == 0 {
            return Ok(false);
        }
    }
    Ok(!names.is_empty())
}
