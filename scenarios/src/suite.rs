//! Named scenarios: a workload, a fault selection and their bounds, randomised per seed
//! (swarm testing: each seed of `swarm` enables a random subset of fault kinds).

use crate::checks::Violation;
use crate::report::{run_seed, Verdict};
use crate::world::faults::FaultKind;
use rand::Rng;
use sim::redis_model::Durability;
use std::collections::BTreeMap;

/// `explore` judges `sometimes` expectations only over at least this many seeds of a scenario.
pub const EXPECTATION_SEEDS_MIN: u64 = 50;

/// What a healthy Redis and Copilot must never show.
const HEALTHY_REDIS: &[&str] = &["lease lost while working", "commits rejected by fence", "redis writes lost in crashes"];
use crate::world::{stream, Options, StoreKind, STREAM_ATTACKERS, STREAM_OPTIONS, STREAM_PEOPLE};

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Part of the default set (`explore` without `--scenario`, the seeded tests). A scenario
    /// that shows what a setting *loses* rather than what the orchestrator must survive is not.
    pub in_default: bool,
    /// Counters that must be reached across this scenario's seeds (Antithesis' "sometimes"):
    /// a scenario whose faults never bite proves nothing.
    pub sometimes: &'static [&'static str],
    /// Counters that must stay at zero in every seed of it ("always not"): a violation of the
    /// seed that reached them.
    pub never: &'static [&'static str],
    build: fn(&mut rand_chacha::ChaCha8Rng, &mut Options),
}

fn common(r: &mut rand_chacha::ChaCha8Rng, o: &mut Options) {
    // Time resolution is part of the swarm: most seeds run coarse ticks (fast), some fine.
    o.network.tick_ms = [5, 10, 20, 20, 20][r.random_range(0..5)];
    o.network.random_host_order = r.random_bool(0.7);
    o.topology.workers = r.random_range(2..=3);
    o.topology.clients = r.random_range(1..=2);
    o.topology.users_per_client = r.random_range(1..=2);
    o.topology.conversations_per_user = r.random_range(1..=2);
    o.network.net_latency_ms = (1, r.random_range(2..=10));
    let lo = r.random_range(5..=50);
    o.network.copilot_latency_ms = (lo, lo + r.random_range(0..=400));
    o.orchestrator.lease_ttl_ms = r.random_range(1_500..=3_000);
    o.orchestrator.lease_extend_every_ms = o.orchestrator.lease_ttl_ms / 3;
    o.workload.noise_pct = r.random_range(0..=30);
    o.workload.concurrent_pct = r.random_range(0..=40);
    o.workload.mumble_pct = r.random_range(0..=20);
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "swarm",
 in_default: true,
        sometimes: &[
            "commits",
            "submissions",
            "no-signal hand-offs",
            "replays served",
            "lease lost while working",
            "hostile requests",
            "fields corrected",
            "turns after the end",
            "clients hung up mid-turn",
            "half-closed or slow requests",
            "turn limits reached",
        ],
        never: &["redis writes lost in crashes"],
        about: "every option random; each seed enables a random subset of fault kinds",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = FaultKind::ALL.into_iter().filter(|_| r.random_bool(0.5)).collect();
        },
    },
    Scenario {
        name: "latency",
 in_default: true,
        sometimes: &["copilot calls in a latency spike", "copilot calls failed or timed out", "503 retry later", "submissions"],
        never: HEALTHY_REDIS,
        about: "Copilot latency spikes above the lease TTL, many turns in flight",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::CopilotLatencySpike];
            o.workload.concurrent_pct = r.random_range(20..=60);
        },
    },
    Scenario {
        name: "copilot",
 in_default: true,
        sometimes: &["copilot replies off the contract", "copilot calls failed or timed out", "copilot rate limits and late answers", "submissions"],
        never: HEALTHY_REDIS,
        about: "Copilot misbehaves: HTTP 500s, bodies that are not JSON or cut short, payloads off the contract, slow spikes",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::CopilotMisbehaves, FaultKind::CopilotLatencySpike];
        },
    },
    Scenario {
        name: "duplicates",
 in_default: true,
        sometimes: &["duplicate deliveries sent", "409 in flight", "replays served", "duplicate submissions de-duplicated"],
        never: &["lease lost while working", "commits rejected by fence", "redis writes lost in crashes", "503 retry later"],
        about: "the same request and key delivered to other workers, concurrently and late",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::Duplicates];
        },
    },
    Scenario {
        name: "partitions",
 in_default: true,
        sometimes: &["redis partitions", "redis clock jumps", "lease lost while working", "commits rejected by fence", "503 retry later"],
        never: &["redis writes lost in crashes"],
        about: "workers cut off from Redis (both ways, or replies lost) and Redis clock jumps while Copilot is slow: leases lapse under working turns",
        build: |r, o| {
            common(r, o);
            // Slow Copilot calls span lease extensions, so a jump or a cut lands mid-turn.
            o.faults.fault_kinds = vec![FaultKind::RedisPartition, FaultKind::RedisClockJump, FaultKind::CopilotLatencySpike];
            o.workload.concurrent_pct = r.random_range(20..=60);
        },
    },
    Scenario {
        name: "clocks",
 in_default: true,
        sometimes: &["worker clock skews", "redis clock jumps", "lease lost while working"],
        never: &["redis writes lost in crashes"],
        about: "Redis clock jumps and worker clocks that jump and drift, while Copilot is slow: only Redis's clock may decide a lease",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::RedisClockJump, FaultKind::WorkerClockSkew, FaultKind::CopilotLatencySpike];
            o.workload.concurrent_pct = r.random_range(20..=60);
        },
    },
    Scenario {
        name: "crashes",
 in_default: true,
        sometimes: &["worker crashes", "redis crashes", "replays served", "submissions"],
        never: &["redis writes lost in crashes"],
        about: "workers crash mid-turn and restart; Redis crashes and restarts without its script cache",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::WorkerCrash, FaultKind::RedisCrash];
        },
    },
    Scenario {
        name: "effects",
        in_default: true,
        sometimes: &[
            "sink outages (deliveries refused)",
            "sink 5xx",
            "sink acks lost or late",
            "submissions delivered by a relay",
            "duplicate submissions de-duplicated",
            "worker crashes",
            "submissions",
        ],
        never: &["redis writes lost in crashes", "commits rejected by fence"],
        about: "the effects sink is down, answers 5xx, acknowledges late or never; workers crash between a commit and its delivery: the outbox's relays deliver every success once",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::SinkOutage, FaultKind::SinkMisbehaves, FaultKind::WorkerCrash];
        },
    },
    Scenario {
        name: "links",
 in_default: true,
        sometimes: &["client links cut", "replays served", "submissions"],
        never: HEALTHY_REDIS,
        about: "client-worker links cut or losing the workers' answers: applied turns whose answer never came are retried and must replay",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::ClientPartition];
            o.workload.concurrent_pct = r.random_range(20..=60);
        },
    },
    Scenario {
        name: "lossy-redis",
        in_default: false,
        sometimes: &["redis crashes", "redis writes lost in crashes"],
        never: &[],
        about: "Redis crashes under a durability setting that loses acknowledged writes (appendfsync everysec, or failover to a replica lagging 100-1500 ms): shows what is lost, not in the default set",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![FaultKind::RedisCrash];
            o.workload.concurrent_pct = r.random_range(20..=60);
            o.topology.redis_durability = if r.random_bool(0.5) {
                Durability::FsyncEverySec
            } else {
                Durability::ReplicaFailover { lag_ms: r.random_range(100..=1_500) }
            };
        },
    },
    Scenario {
        name: "embedded",
        in_default: true,
        sometimes: &[
            "commits",
            "submissions",
            "copilot calls in a latency spike",
            "duplicate deliveries sent",
            "client links cut",
            "worker clock skews",
            "lease lost while working",
        ],
        never: &["redis partitions", "redis crashes", "worker crashes", "redis writes lost in crashes"],
        about: "the embedded store (MemStore) in one worker, its leases on the worker's own clock: Copilot faults, duplicates, client links and clock skew; no crash (losing the process loses everything by design)",
        build: |r, o| {
            common(r, o);
            o.topology.store = StoreKind::Embedded;
            o.topology.workers = 1;
            o.faults.fault_kinds = [FaultKind::CopilotLatencySpike, FaultKind::CopilotMisbehaves, FaultKind::Duplicates, FaultKind::ClientPartition]
                .into_iter()
                .filter(|_| r.random_bool(0.6))
                .collect();
            // The process's own clock is the only thing that can take a lease from under a
            // turn here: always skew it, with turns racing for the lease when it jumps.
            o.faults.fault_kinds.push(FaultKind::WorkerClockSkew);
            o.workload.concurrent_pct = r.random_range(40..=80);
        },
    },
    Scenario {
        name: "calm",
 in_default: true,
        sometimes: &[
            "commits",
            "submissions",
            "no-signal hand-offs",
            "hostile requests",
            "fields corrected",
            "turns after the end",
            "clients hung up mid-turn",
            "half-closed or slow requests",
            "turn limits reached",
        ],
        // No "409 in flight" or "replays served" here: a person who hangs up and sends again
        // meets the first attempt still working (409), or its kept answer (a replay).
        never: &["503 retry later", "lease lost while working", "commits rejected by fence", "copilot calls failed or timed out", "redis writes lost in crashes"],
        about: "no faults: the baseline every other scenario is compared with",
        build: |r, o| {
            common(r, o);
            o.faults.fault_kinds = vec![];
        },
    },
];

/// The scenarios `explore` cycles through and the seeded tests run.
pub fn default_set() -> Vec<&'static Scenario> {
    SCENARIOS.iter().filter(|s| s.in_default).collect()
}

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

pub fn names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|s| s.name).collect()
}

impl Scenario {
    /// This scenario's options for `seed`: all of them derived from the seed.
    pub fn options(&self, seed: u64) -> Options {
        let mut o = Options::base(self.name);
        (self.build)(&mut stream(seed, STREAM_OPTIONS), &mut o);
        // A stream of its own, so adding attackers changed no other option of any seed.
        o.workload.attackers = stream(seed, STREAM_ATTACKERS).random_bool(0.5);
        // People's habits, likewise on a stream of their own.
        let mut p = stream(seed, STREAM_PEOPLE);
        o.workload.hangup_pct = p.random_range(0..=6);
        o.workload.slow_pct = p.random_range(0..=6);
        o.workload.chatty_pct = if p.random_bool(0.3) { p.random_range(5..=15) } else { 0 };
        o.workload.cancel_pct = p.random_range(3..=15);
        o
    }

    pub fn run(&self, seed: u64) -> Verdict {
        self.run_with_bug(seed, None)
    }

    /// The same seed with a known bug switched on in the workers.
    pub fn run_with_bug(&self, seed: u64, bug: Option<crate::KnownBug>) -> Verdict {
        let mut o = self.options(seed);
        o.known_bug = bug;
        let mut v = run_seed(&o, seed);
        v.violations.extend(self.never_reached(&v));
        v
    }

    /// This seed on `worker` (a system of your own: see [`crate::workers`]).
    pub fn run_worker(&self, worker: &dyn crate::workers::Worker, seed: u64) -> Verdict {
        let o = self.options(seed);
        let plan = crate::world::generate_plan(&o, seed);
        let mut v = crate::report::run_plan_with(worker, &o, &plan, seed);
        v.violations.extend(self.never_reached(&v));
        v
    }

    /// The `never` expectations this seed broke, as violations of it.
    pub fn never_reached(&self, v: &Verdict) -> Vec<Violation> {
        self.never
            .iter()
            .filter_map(|c| {
                let n = v.counters.get(c).copied().unwrap_or(0);
                (n > 0).then(|| Violation {
                    invariant: crate::checks::Invariant::Never,
                    at_ms: v.sim_ms,
                    evidence: format!("\"{c}\" happened {n} times; scenario {} must never see it", self.name),
                })
            })
            .collect()
    }

    /// The `sometimes` expectations not reached by counters summed over this scenario's seeds.
    pub fn unmet_sometimes(&self, totals: &BTreeMap<&str, u64>) -> Vec<&'static str> {
        self.sometimes.iter().copied().filter(|c| totals.get(c).copied().unwrap_or(0) == 0).collect()
    }
}
