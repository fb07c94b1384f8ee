//! One run of the migration: the loop that asks the machine for the next
//! step ([`fsm::next_step`]) and takes it, until `Locked`.
//!
//! Each step is written so that a crash anywhere inside it leaves a state
//! from which the same loop, run again, finishes correctly; the argument for
//! each write is in `spec/state-machine.md` and next to the step's code
//! (`copy.rs`, `verify.rs`, `catch_up.rs`, `seal.rs`).

use std::time::Instant;

use super::guard::{refused, security_event, Request};
use super::{Migrator, Options, Report, VerifyReport};
use crate::backends::Backends;
use crate::error::{Error, Result};
use crate::fsm::{self, Event, State, Step};
use crate::lnd_schema;
use crate::source::{InvoiceBuckets, InvoiceDigests, Snapshot, Source, Version, Witness};
use crate::store::{Effect, NativeStore, Persisted, Verification};
use crate::workload::Workload;

/// A scan of the source made by the tombstone step of a resumed run
/// ([`Snapshot::invoice_digests`]), kept for the catch-up verification that
/// follows when it found the source changed: one walk of the store instead
/// of two. Valid only while the store's commit marker is unchanged.
pub(super) struct Prescan<W: Workload> {
    pub(super) dec: Box<dyn Snapshot<W>>,
    pub(super) scan: InvoiceDigests,
    pub(super) version: Version,
}

/// The native store as a run sees it.
pub(super) enum Native<W: Workload> {
    /// No migration recorded yet: no file, an empty one, or an lnd
    /// database to continue into (`Some`).
    NotBegun(Option<Box<dyn NativeStore<W>>>),
    /// A migration under way or done, with its state row (boxed: the row
    /// carries the source identity).
    Begun(Box<dyn NativeStore<W>>, Box<Persisted>),
}

impl<W: Backends> Native<W> {
    /// Opens the native store, if there is one, and loads its state.
    pub(super) fn open(opts: &Options) -> Result<Native<W>> {
        let Some(t) = W::open_store(opts)? else {
            return Ok(Native::NotBegun(None));
        };
        Ok(match t.load()? {
            Some(row) => Native::Begun(t, Box::new(row)),
            None => Native::NotBegun(Some(t)),
        })
    }

    /// The persisted state (`None` before `Begin`).
    pub(super) fn state(&self) -> Option<State> {
        match self {
            Native::NotBegun(_) => None,
            Native::Begun(_, row) => Some(row.state),
        }
    }

    /// The store, if one is open.
    pub(super) fn target(&self) -> Option<&dyn NativeStore<W>> {
        match self {
            Native::NotBegun(t) => t.as_deref(),
            Native::Begun(t, _) => Some(&**t),
        }
    }
}

/// One invocation of [`Migrator::run`] (or of the read-only verification).
pub(super) struct Run<'a, W: Backends> {
    pub(super) m: &'a Migrator<W>,
    pub(super) source: Box<dyn Source<W>>,
    pub(super) buckets: Option<InvoiceBuckets>,
    pub(super) report: Report,
    /// Set by a clean verification pass of this run: a witness of the
    /// verified snapshot (see [`Witness`]); lets the tombstone transaction
    /// skip re-computing the digest.
    pub(super) verified: Option<Box<dyn Witness>>,
    /// Set when this run itself checked and sealed the KV store; lets the
    /// Lock step skip a second digest.
    pub(super) seal: Option<Box<dyn Witness>>,
    /// See [`Prescan`].
    pub(super) prescan: Option<Prescan<W>>,
}

impl<'a, W: Backends> Run<'a, W> {
    /// A run of `m` over the KV store `source`, reporting from `state`.
    pub(super) fn new(
        m: &'a Migrator<W>,
        source: Box<dyn Source<W>>,
        state: State,
    ) -> Result<Run<'a, W>> {
        let buckets = source.invoice_buckets()?;
        Ok(Run {
            m,
            source,
            buckets,
            report: Report::new(state),
            verified: None,
            seal: None,
            prescan: None,
        })
    }
}

impl<W: Backends> Run<'_, W> {
    pub(super) fn opts(&self) -> &Options {
        &self.m.opts
    }

    /// Loads the native store and its state (when there is one) and refuses
    /// a run that must not go on: a native store from another KV store, or
    /// a step the machine refuses ([`fsm::next_step`]). Returns the store
    /// and whether the tombstone is present.
    pub(super) fn preflight(&mut self) -> Result<(Native<W>, bool)> {
        let tombstone = self.source.tombstone_present()?;
        let native = Native::open(self.opts())?;
        if let Native::Begun(_, row) = &native {
            self.check_identity(row)?;
        }
        if let Err(refusal) = fsm::next_step(native.state(), tombstone) {
            let err = refused(refusal, native.state(), tombstone);
            security_event(
                native.target(),
                native.state(),
                Request::Operation("migrate"),
                tombstone,
                refusal.name(),
                &err.to_string(),
            );
            return Err(err);
        }
        Ok((native, tombstone))
    }

    /// Checks, before anything is copied, what the rest of the run will
    /// need: write access to the KV store while the tombstone is still to
    /// be written, and room for the copy while there is copying to do.
    pub(super) fn check_environment(&self, state: Option<State>, tombstone: bool) -> Result<()> {
        let copying = matches!(state, None | Some(State::Fresh) | Some(State::Migrating));
        if !tombstone && (copying || state == Some(State::Verified)) {
            self.source.check_writable()?;
        }
        // Room is checked for files; a database server's disk is its own.
        if copying && self.opts().on_files() {
            let on_disk = self.source.size_bound();
            crate::files::check_room(&self.opts().sql, on_disk, || match &self.buckets {
                Some(b) => self.source.invoice_bytes(b),
                None => Ok(0),
            })?;
        }
        Ok(())
    }

    /// The only control flow of a run: the machine names the step, the run
    /// takes it, the state is read back, until the machine says `Done`.
    pub(super) fn drive(&mut self) -> Result<Report> {
        let (mut native, mut tombstone) = self.preflight()?;
        // Whether this run recorded a transition (else it found the
        // migration completed).
        let mut moved = false;
        loop {
            let step = fsm::next_step(native.state(), tombstone)
                .map_err(|refusal| refused(refusal, native.state(), tombstone))?;
            tracing::debug!(?step, state = ?native.state(), "step");
            let (mut t, row) = match native {
                Native::NotBegun(t) => {
                    debug_assert_eq!(step, Step::Begin);
                    native = self.begin(t)?;
                    moved = true;
                    continue;
                }
                Native::Begun(t, _) if step == Step::Begin => {
                    // A state row that says `Fresh`: `Begin` fails on it.
                    native = self.begin(Some(t))?;
                    continue;
                }
                Native::Begun(t, row) => (t, row),
            };
            if step == Step::Done {
                return self.finish(&*t, moved);
            }
            self.take(step, &mut *t, &row)?;
            let after = load_begun(&*t)?;
            moved |= step != Step::RestoreSeal;
            // The tombstone is there once a step recorded it, or put it back.
            tombstone |= after.state.is_sealed();
            debug_assert!(after.state >= row.state || after.state == State::Migrating);
            native = Native::Begun(t, Box::new(after));
        }
    }

    /// Takes one step on a begun migration.
    fn take(&mut self, step: Step, t: &mut dyn NativeStore<W>, row: &Persisted) -> Result<()> {
        match step {
            Step::CopyAndVerify => self.verified_copy(t, row),
            Step::Seal => {
                self.refuse_seal_while_held(row, false)?;
                let started = Instant::now();
                self.tombstone(t, row)?;
                self.report.seconds.tombstone += started.elapsed().as_secs_f64();
                Ok(())
            }
            Step::Lock => self.lock(t, row),
            Step::RestoreSeal => self.restore_lost_seal(t, row),
            Step::Begin | Step::Done => unreachable!("taken by `drive`"),
        }
    }

    /// `Migrating → Verified`: brings the copy level with the source,
    /// verifies it clean, and records the verification with lnd's settle
    /// sequence and contract in one transition.
    fn verified_copy(&mut self, t: &mut dyn NativeStore<W>, row: &Persisted) -> Result<()> {
        let report = self.copy_and_verify(t, row)?;
        let details = serde_json::json!({
            "invoices": report.invoices,
            "source_digest": report.source_digest,
            "target_digest": report.target_digest,
            "max_settle_index": report.max_settle_index,
        });
        let effect = self.verification_effect(&report)?;
        let event = Event::VerificationPassed;
        t.transition(State::Migrating, event, details, "verify", effect)?;
        Ok(())
    }

    /// The effect of a clean verification's transition: its record, with
    /// lnd's settle sequence at the highest settle index the source or a
    /// copy carries.
    pub(super) fn verification_effect<'r>(&self, report: &'r VerifyReport) -> Result<Effect<'r>> {
        let settle = report.max_settle_index.max(self.settle_sequence()?);
        Ok(Effect::RecordVerification(verification(report, settle)))
    }

    /// The end of a run on a `Locked` migration.
    fn finish(&mut self, t: &dyn NativeStore<W>, moved: bool) -> Result<Report> {
        self.report.state = State::Locked;
        self.report.already_completed = !moved;
        self.report.invoices = t.native_invoices()?;
        if moved {
            tracing::info!(
                invoices = self.report.invoices,
                "invoice migration complete"
            );
        } else {
            tracing::info!("invoice migration already completed");
        }
        Ok(self.report.clone())
    }

    /// The value lnd's `settle_index` sequence must hold: the KV store's
    /// settle index, or the highest settle index a copied invoice or AMP
    /// sub-invoice carries if that is higher (so that lnd's next settlement
    /// never reuses one).
    pub(super) fn expected_settle_index(&self, t: &dyn NativeStore<W>) -> Result<u64> {
        Ok(self.settle_sequence()?.max(t.highest_settle_index()?))
    }

    /// The KV store's settle-index sequence (0 without the bucket).
    pub(super) fn settle_sequence(&self) -> Result<u64> {
        match self.buckets.and_then(|b| b.settle_index) {
            Some(b) => self.source.sequence(b),
            None => Ok(0),
        }
    }
}

/// The state row of a store that has begun; its loss is an error.
pub(super) fn load_begun<W: Workload>(t: &dyn NativeStore<W>) -> Result<Persisted> {
    t.load()?.ok_or_else(|| Error::NotOnewayStore {
        path: t.path().to_path_buf(),
        why: "lost its state row during the run: it was tampered with; restore it from backup"
            .into(),
    })
}

/// The record of a clean verification, for its transition.
pub(super) fn verification(report: &VerifyReport, settle_index: u64) -> Verification<'_> {
    Verification {
        invoices: report.invoices,
        source_digest: &report.source_digest,
        // A catch-up verification builds only the changed rows: it has no
        // target digest to record.
        target_digest: (!report.target_digest.is_empty()).then_some(&report.target_digest),
        settle_index,
    }
}

/// lnd's migration versions, for the `Lock` journal row.
pub(super) fn lock_details() -> serde_json::Value {
    serde_json::json!({
        "lnd_migration_version": lnd_schema::TRACKER_VERSION,
        "lnd_schema_version": lnd_schema::SCHEMA_VERSION,
    })
}
