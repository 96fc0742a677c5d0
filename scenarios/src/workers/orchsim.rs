//! orchsim's orchestrator as a worker host of the simulated world: its HTTP server, store,
//! Copilot client and webhook effects over turmoil, each seam wrapped by the known-bug
//! decorators (plain pass-through when no bug is selected).

use crate::history::{Ev, History};
use crate::workers::known_bugs::{BugSettings, BuggyCopilot, BuggyEffects, BuggyStore};
use crate::world::sink::{SimSink, SINK_TIMEOUT_MS};
use crate::world::{stream, HTTP_PORT, STREAM_BUGS};
use orchestrator::http::{router, serve, Api};
use orchestrator::store::{BeginArgs, BeginOutcome, CommitArgs, CommitOutcome, ConversationRecord, MemStore, Store, StoreError};
use orchestrator::turn::{Extracted, Observer, ServerEvent};
use orchestrator::{Orchestrator, SeededRng, TurnConfig, WebhookEffects};
use sim::net::TurmoilListener;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// orchsim's `Connector` seam over simulated TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilConnector;

impl orchestrator::net::Connector for TurmoilConnector {
    type Io = turmoil::net::TcpStream;
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Io> {
        sim::net::connect(host, port).await
    }
}

/// One worker host's parts: everything but its store and Copilot client.
pub(crate) struct Worker {
    pub(crate) name: String,
    pub(crate) history: History,
    /// The sink's state (the worker reaches the sink host over the network; only a known
    /// bug's decorator uses this directly).
    #[allow(dead_code)]
    pub(crate) sink: Arc<SimSink>,
    pub(crate) tokens: BTreeMap<String, String>,
    pub(crate) cfg: TurnConfig,
    pub(crate) bug: BugSettings,
    pub(crate) seed: u64,
}

impl Worker {
    /// The worker under test: orchsim's orchestrator on its seams, each seam wrapped by the
    /// known-bug decorators (plain pass-through when no bug is selected), serving HTTP.
    pub(crate) async fn serve<S: Store, C: orchestrator::Copilot>(self, store: S, copilot: C) -> turmoil::Result {
        let observer = Arc::new(WorkerObserver { worker: self.name.clone(), history: self.history });
        let (store, copilot) = (BuggyStore::new(store, self.bug.clone()), BuggyCopilot { inner: copilot, bug: self.bug.bug });
        let webhook = WebhookEffects::new(TurmoilConnector, &format!("http://sink:{HTTP_PORT}/submit"), SINK_TIMEOUT_MS)
            .map_err(|e| e.to_string())?;
        let sink = BuggyEffects { inner: webhook, bug: self.bug.bug, rng: Mutex::new(stream(self.seed, STREAM_BUGS)) };
        let orch = Orchestrator::new(store, copilot, sink, SeededRng::from_seed(self.seed), self.cfg).with_observer(observer);
        let api = Arc::new(Api { orchestrator: orch, tokens: self.tokens });
        let listener = TurmoilListener(turmoil::net::TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?);
        // The outbox relay runs beside the API, as in `orchestrator serve`.
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
            ServerEvent::Transition { cid, user, fence, from, to, events } => {
                Ev::Transition { worker: w, cid, user, fence, from, to, events: events.iter().map(Extracted::from).collect() }
            }
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
