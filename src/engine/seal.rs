//! The seal: the tombstone written only when the KV store is exactly what
//! was verified and nobody else holds it open, `Lock` only while the seal
//! holds, a re-sync under the seal when lnd wrote past it before it
//! stopped, and a lost tombstone written back (spec/protocol.md).

use std::time::Instant;

use super::guard::{sealed_store_changed, security_event, Request};
use super::run::{lock_details, Run};
use super::Phase;
use crate::backends::Backends;
use crate::error::{Error, Result};
use crate::fsm::{self, Event, State};
use crate::source::{OtherHolders, SourceDigest, TombstoneOutcome};
use crate::store::{Effect, NativeStore, Persisted};

/// How many looks a holder of the KV store must survive (`held_by_others`).
const HOLDER_LOOKS: u32 = 3;

impl<W: Backends> Run<'_, W> {
    /// Before `Lock`: the tombstone must still be there and the invoices
    /// must still be the verified ones. Anything else means something wrote
    /// to a sealed store; that is refused and logged, never papered over.
    /// Whether the KV store is still exactly what was verified, tombstone
    /// included: the condition for `Lock`. A lost tombstone over unchanged
    /// invoices is written again here (the store is sealed, nobody else
    /// holds it); changed invoices return `false` for a re-sync.
    pub(super) fn seal_intact(&mut self, t: &dyn NativeStore<W>, row: &Persisted) -> Result<bool> {
        // This run sealed the store moments ago and nobody has committed to
        // it since: it is exactly what the tombstone transaction checked.
        if let Some(seal) = self.seal.take() {
            if seal.same_file() && seal.untouched()? {
                tracing::debug!("KV store untouched since this run sealed it");
                self.seal = Some(seal);
                return Ok(true);
            }
        }
        let present = self.source.tombstone_present()?;
        let digest = self.source.digest()?;
        let verified = row.source_digest.clone().unwrap_or_default();
        if !present {
            tracing::warn!(kv = %self.opts().kv.display(), "the KV store lost its tombstone before Lock; writing it again");
            t.security_event(
                Some(State::Tombstoned),
                "seal_restored",
                serde_json::json!({ "invoices_unchanged": digest.sha256 == verified }),
            )?;
            self.seal = Some(self.source.write_tombstone()?);
        }
        Ok(digest.sha256 == verified)
    }

    /// Refuses to take a seal step (the tombstone, `Lock`, restoring a lost
    /// tombstone) while any other process holds the KV store open: lnd
    /// reads the tombstone only when it starts, so a running lnd would
    /// write past the seal (spec/protocol.md, rule R1). Nothing is written
    /// by this check; the rerun after lnd stops continues from here. A
    /// store whose holders cannot be determined is treated as held.
    pub(super) fn refuse_seal_while_held(
        &self,
        row: &Persisted,
        tombstone_present: bool,
    ) -> Result<()> {
        let kv = &self.opts().kv;
        let Some(held) = self.held_by_others() else {
            return Ok(());
        };
        let invoices = row.verified_count.unwrap_or(0);
        let done = match row.state {
            State::Locked => {
                "the migration is locked but the KV store has lost its tombstone".into()
            }
            State::Tombstoned => {
                format!("copied and verified {invoices} invoices and wrote the tombstone")
            }
            _ => format!("copied and verified {invoices} invoices"),
        };
        // The rerun digests the source and copies and verifies what changed:
        // at most about one verification pass of this size.
        let estimate = if self.report.seconds.verify > 0.0 {
            self.report.seconds.verify
        } else {
            invoices as f64 / 30_000.0
        };
        Err(Error::KvInUse {
            kv: kv.clone(),
            holders: held,
            done,
            estimate_s: estimate.ceil().max(1.0) as u64,
            at: row.state,
            tombstone_present,
        })
    }

    /// Which other processes hold the KV store open, as a sentence; `None`
    /// when none does. Not knowing counts as held.
    ///
    /// A holder must be seen in three looks 100 ms apart: a process that
    /// forks (an application embedding oneway that starts a subprocess)
    /// shows a child holding this process's descriptors until it execs,
    /// for microseconds; lnd holds the store for its whole life.
    pub(super) fn held_by_others(&self) -> Option<String> {
        let mut seen = None;
        for look in 0..HOLDER_LOOKS {
            if look > 0 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            match self.source.other_holders() {
                OtherHolders::Nobody => return None,
                OtherHolders::Held(h) => seen = Some(h),
                OtherHolders::Unknown(e) => {
                    return Some(format!(
                        "oneway cannot tell whether another process has it open ({e})"
                    ))
                }
            }
        }
        seen
    }

    /// A `Locked` migration whose KV store lost its tombstone (a power cut
    /// before it was durable, a restored backup): written again when the
    /// invoices are still exactly what was verified, which loses nothing;
    /// otherwise refused with what is true and what to do.
    pub(super) fn restore_lost_seal(
        &mut self,
        t: &dyn NativeStore<W>,
        row: &Persisted,
    ) -> Result<()> {
        self.refuse_seal_while_held(row, false)?;
        let digest = self.source.digest()?;
        let verified = row.source_digest.clone().unwrap_or_default();
        if digest.sha256 != verified {
            let err = Error::SealLostAndChanged {
                native: self.opts().sql.clone(),
                kv: self.opts().kv.clone(),
                now: digest.invoices,
                verified: row.verified_count.unwrap_or(0),
            };
            security_event(
                Some(t),
                Some(State::Locked),
                Request::Operation("restore the seal"),
                false,
                "SealLostAndChanged",
                &err.to_string(),
            );
            return Err(err);
        }
        self.source.write_tombstone()?;
        t.security_event(
            Some(State::Locked),
            "seal_restored",
            serde_json::json!({ "source_digest": verified, "invoices": digest.invoices }),
        )?;
        tracing::warn!(kv = %self.opts().kv.display(), "the KV store had lost its tombstone; its invoices are unchanged, so it is sealed again");
        self.report.seal_restored = true;
        Ok(())
    }

    /// Re-syncs a KV store that changed after its tombstone, before `Lock`:
    /// copies the difference under the seal, verifies until clean, and
    /// records `Resynced` with the new digests. lnd has never served from
    /// the native store (the guard allows it only from `Locked`, and lnd
    /// refuses its dirty schema version before), so the KV store is still
    /// the only truth and nothing is lost.
    pub(super) fn resync_under_seal(
        &mut self,
        t: &mut dyn NativeStore<W>,
        row: &Persisted,
    ) -> Result<()> {
        self.refuse_rolled_back_source(t)?;
        tracing::warn!(kv = %self.opts().kv.display(), "the KV store changed after the tombstone; copying the difference under the seal");
        let report = self.copy_and_verify(t, row)?;
        let details = serde_json::json!({
            "invoices": report.invoices,
            "previous_source_digest": row.source_digest,
            "source_digest": report.source_digest,
            "target_digest": report.target_digest,
        });
        let effect = self.verification_effect(&report)?;
        t.transition(
            State::Tombstoned,
            Event::Resynced,
            details,
            "resynced",
            effect,
        )?;
        Ok(())
    }

    /// Refuses a re-sync from a KV store that went back in time (a restored
    /// backup): lnd never lowers its add-index sequence, so a sequence below
    /// an invoice already copied means invoices lnd accepted would be
    /// deleted from the native copy, which may be the last place they are.
    pub(super) fn refuse_rolled_back_source(&self, t: &dyn NativeStore<W>) -> Result<()> {
        let copied = t.highest_add_index()?;
        let sequence = match self.buckets.and_then(|b| b.add_index) {
            Some(b) => self.source.sequence(b)?,
            None => 0,
        };
        if sequence >= copied {
            return Ok(());
        }
        // The machine's word on a source that changes under the seal.
        let refusal = match fsm::transition(State::Tombstoned, Event::SourceChanged) {
            Err(refusal) => refusal,
            Ok(_) => unreachable!("the table refuses SourceChanged once tombstoned"),
        };
        Err(sealed_store_changed(
            t,
            State::Tombstoned,
            refusal,
            "resync",
            format!(
                "; its add-index sequence is {sequence} but the native store already holds add \
                 index {copied}: the KV store went back in time (a restored backup?). Re-syncing \
                 would delete invoices that exist only in the native store now; put back the \
                 KV store this migration sealed, then rerun"
            ),
        ))
    }

    /// `Verified → Tombstoned` (or back to `Migrating` when the source changed).
    ///
    /// The tombstone is written only now that `Verified` is durable, in its
    /// own KV transaction that re-checks the source digest. Crash after the
    /// KV commit but before `Tombstoned` is recorded: the rerun is still in
    /// `Verified`, finds the tombstone, checks the digest again, and records
    /// `Tombstoned` without writing anything to the KV store.
    pub(super) fn tombstone(&mut self, t: &mut dyn NativeStore<W>, row: &Persisted) -> Result<()> {
        let verified = SourceDigest {
            invoices: row.verified_count.unwrap_or(0),
            sha256: row.source_digest.clone().unwrap_or_default(),
        };
        let mut since = self.verified.take();
        if since.is_none() && !self.source.tombstone_present()? {
            if let Some(buckets) = self.buckets {
                // A resumed run has no witness of the verified snapshot: one
                // walk tells whether the source changed and, if it did, serves
                // the catch-up verification too.
                let pre = self.scan_source(&buckets)?;
                if pre.scan.source.sha256 != verified.sha256 {
                    let now = pre.scan.source.clone();
                    self.prescan = Some(pre);
                    return self.source_changed_since_verified(t, &verified, &now);
                }
                since = Some(pre.dec.into_witness(pre.version));
            }
        }
        self.m.progress.start(Phase::Tombstone, 0);
        // Both stores in one database: the tombstone and its record commit
        // together, and there is no crash window between them.
        let joint = t.seal_with_source(
            &self.opts().table_prefix,
            &verified,
            since.as_deref(),
            &|outcome| tombstone_details(outcome, &verified),
        )?;
        if let Some((outcome, seal)) = joint {
            self.seal = seal;
            self.m.progress.finish();
            return self.after_joint_seal(t, &verified, outcome);
        }
        let (outcome, seal) = self
            .source
            .write_tombstone_if_unchanged(&verified, since.as_deref())?;
        self.seal = seal;
        self.m.progress.finish();
        match outcome {
            TombstoneOutcome::Written | TombstoneOutcome::AlreadyPresent { unchanged: true } => {
                record_tombstone(t, tombstone_details(&outcome, &verified))?;
                tracing::info!(kv = %self.opts().kv.display(), "KV invoices bucket tombstoned");
            }
            TombstoneOutcome::AlreadyPresent { unchanged: false } => {
                // A tombstone committed by an earlier run that crashed before
                // recording it, and writes after it (an lnd that had started
                // before the commit wrote on). The tombstone's presence alone
                // means the store is sealed: record it, and the Tombstoned
                // step re-syncs the difference under the seal. lnd has never
                // served from the native store before `Locked`, so nothing
                // is lost (spec/protocol.md, rule R6).
                record_tombstone(t, tombstone_details(&outcome, &verified))?;
                tracing::warn!(kv = %self.opts().kv.display(), "the KV store changed after an earlier run tombstoned it; re-syncing under the seal");
            }
            TombstoneOutcome::SourceChanged(now) => {
                self.source_changed_since_verified(t, &verified, &now)?;
            }
        }
        Ok(())
    }

    /// `Verified --SourceChanged--> Migrating`: the source differs from the
    /// verified digest, so the difference is copied and verified again
    /// before any tombstone.
    pub(super) fn source_changed_since_verified(
        &mut self,
        t: &mut dyn NativeStore<W>,
        verified: &SourceDigest,
        now: &SourceDigest,
    ) -> Result<()> {
        let details = serde_json::json!({
            "verified_digest": verified.sha256,
            "current_digest": now.sha256,
            "verified_invoices": verified.invoices,
            "current_invoices": now.invoices,
        });
        tracing::warn!(
            verified = %verified.sha256,
            current = %now.sha256,
            "the source changed after verification; copying the difference before the tombstone"
        );
        t.transition(
            State::Verified,
            Event::SourceChanged,
            details,
            "resync",
            Effect::ForgetVerification,
        )?;
        Ok(())
    }
}

impl<W: Backends> Run<'_, W> {
    /// `Tombstoned → Locked`: only while the KV store is still exactly what
    /// was verified, with its tombstone, and nobody else holds it open; a
    /// store lnd wrote past the seal is re-synced first (`Resynced`).
    pub(super) fn lock(&mut self, t: &mut dyn NativeStore<W>, row: &Persisted) -> Result<()> {
        self.refuse_seal_while_held(row, true)?;
        self.m.progress.start(Phase::Lock, 0);
        if !self.seal_intact(t, row)? {
            self.m.progress.finish();
            let started = Instant::now();
            self.resync_under_seal(t, row)?;
            self.report.seconds.verify += started.elapsed().as_secs_f64();
            return Ok(());
        }
        let settle_index = self.expected_settle_index(t)?;
        t.transition(
            State::Tombstoned,
            Event::Lock,
            lock_details(),
            "lock",
            Effect::RecordMigrated { settle_index },
        )?;
        self.m.progress.finish();
        Ok(())
    }
}

impl<W: Backends> Run<'_, W> {
    /// After a seal the native store took in one transaction with the
    /// tombstone ([`NativeStore::seal_with_source`]): recorded already,
    /// unless the source changed since it was verified.
    fn after_joint_seal(
        &mut self,
        t: &mut dyn NativeStore<W>,
        verified: &SourceDigest,
        outcome: TombstoneOutcome,
    ) -> Result<()> {
        match outcome {
            TombstoneOutcome::SourceChanged(now) => {
                self.source_changed_since_verified(t, verified, &now)
            }
            TombstoneOutcome::AlreadyPresent { unchanged: false } => {
                tracing::warn!(kv = %self.opts().kv.display(), "the KV store changed after an earlier run tombstoned it; re-syncing under the seal");
                Ok(())
            }
            _ => {
                tracing::info!(kv = %self.opts().kv.display(), "KV invoices bucket tombstoned");
                Ok(())
            }
        }
    }
}

/// The `Tombstoned` journal row's details for `outcome`.
fn tombstone_details(outcome: &TombstoneOutcome, verified: &SourceDigest) -> serde_json::Value {
    match outcome {
        TombstoneOutcome::AlreadyPresent { unchanged: false } => serde_json::json!({
            "written_now": false,
            "changed_since_verified": true,
            "source_digest": verified.sha256,
        }),
        _ => serde_json::json!({
            "written_now": *outcome == TombstoneOutcome::Written,
            "source_digest": verified.sha256,
            "invoices": verified.invoices,
        }),
    }
}

/// `Verified → Tombstoned`: records the tombstone (written now, or found).
fn record_tombstone<W: Workload>(
    t: &mut dyn NativeStore<W>,
    details: serde_json::Value,
) -> Result<()> {
    t.transition(
        State::Verified,
        Event::TombstoneWritten,
        details,
        "tombstoned",
        Effect::Nothing,
    )?;
    Ok(())
}
use crate::workload::Workload;
