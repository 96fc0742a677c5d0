//! `orchsim`: explore seeds of the simulation on all cores, or replay one.

use clap::{Parser, Subcommand};
use scenarios::checks::Invariant;
use scenarios::explore::{explore, Explore};
use scenarios::report::{failure_report, shown, timeline, write_html, write_trace, Verdict};
use scenarios::runner;
use scenarios::workers::orchsim::Orchsim;
use scenarios::{find, names, Scenario, SCENARIOS};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
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
        /// Keep exploring fresh seeds for this long (`90s`, `10m`, `2h`) instead of a count;
        /// Ctrl-C stops early with the summary. Seeds come from a sequence seeded by
        /// --first-seed.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, conflicts_with = "seeds")]
        for_: Option<std::time::Duration>,
        /// Append failing seeds to this directory's `<scenario>.txt` (default: the repository's
        /// tests/regressions, which the seeded tests run; not with --known-bug unless given).
        #[arg(long, value_name = "DIR")]
        regressions: Option<std::path::PathBuf>,
        /// Do not append failing seeds anywhere.
        #[arg(long, conflicts_with = "regressions")]
        no_regressions: bool,
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
        /// Also write the timeline page (`.html`) of a passing run (a failing one always gets it).
        #[arg(long)]
        html: bool,
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

/// `90s`, `10m`, `2h`, `1h30m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration: write e.g. 90s, 10m, 2h or 1h30m");
    if let Ok(secs) = text.parse::<u64>() {
        return if secs > 0 { Ok(std::time::Duration::from_secs(secs)) } else { Err(bad()) };
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|x| total.checked_add(x)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// Set by Ctrl-C: exploration starts no new seed and prints its summary; a second Ctrl-C ends
/// the program at once.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn replay(v: &Verdict, quiet: bool, html: bool) -> ExitCode {
    say!("scenario {} seed {}", v.scenario, v.seed);
    say!("options: {}", serde_json::to_string_pretty(&v.options).unwrap_or_default());
    say!("fault plan: {}", serde_json::to_string(&v.plan).unwrap_or_default());
    if !quiet {
        say!("timeline:\n{}", timeline(&v.history));
    }
    let trace = write_trace(v).ok();
    say!("simulated {} ms; trace hash {}", v.sim_ms, v.trace_hash);
    if let Some(t) = &trace {
        say!("trace written to {}", shown(t));
    }
    if html && v.passed() {
        match write_html(v, &format!("{}-seed-{}", v.scenario, v.seed)) {
            Ok(p) => say!("timeline page written to {}", shown(&p)),
            Err(e) => eprintln!("error: could not write the timeline page: {e}"),
        }
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
        Cmd::Explore { seeds, scenario: name, first_seed, jobs, recheck_every, known_bug: bug, for_, regressions, no_regressions } => {
            let parsed = name.as_deref().map(scenario).transpose().and_then(|s| Ok((s, known_bug(bug.as_deref())?)));
            let (only, bug) = match parsed {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
            let regressions = match (no_regressions, regressions, bug) {
                (true, _, _) => None,
                (false, Some(dir), _) => Some(dir),
                // A known bug's failures are the bug's, not seeds the orchestrator must keep passing.
                (false, None, Some(_)) => None,
                (false, None, None) => Some(scenarios::regressions::default_dir()),
            };
            let _ = ctrlc::set_handler(|| {
                if INTERRUPTED.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("\ninterrupted: finishing the seeds running now, then the summary (Ctrl-C again to quit at once)");
            });
            let cfg = Explore {
                seeds,
                only,
                first_seed,
                jobs,
                recheck_every,
                duration: for_,
                stop: Some(&INTERRUPTED),
                regressions,
                found_with: bug.map(|b| format!("known bug {}", b.name())),
            };
            if explore(&cfg, &|sc: &Scenario, seed| sc.run_with_bug(seed, bug), &mut Stdout) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Replay { scenario: name, seed, run, quiet, known_bug: bug, html } => {
            let verdict = match (run, name, seed) {
                (Some(path), _, _) => runner::RunFile::read(&path).map(|run| runner::replay(&Orchsim { bug: run.options.known_bug }, &run)),
                (None, Some(name), Some(seed)) => {
                    scenario(&name).and_then(|s| Ok((s, known_bug(bug.as_deref())?))).map(|(s, bug)| s.run_with_bug(seed, bug))
                }
                _ => Err("give --scenario and --seed, or --run".into()),
            };
            match verdict {
                Ok(v) => replay(&v, quiet, html),
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

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_read_as_written_and_anything_else_is_refused_with_an_example() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "0", "0s", "m", "10x", "5m3", "1.5h", "99999999999999999999h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("not a duration") && e.contains("90s"), "{bad}: {e}");
        }
    }
}
