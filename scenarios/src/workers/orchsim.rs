//! orchsim's orchestrator as a [`Worker`]: its HTTP server, store, Copilot client and webhook
//! effects over turmoil, each seam wrapped by the known-bug decorators (plain pass-through
//! when no bug is selected). The only module of the suite that knows orchsim's types, keys and
//! record layout.

use super::{Deploy, Deployment, HostClock, Reports, Serving, Worker, WorkerHost};
use crate::contract::Conversation;
use crate::history::{Entry, Ev, History};
use crate::workers::known_bugs::{BugSettings, BuggyCopilot, BuggyEffects, BuggyStore, KnownBug};
use orchestrator::http::{router, serve, Api};
use orchestrator::store::{
    keys, BeginArgs, BeginOutcome, CommitArgs, CommitOutcome, ConversationRecord, MemStore, RedisConfig, RedisStore, Store, StoreError,
};
use orchestrator::turn::{Extracted, Observer, ServerEvent};
use orchestrator::{HttpCopilot, Orchestrator, SeededRng, TurnConfig, WebhookEffects};
use sim::net::TurmoilListener;
use sim::redis_model::{self, Model, Write, WriteOp};
use sim::world::stream;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The stream of a worker's seed its known-bug decorators draw from.
const STREAM_BUGS: u64 = 6;

/// orchsim's `Connector` seam over simulated TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilConnector;

impl orchestrator::net::Connector for TurmoilConnector {
    type Io = turmoil::net::TcpStream;
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Io> {
        sim::net::connect(host, port).await
    }
}

/// orchsim's `Clock` seam on a host's clock.
struct Clock(HostClock);

impl orchestrator::Clock for Clock {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
}

/// orchsim's orchestrator, optionally with a known bug re-created around its seams.
#[derive(Debug, Clone, Copy, Default)]
pub struct Orchsim {
    pub bug: Option<KnownBug>,
}

impl Worker for Orchsim {
    fn name(&self) -> String {
        match self.bug {
            None => "orchsim".into(),
            Some(b) => format!("orchsim with {}", b.name()),
        }
    }

    fn deploy(&self, run: &Deploy) -> Box<dyn Deployment> {
        Box::new(Run { bug: self.bug, redis: run.redis, mem: Arc::new(OnceLock::new()) })
    }
}

/// One run of orchsim's workers.
struct Run {
    bug: Option<KnownBug>,
    redis: bool,
    /// The embedded store, in the one worker of a world without Redis (made at its first start,
    /// on its clock).
    mem: Arc<OnceLock<Arc<MemStore>>>,
}

impl Run {
    fn turn_config(host: &WorkerHost) -> TurnConfig {
        let s = host.settings;
        TurnConfig {
            lease_ttl_ms: s.lease_ttl_ms,
            lease_extend_every_ms: s.lease_extend_every_ms,
            copilot_timeout_ms: s.copilot_timeout_ms,
            acquire_deadline_ms: s.acquire_deadline_ms,
            // Relays retry within seconds here (production: a claim of 15 s, a poll a second).
            relay_every_ms: 500,
            relay_claim_ms: 2_000,
            ..TurnConfig::default()
        }
    }
}

impl Deployment for Run {
    fn reports(&self) -> Reports {
        Reports { fences: true, turn_events: true }
    }

    fn serve(&self, host: WorkerHost) -> Serving {
        let (bug, redis, mem) = (self.bug, self.redis, self.mem.clone());
        Box::pin(async move {
            let cfg = Run::turn_config(&host);
            let clock: Arc<dyn orchestrator::Clock> = Arc::new(Clock(host.clock.clone()));
            let sink = WebhookEffects::new(TurmoilConnector, &host.sink.url(), host.settings.sink_timeout_ms).map_err(|e| e.to_string())?;
            let (redis_host, redis_port) = host.redis.as_ref().map_or((String::new(), 0), |r| (r.host.clone(), r.port));
            let settings = BugSettings {
                bug,
                clock: clock.clone(),
                lease_ttl_ms: cfg.lease_ttl_ms,
                acquire_deadline_ms: cfg.acquire_deadline_ms,
                acquire_backoff_max_ms: cfg.acquire_backoff_max_ms,
                redis_host,
                redis_port,
                timeout_ms: host.settings.redis_timeout_ms,
                sink: Arc::new(sink),
            };
            let copilot =
                HttpCopilot::new(TurmoilConnector, &host.copilot.url(), host.settings.copilot_timeout_ms).map_err(|e| e.to_string())?;
            let parts = Parts { cfg, settings, host };
            match (redis, &parts.host.redis) {
                (true, Some(r)) => {
                    let redis_cfg = RedisConfig {
                        connect_timeout_ms: parts.host.settings.redis_timeout_ms,
                        response_timeout_ms: parts.host.settings.redis_timeout_ms,
                        reconnect_backoff_base_ms: 50,
                        reconnect_backoff_max_ms: 1_000,
                    };
                    let url = format!("redis://{}:{}", r.host, r.port);
                    let store =
                        RedisStore::with_connector(TurmoilConnector, &url, redis_cfg, parts.host.seed).map_err(|e| e.to_string())?;
                    parts.serve(store, copilot).await
                }
                _ => {
                    let store = mem.get_or_init(|| Arc::new(MemStore::new(clock.clone()))).clone();
                    let history = parts.host.history.clone();
                    parts.serve(RecordedMem { store, history }, copilot).await
                }
            }
        })
    }

    fn applied_writes(&self, writes: &[Write]) -> Vec<Entry> {
        applied_commits(writes)
    }

    fn conversation(&self, redis: Option<&mut Model>, redis_now_ms: u64, cid: &str) -> Option<Conversation> {
        let record = match (self.mem.get(), redis) {
            (Some(m), _) => serde_json::to_vec(&m.load_now(cid)?).ok()?,
            // Read on the Redis host's clock at the end of the run: a finished conversation
            // expires only after its retention.
            (None, Some(model)) => model.peek_hash_field(keys::state(cid).as_bytes(), b"record", redis_now_ms)?,
            (None, None) => return None,
        };
        serde_json::from_slice(&record).ok()
    }

    fn effects_pending(&self, redis: Option<&mut Model>, redis_now_ms: u64) -> bool {
        match (self.mem.get(), redis) {
            (Some(m), _) => m.outbox_len() > 0,
            (None, Some(model)) => model.peek_hash_len(keys::OUTBOX.as_bytes(), redis_now_ms) > 0,
            (None, None) => false,
        }
    }
}

/// One worker host's parts: everything but its store and Copilot client.
struct Parts {
    cfg: TurnConfig,
    settings: BugSettings,
    host: WorkerHost,
}

impl Parts {
    /// orchsim's orchestrator on its seams, each seam wrapped by the known-bug decorators,
    /// serving HTTP with the outbox relay beside it (as in `orchestrator serve`).
    async fn serve<S: Store, C: orchestrator::Copilot>(self, store: S, copilot: C) -> turmoil::Result {
        let Parts { cfg, settings, host } = self;
        let observer = Arc::new(WorkerObserver { worker: host.name.clone(), history: host.history.clone() });
        let bug = settings.bug;
        let webhook = WebhookEffects::new(TurmoilConnector, &host.sink.url(), host.settings.sink_timeout_ms).map_err(|e| e.to_string())?;
        let (store, copilot) = (BuggyStore::new(store, settings), BuggyCopilot { inner: copilot, bug });
        let sink = BuggyEffects { inner: webhook, bug, rng: Mutex::new(stream(host.seed, STREAM_BUGS)) };
        let orch = Orchestrator::new(store, copilot, sink, SeededRng::from_seed(host.seed), cfg).with_observer(observer);
        let api = Arc::new(Api { orchestrator: orch, tokens: host.tokens });
        let listener = TurmoilListener::bind(host.port).await?;
        let relay = api.clone();
        tokio::spawn(async move { relay.orchestrator.run_relay().await });
        serve(listener, router(api)).await;
        Ok(())
    }
}

/// The embedded store with its applied commits written to the history from the store's own
/// answers (the embedded world has no Redis write log): a commit the store accepted, stamped
/// with the fence counter the store holds right after it.
pub(crate) struct RecordedMem {
    pub(crate) store: Arc<MemStore>,
    pub(crate) history: History,
}

impl Store for RecordedMem {
    async fn create(&self, cid: &str, record: &ConversationRecord) -> Result<bool, StoreError> {
        Ok(self.store.create_now(cid, record))
    }
    async fn load(&self, cid: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self.store.load_now(cid))
    }
    async fn begin(&self, a: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        Ok(self.store.begin_now(a))
    }
    async fn commit(&self, a: &CommitArgs<'_>) -> Result<CommitOutcome, StoreError> {
        let outcome = self.store.commit_now(a);
        if outcome == CommitOutcome::Committed {
            self.history.push(Ev::ModelCommit {
                cid: a.cid.into(),
                fence: self.store.fence_now(a.cid),
                version: a.record.state.version,
                idem_key: a.idem_key.into(),
                record: serde_json::to_value(a.record).unwrap_or_default(),
            });
        }
        Ok(outcome)
    }
    async fn release(&self, cid: &str, owner_token: &str, idem_key: &str) -> Result<bool, StoreError> {
        Ok(self.store.release_now(cid, owner_token, idem_key))
    }
    async fn extend(&self, cid: &str, owner_token: &str, idem_key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        Ok(self.store.extend_now(cid, owner_token, idem_key, ttl_ms))
    }
    async fn admit(&self, user: &str, cid: &str, max: u64) -> Result<bool, StoreError> {
        Ok(self.store.admit_now(user, cid, max))
    }
    async fn active(&self, user: &str) -> Result<orchestrator::store::ActiveList, StoreError> {
        Ok(self.store.active_now(user))
    }
    async fn dismiss(&self, user: &str, cid: &str) -> Result<(), StoreError> {
        self.store.dismiss_now(user, cid);
        Ok(())
    }
    async fn cancel(&self, a: &orchestrator::store::CancelArgs<'_>) -> Result<orchestrator::store::CancelOutcome, StoreError> {
        let outcome = self.store.cancel_now(a);
        if let (orchestrator::store::CancelOutcome::Cancelled { fence }, Some(w)) = (&outcome, &a.write) {
            self.history.push(Ev::ModelCommit {
                cid: a.cid.into(),
                fence: *fence,
                version: w.record.state.version,
                idem_key: String::new(),
                record: serde_json::to_value(w.record).unwrap_or_default(),
            });
        }
        Ok(outcome)
    }
    async fn outbox_intend(&self, cid: &str, due_in_ms: u64) -> Result<(), StoreError> {
        self.store.outbox_intend_now(cid, due_in_ms);
        Ok(())
    }
    async fn outbox_claim(&self, max: usize, claim_ms: u64) -> Result<Vec<orchestrator::store::OutboxEntry>, StoreError> {
        Ok(self.store.outbox_claim_now(max, claim_ms))
    }
    async fn outbox_done(&self, cid: &str) -> Result<(), StoreError> {
        self.store.outbox_done_now(cid);
        Ok(())
    }
    async fn outbox_later(&self, cid: &str, after_ms: u64) -> Result<(), StoreError> {
        self.store.outbox_later_now(cid, after_ms);
        Ok(())
    }
}

/// The orchestrator's observer inside a worker host.
pub struct WorkerObserver {
    pub worker: String,
    pub history: History,
}

impl Observer for WorkerObserver {
    fn event(&self, ev: ServerEvent) {
        let w = self.worker.clone();
        let ev = match ev {
            ServerEvent::LeaseTaken { cid, user, idem_key, fence, version } => {
                Ev::LeaseTaken { worker: w, cid, user, idem_key, fence, version }
            }
            ServerEvent::LeaseLost { cid, fence } => Ev::LeaseLost { worker: w, cid, fence },
            ServerEvent::CopilotCalled { cid, fence, ok } => Ev::CopilotCalled { worker: w, cid, fence, ok },
            ServerEvent::Transition { cid, user, fence, from, to, events } => Ev::Transition {
                worker: w,
                cid,
                user,
                fence,
                from: step(from),
                to: step(to),
                events: events.iter().map(|e| extracted(&Extracted::from(e))).collect(),
            },
            ServerEvent::Committed { cid, user, idem_key, fence, version, .. } => {
                Ev::Committed { worker: w, cid, user, idem_key, fence, version }
            }
            ServerEvent::CommitRejected { cid, fence } => Ev::CommitRejected { worker: w, cid, fence },
            ServerEvent::Released { cid, fence, released } => Ev::Released { worker: w, cid, fence, released },
            ServerEvent::Replayed { cid, user, idem_key, version } => Ev::Replayed { worker: w, cid, user, idem_key, version },
            ServerEvent::Submitted { cid, key, duplicate, relayed } => Ev::Submitted { worker: w, cid, key, duplicate, relayed },
            ServerEvent::Cancelled { cid, user, fence, version } => Ev::CancelCommitted { worker: w, cid, user, fence, version },
        };
        self.history.push(ev);
    }
}

/// orchsim's reading of the model's write log: a commit is a write of a conversation's
/// `record` field to its state hash by a command that did not create it (creation writes the
/// owner too). Its fence is the value the conversation's fence counter held when it applied
/// (the newest lease taken), which the record's own `writerFence` must equal; its idempotency
/// key is the key the same command wrote.
pub(crate) fn applied_commits(writes: &[redis_model::Write]) -> Vec<Entry> {
    let state_prefix = format!("{}:", keys::STATE);
    let fence_prefix = format!("{}:", keys::FENCE);
    let cid_of = |key: &str, prefix: &str| {
        key.strip_prefix(prefix).and_then(|r| r.strip_prefix("{c:")).and_then(|r| r.strip_suffix('}')).map(String::from)
    };
    let mut fences: BTreeMap<String, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let key = String::from_utf8_lossy(&w.key);
        if let Some(cid) = cid_of(&key, &fence_prefix) {
            let value = match &w.op {
                WriteOp::Set(v) => std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()),
                WriteOp::Lost(Some(redis_model::Value::Str(v))) => std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()),
                WriteOp::Del | WriteOp::Lost(None) => Some(0),
                _ => None,
            };
            if let Some(f) = value {
                fences.insert(cid, f);
            }
            continue;
        }
        let Some(cid) = cid_of(&key, &state_prefix) else { continue };
        let WriteOp::HSet(pairs) = &w.op else { continue };
        if pairs.iter().any(|(f, _)| f == b"owner") {
            continue;
        }
        let Some((_, record)) = pairs.iter().find(|(f, _)| f == b"record") else { continue };
        let record: serde_json::Value = serde_json::from_slice(record).unwrap_or_default();
        let version = record["state"]["version"].as_u64().unwrap_or(0);
        // Writes of one command are contiguous in the log.
        let lo = writes[..i].iter().rposition(|o| o.command != w.command).map_or(0, |p| p + 1);
        let hi = writes[i..].iter().position(|o| o.command != w.command).map_or(writes.len(), |p| i + p);
        let idem_key = writes[lo..hi]
            .iter()
            .filter(|o| o.key.starts_with(b"idem:") && matches!(o.op, WriteOp::Set(_)))
            .map(|o| String::from_utf8_lossy(&o.key).into_owned())
            .next()
            .unwrap_or_default();
        let fence = fences.get(&cid).copied().unwrap_or(0);
        out.push(Entry { t_ms: w.at_ms, ev: Ev::ModelCommit { cid, fence, version, idem_key, record } });
    }
    out
}

/// orchsim's step in the contract's terms.
fn step(s: orchestrator::workflow::Step) -> crate::contract::Step {
    use crate::contract::Step as C;
    use orchestrator::workflow::Step as O;
    match s {
        O::Gathering => C::Gathering,
        O::Confirming => C::Confirming,
        O::Succeeded => C::Succeeded,
        O::Cancelled => C::Cancelled,
        O::NeedsHuman => C::NeedsHuman,
    }
}

/// orchsim's report of an extracted event in the contract's terms.
fn extracted(x: &Extracted) -> crate::contract::Extracted {
    use crate::contract::Confidence as C;
    use orchestrator::workflow::Confidence as O;
    crate::contract::Extracted {
        kind: x.kind.clone(),
        field: x.field.clone(),
        value: x.value.clone(),
        confidence: x.confidence.map(|c| match c {
            O::High => C::High,
            O::Medium => C::Medium,
            O::Low => C::Low,
        }),
    }
}
