//! The CLI's [`Progress`]: a bar on a terminal, one line per phase, or JSON
//! events, and the measured time of every phase (the demo's summary).
//!
//! Rules the output keeps (tests/progress_tty.rs checks them in a real
//! terminal):
//! - every line fits the terminal (the bar takes the width left over) and
//!   every finished-phase line fits 80 columns;
//! - rates are whole invoices per second with thousands separators;
//! - the rate and the ETA count this run's work only: invoices copied by
//!   earlier runs set the bar's starting position ([`Progress::resume`]);
//! - steps that cannot be counted (the index build, the seal) are a spinner
//!   with the time spent, so a long one never looks hung.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use oneway::{Phase, Progress};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An indicatif bar (or spinner) on stderr, a terminal.
    Bar,
    /// One line per finished phase on stderr (the demo without a terminal).
    Lines,
    /// JSON lines on stderr (`migrate --progress-json`).
    Json,
    /// Nothing shown; phases are still timed.
    Hidden,
}

impl Mode {
    /// A bar when stderr is a terminal, else `otherwise`.
    pub fn for_stderr(otherwise: Mode) -> Mode {
        if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            otherwise
        }
    }
}

/// JSON progress events come at most this often per phase.
const JSON_EVERY: Duration = Duration::from_millis(250);

/// A finished phase, as measured here.
#[derive(Debug, Clone)]
pub struct PhaseTime {
    /// Which phase.
    pub phase: Phase,
    /// Wall time from `start` to `finish`.
    pub seconds: f64,
    /// Invoices this run did (counted phases).
    pub done: u64,
}

struct Active {
    phase: Phase,
    total: u64,
    /// Units done by earlier runs (not part of the rate).
    base: Arc<AtomicU64>,
    pos: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    last_event: Instant,
}

/// The CLI's progress reporter (shared with `main` through an `Arc`).
pub struct CliProgress {
    mode: Mode,
    active: Mutex<Option<Active>>,
    times: Mutex<Vec<PhaseTime>>,
}

impl CliProgress {
    /// A reporter in `mode`.
    pub fn new(mode: Mode) -> CliProgress {
        CliProgress {
            mode,
            active: Mutex::new(None),
            times: Mutex::new(Vec::new()),
        }
    }

    /// The seconds measured for `phase` (all its passes), if it ran.
    pub fn seconds(&self, phase: Phase) -> Option<f64> {
        let times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let mut it = times.iter().filter(|t| t.phase == phase).peekable();
        it.peek()?;
        Some(it.map(|t| t.seconds).sum())
    }

    /// Invoices this run did in `phase`'s first pass.
    pub fn done(&self, phase: Phase) -> u64 {
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|t| t.phase == phase)
            .map_or(0, |t| t.done)
    }

    /// Stops a phase that will not finish (the run failed): the bar stays
    /// as it was, its spinner stops, and nothing else is drawn.
    pub fn abandon(&self) {
        if let Some(a) = self.active.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if let Some(b) = a.bar {
                b.abandon();
                // Off the bar's line, which may fill the terminal's width.
                eprintln!();
            }
        }
    }

    fn finish_active(&self, a: Active) {
        let secs = a.started.elapsed().as_secs_f64();
        let base = a.base.load(Ordering::Relaxed);
        let this_run = a.pos.saturating_sub(base);
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PhaseTime {
                phase: a.phase,
                seconds: secs,
                done: this_run,
            });
        let summary = summary(a.phase, this_run, base, secs);
        match self.mode {
            Mode::Bar | Mode::Lines => {
                // The bar gives way to the phase's line, which ends with a
                // newline: a bar as wide as the terminal leaves the cursor
                // in its last column, and whatever came next would wrap.
                if let Some(b) = a.bar {
                    b.finish_and_clear();
                }
                eprintln!("{:>9}: {summary}", a.phase.label());
            }
            Mode::Json => event(&serde_json::json!({
                "event": "phase_done",
                "phase": a.phase.label(),
                "done": a.phase.counted().then_some(a.pos),
                "total": a.phase.counted().then_some(a.total),
                "this_run": a.phase.counted().then_some(this_run),
                "seconds": round3(secs),
                "rate": a.phase.counted().then(|| rate(this_run, secs)),
            })),
            Mode::Hidden => {}
        }
    }

    fn progress_event(&self, a: &mut Active, force: bool) {
        if self.mode != Mode::Json || !a.phase.counted() {
            return;
        }
        let now = Instant::now();
        if !force && now.duration_since(a.last_event) < JSON_EVERY {
            return;
        }
        a.last_event = now;
        let secs = a.started.elapsed().as_secs_f64();
        let this_run = a.pos.saturating_sub(a.base.load(Ordering::Relaxed));
        let r = rate(this_run, secs);
        let eta = (r > 0).then(|| a.total.saturating_sub(a.pos).div_ceil(r));
        event(&serde_json::json!({
            "event": "progress",
            "phase": a.phase.label(),
            "done": a.pos,
            "total": a.total,
            "rate": r,
            "eta_s": eta,
            "elapsed_s": round3(secs),
        }));
    }
}

impl Progress for CliProgress {
    fn start(&self, phase: Phase, total: u64) {
        if let Some(a) = self.active.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.finish_active(a);
        }
        let base = Arc::new(AtomicU64::new(0));
        let bar = (self.mode == Mode::Bar).then(|| bar(phase, total, base.clone()));
        if self.mode == Mode::Json {
            event(&serde_json::json!({
                "event": "phase",
                "phase": phase.label(),
                "total": phase.counted().then_some(total),
            }));
        }
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = Some(Active {
            phase,
            total,
            base,
            pos: 0,
            started: Instant::now(),
            bar,
            last_event: Instant::now(),
        });
    }

    fn resume(&self, n: u64) {
        if let Some(a) = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            a.base.fetch_add(n, Ordering::Relaxed);
            a.pos += n;
            if let Some(b) = &a.bar {
                b.set_position(a.pos);
            }
        }
    }

    fn advance(&self, n: u64) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = active.as_mut() {
            a.pos += n;
            if let Some(b) = &a.bar {
                b.set_position(a.pos);
            }
            self.progress_event(a, false);
        }
    }

    fn finish(&self) {
        let taken = self.active.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut a) = taken {
            if a.phase.counted() && a.pos > 0 {
                self.progress_event(&mut a, true);
            }
            self.finish_active(a);
        }
    }
}

/// The `Progress` the engine gets: the same reporter `main` keeps.
pub struct Shared(pub std::sync::Arc<CliProgress>);

impl Progress for Shared {
    fn start(&self, phase: Phase, total: u64) {
        self.0.start(phase, total);
    }
    fn resume(&self, n: u64) {
        self.0.resume(n);
    }
    fn advance(&self, n: u64) {
        self.0.advance(n);
    }
    fn finish(&self) {
        self.0.finish();
    }
}

/// Writes one JSON event as a line on stderr.
pub fn event(v: &serde_json::Value) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{v}");
    let _ = err.flush();
}

fn bar(phase: Phase, total: u64, base: Arc<AtomicU64>) -> ProgressBar {
    if phase.counted() {
        let b = ProgressBar::new(total);
        let (rate_base, eta_base) = (base.clone(), base);
        let style = ProgressStyle::with_template(
            "{prefix:>9} [{wide_bar}] {count} invoices  {rate}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("count", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(
                w,
                "{}/{}",
                group(s.pos()),
                group(s.len().unwrap_or(s.pos()))
            );
        })
        .with_key(
            "rate",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let done = s.pos().saturating_sub(rate_base.load(Ordering::Relaxed));
                let _ = write!(w, "{}/s", group(rate(done, s.elapsed().as_secs_f64())));
            },
        )
        .with_key(
            "eta",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let done = s.pos().saturating_sub(eta_base.load(Ordering::Relaxed));
                let r = rate(done, s.elapsed().as_secs_f64());
                let left = s.len().unwrap_or(0).saturating_sub(s.pos());
                let _ = match (left, r) {
                    (0, _) => write!(w, "0s"),
                    (_, 0) => write!(w, "-"),
                    _ => write!(w, "{}", duration(left.div_ceil(r))),
                };
            },
        )
        .progress_chars("=> ");
        b.set_style(style);
        b.set_prefix(phase.label());
        b
    } else {
        let b = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{prefix:>9} {spinner} {msg}  {secs}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .with_key("secs", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", duration(s.elapsed().as_secs()));
            })
            .tick_chars("|/-\\ ");
        b.set_style(style);
        b.set_prefix(phase.label());
        b.set_message(doing(phase));
        b.enable_steady_tick(Duration::from_millis(100));
        b
    }
}

/// What an uncounted phase is doing, while it does it.
fn doing(phase: Phase) -> &'static str {
    match phase {
        Phase::Sweep => "dropping copies of invoices deleted from the source...",
        Phase::Index => "building lnd's indexes, moving the staged AMP sets...",
        Phase::Tombstone => "sealing the KV store with lnd's invoice-tombstone...",
        Phase::Lock => "recording the migration in lnd's tracker...",
        Phase::Copy | Phase::Verify => "",
    }
}

/// The line a finished phase leaves (at most 69 columns, so that with the
/// 11-column label it fits 80 up to 999,999,999 invoices).
pub fn summary(phase: Phase, this_run: u64, earlier: u64, secs: f64) -> String {
    let t = seconds(secs);
    match phase {
        Phase::Copy | Phase::Verify => {
            let mut s = format!(
                "{} invoices in {t} ({}/s)",
                group(this_run),
                group(rate(this_run, secs))
            );
            if earlier > 0 {
                s.push_str(&format!(", {} done before", group(earlier)));
            }
            s
        }
        Phase::Sweep => format!("checked the copies against the source in {t}"),
        Phase::Index => format!("built lnd's indexes in {t}"),
        Phase::Tombstone => format!("wrote lnd's invoice-tombstone in {t}"),
        Phase::Lock => format!("recorded the migration in lnd's tracker in {t}"),
    }
}

/// Whole units per second (0 before any time has passed).
pub fn rate(done: u64, secs: f64) -> u64 {
    if secs <= 0.0 {
        return 0;
    }
    (done as f64 / secs).round() as u64
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A measured time: `0.04 s`, `12.3 s`, `2m 05s`.
pub fn seconds(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.2} s")
    } else if secs < 100.0 {
        format!("{secs:.1} s")
    } else {
        duration(secs.round() as u64)
    }
}

/// Whole seconds as `42s`, `2m 05s`, `1h 02m`.
pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(rate(5000, 0.11), 45455);
        assert_eq!(seconds(0.041), "0.04 s");
        assert_eq!(seconds(12.34), "12.3 s");
        assert_eq!(seconds(125.0), "2m 05s");
        assert_eq!(duration(3725), "1h 02m");
    }

    #[test]
    fn finished_lines_fit_80_columns() {
        let big = 999_999_999;
        for phase in [
            Phase::Sweep,
            Phase::Copy,
            Phase::Index,
            Phase::Verify,
            Phase::Tombstone,
            Phase::Lock,
        ] {
            let line = format!(
                "{:>9}: {}",
                phase.label(),
                summary(phase, big, big, 86_399.0)
            );
            assert!(line.len() <= 80, "{} columns: {line}", line.len());
            let line = format!("{:>9}: {}", phase.label(), summary(phase, big, 0, 0.001));
            assert!(line.len() <= 80, "{} columns: {line}", line.len());
        }
    }
}
