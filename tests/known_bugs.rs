//! The harness catches every re-created pitfall within a bounded number of seeds, through the
//! invariant that pitfall breaks. Run with `--features known-bugs` (kept out of the default test
//! run for time only; the pitfalls themselves are harness-side decorators, see sim/src/known_bugs).

use scenarios::checks::Invariant;
use scenarios::find;
use scenarios::KnownBug;

/// Seeds tried per bug before the harness is declared blind to it.
const SEEDS_MAX: u64 = 50;

/// Where each bug shows and which invariant must catch it. The match is exhaustive: a new
/// `KnownBug` does not compile until it says how the harness catches it.
fn expectation(bug: KnownBug) -> (&'static str, &'static [Invariant]) {
    match bug {
        KnownBug::StaleReplay => ("duplicates", &[Invariant::FreshReplay]),
        KnownBug::ConfidenceIgnored => ("swarm", &[Invariant::ValidTransitions]),
        KnownBug::UnknownSignalIgnored => ("swarm", &[Invariant::NoSignalLoop]),
        KnownBug::IdempotencyKeyNotScopedByUser => ("swarm", &[Invariant::CrossUser, Invariant::NoHang]),
        KnownBug::ContextNotLoadedFromStore => ("swarm", &[Invariant::LostData, Invariant::FencedWriter]),
        KnownBug::ContextPrefixWithoutSpaces => ("calm", &[Invariant::ContextWellFormed]),
        KnownBug::NoEffectsDeduplication => ("duplicates", &[Invariant::ExactlyOnce]),
        // Needs a commit refused by the fence: a lease that lapses under a working turn while
        // another turn takes it, most often when Redis's clock jumps (clocks).
        KnownBug::BlindRecommitAfterLeaseLoss => {
            ("clocks", &[Invariant::LostData, Invariant::ValidTransitions, Invariant::FencedWriter, Invariant::SpecOracle])
        }
        // A lease lapses under a slow turn, another writes, the first overwrites it.
        KnownBug::NoFencing => ("partitions", &[Invariant::FencedWriter]),
        // Redis expires the lease early (clock jump) while the worker's clock says it holds.
        KnownBug::TrustLocalClock => ("clocks", &[Invariant::FencedWriter]),
        // Concurrent turns on one conversation are enough.
        KnownBug::NoLock => ("calm", &[Invariant::FencedWriter, Invariant::LostData, Invariant::ExactlyOnce]),
        // Needs a lease held past the acquire deadline: slow Copilot calls.
        KnownBug::ProceedWhenLockFails => ("latency", &[Invariant::FencedWriter, Invariant::LostData, Invariant::ExactlyOnce]),
        // Needs a cancel pressed while a turn holds the lease (users do, at a seeded rate).
        KnownBug::CancelWaitsForTheLease => {
            ("swarm", &[Invariant::CancelClean, Invariant::LostData, Invariant::FencedWriter, Invariant::SpecOracle])
        }
        // Any success shows it: the sink hears of it before the store does.
        KnownBug::SubmitBeforeCommit => ("calm", &[Invariant::ExactlyOnce]),
    }
}

fn caught(bug: KnownBug) {
    let (scenario, expected) = expectation(bug);
    caught_as(bug, scenario, expected);
}

fn caught_as(bug: KnownBug, scenario: &str, expected: &[Invariant]) {
    let sc = find(scenario).unwrap();
    for seed in 0..SEEDS_MAX {
        let v = sc.run_with_bug(seed, Some(bug));
        if let Some(x) = v.violations.iter().find(|x| expected.contains(&x.invariant)) {
            eprintln!("{bug:?}: caught by [{}] at {scenario} seed {seed}: {}", x.invariant, x.evidence);
            return;
        }
    }
    panic!("{bug:?} was not caught as any of {expected:?} in {SEEDS_MAX} seeds of {scenario}");
}

#[test]
fn a_blind_recommit_after_lease_loss_is_caught_as_lost_or_unexplained_data() {
    caught(KnownBug::BlindRecommitAfterLeaseLoss);
}

#[test]
fn no_fencing_is_caught_by_the_fenced_single_writer_check() {
    caught(KnownBug::NoFencing);
}

#[test]
fn trusting_the_local_clock_is_caught_by_the_fenced_single_writer_check() {
    caught(KnownBug::TrustLocalClock);
}

#[test]
fn no_lock_is_caught_by_the_fenced_single_writer_check() {
    caught(KnownBug::NoLock);
}

#[test]
fn proceeding_when_the_lock_fails_is_caught_by_the_fenced_single_writer_check() {
    caught(KnownBug::ProceedWhenLockFails);
}

#[test]
fn stale_replay_is_caught_as_a_stale_replay() {
    caught(KnownBug::StaleReplay);
}

#[test]
fn ignored_confidence_is_caught_as_an_invalid_transition() {
    caught(KnownBug::ConfidenceIgnored);
}

#[test]
fn an_ignored_no_signal_is_caught_as_a_stuck_loop() {
    caught(KnownBug::UnknownSignalIgnored);
}

#[test]
fn an_idempotency_key_not_scoped_by_user_is_caught_as_cross_user_data_or_a_bad_status() {
    caught(KnownBug::IdempotencyKeyNotScopedByUser);
}

#[test]
fn a_context_not_loaded_from_the_store_is_caught_as_lost_data_or_a_version_gap() {
    caught(KnownBug::ContextNotLoadedFromStore);
}

#[test]
fn a_context_prefix_without_spaces_is_caught_by_copilot() {
    caught(KnownBug::ContextPrefixWithoutSpaces);
}

#[test]
fn effects_without_deduplication_are_caught_as_a_second_submission() {
    caught(KnownBug::NoEffectsDeduplication);
}

/// The specification oracle is a checker of its own: the bugs that commit a state the rules do
/// not give are caught by it alone, whatever the other invariants say.
#[test]
fn the_spec_oracle_alone_catches_states_the_rules_do_not_give() {
    caught_as(KnownBug::UnknownSignalIgnored, "swarm", &[Invariant::SpecOracle]);
    caught_as(KnownBug::ContextNotLoadedFromStore, "swarm", &[Invariant::SpecOracle]);
}

#[test]
fn a_cancel_that_waits_for_the_lease_is_caught_by_the_cancel_invariant_alone() {
    caught_as(KnownBug::CancelWaitsForTheLease, "swarm", &[Invariant::CancelClean]);
}

#[test]
fn every_known_bug_is_caught() {
    for bug in KnownBug::ALL {
        caught(bug);
    }
}
