//! The world: from (options, fault plan, seed) to one turmoil simulation with hosts `redis`
//! (the model), `copilot` (the fake LLM), `worker-N` (the real orchestrator: HTTP `serve` +
//! `RedisStore` + `HttpCopilot` over simulated TCP) and `client-N` (users), run to the end.
//!
//! Every random choice comes from a ChaCha stream derived from the seed; turmoil gets
//! `rng_seed` and a fixed `epoch`; host runtimes are seeded through `tokio_unstable`.

use crate::contract::Conversation;
use crate::history::{Entry, Ev, History, HostChange};
use crate::workers::orchsim::Orchsim;
use crate::workers::{Deploy, Deployment, Endpoint, HostClock, Reports, Settings, Worker, WorkerHost};
use crate::world::client::{run_client, token_of, Shared};
use crate::world::copilot_host::CopilotHost;
use crate::world::faults::{FaultKind, FaultPlan, HostFaults};
use crate::world::sink::{SimSink, SinkHost, SINK_TIMEOUT_MS};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sim::net::TurmoilListener;
use sim::redis_model::{self, Durability, Model};
use sim::world::{power_off, set_link, Link, SimConfig};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod client;
pub mod copilot_host;
pub mod faults;
pub mod sink;

pub const REDIS_PORT: u16 = 6379;
pub const HTTP_PORT: u16 = 80;
/// The workers' Redis connect and reply timeouts.
pub const REDIS_RESPONSE_TIMEOUT_MS: u64 = 1_000;

/// Everything a run depends on besides the seed; printed in full before a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub scenario: String,
    pub workers: usize,
    pub clients: usize,
    pub users_per_client: usize,
    pub conversations_per_user: usize,
    /// Fault kinds this seed enables (swarm testing).
    pub fault_kinds: Vec<FaultKind>,
    /// End of the safety phase: every fault stops here (heal), then liveness.
    pub heal_at_ms: u64,
    /// Bound on simulated time for the whole run.
    pub run_limit_ms: u64,
    pub tick_ms: u64,
    /// Poll hosts in a seeded random order each tick (more interleavings) instead of a fixed one.
    pub random_host_order: bool,
    pub net_latency_ms: (u64, u64),
    pub copilot_latency_ms: (u64, u64),
    pub lease_ttl_ms: u64,
    pub lease_extend_every_ms: u64,
    pub copilot_timeout_ms: u64,
    pub acquire_deadline_ms: u64,
    pub noise_pct: u32,
    pub concurrent_pct: u32,
    /// Conversations that open with a run of turns carrying no signal at all.
    pub mumble_pct: u32,
    /// Each client host also runs an attacker (see `client::Client::attacker`).
    #[serde(default)]
    pub attackers: bool,
    /// Turns whose client hangs up before the answer (or half-closes and waits for it).
    #[serde(default)]
    pub hangup_pct: u32,
    /// Turns whose client sends the request in slow pieces.
    #[serde(default)]
    pub slow_pct: u32,
    /// Conversations whose user keeps talking until the turn limit hands them to a human.
    #[serde(default)]
    pub chatty_pct: u32,
    /// Conversations whose user presses cancel part way, mostly while a turn is in flight.
    #[serde(default)]
    pub cancel_pct: u32,
    /// A pitfall re-created in the workers by decorating their seams (see [`crate::workers::known_bugs`]).
    pub known_bug: Option<crate::workers::known_bugs::KnownBug>,
    /// What a Redis crash loses.
    #[serde(default)]
    pub redis_durability: Durability,
    /// Where the workers keep state: Redis (the model), or the embedded store in the one worker.
    #[serde(default)]
    pub store: StoreKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// `RedisStore` on the Redis model, any number of workers.
    #[default]
    Redis,
    /// `MemStore` inside a single worker (the orchestrator's default): no Redis host; a worker
    /// crash would lose everything by design, so no world of this kind crashes it.
    Embedded,
}

impl Options {
    /// Defaults for a scenario; `scenarios` randomises them per seed.
    pub fn base(scenario: &str) -> Self {
        Self {
            scenario: scenario.into(),
            workers: 3,
            clients: 2,
            users_per_client: 2,
            conversations_per_user: 1,
            fault_kinds: FaultKind::ALL.to_vec(),
            heal_at_ms: 10_000,
            run_limit_ms: 300_000,
            tick_ms: 10,
            random_host_order: true,
            net_latency_ms: (1, 5),
            copilot_latency_ms: (20, 300),
            lease_ttl_ms: 2_000,
            lease_extend_every_ms: 600,
            copilot_timeout_ms: 5_000,
            acquire_deadline_ms: 1_500,
            noise_pct: 15,
            concurrent_pct: 20,
            mumble_pct: 10,
            attackers: false,
            hangup_pct: 0,
            slow_pct: 0,
            chatty_pct: 0,
            cancel_pct: 0,
            known_bug: None,
            redis_durability: Durability::FsyncAlways,
            store: StoreKind::Redis,
        }
    }

    /// The longest a request may wait for its answer, by the configuration: the acquire
    /// deadline, the Copilot deadline, one Redis reply timeout for each store call a turn can
    /// block on (Begin, an extension, Commit, a release), connecting (`net::CONNECT_ATTEMPTS_MAX`
    /// tries) and the network both ways, with one tick of slack.
    pub fn answer_bound_ms(&self) -> u64 {
        // Begin, an extension, the outbox intent, Commit, the outbox clear (two commands), the
        // cap's dismissal, a release.
        const STORE_CALLS_MAX: u64 = 8;
        let connect = sim::net::CONNECT_ATTEMPTS_MAX as u64 * (sim::net::CONNECT_RETRY_MS + 2 * self.net_latency_ms.1);
        self.acquire_deadline_ms
            + self.copilot_timeout_ms
            + STORE_CALLS_MAX * REDIS_RESPONSE_TIMEOUT_MS
            + connect
            // The submission's first delivery, on the turn that succeeds.
            + crate::world::sink::SINK_TIMEOUT_MS
            + connect
            + 4 * self.net_latency_ms.1
            + self.tick_ms
    }
}

pub use sim::world::stream;

pub const STREAM_PLAN: u64 = 1;
pub const STREAM_COPILOT: u64 = 2;
pub const STREAM_WORKERS: u64 = 3;
pub const STREAM_TURMOIL: u64 = 4;
pub const STREAM_OPTIONS: u64 = 5;
pub const STREAM_ATTACKERS: u64 = 7;
pub const STREAM_PEOPLE: u64 = 8;
pub const STREAM_SINK: u64 = 9;

/// With sink faults in the plan, the run lasts at least this long after the heal, so that the
/// relays deliver what the sink refused or never acknowledged (the bound invariant 7 states:
/// a claim, the longest backoff, a delivery).
pub const SINK_SETTLE_MS: u64 = 12_000;
/// How often the settling client looks at the outbox.
const SETTLE_POLL_MS: u64 = 250;

pub fn generate_plan(opts: &Options, seed: u64) -> FaultPlan {
    FaultPlan::generate(&mut stream(seed, STREAM_PLAN), &opts.fault_kinds, opts.heal_at_ms, opts.lease_ttl_ms, opts.workers, opts.clients)
}

#[derive(Debug, Clone)]
pub struct RunOutput {
    /// What the worker under test reports (which clauses of some invariants apply).
    pub reports: Reports,
    pub history: Vec<Entry>,
    /// What every conversation the clients created ended as, as the worker's storage reads.
    pub finals: BTreeMap<String, Option<Conversation>>,
    pub owners: BTreeMap<String, String>,
    /// How many conversations each user set out to create (from the options).
    pub workload: BTreeMap<String, u64>,
    /// When the faults stopped.
    pub heal_at_ms: u64,
    /// The longest an answer may take, by the configuration ([`Options::answer_bound_ms`]).
    pub answer_bound_ms: u64,
    pub sim_ms: u64,
    /// turmoil's error (a host failed, or the run hit `run_limit_ms`).
    pub error: Option<String>,
}

/// The workers' settings from the options.
impl Options {
    pub fn settings(&self) -> Settings {
        Settings {
            lease_ttl_ms: self.lease_ttl_ms,
            lease_extend_every_ms: self.lease_extend_every_ms,
            copilot_timeout_ms: self.copilot_timeout_ms,
            acquire_deadline_ms: self.acquire_deadline_ms,
            redis_timeout_ms: REDIS_RESPONSE_TIMEOUT_MS,
            sink_timeout_ms: SINK_TIMEOUT_MS,
        }
    }
}

/// Runs orchsim's orchestrator (with `opts.known_bug`, if any) in the world of `opts`.
pub fn run(opts: &Options, plan: &FaultPlan, seed: u64) -> RunOutput {
    run_worker(&Orchsim { bug: opts.known_bug }, opts, plan, seed)
}

/// Runs `worker` in the world of `opts` under `plan`.
pub fn run_worker(worker: &dyn Worker, opts: &Options, plan: &FaultPlan, seed: u64) -> RunOutput {
    let history = History::new();
    let mut turmoil_rng = stream(seed, STREAM_TURMOIL);
    let cfg = SimConfig {
        tick_ms: opts.tick_ms,
        run_limit_ms: opts.run_limit_ms,
        net_latency_ms: opts.net_latency_ms,
        random_host_order: opts.random_host_order,
    };
    let mut sim = sim::world::build(&cfg, &mut turmoil_rng);

    let plan = Arc::new(plan.clone());
    let model = Arc::new(Mutex::new(Model::with_durability(opts.redis_durability)));
    let embedded = opts.store == StoreKind::Embedded;
    if !embedded {
        let (model, plan) = (model.clone(), plan.clone());
        sim.host("redis", move || {
            // A (re)started Redis has what its durability setting kept (see `Model::crash`), and
            // no scripts.
            model.lock().unwrap_or_else(|p| p.into_inner()).forget_scripts();
            let plan = plan.clone();
            // The Redis host's own clock: simulated time plus the plan's clock jumps.
            let now_ms = move || plan.redis_now_ms(turmoil::elapsed().as_millis() as u64);
            redis_model::serve(model.clone(), REDIS_PORT, Arc::new(now_ms))
        });
    }

    {
        let host = Arc::new(CopilotHost {
            plan: plan.clone(),
            history: history.clone(),
            latency_ms: opts.copilot_latency_ms,
            heal_at_ms: opts.heal_at_ms,
            deadline_ms: opts.copilot_timeout_ms,
            rng: Mutex::new(stream(seed, STREAM_COPILOT)),
        });
        sim.host("copilot", move || {
            let host = host.clone();
            async move {
                sim::net::serve(TurmoilListener::bind(HTTP_PORT).await?, copilot_host::router(host)).await;
                Ok(())
            }
        });
    }

    let sink = Arc::new(SimSink::new(history.clone()));
    {
        let host = Arc::new(SinkHost {
            sink: sink.clone(),
            plan: plan.clone(),
            heal_at_ms: opts.heal_at_ms,
            rng: Mutex::new(stream(seed, STREAM_SINK)),
        });
        sim.host("sink", move || {
            let host = host.clone();
            async move {
                sim::net::serve(TurmoilListener::bind(HTTP_PORT).await?, crate::world::sink::router(host)).await;
                Ok(())
            }
        });
    }
    let mut users = BTreeMap::new();
    for c in 0..opts.clients {
        for u in 0..opts.users_per_client {
            let user = format!("u{c}x{u}");
            users.insert(token_of(&user), user);
        }
        if opts.attackers {
            let m = crate::world::client::attacker_of(c);
            users.insert(token_of(&m), m);
        }
    }
    let mut worker_rng = stream(seed, STREAM_WORKERS);
    let end_ms = Arc::new(AtomicU64::new(0));
    let deployment: Arc<dyn Deployment> =
        worker.deploy(&Deploy { seed, workers: opts.workers, redis: !embedded, settings: opts.settings() }).into();
    for w in 0..opts.workers {
        let name = format!("worker-{w}");
        let worker_seed: u64 = worker_rng.random();
        let plan_for_clock = plan.clone();
        let heal_at_ms = opts.heal_at_ms;
        let clock = HostClock {
            at: Arc::new(move |t| t.saturating_add_signed(plan_for_clock.worker_clock_offset_ms(w, t, heal_at_ms))),
            end_ms: end_ms.clone(),
        };
        let (history, tokens, settings, deployment) = (history.clone(), users.clone(), opts.settings(), deployment.clone());
        sim.host(name.clone(), move || {
            deployment.serve(WorkerHost {
                index: w,
                name: name.clone(),
                port: HTTP_PORT,
                redis: (!embedded).then(|| Endpoint { host: "redis".into(), port: REDIS_PORT, path: "" }),
                copilot: Endpoint { host: "copilot".into(), port: HTTP_PORT, path: "/v1/reply" },
                sink: Endpoint { host: "sink".into(), port: HTTP_PORT, path: "/submit" },
                clock: clock.clone(),
                seed: worker_seed,
                tokens: tokens.clone(),
                settings,
                history: history.clone(),
            })
        });
    }

    let shared = Arc::new(Shared {
        opts: opts.clone(),
        plan: plan.clone(),
        history: history.clone(),
        next_req: AtomicU64::new(0),
        owners: Mutex::new(BTreeMap::new()),
        seed,
    });
    for c in 0..opts.clients {
        let shared = shared.clone();
        sim.client(format!("client-{c}"), run_client(shared, c));
    }
    if plan.has_sink_faults() {
        // Not a user: keeps the world running after the heal until no effect is owed any more
        // (every pending submission delivered and cleared), or for `SINK_SETTLE_MS` at most.
        let (heal, until) = (opts.heal_at_ms, opts.heal_at_ms + SINK_SETTLE_MS);
        let (model, plan, deployment) = (model.clone(), plan.clone(), deployment.clone());
        let outbox_empty = move |now: u64| {
            let mut m = model.lock().unwrap_or_else(|p| p.into_inner());
            !deployment.effects_pending((!embedded).then_some(&mut *m), plan.redis_now_ms(now))
        };
        sim.client("settle", async move {
            loop {
                let now = crate::history::sim_now_ms();
                if now >= until || (now >= heal && outbox_empty(now)) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(SETTLE_POLL_MS)).await;
            }
        });
    }

    let error = run_with_faults(&mut sim, opts, &plan, &history, &model);
    let sim_ms = sim.elapsed().as_millis() as u64;
    end_ms.store(sim_ms, std::sync::atomic::Ordering::SeqCst);

    let owners = shared.owners.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut model = model.lock().unwrap_or_else(|p| p.into_inner());
    let mut entries = history.entries();
    // The commits the model applied, read from its write log, join the history.
    entries.extend(deployment.applied_writes(model.writes()));
    entries.sort_by_key(|e| e.t_ms);
    let mut finals = BTreeMap::new();
    for cid in owners.keys() {
        let rec = deployment.conversation((!embedded).then_some(&mut *model), plan.redis_now_ms(sim_ms), cid);
        finals.insert(cid.clone(), rec);
    }
    // Users create `conversations_per_user` each; an attacker creates one of its own.
    let attackers: Vec<String> =
        if opts.attackers { (0..opts.clients).map(crate::world::client::attacker_of).collect() } else { Vec::new() };
    let workload =
        users.values().map(|u| (u.clone(), if attackers.contains(u) { 1 } else { opts.conversations_per_user as u64 })).collect();
    RunOutput {
        reports: deployment.reports(),
        history: entries,
        finals,
        owners,
        workload,
        heal_at_ms: opts.heal_at_ms,
        answer_bound_ms: opts.answer_bound_ms(),
        sim_ms,
        error,
    }
}

/// Every host name in the world, for isolating one of them.
fn host_names(opts: &Options) -> Vec<String> {
    let mut v = vec!["copilot".to_string(), "sink".to_string()];
    if opts.store == StoreKind::Redis {
        v.push("redis".into());
    }
    v.extend((0..opts.workers).map(|w| format!("worker-{w}")));
    v.extend((0..opts.clients).map(|c| format!("client-{c}")));
    v
}

/// Steps the simulation to its end, applying the plan's host faults (partitions from Redis,
/// crashes and restarts) as their windows open and close, and logging each change and each
/// Redis clock jump. Returns turmoil's error, if any.
fn run_with_faults(
    sim: &mut turmoil::Sim<'_>,
    opts: &Options,
    plan: &FaultPlan,
    history: &History,
    model: &Mutex<Model>,
) -> Option<String> {
    let all = host_names(opts);
    let worker_names: Vec<String> = (0..opts.workers).map(|w| format!("worker-{w}")).collect();
    let client_names: Vec<String> = (0..opts.clients).map(|c| format!("client-{c}")).collect();
    let mut applied = vec![HostFaults::default(); opts.workers];
    let mut skewed = vec![false; opts.workers];
    // Client c ↔ worker w link state as applied, at [c * workers + w].
    let mut links = vec![Link::Whole; opts.clients * opts.workers];
    let mut redis_down = false;
    let mut clock_offset = 0i64;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        let want_down = plan.redis_down(now, opts.heal_at_ms);
        if want_down != redis_down {
            if want_down {
                power_off(sim, &all, "redis");
                let lost = model.lock().unwrap_or_else(|p| p.into_inner()).crash(now);
                if lost > 0 {
                    history.push_at(now, Ev::RedisLostWrites { lost: lost as u64, durability: opts.redis_durability });
                }
                // The power-off repaired every link of redis: partitions still wanted are
                // applied again below.
                for have in &mut applied {
                    have.redis_partition = Link::Whole;
                }
            } else {
                sim.bounce("redis");
            }
            let change = if want_down { HostChange::Crashed } else { HostChange::Restarted };
            history.push_at(now, Ev::HostFault { host: "redis".into(), change });
            redis_down = want_down;
        }
        for (w, have) in applied.iter_mut().enumerate() {
            let want = plan.worker_faults(w, now, opts.heal_at_ms);
            if want == *have {
                continue;
            }
            let host = worker_names[w].clone();
            if want.down != have.down {
                if want.down {
                    power_off(sim, &all, &host);
                    have.redis_partition = Link::Whole;
                    // The power-off repaired the worker's client links too.
                    for c in 0..opts.clients {
                        links[c * opts.workers + w] = Link::Whole;
                    }
                } else {
                    sim.bounce(host.as_str());
                }
                let change = if want.down { HostChange::Crashed } else { HostChange::Restarted };
                history.push_at(now, Ev::HostFault { host: host.clone(), change });
            }
            if let Some(change) = set_link(sim, &host, "redis", have.redis_partition, want.redis_partition) {
                history.push_at(now, Ev::HostFault { host, change });
            }
            *have = want;
        }
        for c in 0..opts.clients {
            for w in 0..opts.workers {
                let want = plan.client_link(c, w, now, opts.heal_at_ms);
                let have = &mut links[c * opts.workers + w];
                if want == *have {
                    continue;
                }
                if let Some(change) = set_link(sim, &client_names[c], &worker_names[w], *have, want) {
                    history.push_at(now, Ev::HostFault { host: client_names[c].clone(), change });
                }
                *have = want;
            }
        }
        for (w, was) in skewed.iter_mut().enumerate() {
            let is = plan.worker_clock_skewed(w, now, opts.heal_at_ms);
            if is != *was {
                let change = if is { HostChange::ClockSkewed } else { HostChange::ClockSetRight };
                history.push_at(now, Ev::HostFault { host: format!("worker-{w}"), change });
                *was = is;
            }
        }
        let offset = plan.redis_clock_offset_ms(now);
        if offset != clock_offset {
            history.push_at(now, Ev::RedisClockJumped { delta_ms: offset - clock_offset, offset_ms: offset });
            clock_offset = offset;
        }
        match sim.step() {
            Ok(true) => return None,
            Ok(false) => {}
            Err(e) => return Some(e.to_string()),
        }
    }
}
