//! The state machine as data: the whole transition table and the whole
//! backend decision table as snapshots, plus properties checked over the
//! table (terminal `Locked`, no way back from the sealed states, everything
//! reachable from `Fresh`, at most one backend allowed at a time).

#[macro_use]
mod common;

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;

use oneway::__test_support::fsm::{backend_decision, transition, Backend, Event, Refusal, State};

/// Every backend, in a fixed order.
const BACKENDS: [Backend; 2] = [Backend::Kv, Backend::Sql];

/// Every persisted state an application can meet: no native store, or one
/// of the five states.
fn persisted_states() -> Vec<Option<State>> {
    std::iter::once(None)
        .chain(State::ALL.into_iter().map(Some))
        .collect()
}

fn state_label(s: Option<State>) -> &'static str {
    s.map_or("(no native store)", State::name)
}

fn refusal_text(r: Refusal) -> String {
    format!("refused {}: {}", r.name(), r)
}

/// The transition table as text: one line per (state, event) pair.
fn transition_table() -> String {
    let mut out = String::new();
    writeln!(out, "{:<11} {:<19} result", "state", "event").unwrap();
    for s in State::ALL {
        for e in Event::ALL {
            let result = match transition(s, e) {
                Ok(next) => format!("-> {next}"),
                Err(r) => refusal_text(r),
            };
            writeln!(out, "{:<11} {:<19} {result}", s.name(), e.name()).unwrap();
        }
    }
    out
}

/// The backend decision table as text: one line per (persisted state,
/// tombstone, backend) triple.
fn backend_table() -> String {
    let mut out = String::new();
    writeln!(
        out,
        "{:<18} {:<9} {:<7} decision",
        "persisted state", "tombstone", "backend"
    )
    .unwrap();
    for s in persisted_states() {
        for tomb in [false, true] {
            for b in BACKENDS {
                let decision = match backend_decision(s, tomb, b) {
                    Ok(()) => "allowed".to_string(),
                    Err(r) => refusal_text(r),
                };
                writeln!(
                    out,
                    "{:<18} {:<9} {:<7} {decision}",
                    state_label(s),
                    if tomb { "present" } else { "absent" },
                    b.name()
                )
                .unwrap();
            }
        }
    }
    out
}

#[test]
fn transition_table_snapshot() {
    let table = transition_table();
    // 5 states x 7 events, plus the header.
    assert_eq!(table.lines().count(), 1 + 5 * 7);
    snapshot!("fsm_transition_table", table);
}

#[test]
fn backend_decision_table_snapshot() {
    let table = backend_table();
    // 6 persisted states x 2 tombstone values x 2 backends, plus the header.
    assert_eq!(table.lines().count(), 1 + 6 * 2 * 2);
    snapshot!("fsm_backend_decision_table", table);
}

/// The states reachable from `start` through accepted transitions.
fn reachable_from(start: State) -> BTreeSet<State> {
    let mut seen = BTreeSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(s) = queue.pop_front() {
        for e in Event::ALL {
            if let Ok(next) = transition(s, e) {
                if seen.insert(next) {
                    queue.push_back(next);
                }
            }
        }
    }
    seen
}

#[test]
fn locked_is_terminal() {
    for e in Event::ALL {
        assert_eq!(
            transition(State::Locked, e),
            Err(Refusal::Terminal),
            "Locked must refuse {e} as terminal"
        );
    }
    assert_eq!(
        reachable_from(State::Locked),
        BTreeSet::from([State::Locked])
    );
}

#[test]
fn sealed_states_never_reach_unsealed_ones() {
    let unsealed = [State::Fresh, State::Migrating, State::Verified];
    for start in [State::Tombstoned, State::Locked] {
        let reach = reachable_from(start);
        for s in unsealed {
            assert!(
                !reach.contains(&s),
                "{s} is reachable from {start}: {reach:?}"
            );
        }
        assert!(
            reach.iter().all(|s| s.is_sealed()),
            "{start} reaches {reach:?}"
        );
    }
    assert_eq!(
        reachable_from(State::Tombstoned),
        BTreeSet::from([State::Tombstoned, State::Locked])
    );
}

#[test]
fn every_state_is_reachable_from_fresh() {
    let reach = reachable_from(State::Fresh);
    assert_eq!(reach, State::ALL.into_iter().collect::<BTreeSet<_>>());
    // Fresh is only ever the start: nothing leads back to it.
    for s in State::ALL {
        for e in Event::ALL {
            assert_ne!(transition(s, e), Ok(State::Fresh), "{s} --{e}--> Fresh");
        }
    }
}

#[test]
fn accepted_transitions_never_go_backwards_except_resync() {
    // The machine only moves forward, with one exception: a source change
    // after verification sends Verified back to Migrating.
    for s in State::ALL {
        for e in Event::ALL {
            if let Ok(next) = transition(s, e) {
                let backwards = next < s;
                let resync = s == State::Verified && e == Event::SourceChanged;
                assert_eq!(
                    backwards, resync,
                    "{s} --{e}--> {next}: only Verified --SourceChanged--> Migrating goes back"
                );
            }
        }
    }
}

#[test]
fn at_most_one_backend_is_ever_allowed() {
    for s in persisted_states() {
        for tomb in [false, true] {
            let allowed: Vec<Backend> = BACKENDS
                .into_iter()
                .filter(|b| backend_decision(s, tomb, *b).is_ok())
                .collect();
            assert!(
                allowed.len() <= 1,
                "both backends allowed in {} with tombstone {tomb}",
                state_label(s)
            );
        }
    }
}

#[test]
fn tombstone_always_refuses_kv_and_sql_needs_locked() {
    for s in persisted_states() {
        assert!(
            backend_decision(s, true, Backend::Kv).is_err(),
            "kv allowed over a tombstone in {s:?}"
        );
        for tomb in [false, true] {
            let sql = backend_decision(s, tomb, Backend::Sql);
            assert_eq!(
                sql.is_ok(),
                s == Some(State::Locked),
                "sql in {s:?}, tombstone {tomb}: {sql:?}"
            );
        }
    }
    // A sealed native state refuses KV even if the tombstone is gone (someone
    // deleted it): the native store is the truth, and the refusal says the
    // seal was lost rather than claiming a tombstone.
    for s in [State::Tombstoned, State::Locked] {
        assert_eq!(
            backend_decision(Some(s), false, Backend::Kv),
            Err(Refusal::KvSealLost)
        );
    }
}
