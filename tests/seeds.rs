//! The seeded scenario tests: one named test per (scenario, seed), `<scenario>::seed_<n>`, so a
//! failure's name is its reproduction. `SIM_SEEDS` sets the total (default 2000, spread over
//! the scenarios); `SIM_SEED=n` adds seed n to every scenario. Then every seed kept in
//! `tests/regressions/*.txt` (seeds that once failed; `orchsim explore` appends them) as
//! `regressions::<scenario>::seed_<n>`, always. Works under `cargo test` and `cargo nextest`
//! (`--partition` spreads the seeds over machines).

use libtest_mimic::{Arguments, Failed, Trial};
use scenarios::report::{failure_report, write_trace};
use scenarios::{default_set, find};

fn main() {
    let args = Arguments::from_args();
    let total: u64 = std::env::var("SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let extra: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok());
    let scenarios = default_set();
    let per = total.div_ceil(scenarios.len() as u64);
    let mut trials = Vec::new();
    for sc in scenarios {
        let mut seeds: Vec<u64> = (0..per).collect();
        if let Some(s) = extra {
            if s >= per {
                seeds.push(s);
            }
        }
        for seed in seeds {
            trials.push(Trial::test(format!("{}::seed_{seed}", sc.name), move || {
                let v = sc.run(seed);
                if v.passed() {
                    Ok(())
                } else {
                    let trace = write_trace(&v).ok();
                    Err(Failed::from(failure_report(&v, trace.as_deref())))
                }
            }));
        }
    }
    // Seeds that once failed, whatever their scenario (a kept seed of a scenario outside the
    // default set runs too); a file that does not read is a failing test naming the line.
    match scenarios::regressions::load(&scenarios::regressions::default_dir()) {
        Ok(kept) => {
            for r in kept {
                trials.push(Trial::test(format!("regressions::{}::seed_{}", r.scenario, r.seed), move || {
                    let Some(sc) = find(&r.scenario) else {
                        return Err(Failed::from(format!("{}: no scenario {:?}", r.at, r.scenario)));
                    };
                    let v = sc.run(r.seed);
                    if v.passed() {
                        Ok(())
                    } else {
                        let trace = write_trace(&v).ok();
                        Err(Failed::from(format!("kept at {} ({})\n{}", r.at, r.note, failure_report(&v, trace.as_deref()))))
                    }
                }));
            }
        }
        Err(e) => trials.push(Trial::test("regressions::files", move || Err(Failed::from(e)))),
    }
    libtest_mimic::run(&args, trials).exit();
}
