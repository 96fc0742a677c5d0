//! The explore engine: many seeds on all cores, determinism re-checks, progress, and the
//! summary a person reads (the `orchsim explore` command, and any suite user's own runner).
//! Wall-clock time is read here only to report seeds per second, never inside a run.

use crate::checks::Invariant;
use crate::report::{failure_report, first_divergence, write_trace, Verdict};
use crate::suite::{default_set, find, Scenario};
use crate::workers::Worker;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One line of the report to `$out` (a write error, e.g. a closed pipe, is the writer's business).
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        let _ = writeln!($out, $($t)*);
    }};
}

#[derive(Default)]
struct Tally {
    seeds: u64,
    failed: u64,
    run_wall: Duration,
    sim_ms: u64,
    counters: BTreeMap<&'static str, u64>,
}

/// What to explore.
#[derive(Clone)]
pub struct Explore {
    /// Seeds to run, spread over the default scenarios unless `only` is given (ignored when
    /// `duration` is set).
    pub seeds: u64,
    pub only: Option<&'static Scenario>,
    /// With a count, the first seed (seeds `first_seed..first_seed + seeds`); with a duration,
    /// the seed of the sequence fresh seeds are drawn from.
    pub first_seed: u64,
    /// Threads (at least one).
    pub jobs: usize,
    /// Re-run one seed in this many and compare trace hashes (0: never).
    pub recheck_every: u64,
    /// Keep exploring for this long instead of a count of seeds, drawing fresh seeds from a
    /// sequence seeded by `first_seed` (the same sequence on every run with that seed).
    pub duration: Option<Duration>,
    /// When set (by a Ctrl-C handler), no further seed starts; the summary covers those run.
    pub stop: Option<&'static AtomicBool>,
    /// Each failing seed is appended to `<dir>/<scenario>.txt` as `scenario seed # invariants`
    /// (see [`crate::regressions`]), unless already there.
    pub regressions: Option<PathBuf>,
    /// What a regression line adds about how the seed was found (e.g. `known bug X`).
    pub found_with: Option<String>,
}

impl Explore {
    /// `seeds` seeds from seed 0 over the default scenarios on one thread, one in 20 re-run.
    pub fn seeds(seeds: u64) -> Explore {
        Explore {
            seeds,
            only: None,
            first_seed: 0,
            jobs: 1,
            recheck_every: 20,
            duration: None,
            stop: None,
            regressions: None,
            found_with: None,
        }
    }
}

/// Explores `worker`'s seeds and writes the report to `out`; true if nothing failed.
pub fn explore_worker(worker: &dyn Worker, cfg: &Explore, out: &mut dyn Write) -> bool {
    explore(cfg, &|sc: &Scenario, seed| sc.run_worker(worker, seed), out)
}

/// How often progress is written as a line when stderr is not a terminal (a CI log).
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

/// Runs seeds on `cfg.jobs` threads through `run` (one seed of one scenario) — `cfg.seeds` of
/// them, or fresh ones for `cfg.duration`, until `cfg.stop` — re-running a sample to check
/// determinism (a mismatch names the first history entry where the two runs part), with
/// progress on stderr; prints per scenario the seeds, violations, seeds/s per thread and
/// simulated/wall time, the counters, the expectations met, the violated invariants and the
/// first failures' reports, and appends failing seeds to `cfg.regressions`. True if no seed
/// failed, panicked or diverged and every judged expectation was met.
pub fn explore(cfg: &Explore, run: &(dyn Fn(&Scenario, u64) -> Verdict + Sync), out: &mut dyn Write) -> bool {
    let Explore { seeds, only, first_seed: first, recheck_every, duration, stop, .. } = cfg.clone();
    let jobs = cfg.jobs.max(1);
    let defaults = default_set();
    let pick = |i: u64| only.unwrap_or_else(|| defaults[(i % defaults.len() as u64) as usize]);
    let scenarios = match only {
        Some(s) => s.name.to_string(),
        None => defaults.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    };
    match duration {
        None => eprintln!("exploring {seeds} seeds from {first} on {jobs} threads; scenarios: {scenarios}"),
        Some(d) => eprintln!(
            "exploring for {} s on {jobs} threads, fresh seeds from sequence {first} (Ctrl-C stops early); scenarios: {scenarios}",
            d.as_secs()
        ),
    }
    // The i-th seed run: `first + i`, or the i-th draw of the sequence (drawn in order under
    // the lock, so the same sequence seed gives the same seeds whatever the threads do).
    let sequence = Mutex::new((0u64, rand_chacha::ChaCha8Rng::seed_from_u64(first)));
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let stopped = || stop.is_some_and(|s| s.load(Ordering::SeqCst));
    let take = || -> Option<(&'static Scenario, u64)> {
        if stopped() || deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let mut g = sequence.lock().unwrap();
        let i = g.0;
        if duration.is_none() && i >= seeds {
            return None;
        }
        g.0 += 1;
        let seed = match duration {
            None => first + i,
            // 48 bits: as fresh as 64, and shorter to read and type.
            Some(_) => g.1.random::<u64>() >> 16,
        };
        Some((pick(i), seed))
    };
    let done = AtomicU64::new(0);
    let finished_threads = AtomicU64::new(0);
    let failed_seeds = AtomicU64::new(0);
    let tallies: Mutex<BTreeMap<&'static str, Tally>> = Mutex::new(BTreeMap::new());
    let failures: Mutex<Vec<Verdict>> = Mutex::new(Vec::new());
    let mismatches: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let panics: Mutex<Vec<(&str, u64, String)>> = Mutex::new(Vec::new());
    let rechecked = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some((sc, seed)) = take() {
                    let t = Instant::now();
                    // A seed that panics the harness is reported, and does not stop the others.
                    let v = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(sc, seed))) {
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
                        let again = run(sc, seed);
                        if again.trace_hash != v.trace_hash {
                            let mut m = format!("{} seed {}: trace hash {} then {}", sc.name, seed, v.trace_hash, again.trace_hash);
                            if let Some(d) = first_divergence(&v.history, &again.history) {
                                m += &format!("\n    {d}");
                            }
                            mismatches.lock().unwrap().push(m);
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
                }
                finished_threads.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Progress, from this thread: a bar on a terminal, a line every few seconds otherwise.
        let on_terminal = std::io::stderr().is_terminal();
        let bar = if on_terminal {
            let (len, template) = match duration {
                None => (seeds, "[{bar:30}] {pos}/{len} seeds  {msg}"),
                Some(d) => (d.as_secs().max(1), "[{bar:30}] {pos}/{len} s  {msg}"),
            };
            let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
            b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("#>."));
            b
        } else {
            ProgressBar::hidden()
        };
        let mut last_line = Instant::now();
        loop {
            let d = done.load(Ordering::SeqCst);
            let el = start.elapsed().as_secs_f64().max(1e-9);
            let msg = format!("{:.1} seeds/s  {} failing", d as f64 / el, failed_seeds.load(Ordering::SeqCst));
            match duration {
                None => {
                    bar.set_position(d);
                    bar.set_message(msg.clone());
                }
                Some(_) => {
                    bar.set_position(start.elapsed().as_secs());
                    bar.set_message(format!("{d} seeds  {msg}"));
                }
            }
            let all_done = finished_threads.load(Ordering::SeqCst) >= jobs as u64;
            if !on_terminal && (last_line.elapsed() >= PROGRESS_LINE_EVERY || all_done) {
                last_line = Instant::now();
                match duration {
                    None => eprintln!("progress: {d}/{seeds} seeds  {msg}  ({el:.0} s)"),
                    Some(t) => eprintln!("progress: {d} seeds  {msg}  ({el:.0}/{} s)", t.as_secs()),
                }
            }
            if all_done {
                bar.finish_and_clear();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let ran = done.load(Ordering::SeqCst);
    if stopped() {
        say!(out, "\nstopped (interrupted) after {ran} seeds; the summary covers those");
    } else if duration.is_some() {
        say!(out, "\ntime up after {ran} seeds");
    }
    let elapsed = start.elapsed();
    say!(out, "\n{:<12} {:>6} {:>10} {:>16} {:>14}", "scenario", "seeds", "violating", "seeds/s/thread", "sim/wall");
    let tallies = tallies.into_inner().unwrap();
    let mut all_counters: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (name, t) in &tallies {
        let secs = t.run_wall.as_secs_f64().max(1e-9);
        say!(out, "{:<12} {:>6} {:>10} {:>16.1} {:>13.0}x", name, t.seeds, t.failed, t.seeds as f64 / secs, t.sim_ms as f64 / 1e3 / secs);
        for (k, n) in &t.counters {
            *all_counters.entry(k).or_default() += n;
        }
    }
    say!(
        out,
        "\ntotal: {ran} seeds in {:.1} s = {:.1} seeds/s on {jobs} threads",
        elapsed.as_secs_f64(),
        ran as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let names: Vec<&str> = tallies.keys().copied().collect();
    say!(out, "\n{:<40}{}{:>10}", "events", names.iter().map(|n| format!("{n:>12}")).collect::<String>(), "all");
    for k in crate::report::COUNTERS {
        let per: Vec<u64> = names.iter().map(|n| tallies[n].counters.get(k).copied().unwrap_or(0)).collect();
        say!(
            out,
            "{:<40}{}{:>10}",
            k,
            per.iter().map(|v| format!("{v:>12}")).collect::<String>(),
            all_counters.get(k).copied().unwrap_or(0)
        );
    }
    // Expectations: what each scenario must reach across its seeds (`sometimes`) and must never
    // reach (`never`, already a violation of the seed that did), beside the counters.
    say!(out, "\nexpectations");
    let mut unmet_total = 0;
    for name in &names {
        let Some(sc) = find(name) else { continue };
        let t = &tallies[name];
        let never_hit: Vec<&str> = sc.never.iter().copied().filter(|c| t.counters.get(c).copied().unwrap_or(0) > 0).collect();
        let unmet = sc.unmet_sometimes(&t.counters);
        let judged = t.seeds >= crate::suite::EXPECTATION_SEEDS_MIN;
        let met = sc.sometimes.len() - unmet.len() + sc.never.len() - never_hit.len();
        let mut line = format!("{name:<12} met {met}/{}", sc.sometimes.len() + sc.never.len());
        if !unmet.is_empty() {
            if judged {
                unmet_total += unmet.len();
                line += &format!("; UNMET sometimes: {}", unmet.join(", "));
            } else {
                line += &format!(
                    "; not yet reached (fewer than {} seeds, not judged): {}",
                    crate::suite::EXPECTATION_SEEDS_MIN,
                    unmet.join(", ")
                );
            }
        }
        if !never_hit.is_empty() {
            line += &format!("; BROKEN never: {}", never_hit.join(", "));
        }
        say!(out, "{line}");
    }
    let panics = panics.into_inner().unwrap();
    for (scenario, seed, why) in &panics {
        say!(out, "  PANICKED scenario {scenario} seed {seed}: {why}\n    reproduce: cargo run --release -- replay --scenario {scenario} --seed {seed}");
    }
    let mismatches = mismatches.into_inner().unwrap();
    say!(out, "determinism: {} seeds re-run, {} trace-hash mismatches", rechecked.load(Ordering::SeqCst), mismatches.len());
    for m in &mismatches {
        say!(out, "  NONDETERMINISTIC {m}");
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
        say!(out, "\nviolated invariants (seeds, first one)");
        for (inv, (n, first)) in &by_invariant {
            say!(out, "  {:<44} {n:>6}   {first}", inv.name());
        }
    }
    for v in failures.iter().take(5) {
        let trace = write_trace(v).ok();
        say!(out, "\n{}", failure_report(v, trace.as_deref()));
    }
    if let Some(dir) = &cfg.regressions {
        if !failures.is_empty() {
            match crate::regressions::append(dir, &failures, cfg.found_with.as_deref()) {
                Ok(0) => say!(out, "\nregressions: every failing seed is already in {}", crate::report::shown(dir)),
                Ok(n) => say!(
                    out,
                    "\nregressions: {n} failing seeds appended to {} (the seeded tests run them from now on)",
                    crate::report::shown(dir)
                ),
                Err(e) => say!(out, "\nregressions: could not append to {}: {e}", crate::report::shown(dir)),
            }
        }
    }
    if failures.is_empty() && mismatches.is_empty() && unmet_total == 0 && panics.is_empty() {
        say!(out, "0 violations, 0 unmet expectations");
        true
    } else {
        say!(out, "{} violating seeds, {} panicked, {unmet_total} unmet expectations", failures.len(), panics.len());
        false
    }
}
