//! The migration state machine as a pure function.
//!
//! Nothing in this module does I/O. [`transition`] maps a (state, event) pair
//! to the next state or to a named [`Refusal`]; [`backend_decision`] decides
//! whether an application may open a backend given the persisted state and
//! whether the KV store carries the tombstone. The engine
//! ([`crate::engine`]) feeds events in and persists each accepted transition
//! in exactly one SQLite transaction ([`crate::store`]); the tests walk the
//! whole table.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The persisted state of a migration. The order is the order of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Nothing has been written: no native store, or one without oneway's state row.
    Fresh,
    /// The native schema exists and invoices are being copied batch by batch.
    Migrating,
    /// Every source invoice was re-read and found equal in the native store.
    Verified,
    /// The KV `invoices` bucket carries the `invoice-tombstone` key.
    Tombstoned,
    /// The migration is complete and recorded; terminal.
    Locked,
}

impl State {
    /// Every state, in machine order.
    pub const ALL: [State; 5] = [
        State::Fresh,
        State::Migrating,
        State::Verified,
        State::Tombstoned,
        State::Locked,
    ];

    /// The state's name as persisted and printed.
    pub fn name(self) -> &'static str {
        match self {
            State::Fresh => "Fresh",
            State::Migrating => "Migrating",
            State::Verified => "Verified",
            State::Tombstoned => "Tombstoned",
            State::Locked => "Locked",
        }
    }

    /// Parses a persisted state name.
    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    /// True from `Tombstoned` on: the KV store is sealed.
    pub fn is_sealed(self) -> bool {
        matches!(self, State::Tombstoned | State::Locked)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened, fed to [`transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// The native schema and the state row are to be created.
    Begin,
    /// One batch of invoices and the cursor after it were committed.
    BatchCopied,
    /// A full verification pass found every invoice equal.
    VerificationPassed,
    /// The source no longer matches what was verified; copy the difference.
    SourceChanged,
    /// The tombstone is durably in the KV store (written now, or found after a crash).
    TombstoneWritten,
    /// The source changed after the tombstone but before `Locked` (an lnd
    /// that started before the tombstone commit wrote on): the difference
    /// was copied under the seal and a verification pass found every
    /// invoice equal again. lnd has never served from the native store
    /// before `Locked`, so nothing is lost.
    Resynced,
    /// The completed migration is recorded; nothing may change after this.
    Lock,
}

impl Event {
    /// Every event, for exhaustive tables.
    pub const ALL: [Event; 7] = [
        Event::Begin,
        Event::BatchCopied,
        Event::VerificationPassed,
        Event::SourceChanged,
        Event::TombstoneWritten,
        Event::Resynced,
        Event::Lock,
    ];

    /// The event's name as journaled.
    pub fn name(self) -> &'static str {
        match self {
            Event::Begin => "Begin",
            Event::BatchCopied => "BatchCopied",
            Event::VerificationPassed => "VerificationPassed",
            Event::SourceChanged => "SourceChanged",
            Event::TombstoneWritten => "TombstoneWritten",
            Event::Resynced => "Resynced",
            Event::Lock => "Lock",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a (state, event) pair or a backend request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Refusal {
    /// `Begin` when the migration has already begun.
    AlreadyBegun,
    /// An event that needs a begun migration arrived in `Fresh`.
    NotBegun,
    /// Copying or verifying outside `Migrating`.
    NotMigrating,
    /// A tombstone before the copy was verified.
    NotVerified,
    /// `Lock` or a re-sync under the seal before the tombstone was written.
    NotTombstoned,
    /// The source changed after the tombstone was written: the KV store is sealed.
    SourceChangedAfterTombstone,
    /// The tombstone again, after it was already recorded.
    AlreadyTombstoned,
    /// Any event in `Locked`: the machine is terminal.
    Terminal,
    /// The KV backend was requested but the invoice migration completed and the KV store is tombstoned.
    KvTombstoned,
    /// The SQL backend was requested before the migration was locked.
    SqlNotReady,
    /// The KV store is tombstoned but the native store is missing or behind: restore it from backup.
    NativeStoreMissing,
    /// The KV backend was requested while the migration is sealed but the
    /// KV store no longer carries the tombstone (a power cut before the
    /// tombstone was durable, a restored backup).
    KvSealLost,
}

impl Refusal {
    /// A stable identifier for the refusal (used in JSON and the journal).
    pub fn name(self) -> &'static str {
        match self {
            Refusal::AlreadyBegun => "AlreadyBegun",
            Refusal::NotBegun => "NotBegun",
            Refusal::NotMigrating => "NotMigrating",
            Refusal::NotVerified => "NotVerified",
            Refusal::NotTombstoned => "NotTombstoned",
            Refusal::SourceChangedAfterTombstone => "SourceChangedAfterTombstone",
            Refusal::AlreadyTombstoned => "AlreadyTombstoned",
            Refusal::Terminal => "Terminal",
            Refusal::KvTombstoned => "KvTombstoned",
            Refusal::SqlNotReady => "SqlNotReady",
            Refusal::NativeStoreMissing => "NativeStoreMissing",
            Refusal::KvSealLost => "KvSealLost",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Refusal::AlreadyBegun => "the migration has already begun",
            Refusal::NotBegun => "the migration has not begun",
            Refusal::NotMigrating => "invoices are copied and verified only while migrating",
            Refusal::NotVerified => "the tombstone is written only after the copy is verified",
            Refusal::NotTombstoned => {
                "the migration is locked, or re-synced under the seal, only after the tombstone is written"
            }
            Refusal::SourceChangedAfterTombstone => {
                "the KV store changed after it was tombstoned; it is sealed and must not be written"
            }
            Refusal::AlreadyTombstoned => "the tombstone is already recorded",
            Refusal::Terminal => "invoice migration already completed; the machine is locked",
            Refusal::KvTombstoned => {
                "invoice migration already completed and the KV store is tombstoned: \
                 use the native SQL backend"
            }
            Refusal::SqlNotReady => {
                "the native SQL store is not complete yet: run `oneway migrate`"
            }
            Refusal::NativeStoreMissing => {
                "the KV store is tombstoned but the native SQL store is missing or does not \
                 record a completed migration: restore the native store from backup \
                 (never start a fresh, empty one)"
            }
            Refusal::KvSealLost => {
                "the migration is sealed but the KV store has lost its invoice-tombstone: never \
                 start lnd on the KV backend; run `oneway migrate` to restore the seal"
            }
        };
        f.write_str(text)
    }
}

/// The transition function: the next state for `event` in `state`, or why not.
///
/// This is the whole machine; every legal arrow appears here once:
///
/// ```text
/// Fresh      --Begin-------------> Migrating
/// Migrating  --BatchCopied-------> Migrating
/// Migrating  --SourceChanged-----> Migrating
/// Migrating  --VerificationPassed> Verified
/// Verified   --SourceChanged-----> Migrating
/// Verified   --TombstoneWritten--> Tombstoned
/// Tombstoned --BatchCopied-------> Tombstoned   (re-sync under the seal)
/// Tombstoned --Resynced----------> Tombstoned
/// Tombstoned --Lock--------------> Locked
/// ```
pub fn transition(state: State, event: Event) -> Result<State, Refusal> {
    use Event as E;
    use State as S;
    match (state, event) {
        (S::Fresh, E::Begin) => Ok(S::Migrating),
        (S::Fresh, _) => Err(Refusal::NotBegun),

        (S::Migrating, E::BatchCopied | E::SourceChanged) => Ok(S::Migrating),
        (S::Migrating, E::VerificationPassed) => Ok(S::Verified),
        (S::Migrating, E::Begin) => Err(Refusal::AlreadyBegun),
        (S::Migrating, E::TombstoneWritten) => Err(Refusal::NotVerified),
        (S::Migrating, E::Lock | E::Resynced) => Err(Refusal::NotTombstoned),

        (S::Verified, E::SourceChanged) => Ok(S::Migrating),
        (S::Verified, E::TombstoneWritten) => Ok(S::Tombstoned),
        (S::Verified, E::Begin) => Err(Refusal::AlreadyBegun),
        (S::Verified, E::BatchCopied | E::VerificationPassed) => Err(Refusal::NotMigrating),
        (S::Verified, E::Lock | E::Resynced) => Err(Refusal::NotTombstoned),

        (S::Tombstoned, E::Lock) => Ok(S::Locked),
        (S::Tombstoned, E::BatchCopied | E::Resynced) => Ok(S::Tombstoned),
        (S::Tombstoned, E::Begin) => Err(Refusal::AlreadyBegun),
        (S::Tombstoned, E::VerificationPassed) => Err(Refusal::NotMigrating),
        (S::Tombstoned, E::SourceChanged) => Err(Refusal::SourceChangedAfterTombstone),
        (S::Tombstoned, E::TombstoneWritten) => Err(Refusal::AlreadyTombstoned),

        (S::Locked, _) => Err(Refusal::Terminal),
    }
}

/// What a run of the migration does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create the native store's schema and record `Begin`.
    Begin,
    /// Copy (or catch up) and verify until clean; record
    /// `VerificationPassed`.
    CopyAndVerify,
    /// Write the tombstone if the source is still what was verified and
    /// record `TombstoneWritten`; otherwise record `SourceChanged`.
    Seal,
    /// Check that the KV store is still exactly what was verified, with its
    /// tombstone (re-syncing under the seal and recording `Resynced` when
    /// it is not), and record `Lock`.
    Lock,
    /// Write back the tombstone a `Locked` migration's KV store has lost,
    /// if its invoices are unchanged.
    RestoreSeal,
    /// Nothing left to do: the migration is `Locked` and sealed.
    Done,
}

/// The step a run takes next, given the persisted state (`None`: no native
/// store, or no migration in it yet) and whether the KV store carries the
/// tombstone; or the refusal that ends the run.
///
/// The one refusal: a tombstoned KV store beside a native store that is
/// missing or still before `Verified` means the native store was lost or
/// replaced by an old backup; starting afresh would copy from a store lnd
/// may have stopped using long ago.
pub fn next_step(state: Option<State>, tombstone_present: bool) -> Result<Step, Refusal> {
    use State as S;
    match (state, tombstone_present) {
        (None | Some(S::Fresh | S::Migrating), true) => Err(Refusal::NativeStoreMissing),
        (None | Some(S::Fresh), false) => Ok(Step::Begin),
        (Some(S::Migrating), false) => Ok(Step::CopyAndVerify),
        (Some(S::Verified), _) => Ok(Step::Seal),
        (Some(S::Tombstoned), _) => Ok(Step::Lock),
        (Some(S::Locked), false) => Ok(Step::RestoreSeal),
        (Some(S::Locked), true) => Ok(Step::Done),
    }
}

/// A storage backend an application may ask to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// lnd's key-value store (the migration's source).
    Kv,
    /// lnd's native SQL store (the migration's target).
    Sql,
}

impl Backend {
    /// The backend's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kv => "kv",
            Backend::Sql => "sql",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `backend` may be used, given the persisted state (`None` when no
/// native store exists) and whether the KV store carries the tombstone.
///
/// The rules, in order:
/// 1. A tombstoned KV store whose native store is missing, `Fresh` or
///    `Migrating` means the native store was lost or replaced by an old
///    backup: both backends are refused until it is restored.
/// 2. The KV backend is refused once the tombstone exists or the state is
///    `Tombstoned`/`Locked`.
/// 3. The SQL backend is allowed only in `Locked`.
pub fn backend_decision(
    state: Option<State>,
    tombstone_present: bool,
    backend: Backend,
) -> Result<(), Refusal> {
    let native_behind = matches!(state, None | Some(State::Fresh) | Some(State::Migrating));
    if tombstone_present && native_behind {
        return Err(Refusal::NativeStoreMissing);
    }
    match backend {
        Backend::Kv => {
            if tombstone_present {
                Err(Refusal::KvTombstoned)
            } else if state.is_some_and(State::is_sealed) {
                Err(Refusal::KvSealLost)
            } else {
                Ok(())
            }
        }
        Backend::Sql => {
            if state == Some(State::Locked) {
                Ok(())
            } else {
                Err(Refusal::SqlNotReady)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_reaches_locked() {
        let mut s = State::Fresh;
        for e in [
            Event::Begin,
            Event::BatchCopied,
            Event::VerificationPassed,
            Event::TombstoneWritten,
            Event::Lock,
        ] {
            s = transition(s, e).unwrap();
        }
        assert_eq!(s, State::Locked);
    }

    #[test]
    fn locked_is_terminal_and_sealed_states_never_return() {
        for e in Event::ALL {
            assert_eq!(transition(State::Locked, e), Err(Refusal::Terminal));
            if let Ok(next) = transition(State::Tombstoned, e) {
                assert!(next.is_sealed());
            }
        }
    }

    #[test]
    fn next_step_refuses_exactly_a_lost_native_store() {
        let states = [None].into_iter().chain(State::ALL.into_iter().map(Some));
        for state in states {
            for tombstone in [false, true] {
                let step = next_step(state, tombstone);
                let behind = matches!(state, None | Some(State::Fresh | State::Migrating));
                assert_eq!(
                    step == Err(Refusal::NativeStoreMissing),
                    behind && tombstone,
                    "{state:?} {tombstone}"
                );
                // Never a step that needs no tombstone once one is there,
                // never done while the seal is missing.
                assert!(!(tombstone && step == Ok(Step::Begin)));
                assert!(tombstone || step != Ok(Step::Done));
            }
        }
    }

    #[test]
    fn state_names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::from_name(s.name()), Some(s));
        }
        assert_eq!(State::from_name("locked"), None);
    }

    #[test]
    fn kv_refused_whenever_tombstone_present() {
        for st in [None, Some(State::Verified), Some(State::Locked)] {
            assert!(backend_decision(st, true, Backend::Kv).is_err());
        }
        assert_eq!(
            backend_decision(Some(State::Migrating), false, Backend::Kv),
            Ok(())
        );
        assert_eq!(
            backend_decision(Some(State::Locked), true, Backend::Sql),
            Ok(())
        );
    }
}
