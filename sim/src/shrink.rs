//! Shrinking a failing fault plan: the plan is explicit data and a run is a function of
//! (options, plan, seed), so a failure can be re-run with parts of its plan taken away. What
//! is left when nothing more can go is the schedule a person has to understand.
//!
//! Greedy and deterministic, in the manner of delta debugging: first drop whole faults (one at
//! a time, last first, until a full pass drops nothing), then halve what remains (durations,
//! down times, clock jumps) while the failure persists. "Still failing" is the caller's
//! predicate; `orchsim shrink` uses "violates one of the invariants the original run did".

use crate::faults::{Fault, FaultPlan};

/// Re-runs allowed in one shrink (each is a whole simulation).
pub const RUNS_MAX: u32 = 400;
/// Below this a duration is not halved further.
pub const DURATION_MIN_MS: u64 = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrunk {
    pub plan: FaultPlan,
    /// Predicate evaluations (simulations) spent.
    pub runs: u32,
}

/// `f` with its size halved, if it has one above the floor.
fn halved(f: &Fault) -> Option<Fault> {
    let half = |ms: u64| (ms / 2 >= DURATION_MIN_MS).then_some(ms / 2);
    Some(match f {
        Fault::CopilotLatencySpike { duration_ms, latency_ms } => {
            Fault::CopilotLatencySpike { duration_ms: half(*duration_ms)?, latency_ms: *latency_ms }
        }
        Fault::CopilotMisbehaves { duration_ms, pct } => Fault::CopilotMisbehaves { duration_ms: half(*duration_ms)?, pct: *pct },
        Fault::Duplicates { duration_ms, concurrent_pct, late_pct } => {
            Fault::Duplicates { duration_ms: half(*duration_ms)?, concurrent_pct: *concurrent_pct, late_pct: *late_pct }
        }
        Fault::ClientPartition { client, worker, duration_ms, oneway } => {
            Fault::ClientPartition { client: *client, worker: *worker, duration_ms: half(*duration_ms)?, oneway: *oneway }
        }
        Fault::RedisPartition { worker, duration_ms, oneway } => {
            Fault::RedisPartition { worker: *worker, duration_ms: half(*duration_ms)?, oneway: *oneway }
        }
        Fault::RedisClockJump { delta_ms } => {
            let d = delta_ms / 2;
            if d.unsigned_abs() < DURATION_MIN_MS {
                return None;
            }
            Fault::RedisClockJump { delta_ms: d }
        }
        Fault::WorkerClockSkew { worker, jump_ms, drift_pct } => {
            if jump_ms.unsigned_abs() / 2 < DURATION_MIN_MS && drift_pct.abs() / 2 == 0 {
                return None;
            }
            Fault::WorkerClockSkew { worker: *worker, jump_ms: jump_ms / 2, drift_pct: drift_pct / 2 }
        }
        Fault::WorkerCrash { worker, down_ms } => Fault::WorkerCrash { worker: *worker, down_ms: half(*down_ms)? },
        Fault::RedisCrash { down_ms } => Fault::RedisCrash { down_ms: half(*down_ms)? },
        Fault::SinkOutage { duration_ms } => Fault::SinkOutage { duration_ms: half(*duration_ms)? },
        Fault::SinkMisbehaves { duration_ms, pct } => Fault::SinkMisbehaves { duration_ms: half(*duration_ms)?, pct: *pct },
    })
}

/// Shrinks `plan`, which must fail, to a plan that still fails and from which no single fault
/// can be dropped nor halved without the failure going away (within [`RUNS_MAX`]).
pub fn shrink(plan: &FaultPlan, mut still_fails: impl FnMut(&FaultPlan) -> bool) -> Shrunk {
    let mut cur = plan.clone();
    let mut runs = 0u32;
    let mut attempt = |p: &FaultPlan, runs: &mut u32| {
        *runs += 1;
        still_fails(p)
    };
    // 1. Drop whole faults.
    loop {
        let mut dropped = false;
        let mut i = cur.faults.len();
        while i > 0 && runs < RUNS_MAX {
            i -= 1;
            let mut p = cur.clone();
            p.faults.remove(i);
            if attempt(&p, &mut runs) {
                cur = p;
                dropped = true;
            }
        }
        if !dropped || runs >= RUNS_MAX {
            break;
        }
    }
    // 2. Halve what is left.
    loop {
        let mut smaller = false;
        for i in 0..cur.faults.len() {
            if runs >= RUNS_MAX {
                break;
            }
            let Some(h) = halved(&cur.faults[i].1) else { continue };
            let mut p = cur.clone();
            p.faults[i].1 = h;
            if attempt(&p, &mut runs) {
                cur = p;
                smaller = true;
            }
        }
        if !smaller || runs >= RUNS_MAX {
            break;
        }
    }
    Shrunk { plan: cur, runs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FaultPlan {
        FaultPlan {
            faults: vec![
                (100, Fault::CopilotLatencySpike { duration_ms: 4_000, latency_ms: 5_000 }),
                (200, Fault::Duplicates { duration_ms: 3_000, concurrent_pct: 30, late_pct: 30 }),
                (300, Fault::RedisPartition { worker: 1, duration_ms: 6_000, oneway: true }),
                (400, Fault::RedisClockJump { delta_ms: 4_000 }),
                (500, Fault::WorkerCrash { worker: 0, down_ms: 2_000 }),
                (600, Fault::RedisCrash { down_ms: 1_000 }),
            ],
        }
    }

    #[test]
    fn keeps_exactly_the_faults_the_failure_needs_and_halves_them_to_the_edge() {
        // The "failure": a partition of worker 1 lasting at least 1000 ms together with a
        // forward clock jump.
        let fails = |p: &FaultPlan| {
            let part =
                p.faults.iter().any(|(_, f)| matches!(f, Fault::RedisPartition { worker: 1, duration_ms, .. } if *duration_ms >= 1_000));
            let jump = p.faults.iter().any(|(_, f)| matches!(f, Fault::RedisClockJump { delta_ms } if *delta_ms > 0));
            part && jump
        };
        assert!(fails(&plan()));
        let s = shrink(&plan(), fails);
        assert!(fails(&s.plan));
        assert_eq!(s.plan.faults.len(), 2, "{:?}", s.plan);
        assert_eq!(s.plan.faults[0], (300, Fault::RedisPartition { worker: 1, duration_ms: 1_500, oneway: true }));
        assert_eq!(s.plan.faults[1], (400, Fault::RedisClockJump { delta_ms: 62 }));
        assert!(s.runs < RUNS_MAX);
    }

    #[test]
    fn a_failure_that_needs_no_fault_shrinks_to_the_empty_plan() {
        let s = shrink(&plan(), |_| true);
        assert!(s.plan.faults.is_empty());
    }

    #[test]
    fn a_failure_that_needs_every_fault_keeps_them_all() {
        let whole = plan();
        let n = whole.faults.len();
        let s = shrink(&whole, |p| p.faults.len() == n && p.faults.iter().zip(&whole.faults).all(|(a, b)| a == b));
        assert_eq!(s.plan, whole);
        assert_eq!(s.runs as usize, n + n, "one drop and one halving tried per fault");
    }
}
