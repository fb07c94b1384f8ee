//! The connection string of lnd's Postgres database (`db.postgres.dsn`).
//!
//! [`Dsn::parse`] accepts both forms libpq does, key=value
//! (`host=/run/pg port=5432 user=lnd password=… dbname=lnd`) and URL
//! (`postgres://lnd:…@localhost:5432/lnd?sslmode=disable`, the form lnd's
//! documentation uses), through `postgres::Config`.
//!
//! Invariant: a [`Dsn`] never shows its password. `Display` and `Debug`
//! render a canonical key=value form built from the parsed fields, with the
//! password (when there is one) as `***`; the text the DSN was parsed from is
//! not kept. Messages and logs name a database only through this form.

use std::fmt;
use std::str::FromStr;

use postgres::config::Host;
use postgres::{Client, Config, NoTls};

use super::{PgError, PgResult};

/// A parsed connection string. See the [module docs](self) for the
/// redaction invariant.
#[derive(Clone)]
pub struct Dsn {
    config: Config,
    redacted: String,
}

impl Dsn {
    /// Parses a key=value or URL connection string. The error names the
    /// offending option, never a value.
    pub fn parse(text: &str) -> PgResult<Dsn> {
        let config = Config::from_str(text).map_err(|e| PgError::Dsn {
            // The driver's parse errors name options ("invalid value for
            // option `port`"), not values; keep only the message.
            why: e.to_string(),
        })?;
        if config.get_hosts().is_empty() {
            return Err(PgError::Dsn {
                why: "it names no host (give host=… or postgres://…@host/…)".into(),
            });
        }
        let redacted = redact(&config);
        Ok(Dsn { config, redacted })
    }

    /// The parsed configuration (its `Debug` hides the password too).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The redacted, canonical form: host, port, user, dbname and, when a
    /// password is set, `password=***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The database name (`dbname`, or the user name as libpq defaults).
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname().or(self.config.get_user())
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Dsn {
        let mut config = self.config.clone();
        config.dbname(dbname);
        let redacted = redact(&config);
        Dsn { config, redacted }
    }

    /// Opens a session (without TLS: lnd's documented DSNs say
    /// `sslmode=disable`, and a loopback or socket connection needs none),
    /// named by this process's [`session_marker`] as its `application_name`
    /// (replacing one the DSN gives), so that the other-holders check can
    /// tell this process's sessions from everybody else's.
    pub fn connect(&self) -> PgResult<Client> {
        let mut config = self.config.clone();
        config.application_name(session_marker());
        config.connect(NoTls).map_err(|source| PgError::Connect {
            dsn: self.redacted.clone(),
            source,
        })
    }
}

/// The `application_name` of every session this process opens through
/// [`Dsn::connect`]: `oneway/<pid>/<nonce>`, the nonce drawn once per
/// process (from the clock), so that another oneway process, even one that
/// reused this pid, has another marker.
pub fn session_marker() -> &'static str {
    static MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARKER.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!(
            "oneway/{}/{:x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff
        )
    })
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({})", self.redacted)
    }
}

/// Quotes a value the way libpq's key=value syntax reads it back.
fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_owned();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn redact(c: &Config) -> String {
    let mut parts = Vec::new();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    if !c.get_ports().is_empty() {
        let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(u) = c.get_user() {
        parts.push(format!("user={}", quote(u)));
    }
    if c.get_password().is_some() {
        parts.push("password=***".into());
    }
    if let Some(d) = c.get_dbname() {
        parts.push(format!("dbname={}", quote(d)));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-Pa55";

    #[test]
    fn the_password_never_shows() {
        for text in [
            format!("host=/tmp/pg port=5433 user=lnd password={SECRET} dbname=lnd"),
            format!("host=localhost user=lnd password='{SECRET}' dbname=lnd sslmode=disable"),
            format!("postgres://lnd:{SECRET}@localhost:5432/lnd?sslmode=disable"),
            format!("postgresql://lnd:{SECRET}@127.0.0.1/lnd"),
        ] {
            let dsn = Dsn::parse(&text).expect("parses");
            for shown in [
                dsn.to_string(),
                format!("{dsn:?}"),
                dsn.redacted().to_owned(),
                format!("{:?}", dsn.config()),
                dsn.with_dbname("other").to_string(),
            ] {
                assert!(!shown.contains(SECRET), "{shown}");
                assert!(!shown.contains("s3cr3t"), "{shown}");
            }
            assert!(dsn.to_string().contains("password=***"), "{dsn}");
            assert_eq!(dsn.config().get_password(), Some(SECRET.as_bytes()));
        }
    }

    #[test]
    fn a_bad_dsn_is_refused_without_echoing_it() {
        for text in [
            format!("host=/tmp port=notaport password={SECRET}"),
            format!("postgres://lnd:{SECRET}@localhost:99999999/lnd"),
            format!("host=/tmp password={SECRET} bogus=1"),
            format!("password={SECRET}"),
        ] {
            let err = Dsn::parse(&text).expect_err("refused").to_string();
            assert!(!err.contains(SECRET), "{err}");
        }
    }

    #[test]
    fn redacted_form_names_the_database() {
        let dsn = Dsn::parse("host='/tmp/x y' port=5432 user=oneway dbname=postgres").unwrap();
        assert_eq!(
            dsn.to_string(),
            "host='/tmp/x y' port=5432 user=oneway dbname=postgres"
        );
        let again = Dsn::parse(dsn.redacted()).unwrap();
        assert_eq!(again.to_string(), dsn.to_string());
        assert_eq!(dsn.with_dbname("t1").dbname(), Some("t1"));
    }
}
