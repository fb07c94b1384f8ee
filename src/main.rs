//! The `oneway` command: a thin shell over the library.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use cli::failure::Failure;
use cli::progress::{self as prog, CliProgress, Mode, Shared};
use oneway::Phase;
use oneway::{fixture, Backend, Error, Migrator, Options};

mod cli;

/// Prints a line on stdout, ignoring a closed pipe (`oneway status | head -1`)
/// instead of panicking as `println!` does.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a line of the demo wrapped to 80 columns, indented by `$indent`
/// (paths longer than a line aside).
macro_rules! say {
    ($indent:expr, $($arg:tt)*) => { out!("{}", cli::wrap(&format!($($arg)*), $indent)) };
}

/// Exit codes (also in README.md).
mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
}

#[derive(Parser)]
#[command(
    name = "oneway",
    version,
    about = "Migrate lnd's KV invoice store to lnd's native SQL schema, resumably and verifiably, then seal the KV store with a tombstone.",
    after_help = "Exit codes: 0 success (or backend allowed), 1 error, 2 usage, 3 refused (guard, sealed store, wrong pairing), 4 another migration in progress.\nLogging: quiet by default; set RUST_LOG (e.g. RUST_LOG=oneway=info) for structured logs on stderr."
)]
struct Cli {
    /// Write logs as JSON lines (to stderr).
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Stores {
    /// lnd's KV store (kvdb on SQLite, e.g. channel.sqlite).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    kv: Option<PathBuf>,
    /// lnd's native SQL database to read (only `migrate` creates or
    /// continues it) [default: lnd.sqlite beside the KV store, where lnd
    /// keeps it].
    #[arg(long, value_name = "PATH", conflicts_with = "postgres")]
    sql: Option<PathBuf>,
    /// lnd on PostgreSQL: the database of both stores (lnd's
    /// db.postgres.dsn), key=value or postgres:// URL. Prefer
    /// ONEWAY_POSTGRES_DSN for a DSN with a password (the command line is
    /// visible to other users); the password is never printed.
    #[arg(
        long,
        value_name = "DSN",
        env = "ONEWAY_POSTGRES_DSN",
        hide_env_values = true
    )]
    postgres: Option<String>,
    /// Prefix of the KV table (`<prefix>_kv`).
    #[arg(long, default_value = oneway::DEFAULT_PREFIX, value_name = "PREFIX")]
    table_prefix: String,
}

impl Stores {
    /// The library's options; a DSN that does not parse is bad usage.
    fn options(&self, batch_size: usize) -> Result<Options, oneway::PgError> {
        let opts = match (&self.postgres, &self.kv) {
            (Some(dsn), _) => Options::postgres(oneway::Dsn::parse(dsn)?),
            (None, Some(kv)) => Options::new(
                kv,
                self.sql.clone().unwrap_or_else(|| {
                    kv.parent()
                        .unwrap_or(std::path::Path::new(""))
                        .join(oneway::LND_NATIVE_FILE)
                }),
            ),
            (None, None) => unreachable!("clap requires --kv without --postgres"),
        };
        let mut opts = opts.with_table_prefix(&self.table_prefix);
        opts.batch_size = batch_size;
        Ok(opts)
    }
}

/// `stores.options(..)`, or the failure's exit code (printed).
macro_rules! options {
    ($stores:expr, $batch:expr, $json:expr) => {
        match $stores.options($batch) {
            Ok(o) => o,
            Err(e) => return fail(&e, $json),
        }
    };
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Kv,
    Sql,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run or resume the migration until it is Locked.
    #[command(mut_arg("sql", |a| a.help("lnd's native SQL database to create or continue [default: lnd.sqlite beside the KV store]")))]
    Migrate {
        #[command(flatten)]
        stores: Stores,
        /// Invoices per batch transaction (at least 1).
        #[arg(long, default_value_t = oneway::DEFAULT_BATCH_SIZE, value_parser = batch_size)]
        batch_size: usize,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Report progress as JSON lines on stderr instead of a bar: a
        /// `phase` event as each phase starts, `progress` events (at most
        /// four a second), `phase_done`, and `done` or `error` at the end
        /// (README.md, "Progress").
        #[arg(long)]
        progress_json: bool,
    },
    /// Show the migration's state, counts and cursor.
    Status {
        #[command(flatten)]
        stores: Stores,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare every source invoice with the native store; writes nothing.
    Verify {
        #[command(flatten)]
        stores: Stores,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// May the application open this backend? Exit 0 if so, 3 if refused.
    Guard {
        #[command(flatten)]
        stores: Stores,
        /// The backend the application is configured for.
        #[arg(long, value_enum)]
        backend: BackendArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a realistic lnd-format KV store for testing.
    Fixture {
        /// Where to write it (must not exist).
        #[arg(
            long,
            value_name = "PATH",
            required_unless_present = "postgres",
            conflicts_with = "postgres"
        )]
        out: Option<PathBuf>,
        /// Write it into this PostgreSQL database instead (lnd's db.postgres.dsn;
        /// the KV table must not exist). The password is never printed.
        #[arg(long, value_name = "DSN")]
        postgres: Option<String>,
        /// Number of invoices.
        #[arg(long, default_value_t = 1000)]
        invoices: u64,
        /// Random seed; the same seed gives the same store.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Prefix of the KV table.
        #[arg(long, default_value = oneway::DEFAULT_PREFIX)]
        table_prefix: String,
    },
    /// Benchmark the migration against the raw-copy floor (see BENCHMARKS.md).
    Bench {
        /// Store sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "20000,200000,1000000")]
        sizes: Vec<u64>,
        /// Work in this folder instead of a temporary one (needs ~1 KiB per invoice, twice).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Invoices per batch transaction (at least 1).
        #[arg(long, default_value_t = oneway::DEFAULT_BATCH_SIZE, value_parser = batch_size)]
        batch_size: usize,
        /// Runs per size; the table shows medians (at least 1).
        #[arg(long, default_value_t = oneway::bench::DEFAULT_RUNS as u64, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Print the rows as JSON instead of a markdown table.
        #[arg(long)]
        json: bool,
        /// Benchmark lnd on PostgreSQL on this server instead (a DSN whose
        /// role may create databases: each size gets `oneway_bench_<n>`
        /// and a clone per run, dropped afterwards).
        #[arg(long, value_name = "DSN", conflicts_with = "dir")]
        postgres: Option<String>,
    },
    /// Build a sample lnd store in a temporary folder, migrate it with
    /// progress, and show the final state and the guard's answers.
    Demo {
        /// Invoices in the sample store.
        #[arg(long, default_value_t = 5000)]
        invoices: u64,
        /// Keep the files in this folder instead of a temporary one.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
}

fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("the batch size must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The log filter when `RUST_LOG` is not set. A refusal is printed once, as
/// the `oneway: error:` line, so the human default leaves out the security
/// event's WARN line (it is still journaled); `--log-json`, or any
/// `RUST_LOG`, logs it.
fn default_filter(json: bool) -> &'static str {
    if json {
        "warn"
    } else {
        "warn,oneway::security=off"
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter(json)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Peak resident set size of this process (`VmHWM`), in KiB, on Linux: a
/// figure about the whole process, so the CLI adds it to `migrate --json`
/// (the benchmark reads it there) rather than the library's `Report`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `migrate --json`: the library's report and this process's peak memory.
#[derive(serde::Serialize)]
struct MigrateJson<'a> {
    #[serde(flatten)]
    report: &'a oneway::Report,
    peak_rss_kib: Option<u64>,
}

fn print_json<T: serde::Serialize>(v: &T) {
    out!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into())
    );
}

fn fail<'a>(e: impl Into<Failure<'a>>, json: bool) -> ExitCode {
    let f = e.into();
    let msg = f.message();
    if json {
        print_json(&f.json(&msg));
    }
    eprintln!("oneway: error: {msg}");
    ExitCode::from(f.exit_code as u8)
}

/// An error of `migrate --progress-json`: its one line on stderr is the
/// `error` event (the `--json` object still goes to stdout).
fn fail_as_event(e: &Error, json: bool) -> ExitCode {
    let f = Failure::from(e);
    let msg = f.message();
    if json {
        print_json(&f.json(&msg));
    }
    prog::event(&f.event(&msg));
    ExitCode::from(f.exit_code as u8)
}

/// `oneway verify`'s text: the full comparison from `Verified` on; before,
/// how far the migration is and what the copies so far show.
fn print_verify(r: &oneway::VerifyReport) {
    use prog::group;
    let c = &r.coverage;
    if c.complete {
        out!(
            "verified {} invoices: {} mismatching fields, {} changed since copied",
            r.invoices,
            r.mismatch_count,
            r.outdated
        );
    } else {
        out!(
            "{}",
            cli::wrap(
                &format!(
                    "the migration is unfinished (state {}): run `oneway migrate` to finish it",
                    c.state
                ),
                0
            )
        );
        let cursor = c
            .cursor
            .as_deref()
            .map_or(String::new(), |k| format!(" (cursor {k})"));
        out!("  copied:          {} invoices{cursor}", group(c.copied));
        out!("  not copied yet:  {} invoices", group(c.not_copied_yet));
        if r.outdated > 0 {
            out!(
                "  out of date:     {} copies (the source changed since; migrate redoes them)",
                group(r.outdated)
            );
        }
        out!(
            "  AMP sets staged: {} (moved into lnd's table by the index build)",
            group(c.staged_amp_sets)
        );
        out!(
            "  lnd's indexes:   {}",
            if c.indexes_built {
                "built"
            } else {
                "not built yet"
            }
        );
        out!(
            "compared {} copies with the source: {} mismatching fields",
            group(c.compared),
            r.mismatch_count
        );
    }
    for m in &r.mismatches {
        out!("  {m}");
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_logging(cli.log_json);
    match cli.cmd {
        Cmd::Migrate {
            stores,
            batch_size,
            json,
            progress_json,
        } => migrate(&stores, batch_size, json, progress_json),
        Cmd::Status { stores, json } => status(&stores, json),
        Cmd::Verify { stores, json } => verify(&stores, json),
        Cmd::Guard {
            stores,
            backend,
            json,
        } => guard(&stores, backend, json),
        Cmd::Fixture {
            out,
            postgres,
            invoices,
            seed,
            table_prefix,
        } => write_fixture(
            out.as_deref(),
            postgres.as_deref(),
            &fixture::FixtureSpec {
                invoices,
                seed,
                table_prefix,
            },
        ),
        Cmd::Demo { invoices, keep } => demo(invoices, keep),
        Cmd::Bench {
            sizes,
            dir,
            batch_size,
            runs,
            json,
            postgres,
        } => bench(&sizes, dir, postgres, batch_size, runs as usize, json),
    }
}

/// `oneway migrate`: runs (or resumes) the migration, showing progress on
/// stderr as a bar or, with `--progress-json`, as JSON events.
fn migrate(stores: &Stores, batch_size: usize, json: bool, progress_json: bool) -> ExitCode {
    let progress = Arc::new(CliProgress::new(if progress_json {
        Mode::Json
    } else {
        Mode::for_stderr(Mode::Hidden)
    }));
    let opts = options!(stores, batch_size, json);
    let m = Migrator::new(opts).with_progress(Box::new(Shared(progress.clone())));
    match m.run() {
        Ok(r) => {
            if progress_json {
                prog::event(&done_event(&r));
            }
            print_report(&r, json);
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            progress.abandon();
            if progress_json {
                fail_as_event(&e, json)
            } else {
                fail(&e, json)
            }
        }
    }
}

/// The `done` event of `migrate --progress-json`.
fn done_event(r: &oneway::Report) -> serde_json::Value {
    serde_json::json!({
        "event": "done",
        "state": r.state,
        "already_completed": r.already_completed,
        "invoices": r.invoices,
        "copied_this_run": r.copied_this_run,
        "resynced": r.resynced,
        "exit_code": exit::OK,
    })
}

/// `oneway migrate`'s result on stdout: JSON, or one line.
fn print_report(r: &oneway::Report, json: bool) {
    if json {
        print_json(&MigrateJson {
            report: r,
            peak_rss_kib: peak_rss_kib(),
        });
    } else if r.already_completed {
        out!(
            "invoice migration already completed: {} invoices, state {}",
            r.invoices,
            r.state
        );
    } else {
        out!(
            "migrated {} invoices ({} copied this run, {} re-synced); state {}",
            r.invoices,
            r.copied_this_run,
            r.resynced,
            r.state
        );
    }
}

/// `oneway status`.
fn status(stores: &Stores, json: bool) -> ExitCode {
    match Migrator::new(options!(stores, 1, json)).status() {
        Ok(s) => {
            if json {
                print_json(&s);
            } else {
                print_status(&s);
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(&e, json),
    }
}

/// `oneway status`'s text.
fn print_status(s: &oneway::Status) {
    out!("state:             {}", s.state);
    out!("tombstone present: {}", s.tombstone_present);
    out!("source invoices:   {}", s.source_invoices);
    out!("copied:            {}", s.copied);
    out!("native invoices:   {}", s.native_invoices);
    out!("cursor:            {}", s.cursor.as_deref().unwrap_or("-"));
    out!("journal entries:   {}", s.journal_entries);
}

/// `oneway verify`: exit code 1 when the comparison found differences.
fn verify(stores: &Stores, json: bool) -> ExitCode {
    let opts = options!(stores, oneway::DEFAULT_BATCH_SIZE, json);
    match Migrator::new(opts).verify() {
        Ok(r) => {
            if json {
                print_json(&r);
            } else {
                print_verify(&r);
            }
            if r.passed() {
                ExitCode::from(exit::OK)
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(&e, json),
    }
}

/// `oneway guard`: exit code 0 when the backend is allowed, the refusal's
/// otherwise.
fn guard(stores: &Stores, backend: BackendArg, json: bool) -> ExitCode {
    let backend = match backend {
        BackendArg::Kv => Backend::Kv,
        BackendArg::Sql => Backend::Sql,
    };
    match Migrator::new(options!(stores, 1, json)).guard(backend) {
        Ok(g) => {
            if json {
                print_json(&serde_json::json!({
                    "allowed": true,
                    "backend": backend.name(),
                    "reason": null,
                    "state": g.state,
                    "tombstone_present": g.tombstone_present,
                    "message": format!("backend {backend} allowed"),
                    "exit_code": exit::OK,
                }));
            } else {
                out!(
                    "backend {backend} allowed (state {})",
                    g.state.map_or("none", |s| s.name())
                );
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(&e, json),
    }
}

/// `oneway fixture`: writes the store and prints its summary as JSON.
/// `oneway fixture`: into a new SQLite file (`--out`) or a PostgreSQL
/// database (`--postgres`; clap requires exactly one).
fn write_fixture(
    out: Option<&Path>,
    postgres: Option<&str>,
    spec: &fixture::FixtureSpec,
) -> ExitCode {
    let written = match (postgres, out) {
        #[cfg(feature = "postgres")]
        (Some(dsn), _) => fixture::write_fixture_postgres(dsn, spec),
        (_, Some(out)) => fixture::write_fixture(out, spec),
        _ => unreachable!("clap requires --out or --postgres"),
    };
    match written {
        Ok(s) => {
            print_json(&s);
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(&e, false),
    }
}

/// `oneway bench`: a markdown table, row by row, or the rows as JSON.
fn bench(
    sizes: &[u64],
    dir: Option<PathBuf>,
    postgres: Option<String>,
    batch_size: usize,
    runs: usize,
    json: bool,
) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("oneway: error: cannot find my own executable: {e}");
            return ExitCode::from(1);
        }
    };
    if !json {
        out!("{}", oneway::bench::MARKDOWN_HEADER);
    }
    let each = |row: &oneway::bench::BenchRow| {
        if !json {
            out!("{}", oneway::bench::markdown_row(row));
        }
    };
    let rows = match postgres {
        Some(dsn) => oneway::bench::pg::run(&exe, &dsn, sizes, batch_size, runs, each),
        None => oneway::bench::run(&exe, dir, sizes, batch_size, runs, each),
    };
    match rows {
        Ok(rows) => {
            if json {
                print_json(&rows);
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => fail(&e, json),
    }
}

/// `oneway demo`: builds a sample store, migrates it, and shows the result
/// and the guard's answers, each step numbered.
fn demo(invoices: u64, keep: Option<PathBuf>) -> ExitCode {
    let (_tmp, dir) = match demo_dir(keep) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let kv = dir.join("channel.sqlite");
    let sql = dir.join("native.sqlite");
    if let Some(p) = [&kv, &sql].into_iter().find(|p| p.exists()) {
        eprintln!(
            "oneway: error: {} already exists; the demo never overwrites a store (choose an empty folder)",
            p.display()
        );
        return ExitCode::from(1);
    }
    match demo_steps(invoices, &kv, &sql) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(code) => code,
    }
}

/// The demo's folder: `keep`, created if need be, or a new temporary one
/// (returned too, so that it lives until the demo ends).
fn demo_dir(keep: Option<PathBuf>) -> Result<(Option<tempfile::TempDir>, PathBuf), ExitCode> {
    match keep {
        Some(d) => match std::fs::create_dir_all(&d) {
            Ok(()) => Ok((None, d)),
            Err(e) => {
                eprintln!("oneway: error: cannot create {}: {e}", d.display());
                Err(ExitCode::from(1))
            }
        },
        None => match tempfile::tempdir() {
            Ok(t) => {
                let dir = t.path().to_path_buf();
                Ok((Some(t), dir))
            }
            Err(e) => {
                eprintln!("oneway: error: cannot create a temporary folder: {e}");
                Err(ExitCode::from(1))
            }
        },
    }
}

/// The demo's numbered steps; the first that fails ends it with its exit
/// code.
fn demo_steps(invoices: u64, kv: &Path, sql: &Path) -> Result<(), ExitCode> {
    demo_write_store(invoices, kv)?;
    let m = demo_migrate(kv, sql)?;
    demo_final_state(&m)?;
    demo_guards(&m)?;
    demo_rerun(&m)
}

/// Step 1: the sample store, and what it holds.
fn demo_write_store(invoices: u64, kv: &Path) -> Result<(), ExitCode> {
    say!(
        0,
        "1. writing a sample lnd KV store with {invoices} invoices:"
    );
    say!(3, "{}", kv.display());
    let spec = fixture::FixtureSpec {
        invoices,
        seed: 1,
        ..Default::default()
    };
    let s = fixture::write_fixture(kv, &spec).map_err(|e| fail(&e, false))?;
    say!(
        3,
        "{} invoices: {} settled, {} open, {} canceled, {} accepted, {} keysend, {} AMP ({} legacy), {} hodl without preimage, {} HTLCs",
        s.invoices, s.settled, s.open, s.canceled, s.accepted, s.keysend, s.amp, s.legacy_amp, s.hodl_unknown_preimage, s.htlcs
    );
    Ok(())
}

/// Step 2: the migration, with progress lines, and the time of each phase.
fn demo_migrate(kv: &Path, sql: &Path) -> Result<Migrator, ExitCode> {
    say!(0, "2. migrating to");
    say!(3, "{}", sql.display());
    let progress = Arc::new(CliProgress::new(Mode::for_stderr(Mode::Lines)));
    let m = Migrator::new(Options::new(kv, sql)).with_progress(Box::new(Shared(progress.clone())));
    if let Err(e) = m.run() {
        progress.abandon();
        return Err(fail(&e, false));
    }
    // The times the phase lines showed, not a second measurement.
    let t = |p: Phase| prog::seconds(progress.seconds(p).unwrap_or(0.0));
    let sealed = progress.seconds(Phase::Tombstone).unwrap_or(0.0)
        + progress.seconds(Phase::Lock).unwrap_or(0.0);
    say!(
        3,
        "copied {} invoices in {}, built lnd's indexes in {}, verified them in {}, sealed the KV store in {}",
        prog::group(progress.done(Phase::Copy)),
        t(Phase::Copy),
        t(Phase::Index),
        t(Phase::Verify),
        prog::seconds(sealed)
    );
    Ok(m)
}

/// Step 3: the status, as JSON.
fn demo_final_state(m: &Migrator) -> Result<(), ExitCode> {
    say!(0, "3. final state:");
    let s = m.status().map_err(|e| fail(&e, false))?;
    // The digest is 64 hex digits, wider than a terminal line.
    let mut v = serde_json::to_value(&s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("source_digest");
    }
    out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

/// Steps 4 and 5: the guard refuses the KV backend and allows the native one.
fn demo_guards(m: &Migrator) -> Result<(), ExitCode> {
    out!("4. the guard, asked for the KV backend (lnd's `db.backend` switched back):");
    match m.guard(Backend::Kv) {
        Ok(_) => {
            eprintln!("oneway: error: the guard allowed the KV backend after the migration");
            return Err(ExitCode::from(1));
        }
        Err(e) => say!(3, "refused (exit code {}): {e}", e.exit_code()),
    }
    out!("5. the guard, asked for the native SQL backend:");
    m.guard(Backend::Sql).map_err(|e| fail(&e, false))?;
    out!("   allowed");
    Ok(())
}

/// Step 6: a second run finds the migration completed.
fn demo_rerun(m: &Migrator) -> Result<(), ExitCode> {
    out!("6. migrating again changes nothing:");
    match m.run() {
        Ok(r) if r.already_completed => {
            out!("   invoice migration already completed");
            Ok(())
        }
        Ok(_) => {
            eprintln!("oneway: error: a rerun did work after Locked");
            Err(ExitCode::from(1))
        }
        Err(e) => Err(fail(&e, false)),
    }
}
