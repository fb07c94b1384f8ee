//! Progress output (issue 10, item 4): a phase for every step that takes
//! time, whole rates, this run's ETA, lines that fit 80 columns, and the
//! JSON events of `migrate --progress-json`.
//!
//! The bar itself is drawn only on a terminal, so `bar_in_an_80_column_tmux_window`
//! runs the binary inside a detached tmux window 80 columns wide and reads
//! the screen back (`capture-pane -J`, which joins wrapped lines, so a line
//! that wrapped shows up longer than 80). Without tmux it fails in CI
//! (`CI` set) and is skipped, saying why, elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PHASE_LINES: [&str; 5] = ["copy:", "index:", "verify:", "tombstone:", "lock:"];

/// A rate printed with a fractional part (`1,543,306.8463/s`).
fn has_fractional_rate(text: &str) -> bool {
    text.split_whitespace().any(|w| {
        let w = w.trim_start_matches('(').trim_end_matches(')');
        w.ends_with("/s") && w.contains('.')
    })
}

fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

fn store(dir: &Path, invoices: u64) -> (PathBuf, PathBuf) {
    let kv = dir.join("channel.sqlite");
    make_fixture(&kv, invoices, 3);
    (kv, dir.join("native.sqlite"))
}

#[test]
fn progress_json_streams_phases_and_keeps_the_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 3000);
    let out = run(
        &pair_args(
            "migrate",
            &kv,
            &sql,
            &["--batch-size", "100", "--json", "--progress-json"],
        ),
        &[],
    );
    out.assert_ok("migrate --json --progress-json");
    // The final report is unchanged on stdout.
    let report = out.json();
    assert_eq!(report["state"], "Locked");
    assert_eq!(report["copied_this_run"], 3000);

    let events = json_lines(&out.stderr);
    let kinds: Vec<String> = events
        .iter()
        .filter(|e| e["event"] != "progress")
        .map(|e| format!("{}:{}", e["event"].as_str().unwrap(), e["phase"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "phase:\"copy\"",
            "phase_done:\"copy\"",
            "phase:\"index\"",
            "phase_done:\"index\"",
            "phase:\"verify\"",
            "phase_done:\"verify\"",
            "phase:\"tombstone\"",
            "phase_done:\"tombstone\"",
            "phase:\"lock\"",
            "phase_done:\"lock\"",
            "done:null",
        ],
        "{}",
        out.stderr
    );
    assert_eq!(events[0]["total"], 3000, "{}", events[0]);
    assert_eq!(events[2 - 2]["phase"], "copy");
    let index = events.iter().find(|e| e["phase"] == "index").unwrap();
    assert_eq!(index["total"], Value::Null, "uncounted: {index}");
    for e in events.iter().filter(|e| e["event"] == "progress") {
        assert!(e["rate"].is_u64(), "whole rate: {e}");
        assert!(e["done"].as_u64() <= e["total"].as_u64(), "{e}");
    }
    let copy_done = events
        .iter()
        .find(|e| e["event"] == "phase_done" && e["phase"] == "copy")
        .unwrap();
    assert_eq!(
        (&copy_done["done"], &copy_done["this_run"]),
        (&3000.into(), &3000.into()),
        "{copy_done}"
    );
    assert!(copy_done["rate"].is_u64(), "{copy_done}");
    let done = events.last().unwrap();
    assert_eq!(
        (&done["state"], &done["invoices"], &done["exit_code"]),
        (&"Locked".into(), &3000.into(), &0.into()),
        "{done}"
    );

    // A failed run ends with an `error` event, its only line on stderr.
    let out = run(
        &pair_args(
            "migrate",
            &dir.path().join("absent.sqlite"),
            &sql,
            &["--progress-json"],
        ),
        &[],
    );
    out.assert_code(1, "migrate --progress-json on a missing store");
    let events = json_lines(&out.stderr);
    assert_eq!(events.len(), 1, "{}", out.stderr);
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["reason"], "missing");
    assert_eq!(events[0]["exit_code"], 1);
    assert!(events[0]["message"]
        .as_str()
        .unwrap()
        .contains("absent.sqlite"));
}

#[test]
fn a_resumed_copy_counts_only_this_runs_invoices() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 2000);
    crash_at(&kv, &sql, 100, "batch.after_commit:5");
    let out = run(
        &pair_args(
            "migrate",
            &kv,
            &sql,
            &["--batch-size", "100", "--progress-json"],
        ),
        &[],
    );
    out.assert_ok("resumed migrate");
    let events = json_lines(&out.stderr);
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sweep", "copy", "index", "verify", "tombstone", "lock"],
        "the resumed run's phases: {}",
        out.stderr
    );
    let copy = events
        .iter()
        .find(|e| e["event"] == "phase_done" && e["phase"] == "copy")
        .unwrap();
    assert_eq!(copy["done"], 2000, "{copy}");
    assert_eq!(copy["this_run"], 1500, "{copy}");
    let secs = copy["seconds"].as_f64().unwrap();
    let rate = copy["rate"].as_u64().unwrap();
    // `seconds` is printed to the millisecond, so the true time may be up to
    // half a millisecond shorter than printed; counting all 2000 invoices
    // would be a third above even that bound.
    let shortest = (secs - 0.0005).max(0.0001);
    assert!(
        rate as f64 <= 1500.0 / shortest * 1.01 + 1.0,
        "the rate counts this run's 1500 invoices only: {copy}"
    );
}

#[test]
fn demo_lines_fit_80_columns_with_one_time_per_phase() {
    // Not a terminal: one line per finished phase on stderr.
    let out = run(&["demo", "--invoices", "3000"], &[]);
    out.assert_ok("demo");
    let all = format!("{}{}", out.stdout, out.stderr);
    for l in all.lines() {
        assert!(l.len() <= 80, "{} columns: {l:?}", l.len());
    }
    assert!(!has_fractional_rate(&all), "{all}");
    for phase in PHASE_LINES {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.trim_start().starts_with(phase)),
            "no {phase} line: {}",
            out.stderr
        );
    }
    // The summary's times are the phase lines' own.
    let time_of = |phase: &str| -> String {
        let line = out
            .stderr
            .lines()
            .find(|l| l.trim_start().starts_with(phase))
            .unwrap();
        let at = line.find(" in ").unwrap() + 4;
        line[at..].split(" s").next().unwrap().to_string()
    };
    let summary: String = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for (phase, says) in [
        ("copy:", "copied 3,000 invoices in "),
        ("index:", "built lnd's indexes in "),
        ("verify:", "verified them in "),
    ] {
        let t = time_of(phase);
        assert!(
            summary.contains(&format!("{says}{t} s")),
            "{phase} took {t} s but the summary says: {summary}"
        );
    }
}

/// Whether tmux can be used; `None` means the test must not run (it has
/// printed why), and in CI a missing tmux fails the test.
fn tmux() -> Option<()> {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(());
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("tmux is missing in CI (`.ci/run` installs it): the bar cannot be tested");
    }
    eprintln!("skipped: tmux is not installed, so the bar cannot be drawn in a terminal here");
    None
}

/// Runs `command` in a detached tmux window of 80×`rows`, samples the
/// screen every 50 ms until the command has ended, and returns the samples
/// (the last one with the whole history).
fn in_tmux(command: &str, rows: u32) -> Vec<String> {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let session = format!("oneway-test-{}-{n}", std::process::id());
    // A server of its own, so that no other tmux (or an earlier call's
    // server, still exiting) is involved.
    let socket = format!("oneway-{}-{n}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux")
    };
    let script = format!("{command}; echo ONEWAY-EXIT=$?; sleep 600");
    let o = tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        &rows.to_string(),
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "tmux new-session: {o:?}");
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let o = tmux(&["capture-pane", "-p", "-J", "-t", &session]);
        let screen = String::from_utf8_lossy(&o.stdout).into_owned();
        let done = screen.contains("ONEWAY-EXIT=");
        samples.push(screen);
        if done || Instant::now() > deadline {
            break;
        }
    }
    let o = tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", &session]);
    samples.push(String::from_utf8_lossy(&o.stdout).trim_end().to_string());
    tmux(&["kill-server"]);
    samples
}

#[test]
fn bar_in_an_80_column_tmux_window() {
    if tmux().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kv, sql) = store(dir.path(), 40_000);
    // A resumed run, so that the bar starts part way.
    crash_at(&kv, &sql, 1000, "batch.after_commit:10");
    let command = shell_command(&format!(
        "migrate --kv {} --sql {} 2>&1",
        kv.display(),
        sql.display()
    ));
    let samples = in_tmux(&command, 40);
    let last = samples.last().unwrap();
    assert!(last.contains("ONEWAY-EXIT=0"), "{last}");
    for screen in &samples {
        for l in screen.lines() {
            assert!(
                l.trim_end().chars().count() <= 80,
                "a line wider than 80 columns ({}): {l:?}\n{screen}",
                l.chars().count()
            );
        }
        assert!(!has_fractional_rate(screen), "{screen}");
    }
    for phase in [
        "sweep:",
        "copy:",
        "index:",
        "verify:",
        "tombstone:",
        "lock:",
    ] {
        assert!(
            last.lines().any(|l| l.trim_start().starts_with(phase)),
            "no {phase} line:\n{last}"
        );
    }
    let copy = last
        .lines()
        .find(|l| l.trim_start().starts_with("copy:"))
        .unwrap();
    assert!(
        copy.contains("30,000 invoices in") && copy.contains("10,000 done before"),
        "{copy}"
    );
    // The bar was drawn while the copy or the verification ran.
    assert!(
        samples.iter().any(|s| s
            .lines()
            .any(|l| l.contains(" invoices ") && l.contains("/s  eta "))),
        "no bar seen in {} samples",
        samples.len()
    );
    println!("{last}");

    // The demo too, every line of it.
    let samples = in_tmux(&shell_command("demo --invoices 20000"), 60);
    let last = samples.last().unwrap();
    assert!(last.contains("ONEWAY-EXIT=0"), "{last}");
    for screen in &samples {
        for l in screen.lines() {
            assert!(
                l.trim_end().chars().count() <= 80,
                "demo: a line wider than 80 columns: {l:?}\n{screen}"
            );
        }
        assert!(!has_fractional_rate(screen), "{screen}");
    }
    for phase in PHASE_LINES {
        assert!(
            last.lines().any(|l| l.trim_start().starts_with(phase)),
            "demo: no {phase} line:\n{last}"
        );
    }
    println!("{last}");
}
