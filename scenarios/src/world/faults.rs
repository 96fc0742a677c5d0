//! The fault plan: an explicit, serialisable list of `(at_ms, Fault)` generated from the seed.
//! A plan replays without its seed, so a failing plan can be shrunk.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sim::shrink::{half, Halve, DURATION_MIN_MS};
use sim::world::Link;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// For `duration_ms`, every Copilot call takes `latency_ms` (above the lease TTL).
    CopilotLatencySpike { duration_ms: u64, latency_ms: u64 },
    /// For `duration_ms`, `pct` percent of Copilot's replies misbehave: an HTTP 500, a body
    /// that is not JSON or is cut short, an empty reply, or a payload off the contract (wrong
    /// confidence spelling, a field the workflow does not have, a value that is an object, an
    /// unknown intent), or a good payload only inside the message text.
    CopilotMisbehaves { duration_ms: u64, pct: u32 },
    /// For `duration_ms`, clients deliver requests twice: the same request and key to
    /// another worker, concurrently (`concurrent_pct`) or after the answer (`late_pct`).
    Duplicates { duration_ms: u64, concurrent_pct: u32, late_pct: u32 },
    /// For `duration_ms`, worker `worker` and Redis cannot talk: both ways, or (`oneway`) only
    /// Redis's replies are lost, so commands apply but their answers never arrive. Messages
    /// sent meanwhile are lost, so the connections they were on stall.
    RedisPartition { worker: usize, duration_ms: u64, oneway: bool },
    /// The Redis host's clock jumps by `delta_ms` and stays there: forward, every lease and
    /// in-flight marker expires early (lock expiry under a working turn); backward, they live
    /// longer.
    RedisClockJump { delta_ms: i64 },
    /// From `at` until the heal (when NTP puts it right), worker `worker`'s clock reads
    /// `jump_ms` off simulated time plus `drift_pct` percent of the time since `at` (a fast or
    /// slow clock). Leases live on Redis's clock, so this must not matter to safety.
    WorkerClockSkew { worker: usize, jump_ms: i64, drift_pct: i32 },
    /// For `duration_ms`, the link between client `client` and worker `worker` is cut both
    /// ways, or (`oneway`) only the worker's answers are lost: the turn applies, its client
    /// never hears, times out and retries the same key. Connections on the link stall.
    ClientPartition { client: usize, worker: usize, duration_ms: u64, oneway: bool },
    /// Worker `worker` crashes (its turns in progress and their leases are abandoned, its
    /// clients' requests go unanswered) and restarts after `down_ms`.
    WorkerCrash { worker: usize, down_ms: u64 },
    /// Redis crashes and restarts after `down_ms`. Acknowledged writes survive (as with
    /// `appendfsync always`); the script cache does not, so workers meet `NOSCRIPT`.
    RedisCrash { down_ms: u64 },
    /// For `duration_ms`, the effects sink is down: every delivery is refused (503), nothing
    /// applied.
    SinkOutage { duration_ms: u64 },
    /// For `duration_ms`, `pct` percent of deliveries go wrong: a 5xx (nothing applied), an
    /// acknowledgement after the worker's deadline, or none at all (the effect applied).
    SinkMisbehaves { duration_ms: u64, pct: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    CopilotLatencySpike,
    CopilotMisbehaves,
    Duplicates,
    ClientPartition,
    RedisPartition,
    RedisClockJump,
    WorkerClockSkew,
    WorkerCrash,
    RedisCrash,
    SinkOutage,
    SinkMisbehaves,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::CopilotLatencySpike,
        FaultKind::CopilotMisbehaves,
        FaultKind::Duplicates,
        FaultKind::ClientPartition,
        FaultKind::RedisPartition,
        FaultKind::RedisClockJump,
        FaultKind::WorkerClockSkew,
        FaultKind::WorkerCrash,
        FaultKind::RedisCrash,
        FaultKind::SinkOutage,
        FaultKind::SinkMisbehaves,
    ];
}

/// A host's network and process condition at one instant, as the plan wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostFaults {
    /// The worker's link to Redis (`RepliesLost`: Redis's replies to it are lost).
    pub redis_partition: Link,
    pub down: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    pub faults: Vec<(u64, Fault)>,
}

/// Episodes per enabled fault kind.
pub const EPISODES_PER_KIND_MAX: u32 = 4;

impl FaultPlan {
    /// A plan over `[0, safety_ms)` with episodes of the enabled kinds for `workers` workers;
    /// spikes exceed `lease_ttl_ms`, and so do most partitions and clock jumps.
    pub fn generate(rng: &mut ChaCha8Rng, kinds: &[FaultKind], safety_ms: u64, lease_ttl_ms: u64, workers: usize, clients: usize) -> Self {
        let mut faults = Vec::new();
        for kind in kinds {
            let episodes = rng.random_range(1..=EPISODES_PER_KIND_MAX);
            for _ in 0..episodes {
                let at = rng.random_range(0..safety_ms.max(1));
                let duration_ms = rng.random_range(500..=safety_ms.clamp(501, 8_000));
                let f = match kind {
                    FaultKind::CopilotLatencySpike => {
                        Fault::CopilotLatencySpike { duration_ms, latency_ms: rng.random_range(lease_ttl_ms + 100..=lease_ttl_ms * 3) }
                    }
                    FaultKind::CopilotMisbehaves => Fault::CopilotMisbehaves { duration_ms, pct: rng.random_range(10..=60) },
                    FaultKind::Duplicates => {
                        Fault::Duplicates { duration_ms, concurrent_pct: rng.random_range(10..=60), late_pct: rng.random_range(10..=60) }
                    }
                    FaultKind::ClientPartition => Fault::ClientPartition {
                        client: rng.random_range(0..clients.max(1)),
                        worker: rng.random_range(0..workers.max(1)),
                        duration_ms: rng.random_range(200..=lease_ttl_ms * 3),
                        oneway: rng.random_bool(0.6),
                    },
                    FaultKind::RedisPartition => Fault::RedisPartition {
                        worker: rng.random_range(0..workers.max(1)),
                        duration_ms: rng.random_range(200..=lease_ttl_ms * 3),
                        oneway: rng.random_bool(0.4),
                    },
                    FaultKind::RedisClockJump => Fault::RedisClockJump {
                        delta_ms: if rng.random_bool(0.8) {
                            rng.random_range(lease_ttl_ms as i64 / 2..=lease_ttl_ms as i64 * 3)
                        } else {
                            -rng.random_range(100..=lease_ttl_ms as i64)
                        },
                    },
                    FaultKind::WorkerClockSkew => Fault::WorkerClockSkew {
                        worker: rng.random_range(0..workers.max(1)),
                        jump_ms: rng.random_range(-(lease_ttl_ms as i64) * 3..=lease_ttl_ms as i64 * 3),
                        drift_pct: rng.random_range(-50..=50),
                    },
                    FaultKind::WorkerCrash => Fault::WorkerCrash {
                        worker: rng.random_range(0..workers.max(1)),
                        down_ms: rng.random_range(100..=lease_ttl_ms * 2),
                    },
                    FaultKind::RedisCrash => Fault::RedisCrash { down_ms: rng.random_range(50..=lease_ttl_ms) },
                    FaultKind::SinkOutage => Fault::SinkOutage { duration_ms },
                    FaultKind::SinkMisbehaves => Fault::SinkMisbehaves { duration_ms, pct: rng.random_range(20..=80) },
                };
                faults.push((at, f));
            }
        }
        faults.sort_by_key(|(at, _)| *at);
        Self { faults }
    }

    /// Whether the effects sink is down at `now_ms`.
    pub fn sink_down(&self, now_ms: u64) -> bool {
        self.faults.iter().any(|(at, f)| matches!(f, Fault::SinkOutage { duration_ms } if now_ms >= *at && now_ms < at + duration_ms))
    }

    /// The share of deliveries the sink mishandles at `now_ms`, if an episode is active.
    pub fn sink_misbehaves(&self, now_ms: u64) -> Option<u32> {
        self.faults.iter().find_map(|(at, f)| match f {
            Fault::SinkMisbehaves { duration_ms, pct } if now_ms >= *at && now_ms < at + duration_ms => Some(*pct),
            _ => None,
        })
    }

    /// Whether the plan has any sink episode (the world then waits for the relays to settle).
    pub fn has_sink_faults(&self) -> bool {
        self.faults.iter().any(|(_, f)| matches!(f, Fault::SinkOutage { .. } | Fault::SinkMisbehaves { .. }))
    }

    /// The Copilot latency forced at `now_ms`, if a spike is active.
    pub fn copilot_spike(&self, now_ms: u64) -> Option<u64> {
        self.faults.iter().find_map(|(at, f)| match f {
            Fault::CopilotLatencySpike { duration_ms, latency_ms } if now_ms >= *at && now_ms < at + duration_ms => Some(*latency_ms),
            _ => None,
        })
    }

    /// How far the Redis host's clock is off simulated time at `now_ms`: the sum of the jumps
    /// so far (never taking the clock below zero; see [`FaultPlan::redis_now_ms`]).
    pub fn redis_clock_offset_ms(&self, now_ms: u64) -> i64 {
        self.faults
            .iter()
            .filter_map(|(at, f)| match f {
                Fault::RedisClockJump { delta_ms } if *at <= now_ms => Some(*delta_ms),
                _ => None,
            })
            .sum()
    }

    /// The Redis host's clock at simulated time `now_ms`.
    pub fn redis_now_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.redis_clock_offset_ms(now_ms))
    }

    /// How far worker `worker`'s clock is off simulated time at `now_ms` (0 once healed).
    pub fn worker_clock_offset_ms(&self, worker: usize, now_ms: u64, heal_at_ms: u64) -> i64 {
        if now_ms >= heal_at_ms {
            return 0;
        }
        self.faults
            .iter()
            .filter_map(|(at, f)| match f {
                Fault::WorkerClockSkew { worker: w, jump_ms, drift_pct } if *w == worker && *at <= now_ms => {
                    Some(jump_ms + (now_ms - at) as i64 * *drift_pct as i64 / 100)
                }
                _ => None,
            })
            .sum()
    }

    /// Whether worker `worker`'s clock is off (a skew episode has begun and the heal has not).
    pub fn worker_clock_skewed(&self, worker: usize, now_ms: u64, heal_at_ms: u64) -> bool {
        now_ms < heal_at_ms
            && self.faults.iter().any(|(at, f)| matches!(f, Fault::WorkerClockSkew { worker: w, .. } if *w == worker && *at <= now_ms))
    }

    /// What the plan wants for worker `worker` at `now_ms`; nothing once healed.
    pub fn worker_faults(&self, worker: usize, now_ms: u64, heal_at_ms: u64) -> HostFaults {
        let mut h = HostFaults::default();
        if now_ms >= heal_at_ms {
            return h;
        }
        for (at, f) in &self.faults {
            match f {
                Fault::RedisPartition { worker: w, duration_ms, oneway } if *w == worker && now_ms >= *at && now_ms < at + duration_ms => {
                    // Both ways wins over one way when episodes overlap.
                    h.redis_partition = h.redis_partition.and(partition(*oneway));
                }
                Fault::WorkerCrash { worker: w, down_ms } if *w == worker && now_ms >= *at && now_ms < at + down_ms => h.down = true,
                _ => {}
            }
        }
        h
    }

    /// The link between client `client` and worker `worker` at `now_ms` (`RepliesLost`: the
    /// worker's answers are lost); whole after the heal.
    pub fn client_link(&self, client: usize, worker: usize, now_ms: u64, heal_at_ms: u64) -> Link {
        if now_ms >= heal_at_ms {
            return Link::Whole;
        }
        let mut cut = Link::Whole;
        for (at, f) in &self.faults {
            if let Fault::ClientPartition { client: c, worker: w, duration_ms, oneway } = f {
                if *c == client && *w == worker && now_ms >= *at && now_ms < at + duration_ms {
                    cut = cut.and(partition(*oneway));
                }
            }
        }
        cut
    }

    /// Whether Redis should be down at `now_ms`; never once healed.
    pub fn redis_down(&self, now_ms: u64, heal_at_ms: u64) -> bool {
        now_ms < heal_at_ms
            && self.faults.iter().any(|(at, f)| matches!(f, Fault::RedisCrash { down_ms } if now_ms >= *at && now_ms < at + down_ms))
    }

    /// The share of Copilot replies that misbehave at `now_ms`, if an episode is active.
    pub fn copilot_misbehaves(&self, now_ms: u64) -> Option<u32> {
        self.faults.iter().find_map(|(at, f)| match f {
            Fault::CopilotMisbehaves { duration_ms, pct } if now_ms >= *at && now_ms < at + duration_ms => Some(*pct),
            _ => None,
        })
    }

    /// Duplicate-delivery percentages (concurrent, late) active at `now_ms`.
    pub fn duplicates(&self, now_ms: u64) -> Option<(u32, u32)> {
        self.faults.iter().find_map(|(at, f)| match f {
            Fault::Duplicates { duration_ms, concurrent_pct, late_pct } if now_ms >= *at && now_ms < at + duration_ms => {
                Some((*concurrent_pct, *late_pct))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_jumps_add_up_and_never_go_below_zero() {
        let p =
            FaultPlan { faults: vec![(100, Fault::RedisClockJump { delta_ms: 5_000 }), (200, Fault::RedisClockJump { delta_ms: -8_000 })] };
        assert_eq!(p.redis_now_ms(50), 50);
        assert_eq!(p.redis_now_ms(150), 5_150);
        assert_eq!(p.redis_now_ms(250), 0);
        assert_eq!(p.redis_now_ms(10_000), 7_000);
    }

    #[test]
    fn a_worker_clock_jumps_drifts_and_is_put_right_at_the_heal() {
        let p = FaultPlan { faults: vec![(1_000, Fault::WorkerClockSkew { worker: 1, jump_ms: -500, drift_pct: 10 })] };
        assert_eq!(p.worker_clock_offset_ms(1, 999, 10_000), 0);
        assert_eq!(p.worker_clock_offset_ms(1, 1_000, 10_000), -500);
        assert_eq!(p.worker_clock_offset_ms(1, 6_000, 10_000), 0, "500 ms of drift caught up with the jump");
        assert_eq!(p.worker_clock_offset_ms(0, 6_000, 10_000), 0, "another worker");
        assert_eq!(p.worker_clock_offset_ms(1, 10_000, 10_000), 0, "healed");
    }

    #[test]
    fn host_faults_follow_their_windows_and_stop_at_the_heal() {
        let p = FaultPlan {
            faults: vec![
                (100, Fault::RedisPartition { worker: 1, duration_ms: 500, oneway: true }),
                (300, Fault::RedisPartition { worker: 1, duration_ms: 100, oneway: false }),
                (200, Fault::WorkerCrash { worker: 0, down_ms: 1_000 }),
                (50, Fault::RedisCrash { down_ms: 100 }),
            ],
        };
        assert_eq!(p.worker_faults(1, 150, 10_000).redis_partition, Link::RepliesLost);
        assert_eq!(p.worker_faults(1, 350, 10_000).redis_partition, Link::Cut);
        assert_eq!(p.worker_faults(1, 650, 10_000).redis_partition, Link::Whole);
        assert!(p.worker_faults(0, 250, 10_000).down);
        assert!(!p.worker_faults(0, 250, 240).down, "healed");
        assert!(!p.worker_faults(2, 250, 10_000).down);
        assert!(p.redis_down(100, 10_000) && !p.redis_down(150, 10_000));
    }
}
impl Halve for Fault {
    fn halved(&self) -> Option<Self> {
        let f = self;
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
}

/// A partition fault's link state: `oneway` loses only the far side's replies.
fn partition(oneway: bool) -> Link {
    if oneway {
        Link::RepliesLost
    } else {
        Link::Cut
    }
}

/// A shrunk plan and the simulations it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrunk {
    pub plan: FaultPlan,
    pub runs: u32,
}

impl FaultPlan {
    /// This failing plan cut down with [`sim::shrink::shrink`] to the faults the failure needs.
    pub fn shrink(&self, mut still_fails: impl FnMut(&FaultPlan) -> bool) -> Shrunk {
        let s = sim::shrink::shrink(&self.faults, |faults| still_fails(&FaultPlan { faults: faults.to_vec() }));
        Shrunk { plan: FaultPlan { faults: s.faults }, runs: s.runs }
    }
}

#[cfg(test)]
mod shrink_tests {
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
        let s = plan().shrink(fails);
        assert!(fails(&s.plan));
        assert_eq!(s.plan.faults.len(), 2, "{:?}", s.plan);
        assert_eq!(s.plan.faults[0], (300, Fault::RedisPartition { worker: 1, duration_ms: 1_500, oneway: true }));
        assert_eq!(s.plan.faults[1], (400, Fault::RedisClockJump { delta_ms: 62 }));
        assert!(s.runs < sim::shrink::RUNS_MAX);
    }

    #[test]
    fn every_kind_of_fault_halves_down_to_a_floor() {
        for (_, f) in plan().faults {
            let mut g = f.clone();
            let mut n = 0;
            while let Some(h) = g.halved() {
                assert_ne!(h, g);
                g = h;
                n += 1;
                assert!(n < 64, "{f:?} never stops halving");
            }
            assert!(n > 0, "{f:?} did not halve at all");
        }
    }
}
