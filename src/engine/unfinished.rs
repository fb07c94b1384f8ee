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

use super::run::Run;
use super::verify::{add_store_wide, compare, count_invoice, next_batch, stale_copies};
use super::{Coverage, Phase, VerifyReport};
use crate::backends::Backends;
use crate::error::Result;
use crate::fsm::State;
use crate::source::{self, Prepared};
use crate::store::{is_current, NativeStore};
use crate::workload::Workload;

impl<W: Backends> Run<'_, W> {
    /// The read-only comparison of an unfinished migration. `None` when the
    /// store is no longer unfinished once read in a snapshot (a running
    /// `migrate` reached `Verified` meanwhile): the caller compares it in
    /// full.
    pub(super) fn verify_unfinished(
        &mut self,
        t: &dyn NativeStore<W>,
    ) -> Result<Option<VerifyReport>> {
        let mut report = None;
        t.in_snapshot(&mut |t| {
            report = self.verify_unfinished_in_snapshot(t)?;
            Ok(())
        })?;
        Ok(report)
    }

    fn verify_unfinished_in_snapshot(
        &mut self,
        t: &dyn NativeStore<W>,
    ) -> Result<Option<VerifyReport>> {
        // The first read opens the native snapshot: the state, the cursor,
        // the copy map and the rows below are all of one commit.
        let Some(row) = t.load()? else {
            return Ok(None);
        };
        if !matches!(row.state, State::Fresh | State::Migrating) {
            return Ok(None);
        }
        let mut coverage = Coverage {
            state: row.state,
            complete: false,
            copied: t.copies()?,
            not_copied_yet: 0,
            compared: 0,
            staged_amp_sets: t.staged_amp_sets()?,
            indexes_built: t.indexes_built()?,
            cursor: row.cursor.map(|c| format!("{c:08x}")),
        };
        let mut stream = self.stream(None, source::Kind::Verify)?;
        let digest = self.first_digest(&mut stream)?;
        self.m.progress.start(Phase::Verify, digest.invoices);
        let mut report = VerifyReport::starting(&digest.sha256);
        let mut children = <W as Workload>::Children::default();
        let mut prev: Option<u32> = None;
        loop {
            let batch = next_batch(&mut stream, &mut report)?;
            let last = batch.last().map(|b| b.num);
            let mut tally = Tally {
                report: &mut report,
                coverage: &mut coverage,
                children: &mut children,
            };
            compare_final_copies(t, &batch, prev, last, &mut tally)?;
            let n = batch.len() as u64;
            stream.recycle(batch);
            self.m.progress.advance(n);
            match last {
                Some(l) => prev = Some(l),
                None => break,
            }
        }
        self.m.progress.finish();
        check_totals(t, &mut report, &coverage, &children)?;
        report.coverage = coverage;
        Ok(Some(report))
    }
}

/// What an unfinished verification has counted so far.
struct Tally<'a, W: Workload> {
    report: &'a mut VerifyReport,
    coverage: &'a mut Coverage,
    children: &'a mut W::Children,
}

/// Compares the copies of one batch (the source's invoices in `(after,
/// last]`) that are final: current copies field by field, their staged AMP
/// sets where they are; counts the others as outdated or not copied yet.
fn compare_final_copies<W: Workload>(
    t: &dyn NativeStore<W>,
    batch: &[Prepared<W>],
    after: Option<u32>,
    last: Option<u32>,
    tally: &mut Tally<'_, W>,
) -> Result<()> {
    let mapped = t.copy_map(after, last)?;
    let report = &mut *tally.report;
    // Copies of invoices deleted from the source since: the migration
    // drops them.
    report.outdated += stale_copies(&mapped, batch);
    let mut matched: Vec<&Prepared<W>> = Vec::with_capacity(batch.len());
    for p in batch {
        count_invoice(report, p);
        if is_current(&mapped, p) {
            tally.coverage.compared += 1;
            W::add_children(tally.children, W::children(&p.native));
            matched.push(p);
        } else if mapped.contains_key(&p.num) {
            report.outdated += 1;
        } else {
            tally.coverage.not_copied_yet += 1;
        }
    }
    let ids: Vec<i64> = matched.iter().map(|p| p.id()).collect();
    let loaded = t.load_invoices(&ids, true)?;
    for p in matched {
        compare(t, report, p, &loaded);
    }
    Ok(())
}

/// The store-wide counts that hold at every commit: a copy and its map row
/// are written together; with every copy current, the child tables hold
/// exactly the rows the compared copies own (staged AMP sets included).
fn check_totals<W: Workload>(
    t: &dyn NativeStore<W>,
    report: &mut VerifyReport,
    coverage: &Coverage,
    children: &W::Children,
) -> Result<()> {
    let native_count = t.native_invoices()?;
    if native_count != coverage.copied {
        let found = format!(
            "the native store has {native_count} invoices but its copy map {}",
            coverage.copied
        );
        add_store_wide(report, vec![found]);
    }
    if report.outdated == 0 {
        let staged = coverage.staged_amp_sets;
        let found = t.child_rows_differ(W::child_tables(children), staged, "copied")?;
        add_store_wide(report, found);
    }
    Ok(())
}
