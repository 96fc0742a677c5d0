//! The orchsim suite, pointed at the naive orchestrator through its public API alone
//! (`scenarios::workers::Worker`, `Scenario::run_worker`, `scenarios::runner`), finds each of
//! its flaws within 50 seeds, and a failure shrinks and replays from its run file.

use naive_orchestrator::Naive;
use scenarios::checks::Invariant;
use scenarios::runner;

/// Seeds searched per row.
const SEEDS: u64 = 50;

/// (invariant, scenario, what its evidence says, the flaw it shows).
const CAUGHT: &[(Invariant, &str, &str, &str)] = &[
    (Invariant::CrossUser, "calm", "which belongs to", "the idempotency cache is global: one user's key replays another user's answer"),
    (
        Invariant::ContractStatuses,
        "calm",
        "was answered 200, the contract gives [422, 503]",
        "a key reused with another body is replayed instead of refused (422)",
    ),
    (
        Invariant::FreshReplay,
        "calm",
        "was replayed with version",
        "a replay hands back the state stored with the answer, not the current one",
    ),
    (
        Invariant::ExactlyOnce,
        "duplicates",
        "changed state 2 times",
        "the cache is read before the lock: a duplicate delivered meanwhile runs the turn again",
    ),
    (Invariant::FencedWriter, "latency", "version went", "no fencing: a turn whose lock lapsed under a slow Copilot call still writes"),
    (
        Invariant::CancelClean,
        "calm",
        "showed cancelled, but the conversation ended the run",
        "the cancel takes no lock: a turn in flight writes over it",
    ),
    (
        Invariant::ExactlyOnce,
        "effects",
        "was never submitted",
        "effects are sent once after the commit, with no outbox: a refused submission is lost",
    ),
    (Invariant::LostData, "crashes", "the final state has", "ids restart with the process: a new conversation overwrites an old one"),
    (Invariant::NoHang, "partitions", "got no answer", "no deadline on dialling Redis: a request waits out a partition"),
    (
        Invariant::NoSignalLoop,
        "calm",
        "not terminal after the heal",
        "a user misled by another's cached answer leaves their own conversation open",
    ),
];

#[test]
fn the_suite_finds_each_flaw_of_the_naive_orchestrator_within_fifty_seeds() {
    let mut missed = Vec::new();
    for (invariant, scenario, evidence, flaw) in CAUGHT {
        let sc = scenarios::find(scenario).expect("a scenario of the suite");
        let first = (0..SEEDS).find(|&seed| {
            let v = sc.run_worker(&Naive, seed);
            v.violations.iter().any(|x| x.invariant == *invariant && x.evidence.contains(evidence))
        });
        match first {
            Some(seed) => println!("[{invariant}] {scenario} seed {seed}: {flaw}"),
            None => missed.push(format!("[{invariant}] not caught in {scenario} seeds 0..{SEEDS} ({flaw})")),
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

#[test]
fn a_failure_shrinks_and_the_shrunk_run_replays_from_its_file() {
    // The lapsed lock needs Copilot to be slow: a latency seed whose plan has faults to cut.
    let invariant = Invariant::FencedWriter;
    let sc = scenarios::find("latency").unwrap();
    let v = (0..SEEDS)
        .map(|seed| sc.run_worker(&Naive, seed))
        .find(|v| v.violations.iter().any(|x| x.invariant == invariant) && v.plan.faults.len() > 1)
        .expect("a latency seed with more than one fault in which invariant 4 fires");
    let fires = |r: &scenarios::report::Verdict| r.violations.iter().any(|x| x.invariant == invariant);
    let small = runner::shrink_while(&Naive, &v, fires);
    assert!(fires(&small.verdict), "{:?}", small.verdict.violations);
    assert!(small.verdict.plan.faults.len() < v.plan.faults.len(), "{:?} did not shrink", v.plan);
    println!(
        "latency seed {}: {} faults shrunk to {} in {} runs",
        v.seed,
        v.plan.faults.len(),
        small.verdict.plan.faults.len(),
        small.runs
    );

    let file = runner::write(&small.verdict).expect("the run file is written");
    let again = runner::replay_file(&Naive, &file).expect("the run file reads back");
    assert_eq!(again.trace_hash, small.verdict.trace_hash, "the replay is the same run");
    assert_eq!(again.plan, small.verdict.plan);
    assert_eq!(
        again.violations.iter().map(|x| x.invariant).collect::<Vec<_>>(),
        small.verdict.violations.iter().map(|x| x.invariant).collect::<Vec<_>>()
    );
    // What the run file says of itself.
    let run = runner::RunFile::read(&file).unwrap();
    assert_eq!(run.worker, "naive-orchestrator");
    assert!(run.violations.iter().any(|x| x.invariant == invariant));
}

#[test]
fn the_explore_engine_runs_a_foreign_worker_and_reports_it_failing() {
    use scenarios::explore::{explore_worker, Explore};
    let cfg = Explore { jobs: 2, recheck_every: 5, ..Explore::seeds(11) };
    let mut report = Vec::new();
    assert!(!explore_worker(&Naive, &cfg, &mut report), "eleven seeds, one per scenario, and the naive orchestrator passed them all");
    let report = String::from_utf8(report).unwrap();
    assert!(report.contains("violated invariants") && report.contains("INVARIANT VIOLATED"), "{report}");
}
