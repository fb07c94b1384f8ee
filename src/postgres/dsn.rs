//! The connection string of lnd's Postgres database (`db.postgres.dsn`).
//!
//! [`Dsn::parse`] accepts both forms libpq does, key=value
//! (`host=/run/pg port=5432 user=lnd password=… dbname=lnd`) and URL
//! (`postgres://lnd:…@localhost:5432/lnd?sslmode=disable`, the form lnd's
//! documentation uses). The TLS options (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`, `sslsni`) are taken out and handled by
//! [`super::tls`]; the rest goes through `postgres::Config`.
//!
//! Invariant: a [`Dsn`] never shows its password. `Display` and `Debug`
//! render a canonical key=value form built from the parsed fields, with the
//! password (when there is one) as `***` and the `sslmode` when the DSN
//! gives one; the text the DSN was parsed from is not kept. Messages and
//! logs name a database only through this form.

use std::fmt;
use std::str::FromStr;

use postgres::config::{Host, SslMode as DriverSslMode};
use postgres::{Client, Config, NoTls};

use super::tls::{self, SslMode, TlsOptions};
use super::{PgError, PgResult};

/// A parsed connection string. See the [module docs](self) for the
/// redaction invariant.
#[derive(Clone)]
pub struct Dsn {
    config: Config,
    tls: TlsOptions,
    redacted: String,
}

impl Dsn {
    /// Parses a key=value or URL connection string. The error names the
    /// offending option, never a value. Files named by TLS options are read
    /// when a session is opened ([`Dsn::connect`]), not here.
    pub fn parse(text: &str) -> PgResult<Dsn> {
        let (rest, tls) = tls::split(text)?;
        let config = Config::from_str(&rest).map_err(|e| PgError::Dsn {
            // The driver's parse errors name options ("invalid value for
            // option `port`"), not values; keep only the message.
            why: e.to_string(),
        })?;
        if config.get_hosts().is_empty() {
            return Err(PgError::Dsn {
                why: "it names no host (give host=… or postgres://…@host/…)".into(),
            });
        }
        let unix = config
            .get_hosts()
            .iter()
            .filter(|h| matches!(h, Host::Unix(_)))
            .count();
        if tls.required() && unix > 0 && unix < config.get_hosts().len() {
            // TLS is never used over a Unix socket (libpq, pgx); one mode
            // cannot serve both kinds of host.
            return Err(PgError::Dsn {
                why: format!(
                    "`sslmode={}` with both Unix-socket and TCP hosts: give them in separate DSNs",
                    tls.mode
                ),
            });
        }
        let redacted = redact(&config, &tls);
        Ok(Dsn {
            config,
            tls,
            redacted,
        })
    }

    /// The parsed configuration, without the TLS options oneway handles
    /// itself (its `Debug` hides the password too).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The TLS options: the `sslmode` (`prefer` when the DSN gives none)
    /// and what it verifies.
    #[cfg(test)]
    fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// The redacted, canonical form: host, port, user, dbname, when a
    /// password is set `password=***`, and the `sslmode` the DSN gives.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The database name (`dbname`, or the user name as libpq defaults).
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname().or(self.config.get_user())
    }

    /// The same server, credentials and TLS options, another database.
    pub fn with_dbname(&self, dbname: &str) -> Dsn {
        let mut config = self.config.clone();
        config.dbname(dbname);
        let redacted = redact(&config, &self.tls);
        Dsn {
            config,
            tls: self.tls.clone(),
            redacted,
        }
    }

    /// Opens a session with the DSN's TLS options ([`super::tls`]: over a
    /// Unix socket never TLS, over TCP as `sslmode` says), named by this
    /// process's [`session_marker`] as its `application_name` (replacing
    /// one the DSN gives), so that the other-holders check can tell this
    /// process's sessions from everybody else's.
    pub fn connect(&self) -> PgResult<Client> {
        let mut config = self.config.clone();
        config.application_name(session_marker());
        let all_unix = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        let result = match self.tls.mode {
            _ if all_unix => {
                config.ssl_mode(DriverSslMode::Disable);
                config.connect(NoTls)
            }
            SslMode::Disable => {
                config.ssl_mode(DriverSslMode::Disable);
                config.connect(NoTls)
            }
            SslMode::Allow => {
                // Without TLS first; with it only if the server refuses
                // the session (a `hostssl`-only pg_hba.conf).
                config.ssl_mode(DriverSslMode::Disable);
                match config.connect(NoTls) {
                    Err(e) if e.as_db_error().is_some() => {
                        config.ssl_mode(DriverSslMode::Require);
                        config.connect(self.connector()?)
                    }
                    other => other,
                }
            }
            SslMode::Prefer => {
                config.ssl_mode(DriverSslMode::Prefer);
                config.connect(self.connector()?)
            }
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                config.ssl_mode(DriverSslMode::Require);
                config.connect(self.connector()?)
            }
        };
        result.map_err(|source| match tls::explain(&source, &self.tls) {
            Some(why) => PgError::Tls {
                dsn: self.redacted.clone(),
                why,
                driver: Some(source),
            },
            None => PgError::Connect {
                dsn: self.redacted.clone(),
                source,
            },
        })
    }

    fn connector(&self) -> PgResult<tokio_postgres_rustls::MakeRustlsConnect> {
        tls::connector(&self.tls).map_err(|why| PgError::Tls {
            dsn: self.redacted.clone(),
            why,
            driver: None,
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
pub(super) fn quote(v: &str) -> String {
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

fn redact(c: &Config, tls: &TlsOptions) -> String {
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
    if tls.mode_given {
        parts.push(format!("sslmode={}", tls.mode));
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
            format!("host=db port=5432 user=lnd password={SECRET} sslmode=verify-full sslrootcert=/ca.pem"),
            format!("postgres://lnd:{SECRET}@db/lnd?sslrootcert=%2Fca.pem&sslmode=require"),
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
            format!("host=db password={SECRET} sslmode={SECRET}"),
            format!("host=db password={SECRET} sslpassword={SECRET}"),
            format!("postgres://lnd:{SECRET}@db/lnd?sslmode=verify-{SECRET}"),
            format!("host=db password={SECRET} sslrootcert=system sslmode=require"),
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

        // The sslmode shows when the DSN gives it, and survives a round
        // trip and another database.
        let dsn =
            Dsn::parse("postgres://lnd@db:5433/lnd?sslmode=verify-full&sslrootcert=%2Fca.pem")
                .unwrap();
        assert_eq!(
            dsn.to_string(),
            "host=db port=5433 user=lnd dbname=lnd sslmode=verify-full"
        );
        let other = dsn.with_dbname("t2");
        assert_eq!(other.tls(), dsn.tls());
        assert_eq!(
            Dsn::parse(other.redacted()).unwrap().tls().mode,
            tls::SslMode::VerifyFull
        );
    }

    #[test]
    fn tls_over_both_kinds_of_host_is_refused() {
        let err = Dsn::parse("host=/run/pg,db.example sslmode=require")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("Unix-socket and TCP hosts"), "{err}");
        assert!(Dsn::parse("host=/run/pg,db.example sslmode=prefer").is_ok());
        assert!(Dsn::parse("host=/run/pg sslmode=verify-full").is_ok());
    }
}
