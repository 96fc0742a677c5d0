//! A run's options, nested by subsystem and validated before a run.

use super::faults::FaultKind;
use super::sink::SINK_TIMEOUT_MS;
use super::REDIS_RESPONSE_TIMEOUT_MS;
use crate::workers::known_bugs::KnownBug;
use crate::workers::Settings;
use serde::{Deserialize, Serialize};
use sim::redis_model::Durability;

/// Everything a run depends on besides the seed; printed in full before a run and kept in its
/// run file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub scenario: String,
    pub topology: Topology,
    pub workload: Workload,
    pub network: Network,
    pub faults: Faults,
    pub orchestrator: OrchestratorSettings,
    /// A pitfall re-created in orchsim's workers by decorating their seams (see
    /// [`crate::workers::known_bugs`]); ignored by any other worker.
    pub known_bug: Option<KnownBug>,
}

/// Which hosts the world has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub workers: usize,
    pub clients: usize,
    pub users_per_client: usize,
    pub conversations_per_user: usize,
    /// Where the workers keep state: Redis (the model), or their own (one worker, no Redis host).
    pub store: StoreKind,
    /// What a Redis crash loses.
    pub redis_durability: Durability,
}

/// How the simulated people behave (percentages of turns or conversations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub noise_pct: u32,
    pub concurrent_pct: u32,
    /// Conversations that open with a run of turns carrying no signal at all.
    pub mumble_pct: u32,
    /// Each client host also runs an attacker (see `client::Client::attacker`).
    pub attackers: bool,
    /// Turns whose client hangs up before the answer (or half-closes and waits for it).
    pub hangup_pct: u32,
    /// Turns whose client sends the request in slow pieces.
    pub slow_pct: u32,
    /// Conversations whose user keeps talking until the turn limit hands them to a human.
    pub chatty_pct: u32,
    /// Conversations whose user presses cancel part way, mostly while a turn is in flight.
    pub cancel_pct: u32,
}

/// Time and the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub tick_ms: u64,
    /// Poll hosts in a seeded random order each tick (more interleavings) instead of a fixed one.
    pub random_host_order: bool,
    /// One-way message latency, lowest and highest.
    pub net_latency_ms: (u64, u64),
    /// Copilot's answer time outside latency spikes, lowest and highest.
    pub copilot_latency_ms: (u64, u64),
    /// Bound on simulated time for the whole run.
    pub run_limit_ms: u64,
}

/// Which faults the plan may draw, and when they stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Fault kinds this seed enables (swarm testing).
    pub fault_kinds: Vec<FaultKind>,
    /// End of the safety phase: every fault stops here (heal), then liveness.
    pub heal_at_ms: u64,
}

/// What the workers are configured with (a worker maps these onto its own configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorSettings {
    pub lease_ttl_ms: u64,
    pub lease_extend_every_ms: u64,
    pub copilot_timeout_ms: u64,
    pub acquire_deadline_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// Redis (the model), any number of workers.
    #[default]
    Redis,
    /// The worker's own state (orchsim: `MemStore`) in a single worker: no Redis host; a worker
    /// crash would lose everything by design, so no world of this kind crashes it.
    Embedded,
}

impl Options {
    /// Defaults for a scenario; `scenarios` randomises them per seed.
    pub fn base(scenario: &str) -> Self {
        Self {
            scenario: scenario.into(),
            topology: Topology {
                workers: 3,
                clients: 2,
                users_per_client: 2,
                conversations_per_user: 1,
                store: StoreKind::Redis,
                redis_durability: Durability::FsyncAlways,
            },
            workload: Workload {
                noise_pct: 15,
                concurrent_pct: 20,
                mumble_pct: 10,
                attackers: false,
                hangup_pct: 0,
                slow_pct: 0,
                chatty_pct: 0,
                cancel_pct: 0,
            },
            network: Network {
                tick_ms: 10,
                random_host_order: true,
                net_latency_ms: (1, 5),
                copilot_latency_ms: (20, 300),
                run_limit_ms: 300_000,
            },
            faults: Faults { fault_kinds: FaultKind::ALL.to_vec(), heal_at_ms: 10_000 },
            orchestrator: OrchestratorSettings {
                lease_ttl_ms: 2_000,
                lease_extend_every_ms: 600,
                copilot_timeout_ms: 5_000,
                acquire_deadline_ms: 1_500,
            },
            known_bug: None,
        }
    }

    /// Every reason these options cannot make a run (empty if they can): what a hand-edited
    /// run file gets told instead of a panic or a meaningless run.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let t = &self.topology;
        if t.workers == 0 || t.clients == 0 || t.users_per_client == 0 || t.conversations_per_user == 0 {
            p.push("topology: workers, clients, users_per_client and conversations_per_user must each be at least 1".into());
        }
        if t.workers > 16 || t.clients > 16 || t.users_per_client > 16 || t.conversations_per_user > 16 {
            p.push("topology: at most 16 workers, clients, users per client and conversations per user".into());
        }
        if t.store == StoreKind::Embedded && t.workers != 1 {
            p.push(format!("topology: the embedded store runs in exactly one worker, not {}", t.workers));
        }
        let w = &self.workload;
        for (name, pct) in [
            ("noise_pct", w.noise_pct),
            ("concurrent_pct", w.concurrent_pct),
            ("mumble_pct", w.mumble_pct),
            ("hangup_pct", w.hangup_pct),
            ("slow_pct", w.slow_pct),
            ("chatty_pct", w.chatty_pct),
            ("cancel_pct", w.cancel_pct),
        ] {
            if pct > 100 {
                p.push(format!("workload: {name} is {pct}, over 100"));
            }
        }
        let n = &self.network;
        if n.tick_ms == 0 || n.tick_ms > 1_000 {
            p.push(format!("network: tick_ms is {}, not within 1..=1000", n.tick_ms));
        }
        for (name, (lo, hi)) in [("net_latency_ms", n.net_latency_ms), ("copilot_latency_ms", n.copilot_latency_ms)] {
            if lo > hi {
                p.push(format!("network: {name} ({lo}, {hi}) has its lowest above its highest"));
            }
        }
        if self.faults.heal_at_ms >= n.run_limit_ms {
            p.push(format!("faults: heal_at_ms {} is not before network.run_limit_ms {}", self.faults.heal_at_ms, n.run_limit_ms));
        }
        if n.run_limit_ms > 3_600_000 {
            p.push(format!("network: run_limit_ms {} is over an hour of simulated time", n.run_limit_ms));
        }
        let o = &self.orchestrator;
        if o.lease_ttl_ms == 0 || o.lease_extend_every_ms == 0 || o.lease_extend_every_ms >= o.lease_ttl_ms {
            p.push(format!(
                "orchestrator: lease_extend_every_ms {} must be above 0 and below lease_ttl_ms {}",
                o.lease_extend_every_ms, o.lease_ttl_ms
            ));
        }
        if o.copilot_timeout_ms == 0 || o.acquire_deadline_ms == 0 {
            p.push("orchestrator: copilot_timeout_ms and acquire_deadline_ms must be above 0".into());
        }
        p
    }

    /// `Ok` if these options can make a run, else every problem in one message.
    pub fn validate(&self) -> Result<(), String> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }

    /// The workers' settings.
    pub fn settings(&self) -> Settings {
        let o = &self.orchestrator;
        Settings {
            lease_ttl_ms: o.lease_ttl_ms,
            lease_extend_every_ms: o.lease_extend_every_ms,
            copilot_timeout_ms: o.copilot_timeout_ms,
            acquire_deadline_ms: o.acquire_deadline_ms,
            redis_timeout_ms: REDIS_RESPONSE_TIMEOUT_MS,
            sink_timeout_ms: SINK_TIMEOUT_MS,
        }
    }

    /// The longest a request may wait for its answer, by the configuration: the acquire
    /// deadline, the Copilot deadline, one Redis reply timeout for each store call a turn can
    /// block on, connecting (`sim::net::CONNECT_ATTEMPTS_MAX` tries) and the network both ways,
    /// with one tick of slack.
    pub fn answer_bound_ms(&self) -> u64 {
        // Begin, an extension, the outbox intent, Commit, the outbox clear (two commands), the
        // cap's dismissal, a release.
        const STORE_CALLS_MAX: u64 = 8;
        let latency = self.network.net_latency_ms.1;
        let connect = sim::net::connect_bound_ms(2 * latency);
        self.orchestrator.acquire_deadline_ms
            + self.orchestrator.copilot_timeout_ms
            + STORE_CALLS_MAX * REDIS_RESPONSE_TIMEOUT_MS
            + connect
            // The submission's first delivery, on the turn that succeeds.
            + SINK_TIMEOUT_MS
            + connect
            + 4 * latency
            + self.network.tick_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_makes_valid_options_and_broken_ones_are_named() {
        for sc in crate::suite::SCENARIOS {
            for seed in 0..200 {
                let o = sc.options(seed);
                assert_eq!(o.validate(), Ok(()), "{} seed {seed}", sc.name);
            }
        }
        let mut o = Options::base("x");
        o.topology.workers = 0;
        o.topology.store = StoreKind::Embedded;
        o.workload.cancel_pct = 101;
        o.network.net_latency_ms = (9, 2);
        o.orchestrator.lease_extend_every_ms = o.orchestrator.lease_ttl_ms;
        let p = o.problems();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p.iter().any(|x| x.contains("cancel_pct is 101")), "{p:?}");
    }
}
