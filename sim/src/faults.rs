//! The fault plan: an explicit, serialisable list of `(at_ms, Fault)` generated from the seed.
//! A plan replays without its seed, so a failing plan can be shrunk.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// For `duration_ms`, every Copilot call takes `latency_ms` (above the lease TTL).
    CopilotLatencySpike { duration_ms: u64, latency_ms: u64 },
    /// For `duration_ms`, clients deliver requests twice: the same request and key to
    /// another worker, concurrently (`concurrent_pct`) or after the answer (`late_pct`).
    Duplicates { duration_ms: u64, concurrent_pct: u32, late_pct: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    CopilotLatencySpike,
    Duplicates,
}

impl FaultKind {
    pub const ALL: [FaultKind; 2] = [FaultKind::CopilotLatencySpike, FaultKind::Duplicates];
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    pub faults: Vec<(u64, Fault)>,
}

/// Episodes per enabled fault kind.
pub const EPISODES_PER_KIND_MAX: u32 = 4;

impl FaultPlan {
    /// A plan over `[0, safety_ms)` with episodes of the enabled kinds; spikes exceed
    /// `lease_ttl_ms`.
    pub fn generate(rng: &mut ChaCha8Rng, kinds: &[FaultKind], safety_ms: u64, lease_ttl_ms: u64) -> Self {
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
                    FaultKind::Duplicates => {
                        Fault::Duplicates { duration_ms, concurrent_pct: rng.random_range(10..=60), late_pct: rng.random_range(10..=60) }
                    }
                };
                faults.push((at, f));
            }
        }
        faults.sort_by_key(|(at, _)| *at);
        Self { faults }
    }

    /// The Copilot latency forced at `now_ms`, if a spike is active.
    pub fn copilot_spike(&self, now_ms: u64) -> Option<u64> {
        self.faults.iter().find_map(|(at, f)| match f {
            Fault::CopilotLatencySpike { duration_ms, latency_ms } if now_ms >= *at && now_ms < at + duration_ms => Some(*latency_ms),
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
