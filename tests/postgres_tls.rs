//! TLS to PostgreSQL, against the real server `.ci/postgres` starts with
//! `ssl=on` and a certificate for `localhost` and `127.0.0.1` signed by its
//! own CA (`ONEWAY_TEST_PG_CA`); `ONEWAY_TEST_PG_OTHER_CA` signed nothing of
//! it. These tests connect over TCP to 127.0.0.1 (the socket never carries
//! TLS) and fail, not skip, in CI without the server or the CA.
//!
//! * each `sslmode` does what libpq's does: `disable` plain, `prefer` and
//!   `require` encrypted (the server's `pg_stat_ssl` says so), `verify-ca`
//!   checks the chain and not the name, `verify-full` the chain and the
//!   name, `require` with `sslrootcert` the chain;
//! * failures say what failed: a wrong CA, a wrong host name, a missing root
//!   file (named), a server that does not offer TLS;
//! * a whole `oneway migrate` over `sslmode=verify-full`.
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::pg::{pg_args, pg_fixture, server, TestDb};
use common::run;
use oneway::__test_support::postgres::{Dsn, PgError};

/// The CA variables, or `None` when the tests skip (no server, outside
/// CI). Panics in CI when the server is there but its CA is not.
fn cas() -> Option<(String, String)> {
    server()?;
    let get = |v: &str| match std::env::var(v) {
        Ok(p) if std::path::Path::new(&p).is_file() => Some(p),
        _ if std::env::var_os("CI").is_some() => panic!(
            "CI is set but {v} names no file: the TLS tests need the CA `.ci/postgres` makes"
        ),
        _ => {
            eprintln!("skipped: no {v} (start the server with .ci/postgres)");
            None
        }
    };
    Some((get("ONEWAY_TEST_PG_CA")?, get("ONEWAY_TEST_PG_OTHER_CA")?))
}

/// A fresh database, its TCP port, the CA and the other CA.
fn setup() -> Option<(TestDb, u16, String, String)> {
    let (ca, other) = cas()?;
    let db = TestDb::fresh()?;
    let port = Dsn::parse(&db.dsn)
        .unwrap()
        .config()
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432);
    Some((db, port, ca, other))
}

/// A TCP DSN to the test database with the given TLS options.
fn tcp(db: &TestDb, port: u16, host: &str, tls: &str) -> Dsn {
    let text = format!(
        "host={host} port={port} user=oneway dbname={} connect_timeout=10 {tls}",
        db.name
    );
    Dsn::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Whether the session is encrypted, as the server sees it.
fn encrypted(dsn: &Dsn) -> bool {
    let mut c = dsn
        .connect()
        .unwrap_or_else(|e| panic!("connecting with {dsn}: {e}"));
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .unwrap()
    .get(0)
}

fn refused(dsn: &Dsn) -> String {
    match dsn.connect() {
        Ok(_) => panic!("{dsn} connected"),
        Err(e) => {
            assert!(matches!(e, PgError::Tls { .. }), "not a TLS error: {e:?}");
            e.to_string()
        }
    }
}

#[test]
fn each_sslmode_encrypts_as_it_says() {
    let Some((db, port, ca, _)) = setup() else {
        return;
    };
    assert!(!encrypted(&tcp(&db, port, "127.0.0.1", "sslmode=disable")));
    // prefer, the default: encrypted when the server offers it.
    assert!(encrypted(&tcp(&db, port, "127.0.0.1", "")));
    assert!(encrypted(&tcp(&db, port, "127.0.0.1", "sslmode=prefer")));
    // allow: without TLS first, and this server accepts that.
    assert!(!encrypted(&tcp(&db, port, "127.0.0.1", "sslmode=allow")));
    assert!(encrypted(&tcp(&db, port, "127.0.0.1", "sslmode=require")));
    let verify_ca = format!("sslmode=verify-ca sslrootcert={ca}");
    assert!(encrypted(&tcp(&db, port, "127.0.0.1", &verify_ca)));
    let full = format!("sslmode=verify-full sslrootcert={ca}");
    assert!(encrypted(&tcp(&db, port, "localhost", &full)));
    assert!(encrypted(&tcp(&db, port, "127.0.0.1", &full)));
    let with_root = format!("sslmode=require sslrootcert={ca}");
    assert!(encrypted(&tcp(&db, port, "127.0.0.1", &with_root)));

    // The URL form, as lnd's documentation writes DSNs.
    let url = format!(
        "postgres://oneway@localhost:{port}/{}?sslmode=verify-full&sslrootcert={}",
        db.name,
        ca.replace('/', "%2F")
    );
    let dsn = Dsn::parse(&url).unwrap();
    assert!(encrypted(&dsn));
    assert!(dsn.to_string().contains("sslmode=verify-full"), "{dsn}");

    // Over the Unix socket there is no TLS, whatever the mode (libpq, pgx).
    let socket = Dsn::parse(&format!("{} {full}", db.dsn)).unwrap();
    assert!(!encrypted(&socket));
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let Some((db, port, ca, _)) = setup() else {
        return;
    };
    // `host` is the name verified, `hostaddr` where the session goes.
    let wrong = "wrong.example.invalid hostaddr=127.0.0.1";
    let err = refused(&tcp(
        &db,
        port,
        wrong,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ));
    assert!(
        err.contains("not valid for the host name") && err.contains("wrong.example.invalid"),
        "{err}"
    );
    assert!(err.contains("sslmode=verify-full"), "{err}");
    // verify-ca: the chain only.
    assert!(encrypted(&tcp(
        &db,
        port,
        wrong,
        &format!("sslmode=verify-ca sslrootcert={ca}")
    )));
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let Some((db, port, _, other)) = setup() else {
        return;
    };
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = refused(&tcp(
            &db,
            port,
            "localhost",
            &format!("sslmode={mode} sslrootcert={other}"),
        ));
        assert!(err.contains("not signed by a trusted CA"), "{mode}: {err}");
        assert!(
            err.contains(&format!("sslrootcert={other}")),
            "{mode}: {err}"
        );
    }
    // Without sslrootcert, verify-full takes the system's roots, which do
    // not hold the test CA.
    let err = refused(&tcp(&db, port, "localhost", "sslmode=verify-full"));
    assert!(
        err.contains("not signed by a trusted CA") || err.contains("system's trust store"),
        "{err}"
    );
}

#[test]
fn a_missing_root_file_is_named_and_exits_1() {
    let Some((db, port, _, _)) = setup() else {
        return;
    };
    let missing = "/nonexistent/oneway/root.crt";
    let err = refused(&tcp(
        &db,
        port,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={missing}"),
    ));
    assert!(
        err.contains(&format!("cannot read sslrootcert={missing}")),
        "{err}"
    );

    let dsn = format!(
        "host=localhost port={port} user=oneway dbname={} sslmode=verify-full sslrootcert={missing}",
        db.name
    );
    let out = run(&pg_args("status", &dsn, &["--json"]), &[]);
    out.assert_code(1, "status with a missing root file");
    let j = out.json();
    assert_eq!(j["reason"], "postgres", "{out:?}");
    assert!(
        j["error"].as_str().unwrap_or("").contains(missing),
        "{out:?}"
    );
}

#[test]
fn a_dsn_tls_option_oneway_does_not_know_is_usage() {
    let out = run(
        &pg_args(
            "status",
            "host=localhost user=oneway sslmode=verify-full sslpassword=hunter2",
            &["--json"],
        ),
        &[],
    );
    out.assert_code(2, "an unsupported TLS option");
    assert_eq!(out.json()["reason"], "bad_dsn", "{out:?}");
    assert!(!out.stdout.contains("hunter2"), "{out:?}");
    assert!(out.stdout.contains("sslpassword"), "{out:?}");
}

/// A TCP "server" that answers the TLS request with `N` (no TLS), as a
/// PostgreSQL built or configured without it does; then, for a client that
/// goes on without TLS, refuses the session with an error.
fn server_without_tls() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        // One client per test case below.
        for _ in 0..2 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut request = [0u8; 8];
            if s.read_exact(&mut request).is_err() {
                continue;
            }
            // SSLRequest: length 8, code 80877103.
            assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
            let _ = s.write_all(b"N");
            let _ = s.flush();
            // A client that goes on sends its startup message; answer
            // with a FATAL error and close.
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let msg = b"SFATAL\0C28000\0Mno TLS here\0\0";
            let mut e = vec![b'E'];
            e.extend_from_slice(&((msg.len() + 4) as u32).to_be_bytes());
            e.extend_from_slice(msg);
            let _ = s.write_all(&e);
        }
    });
    (port, handle)
}

#[test]
fn require_against_a_server_without_tls_says_so() {
    let (port, handle) = server_without_tls();
    let base = format!("host=127.0.0.1 port={port} user=oneway dbname=x connect_timeout=5");
    let err = match Dsn::parse(&format!("{base} sslmode=require"))
        .unwrap()
        .connect()
    {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("the server does not offer TLS, and sslmode=require requires it"),
        "{err}"
    );
    // prefer goes on without TLS: the server's own refusal, not a TLS error.
    let e = Dsn::parse(&format!("{base} sslmode=prefer"))
        .unwrap()
        .connect()
        .err()
        .expect("refused");
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("no TLS here"), "{e}");
    handle.join().unwrap();
}

#[test]
fn migrates_over_verify_full() {
    let Some((db, port, ca, _)) = setup() else {
        return;
    };
    // The fixture over the socket, the migration over TLS.
    pg_fixture(&db.dsn, 300, 11);
    let dsn = format!(
        "host=localhost port={port} user=oneway dbname={} sslmode=verify-full sslrootcert={ca}",
        db.name
    );
    let out = run(
        &pg_args("migrate", &dsn, &["--batch-size", "40", "--json"]),
        &[],
    );
    out.assert_ok("migrate over verify-full");
    assert_eq!(out.json()["state"], "Locked", "{out:?}");
    let status = run(&pg_args("status", &dsn, &["--json"]), &[]);
    status.assert_ok("status over verify-full");
    assert_eq!(status.json()["state"], "Locked", "{status:?}");
    // The same run with the wrong CA would not have reached the database.
    let refused = run(
        &pg_args(
            "status",
            &dsn.replace(&ca, &std::env::var("ONEWAY_TEST_PG_OTHER_CA").unwrap()),
            &["--json"],
        ),
        &[],
    );
    refused.assert_code(1, "status with the wrong CA");
    assert!(
        refused.stdout.contains("not signed by a trusted CA"),
        "{refused:?}"
    );
}

#[test]
fn a_client_certificate_logs_in() {
    let Some((db, port, ca, _)) = setup() else {
        return;
    };
    let var = |v: &str| {
        std::env::var(v).unwrap_or_else(|_| panic!("{v}: .ci/postgres sets it with the CA"))
    };
    let (cert, key) = (
        var("ONEWAY_TEST_PG_CLIENT_CERT"),
        var("ONEWAY_TEST_PG_CLIENT_KEY"),
    );
    // The server lets the role oneway_cert in with a certificate only.
    let as_cert_user = |tls: &str| {
        Dsn::parse(&format!(
            "host=localhost port={port} user=oneway_cert dbname={} \
             sslmode=verify-full sslrootcert={ca} {tls}",
            db.name
        ))
        .unwrap()
    };
    let mut c = as_cert_user(&format!("sslcert={cert} sslkey={key}"))
        .connect()
        .expect("the certificate logs in");
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, "oneway_cert");
    drop(c);
    let e = as_cert_user("")
        .connect()
        .err()
        .expect("refused without it");
    assert!(e.to_string().contains("client certificate"), "{e}");
    // A key file that is not there is named.
    let err = refused(&as_cert_user(&format!(
        "sslcert={cert} sslkey=/nonexistent/client.key"
    )));
    assert!(
        err.contains("cannot read sslkey=/nonexistent/client.key"),
        "{err}"
    );
}

#[test]
fn a_password_login_over_tls_binds_the_channel() {
    let Some((db, port, ca, _)) = setup() else {
        return;
    };
    const PW: &str = "scram-0neway-pw";
    let role = format!("{}_scram", db.name);
    // .ci/postgres lets the members of oneway_scram_users in over TLS with a
    // password only (scram-sha-256).
    db.client()
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{PW}' IN ROLE oneway_scram_users"
        ))
        .unwrap();
    let dsn = |pw: &str| {
        Dsn::parse(&format!(
            "host=localhost port={port} user={role} password={pw} dbname={} \
             sslmode=verify-full sslrootcert={ca} channel_binding=require",
            db.name
        ))
        .unwrap()
    };
    let mut c = dsn(PW).connect().expect("SCRAM-SHA-256-PLUS over TLS");
    let (who, ssl): (String, bool) = {
        let row = c
            .query_one(
                "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((who.as_str(), ssl), (role.as_str(), true));
    drop(c);
    // A wrong password: the server's refusal, not a TLS failure, and the
    // password is not shown.
    let e = dsn("wrong-pw-xyz").connect().err().expect("refused");
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-pw-xyz"), "{e}");
    db.client()
        .batch_execute(&format!("DROP ROLE {role}"))
        .unwrap();
}
