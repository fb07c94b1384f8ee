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

impl Mismatch {
    /// A difference that concerns the store as a whole (a count, a table,
    /// lnd's bookkeeping), listed under the key `*`.
    pub fn store_wide(detail: String) -> Mismatch {
        Mismatch {
            invoice_key: "*".into(),
            detail,
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invoice {}: {}", self.invoice_key, self.detail)
    }
}

/// Everything that can go wrong.
///
/// Non-exhaustive: new failure modes may be added; match the ones you act
/// on and fall back on [`Error::exit_code`] and [`Error::reason`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path given for a store does not exist.
    #[error("the {role} {path} does not exist")]
    Missing {
        /// Which store.
        role: Role,
        /// The path given.
        path: PathBuf,
    },
    /// The folder a store should be in does not exist.
    #[error("the folder {path} for the {role} does not exist: create it first (oneway does not create folders)")]
    MissingFolder {
        /// Which store.
        role: Role,
        /// The folder.
        path: PathBuf,
    },
    /// A path oneway would create or rewrite is not safe to use (a symbolic
    /// link, a special file, a file with other hard links).
    #[error("refusing to use {path}: it {why}")]
    UnsafePath {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The KV store cannot be written by this user, so the tombstone that
    /// ends the migration could not be written.
    #[error("the KV store {path} cannot be written: {why}; the tombstone that seals it at the end of the migration needs write access, so nothing was copied: run oneway as lnd's user (or fix the permissions) and rerun")]
    NotWritable {
        /// The KV store path.
        path: PathBuf,
        /// What is not writable, and the OS's answer.
        why: String,
    },
    /// The native store's folder has too little free space.
    #[error("the folder {} has {} free but the native SQL store needs about {} (three times the {} of invoices in the KV store); nothing was copied: free space or put the native store elsewhere, then rerun", .folder.display(), crate::files::human(*.available), crate::files::human(*.needed), crate::files::human(*.invoice_bytes))]
    NoRoom {
        /// The folder of the native store.
        folder: PathBuf,
        /// Estimated bytes needed.
        needed: u64,
        /// Bytes available to this user.
        available: u64,
        /// Bytes of invoice values in the KV store (the estimate's base).
        invoice_bytes: u64,
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
    /// Another process (a running lnd) holds the KV store open, so the seal
    /// step was not taken: everything before it is done and durable.
    #[error(
        "{done}; the KV store {kv} is open in another process: {holders}. \
         Stop lnd (or whatever holds it) and run `oneway migrate` again to seal: \
         the rest takes about {estimate_s} s"
    )]
    KvInUse {
        /// The KV store.
        kv: PathBuf,
        /// What holds it, as a sentence.
        holders: String,
        /// What is done, as a sentence.
        done: String,
        /// Seconds the rerun should take, roughly.
        estimate_s: u64,
        /// The state the run stopped in.
        at: State,
        /// Whether the KV store carried the tombstone.
        tombstone_present: bool,
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
        /// The state this run saw before it tried the lock.
        at: Option<State>,
        /// Whether the KV store carried the tombstone then.
        tombstone_present: bool,
    },
    /// The state machine or the guard refused.
    #[error("refused: {refusal} (state {}{extra})", state_text(*.state))]
    Refused {
        /// The refusal.
        refusal: Refusal,
        /// The state at the time (`None`: no native store).
        state: Option<State>,
        /// More context, starting with "; " when present.
        extra: String,
        /// Whether the KV store carries the tombstone.
        tombstone_present: bool,
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
        /// The native store's state.
        at: Option<State>,
        /// Whether the KV store carries the tombstone.
        tombstone_present: bool,
    },
    /// The migration is `Locked`, the KV store lost its tombstone, and its
    /// invoices differ from what was verified: lnd may have run on both.
    #[error(
        "the migration into {native} is locked, but the KV store {kv} has lost its invoice-tombstone \
         and its invoices changed since they were verified ({now} invoices now, {verified} verified): \
         lnd may have run on the KV backend after the native store took over, so each store may hold \
         payments the other lacks. oneway wrote nothing. Keep lnd on the native backend \
         (`oneway guard --backend sql` allows it, `--backend kv` refuses), list the differing invoices \
         with `oneway verify`, and reconcile them before the KV store is sealed again"
    )]
    SealLostAndChanged {
        /// The native store.
        native: PathBuf,
        /// The KV store.
        kv: PathBuf,
        /// Invoices in the KV store now.
        now: u64,
        /// Invoices verified.
        verified: u64,
    },
    /// Nothing shows that the KV store is the one the native store was made
    /// from (`spec/state-machine.md` §8.2).
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
        /// The state of the native store.
        at: Option<State>,
        /// Whether the KV store carried the tombstone.
        tombstone_present: bool,
    },
    /// A batch size of 0 was asked for (the library; the CLI refuses it as a
    /// usage error).
    #[error("a batch size of 0 copies nothing: give a batch size of 1 or more")]
    ZeroBatchSize,
    /// The thread decoding the KV store stopped before the end of its
    /// stream (its own error, if any, was reported first).
    #[error("the KV store {kv} could not be read to its end: the decoding thread stopped early")]
    DecoderEnded {
        /// The KV store.
        kv: PathBuf,
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
    /// The run was cancelled through its [`crate::CancelHandle`]: what was
    /// committed before is intact, and the next run continues from there.
    #[error("the migration was cancelled; everything committed before is intact: run it again to continue")]
    Cancelled,
    /// A PostgreSQL operation failed (lnd on Postgres: both stores live in
    /// the database its DSN names, shown only redacted).
    #[cfg(feature = "postgres")]
    #[error("the {role} in PostgreSQL: {source}")]
    Postgres {
        /// Which store.
        role: Role,
        /// What failed, and what was being done.
        #[source]
        source: crate::postgres::PgError,
    },
}

/// A refusal's state as its message prints it.
fn state_text(state: Option<State>) -> &'static str {
    state.map_or("none (no native store)", State::name)
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
    /// is in progress, 5 when another process holds the KV store open, 6
    /// when the run was cancelled, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. }
            | Error::SourceMismatch { .. }
            | Error::SourceUnproven { .. }
            | Error::LndMigrated { .. }
            | Error::SealLostAndChanged { .. } => 3,
            Error::InProgress { .. } => 4,
            Error::KvInUse { .. } => 5,
            Error::Cancelled => 6,
            _ => 1,
        }
    }

    /// A stable snake_case code for the error, printed as `reason` in the
    /// `--json` output (listed in README.md). Refusals use the name of their
    /// [`Refusal`].
    pub fn reason(&self) -> String {
        match self {
            Error::Refused { refusal, .. } => snake(refusal.name()),
            Error::SourceMismatch { .. } => "source_mismatch".into(),
            Error::SourceUnproven { .. } => "source_unproven".into(),
            Error::LndMigrated { .. } => "lnd_already_migrated".into(),
            Error::KvInUse { .. } => "kv_in_use".into(),
            Error::SealLostAndChanged { .. } => "seal_lost_and_changed".into(),
            Error::InProgress { .. } => "migration_in_progress".into(),
            Error::Missing { .. } => "missing".into(),
            Error::MissingFolder { .. } => "missing_folder".into(),
            Error::UnsafePath { .. } => "unsafe_path".into(),
            Error::NotWritable { .. } => "kv_not_writable".into(),
            Error::NoRoom { .. } => "insufficient_space".into(),
            Error::NotSqlite { .. } => "not_sqlite".into(),
            Error::BadPrefix { .. } => "bad_prefix".into(),
            Error::NoKvTable { .. } => "no_kv_table".into(),
            Error::Sqlite { .. } => "sqlite".into(),
            Error::Full { .. } => "disk_full".into(),
            Error::Busy { .. } => "busy".into(),
            Error::Io { .. } => "io".into(),
            Error::Codec { .. } => "malformed_invoice".into(),
            Error::BadInvoice { .. } => "bad_invoice".into(),
            Error::UnexpectedKey { .. } => "unexpected_key".into(),
            Error::VerificationFailed { .. } => "verification_failed".into(),
            Error::IllegalTransition { .. } => "illegal_transition".into(),
            Error::NotOnewayStore { .. } => "not_a_oneway_store".into(),
            Error::ZeroBatchSize => "zero_batch_size".into(),
            Error::DecoderEnded { .. } => "decoder_ended".into(),
            Error::SourceUnstable { .. } => "source_unstable".into(),
            Error::Cancelled => "cancelled".into(),
            #[cfg(feature = "postgres")]
            Error::Postgres { .. } => "postgres".into(),
        }
    }

    /// For a refusal (exit code 3 or 4): the state the command saw (`None`:
    /// no native store, or not known) and whether the KV store carried the
    /// tombstone.
    pub fn refusal_context(&self) -> Option<(Option<State>, bool)> {
        match self {
            Error::Refused {
                state,
                tombstone_present,
                ..
            } => Some((*state, *tombstone_present)),
            Error::SourceMismatch {
                at,
                tombstone_present,
                ..
            }
            | Error::SourceUnproven {
                at,
                tombstone_present,
                ..
            }
            | Error::InProgress {
                at,
                tombstone_present,
                ..
            } => Some((*at, *tombstone_present)),
            Error::SealLostAndChanged { .. } => Some((Some(State::Locked), false)),
            Error::KvInUse {
                at,
                tombstone_present,
                ..
            } => Some((Some(*at), *tombstone_present)),
            _ => None,
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

/// Attaches what and where to a SQLite failure: `.ctx(role, path, action)`
/// instead of a `map_err` closure at every call. Goes through
/// [`Error::sqlite`], so a full disk or a busy lock keeps its own variant.
pub(crate) trait Context<T> {
    /// The result with its error given a store, a path and an action.
    fn ctx(self, role: Role, path: &std::path::Path, action: &str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, rusqlite::Error> {
    fn ctx(self, role: Role, path: &std::path::Path, action: &str) -> Result<T> {
        self.map_err(|e| Error::sqlite(role, path, action, e))
    }
}

/// [`Context`] for file-system failures: `.ctx(path, action)` builds
/// [`Error::Io`].
pub(crate) trait IoContext<T> {
    /// The result with its error given a path and an action.
    fn ctx(self, path: &std::path::Path, action: &str) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn ctx(self, path: &std::path::Path, action: &str) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            action: action.to_string(),
            source,
        })
    }
}

/// [`Context`] for PostgreSQL failures: `.pg(role, action)` builds
/// [`Error::Postgres`].
#[cfg(feature = "postgres")]
pub(crate) trait PgContext<T> {
    /// The result with its error given a store and an action.
    fn pg(self, role: Role, action: &str) -> Result<T>;
}

#[cfg(feature = "postgres")]
impl<T> PgContext<T> for std::result::Result<T, postgres::Error> {
    fn pg(self, role: Role, action: &str) -> Result<T> {
        self.map_err(|source| Error::Postgres {
            role,
            source: crate::postgres::PgError::Sql {
                action: action.to_string(),
                source,
            },
        })
    }
}

#[cfg(feature = "postgres")]
impl<T> PgContext<T> for std::result::Result<T, crate::postgres::PgError> {
    fn pg(self, role: Role, _action: &str) -> Result<T> {
        self.map_err(|source| Error::Postgres { role, source })
    }
}

/// `KvTombstoned` → `kv_tombstoned`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Starts the thread `name` running `f`; a failure to start it is an
/// [`Error::Io`] naming it as `what` ("the decoder thread").
pub(crate) fn spawn_thread<T: Send + 'static>(
    name: String,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| Error::Io {
            path: PathBuf::from(format!("({what})")),
            action: format!("starting the {what}"),
            source: e,
        })
}
