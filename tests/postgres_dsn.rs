//! The DSN of a Postgres store never shows its password: not in the
//! redacted form, not in a connection error, not in what the server says.

mod common;

use common::pg::{self, TestDb};
use oneway::__test_support::postgres::Dsn;

const SECRET: &str = "pw-0neway-Secr3t";

#[test]
fn a_password_dsn_connects_and_never_shows() {
    let Some(db) = TestDb::fresh() else { return };
    let base = Dsn::parse(&db.dsn).expect("the server's DSN parses");
    let role = format!("{}_r", db.name);
    db.client()
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'"))
        .unwrap();
    let host = match base.config().get_hosts().first() {
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        None => unreachable!(),
    };
    let port = base.config().get_ports().first().copied().unwrap_or(5432);
    let text = format!(
        "host={host} port={port} user={role} password={SECRET} dbname={}",
        db.name
    );
    let dsn = Dsn::parse(&text).unwrap();
    let mut client = dsn.connect().expect("connects");
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, role);
    drop(client);
    for shown in [dsn.to_string(), format!("{dsn:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("password=***"), "{shown}");
    }

    // A refused connection (no such database) names the redacted DSN only.
    let err = match dsn.with_dbname("no_such_database_here").connect() {
        Ok(_) => panic!("connected to a database that does not exist"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains(SECRET), "{err}");
    assert!(err.contains("password=***"), "{err}");

    // An unreachable server: the same.
    let url = format!("postgres://{role}:{SECRET}@127.0.0.1:1/{}", db.name);
    let err = match Dsn::parse(&url).unwrap().connect() {
        Ok(_) => panic!("connected to port 1"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains(SECRET), "{err}");

    db.client()
        .batch_execute(&format!("DROP ROLE {role}"))
        .unwrap();
}

#[test]
fn the_test_server_is_there_in_ci() {
    // Fails (does not skip) in CI without a server: pg::server panics.
    if let Some(dsn) = pg::server() {
        let v: i32 = pg::connect(&dsn).query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(v, 1);
    }
}
