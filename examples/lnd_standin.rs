//! A stand-in for a running lnd, for the tests of issue 9 (`tests/holders.rs`):
//! it opens a KV store (`channel.sqlite`) the way lnd's kvdb on SQLite does
//! (`journal_mode=WAL`, a busy timeout, foreign keys on), keeps it open, and
//! writes invoices as lnd would until told to stop.
//!
//! ```text
//! lnd_standin --kv channel.sqlite [--rollback] [--hold-only]
//!             [--interval-ms 500] [--ops N] [--stop-file PATH] [--busy-ms 10000]
//! ```
//!
//! * `--rollback`: `journal_mode=DELETE` instead of WAL (an idle connection
//!   then holds no lock at all, only an open descriptor).
//! * `--hold-only`: open and idle, never write.
//! * Every `--interval-ms` one operation, cycling: add a new invoice, settle
//!   the first open invoice, delete a plain canceled invoice (else the oldest
//!   plain settled one). An operation with nothing to act on adds an invoice
//!   instead, so every operation is a write. Each is its own `BEGIN
//!   IMMEDIATE` transaction that waits up to `--busy-ms` for the write lock.
//! * Stops after `--ops N` operations, when `--stop-file PATH` exists, or on
//!   SIGTERM/SIGKILL (the default actions; the KV store stays consistent, as
//!   SQLite guarantees).
//!
//! `--print-holders` does none of this: it prints what
//! `oneway::holders::other_holders(--kv)` sees (one `holder PID COMM VIA…`
//! line per identified holder, `unidentified` for an unattributed OFD lock,
//! then `unreadable N`) and exits, so that a test can run the detection as
//! another user.
//!
//! Standard output, one flushed line each: `opened wal` (or `opened delete`)
//! once the store is open and its mode set, then one line per committed
//! write: `added 0000012c`, `settled 00000031`, `deleted 00000007` (the
//! invoice's 8-hex-digit KV key), and `stopped` on a clean stop.
#![forbid(unsafe_code)]

#[path = "../tests/common/source.rs"]
mod source;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use oneway::fixture::KvWriter;
use source::Source;

#[derive(Parser, Debug)]
#[command(about = "A stand-in for a running lnd holding and writing its KV store")]
struct Args {
    /// The KV store (lnd's channel.sqlite, table channeldb_kv).
    #[arg(long)]
    kv: PathBuf,
    /// Use journal_mode=DELETE instead of lnd's WAL.
    #[arg(long)]
    rollback: bool,
    /// Open and idle without writing.
    #[arg(long)]
    hold_only: bool,
    /// Milliseconds between operations.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Stop after this many operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Stop when this file exists (checked before every operation).
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Print the other holders of --kv and exit (nothing is opened).
    #[arg(long)]
    print_holders: bool,
    /// SQLite busy timeout, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    busy_ms: u64,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("flush stdout");
}

fn main() {
    let args = Args::parse();
    if args.print_holders {
        let h = oneway::__test_support::holders::other_holders(&args.kv).expect("other_holders");
        for holder in &h.holders {
            let via: Vec<String> = holder.via.iter().map(|v| format!("{v:?}")).collect();
            match holder.pid {
                Some(pid) => say(&format!("holder {pid} {} {}", holder.comm, via.join(","))),
                None => say("unidentified"),
            }
        }
        say(&format!("unreadable {}", h.unreadable));
        return;
    }
    let w = KvWriter::open(&args.kv, "channeldb")
        .unwrap_or_else(|e| panic!("open {}: {e}", args.kv.display()));
    w.connection()
        .busy_timeout(Duration::from_millis(args.busy_ms))
        .expect("busy timeout");
    let want = if args.rollback { "delete" } else { "wal" };
    let mode: String = w
        .connection()
        .query_row(&format!("PRAGMA journal_mode={want}"), [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode.to_ascii_lowercase(), want, "journal mode not switched");
    let mut src = Source::from_writer(w);
    say(&format!("opened {want}"));

    let stop_requested = || args.stop_file.as_ref().is_some_and(|p| p.exists());
    let interval = Duration::from_millis(args.interval_ms);
    let mut done = 0u64;
    loop {
        if stop_requested() || (!args.hold_only && args.ops.is_some_and(|n| done >= n)) {
            break;
        }
        std::thread::sleep(interval);
        if args.hold_only || stop_requested() {
            continue;
        }
        let line = match done % 3 {
            1 => src.open_invoices().first().map(|&n| {
                src.settle(n);
                format!("settled {n:08x}")
            }),
            2 => {
                let victim = src.canceled_invoices().first().copied().or_else(|| {
                    let settled = src.settled_invoices();
                    settled.first().copied()
                });
                victim.map(|n| {
                    src.delete_invoice(n);
                    format!("deleted {n:08x}")
                })
            }
            _ => None,
        };
        let line = line.unwrap_or_else(|| {
            let n = src.add_invoices(1, "standin")[0];
            format!("added {n:08x}")
        });
        say(&line);
        done += 1;
    }
    say("stopped");
}
