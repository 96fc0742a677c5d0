//! Store-side pitfalls, written as a decorator over the real `RedisStore` the way a team's
//! store layer would get them wrong. The unfenced commit is this module's own Lua script,
//! sent on its own connection: the Redis model runs it as it runs any script.

use super::KnownBug;
use crate::workers::orchsim::TurmoilConnector;
use orchestrator::net::Connector;
use orchestrator::store::{
    keys, BeginArgs, BeginOutcome, CancelArgs, CancelOutcome, CancelWrite, CommitArgs, CommitOutcome, ConversationRecord, Store, StoreError,
};
use orchestrator::Clock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A commit as a team writes it before it has heard of fencing: write the record and the
/// answer, drop the lock. KEYS: state, lock, fence, idem. ARGV: fence (unused), record,
/// `<fingerprint>\n<response>`, idempotency ttl ms.
pub const UNFENCED_COMMIT: &str = r#"
redis.call('HSET', KEYS[1], 'record', ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[2])
return 1
"#;

/// What the decorator needs to know of the worker it sits in.
#[derive(Clone)]
pub struct BugSettings {
    pub bug: Option<KnownBug>,
    /// The worker's own clock (what `TrustLocalClock` and `ProceedWhenLockFails` go by).
    pub clock: Arc<dyn Clock>,
    pub lease_ttl_ms: u64,
    pub acquire_deadline_ms: u64,
    pub acquire_backoff_max_ms: u64,
    pub redis_host: String,
    pub redis_port: u16,
    /// Deadline for the side connection's dial and reply.
    pub timeout_ms: u64,
    /// The effects sink (`SubmitBeforeCommit` submits from inside the commit).
    pub sink: Arc<orchestrator::WebhookEffects<TurmoilConnector>>,
}

/// One turn's Begin as this worker saw it, keyed by the turn's owner token.
struct Turn {
    cid: String,
    user: String,
    idem_key: String,
    fingerprint: String,
    loaded: ConversationRecord,
    /// This worker's clock when the lease was taken.
    acquired_local_ms: u64,
    /// False when the turn went ahead without the lease (`NoLock`, `ProceedWhenLockFails`).
    leased: bool,
}

#[derive(Default)]
struct Memory {
    turns: BTreeMap<String, Turn>,
    /// When each owner token first met a busy lease.
    first_busy_ms: BTreeMap<String, u64>,
    /// `ContextNotLoadedFromStore`: the conversations this worker wrote, as it wrote them.
    cache: BTreeMap<String, ConversationRecord>,
}

pub struct BuggyStore<S> {
    pub inner: S,
    settings: BugSettings,
    memory: Mutex<Memory>,
}

/// Marks an answer that carries the record it was committed with (`StaleReplay`).
const STALE_MARK: char = '\u{1}';

impl<S: Store> BuggyStore<S> {
    pub fn new(inner: S, settings: BugSettings) -> Self {
        Self { inner, settings, memory: Mutex::new(Memory::default()) }
    }

    fn is(&self, b: KnownBug) -> bool {
        self.settings.bug == Some(b)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unscoped key and empty fingerprint of `IdempotencyKeyNotScopedByUser`: the
    /// client's own key, last segment of the scoped one.
    fn idem<'a>(&self, scoped: &'a str) -> std::borrow::Cow<'a, str> {
        if self.is(KnownBug::IdempotencyKeyNotScopedByUser) {
            let client_key = scoped.rsplit(':').next().unwrap_or(scoped);
            return format!("idem:{client_key}").into();
        }
        scoped.into()
    }

    fn remember(&self, token: &str, a: &BeginArgs<'_>, loaded: &ConversationRecord, leased: bool) {
        let turn = Turn {
            cid: a.cid.into(),
            user: a.user.into(),
            idem_key: a.idem_key.into(),
            fingerprint: a.fingerprint.into(),
            loaded: loaded.clone(),
            acquired_local_ms: self.settings.clock.now_ms(),
            leased,
        };
        self.memory().turns.insert(token.into(), turn);
    }

    /// Goes ahead without the lease, on the state as loaded now.
    async fn without_lease(&self, a: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        match self.inner.load(a.cid).await? {
            Some(r) if r.owner == a.user => {
                self.remember(a.owner_token, a, &r, false);
                Ok(BeginOutcome::Acquired { fence: r.writer_fence, record: r })
            }
            _ => Ok(BeginOutcome::NotFound),
        }
    }

    /// The unfenced commit, on a connection of its own.
    async fn commit_unfenced(&self, a: &CommitArgs<'_>, idem_key: &str, fingerprint: &str) -> Result<CommitOutcome, StoreError> {
        let unavailable = |e: String| StoreError::Unavailable(e);
        let record = serde_json::to_string(a.record).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let s = &self.settings;
        let fut = async {
            let stream = TurmoilConnector.connect(&s.redis_host, s.redis_port).await.map_err(|e| unavailable(e.to_string()))?;
            let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_millis(s.timeout_ms)));
            let info = redis::RedisConnectionInfo::default();
            let (mut conn, driver) =
                redis::aio::MultiplexedConnection::new_with_config(&info, stream, cfg).await.map_err(|e| unavailable(e.to_string()))?;
            let driver = tokio::spawn(driver);
            let r = redis::cmd("EVAL")
                .arg(UNFENCED_COMMIT)
                .arg(4)
                .arg(keys::state(a.cid))
                .arg(keys::lock(a.cid))
                .arg(keys::fence(a.cid))
                .arg(idem_key)
                .arg(a.fence)
                .arg(record)
                .arg(format!("{fingerprint}\n{}", a.response))
                .arg(a.idempotency_ttl_ms)
                .query_async::<i64>(&mut conn)
                .await;
            drop(conn);
            driver.abort();
            r.map_err(|e| unavailable(e.to_string()))
        };
        match tokio::time::timeout(Duration::from_millis(s.timeout_ms), fut).await {
            Ok(Ok(_)) => Ok(CommitOutcome::Committed),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(unavailable("unfenced commit timed out".into())),
        }
    }

    /// `CancelWaitsForTheLease`: takes the lease as a turn would (waiting while it is busy),
    /// then writes the cancelled record prepared before the wait.
    async fn cancel_after_the_lease(&self, a: &CancelArgs<'_>, w: &CancelWrite<'_>) -> Result<CancelOutcome, StoreError> {
        const ATTEMPTS_MAX: u32 = 200;
        let token = format!("cancel-{}-{}", a.cid, w.fence);
        let idem = keys::idem(a.cid, a.user, &token);
        let args = BeginArgs {
            cid: a.cid,
            user: a.user,
            idem_key: &idem,
            fingerprint: "cancel",
            owner_token: &token,
            lease_ttl_ms: self.settings.lease_ttl_ms,
        };
        for _ in 0..ATTEMPTS_MAX {
            match self.inner.begin(&args).await? {
                BeginOutcome::Busy { retry_in_ms } => tokio::time::sleep(Duration::from_millis(retry_in_ms.clamp(1, 50))).await,
                BeginOutcome::NotFound => return Ok(CancelOutcome::NotFound),
                _ => break,
            }
        }
        let CancelOutcome::Changed { seen, fence, .. } = self.inner.cancel(&CancelArgs { write: None, ..a.clone() }).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let mut prepared = w.record.clone();
        prepared.writer_fence = fence + 1;
        let write = CancelWrite { seen: &seen, fence, record: &prepared, retain_ms: w.retain_ms };
        self.inner.cancel(&CancelArgs { write: Some(write), ..a.clone() }).await
    }

    /// Takes the lease again and writes the stale record under the new fence.
    async fn blind_recommit(&self, a: &CommitArgs<'_>, turn: &Turn) -> Result<CommitOutcome, StoreError> {
        const ATTEMPTS_MAX: u32 = 20;
        let token = format!("{}-again", a.owner_token);
        let args = BeginArgs {
            cid: a.cid,
            user: &turn.user,
            idem_key: &turn.idem_key,
            fingerprint: &turn.fingerprint,
            owner_token: &token,
            lease_ttl_ms: self.settings.lease_ttl_ms,
        };
        for _ in 0..ATTEMPTS_MAX {
            match self.inner.begin(&args).await? {
                BeginOutcome::Acquired { fence, record } => {
                    let mut again = a.record.clone();
                    again.state.version = record.state.version + 1;
                    again.writer_fence = fence;
                    let commit = CommitArgs { owner_token: &token, fence, record: &again, ..a.clone() };
                    return self.inner.commit(&commit).await;
                }
                BeginOutcome::Busy { retry_in_ms } => tokio::time::sleep(Duration::from_millis(retry_in_ms.clamp(1, 50))).await,
                _ => return Ok(CommitOutcome::Superseded),
            }
        }
        Ok(CommitOutcome::Superseded)
    }
}

impl<S: Store> Store for BuggyStore<S> {
    async fn create(&self, cid: &str, record: &ConversationRecord) -> Result<bool, StoreError> {
        self.inner.create(cid, record).await
    }

    async fn load(&self, cid: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.inner.load(cid).await
    }

    async fn begin(&self, a: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        if self.settings.bug.is_none() {
            return self.inner.begin(a).await;
        }
        let idem = self.idem(a.idem_key);
        let fp = if self.is(KnownBug::IdempotencyKeyNotScopedByUser) { "" } else { a.fingerprint };
        let args = BeginArgs { idem_key: &idem, fingerprint: fp, ..a.clone() };
        let outcome = self.inner.begin(&args).await?;
        match outcome {
            BeginOutcome::Acquired { fence, record } => {
                let record = match self.is(KnownBug::ContextNotLoadedFromStore) {
                    true => self.memory().cache.get(a.cid).cloned().unwrap_or(record),
                    false => record,
                };
                self.remember(a.owner_token, &args, &record, true);
                self.memory().first_busy_ms.remove(a.owner_token);
                Ok(BeginOutcome::Acquired { fence, record })
            }
            BeginOutcome::Replay { response, record } if self.is(KnownBug::StaleReplay) => match response.split_once(STALE_MARK) {
                Some((stale, answer)) => {
                    let stale = serde_json::from_str(stale).map_err(|e| StoreError::Protocol(e.to_string()))?;
                    Ok(BeginOutcome::Replay { response: answer.into(), record: stale })
                }
                None => Ok(BeginOutcome::Replay { response, record }),
            },
            BeginOutcome::Busy { retry_in_ms } => {
                if self.is(KnownBug::NoLock) {
                    return self.without_lease(&args).await;
                }
                if self.is(KnownBug::ProceedWhenLockFails) {
                    let now = self.settings.clock.now_ms();
                    let first = *self.memory().first_busy_ms.entry(a.owner_token.into()).or_insert(now);
                    // The orchestrator gives up once the deadline has passed; go ahead just before.
                    let give_up_at = first + self.settings.acquire_deadline_ms.saturating_sub(self.settings.acquire_backoff_max_ms);
                    if now >= give_up_at {
                        self.memory().first_busy_ms.remove(a.owner_token);
                        return self.without_lease(&args).await;
                    }
                }
                Ok(BeginOutcome::Busy { retry_in_ms })
            }
            other => Ok(other),
        }
    }

    async fn commit(&self, a: &CommitArgs<'_>) -> Result<CommitOutcome, StoreError> {
        if self.settings.bug.is_none() {
            return self.inner.commit(a).await;
        }
        if let (true, Some(pending)) = (self.is(KnownBug::SubmitBeforeCommit), a.pending) {
            use orchestrator::effects::Effects;
            if let Ok(s) = serde_json::from_str::<orchestrator::effects::Submission>(pending) {
                let _ = self.settings.sink.submit(&s).await;
            }
            return self.inner.commit(a).await;
        }
        let turn = self.memory().turns.remove(a.owner_token);
        let Some(turn) = turn else { return self.inner.commit(a).await };
        let idem = self.idem(a.idem_key).into_owned();
        let fp = if self.is(KnownBug::IdempotencyKeyNotScopedByUser) { "" } else { a.fingerprint };
        let mut record = a.record.clone();
        if self.is(KnownBug::UnknownSignalIgnored) && record.state.no_signal_streak > turn.loaded.state.no_signal_streak {
            // The no-signal turn "did nothing": the state as loaded, one turn older.
            record.state = turn.loaded.state.clone();
            record.state.turns += 1;
            record.state.version = a.record.state.version;
        }
        let stale_answer;
        let response = match self.is(KnownBug::StaleReplay) {
            true => {
                let rec = serde_json::to_string(&record).map_err(|e| StoreError::Protocol(e.to_string()))?;
                stale_answer = format!("{rec}{STALE_MARK}{}", a.response);
                stale_answer.as_str()
            }
            false => a.response,
        };
        let args = CommitArgs { idem_key: &idem, fingerprint: fp, record: &record, response, ..a.clone() };
        let local_says_valid = self.settings.clock.now_ms() < turn.acquired_local_ms + self.settings.lease_ttl_ms;
        let unfenced = !turn.leased || self.is(KnownBug::NoFencing) || (self.is(KnownBug::TrustLocalClock) && local_says_valid);
        let outcome = if unfenced { self.commit_unfenced(&args, &idem, fp).await? } else { self.inner.commit(&args).await? };
        if outcome == CommitOutcome::Superseded && self.is(KnownBug::BlindRecommitAfterLeaseLoss) {
            return self.blind_recommit(&args, &turn).await;
        }
        if outcome == CommitOutcome::Committed && self.is(KnownBug::ContextNotLoadedFromStore) {
            self.memory().cache.insert(turn.cid.clone(), record);
        }
        Ok(outcome)
    }

    async fn release(&self, cid: &str, owner_token: &str, idem_key: &str) -> Result<bool, StoreError> {
        let turn = self.memory().turns.remove(owner_token);
        if turn.as_ref().is_some_and(|t| !t.leased) {
            return Ok(true);
        }
        self.inner.release(cid, owner_token, &self.idem(idem_key)).await
    }

    async fn extend(&self, cid: &str, owner_token: &str, idem_key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let unleased = self.memory().turns.get(owner_token).is_some_and(|t| !t.leased);
        if unleased {
            return Ok(true);
        }
        let held = self.inner.extend(cid, owner_token, &self.idem(idem_key), ttl_ms).await?;
        // Without fencing, a lost lease is simply not noticed.
        Ok(held || self.is(KnownBug::NoFencing))
    }
    async fn admit(&self, user: &str, cid: &str, max: u64) -> Result<bool, StoreError> {
        self.inner.admit(user, cid, max).await
    }
    async fn active(&self, user: &str) -> Result<orchestrator::store::ActiveList, StoreError> {
        self.inner.active(user).await
    }
    async fn dismiss(&self, user: &str, cid: &str) -> Result<(), StoreError> {
        self.inner.dismiss(user, cid).await
    }
    async fn cancel(&self, a: &CancelArgs<'_>) -> Result<CancelOutcome, StoreError> {
        match &a.write {
            Some(w) if self.is(KnownBug::CancelWaitsForTheLease) => self.cancel_after_the_lease(a, w).await,
            _ => self.inner.cancel(a).await,
        }
    }
    async fn outbox_intend(&self, cid: &str, due_in_ms: u64) -> Result<(), StoreError> {
        self.inner.outbox_intend(cid, due_in_ms).await
    }
    async fn outbox_claim(&self, max: usize, claim_ms: u64) -> Result<Vec<orchestrator::store::OutboxEntry>, StoreError> {
        self.inner.outbox_claim(max, claim_ms).await
    }
    async fn outbox_done(&self, cid: &str) -> Result<(), StoreError> {
        self.inner.outbox_done(cid).await
    }
    async fn outbox_later(&self, cid: &str, after_ms: u64) -> Result<(), StoreError> {
        self.inner.outbox_later(cid, after_ms).await
    }
}
