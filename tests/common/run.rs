//! Running the real `oneway` binary: the one harness every test file uses.
//!
//! Every child starts with a clean environment: the variables the binary
//! reads for fault injection and logging ([`FAULT_ENV`]) are removed unless
//! a test sets them explicitly, and stdin is closed.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_oneway");

/// Every environment variable the binary reads besides its arguments: the
/// failpoint and its pause (`src/failpoint.rs`), the page cap of the native
/// store (`src/store.rs`) and the log filter. Removed from every child
/// unless a test sets them explicitly.
pub const FAULT_ENV: &[&str] = &[
    "ONEWAY_FAILPOINT",
    "ONEWAY_FAILPOINT_PAUSE",
    "ONEWAY_MAX_PAGE_COUNT",
    "RUST_LOG",
    "ONEWAY_POSTGRES_DSN",
];

/// What a child `oneway` did.
#[derive(Debug, Clone)]
pub struct Out {
    /// The exit code, `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    fn from_output(o: Output) -> Out {
        Out::from_parts(o.status, &o.stdout, &o.stderr)
    }

    /// Builds an `Out` from a status and the captured streams.
    pub fn from_parts(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> Out {
        Out {
            code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }

    /// True when the process exited with code 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// True when a failpoint aborted the process (SIGABRT).
    pub fn aborted(&self) -> bool {
        self.signal == Some(libc_sigabrt())
    }

    /// The error line (`oneway: error: ...`) without its prefix, or "".
    pub fn error(&self) -> String {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("oneway: error: "))
            .unwrap_or("")
            .to_string()
    }

    /// stdout parsed as JSON (for `--json` commands).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Panics with everything the child printed unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self, what: &str) -> &Out {
        assert!(self.ok(), "{what}: expected exit 0, got {self:?}");
        self
    }

    /// Panics unless the child exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32, what: &str) -> &Out {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: wrong exit, child said {self:?}"
        );
        self
    }
}

/// SIGABRT's number (6 on every Unix this runs on).
fn libc_sigabrt() -> i32 {
    6
}

/// SIGKILL's number.
pub const SIGKILL: i32 = 9;

/// A `oneway` command with a clean environment plus `env`.
pub fn command<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Command {
    command_via(&[], args, env)
}

/// A `oneway` command started through `launcher` (a program and its
/// arguments, such as `sh -c '… exec "$0" "$@"'` or `setpriv …`), which is
/// given the binary's path and then `args`; with a clean environment plus
/// `env`, as [`command`]. An empty `launcher` runs the binary directly.
pub fn command_via<S: AsRef<OsStr>>(
    launcher: &[&str],
    args: &[S],
    env: &[(&str, &str)],
) -> Command {
    let mut c = match launcher.split_first() {
        None => Command::new(BIN),
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(BIN);
            c
        }
    };
    c.args(args);
    for k in FAULT_ENV {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    c
}

/// A shell command line running `oneway args` with a clean environment (for
/// a terminal multiplexer, whose server does not inherit the child's
/// environment from the test); `args` is pasted as it is.
pub fn shell_command(args: &str) -> String {
    let unset: Vec<String> = FAULT_ENV.iter().map(|k| format!("-u {k}")).collect();
    format!("env {} {BIN} {args}", unset.join(" "))
}

/// Runs `oneway args…` to completion.
pub fn run<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Out {
    let out = command(args, env)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    Out::from_output(out)
}

/// The argument list of `oneway migrate --json` on a pair.
pub fn migrate_args(kv: &Path, sql: &Path, batch: usize) -> Vec<std::ffi::OsString> {
    pair_args(
        "migrate",
        kv,
        sql,
        &["--batch-size", &batch.to_string(), "--json"],
    )
}

/// `oneway migrate --json` with `env`.
pub fn migrate(kv: &Path, sql: &Path, batch: usize, env: &[(&str, &str)]) -> Out {
    run(&migrate_args(kv, sql, batch), env)
}

/// `oneway migrate` until it succeeds; panics on any failure.
#[track_caller]
pub fn migrate_ok(kv: &Path, sql: &Path, batch: usize) -> Value {
    let out = migrate(kv, sql, batch, &[]);
    out.assert_ok("oneway migrate");
    out.json()
}

/// `oneway migrate` with the failpoint `spec` armed; asserts the child was
/// aborted there.
#[track_caller]
pub fn crash_at(kv: &Path, sql: &Path, batch: usize, spec: &str) -> Out {
    let out = migrate(kv, sql, batch, &[("ONEWAY_FAILPOINT", spec)]);
    let name = spec.split(':').next().unwrap_or(spec);
    assert!(
        out.aborted() && out.stderr.contains(&format!("failpoint {name} reached")),
        "failpoint {spec} was not reached: {out:?}"
    );
    out
}

/// The argument list `cmd --kv KV --sql SQL extra…`.
pub fn pair_args(cmd: &str, kv: &Path, sql: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![
        cmd.into(),
        "--kv".into(),
        kv.into(),
        "--sql".into(),
        sql.into(),
    ];
    v.extend(extra.iter().map(|s| s.into()));
    v
}

/// `oneway status --json`; panics unless it exits 0.
#[track_caller]
pub fn status(kv: &Path, sql: &Path) -> Value {
    let out = run(&pair_args("status", kv, sql, &["--json"]), &[]);
    out.assert_ok("oneway status");
    out.json()
}

/// `oneway verify --json`.
pub fn verify(kv: &Path, sql: &Path) -> Out {
    run(&pair_args("verify", kv, sql, &["--json"]), &[])
}

/// Asserts `oneway verify` finds every invoice equal and none outdated.
#[track_caller]
pub fn assert_verify_clean(kv: &Path, sql: &Path, invoices: u64) {
    let out = verify(kv, sql);
    out.assert_ok("oneway verify");
    let v = out.json();
    assert_eq!(v["mismatch_count"], 0, "verify: {v}");
    assert_eq!(v["outdated"], 0, "verify: {v}");
    assert_eq!(v["invoices"], invoices, "verify: {v}");
}

/// `oneway guard --backend <backend>` (plain output).
pub fn guard(kv: &Path, sql: &Path, backend: &str) -> Out {
    run(&pair_args("guard", kv, sql, &["--backend", backend]), &[])
}

/// A temporary folder with a KV store path (`channel.sqlite`) and a native
/// store path (`native.sqlite`) in it; neither file exists until a test or
/// the binary makes it.
pub struct Pair {
    /// The folder, removed on drop.
    pub dir: tempfile::TempDir,
    /// The KV store.
    pub kv: PathBuf,
    /// The native store.
    pub sql: PathBuf,
}

impl Pair {
    /// An empty folder.
    pub fn empty() -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = dir.path().join("channel.sqlite");
        let sql = dir.path().join("native.sqlite");
        Pair { dir, kv, sql }
    }

    /// A copy of the committed fixture `fixtures/<name>` as the KV store.
    pub fn from_fixture(name: &str) -> Pair {
        let p = Pair::empty();
        std::fs::copy(fixture_path(name), &p.kv)
            .unwrap_or_else(|e| panic!("copy fixtures/{name}: {e}"));
        p
    }

    /// The KV store's path as text.
    pub fn kv(&self) -> &str {
        self.kv.to_str().expect("a UTF-8 temporary path")
    }

    /// The native store's path as text.
    pub fn sql(&self) -> &str {
        self.sql.to_str().expect("a UTF-8 temporary path")
    }

    /// The run lock beside the native store.
    pub fn lock(&self) -> PathBuf {
        PathBuf::from(format!("{}.lock", self.sql()))
    }

    /// `oneway cmd --kv KV --sql SQL extra…`.
    pub fn run(&self, cmd: &str, extra: &[&str]) -> Out {
        self.run_env(cmd, extra, &[])
    }

    /// [`Pair::run`] with `env`.
    pub fn run_env(&self, cmd: &str, extra: &[&str], env: &[(&str, &str)]) -> Out {
        run(&pair_args(cmd, &self.kv, &self.sql, extra), env)
    }

    /// `oneway status --json`; panics unless it exits 0.
    #[track_caller]
    pub fn status(&self) -> Value {
        status(&self.kv, &self.sql)
    }
}

/// The committed fixture `fixtures/<name>` (copy it before use).
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A `oneway migrate` child paused at a failpoint (`ONEWAY_FAILPOINT` with
/// `ONEWAY_FAILPOINT_PAUSE`), so a test can change the stores at exactly
/// that point and let it go on.
pub struct Paused {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Paused {
    pub fn start(kv: &Path, sql: &Path, spec: &str) -> Paused {
        Paused::start_with(&migrate_args(kv, sql, 50), spec)
    }

    /// `oneway args…` paused at the failpoint `spec`.
    pub fn start_with<S: AsRef<OsStr>>(args: &[S], spec: &str) -> Paused {
        let dir = tempfile::tempdir().unwrap();
        let pause = dir.path().to_str().unwrap().to_string();
        let child = command(
            args,
            &[
                ("ONEWAY_FAILPOINT", spec),
                ("ONEWAY_FAILPOINT_PAUSE", &pause),
                ("RUST_LOG", "oneway=debug"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oneway migrate");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.path().join("reached").exists() {
            assert!(Instant::now() < deadline, "failpoint {spec} never reached");
            std::thread::sleep(Duration::from_millis(5));
        }
        Paused { child, dir }
    }

    pub fn resume(self) -> Out {
        std::fs::write(self.dir.path().join("resume"), b"").unwrap();
        let out = self.child.wait_with_output().expect("wait");
        Out::from_parts(out.status, &out.stdout, &out.stderr)
    }
}
