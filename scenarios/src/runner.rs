//! Running the suite against a worker, as library calls (the `orchsim` CLI is one caller):
//! one seed, a run file back, a failing plan shrunk.
//!
//! ```no_run
//! use scenarios::runner;
//! # let my_worker = scenarios::workers::orchsim::Orchsim::default();
//! let v = runner::run_seed(&my_worker, "swarm", 7).unwrap();
//! if !v.passed() {
//!     let small = runner::shrink(&my_worker, &v);
//!     let file = runner::write(&small.verdict).unwrap();
//!     let again = runner::replay_file(&my_worker, &file).unwrap();
//!     assert_eq!(again.trace_hash, small.verdict.trace_hash);
//! }
//! ```

use crate::checks::{Invariant, Violation};
use crate::report::{run_plan_with, Verdict};
use crate::workers::Worker;
use crate::world::faults::FaultPlan;
use crate::world::Options;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A run on disk (`<name>.run.json`, beside its `<name>.trace.jsonl`): everything a replay
/// needs (options, fault plan, seed) and what the run found. Written and read by this type only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunFile {
    /// The worker it ran (informational: a replay runs the worker it is given).
    #[serde(default)]
    pub worker: String,
    pub scenario: String,
    pub seed: u64,
    pub options: Options,
    pub plan: FaultPlan,
    pub trace_hash: String,
    #[serde(default)]
    pub violations: Vec<RecordedViolation>,
}

/// A violation as a run file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedViolation {
    pub invariant: Invariant,
    pub at_ms: u64,
    pub evidence: String,
}

impl From<&Violation> for RecordedViolation {
    fn from(v: &Violation) -> Self {
        Self { invariant: v.invariant, at_ms: v.at_ms, evidence: v.evidence.clone() }
    }
}

impl RunFile {
    pub fn of(v: &Verdict) -> Self {
        Self {
            worker: v.worker.clone(),
            scenario: v.scenario.clone(),
            seed: v.seed,
            options: v.options.clone(),
            plan: v.plan.clone(),
            trace_hash: v.trace_hash.clone(),
            violations: v.violations.iter().map(RecordedViolation::from).collect(),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self).map_err(std::io::Error::other)?)
    }

    /// Reads a run file, saying what is wrong with one that is not.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let run: RunFile = serde_json::from_str(&text).map_err(|e| format!("{} is not a run file: {e}", path.display()))?;
        run.options.validate().map_err(|e| format!("{}: the options cannot make a run: {e}", path.display()))?;
        Ok(run)
    }
}

/// Runs seed `seed` of scenario `scenario` on `worker`, its `never` expectations included.
pub fn run_seed(worker: &dyn Worker, scenario: &str, seed: u64) -> Result<Verdict, String> {
    let sc = crate::suite::find(scenario)
        .ok_or_else(|| format!("unknown scenario {scenario:?}; known: {}", crate::suite::names().join(", ")))?;
    Ok(sc.run_worker(worker, seed))
}

/// Runs a run file's options, plan and seed on `worker`.
pub fn replay(worker: &dyn Worker, run: &RunFile) -> Verdict {
    let mut v = run_plan_with(worker, &run.options, &run.plan, run.seed);
    if let Some(sc) = crate::suite::find(&run.scenario) {
        v.violations.extend(sc.never_reached(&v));
    }
    v
}

/// [`replay`] from a file.
pub fn replay_file(worker: &dyn Worker, path: &Path) -> Result<Verdict, String> {
    Ok(replay(worker, &RunFile::read(path)?))
}

/// Writes a verdict's trace and run file under the trace directory; returns the run file.
pub fn write(v: &Verdict) -> std::io::Result<PathBuf> {
    let base =
        format!("{}-seed-{}{}", v.scenario, v.seed, if v.plan == crate::world::generate_plan(&v.options, v.seed) { "" } else { ".shrunk" });
    crate::report::write_trace_named(v, &base)?;
    Ok(crate::report::run_file(&base))
}

/// A failing run cut down to the faults its failure needs.
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The run of the shrunk plan (it fails one of the same invariants).
    pub verdict: Verdict,
    /// Simulations spent.
    pub runs: u32,
}

/// Shrinks the fault plan of the failing `v` on `worker`: the smallest plan found under which
/// the run still violates one of the invariants `v` violated.
pub fn shrink(worker: &dyn Worker, v: &Verdict) -> Shrunk {
    let broken: BTreeSet<Invariant> = v.violations.iter().map(|x| x.invariant).collect();
    shrink_while(worker, v, |again| again.violations.iter().any(|x| broken.contains(&x.invariant)))
}

/// Shrinks the fault plan of `v` on `worker` while `still_fails` holds of the run (for
/// example: one particular invariant still fires).
pub fn shrink_while(worker: &dyn Worker, v: &Verdict, still_fails: impl Fn(&Verdict) -> bool) -> Shrunk {
    let s = v.plan.shrink(|p: &FaultPlan| still_fails(&replay(worker, &RunFile { plan: p.clone(), ..RunFile::of(v) })));
    Shrunk { verdict: replay(worker, &RunFile { plan: s.plan, ..RunFile::of(v) }), runs: s.runs }
}
