//! Statements a session prepares once and keeps.
//!
//! rust-postgres prepares a statement given as text on every call: a round
//! trip, and a parse on the server, before the statement runs. Queries on
//! the hot paths avoid that with the driver's typed, unnamed form
//! (`query_typed`), which sends everything in one round trip; a `COPY` has
//! no such form, so the copy's `COPY` statements are prepared once per
//! session and kept here (a batch runs seven of them).
//!
//! Invariant: a [`Statements`] holds statements of exactly one session. A
//! prepared statement is an object of the server session that prepared it,
//! so the cache lives beside its session and is dropped with it; it is
//! never shared with another session. A statement outlives the transaction
//! it was prepared in (rolled back or not), as prepared statements of the
//! protocol do. It holds at most [`MAX_STATEMENTS`] statements: the copy
//! needs eight.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::{GenericClient, Statement};

/// The most statements one cache keeps; past it, a statement is prepared
/// for the call and not kept (a bound, never reached by the copy).
pub const MAX_STATEMENTS: usize = 32;

/// Prepared statements of one session, by their text (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct Statements(Mutex<HashMap<String, Statement>>);

impl Statements {
    /// The statement `sql`, prepared on `session` the first time it is
    /// asked for. `session` must be the session (or a transaction of the
    /// session) every earlier call of this cache used.
    pub fn get(
        &self,
        session: &mut impl GenericClient,
        sql: &str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.kept().get(sql) {
            return Ok(s.clone());
        }
        let statement = session.prepare(sql)?;
        let mut kept = self.kept();
        if kept.len() < MAX_STATEMENTS {
            kept.insert(sql.to_owned(), statement.clone());
        }
        Ok(statement)
    }

    /// The statements kept (a poisoned lock only means a panic elsewhere
    /// while it was held; the map is still whole).
    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
