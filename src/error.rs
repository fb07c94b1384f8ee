//! Errors, as an enum whose variants carry what and where.
//!
//! Every variant prints as a sentence that names the store (KV or native),
//! its path, and what was being done, so an operator can act on it without
//! reading the code. [`Error::exit_code`] gives the CLI's exit status.

use std::fmt;
use std::path::PathBuf;

use crate::codec::CodecError;
use crate::fsm::{Event, Refusal, State};

/// Which of the two stores an error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// lnd's KV store (the source).
    Kv,
    /// The native SQL store (the target).
    Native,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Kv => "KV store",
            Role::Native => "native SQL store",
        })
    }
}

/// One field that differs between a source invoice and its native rows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// The KV invoice key (invoice number, 8 hex digits).
    pub invoice_key: String,
    /// What differs, e.g. `invoices.amount_msat: source 1000, native 999`.
    pub detail: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invoice {}: {}", self.invoice_key, self.detail)
    }
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path given for a store does not exist.
    #[error("the {role} {path} does not exist")]
    Missing {
        /// Which store.
        role: Role,
        /// The path given.
        path: PathBuf,
    },
    /// A path exists but is not a SQLite database.
    #[error("the {role} {path} is not a SQLite database ({why})")]
    NotSqlite {
        /// Which store.
        role: Role,
        /// The path given.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// The table prefix is not a plain SQL identifier.
    #[error("the table prefix {prefix:?} is invalid: use lowercase letters, digits and '_' (lnd's channel database uses \"channeldb\")")]
    BadPrefix {
        /// The prefix given.
        prefix: String,
    },
    /// The KV table `<prefix>_kv` is not in the KV store, or has the wrong columns.
    #[error("the KV store {path} has no usable table {table}: {why}")]
    NoKvTable {
        /// The KV store path.
        path: PathBuf,
        /// The table looked for.
        table: String,
        /// What is wrong (tables present, columns missing).
        why: String,
    },
    /// A SQLite operation failed.
    #[error("the {role} {path}: {action} failed: {source}")]
    Sqlite {
        /// Which store.
        role: Role,
        /// Its path.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The disk (or the configured size limit) is full.
    #[error("the {role} {path} is full while {action}: free space (or raise the limit) and rerun; everything committed before is intact")]
    Full {
        /// Which store.
        role: Role,
        /// Its path.
        path: PathBuf,
        /// What was being done.
        action: String,
    },
    /// Another process holds a SQLite lock on a store for too long.
    #[error("the {role} {path} is locked by another process while {action}: stop the other process (is lnd running?) and rerun")]
    Busy {
        /// Which store.
        role: Role,
        /// Its path.
        path: PathBuf,
        /// What was being done.
        action: String,
    },
    /// A file-system operation failed.
    #[error("{path}: {action} failed: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What was being done.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored invoice value does not decode.
    #[error("invoice {invoice_key} in the KV store {path} is malformed: {source}")]
    Codec {
        /// The KV key (hex) of the invoice.
        invoice_key: String,
        /// The KV store path.
        path: PathBuf,
        /// What is wrong with the bytes.
        #[source]
        source: CodecError,
    },
    /// An invoice decodes but cannot be migrated as it stands.
    #[error("invoice {invoice_key} in the KV store {path} cannot be migrated: {reason}")]
    BadInvoice {
        /// The KV key (hex) of the invoice.
        invoice_key: String,
        /// The KV store path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The `invoices` bucket holds a key that is neither an invoice, an AMP
    /// HTLC set, a known sub-bucket nor the tombstone.
    #[error("the KV store {path} has an unexpected key {key} in the invoices bucket: {why}")]
    UnexpectedKey {
        /// The KV store path.
        path: PathBuf,
        /// The key, hex.
        key: String,
        /// Why it is unexpected.
        why: String,
    },
    /// The verification pass found differences.
    #[error("verification failed: {total} mismatching field(s); first: {}", first_mismatches(.mismatches))]
    VerificationFailed {
        /// How many mismatches in all.
        total: u64,
        /// The first few mismatches.
        mismatches: Vec<Mismatch>,
    },
    /// Another `oneway migrate` works on the same native store.
    #[error("migration in progress (pid {pid}, since {since}) on {path}: wait for it to finish")]
    InProgress {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it recorded it.
        pid: String,
        /// When the holder started, as it recorded it.
        since: String,
    },
    /// The state machine or the guard refused.
    #[error("refused: {refusal} (state {state}{extra})")]
    Refused {
        /// The refusal.
        refusal: Refusal,
        /// The state at the time ("none" when there is no native store).
        state: String,
        /// More context, starting with "; " when present.
        extra: String,
    },
    /// The state machine was asked for an illegal transition (a bug or a tampered store).
    #[error("the state machine refused {event} in state {state}: {refusal}")]
    IllegalTransition {
        /// The persisted state.
        state: State,
        /// The event.
        event: Event,
        /// Why.
        refusal: Refusal,
    },
    /// The native store was made from another KV store.
    #[error("the native store {native} was migrated from a different KV store than {kv}: {why}; point oneway at the matching pair")]
    SourceMismatch {
        /// The native store.
        native: PathBuf,
        /// The KV store given.
        kv: PathBuf,
        /// Which identity field differs.
        why: String,
    },
    /// Nothing shows that the KV store is the one the native store was made
    /// from (see [`crate::identity`]).
    #[error("the native store {native} cannot be shown to come from the KV store {kv}: {why}. If it \
             is that store and it carries no tombstone, move the native store aside (keep it) and \
             run `oneway migrate` again to start afresh; otherwise point oneway at the matching pair")]
    SourceUnproven {
        /// The native store.
        native: PathBuf,
        /// The KV store given.
        kv: PathBuf,
        /// What evidence is missing.
        why: String,
    },
    /// The native store exists but is not one oneway can work with.
    #[error("the native store {path} {why}")]
    NotOnewayStore {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `--sql` names lnd's own native database, in which lnd's invoice
    /// migration is already recorded.
    #[error(
        "the native SQL store {path} is lnd's own database and already records lnd's invoice \
         migration (migration_tracker version {version}, 7 or above): lnd migrated the invoices \
         itself, or was started with db.skip-native-sql-migration and may hold invoices created \
         since, whose ids would collide with the KV add indexes. oneway wrote nothing into it and \
         will not: keep the file as it is. If lnd's own migration completed, nothing is left to do; \
         if it was skipped, the KV invoices can only be merged by hand"
    )]
    LndMigrated {
        /// Its path.
        path: PathBuf,
        /// The highest `migration_tracker` version.
        version: i64,
    },
    /// The source kept changing during every verification attempt.
    #[error("the KV store {path} kept changing during {attempts} verification passes: stop lnd and rerun")]
    SourceUnstable {
        /// The KV store path.
        path: PathBuf,
        /// Passes attempted.
        attempts: u32,
    },
    /// Writing a fixture failed.
    #[error(transparent)]
    Fixture(#[from] crate::fixture::FixtureError),
}

fn first_mismatches(m: &[Mismatch]) -> String {
    m.iter()
        .take(5)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The exit status the CLI uses for this error: 3 for refusals (the
    /// guard, a sealed store, an operator mistake), 4 when another migration
    /// is in progress, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. }
            | Error::SourceMismatch { .. }
            | Error::SourceUnproven { .. }
            | Error::LndMigrated { .. } => 3,
            Error::InProgress { .. } => 4,
            _ => 1,
        }
    }

    /// Builds the right variant for a SQLite failure: full disk and busy
    /// locks get their own variants so the message says what to do.
    pub fn sqlite(
        role: Role,
        path: impl Into<PathBuf>,
        action: impl Into<String>,
        source: rusqlite::Error,
    ) -> Error {
        let path = path.into();
        let action = action.into();
        if let rusqlite::Error::SqliteFailure(e, _) = &source {
            match e.code {
                rusqlite::ErrorCode::DiskFull => return Error::Full { role, path, action },
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                    return Error::Busy { role, path, action }
                }
                rusqlite::ErrorCode::NotADatabase => {
                    return Error::NotSqlite {
                        role,
                        path,
                        why: "SQLite says the file is not a database".into(),
                    }
                }
                _ => {}
            }
        }
        Error::Sqlite {
            role,
            path,
            action,
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
