//! Bringing the native store level with the source: `Begin`, the bulk copy
//! in batches, the sweep of deleted invoices, lnd's index build, and the
//! repairs of single invoices.

use std::time::Instant;

use super::run::{load_begun, Native, Run};
use super::{Phase, VerifyReport};
use crate::backends::Backends;
use crate::error::Result;
use crate::fsm::{Event, State};
use crate::source::{self, Msg, Prepared, Snapshot};
use crate::store::{
    self, Batch, BatchKind, BatchOutcome, Committed, Effect, IndexBuild, NativeStore, Persisted,
};

/// Page cache, in KiB, while lnd's indexes are built (see `build_indexes`).
const INDEX_BUILD_CACHE_KIB: i64 = 4096;

/// Index builds tried in one run when duplicates come from outdated copies.
const MAX_INDEX_ATTEMPTS: u32 = 64;

/// Copy-map rows the sweep reads at a time.
const SWEEP_CHUNK: usize = 10_000;

/// Where the time of a copy goes (logged at the end; see BENCHMARKS.md).
#[derive(Default)]
struct CopyClock {
    waiting_for_decoder: f64,
    writing: f64,
}

impl<W: Backends> Run<'_, W> {
    /// `Fresh → Migrating`: schema, state row and journal in one transaction.
    ///
    /// Crash before the commit: the native file is empty or absent, which
    /// loads as `Fresh`, and the rerun begins again. After: `Migrating` with
    /// no cursor.
    pub(super) fn begin(&mut self, t: Option<Box<dyn NativeStore<W>>>) -> Result<Native<W>> {
        let mut t = match t {
            Some(t) => t,
            None => W::create_store(self.opts())?,
        };
        let identity = self.identity()?;
        let batch_size = self.opts().batch_size as u64;
        let details = serde_json::json!({
            "kv": self.opts().kv.display().to_string(),
            "table_prefix": self.opts().table_prefix,
            "batch_size": batch_size,
            "invoices_bucket": self.buckets.is_some(),
        });
        let effect = Effect::CreateSchema {
            identity: &identity,
            batch_size,
            settle_index: self.settle_sequence()?,
        };
        t.transition(State::Fresh, Event::Begin, details, "begin", effect)?;
        store::narrow(self.opts())?;
        let row = load_begun(&*t)?;
        debug_assert_eq!(
            (row.state, row.cursor, row.copied),
            (State::Migrating, None, 0)
        );
        Ok(Native::Begun(t, Box::new(row)))
    }

    /// Brings the native store level with the source and verifies it: the
    /// catch-up verification when copies were verified before and little
    /// changed, otherwise the bulk path (sweep, copy, lnd's indexes, full
    /// verification passes). Returns the clean verification's report.
    pub(super) fn copy_and_verify(
        &mut self,
        t: &mut dyn NativeStore<W>,
        row: &Persisted,
    ) -> Result<VerifyReport> {
        let started = Instant::now();
        if let Some(report) = self.catch_up_first(t)? {
            self.report.seconds.verify += started.elapsed().as_secs_f64();
            return Ok(report);
        }
        if row.cursor.is_some() {
            // A resumed run: invoices deleted from the source since they
            // were copied must go before anything new is inserted or indexed.
            self.sweep_deleted(t)?;
        }
        let reader = self.copy(t, row)?;
        // The first verification pass's decoder starts now, so that it
        // digests the source and decodes its first batches on the second
        // core while this thread builds lnd's indexes. Its snapshot begins
        // after the copy; what the pass proves does not depend on when it
        // began. It reads on the copy's reader when the copy's stream
        // ended cleanly: no new session, and the payment-hash index the
        // copy built serves it by the reader's own rule (an answer from an
        // index built in an earlier snapshot is taken only when it is one
        // 32-byte hash, as within one stream).
        let first = match reader {
            Some(r) => source::spawn(r, self.opts().batch_size, None, source::Kind::Verify)?,
            None => self.stream(None, source::Kind::Verify)?,
        };
        self.build_indexes(t)?;
        self.report.seconds.copy += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let report = self.verify_until_clean(t, Some(first))?;
        self.report.seconds.verify += started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Copies batches after the cursor until the source is exhausted.
    ///
    /// Each batch — its invoices' rows, their copy-map rows and the new
    /// cursor — is one transaction. A crash before its commit loses the
    /// batch and the cursor together, so the rerun copies exactly that batch
    /// again; after the commit, the rerun starts after it. Nothing is copied
    /// twice (the cursor and the copy map say what is there) and nothing is
    /// skipped (keys are read in order, and the verification pass re-reads
    /// them all). A store may have batches in flight while this thread
    /// takes the next from the decoder ([`NativeStore::submit_bulk`]); it
    /// commits them in order, so a crash loses the batches in flight with
    /// the cursor that would have skipped them, and the rerun copies them
    /// again. Every batch has committed when this returns, with the
    /// stream's reader when the stream was read to its end.
    fn copy(
        &mut self,
        t: &mut dyn NativeStore<W>,
        row: &Persisted,
    ) -> Result<Option<Box<dyn Snapshot<W>>>> {
        let mut cursor = row.cursor;
        let mut stream = self.stream(cursor, source::Kind::Copy)?;
        // Progress starts once the decoder has counted the invoices (after
        // its first batch); what was done before is reported then.
        let mut done = row.copied;
        let mut counted = false;
        let mut clock = CopyClock::default();
        while let Some(batch) =
            self.next_copy_batch(&mut stream, row, done, &mut counted, &mut clock)?
        {
            let Some(last) = batch.last().map(|b| b.num) else {
                break;
            };
            let started = Instant::now();
            let committed = t.submit_bulk(cursor, last, batch, &self.m.opts.kv)?;
            clock.writing += started.elapsed().as_secs_f64();
            self.count_committed(committed, &stream, counted, &mut done);
            cursor = Some(last);
        }
        let started = Instant::now();
        let committed = t.finish_bulk()?;
        clock.writing += started.elapsed().as_secs_f64();
        self.count_committed(committed, &stream, counted, &mut done);
        if !counted {
            // Nothing to copy after the cursor: the stream ended at once.
            self.progress_from(Phase::Copy, done, row.copied, done);
        }
        tracing::info!(
            copied = self.report.copied_this_run,
            waiting_for_decoder_s = clock.waiting_for_decoder,
            writing_s = clock.writing,
            "copy pass done"
        );
        // Invoices deleted from the source after they were copied leave map
        // rows beyond the last source key; drop them.
        self.write(t, cursor, None, &[], BatchKind::Bulk)?;
        self.m.progress.finish();
        Ok(stream.into_reader())
    }

    /// Counts the bulk batches that have committed (in the report and the
    /// progress, or in `done` before the progress has started) and hands
    /// their records back to the decoder.
    fn count_committed(
        &mut self,
        committed: Vec<Committed<W>>,
        stream: &source::Stream<W>,
        counted: bool,
        done: &mut u64,
    ) {
        for c in committed {
            let n = c.invoices.len() as u64;
            debug_assert!(c.outcome.written <= n);
            self.report.copied_this_run += c.outcome.written;
            self.report.resynced += c.outcome.recopied;
            if counted {
                self.m.progress.advance(n);
            } else {
                *done += n;
            }
            stream.recycle(c.invoices);
        }
    }

    /// The next batch of the copy stream (`None` at its end); starts the
    /// progress when the decoder has counted the invoices.
    fn next_copy_batch(
        &mut self,
        stream: &mut source::Stream<W>,
        row: &Persisted,
        done: u64,
        counted: &mut bool,
        clock: &mut CopyClock,
    ) -> Result<Option<Vec<Prepared<W>>>> {
        self.m.cancel.check()?;
        let started = Instant::now();
        loop {
            match stream.next() {
                Some(Ok(Msg::Batch(b))) => {
                    clock.waiting_for_decoder += started.elapsed().as_secs_f64();
                    return Ok(Some(b));
                }
                Some(Ok(Msg::Total(total))) => {
                    self.progress_from(Phase::Copy, total, row.copied, done);
                    *counted = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }

    /// Starts a counted phase of `total` units of which `done` are done,
    /// `earlier` of them by earlier runs (they set the position, not the
    /// rate).
    fn progress_from(&self, phase: Phase, total: u64, earlier: u64, done: u64) {
        let earlier = earlier.min(total);
        self.m.progress.start(phase, total);
        self.m.progress.resume(earlier);
        self.m.progress.advance(done.min(total) - earlier);
    }

    /// Writes one batch (see [`NativeStore::write_batch`]) and counts what it
    /// re-copied.
    pub(super) fn write(
        &mut self,
        t: &mut dyn NativeStore<W>,
        after: Option<u32>,
        last: Option<u32>,
        invoices: &[Prepared<W>],
        kind: BatchKind,
    ) -> Result<BatchOutcome> {
        let batch = Batch {
            after,
            last,
            invoices,
            kind,
        };
        let outcome = t.write_batch(&batch, &self.m.opts.kv)?;
        self.report.resynced += outcome.recopied;
        Ok(outcome)
    }

    /// Deletes the copies of invoices that are no longer in the source,
    /// walking the copy map in chunks against the source's invoice keys
    /// (keys only; nothing is decoded). Each chunk's deletions are one
    /// transaction; a crash between chunks leaves fewer stale copies for
    /// the rerun's sweep.
    fn sweep_deleted(&mut self, t: &mut dyn NativeStore<W>) -> Result<u64> {
        let Some(buckets) = self.buckets else {
            return Ok(0);
        };
        self.m.progress.start(Phase::Sweep, 0);
        let mut after = None;
        let mut swept = 0u64;
        loop {
            let keys = t.copied_after(after, SWEEP_CHUNK)?;
            let (Some(&lo), Some(&hi)) = (keys.first(), keys.last()) else {
                break;
            };
            let present = self.source.invoice_numbers_between(&buckets, lo, hi)?;
            let gone: Vec<u32> = keys.into_iter().filter(|k| !present.contains(k)).collect();
            if !gone.is_empty() {
                swept += t.remove_copies(&gone)?;
            }
            after = Some(hi);
        }
        if swept > 0 {
            tracing::info!(swept, "removed copies of invoices deleted from the source");
        }
        self.m.progress.finish();
        Ok(swept)
    }

    /// Moves the staged AMP sub-invoices into lnd's table and creates lnd's
    /// unique constraints and indexes once the bulk copy is done, in one
    /// transaction ([`NativeStore::build_indexes`]). A crash before the commit
    /// leaves no index; the rerun builds them again. A violated unique
    /// constraint is reported naming both invoices, unless one of the two
    /// copies is outdated (the source was repaired or changed since it was
    /// copied): such copies are brought up to date first and the build is
    /// tried again.
    ///
    /// SQLite sizes the sorter's in-memory runs by the page cache. The
    /// verification decoder is already running beside this build (see
    /// `copy_and_verify`), so the build gets a small cache and spills sorted
    /// runs to temporary files: the same speed here, and the peak memory
    /// stays within bounds (BENCHMARKS.md).
    pub(super) fn build_indexes(&mut self, t: &mut dyn NativeStore<W>) -> Result<()> {
        self.m.progress.start(Phase::Index, 0);
        let mut attempts = 0;
        loop {
            let kv = &self.m.opts.kv;
            let (invoices, error) = match t.build_indexes(INDEX_BUILD_CACHE_KIB, kv)? {
                IndexBuild::Built => break,
                IndexBuild::Duplicate { invoices, error } => (invoices, error),
            };
            attempts += 1;
            if attempts > MAX_INDEX_ATTEMPTS || !self.recopy_duplicates(t, &invoices)? {
                return Err(error);
            }
            tracing::info!(
                invoices = ?invoices,
                "a duplicate came from an outdated copy; re-copied it, building the indexes again"
            );
        }
        self.m.progress.finish();
        Ok(())
    }

    /// Re-reads the source invoices `nums` and brings their copies up to
    /// date (re-copied when their source digest changed, removed when they
    /// are gone), each in a repair batch. Returns whether any copy changed.
    fn recopy_duplicates(&mut self, t: &mut dyn NativeStore<W>, nums: &[u32]) -> Result<bool> {
        let mut changed = false;
        for &num in nums {
            let after = num.checked_sub(1);
            let current = self.read_one(num)?;
            let outcome = self.write(t, after, Some(num), &current, BatchKind::Repair)?;
            self.report.copied_this_run += outcome.written;
            changed |= outcome.written + outcome.removed > 0;
        }
        Ok(changed)
    }

    /// Source invoice `num` as it is now (empty when it is gone).
    fn read_one(&self, num: u32) -> Result<Vec<Prepared<W>>> {
        // A stream of batches of one: the invoice itself, or the next one.
        let mut stream = self
            .source
            .stream(1, num.checked_sub(1), source::Kind::Plain)?;
        loop {
            match stream.next() {
                Some(Ok(Msg::Batch(b))) => {
                    return Ok(b.into_iter().filter(|p| p.num == num).collect())
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Ok(Vec::new()),
            }
        }
    }
}
