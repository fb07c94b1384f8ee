//! Verification: every source invoice decoded again from one snapshot and
//! compared, field by field, with its rows read back from the native store;
//! repairs of what changed meanwhile; `oneway verify`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::guard::refused;
use super::run::{Native, Run};
use super::{Coverage, Migrator, Phase, VerifyReport};
use crate::backends::Backends;
use crate::error::{Error, Mismatch, Result};
use crate::fsm::{Refusal, State};
use crate::lnd_schema::Stage;
use crate::source::{self, Msg, Prepared, Source, SourceDigest};
use crate::store::{is_current, BatchKind, CopyMap, NativeStore, Persisted};
use crate::workload::Workload;

/// How many verification passes may repair source changes before giving up.
const MAX_VERIFY_PASSES: u32 = 5;

/// Clean verification batches marked checked together (see `verify_stream`).
const MARK_RUN: u32 = 50;

/// Mismatches listed in a report (the count covers them all).
pub(super) const MAX_MISMATCHES_SHOWN: usize = 20;

impl<W: Backends> Migrator<W> {
    /// Compares every source invoice with the native store without writing
    /// anything (`oneway verify`).
    ///
    /// From `Verified` on the comparison is complete: every invoice, every
    /// row, lnd's schema and bookkeeping, the seal. Before (`Fresh`,
    /// `Migrating`: a run crashed or is still going) the migration is
    /// unfinished and the report says how far it is ([`Coverage`]): it
    /// compares the copies made so far whose source is unchanged, and counts
    /// invoices not copied yet, copies the source changed since (`outdated`)
    /// and AMP sets still staged, none of them a mismatch
    /// ([`VerifyReport::passed`]).
    pub fn verify(&self) -> Result<VerifyReport> {
        let kv = self.open_source()?;
        let (mut t, row) = match Native::open(&self.opts)? {
            Native::Begun(t, row) => (t, row),
            Native::NotBegun(t) => return Err(self.nothing_to_verify(&*kv, t.is_some())?),
        };
        let mut run = Run::new(self, kv, row.state)?;
        run.check_identity(&row)?;
        let row = if matches!(row.state, State::Fresh | State::Migrating) {
            if let Some(report) = run.verify_unfinished(&*t)? {
                return Ok(report);
            }
            // A running `migrate` verified it meanwhile: compare it in full.
            t.load()?.unwrap_or(*row)
        } else {
            *row
        };
        let mut report = run.verify_pass(&mut *t, false, None)?;
        report.coverage = complete_coverage(&*t, &row, &report)?;
        run.check_final(&*t, &row, &mut report)?;
        Ok(report)
    }

    /// Why `verify` has nothing to compare (no migration in the native
    /// store at `opts.sql`).
    fn nothing_to_verify(&self, kv: &dyn Source<W>, opened: bool) -> Result<Error> {
        if !opened && kv.tombstone_present()? {
            // Not a migration yet to run: the store that was made is lost.
            return Ok(refused(Refusal::NativeStoreMissing, None, true));
        }
        let why = if opened || !self.opts.on_files() {
            "has no migration yet: run `oneway migrate` first"
        } else if self.opts.sql.exists() {
            "is empty: run `oneway migrate` first"
        } else {
            "does not exist yet: run `oneway migrate` first (verify compares a migration's \
             copy; it creates nothing)"
        };
        Ok(Error::NotOnewayStore {
            path: self.opts.sql.clone(),
            why: why.into(),
        })
    }
}

/// The coverage of a complete comparison (from `Verified` on).
fn complete_coverage<W: Workload>(
    t: &dyn NativeStore<W>,
    row: &Persisted,
    report: &VerifyReport,
) -> Result<Coverage> {
    Ok(Coverage {
        state: row.state,
        complete: true,
        copied: t.copies()?,
        not_copied_yet: 0,
        compared: report.invoices.saturating_sub(report.outdated),
        staged_amp_sets: t.staged_amp_sets()?,
        indexes_built: t.indexes_built()?,
        cursor: row.cursor.map(|c| format!("{c:08x}")),
    })
}

impl<W: Backends> Run<'_, W> {
    /// What `verify` checks beyond the invoices once they are final: lnd's
    /// schema and bookkeeping (from `Verified` on: the indexes, the settle
    /// sequence; from `Locked` on: the tracker), and the seal.
    fn check_final(
        &self,
        t: &dyn NativeStore<W>,
        row: &Persisted,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let stage = match row.state {
            State::Locked => Some(Stage::Locked),
            State::Verified | State::Tombstoned => Some(Stage::Migrating),
            State::Fresh | State::Migrating => None,
        };
        let mut found = Vec::new();
        if let Some(stage) = stage {
            found.extend(t.contract(stage, self.expected_settle_index(t)?)?);
        }
        if row.state.is_sealed() && !self.source.tombstone_present()? {
            found.push(format!(
                "the KV store {} has lost its invoice-tombstone although the migration is {}: \
                 lnd could start on the KV backend; run `oneway migrate` to restore the seal",
                self.opts().kv.display(),
                row.state
            ));
        }
        add_store_wide(report, found);
        Ok(())
    }

    /// Runs verification passes, repairing invoices that changed in the
    /// source since they were copied, until a pass finds nothing to repair.
    pub(super) fn verify_until_clean(
        &mut self,
        t: &mut dyn NativeStore<W>,
        mut first: Option<source::Stream<W>>,
    ) -> Result<VerifyReport> {
        for _ in 0..MAX_VERIFY_PASSES {
            let pass_started = Instant::now();
            let report = self.verify_pass(t, true, first.take())?;
            if report.mismatch_count > 0 {
                return Err(Error::VerificationFailed {
                    total: report.mismatch_count,
                    mismatches: report.mismatches,
                });
            }
            if report.outdated == 0 {
                return Ok(report);
            }
            tracing::info!(
                repaired = report.outdated,
                "source changed during the migration; verifying again"
            );
            self.stop_while_lnd_writes(&report, pass_started)?;
        }
        Err(Error::SourceUnstable {
            path: self.opts().kv.clone(),
            attempts: MAX_VERIFY_PASSES,
        })
    }

    /// A running lnd keeps writing: a pass will not come out clean while it
    /// runs. Everything up to here is copied and durable; stop and let the
    /// run after lnd stops catch up.
    fn stop_while_lnd_writes(&self, report: &VerifyReport, pass_started: Instant) -> Result<()> {
        let Some(held) = self.held_by_others() else {
            return Ok(());
        };
        Err(Error::KvInUse {
            kv: self.opts().kv.clone(),
            holders: held,
            done: format!(
                "copied {} invoices and verified them but for the {} lnd changed meanwhile",
                report.invoices, report.outdated
            ),
            estimate_s: (pass_started.elapsed().as_secs_f64() * 2.0).ceil() as u64,
            at: State::Migrating,
            tombstone_present: false,
        })
    }

    /// One verification pass over a consistent snapshot of the source: every
    /// invoice is decoded again and compared, field by field, with the rows
    /// read back from the native store. With `repair`, invoices whose source
    /// bytes changed since they were copied (or that are new, or gone) are
    /// re-copied in batch transactions and counted as `outdated`; without it
    /// they are only counted.
    ///
    /// `started` is a snapshot stream already running, if the caller began
    /// one ahead of time; otherwise one is started here.
    pub(super) fn verify_pass(
        &mut self,
        t: &mut dyn NativeStore<W>,
        repair: bool,
        started: Option<source::Stream<W>>,
    ) -> Result<VerifyReport> {
        let mut stream = match started {
            Some(s) => s,
            None => self.stream(None, source::Kind::Verify)?,
        };
        let digest = self.first_digest(&mut stream)?;
        let report = self.verify_stream(t, repair, digest, &mut stream)?;
        let witness = stream.finish();
        // Only a pass that found everything equal witnesses what `Verified`
        // will record.
        self.verified = if report.clean() { witness } else { None };
        Ok(report)
    }

    /// The source digest a verification stream sends first (its snapshot's).
    pub(super) fn first_digest(&self, stream: &mut source::Stream<W>) -> Result<SourceDigest> {
        match stream.next() {
            Some(Ok(Msg::Digest(d))) => Ok(d),
            Some(Err(e)) => Err(e),
            _ => Err(Error::DecoderEnded {
                kv: self.opts().kv.clone(),
            }),
        }
    }

    /// A decoder thread streaming the source after `after`.
    pub(super) fn stream(
        &self,
        after: Option<u32>,
        kind: source::Kind,
    ) -> Result<source::Stream<W>> {
        self.source.stream(self.opts().batch_size, after, kind)
    }

    /// The body of a pass: compares batch after batch, marks runs of clean
    /// batches checked and repairs the others (with `repair`), then checks
    /// the store-wide counts.
    fn verify_stream(
        &mut self,
        t: &mut dyn NativeStore<W>,
        repair: bool,
        digest: SourceDigest,
        stream: &mut source::Stream<W>,
    ) -> Result<VerifyReport> {
        self.m.progress.start(Phase::Verify, digest.invoices);
        let mut pass = Pass::new(&digest);
        let mut ahead = None;
        loop {
            self.m.cancel.check()?;
            let started = Instant::now();
            let batch = match ahead.take() {
                Some(b) => b,
                None => next_batch(stream, &mut pass.report)?,
            };
            // For a store that reads ahead: the batch after this one, whose
            // copies it reads back while this one is compared.
            if t.reads_ahead() && !batch.is_empty() {
                let next = next_batch(stream, &mut pass.report)?;
                t.prefetch(&next.iter().map(Prepared::id).collect::<Vec<_>>())?;
                ahead = Some(next);
            }
            pass.waited += started.elapsed().as_secs_f64();
            let started = Instant::now();
            let last = batch.last().map(|b| b.num);
            let found = compare_batch(t, &batch, pass.cursor, last, &mut pass)?;
            if repair {
                self.mark_or_repair(t, &batch, last, &mut pass, found)?;
            }
            let n = batch.len() as u64;
            stream.recycle(batch);
            pass.compared += started.elapsed().as_secs_f64();
            self.m.progress.advance(n);
            match last {
                Some(l) => pass.cursor = Some(l),
                None => break,
            }
        }
        if let Some((from, _)) = pass.marking.take() {
            t.mark_checked(from, pass.cursor)?;
        }
        self.m.progress.finish();
        tracing::info!(
            invoices = pass.report.invoices,
            outdated = pass.report.outdated,
            waiting_for_decoder_s = pass.waited,
            reading_and_comparing_s = pass.compared,
            "verification pass done"
        );
        self.check_totals(t, pass)
    }

    /// A batch whose every copy was current and read back equal: its map
    /// rows are exactly this batch's invoices, all checked now. Runs of such
    /// batches are marked together, in one transaction per `MARK_RUN`
    /// batches; any other batch ends the run first, and is repaired whole,
    /// so that present invoices are not taken for deleted ones (unchanged
    /// ones are skipped there by their digest).
    fn mark_or_repair(
        &mut self,
        t: &mut dyn NativeStore<W>,
        batch: &[Prepared<W>],
        last: Option<u32>,
        pass: &mut Pass<W>,
        found: BatchFindings,
    ) -> Result<()> {
        if found.clean && !batch.is_empty() {
            let from = pass.marking.map_or(pass.cursor, |(from, _)| from);
            let runs = pass.marking.map_or(0, |(_, n)| n) + 1;
            pass.marking = Some((from, runs));
            if runs >= MARK_RUN {
                t.mark_checked(from, last)?;
                pass.marking = None;
            }
            return Ok(());
        }
        if let Some((from, _)) = pass.marking.take() {
            t.mark_checked(from, pass.cursor)?;
        }
        if found.outdated > 0 {
            let outcome = self.write(t, pass.cursor, last, batch, BatchKind::Repair)?;
            self.report.copied_this_run += outcome.written;
        }
        Ok(())
    }

    /// The end of a pass: the decoder's rows digest arrived, and, when
    /// nothing was outdated, the native store holds exactly the source's
    /// invoices and the child rows they own.
    fn check_totals(&self, t: &dyn NativeStore<W>, pass: Pass<W>) -> Result<VerifyReport> {
        let mut report = pass.report;
        if report.target_digest.is_empty() {
            // The decoder sends it before the final batch; a stream that
            // ended without it ended early.
            return Err(Error::DecoderEnded {
                kv: self.opts().kv.clone(),
            });
        }
        if report.outdated > 0 {
            return Ok(report);
        }
        let mut found = Vec::new();
        let (native_count, map_count) = (t.native_invoices()?, t.copies()?);
        if native_count != report.invoices || map_count != report.invoices {
            found.push(format!(
                "the source has {} invoices but the native store has {native_count} (copy map {map_count})",
                report.invoices
            ));
        }
        // Referential integrity of the whole store: every child row belongs
        // to a verified invoice when each table holds exactly the rows those
        // invoices own (the argument is on `ChildRows`).
        let owned = W::child_tables(&pass.children);
        found.extend(t.child_rows_differ(owned, 0, "verified")?);
        add_store_wide(&mut report, found);
        Ok(report)
    }
}

/// A verification pass in progress.
struct Pass<W: Workload> {
    report: VerifyReport,
    /// The child rows the source's invoices own.
    children: <W as Workload>::Children,
    /// Clean batches not marked checked yet: (after, batches).
    marking: Option<(Option<u32>, u32)>,
    /// The last invoice of the batches compared so far.
    cursor: Option<u32>,
    /// Seconds waiting for the decoder, and reading back and comparing.
    waited: f64,
    compared: f64,
}

impl<W: Workload> Pass<W> {
    fn new(digest: &SourceDigest) -> Pass<W> {
        Pass {
            report: VerifyReport::starting(&digest.sha256),
            children: Default::default(),
            marking: None,
            cursor: None,
            waited: 0.0,
            compared: 0.0,
        }
    }
}

/// What comparing one batch found.
struct BatchFindings {
    /// Copies outdated or stale (their source changed or is gone).
    outdated: u64,
    /// Every copy current and equal.
    clean: bool,
}

/// The next batch of a verification stream (empty at its end), taking the
/// rows digest into `report` on the way.
pub(super) fn next_batch<W: Workload>(
    stream: &mut source::Stream<W>,
    report: &mut VerifyReport,
) -> Result<Vec<Prepared<W>>> {
    loop {
        match stream.next() {
            Some(Ok(Msg::Batch(b))) => return Ok(b),
            Some(Ok(Msg::RowsDigest(d))) => report.target_digest = d,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(Vec::new()),
        }
    }
}

/// Compares one batch (the source's invoices in `(after, last]`) with the
/// copies: current copies field by field, the others counted as outdated,
/// copies whose source is gone as outdated too.
fn compare_batch<W: Workload>(
    t: &dyn NativeStore<W>,
    batch: &[Prepared<W>],
    after: Option<u32>,
    last: Option<u32>,
    pass: &mut Pass<W>,
) -> Result<BatchFindings> {
    let mapped = t.copy_map(after, last)?;
    let stale = stale_copies(&mapped, batch);
    let report = &mut pass.report;
    let mut outdated = 0u64;
    let mut matched: Vec<&Prepared<W>> = Vec::with_capacity(batch.len());
    for p in batch {
        count_invoice(report, p);
        W::add_children(&mut pass.children, W::children(&p.native));
        if is_current(&mapped, p) {
            matched.push(p);
        } else {
            outdated += 1;
        }
    }
    let mismatches_before = report.mismatch_count;
    let ids: Vec<i64> = matched.iter().map(|p| p.id()).collect();
    let loaded = t.load_invoices(&ids, false)?;
    for p in matched {
        compare(t, report, p, &loaded);
    }
    report.outdated += outdated + stale;
    Ok(BatchFindings {
        outdated: outdated + stale,
        clean: outdated == 0 && stale == 0 && report.mismatch_count == mismatches_before,
    })
}

/// Copies in the batch's range whose source invoice is gone.
pub(super) fn stale_copies<W: Workload>(mapped: &CopyMap, batch: &[Prepared<W>]) -> u64 {
    let present: HashSet<u32> = batch.iter().map(|p| p.num).collect();
    mapped.keys().filter(|k| !present.contains(k)).count() as u64
}

/// Counts source record `p` in `report`, with the value of lnd's sequence
/// it carries (an invoice's settle index).
pub(super) fn count_invoice<W: Workload>(report: &mut VerifyReport, p: &Prepared<W>) {
    report.invoices += 1;
    report.max_settle_index = report.max_settle_index.max(W::sequence(&p.native));
}

/// Compares source invoice `p` with its copy in `loaded`, adding each
/// difference to `report`; returns whether they are equal.
pub(super) fn compare<W: Workload>(
    t: &dyn NativeStore<W>,
    report: &mut VerifyReport,
    p: &Prepared<W>,
    loaded: &BTreeMap<i64, W::Record>,
) -> bool {
    let diffs = match loaded.get(&p.id()) {
        Some(got) => W::diff(&t.as_stored(&p.native), got),
        None => vec![format!(
            "{} row {} is missing from the native store",
            W::ROOT_TABLE,
            p.id()
        )],
    };
    let equal = diffs.is_empty();
    for detail in diffs {
        report.mismatch_count += 1;
        if report.mismatches.len() < MAX_MISMATCHES_SHOWN {
            report.mismatches.push(Mismatch {
                invoice_key: format!("{:08x}", p.num),
                detail,
            });
        }
    }
    equal
}

/// Adds store-wide differences (counts, tables, lnd's contract) to
/// `report`, every one listed.
pub(super) fn add_store_wide(report: &mut VerifyReport, found: Vec<String>) {
    report.mismatch_count += found.len() as u64;
    report
        .mismatches
        .extend(found.into_iter().map(Mismatch::store_wide));
}
