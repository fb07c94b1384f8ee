//! The catch-up verification: as strong as a full pass, reading back only
//! what changed since copies were verified (spec/state-machine.md §7.1).

use std::ops::ControlFlow;

use super::run::{Prescan, Run};
use super::verify::{add_store_wide, compare};
use super::{Phase, VerifyReport};
use crate::backends::Backends;
use crate::error::{Error, Result};
use crate::source::{InvoiceBuckets, InvoiceDigests, Prepared, Snapshot};
use crate::store::{BatchKind, NativeStore};

impl<W: Backends> Run<'_, W> {
    /// The catch-up verification, when copies were verified before (a
    /// resumed or re-synced run): `None` when there are none yet, or when too
    /// much changed for it.
    pub(super) fn catch_up_first(
        &mut self,
        t: &mut dyn NativeStore<W>,
    ) -> Result<Option<VerifyReport>> {
        if !t.any_copy_checked()? {
            return Ok(None);
        }
        // Copies were verified, so the bulk copy ended and the index build
        // ran or is to run again (idempotent): lnd's indexes exist before
        // the catch-up writes directly into lnd's tables.
        self.build_indexes(t)?;
        let Some(report) = self.catch_up(t)? else {
            return Ok(None);
        };
        if report.mismatch_count > 0 {
            return Err(Error::VerificationFailed {
                total: report.mismatch_count,
                mismatches: report.mismatches,
            });
        }
        Ok(Some(report))
    }

    /// The catch-up verification: as strong as a full pass, reading back
    /// only what changed. One snapshot of the source gives the source digest
    /// and every invoice's copy digest without decoding
    /// ([`Snapshot::invoice_digests`]). A copy whose digest is unchanged and
    /// which is `checked` equals its source already (the copy map's
    /// invariants, `store.rs`); every other invoice is decoded from the same
    /// snapshot, re-copied when outdated, and read back and compared field by
    /// field; copies of invoices gone from the snapshot are removed. The
    /// per-invoice child-row counts of the map then prove, as
    /// `workload::invoices::ChildRows` does for a full pass, that no row
    /// belongs to no invoice. Returns `None`, having written nothing, when
    /// more than a tenth of the invoices need this (a full pass is as cheap
    /// then) or the snapshot holds a row the walk cannot place. The argument is in
    /// `spec/state-machine.md` §7.1.
    pub(super) fn catch_up(&mut self, t: &mut dyn NativeStore<W>) -> Result<Option<VerifyReport>> {
        if self.buckets.is_none() {
            return Ok(None);
        };
        let (mut dec, scan) = self.take_prescan_or_scan()?;
        let plan = if scan.irregular {
            None
        } else {
            catch_up_plan(t, &scan)?
        };
        let Some(CatchUpPlan { todo, gone }) = plan else {
            dec.end_read()?;
            return Ok(None);
        };
        self.m
            .progress
            .start(Phase::Verify, (todo.len() + gone.len()) as u64);
        for &num in &gone {
            let outcome = self.write(t, num.checked_sub(1), Some(num), &[], BatchKind::Repair)?;
            debug_assert_eq!(outcome.written, 0);
            self.m.progress.advance(1);
        }
        let mut report = VerifyReport {
            invoices: scan.invoices.len() as u64,
            ..VerifyReport::starting(&scan.source.sha256)
        };
        let Some(prepared) = self.recopy_changed(t, &mut *dec, &todo)? else {
            dec.end_read()?;
            return Ok(None);
        };
        self.compare_and_mark(t, &prepared, &mut report)?;
        let version = dec.version()?;
        dec.end_read()?;
        self.m.progress.finish();
        self.check_row_counts(t, &mut report)?;
        report.max_settle_index = self.expected_settle_index(t)?;
        self.verified = if report.mismatch_count == 0 {
            Some(dec.into_witness(version))
        } else {
            None
        };
        tracing::info!(
            invoices = report.invoices,
            verified_again = todo.len(),
            removed = gone.len(),
            "catch-up verification done"
        );
        Ok(Some(report))
    }

    /// Decodes the invoices `todo` from the decoder's snapshot and re-copies
    /// those whose copy is missing or outdated; `None` when the reader's
    /// digest of one differs from the walk's (trust neither shortcut then).
    fn recopy_changed(
        &mut self,
        t: &mut dyn NativeStore<W>,
        dec: &mut dyn Snapshot<W>,
        todo: &[(u32, Option<[u8; 32]>)],
    ) -> Result<Option<Vec<Prepared<W>>>> {
        let mut prepared = Vec::with_capacity(todo.len());
        for &(num, want) in todo {
            let after = num.checked_sub(1);
            let Some(p) = dec.batch(after, 1)?.into_iter().find(|p| p.num == num) else {
                continue; // unreachable: the walk saw it in this snapshot
            };
            if want.is_some_and(|d| d != p.digest) {
                tracing::warn!(invoice = %format!("{num:08x}"), "catch-up digest differs from the reader's; verifying fully");
                return Ok(None);
            }
            if want.is_none() || !t.copy_is_current(&p)? {
                let one = std::slice::from_ref(&p);
                let outcome = self.write(t, after, Some(num), one, BatchKind::Repair)?;
                self.report.copied_this_run += outcome.written;
            }
            prepared.push(p);
            self.m.progress.advance(1);
        }
        Ok(Some(prepared))
    }

    /// A decoder inside a read transaction and the digests of its snapshot:
    /// the scan the tombstone step made (`prescan`) when nothing has been
    /// committed to the KV store since (its snapshot is then this one), or
    /// a new scan.
    pub(super) fn take_prescan_or_scan(
        &mut self,
    ) -> Result<(Box<dyn Snapshot<W>>, InvoiceDigests)> {
        if let Some(mut pre) = self.prescan.take() {
            pre.dec.begin_read()?;
            let now = pre.dec.version()?;
            tracing::debug!(then = %pre.version, %now, "the tombstone step's scan");
            if now == pre.version {
                tracing::debug!("KV store untouched since the tombstone step's scan; reusing it");
                return Ok((pre.dec, pre.scan));
            }
            pre.dec.end_read()?;
        }
        let Some(buckets) = self.buckets else {
            unreachable!("catch-up needs the invoices bucket");
        };
        let mut dec = self.source.snapshot()?;
        dec.begin_read()?;
        let scan = dec.invoice_digests(&buckets)?;
        Ok((dec, scan))
    }

    /// One snapshot's digests, with the connection kept (outside its read
    /// transaction) so that a later step can tell whether anything was
    /// committed since ([`Prescan`]).
    pub(super) fn scan_source(&self, buckets: &InvoiceBuckets) -> Result<Prescan<W>> {
        let mut dec = self.source.snapshot()?;
        dec.begin_read()?;
        let scan = dec.invoice_digests(buckets)?;
        let version = dec.version()?;
        dec.end_read()?;
        Ok(Prescan { dec, scan, version })
    }

    /// Reads the rows of `prepared` back, compares each with its source,
    /// records differences in `report`, and marks the equal copies checked
    /// (one transaction; `digest` in the condition, so a copy replaced
    /// meanwhile is not marked).
    pub(super) fn compare_and_mark(
        &self,
        t: &mut dyn NativeStore<W>,
        prepared: &[Prepared<W>],
        report: &mut VerifyReport,
    ) -> Result<()> {
        let ids: Vec<i64> = prepared.iter().map(|p| p.id()).collect();
        let loaded = t.load_invoices(&ids, false)?;
        let equal: Vec<&Prepared<W>> = prepared
            .iter()
            .filter(|p| compare(&*t, report, p, &loaded))
            .collect();
        t.mark_equal(&equal)
    }

    /// The store-wide checks of a catch-up: as many copies and native
    /// invoices as source invoices, and every child table holding exactly
    /// the rows the copies own by the map's per-invoice counts.
    pub(super) fn check_row_counts(
        &self,
        t: &dyn NativeStore<W>,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let (native_count, map_count) = (t.native_invoices()?, t.copies()?);
        let mut found = Vec::new();
        if native_count != report.invoices || map_count != report.invoices {
            found.push(format!(
                "the source has {} invoices but the native store has {native_count} (copy map {map_count})",
                report.invoices
            ));
        }
        found.extend(t.child_rows_differ(t.owned_child_rows()?, 0, "verified")?);
        add_store_wide(report, found);
        Ok(())
    }
}

/// Whether the copy map holds `p` as it is now: mapped to the same native id,
/// from source bytes with the same digest.
/// What a catch-up must look at, from the copy map against one snapshot's
/// digests: (invoices to decode and compare, with their walk digest;
/// copies whose invoice is gone). `None` when that is more than a tenth of
/// the invoices (and more than a thousand).
#[allow(clippy::type_complexity)]
fn catch_up_plan<W: Workload>(
    t: &dyn NativeStore<W>,
    scan: &InvoiceDigests,
) -> Result<Option<CatchUpPlan>> {
    let limit = (scan.invoices.len() / 10).max(1000);
    let mut plan = CatchUpPlan::default();
    let mut scan_it = scan.invoices.iter().peekable();
    let complete = t.for_each_copy(&mut |num, digest, checked| {
        while let Some(&&(n, d)) = scan_it.peek() {
            if n >= num {
                break;
            }
            plan.todo.push((n, d)); // not copied yet
            scan_it.next();
        }
        match scan_it.peek() {
            Some(&&(n, d)) if n == num => {
                if !(checked && d.is_some_and(|d| d.as_slice() == digest)) {
                    plan.todo.push((n, d));
                }
                scan_it.next();
            }
            _ => plan.gone.push(num),
        }
        if plan.len() > limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    plan.todo.extend(scan_it.copied());
    Ok((complete && plan.len() <= limit).then_some(plan))
}

/// What a catch-up must look at: invoices to decode and compare (with
/// their walk digest), and copies whose invoice is gone.
#[derive(Default)]
struct CatchUpPlan {
    todo: Vec<(u32, Option<[u8; 32]>)>,
    gone: Vec<u32>,
}

impl CatchUpPlan {
    fn len(&self) -> usize {
        self.todo.len() + self.gone.len()
    }
}
use crate::workload::Workload;
