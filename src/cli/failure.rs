//! How a failed command is reported: its message (the error and its
//! sources, each said once), its exit code, and the stable `reason` of the
//! `--json` output (README.md). The migration's [`Error`] says both itself;
//! the fixture generator and the benchmark have their own error types,
//! mapped here to what they gave when they were variants of [`Error`].

use oneway::bench::BenchError;
use oneway::fixture::FixtureError;
use oneway::{Error, PgError, State};

/// A failed command, as the CLI reports it.
pub struct Failure<'a> {
    /// The error, for the message.
    error: &'a (dyn std::error::Error + 'static),
    /// The process's exit status.
    pub exit_code: i32,
    /// The stable snake_case code of the failure.
    reason: String,
    /// For a refusal (exit code 3 or 4): the state the command saw and
    /// whether the KV store carried the tombstone.
    refusal: Option<(Option<State>, bool)>,
}

impl<'a> Failure<'a> {
    /// A failure that is not a refusal: exit code 1 and `reason`.
    fn other(error: &'a (dyn std::error::Error + 'static), reason: &str) -> Failure<'a> {
        Failure {
            error,
            exit_code: 1,
            reason: reason.to_string(),
            refusal: None,
        }
    }

    /// The error and its sources, each said once.
    pub fn message(&self) -> String {
        let mut msg = self.error.to_string();
        let mut src = self.error.source();
        while let Some(s) = src {
            let text = s.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            src = s.source();
        }
        msg
    }

    /// The `--json` form. A refusal (exit code 3 or 4) has the same shape
    /// as the guard's answer: `allowed`, a stable `reason`, the `state` and
    /// `tombstone_present` the command saw, the `message`; any other failure
    /// is `error` (the message), `reason` and `exit_code`.
    pub fn json(&self, msg: &str) -> serde_json::Value {
        match self.refusal {
            Some((state, tombstone_present)) => serde_json::json!({
                "allowed": false,
                "reason": self.reason,
                "state": state,
                "tombstone_present": tombstone_present,
                "message": msg,
                "exit_code": self.exit_code,
            }),
            None => serde_json::json!({
                "error": msg,
                "reason": self.reason,
                "exit_code": self.exit_code,
            }),
        }
    }

    /// The `error` event of `migrate --progress-json`.
    pub fn event(&self, msg: &str) -> serde_json::Value {
        serde_json::json!({
            "event": "error",
            "reason": self.reason,
            "exit_code": self.exit_code,
            "message": msg,
        })
    }
}

impl<'a> From<&'a Error> for Failure<'a> {
    fn from(e: &'a Error) -> Failure<'a> {
        Failure {
            error: e,
            exit_code: e.exit_code(),
            reason: e.reason(),
            refusal: e.refusal_context(),
        }
    }
}

/// A fixture store that could not be written: exit code 1, reason
/// `fixture`.
impl<'a> From<&'a FixtureError> for Failure<'a> {
    fn from(e: &'a FixtureError) -> Failure<'a> {
        Failure::other(e, "fixture")
    }
}

/// A benchmark that stopped: as its fixture or SQLite error says, `io` for
/// a file-system failure, `not_a_oneway_store` when the child migration
/// failed.
impl<'a> From<&'a BenchError> for Failure<'a> {
    fn from(e: &'a BenchError) -> Failure<'a> {
        match e {
            BenchError::Fixture(f) => Failure::from(f),
            BenchError::Floor(inner) => Failure::from(inner),
            BenchError::Io { .. } => Failure::other(e, "io"),
            BenchError::NotMigrated { .. } => Failure::other(e, "not_a_oneway_store"),
            BenchError::Postgres(_) => Failure::other(e, "postgres"),
        }
    }
}

/// A connection string that does not parse: exit code 2 (bad usage),
/// reason `bad_dsn`. The message names the option, never a value.
impl<'a> From<&'a PgError> for Failure<'a> {
    fn from(e: &'a PgError) -> Failure<'a> {
        Failure {
            error: e,
            exit_code: 2,
            reason: "bad_dsn".into(),
            refusal: None,
        }
    }
}
