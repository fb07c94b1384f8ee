//! Crash safety, proven by killing real `oneway migrate` processes.
//!
//! * Every failpoint of the engine (`oneway::__test_support::failpoint::NAMES`), and the
//!   batch failpoints at later hits, aborts a child at that durable-write
//!   boundary; a rerun without the failpoint must then produce a native store
//!   and a KV store identical (canonical content digest) to those of an
//!   uncrashed run of the same fixture.
//! * Random `SIGKILL`s: 30 in a row on a 40,000-invoice store (the issue's
//!   acceptance test), and many on a small store with tiny batches.
//! * Two migrators on one pair: one works, the other exits 4 at once; a
//!   killed migrator's lock does not block the next run.
//!
//! Everything is checked by content: the canonical dumps of `tests/common`,
//! `oneway verify`, and the KV rows (the original plus one tombstone row).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Small fixture for the failpoint matrix: 600 invoices in batches of 50.
const FP_INVOICES: u64 = 600;
const FP_BATCH: usize = 50;
/// The invoice settled "later" is at most this number: copied by the 4th batch.
const SETTLE_BELOW: u32 = 150;

/// Every `failpoint::hit("…")` literal and every transition's failpoint
/// prefix in `src/` must be in `NAMES`, and every name in `NAMES` must occur
/// in the code: a boundary added without a name would escape the crash matrix.
#[test]
fn failpoint_names_match_the_code() {
    let mut code = String::new();
    read_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut code,
    );
    let mut found = std::collections::BTreeSet::new();
    // failpoint::hit("name")
    for (i, _) in code.match_indices("failpoint::hit(\"") {
        let rest = &code[i + "failpoint::hit(\"".len()..];
        found.insert(rest[..rest.find('"').expect("closing quote")].to_string());
    }
    let mut prefixes = Vec::new();
    // t.transition(from, event, details, "name", effect): the last string
    // literal before the effect is the failpoint prefix.
    for (i, _) in code.match_indices(".transition(") {
        let call = &code[i..];
        let end = ["Effect", "effect"]
            .iter()
            .filter_map(|w| call.find(w))
            .min()
            .expect("an effect");
        let head = &call[..end];
        let lits: Vec<&str> = head.split('"').collect();
        assert!(
            lits.len() >= 3,
            "transition call without a failpoint name: {head}"
        );
        prefixes.push(lits[lits.len() - 2].to_string());
    }
    // The store's checked write path: write(Some("name"), …) and
    // write_or_roll_back(Some("name"), …).
    for (i, _) in code.match_indices("(Some(\"") {
        let before = &code[..i];
        if before.ends_with(".write") || before.ends_with(".write_or_roll_back") {
            let rest = &code[i + "(Some(\"".len()..];
            prefixes.push(rest[..rest.find('"').expect("closing quote")].to_string());
        }
    }
    for name in prefixes {
        found.insert(format!("{name}.before_commit"));
        found.insert(format!("{name}.after_commit"));
    }
    let names: std::collections::BTreeSet<String> = oneway::__test_support::failpoint::NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        found, names,
        "failpoints in the code vs oneway::__test_support::failpoint::NAMES"
    );
}

/// Appends every `.rs` file under `dir` to `code`.
fn read_sources(dir: &Path, code: &mut String) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            read_sources(&p, code);
        } else if p.extension().is_some_and(|e| e == "rs") {
            code.push_str(&std::fs::read_to_string(&p).expect("read"));
        }
    }
}

/// What the persisted state must be right after a crash at a failpoint.
struct Expect {
    state: &'static str,
    tombstone: bool,
    /// Invoices copied (rows in the copy map), when it is certain.
    copied: Option<u64>,
}

fn expect(state: &'static str, tombstone: bool, copied: Option<u64>) -> Expect {
    Expect {
        state,
        tombstone,
        copied,
    }
}

/// Crash at every failpoint (and at later hits of the batch failpoints),
/// rerun, and compare with an uncrashed run of the same fixture.
#[test]
fn every_failpoint_crash_then_rerun_equals_uncrashed_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.sqlite");
    make_fixture(&base, FP_INVOICES, 11);
    let reference = common::reference(&base, &dir.path().join("ref"), FP_BATCH);
    let n = FP_INVOICES;
    let batches = n.div_ceil(FP_BATCH as u64);
    let b = FP_BATCH as u64;

    // The changed source for the resync failpoints and the repair batches:
    // the same edit applied to a copy of the fixture, migrated uncrashed.
    let changed = dir.path().join("changed.sqlite");
    copy_store(&base, &changed);
    let (settled, added) = change_source(&changed, 20, SETTLE_BELOW, "fp");
    let changed_ref = common::reference(&changed, &dir.path().join("ref-changed"), FP_BATCH);
    let changed_n = changed_ref.invoices;
    assert_eq!(changed_n, n + added.len() as u64);

    let plain: Vec<(String, Expect)> = vec![
        (
            "begin.before_commit".into(),
            expect("Fresh", false, Some(0)),
        ),
        (
            "begin.after_commit".into(),
            expect("Migrating", false, Some(0)),
        ),
        (
            "batch.before_commit".into(),
            expect("Migrating", false, Some(0)),
        ),
        (
            "batch.after_commit".into(),
            expect("Migrating", false, Some(b)),
        ),
        (
            "batch.before_commit:3".into(),
            expect("Migrating", false, Some(2 * b)),
        ),
        (
            "batch.after_commit:3".into(),
            expect("Migrating", false, Some(3 * b)),
        ),
        (
            format!("batch.before_commit:{batches}"),
            expect("Migrating", false, Some(n - b)),
        ),
        (
            format!("batch.after_commit:{batches}"),
            expect("Migrating", false, Some(n)),
        ),
        // The final sweep for copies of deleted invoices is one more batch.
        (
            format!("batch.before_commit:{}", batches + 1),
            expect("Migrating", false, Some(n)),
        ),
        (
            format!("batch.after_commit:{}", batches + 1),
            expect("Migrating", false, Some(n)),
        ),
        (
            "indexes.before_commit".into(),
            expect("Migrating", false, Some(n)),
        ),
        (
            "indexes.after_commit".into(),
            expect("Migrating", false, Some(n)),
        ),
        (
            "verify.before_commit".into(),
            expect("Migrating", false, Some(n)),
        ),
        (
            "verify.after_commit".into(),
            expect("Verified", false, Some(n)),
        ),
        (
            "tombstone.before_insert".into(),
            expect("Verified", false, Some(n)),
        ),
        (
            "tombstone.after_commit".into(),
            expect("Verified", true, Some(n)),
        ),
        (
            "tombstoned.before_commit".into(),
            expect("Verified", true, Some(n)),
        ),
        (
            "tombstoned.after_commit".into(),
            expect("Tombstoned", true, Some(n)),
        ),
        (
            "lock.before_commit".into(),
            expect("Tombstoned", true, Some(n)),
        ),
        ("lock.after_commit".into(), expect("Locked", true, Some(n))),
    ];
    let mut driven = std::collections::BTreeSet::new();
    for (i, (spec, want)) in plain.iter().enumerate() {
        let kv = dir.path().join(format!("kv-{i}.sqlite"));
        let sql = dir.path().join(format!("native-{i}.sqlite"));
        copy_store(&base, &kv);
        crash_at(&kv, &sql, FP_BATCH, spec);
        check_crashed(&kv, &sql, want, &reference.kv_before, spec);
        let again = migrate_ok(&kv, &sql, FP_BATCH);
        assert_eq!(again["state"], "Locked", "{spec}: {again}");
        assert_matches_reference(&kv, &sql, &reference, spec);
        driven.insert(spec.split(':').next().unwrap_or(spec).to_string());
    }

    // The source changes after `Verified`: the tombstone step finds the
    // digest changed and goes back to `Migrating` (transition "resync").
    for (i, (spec, want_state)) in [
        ("resync.before_commit", "Verified"),
        ("resync.after_commit", "Migrating"),
    ]
    .into_iter()
    .enumerate()
    {
        let kv = dir.path().join(format!("kv-resync-{i}.sqlite"));
        let sql = dir.path().join(format!("native-resync-{i}.sqlite"));
        copy_store(&base, &kv);
        crash_at(&kv, &sql, FP_BATCH, "verify.after_commit");
        let (s2, a2) = change_source(&kv, 20, SETTLE_BELOW, "fp");
        assert_eq!(
            (s2, &a2),
            (settled, &added),
            "the same edit as on the reference copy"
        );
        let changed_before = kv_dump(&kv);
        assert_eq!(changed_before, changed_ref.kv_before);
        crash_at(&kv, &sql, FP_BATCH, spec);
        let s = status(&kv, &sql);
        assert_eq!(s["state"], want_state, "{spec}: {s}");
        assert_eq!(
            s["tombstone_present"], false,
            "{spec}: un-migrated data must never be tombstoned: {s}"
        );
        assert_kv_unchanged(&changed_before, &kv, spec);
        migrate_ok(&kv, &sql, FP_BATCH);
        assert_matches_reference(&kv, &sql, &changed_ref, spec);
        let j = journal(&sql);
        assert!(
            j.iter()
                .any(|e| e.event.as_deref() == Some("SourceChanged")),
            "{spec}: the journal records the source change"
        );
        driven.insert(spec.to_string());
    }

    // The source changes after the tombstone but before `Lock` (an lnd that
    // started before the tombstone commit wrote on): the Tombstoned step
    // re-syncs under the seal and records `Resynced` (transition
    // "resynced"). A crash on either side of that commit reruns to the
    // same end as the reference made from the changed source.
    for (i, spec) in ["resynced.before_commit", "resynced.after_commit"]
        .into_iter()
        .enumerate()
    {
        let kv = dir.path().join(format!("kv-resynced-{i}.sqlite"));
        let sql = dir.path().join(format!("native-resynced-{i}.sqlite"));
        copy_store(&base, &kv);
        crash_at(&kv, &sql, FP_BATCH, "tombstoned.after_commit");
        assert_eq!(status(&kv, &sql)["state"], "Tombstoned");
        let (s2, a2) = change_source(&kv, 20, SETTLE_BELOW, "fp");
        assert_eq!(
            (s2, &a2),
            (settled, &added),
            "the same edit as the reference's"
        );
        crash_at(&kv, &sql, FP_BATCH, spec);
        let s = status(&kv, &sql);
        assert_eq!(s["state"], "Tombstoned", "{spec}: {s}");
        assert_eq!(s["tombstone_present"], true, "{spec}: {s}");
        migrate_ok(&kv, &sql, FP_BATCH);
        assert_matches_reference(&kv, &sql, &changed_ref, spec);
        let j = journal(&sql);
        assert!(
            j.iter().any(|e| e.event.as_deref() == Some("Resynced")),
            "{spec}: the journal records the re-sync"
        );
        driven.insert(spec.to_string());
    }

    // The source changes while `Migrating` (after 4 batches): the copy goes
    // on from the cursor, and the verification pass re-copies the invoice
    // settled behind the cursor in a repair batch. Crash in that batch.
    let copied = 4 * b;
    let rest = changed_n - copied;
    let repair_hit = rest.div_ceil(b) + 1 + 1;
    for (i, (point, outdated_after_crash)) in
        [("batch.before_commit", 1), ("batch.after_commit", 0)]
            .into_iter()
            .enumerate()
    {
        let spec = format!("{point}:{repair_hit}");
        let kv = dir.path().join(format!("kv-repair-{i}.sqlite"));
        let sql = dir.path().join(format!("native-repair-{i}.sqlite"));
        copy_store(&base, &kv);
        crash_at(&kv, &sql, FP_BATCH, "batch.after_commit:4");
        assert_eq!(status(&kv, &sql)["copied"], copied);
        change_source(&kv, 20, SETTLE_BELOW, "fp");
        crash_at(&kv, &sql, FP_BATCH, &spec);
        let s = status(&kv, &sql);
        assert_eq!(s["state"], "Migrating", "{spec}: {s}");
        assert_eq!(
            s["copied"], changed_n,
            "{spec}: every invoice was copied before the repair: {s}"
        );
        assert_eq!(s["tombstone_present"], false, "{spec}: {s}");
        // Read-only verification sees the settled invoice outdated until
        // the repair batch commits.
        let v = verify(&kv, &sql);
        assert_eq!(v.json()["outdated"], outdated_after_crash, "{spec}: {v:?}");
        migrate_ok(&kv, &sql, FP_BATCH);
        assert_matches_reference(&kv, &sql, &changed_ref, &spec);
    }

    let all: std::collections::BTreeSet<String> = oneway::__test_support::failpoint::NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(driven, all, "every failpoint is driven");
}

/// Checks the persisted state right after a crash, and that the KV store
/// is untouched until the tombstone.
#[track_caller]
fn check_crashed(kv: &Path, sql: &Path, want: &Expect, original: &KvDump, what: &str) {
    let s = status(kv, sql);
    assert_eq!(s["state"], want.state, "{what}: {s}");
    assert_eq!(s["tombstone_present"], want.tombstone, "{what}: {s}");
    if let Some(c) = want.copied {
        assert_eq!(s["copied"], c, "{what}: {s}");
    }
    assert_eq!(
        s["copied"], s["native_invoices"],
        "{what}: the copy map and the native rows agree: {s}"
    );
    if want.tombstone {
        assert_kv_tombstoned(original, kv, what);
    } else {
        assert_kv_unchanged(original, kv, what);
    }
    if sql.exists() {
        assert_native_sound(sql);
        if want.state != "Migrating" && want.state != "Fresh" {
            assert_nothing_staged(sql);
        }
    }
}

/// The same batch failpoint, hit again in every rerun: every third batch
/// commit crashes, run after run, and the migration still converges.
#[test]
fn crashing_at_every_third_batch_run_after_run_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.sqlite");
    make_fixture(&base, FP_INVOICES, 12);
    let reference = common::reference(&base, &dir.path().join("ref"), FP_BATCH);
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    copy_store(&base, &kv);
    let mut crashes = 0;
    let mut last_copied = -1i64;
    loop {
        let out = migrate(
            &kv,
            &sql,
            FP_BATCH,
            &[("ONEWAY_FAILPOINT", "batch.after_commit:3")],
        );
        if out.ok() {
            break;
        }
        assert!(out.aborted(), "{out:?}");
        crashes += 1;
        let s = status(&kv, &sql);
        let copied = s["copied"].as_i64().expect("copied");
        assert!(copied > last_copied, "each run makes progress: {s}");
        assert_eq!(s["tombstone_present"], false);
        last_copied = copied;
        assert!(crashes < 20, "no convergence");
    }
    // 12 batches and a sweep: 13 commits, 3 per run before the last.
    assert_eq!(crashes, 4);
    assert_matches_reference(&kv, &sql, &reference, "crash every third batch");
}

/// What the random-kill harness saw.
#[derive(Debug, Default)]
struct KillStats {
    kills: usize,
    /// Runs that finished before their kill instant (each starts a new round
    /// on a fresh copy so that every kill hits a live migration).
    finished_early: usize,
    /// Where the kills landed, by the state found right after.
    landed: std::collections::BTreeMap<String, usize>,
}

/// Migrates copies of `base`, killing `oneway migrate` with SIGKILL `kills`
/// times at random instants, then reruns to the end and compares with an
/// uncrashed run. Kills come in rounds of at most `per_round` on one copy of
/// the store; each round ends with a rerun to the end, checked against the
/// uncrashed run, and the next round starts on a fresh copy (so that many
/// kills land in the copy phase, which the first kill of a round leaves).
///
/// Kill instants: the uncrashed reference run is timed per phase (copy,
/// verify, tombstone); each child is killed after a delay drawn uniformly
/// (seeded RNG) over the time the reference would need from the state the
/// child starts in (copy work left in proportion to the invoices still to
/// copy). So every kill lands inside a live run, spread over its copy,
/// verification and tombstone phases alike.
fn random_kills(
    invoices: u64,
    seed: u64,
    batch: usize,
    kills: usize,
    per_round: usize,
) -> KillStats {
    // Kill instants are computed from a timed reference run; another test
    // loading the other core meanwhile would skew them. One at a time.
    static TIMED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _alone = TIMED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.sqlite");
    make_fixture(&base, invoices, seed);
    let reference = common::reference(&base, &dir.path().join("ref"), batch);
    // Phase boundaries of the uncrashed run, in seconds from its start.
    let at = |e: &str| reference.transitions[e];
    let (begun, verified, tombstoned, locked) = (
        at("Begin"),
        at("VerificationPassed"),
        at("TombstoneWritten"),
        at("Lock"),
    );
    let secs = |k: &str| reference.report["seconds"][k].as_f64().expect("seconds");
    // Copy and verification share (begun, verified) as the engine timed them.
    let copy_share = secs("copy") / (secs("copy") + secs("verify")).max(1e-9);
    let copy_s = (verified - begun) * copy_share;
    let verify_s = (verified - begun) - copy_s;
    eprintln!(
        "random kills: reference run of {invoices} invoices took {:.2} s: begun at {begun:.3}, copied by {:.3}, \
         verified at {verified:.3}, tombstoned at {tombstoned:.3}, locked at {locked:.3}",
        reference.seconds,
        begun + copy_s
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut stats = KillStats::default();
    let mut round = 0;
    let (mut kv, mut sql) = (
        dir.path().join("kv-0.sqlite"),
        dir.path().join("native-0.sqlite"),
    );
    copy_store(&base, &kv);
    let mut in_round = 0;
    // Run times now, relative to the reference run's (see below).
    let mut pace = 1.0f64;
    while stats.kills < kills {
        if in_round == per_round {
            // End of a round: finish this store, check it, start afresh.
            let done = migrate_ok(&kv, &sql, batch);
            assert_eq!(done["state"], "Locked");
            assert_matches_reference(&kv, &sql, &reference, "after a round of kills");
            in_round = 0;
            round += 1;
            kv = dir.path().join(format!("kv-{round}.sqlite"));
            sql = dir.path().join(format!("native-{round}.sqlite"));
            copy_store(&base, &kv);
        }
        // The run time left, by the uncrashed run's phases: start-up (the
        // time to the Begin commit) plus the phases still to do, up to the
        // final commit. The WAL checkpoint after that commit is left out: a
        // kill there would hit a finished migration.
        let start_state = state_row(&sql);
        let remaining = begun
            + match state_row(&sql) {
                None => locked - begun,
                Some((state, copied, _)) => match state.as_str() {
                    "Migrating" => {
                        copy_s * (1.0 - copied as f64 / invoices as f64)
                            + verify_s
                            + (locked - verified)
                    }
                    "Verified" => locked - verified,
                    "Tombstoned" => locked - tombstoned,
                    other => panic!("a killed run left state {other}"),
                },
            };
        // Aim inside the run: a child can outpace the reference (warm page
        // cache, no fixture writing beside it), and a kill after its end
        // tests nothing. The last commit's neighbourhood stays covered by
        // the runs that start in Tombstoned, and exactly by the failpoints.
        //
        // The reference run may have been timed on a busier machine than
        // the children run on (other tests finishing): a child that ends
        // before its instant tells how fast runs are now, and later instants
        // are drawn on that scale.
        let remaining = remaining * pace;
        let delay = Duration::from_secs_f64(rng.random_range(0.0..remaining * 0.75));
        let mut child = command(&migrate_args(&kv, &sql, batch), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oneway migrate");
        let spawned = Instant::now();
        let ended = loop {
            if child.try_wait().expect("try_wait").is_some() {
                break Some(spawned.elapsed());
            }
            if spawned.elapsed() >= delay {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2).min(delay));
        };
        let killed = match ended {
            Some(took) => {
                pace = (pace * took.as_secs_f64() / remaining).clamp(0.05, 1.0);
                false
            }
            None => {
                child.kill().expect("SIGKILL");
                true
            }
        };
        let out = child.wait_with_output().expect("wait");
        let out = Out::from_parts(out.status, &out.stdout, &out.stderr);
        // A kill that lands after the final commit, while the process exits,
        // leaves a completed migration: that is no kill mid-migration.
        let completed = state_row(&sql).is_some_and(|s| s.0 == "Locked");
        if killed && out.signal == Some(SIGKILL) && !completed {
            stats.kills += 1;
            in_round += 1;
            // The crashed pair must read back consistently at once.
            let s = status(&kv, &sql);
            let state = s["state"].as_str().expect("state").to_string();
            let tomb = s["tombstone_present"].as_bool().expect("tombstone");
            assert!(
                !tomb || matches!(state.as_str(), "Verified" | "Tombstoned" | "Locked"),
                "tombstone present while {state}: {s}"
            );
            assert!(state != "Locked", "a killed run cannot have finished: {s}");
            assert_eq!(s["copied"], s["native_invoices"], "{s}");
            let at = if state == "Migrating" && s["copied"] == invoices {
                "Migrating (copy done)".to_string()
            } else {
                state
            };
            *stats.landed.entry(at).or_default() += 1;
            if tomb {
                assert_kv_tombstoned(&reference.kv_before, &kv, "after a kill");
            } else {
                assert_kv_unchanged(&reference.kv_before, &kv, "after a kill");
            }
        } else {
            // It finished before its kill instant: check it, then go on
            // killing on a fresh copy.
            eprintln!(
                "random kills: a child from {start_state:?} finished before its kill at {:.3} s of an estimated {remaining:.3} s",
                delay.as_secs_f64()
            );
            assert!(out.ok() || out.signal == Some(SIGKILL), "{out:?}");
            assert_matches_reference(&kv, &sql, &reference, "finished between kills");
            stats.finished_early += 1;
            in_round = 0;
            round += 1;
            kv = dir.path().join(format!("kv-{round}.sqlite"));
            sql = dir.path().join(format!("native-{round}.sqlite"));
            copy_store(&base, &kv);
        }
    }
    let last = migrate_ok(&kv, &sql, batch);
    assert_eq!(last["state"], "Locked");
    assert_matches_reference(&kv, &sql, &reference, "after the kills");
    eprintln!("random kills: {stats:?}");
    stats
}

/// The acceptance test: SIGKILL at random instants, 30 times in a
/// row on a 40,000-invoice store, then a rerun: every invoice exactly once
/// with every field equal, the tombstone present, the KV store otherwise
/// identical.
#[test]
fn sigkill_30_times_at_random_on_40000_invoices_then_rerun() {
    let started = Instant::now();
    let stats = random_kills(40_000, 40_000, 500, 30, 30);
    assert_eq!(stats.kills, 30);
    // The harness's aim, not the engine's correctness: the late phases are
    // short, so a few children outrun their drawn instant; most must not.
    // (Where kills land depends on the phase lengths: after the first kill
    // most land in verification, the longest phase left. The short windows
    // around the tombstone are covered exactly by the failpoint matrix.)
    assert!(
        stats.finished_early * 6 <= stats.kills,
        "kill instants badly calibrated: {stats:?}"
    );
    eprintln!(
        "40k acceptance test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Many more kills on a small store with tiny batches, so that kills land
/// between and inside hundreds of batch commits.
#[test]
fn sigkill_50_times_at_random_on_a_small_store_with_tiny_batches() {
    // Runs here last a fraction of a second, so start-up noise makes some
    // children finish before their kill instant; those rounds are checked
    // too, and killing goes on until 50 kills hit live migrations. Rounds of
    // five kills put a kill into the copy phase again and again.
    let stats = random_kills(4_000, 4_000, 10, 50, 5);
    assert_eq!(stats.kills, 50);
    assert!(
        stats.landed.get("Migrating").copied().unwrap_or(0) >= 3,
        "kills must land among the batch commits: {stats:?}"
    );
    assert!(
        stats.landed.len() >= 2,
        "kills landed in one state only: {stats:?}"
    );
}

/// Polls until `f` is true or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn lock_holder(sql: &Path) -> Option<String> {
    std::fs::read_to_string(with_suffix(sql, ".lock"))
        .ok()?
        .lines()
        .next()
        .map(str::to_string)
}

/// Two `oneway migrate` on the same pair: the second fails at once with
/// exit 4 naming the first's pid, the first finishes alone, and the result
/// is one clean migration (one `Begin` in the journal).
#[test]
fn two_migrators_on_one_pair_exactly_one_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    make_fixture(&kv, 8_000, 21);
    let original = kv_dump(&kv);
    let mut first = command(&migrate_args(&kv, &sql, 20), &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = first.id().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || lock_holder(&sql).as_deref()
            == Some(pid.as_str())),
        "the first migrator never took the lock"
    );
    let t = Instant::now();
    let second = migrate(&kv, &sql, 20, &[]);
    let took = t.elapsed();
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "the first migrator must still be running"
    );
    second.assert_code(4, "the second migrator");
    assert!(
        second
            .stderr
            .contains(&format!("migration in progress (pid {pid}, since ")),
        "the loser names the holder: {second:?}"
    );
    assert_eq!(second.json()["exit_code"], 4);
    assert!(
        took < Duration::from_secs(3),
        "the loser must fail fast, took {took:?}"
    );

    let out = first.wait_with_output().expect("wait");
    let out = Out::from_parts(out.status, &out.stdout, &out.stderr);
    out.assert_ok("the first migrator");
    assert_eq!(out.json()["copied_this_run"], 8_000);
    assert_kv_tombstoned(&original, &kv, "one migration");
    assert_verify_clean(&kv, &sql, 8_000);
    assert_native_sound(&sql);
    assert_nothing_staged(&sql);
    let events: Vec<String> = journal(&sql)
        .into_iter()
        .filter(|e| e.kind == "transition")
        .filter_map(|e| e.event)
        .collect();
    assert_eq!(
        events,
        ["Begin", "VerificationPassed", "TombstoneWritten", "Lock"]
    );
    // Once the first is done, a third run is let in and finds it complete.
    let third = migrate_ok(&kv, &sql, 20);
    assert_eq!(third["already_completed"], true);
}

/// A migrator killed with SIGKILL leaves its lock file behind, but the
/// kernel dropped the lock: the next run proceeds and finishes with
/// everything equal to an uncrashed run.
#[test]
fn killed_migrator_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.sqlite");
    make_fixture(&base, 8_000, 22);
    let reference = common::reference(&base, &dir.path().join("ref"), 20);
    let kv = dir.path().join("kv.sqlite");
    let sql = dir.path().join("native.sqlite");
    copy_store(&base, &kv);
    let mut first = command(&migrate_args(&kv, &sql, 20), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = first.id().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || {
            lock_holder(&sql).as_deref() == Some(pid.as_str())
                && state_row(&sql).is_some_and(|s| s.1 > 0)
        }),
        "the first migrator never started copying"
    );
    first.kill().expect("kill -9");
    let status_of_first = first.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status_of_first),
        Some(SIGKILL)
    );
    assert_eq!(
        lock_holder(&sql).as_deref(),
        Some(pid.as_str()),
        "the stale lock file is still there"
    );

    let t = Instant::now();
    let second = migrate_ok(&kv, &sql, 20);
    assert_eq!(second["state"], "Locked");
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_matches_reference(&kv, &sql, &reference, "after a killed migrator");
}
