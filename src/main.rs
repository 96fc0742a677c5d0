//! `orchsim`: explore seeds of the simulation on all cores, or replay one.

use clap::{Parser, Subcommand};
use scenarios::checks::Invariant;
use scenarios::explore::{explore, Explore};
use scenarios::report::{failure_report, timeline, write_trace, Verdict};
use scenarios::runner;
use scenarios::workers::orchsim::Orchsim;
use scenarios::{find, names, Scenario, SCENARIOS};
use std::process::ExitCode;
use std::time::Instant;

/// mimalloc rather than the system allocator: a simulated world allocates and frees small objects
/// (messages, wakers, history entries) at a high rate, and glibc's malloc/free took about a tenth
/// of `explore`'s time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Standard output for the explore report; a closed pipe ends the program quietly.
struct Stdout;

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().write(buf).or_else(|_| std::process::exit(0))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush().or_else(|_| std::process::exit(0))
    }
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
            let cfg = Explore { seeds, only, first_seed, jobs, recheck_every };
            if explore(&cfg, &|sc: &Scenario, seed| sc.run_with_bug(seed, bug), &mut Stdout) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
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
