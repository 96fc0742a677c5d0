//! The orchestrate operation: one turn of one conversation, generic over the seams.
//!
//! Begin (one store step) → ownership → Copilot on the loaded context, lease extended while
//! it runs → extract → machine → Commit under our fence (one store step) → effects. See
//! DESIGN.md "One turn".
//!
//! Invariants: no wall clock, no OS randomness (both injected); a turn that cannot prove it
//! still owns the newest lease writes nothing and answers `Unavailable` (503).

use crate::context::{self, Context};
use crate::copilot::{Copilot, CopilotRequest};
use crate::effects::{submission_key, Effects, Submission, SubmitOutcome};
use crate::extract::extract;
use crate::rng::SeededRng;
use crate::store::{
    keys, BeginArgs, BeginOutcome, CancelArgs, CancelOutcome, CancelWrite, CommitArgs, CommitOutcome, ConversationRecord, Store, StoreError,
};
use crate::workflow::{self, apply_turn, reply_text, Command, Event, Step, WorkflowState};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Longest query accepted, in bytes.
pub const QUERY_BYTES_MAX: usize = 4096;
/// Longest idempotency key accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Longest conversation id accepted, in bytes.
pub const CONVERSATION_ID_BYTES_MAX: usize = 64;

/// Outbox entries one relay pass claims at most.
pub const RELAY_BATCH_MAX: usize = 16;
/// How old an outbox entry with no pending submission must be before a relay clears it:
/// longer than a commit can take after its intent was recorded.
pub const OUTBOX_GRACE_MS: u64 = 60_000;

/// The submission of a succeeded conversation.
pub fn submission_of(cid: &str, record: &ConversationRecord) -> Submission {
    Submission {
        idempotency_key: submission_key(cid),
        conversation_id: cid.into(),
        user: record.owner.clone(),
        workflow: record.state.workflow.clone(),
        data: record.state.collected_data.clone(),
    }
}

/// How old a counted conversation that does not exist must be before the cap's reconciliation
/// drops it: longer than any create takes (one store step after the count).
pub const ADMIT_GRACE_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnConfig {
    pub lease_ttl_ms: u64,
    /// How long Begin retries a busy lease before answering 503.
    pub acquire_deadline_ms: u64,
    pub acquire_backoff_base_ms: u64,
    pub acquire_backoff_max_ms: u64,
    /// Deadline for the Copilot call; the lease is extended while it runs.
    pub copilot_timeout_ms: u64,
    /// Extend the lease every this many ms during the Copilot call; 0 never extends.
    pub lease_extend_every_ms: u64,
    /// How long a completed turn's answer is kept for retries under its key. An hour: clients
    /// retry within seconds to minutes, a phone that lost signal within the hour; every answer
    /// costs about 1.4 KB while it is kept (kept a day, that was the server's biggest growth).
    pub idempotency_ttl_ms: u64,
    /// How long a conversation is kept after it reached a terminal step (and after any later
    /// turn on it): a day, for its user to read what happened.
    pub terminal_retention_ms: u64,
    /// Conversations one user may have that have not reached a terminal step; creating one
    /// more is a 429 until one finishes. 0: no cap.
    pub active_conversations_per_user_max: u64,
    /// How often each worker's outbox relay looks for submissions to deliver (jittered).
    pub relay_every_ms: u64,
    /// How long a relay holds the entries it claimed before another relay may take them (so a
    /// relay that died lets go): longer than a delivery attempt.
    pub relay_claim_ms: u64,
    /// What a 503 tells clients to wait.
    pub retry_after_s: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 6_000,
            acquire_deadline_ms: 3_000,
            acquire_backoff_base_ms: 2,
            acquire_backoff_max_ms: 100,
            copilot_timeout_ms: 10_000,
            lease_extend_every_ms: 2_000,
            idempotency_ttl_ms: 3600 * 1000,
            terminal_retention_ms: 24 * 3600 * 1000,
            active_conversations_per_user_max: 100,
            relay_every_ms: 1_000,
            relay_claim_ms: 15_000,
            retry_after_s: 1,
        }
    }
}

impl TurnConfig {
    /// Checks the relations between bounds that the protocol relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_ttl_ms == 0 {
            return Err("lease_ttl_ms must be > 0".into());
        }
        if self.lease_extend_every_ms >= self.lease_ttl_ms {
            return Err(format!(
                "lease_extend_every_ms ({}) must be below lease_ttl_ms ({}) or the lease lapses between extensions",
                self.lease_extend_every_ms, self.lease_ttl_ms
            ));
        }
        if self.idempotency_ttl_ms == 0 || self.terminal_retention_ms == 0 {
            return Err(
                "idempotency_ttl_ms and terminal_retention_ms must be > 0 (an answer or a finished conversation kept for no time)".into()
            );
        }
        if self.acquire_backoff_base_ms == 0 || self.acquire_backoff_max_ms < self.acquire_backoff_base_ms {
            return Err("acquire backoff must be 0 < base <= max".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnRequest {
    pub conversation_id: String,
    pub user: String,
    pub idempotency_key: String,
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extracted {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confidence: Option<workflow::Confidence>,
}

impl From<&Event> for Extracted {
    fn from(e: &Event) -> Self {
        let mut x = Extracted { kind: String::new(), field: None, value: None, confidence: None };
        match e {
            Event::FieldExtracted { field, value, confidence } => {
                x.kind = "field".into();
                x.field = Some(field.clone());
                x.value = Some(value.clone());
                x.confidence = Some(*confidence);
            }
            Event::Confirmed => x.kind = "confirmed".into(),
            Event::Declined => x.kind = "declined".into(),
            Event::NoSignal => x.kind = "no_signal".into(),
        }
        x
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelResult {
    /// This request cancelled the conversation.
    Cancelled,
    /// It had already finished (cancelled, succeeded — its submission stands — or handed to a
    /// person): nothing changed.
    AlreadyFinished,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelResponse {
    pub result: CancelResult,
    pub workflow_state: WorkflowState,
}

/// A cancel that keeps finding the conversation changed under it (turns committing, leases
/// taken) tries this many times before answering 503.
pub const CANCEL_ATTEMPTS_MAX: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnResponse {
    pub conversation_id: String,
    /// The turn number this answer belongs to (1-based).
    pub turn: u32,
    pub reply: String,
    pub extracted: Vec<Extracted>,
    pub workflow_state: WorkflowState,
    pub replayed: bool,
}

/// What the idempotency cache keeps of an answer: everything but the state, which a replay
/// always reads fresh (so storing it would only cost bytes on every commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAnswer {
    pub turn: u32,
    pub reply: String,
    pub extracted: Vec<Extracted>,
}

/// Why a turn answered 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    LockBusy,
    LeaseLost,
    Store,
    Copilot,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("conversation not found")]
    NotFound,
    #[error("a request with this idempotency key is in flight")]
    InFlight,
    #[error("idempotency key reused with a different request")]
    KeyReused,
    #[error("{max} conversations of yours are not finished yet; finish one before starting another")]
    TooManyConversations { max: u64 },
    #[error("the conversation was cancelled while this turn ran; nothing of the turn was stored")]
    Cancelled { state: Box<WorkflowState> },
    #[error("temporarily unavailable ({reason:?}); retry after {retry_after_s}s")]
    Unavailable { reason: Unavailable, retry_after_s: u64 },
}

/// What the orchestrator tells an observer (the simulation's history); production leaves it
/// empty and relies on tracing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    LeaseTaken {
        cid: String,
        user: String,
        idem_key: String,
        fence: u64,
        version: u64,
    },
    LeaseLost {
        cid: String,
        fence: u64,
    },
    CopilotCalled {
        cid: String,
        fence: u64,
        ok: bool,
    },
    Transition {
        cid: String,
        user: String,
        fence: u64,
        from: Step,
        to: Step,
        events: Vec<Event>,
    },
    Committed {
        cid: String,
        user: String,
        idem_key: String,
        fence: u64,
        version: u64,
        state: WorkflowState,
    },
    CommitRejected {
        cid: String,
        fence: u64,
    },
    // A turn that took the lease gave up without committing and handed the lease back
    // (`released`: the store confirmed it; otherwise it lapses at its TTL).
    Released {
        cid: String,
        fence: u64,
        released: bool,
    },
    Replayed {
        cid: String,
        user: String,
        idem_key: String,
        version: u64,
    },
    /// A cancel took the conversation over: written as `version` under the new `fence`.
    Cancelled {
        cid: String,
        user: String,
        fence: u64,
        version: u64,
    },
    /// A submission was acknowledged by the sink (`relayed`: delivered by an outbox relay).
    Submitted {
        cid: String,
        key: String,
        duplicate: bool,
        relayed: bool,
    },
}

pub trait Observer: Send + Sync + 'static {
    fn event(&self, ev: ServerEvent);
}

pub struct Orchestrator<S, C, E> {
    pub store: S,
    pub copilot: C,
    pub effects: E,
    pub rng: SeededRng,
    pub config: TurnConfig,
    pub observer: Option<Arc<dyn Observer>>,
}

pub fn valid_idempotency_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub fn valid_conversation_id(k: &str) -> bool {
    !k.is_empty() && k.len() <= CONVERSATION_ID_BYTES_MAX && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// What the request asks for; the same idempotency key with another fingerprint is a 422.
pub fn fingerprint(cid: &str, query: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(cid.as_bytes());
    h.update(&[0]);
    h.update(query.as_bytes());
    h.digest().to_string()
}

impl<S: Store, C: Copilot, E: Effects> Orchestrator<S, C, E> {
    pub fn new(store: S, copilot: C, effects: E, rng: SeededRng, config: TurnConfig) -> Self {
        Self { store, copilot, effects, rng, config, observer: None }
    }

    pub fn with_observer(mut self, o: Arc<dyn Observer>) -> Self {
        self.observer = Some(o);
        self
    }

    fn emit(&self, ev: impl FnOnce() -> ServerEvent) {
        if let Some(o) = &self.observer {
            o.event(ev());
        }
    }

    /// What a turn that lost its lease under `fence` answers: that the conversation was
    /// cancelled, if a cancel took it over (nothing to retry); otherwise "retry later".
    async fn lease_lost(&self, cid: &str, fence: u64) -> TurnError {
        match self.store.load(cid).await {
            Ok(Some(now)) if now.state.step == Step::Cancelled && now.writer_fence > fence => {
                TurnError::Cancelled { state: Box::new(now.state) }
            }
            _ => self.unavailable(Unavailable::LeaseLost),
        }
    }

    fn unavailable(&self, reason: Unavailable) -> TurnError {
        TurnError::Unavailable { reason, retry_after_s: self.config.retry_after_s }
    }

    /// Creates a conversation owned by `user`; returns its new, unguessable id.
    pub async fn create(&self, user: &str, workflow_name: &str) -> Result<String, TurnError> {
        let wf = workflow::workflow(workflow_name).ok_or_else(|| TurnError::BadRequest(format!("unknown workflow {workflow_name:?}")))?;
        let record = ConversationRecord { owner: user.to_string(), state: WorkflowState::new(wf), writer_fence: 0 };
        // 128 random bits never collide in practice; a collision is retried a bounded number
        // of times rather than overwriting someone's conversation.
        const CREATE_ATTEMPTS_MAX: u32 = 4;
        for _ in 0..CREATE_ATTEMPTS_MAX {
            let cid = self.rng.hex128();
            // Counted against the user's cap first, so that no conversation exists uncounted.
            self.admit(user, &cid).await?;
            match self.store.create(&cid, &record).await {
                Ok(true) => {
                    tracing::info!(cid = %cid, user, workflow = wf.name, "conversation created");
                    return Ok(cid);
                }
                Ok(false) => {
                    self.dismiss(user, &cid).await;
                    continue;
                }
                Err(e) => {
                    // Left counted: the count is reconciled against the store at the cap.
                    tracing::warn!(error = %e, "create failed");
                    return Err(self.unavailable(Unavailable::Store));
                }
            }
        }
        Err(self.unavailable(Unavailable::Store))
    }

    /// Counts `cid` against `user`'s cap on unfinished conversations. At the cap, the count is
    /// first reconciled with the store: entries whose conversation finished, expired or is not
    /// theirs are dropped (one that does not exist yet only once it is older than
    /// [`ADMIT_GRACE_MS`], since it may be a create in progress). Still at the cap: a 429.
    async fn admit(&self, user: &str, cid: &str) -> Result<(), TurnError> {
        let max = self.config.active_conversations_per_user_max;
        let store_down = |e: StoreError| {
            tracing::warn!(error = %e, "admission failed");
            self.unavailable(Unavailable::Store)
        };
        if max == 0 || self.store.admit(user, cid, max).await.map_err(store_down)? {
            return Ok(());
        }
        let counted = self.store.active(user).await.map_err(store_down)?;
        for (other, at) in &counted.entries {
            let finished = match self.store.load(other).await.map_err(store_down)? {
                Some(r) => r.owner != user || r.state.step.is_terminal(),
                None => counted.now_ms.saturating_sub(*at) >= ADMIT_GRACE_MS,
            };
            if finished {
                self.store.dismiss(user, other).await.map_err(store_down)?;
            }
        }
        match self.store.admit(user, cid, max).await.map_err(store_down)? {
            true => Ok(()),
            false => Err(TurnError::TooManyConversations { max }),
        }
    }

    /// Stops counting a finished conversation against its user's cap. Best effort: a count
    /// left behind is dropped by the reconciliation at the cap.
    async fn dismiss(&self, user: &str, cid: &str) {
        if self.config.active_conversations_per_user_max == 0 {
            return;
        }
        if let Err(e) = self.store.dismiss(user, cid).await {
            tracing::warn!(cid, error = %e, "could not stop counting a finished conversation");
        }
    }

    /// Cancels a conversation for its owner without waiting for the lease: in one store step
    /// it takes the conversation over from any turn in flight (whose commit is then refused).
    /// One already finished is left as it is (a `succeeded` one keeps its submission).
    pub async fn cancel(&self, user: &str, cid: &str) -> Result<CancelResponse, TurnError> {
        if !valid_conversation_id(cid) {
            return Err(TurnError::NotFound);
        }
        let store_down = |e: StoreError| {
            tracing::warn!(cid, error = %e, "cancel failed");
            self.unavailable(Unavailable::Store)
        };
        // What to write and on what condition: nothing, until the store has shown the conversation.
        let mut pending: Option<(String, u64, ConversationRecord)> = None;
        for _ in 0..CANCEL_ATTEMPTS_MAX {
            let retain_ms = self.config.terminal_retention_ms.max(1);
            let write = pending.as_ref().map(|(seen, fence, record)| CancelWrite { seen, fence: *fence, record, retain_ms });
            match self.store.cancel(&CancelArgs { cid, user, write }).await.map_err(store_down)? {
                CancelOutcome::NotFound => return Err(TurnError::NotFound),
                CancelOutcome::Cancelled { fence } => {
                    let Some((_, _, record)) = pending else { return Err(self.unavailable(Unavailable::Store)) };
                    tracing::info!(cid, user, fence, version = record.state.version, "cancelled");
                    self.emit(|| ServerEvent::Cancelled { cid: cid.into(), user: user.into(), fence, version: record.state.version });
                    self.dismiss(user, cid).await;
                    return Ok(CancelResponse { result: CancelResult::Cancelled, workflow_state: record.state });
                }
                CancelOutcome::Changed { record, seen, fence } => {
                    if record.state.step.is_terminal() {
                        return Ok(CancelResponse { result: CancelResult::AlreadyFinished, workflow_state: record.state });
                    }
                    let mut cancelled = record;
                    cancelled.state.step = Step::Cancelled;
                    cancelled.state.version += 1;
                    cancelled.writer_fence = fence + 1;
                    pending = Some((seen, fence, cancelled));
                }
            }
        }
        tracing::warn!(cid, "cancel kept finding the conversation changed");
        Err(self.unavailable(Unavailable::LockBusy))
    }

    /// The conversation's current state, for its owner only.
    pub async fn get(&self, user: &str, cid: &str) -> Result<WorkflowState, TurnError> {
        if !valid_conversation_id(cid) {
            return Err(TurnError::NotFound);
        }
        match self.store.load(cid).await {
            Ok(Some(r)) if r.owner == user => Ok(r.state),
            Ok(_) => Err(TurnError::NotFound),
            Err(_) => Err(self.unavailable(Unavailable::Store)),
        }
    }

    pub async fn turn(&self, req: &TurnRequest) -> Result<TurnResponse, TurnError> {
        if !valid_conversation_id(&req.conversation_id) {
            return Err(TurnError::NotFound);
        }
        if !valid_idempotency_key(&req.idempotency_key) {
            return Err(TurnError::BadRequest(format!("Idempotency-Key must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes of [A-Za-z0-9._:-]")));
        }
        if req.query.len() > QUERY_BYTES_MAX {
            return Err(TurnError::BadRequest(format!("query is over {QUERY_BYTES_MAX} bytes")));
        }
        let cid = req.conversation_id.as_str();
        let (idem_key, fp) = (keys::idem(cid, &req.user, &req.idempotency_key), fingerprint(cid, &req.query));
        let owner_token = format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64());
        let args = BeginArgs {
            cid,
            user: &req.user,
            idem_key: &idem_key,
            fingerprint: &fp,
            owner_token: &owner_token,
            lease_ttl_ms: self.config.lease_ttl_ms,
        };

        // 1. Begin, retrying a busy lease with jittered exponential backoff until the deadline.
        // How long we have waited is a duration, measured on the monotonic timer: a wall clock
        // stepped back (NTP, a VM migration) would otherwise stretch the deadline without bound.
        let started = tokio::time::Instant::now();
        let mut backoff_ms = self.config.acquire_backoff_base_ms;
        let (fence, record) = loop {
            let outcome = self.store.begin(&args).await.map_err(|e| {
                tracing::warn!(cid, error = %e, "begin failed");
                self.unavailable(Unavailable::Store)
            })?;
            match outcome {
                BeginOutcome::Acquired { fence, record } => break (fence, record),
                BeginOutcome::Replay { response, record } => {
                    if record.state.step == Step::Succeeded {
                        // The turn that made `succeeded` durable may have lost its answer, and
                        // with it the submission, to a fault after the commit applied (its
                        // client retries, and lands here). Sinks de-duplicate by key, so
                        // submitting again is safe: at-least-once plus de-duplication (and the
                        // outbox's relay delivers it anyway).
                        self.deliver(&submission_of(cid, &record), false).await;
                    }
                    return self.replay(req, &idem_key, &response, record);
                }
                BeginOutcome::InFlight => return Err(TurnError::InFlight),
                BeginOutcome::KeyReused => return Err(TurnError::KeyReused),
                BeginOutcome::NotFound => return Err(TurnError::NotFound),
                BeginOutcome::Busy { retry_in_ms } => {
                    let waited = started.elapsed().as_millis() as u64;
                    if waited >= self.config.acquire_deadline_ms {
                        return Err(self.unavailable(Unavailable::LockBusy));
                    }
                    let jittered = backoff_ms / 2 + self.rng.below(backoff_ms / 2 + 1);
                    let sleep = jittered.min(retry_in_ms.max(1)).min(self.config.acquire_deadline_ms - waited).max(1);
                    tokio::time::sleep(Duration::from_millis(sleep)).await;
                    backoff_ms = (backoff_ms * 2).min(self.config.acquire_backoff_max_ms);
                }
            }
        };
        self.emit(|| ServerEvent::LeaseTaken {
            cid: cid.into(),
            user: req.user.clone(),
            idem_key: idem_key.clone(),
            fence,
            version: record.state.version,
        });

        // 2.–5. Everything after Begin releases the lease on failure.
        match self.locked_turn(req, &idem_key, &fp, &owner_token, fence, record).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let released = match self.store.release(cid, &owner_token, &idem_key).await {
                    Ok(r) => r,
                    Err(err) => {
                        // The lease and the in-flight marker expire on their own.
                        tracing::warn!(cid, error = %err, "release after failure failed");
                        false
                    }
                };
                self.emit(|| ServerEvent::Released { cid: cid.into(), fence, released });
                Err(e)
            }
        }
    }

    async fn locked_turn(
        &self,
        req: &TurnRequest,
        idem_key: &str,
        fp: &str,
        owner_token: &str,
        fence: u64,
        record: ConversationRecord,
    ) -> Result<TurnResponse, TurnError> {
        let cid = req.conversation_id.as_str();
        // 3. Copilot on the context built from the loaded state.
        let ctx = Context::from_state(&record.state, &req.query);
        let creq = CopilotRequest { conversation_id: cid.into(), user_id: req.user.clone(), text: context::build(&ctx) };
        let reply = self.call_copilot(&creq, cid, owner_token, idem_key, fence).await?;
        let wf = workflow::workflow(&record.state.workflow).ok_or(TurnError::NotFound)?;

        // 4. Extract → events → machine.
        let events = extract(&reply, wf);
        let outcome = apply_turn(&record.state, &events);
        let reply_text = reply_text(&outcome);
        let submit = record.state.step != Step::Succeeded && outcome.commands.contains(&Command::Submit);
        let mut next = ConversationRecord { owner: record.owner.clone(), state: outcome.state, writer_fence: fence };
        next.state.version = record.state.version + 1;
        for r in &outcome.rejected {
            tracing::info!(cid, user = %req.user, rejected = %r, "event rejected by the machine");
        }
        tracing::info!(cid, user = %req.user, fence, from = record.state.step.as_str(), to = next.state.step.as_str(),
            version = next.state.version, "transition");
        self.emit(|| ServerEvent::Transition {
            cid: cid.into(),
            user: req.user.clone(),
            fence,
            from: record.state.step,
            to: next.state.step,
            events: events.clone(),
        });

        let response = TurnResponse {
            conversation_id: cid.into(),
            turn: next.state.turns,
            reply: reply_text,
            extracted: events.iter().map(Extracted::from).collect(),
            workflow_state: next.state.clone(),
            replayed: false,
        };
        let stored = StoredAnswer { turn: response.turn, reply: response.reply.clone(), extracted: response.extracted.clone() };
        let body = serde_json::to_string(&stored).map_err(|e| TurnError::BadRequest(e.to_string()))?;

        // 5. Commit under our fence; one that makes the conversation succeed also records its
        // submission as pending (the outbox), having first put it in the relays' index.
        let submission = submit.then(|| submission_of(cid, &next));
        let pending = submission.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default());
        if pending.is_some() {
            // Due for the relays only after this worker had its chance to deliver.
            self.store.outbox_intend(cid, self.config.relay_claim_ms).await.map_err(|e| {
                tracing::warn!(cid, error = %e, "outbox intent failed");
                self.unavailable(Unavailable::Store)
            })?;
        }
        let commit = CommitArgs {
            cid,
            owner_token,
            fence,
            record: &next,
            idem_key,
            fingerprint: fp,
            response: &body,
            idempotency_ttl_ms: self.config.idempotency_ttl_ms,
            retain_ms: if next.state.step.is_terminal() { self.config.terminal_retention_ms.max(1) } else { 0 },
            pending: pending.as_deref(),
        };
        match self.store.commit(&commit).await {
            Ok(CommitOutcome::Committed) => {}
            Ok(CommitOutcome::Superseded) => {
                tracing::warn!(cid, fence, "commit rejected: a later lease was taken");
                self.emit(|| ServerEvent::CommitRejected { cid: cid.into(), fence });
                return Err(self.lease_lost(cid, fence).await);
            }
            Err(e) => {
                tracing::warn!(cid, error = %e, "commit failed");
                return Err(self.unavailable(Unavailable::Store));
            }
        }
        self.emit(|| ServerEvent::Committed {
            cid: cid.into(),
            user: req.user.clone(),
            idem_key: idem_key.into(),
            fence: next.writer_fence,
            version: next.state.version,
            state: next.state.clone(),
        });

        if next.state.step.is_terminal() {
            self.dismiss(&req.user, cid).await;
        }
        // Effects only after the commit that made the transition durable: delivered now if the
        // sink answers, else by a relay (this worker's or, if it dies, another's).
        if let Some(s) = &submission {
            self.deliver(s, false).await;
        }
        Ok(response)
    }

    async fn call_copilot(
        &self,
        creq: &CopilotRequest,
        cid: &str,
        owner_token: &str,
        idem_key: &str,
        fence: u64,
    ) -> Result<crate::copilot::CopilotReply, TurnError> {
        let call = tokio::time::timeout(Duration::from_millis(self.config.copilot_timeout_ms), self.copilot.reply(creq));
        tokio::pin!(call);
        let every = self.config.lease_extend_every_ms;
        loop {
            let tick = async {
                if every == 0 {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(Duration::from_millis(every)).await
                }
            };
            tokio::select! {
                biased;
                r = &mut call => {
                    let ok = matches!(r, Ok(Ok(_)));
                    self.emit(|| ServerEvent::CopilotCalled { cid: cid.into(), fence, ok });
                    return match r {
                        Ok(Ok(reply)) => Ok(reply),
                        Ok(Err(e)) => {
                            tracing::warn!(cid, error = %e, "copilot failed");
                            Err(self.unavailable(Unavailable::Copilot))
                        }
                        Err(_) => {
                            tracing::warn!(cid, timeout_ms = self.config.copilot_timeout_ms, "copilot timed out");
                            Err(self.unavailable(Unavailable::Copilot))
                        }
                    };
                }
                _ = tick => {
                    match self.store.extend(cid, owner_token, idem_key, self.config.lease_ttl_ms).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(cid, fence, "lease lost during the copilot call");
                            self.emit(|| ServerEvent::LeaseLost { cid: cid.into(), fence });
                            return Err(self.lease_lost(cid, fence).await);
                        }
                        Err(e) => {
                            tracing::warn!(cid, error = %e, "extend failed");
                            return Err(self.unavailable(Unavailable::Store));
                        }
                    }
                }
            }
        }
    }

    fn replay(&self, req: &TurnRequest, idem_key: &str, stored: &str, record: ConversationRecord) -> Result<TurnResponse, TurnError> {
        let answer: StoredAnswer = serde_json::from_str(stored).map_err(|_| self.unavailable(Unavailable::Store))?;
        // The stored answer, but the state as it is now: a replay never shows stale state.
        let resp = TurnResponse {
            conversation_id: req.conversation_id.clone(),
            turn: answer.turn,
            reply: answer.reply,
            extracted: answer.extracted,
            workflow_state: record.state,
            replayed: true,
        };
        self.emit(|| ServerEvent::Replayed {
            cid: req.conversation_id.clone(),
            user: req.user.clone(),
            idem_key: idem_key.into(),
            version: resp.workflow_state.version,
        });
        Ok(resp)
    }

    /// One delivery attempt of a submission; on an acknowledgement its outbox entry is cleared.
    async fn deliver(&self, s: &Submission, relayed: bool) -> bool {
        let cid = s.conversation_id.as_str();
        match self.effects.submit(s).await {
            Ok(outcome) => {
                let duplicate = outcome == SubmitOutcome::Duplicate;
                tracing::info!(cid, duplicate, relayed, "submitted");
                self.emit(|| ServerEvent::Submitted { cid: cid.into(), key: s.idempotency_key.clone(), duplicate, relayed });
                if let Err(e) = self.store.outbox_done(cid).await {
                    // Delivered again later by a relay; the sink de-duplicates.
                    tracing::warn!(cid, error = %e, "could not clear the outbox entry");
                }
                true
            }
            Err(e) => {
                tracing::warn!(cid, relayed, error = %e, "submission failed; a relay retries it");
                false
            }
        }
    }

    /// One pass of the outbox relay: claims the submissions that are due and delivers each,
    /// clearing it once the sink acknowledged it, or putting it off by a jittered, bounded
    /// backoff. An entry with no pending submission is cleared once it is older than
    /// [`OUTBOX_GRACE_MS`] (its commit never happened, or its delivery was cleared). Returns
    /// how many were delivered.
    pub async fn relay_once(&self) -> usize {
        let claim_ms = self.config.relay_claim_ms;
        let entries = match self.store.outbox_claim(RELAY_BATCH_MAX, claim_ms).await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "relay: outbox unavailable");
                return 0;
            }
        };
        let mut delivered = 0;
        for e in entries {
            match e.pending.as_deref().map(serde_json::from_str::<Submission>) {
                Some(Ok(s)) => {
                    if self.deliver(&s, true).await {
                        delivered += 1;
                    } else {
                        let base = self.config.relay_every_ms.max(1);
                        let later = base + self.rng.below(base * 4);
                        let _ = self.store.outbox_later(&e.cid, later).await;
                    }
                }
                Some(Err(err)) => tracing::error!(cid = %e.cid, error = %err, "relay: a pending submission that is not a submission"),
                None if e.age_ms >= OUTBOX_GRACE_MS => {
                    let _ = self.store.outbox_done(&e.cid).await;
                }
                None => {}
            }
        }
        delivered
    }

    /// The relay: [`Self::relay_once`] every `relay_every_ms` (jittered), until dropped.
    pub async fn run_relay(&self) {
        loop {
            let every = self.config.relay_every_ms.max(1);
            tokio::time::sleep(Duration::from_millis(every / 2 + self.rng.below(every))).await;
            self.relay_once().await;
        }
    }
}
