//! `orchsim`: explore seeds of the simulation on all cores, or replay one.

use clap::{Parser, Subcommand};
use scenarios::checks::Invariant;
use scenarios::report::{failure_report, timeline, write_trace, Verdict};
use scenarios::runner;
use scenarios::workers::orchsim::Orchsim;
use scenarios::{default_set, find, names, Scenario, SCENARIOS};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "orchsim", about = "Deterministic simulation of the reference orchestrator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run many seeds on all cores and report violations.
    Explore {
        /// Seeds to run (spread over all scenarios unless --scenario is given).
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Only this scenario.
        #[arg(long)]
        scenario: Option<String>,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// Worker threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Re-run one seed in this many to check determinism (FoundationDB re-runs 5%: 20).
        #[arg(long, default_value_t = 20)]
        recheck_every: u64,
        /// Switch on a known orchestrator bug (build with `--features known-bugs`).
        #[arg(long)]
        known_bug: Option<String>,
    },
    /// Re-run one seed (or a written run, e.g. a shrunk one) and print its options, fault
    /// plan, timeline and verdict.
    Replay {
        #[arg(long, required_unless_present = "run", conflicts_with = "run")]
        scenario: Option<String>,
        #[arg(long, required_unless_present = "run", conflicts_with = "run")]
        seed: Option<u64>,
        /// A `.run.json` written by a failure or by `shrink`: its options, plan and seed.
        #[arg(long)]
        run: Option<std::path::PathBuf>,
        /// Print only the verdict, not the timeline.
        #[arg(long)]
        quiet: bool,
        /// Switch on a known orchestrator bug (build with `--features known-bugs`).
        #[arg(long, conflicts_with = "run")]
        known_bug: Option<String>,
    },
    /// Re-run a failing seed with parts of its fault plan taken away until only the faults
    /// its failure needs are left; writes the shrunk run for `replay --run`.
    Shrink {
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        seed: u64,
        /// Switch on a known orchestrator bug (build with `--features known-bugs`).
        #[arg(long)]
        known_bug: Option<String>,
    },
    /// List the scenarios.
    Scenarios,
}

/// Prints to stdout; a closed pipe (`| head`) ends the program quietly instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if writeln!(out, $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

fn known_bug(name: Option<&str>) -> Result<Option<scenarios::KnownBug>, String> {
    let Some(name) = name else { return Ok(None) };
    let all: Vec<String> = scenarios::KnownBug::ALL.iter().map(|b| b.name()).collect();
    serde_json::from_value(serde_json::Value::String(name.into()))
        .map(Some)
        .map_err(|_| format!("unknown known bug {name:?}; known: {}", all.join(", ")))
}

fn scenario(name: &str) -> Result<&'static Scenario, String> {
    find(name).ok_or_else(|| format!("unknown scenario {name:?}; known: {}", names().join(", ")))
}

#[derive(Default)]
struct Tally {
    seeds: u64,
    failed: u64,
    run_wall: Duration,
    sim_ms: u64,
    counters: BTreeMap<&'static str, u64>,
}

fn explore(
    seeds: u64,
    only: Option<&'static Scenario>,
    first: u64,
    jobs: usize,
    recheck_every: u64,
    bug: Option<scenarios::KnownBug>,
) -> ExitCode {
    let defaults = default_set();
    let plan: Vec<(&'static Scenario, u64)> = (0..seeds)
        .map(|i| {
            let s = only.unwrap_or_else(|| defaults[(i % defaults.len() as u64) as usize]);
            (s, first + i)
        })
        .collect();
    eprintln!(
        "exploring {} seeds from {first} on {jobs} threads; scenarios: {}",
        plan.len(),
        match only {
            Some(s) => s.name.to_string(),
            None => defaults.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        }
    );
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed_seeds = AtomicU64::new(0);
    let tallies: Mutex<BTreeMap<&'static str, Tally>> = Mutex::new(BTreeMap::new());
    let failures: Mutex<Vec<Verdict>> = Mutex::new(Vec::new());
    let mismatches: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let panics: Mutex<Vec<(&str, u64, String)>> = Mutex::new(Vec::new());
    let rechecked = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(sc, seed)) = plan.get(i as usize) else { break };
                let t = Instant::now();
                // A seed that panics the harness is reported, and does not stop the others (nor
                // leave the progress loop waiting for a count that never comes).
                let v = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sc.run_with_bug(seed, bug))) {
                    Ok(v) => v,
                    Err(p) => {
                        let why = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        panics.lock().unwrap().push((sc.name, seed, why));
                        done.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                let wall = t.elapsed();
                if recheck_every > 0 && seed % recheck_every == 0 {
                    rechecked.fetch_add(1, Ordering::SeqCst);
                    let again = sc.run_with_bug(seed, bug);
                    if again.trace_hash != v.trace_hash {
                        mismatches
                            .lock()
                            .unwrap()
                            .push(format!("{} seed {}: trace hash {} then {}", sc.name, seed, v.trace_hash, again.trace_hash));
                    }
                }
                {
                    let mut g = tallies.lock().unwrap();
                    let t = g.entry(sc.name).or_default();
                    t.seeds += 1;
                    t.run_wall += wall;
                    t.sim_ms += v.sim_ms;
                    for (k, n) in &v.counters {
                        *t.counters.entry(k).or_default() += n;
                    }
                    if !v.passed() {
                        t.failed += 1;
                    }
                }
                if !v.passed() {
                    failed_seeds.fetch_add(1, Ordering::SeqCst);
                    failures.lock().unwrap().push(v);
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Progress, from this thread.
        let total = plan.len() as u64;
        loop {
            let d = done.load(Ordering::SeqCst);
            let el = start.elapsed().as_secs_f64().max(1e-9);
            let width: u64 = 30;
            let filled = if total == 0 { width } else { (d * width / total).min(width) } as usize;
            eprint!(
                "\r[{}{}] {d}/{total} seeds  {:.1} seeds/s  {} failing   ",
                "#".repeat(filled),
                ".".repeat(width as usize - filled),
                d as f64 / el,
                failed_seeds.load(Ordering::SeqCst)
            );
            let _ = std::io::stderr().flush();
            if d >= total {
                eprintln!();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let elapsed = start.elapsed();
    say!("\n{:<12} {:>6} {:>10} {:>16} {:>14}", "scenario", "seeds", "violating", "seeds/s/thread", "sim/wall");
    let tallies = tallies.into_inner().unwrap();
    let mut all_counters: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (name, t) in &tallies {
        let secs = t.run_wall.as_secs_f64().max(1e-9);
        say!("{:<12} {:>6} {:>10} {:>16.1} {:>13.0}x", name, t.seeds, t.failed, t.seeds as f64 / secs, t.sim_ms as f64 / 1e3 / secs);
        for (k, n) in &t.counters {
            *all_counters.entry(k).or_default() += n;
        }
    }
    say!(
        "\ntotal: {} seeds in {:.1} s = {:.1} seeds/s on {jobs} threads",
        plan.len(),
        elapsed.as_secs_f64(),
        plan.len() as f64 / elapsed.as_secs_f64()
    );
    let names: Vec<&str> = tallies.keys().copied().collect();
    say!("\n{:<40}{}{:>10}", "events", names.iter().map(|n| format!("{n:>12}")).collect::<String>(), "all");
    for k in scenarios::report::COUNTERS {
        let per: Vec<u64> = names.iter().map(|n| tallies[n].counters.get(k).copied().unwrap_or(0)).collect();
        say!("{:<40}{}{:>10}", k, per.iter().map(|v| format!("{v:>12}")).collect::<String>(), all_counters.get(k).copied().unwrap_or(0));
    }
    // Expectations: what each scenario must reach across its seeds (`sometimes`) and must never
    // reach (`never`, already a violation of the seed that did), beside the counters.
    say!("\nexpectations");
    let mut unmet_total = 0;
    for name in &names {
        let Some(sc) = find(name) else { continue };
        let t = &tallies[name];
        let never_hit: Vec<&str> = sc.never.iter().copied().filter(|c| t.counters.get(c).copied().unwrap_or(0) > 0).collect();
        let unmet = sc.unmet_sometimes(&t.counters);
        let judged = t.seeds >= scenarios::EXPECTATION_SEEDS_MIN;
        let met = sc.sometimes.len() - unmet.len() + sc.never.len() - never_hit.len();
        let mut line = format!("{name:<12} met {met}/{}", sc.sometimes.len() + sc.never.len());
        if !unmet.is_empty() {
            if judged {
                unmet_total += unmet.len();
                line += &format!("; UNMET sometimes: {}", unmet.join(", "));
            } else {
                line +=
                    &format!("; not yet reached (fewer than {} seeds, not judged): {}", scenarios::EXPECTATION_SEEDS_MIN, unmet.join(", "));
            }
        }
        if !never_hit.is_empty() {
            line += &format!("; BROKEN never: {}", never_hit.join(", "));
        }
        say!("{line}");
    }
    let panics = panics.into_inner().unwrap();
    for (scenario, seed, why) in &panics {
        say!("  PANICKED scenario {scenario} seed {seed}: {why}\n    reproduce: cargo run --release -- replay --scenario {scenario} --seed {seed}");
    }
    let mismatches = mismatches.into_inner().unwrap();
    say!("determinism: {} seeds re-run, {} trace-hash mismatches", rechecked.load(Ordering::SeqCst), mismatches.len());
    for m in &mismatches {
        say!("  NONDETERMINISTIC {m}");
    }
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|v| (v.scenario.clone(), v.seed));
    // Which invariants failed, in how many seeds, and the first seed to replay for each.
    let mut by_invariant: BTreeMap<Invariant, (usize, String)> = BTreeMap::new();
    for f in &failures {
        let mut seen: Vec<Invariant> = f.violations.iter().map(|x| x.invariant).collect();
        seen.dedup();
        for inv in seen {
            let e = by_invariant.entry(inv).or_insert_with(|| (0, format!("{} seed {}", f.scenario, f.seed)));
            e.0 += 1;
        }
    }
    if !by_invariant.is_empty() {
        say!("\nviolated invariants (seeds, first one)");
        for (inv, (n, first)) in &by_invariant {
            say!("  {:<44} {n:>6}   {first}", inv.name());
        }
    }
    for v in failures.iter().take(5) {
        let trace = write_trace(v).ok();
        say!("\n{}", failure_report(v, trace.as_deref()));
    }
    if failures.is_empty() && mismatches.is_empty() && unmet_total == 0 && panics.is_empty() {
        say!("0 violations, 0 unmet expectations");
        ExitCode::SUCCESS
    } else {
        say!("{} violating seeds, {} panicked, {unmet_total} unmet expectations", failures.len(), panics.len());
        ExitCode::FAILURE
    }
}

fn replay(v: &Verdict, quiet: bool) -> ExitCode {
    say!("scenario {} seed {}", v.scenario, v.seed);
    say!("options: {}", serde_json::to_string_pretty(&v.options).unwrap_or_default());
    say!("fault plan: {}", serde_json::to_string(&v.plan).unwrap_or_default());
    if !quiet {
        say!("timeline:\n{}", timeline(&v.history));
    }
    let trace = write_trace(v).ok();
    say!("simulated {} ms; trace hash {}", v.sim_ms, v.trace_hash);
    if let Some(t) = &trace {
        say!("trace written to {}", t.display());
    }
    for (k, n) in &v.counters {
        say!("  {k:<40} {n}");
    }
    if v.passed() {
        say!("PASSED: no invariant violated");
        ExitCode::SUCCESS
    } else {
        say!("{}", failure_report(v, trace.as_deref()));
        ExitCode::FAILURE
    }
}

fn shrink(sc: &Scenario, seed: u64, bug: Option<scenarios::KnownBug>) -> ExitCode {
    let start = Instant::now();
    let v = sc.run_with_bug(seed, bug);
    if v.passed() {
        say!("{} seed {seed} passes: nothing to shrink", sc.name);
        return ExitCode::SUCCESS;
    }
    let broken: std::collections::BTreeSet<Invariant> = v.violations.iter().map(|x| x.invariant).collect();
    say!("{} seed {seed} violates {:?} with {} faults; shrinking the plan...", sc.name, broken, v.plan.faults.len());
    let shrunk = runner::shrink(&Orchsim { bug }, &v);
    let small = &shrunk.verdict;
    let trace = runner::write(small).ok().map(|run| run.with_extension("").with_extension("trace.jsonl"));
    say!(
        "shrunk {} faults to {} in {} runs ({:.1} s):",
        v.plan.faults.len(),
        small.plan.faults.len(),
        shrunk.runs,
        start.elapsed().as_secs_f64()
    );
    for (at, f) in &small.plan.faults {
        say!("  at {at:>6} ms  {}", serde_json::to_string(f).unwrap_or_default());
    }
    say!("{}", failure_report(small, trace.as_deref()));
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Explore { seeds, scenario: name, first_seed, jobs, recheck_every, known_bug: bug } => {
            let parsed = name.as_deref().map(scenario).transpose().and_then(|s| Ok((s, known_bug(bug.as_deref())?)));
            let (only, bug) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
            explore(seeds, only, first_seed, jobs, recheck_every, bug)
        }
        Cmd::Replay { scenario: name, seed, run, quiet, known_bug: bug } => {
            let verdict = match (run, name, seed) {
                (Some(path), _, _) => runner::RunFile::read(&path).map(|run| runner::replay(&Orchsim { bug: run.options.known_bug }, &run)),
                (None, Some(name), Some(seed)) => {
                    scenario(&name).and_then(|s| Ok((s, known_bug(bug.as_deref())?))).map(|(s, bug)| s.run_with_bug(seed, bug))
                }
                _ => Err("give --scenario and --seed, or --run".into()),
            };
            match verdict {
                Ok(v) => replay(&v, quiet),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Shrink { scenario: name, seed, known_bug: bug } => match scenario(&name).and_then(|s| Ok((s, known_bug(bug.as_deref())?))) {
            Ok((s, bug)) => shrink(s, seed, bug),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Scenarios => {
            for s in SCENARIOS {
                let mark = if s.in_default { "" } else { " [not in the default set: --scenario]" };
                say!("{:<12} {}{mark}", s.name, s.about);
            }
            ExitCode::SUCCESS
        }
    }
}
