//! The guard (may the application open this backend?) and the refusals
//! it and the migration raise, each logged and journaled as a security
//! event.

use super::identity::check_identity;
use super::{GuardOutcome, Migrator};
use crate::backends::Backends;
use crate::error::{Error, Result};
use crate::fsm::{self, Backend, Refusal, State};
use crate::store::NativeStore;

impl<W: Backends> Migrator<W> {
    /// Decides whether the application may open `backend`.
    ///
    /// A refusal is returned as [`Error::Refused`] (exit code 3), logged as a
    /// security event through `tracing` at WARN, and appended to the journal
    /// when a native store exists.
    pub fn guard(&self, backend: Backend) -> Result<GuardOutcome> {
        let kv = self.open_source()?;
        let tombstone_present = kv.tombstone_present()?;
        let target = W::open_store(&self.opts)?;
        let persisted = match &target {
            Some(t) => t.load()?,
            None => None,
        };
        let state = persisted.as_ref().map(|row| row.state);
        if let Some(row) = &persisted {
            let buckets = kv.invoice_buckets()?;
            if let Err(e) = check_identity(&*kv, buckets, &self.opts, row) {
                security_event(
                    target.as_deref(),
                    state,
                    Request::Backend(backend),
                    tombstone_present,
                    "SourceMismatch",
                    &e.to_string(),
                );
                return Err(e);
            }
        }
        match fsm::backend_decision(state, tombstone_present, backend) {
            Ok(()) => Ok(GuardOutcome {
                backend,
                state,
                tombstone_present,
            }),
            Err(refusal) => {
                let err = refused(refusal, state, tombstone_present);
                security_event(
                    target.as_deref(),
                    state,
                    Request::Backend(backend),
                    tombstone_present,
                    refusal.name(),
                    &err.to_string(),
                );
                Err(err)
            }
        }
    }
}

pub(super) fn refused(refusal: Refusal, state: Option<State>, tombstone_present: bool) -> Error {
    Error::Refused {
        refusal,
        tombstone_present,
        state,
        extra: {
            let mut extra = String::new();
            if tombstone_present {
                extra.push_str("; the KV store carries the invoice-tombstone");
            }
            // Sealed but not yet locked (a run stopped between the tombstone
            // and `Lock`): the native backend is refused too until a rerun
            // finishes, so say what to do first.
            if refusal == Refusal::KvTombstoned && state != Some(State::Locked) {
                extra.push_str(
                    "; the migration is not locked yet: run `oneway migrate` to finish it before \
                     switching to the native SQL backend",
                );
            }
            extra
        },
    }
}

/// Logs a refused backend request as a security event and journals it.
pub(super) fn security_event<W: Workload>(
    target: Option<&dyn NativeStore<W>>,
    state: Option<State>,
    request: Request,
    tombstone_present: bool,
    reason: &str,
    message: &str,
) {
    // The structured field names what was refused: `backend` (kv/sql) for
    // an application's request, `operation` for a step of the migration.
    let (kind, journal_event, field, value) = match request {
        Request::Backend(b) => ("backend_refused", "BackendRefused", "backend", b.name()),
        Request::Operation(op) => ("operation_refused", "OperationRefused", "operation", op),
    };
    tracing::warn!(
        target: "oneway::security",
        security_event = kind,
        backend = matches!(request, Request::Backend(_)).then_some(value),
        operation = matches!(request, Request::Operation(_)).then_some(value),
        state = state.map_or("none", State::name),
        tombstone_present,
        reason,
        "refused {request}: {message}"
    );
    if let Some(t) = target {
        let details = serde_json::json!({
            field: value,
            "reason": reason,
            "tombstone_present": tombstone_present,
            "message": message,
            "pid": std::process::id(),
        });
        if let Err(e) = t.security_event(state, journal_event, details) {
            tracing::warn!(error = %e, "could not journal the security event");
        }
    }
}

/// Refuses `operation` on a sealed store for the machine's `refusal` (the
/// KV store carries the tombstone): logs and journals the security event,
/// and returns the error.
pub(super) fn sealed_store_changed<W: Workload>(
    t: &dyn NativeStore<W>,
    state: State,
    refusal: Refusal,
    operation: &'static str,
    extra: String,
) -> Error {
    let err = Error::Refused {
        refusal,
        state: Some(state),
        extra,
        tombstone_present: true,
    };
    security_event(
        Some(t),
        Some(state),
        Request::Operation(operation),
        true,
        refusal.name(),
        &err.to_string(),
    );
    err
}

/// What was refused, for security events.
#[derive(Debug, Clone, Copy)]
pub(super) enum Request {
    /// An application asked to open a backend (`oneway guard`).
    Backend(Backend),
    /// A step of the migration itself (`migrate`, the tombstone, the lock).
    Operation(&'static str),
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Backend(b) => write!(f, "request for the {b} backend"),
            Request::Operation(op) => write!(f, "{op}"),
        }
    }
}
use crate::workload::Workload;
