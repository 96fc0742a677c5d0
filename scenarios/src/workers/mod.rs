//! The workers under test, and the seam the world starts them through.
//!
//! A [`Worker`] is a system that speaks the contract ([`crate::contract`], README "API"): the
//! world calls [`Worker::deploy`] once per run, then [`Deployment::serve`] each time a worker
//! host starts (and after each crash). A host gets a [`WorkerHost`]: the port to listen on, where
//! Redis, Copilot and the effects sink are (as turmoil host names: dial them with
//! [`sim::net::connect`]), its own clock (skewed by the fault plan), a seed, the users' tokens,
//! the orchestrator settings, and the history, to which it may add its own account.
//!
//! After the run the world asks the deployment how its storage reads: which writes in the
//! Redis model's log were commits ([`Deployment::applied_writes`]), and what each
//! conversation ended as ([`Deployment::conversation`]). The checks need no more of it.
//!
//! orchsim's orchestrator is [`orchsim::Orchsim`]; with a known bug ([`KnownBug`]) it is
//! another worker, decorated from its public seams.

pub mod known_bugs;
pub mod orchsim;

pub use known_bugs::KnownBug;

use crate::contract::Conversation;
use crate::history::{Entry, History};
use sim::redis_model::{Model, Write};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A host and port in the simulated network, and the path the contract uses there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: &'static str,
}

impl Endpoint {
    pub fn url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// The settings the world runs workers with (a system maps them onto its own configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub lease_ttl_ms: u64,
    pub lease_extend_every_ms: u64,
    pub copilot_timeout_ms: u64,
    /// How long a turn may wait for a busy conversation.
    pub acquire_deadline_ms: u64,
    /// Redis connect and reply timeouts.
    pub redis_timeout_ms: u64,
    /// How long to wait for the effects sink's answer.
    pub sink_timeout_ms: u64,
}

/// A worker host's own clock: simulated time as that host sees it (the plan's skew for it
/// applied, until the heal); after the run, the time the run ended.
#[derive(Clone)]
pub struct HostClock {
    pub(crate) at: Arc<dyn Fn(u64) -> u64 + Send + Sync>,
    pub(crate) end_ms: Arc<AtomicU64>,
}

impl HostClock {
    pub fn now_ms(&self) -> u64 {
        let t = turmoil::sim_elapsed().map_or_else(|| self.end_ms.load(Ordering::SeqCst), |d| d.as_millis() as u64);
        (self.at)(t)
    }
}

/// What one worker host is given when it starts.
pub struct WorkerHost {
    /// 0-based index and host name (`worker-<index>`).
    pub index: usize,
    pub name: String,
    /// The port clients connect to (bind `0.0.0.0:port`, e.g. [`sim::net::TurmoilListener::bind`]).
    pub port: u16,
    /// The Redis model, or `None` in a world without one (the worker keeps its own state).
    pub redis: Option<Endpoint>,
    /// Copilot: `POST` a [`crate::contract::CopilotRequest`].
    pub copilot: Endpoint,
    /// The effects sink: `POST` a [`crate::contract::Submission`] with `Idempotency-Key`.
    pub sink: Endpoint,
    pub clock: HostClock,
    /// This host's seed, the same at every restart.
    pub seed: u64,
    /// Bearer token → user id, for every user and attacker of the run.
    pub tokens: BTreeMap<String, String>,
    pub settings: Settings,
    /// The run's history: a worker may record its own account (`Ev::LeaseTaken`, …; see
    /// [`crate::history::Ev`]), which the checks that need it hold it to.
    pub history: History,
}

/// A host's serving future.
pub type Serving = Pin<Box<dyn Future<Output = turmoil::Result>>>;

/// A system under test.
pub trait Worker: Send + Sync {
    /// Its name in reports.
    fn name(&self) -> String;
    /// What this run's worker hosts share; called once per run, before any host starts.
    fn deploy(&self, run: &Deploy) -> Box<dyn Deployment>;
}

/// What [`Worker::deploy`] knows of the run.
#[derive(Debug, Clone)]
pub struct Deploy {
    pub seed: u64,
    pub workers: usize,
    /// Whether the world has a Redis host (`false`: the embedded-store world, one worker).
    pub redis: bool,
    pub settings: Settings,
}

/// What a system tells the harness beyond its answers and its storage. Some invariants need
/// it; without it they check less (README "Testing your own orchestrator" says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reports {
    /// Its commits carry fences: `Ev::ModelCommit::fence` is the newest lease's fence when the
    /// commit applied, and the record's `writerFence` the fence its writer held (invariant 4's
    /// fence clauses).
    pub fences: bool,
    /// It records each turn's events (`Ev::Transition`, with the fence the turn ran under):
    /// invariant 5 checks them, and invariant 11 replays them through the specification.
    pub turn_events: bool,
}

/// One run's worker hosts.
pub trait Deployment {
    /// What this system reports (none by default).
    fn reports(&self) -> Reports {
        Reports::default()
    }

    /// Serves worker host `host` until it is crashed (the world calls it again at restart).
    fn serve(&self, host: WorkerHost) -> Serving;

    /// The commits in the Redis model's write log, as history entries (`Ev::ModelCommit`: the
    /// conversation, the fence its writer held if the system fences, the version, the
    /// idempotency key written with it, the record in [`Conversation`]'s shape). A system
    /// without Redis reports its commits to the history itself and returns none here.
    fn applied_writes(&self, writes: &[Write]) -> Vec<Entry>;

    /// What conversation `cid` ended as, read from the Redis model at the Redis host's time
    /// `redis_now_ms`, or from the worker's own state.
    fn conversation(&self, redis: Option<&mut Model>, redis_now_ms: u64, cid: &str) -> Option<Conversation>;

    /// Whether effects are still owed (an outbox not yet empty): with sink faults the world
    /// keeps running after the heal while this holds, up to a bound.
    fn effects_pending(&self, redis: Option<&mut Model>, redis_now_ms: u64) -> bool;
}
