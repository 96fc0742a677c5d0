//! The world: from (options, fault plan, seed) to one turmoil simulation with hosts `redis`
//! (the model), `copilot` (the fake LLM), `worker-N` (the real orchestrator: HTTP `serve` +
//! `RedisStore` + `HttpCopilot` over simulated TCP) and `client-N` (users), run to the end.
//!
//! Every random choice comes from a ChaCha stream derived from the seed; turmoil gets
//! `rng_seed` and a fixed `epoch`; host runtimes are seeded through `tokio_unstable`.

use crate::contract::Conversation;
use crate::history::{Entry, Ev, History, HostChange};
use crate::workers::orchsim::Orchsim;
use crate::workers::{Deploy, Deployment, Endpoint, HostClock, Reports, Worker, WorkerHost};
use crate::world::client::{run_client, token_of, Shared};
use crate::world::copilot_host::CopilotHost;
use crate::world::faults::{FaultPlan, HostFaults};
use crate::world::hosts::Host;
use crate::world::sink::{SimSink, SinkHost};
use rand::Rng;
use sim::net::TurmoilListener;
use sim::redis_model::{self, Model};
use sim::world::{power_off, set_link, Link, SimConfig};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod client;
pub mod copilot_host;
pub mod faults;
pub mod hosts;
mod options;
pub mod sink;

pub const REDIS_PORT: u16 = 6379;
pub const HTTP_PORT: u16 = 80;
/// The workers' Redis connect and reply timeouts.
pub const REDIS_RESPONSE_TIMEOUT_MS: u64 = 1_000;

pub use options::{Faults, Network, Options, OrchestratorSettings, StoreKind, Topology, Workload};

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
    FaultPlan::generate(
        &mut stream(seed, STREAM_PLAN),
        &opts.faults.fault_kinds,
        opts.faults.heal_at_ms,
        opts.orchestrator.lease_ttl_ms,
        opts.topology.workers,
        opts.topology.clients,
    )
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

/// Runs orchsim's orchestrator (with `opts.known_bug`, if any) in the world of `opts`.
pub fn run(opts: &Options, plan: &FaultPlan, seed: u64) -> RunOutput {
    run_worker(&Orchsim { bug: opts.known_bug }, opts, plan, seed)
}

/// Runs `worker` in the world of `opts` under `plan`.
///
/// # Panics
/// On options that cannot make a run ([`Options::validate`]); a run file's are checked when
/// it is read.
pub fn run_worker(worker: &dyn Worker, opts: &Options, plan: &FaultPlan, seed: u64) -> RunOutput {
    if let Err(e) = opts.validate() {
        panic!("options of scenario {:?} cannot make a run: {e}", opts.scenario);
    }
    let history = History::new();
    let mut turmoil_rng = stream(seed, STREAM_TURMOIL);
    let cfg = SimConfig {
        tick_ms: opts.network.tick_ms,
        run_limit_ms: opts.network.run_limit_ms,
        net_latency_ms: opts.network.net_latency_ms,
        random_host_order: opts.network.random_host_order,
    };
    let mut sim = sim::world::build(&cfg, &mut turmoil_rng);

    let plan = Arc::new(plan.clone());
    let model = Arc::new(Mutex::new(Model::with_durability(opts.topology.redis_durability)));
    let embedded = opts.topology.store == StoreKind::Embedded;
    if !embedded {
        let (model, plan) = (model.clone(), plan.clone());
        sim.host(Host::Redis.name(), move || {
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
            latency_ms: opts.network.copilot_latency_ms,
            heal_at_ms: opts.faults.heal_at_ms,
            deadline_ms: opts.orchestrator.copilot_timeout_ms,
            rng: Mutex::new(stream(seed, STREAM_COPILOT)),
        });
        sim.host(Host::Copilot.name(), move || {
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
            heal_at_ms: opts.faults.heal_at_ms,
            rng: Mutex::new(stream(seed, STREAM_SINK)),
        });
        sim.host(Host::Sink.name(), move || {
            let host = host.clone();
            async move {
                sim::net::serve(TurmoilListener::bind(HTTP_PORT).await?, crate::world::sink::router(host)).await;
                Ok(())
            }
        });
    }
    let mut users = BTreeMap::new();
    for c in 0..opts.topology.clients {
        for u in 0..opts.topology.users_per_client {
            let user = format!("u{c}x{u}");
            users.insert(token_of(&user), user);
        }
        if opts.workload.attackers {
            let m = crate::world::client::attacker_of(c);
            users.insert(token_of(&m), m);
        }
    }
    let mut worker_rng = stream(seed, STREAM_WORKERS);
    let end_ms = Arc::new(AtomicU64::new(0));
    let deployment: Arc<dyn Deployment> =
        worker.deploy(&Deploy { seed, workers: opts.topology.workers, redis: !embedded, settings: opts.settings() }).into();
    for w in 0..opts.topology.workers {
        let name = Host::Worker(w).name();
        let worker_seed: u64 = worker_rng.random();
        let plan_for_clock = plan.clone();
        let heal_at_ms = opts.faults.heal_at_ms;
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
                redis: (!embedded).then(|| Endpoint { host: Host::Redis.name(), port: REDIS_PORT, path: "" }),
                copilot: Endpoint { host: Host::Copilot.name(), port: HTTP_PORT, path: "/v1/reply" },
                sink: Endpoint { host: Host::Sink.name(), port: HTTP_PORT, path: "/submit" },
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
    for c in 0..opts.topology.clients {
        let shared = shared.clone();
        sim.client(Host::Client(c).name(), run_client(shared, c));
    }
    if plan.has_sink_faults() {
        // Not a user: keeps the world running after the heal until no effect is owed any more
        // (every pending submission delivered and cleared), or for `SINK_SETTLE_MS` at most.
        let (heal, until) = (opts.faults.heal_at_ms, opts.faults.heal_at_ms + SINK_SETTLE_MS);
        let (model, plan, deployment) = (model.clone(), plan.clone(), deployment.clone());
        let outbox_empty = move |now: u64| {
            let mut m = model.lock().unwrap_or_else(|p| p.into_inner());
            !deployment.effects_pending((!embedded).then_some(&mut *m), plan.redis_now_ms(now))
        };
        sim.client(Host::Settle.name(), async move {
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
        if opts.workload.attackers { (0..opts.topology.clients).map(crate::world::client::attacker_of).collect() } else { Vec::new() };
    let workload =
        users.values().map(|u| (u.clone(), if attackers.contains(u) { 1 } else { opts.topology.conversations_per_user as u64 })).collect();
    RunOutput {
        reports: deployment.reports(),
        history: entries,
        finals,
        owners,
        workload,
        heal_at_ms: opts.faults.heal_at_ms,
        answer_bound_ms: opts.answer_bound_ms(),
        sim_ms,
        error,
    }
}

/// Every host name in the world, for isolating one of them.
fn host_names(opts: &Options) -> Vec<String> {
    let mut v = vec![Host::Copilot.name(), Host::Sink.name()];
    if opts.topology.store == StoreKind::Redis {
        v.push(Host::Redis.name());
    }
    v.extend((0..opts.topology.workers).map(|w| Host::Worker(w).name()));
    v.extend((0..opts.topology.clients).map(|c| Host::Client(c).name()));
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
    let worker_names: Vec<String> = (0..opts.topology.workers).map(|w| Host::Worker(w).name()).collect();
    let client_names: Vec<String> = (0..opts.topology.clients).map(|c| Host::Client(c).name()).collect();
    let redis = Host::Redis.name();
    let mut applied = vec![HostFaults::default(); opts.topology.workers];
    let mut skewed = vec![false; opts.topology.workers];
    // Client c ↔ worker w link state as applied, at [c * workers + w].
    let mut links = vec![Link::Whole; opts.topology.clients * opts.topology.workers];
    let mut redis_down = false;
    let mut clock_offset = 0i64;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        let want_down = plan.redis_down(now, opts.faults.heal_at_ms);
        if want_down != redis_down {
            if want_down {
                power_off(sim, &all, &redis);
                let lost = model.lock().unwrap_or_else(|p| p.into_inner()).crash(now);
                if lost > 0 {
                    history.push_at(now, Ev::RedisLostWrites { lost: lost as u64, durability: opts.topology.redis_durability });
                }
                // The power-off repaired every link of redis: partitions still wanted are
                // applied again below.
                for have in &mut applied {
                    have.redis_partition = Link::Whole;
                }
            } else {
                sim.bounce(redis.as_str());
            }
            let change = if want_down { HostChange::Crashed } else { HostChange::Restarted };
            history.push_at(now, Ev::HostFault { host: redis.clone(), change });
            redis_down = want_down;
        }
        for (w, have) in applied.iter_mut().enumerate() {
            let want = plan.worker_faults(w, now, opts.faults.heal_at_ms);
            if want == *have {
                continue;
            }
            let host = worker_names[w].clone();
            if want.down != have.down {
                if want.down {
                    power_off(sim, &all, &host);
                    have.redis_partition = Link::Whole;
                    // The power-off repaired the worker's client links too.
                    for c in 0..opts.topology.clients {
                        links[c * opts.topology.workers + w] = Link::Whole;
                    }
                } else {
                    sim.bounce(host.as_str());
                }
                let change = if want.down { HostChange::Crashed } else { HostChange::Restarted };
                history.push_at(now, Ev::HostFault { host: host.clone(), change });
            }
            if let Some(change) = set_link(sim, &host, &redis, have.redis_partition, want.redis_partition) {
                history.push_at(now, Ev::HostFault { host, change });
            }
            *have = want;
        }
        for c in 0..opts.topology.clients {
            for w in 0..opts.topology.workers {
                let want = plan.client_link(c, w, now, opts.faults.heal_at_ms);
                let have = &mut links[c * opts.topology.workers + w];
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
            let is = plan.worker_clock_skewed(w, now, opts.faults.heal_at_ms);
            if is != *was {
                let change = if is { HostChange::ClockSkewed } else { HostChange::ClockSetRight };
                history.push_at(now, Ev::HostFault { host: worker_names[w].clone(), change });
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
