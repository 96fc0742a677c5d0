//! Shrinking a failing fault plan: the plan is explicit data and a run is a function of
//! (options, plan, seed), so a failure can be re-run with parts of its plan taken away. What
//! is left when nothing more can go is the schedule a person has to understand.
//!
//! Greedy and deterministic, in the manner of delta debugging: first drop whole faults (one at
//! a time, last first, until a full pass drops nothing), then halve what remains (durations,
//! down times, clock jumps) while the failure persists. "Still failing" is the caller's
//! predicate; `orchsim shrink` uses "violates one of the invariants the original run did".

/// Re-runs allowed in one shrink (each is a whole simulation).
pub const RUNS_MAX: u32 = 400;
/// Below this a duration is not halved further.
pub const DURATION_MIN_MS: u64 = 50;

/// A fault a plan schedules, which knows how to be made smaller.
pub trait Halve: Sized + Clone {
    /// This fault with its size (duration, jump, down time) halved, or `None` at the floor.
    fn halved(&self) -> Option<Self>;
}

/// `ms` halved, unless that goes below [`DURATION_MIN_MS`].
pub fn half(ms: u64) -> Option<u64> {
    (ms / 2 >= DURATION_MIN_MS).then_some(ms / 2)
}

/// A plan: faults with the simulated time each starts at, in order.
pub type Schedule<F> = Vec<(u64, F)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrunk<F> {
    pub faults: Schedule<F>,
    /// Predicate evaluations (simulations) spent.
    pub runs: u32,
}

/// Shrinks `faults`, which must fail, to a schedule that still fails and from which no single
/// fault can be dropped nor halved without the failure going away (within [`RUNS_MAX`]).
pub fn shrink<F: Halve>(faults: &[(u64, F)], mut still_fails: impl FnMut(&[(u64, F)]) -> bool) -> Shrunk<F> {
    let mut cur: Schedule<F> = faults.to_vec();
    let mut runs = 0u32;
    let mut attempt = |p: &[(u64, F)], runs: &mut u32| {
        *runs += 1;
        still_fails(p)
    };
    // 1. Drop whole faults.
    loop {
        let mut dropped = false;
        let mut i = cur.len();
        while i > 0 && runs < RUNS_MAX {
            i -= 1;
            let mut p = cur.clone();
            p.remove(i);
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
        for i in 0..cur.len() {
            if runs >= RUNS_MAX {
                break;
            }
            let Some(h) = cur[i].1.halved() else { continue };
            let mut p = cur.clone();
            p[i].1 = h;
            if attempt(&p, &mut runs) {
                cur = p;
                smaller = true;
            }
        }
        if !smaller || runs >= RUNS_MAX {
            break;
        }
    }
    Shrunk { faults: cur, runs }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy fault: a window on a link.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Toy {
        Cut { link: u32, duration_ms: u64 },
        Jump { delta_ms: i64 },
    }

    impl Halve for Toy {
        fn halved(&self) -> Option<Self> {
            Some(match self {
                Toy::Cut { link, duration_ms } => Toy::Cut { link: *link, duration_ms: half(*duration_ms)? },
                Toy::Jump { delta_ms } => {
                    let d = delta_ms / 2;
                    if d.unsigned_abs() < DURATION_MIN_MS {
                        return None;
                    }
                    Toy::Jump { delta_ms: d }
                }
            })
        }
    }

    fn plan() -> Schedule<Toy> {
        vec![
            (100, Toy::Cut { link: 0, duration_ms: 4_000 }),
            (200, Toy::Cut { link: 1, duration_ms: 6_000 }),
            (300, Toy::Jump { delta_ms: 4_000 }),
            (400, Toy::Cut { link: 2, duration_ms: 2_000 }),
        ]
    }

    #[test]
    fn keeps_exactly_the_faults_the_failure_needs_and_halves_them_to_the_edge() {
        // The "failure": link 1 cut for at least 1000 ms together with a forward jump.
        let fails = |p: &[(u64, Toy)]| {
            let cut = p.iter().any(|(_, f)| matches!(f, Toy::Cut { link: 1, duration_ms } if *duration_ms >= 1_000));
            let jump = p.iter().any(|(_, f)| matches!(f, Toy::Jump { delta_ms } if *delta_ms > 0));
            cut && jump
        };
        assert!(fails(&plan()));
        let s = shrink(&plan(), fails);
        assert!(fails(&s.faults));
        assert_eq!(s.faults, vec![(200, Toy::Cut { link: 1, duration_ms: 1_500 }), (300, Toy::Jump { delta_ms: 62 })]);
        assert!(s.runs < RUNS_MAX);
    }

    #[test]
    fn a_failure_that_needs_no_fault_shrinks_to_the_empty_plan() {
        let s = shrink(&plan(), |_| true);
        assert!(s.faults.is_empty());
    }

    #[test]
    fn a_failure_that_needs_every_fault_keeps_them_all() {
        let whole = plan();
        let n = whole.len();
        let s = shrink(&whole, |p| p.len() == n && p.iter().zip(&whole).all(|(a, b)| a == b));
        assert_eq!(s.faults, whole);
        assert_eq!(s.runs as usize, n + n, "one drop and one halving tried per fault");
    }
}
