//! The turn protocol on the embedded store under concurrency and faults, and the HTTP API on
//! loopback. Each test is named after the property it proves.

use crate::support::{http, http_bytes, Events};
use bytes::Bytes;
use orchestrator::copilot::{CopilotError, CopilotReply, CopilotRequest};
use orchestrator::http::{router, serve, Api, REQUEST_BODY_BYTES_MAX};
use orchestrator::store::{BeginArgs, BeginOutcome, CommitArgs, CommitOutcome, ConversationRecord, StoreError};
use orchestrator::turn::{ServerEvent, Unavailable};
use orchestrator::workflow::Step;
use orchestrator::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Orch<S, C> = Orchestrator<S, Arc<C>, Arc<RecordingEffects>>;

fn orch<S: Store, C: Copilot>(store: S, copilot: Arc<C>, seed: u64, config: TurnConfig) -> Orch<S, C> {
    Orchestrator::new(store, copilot, Arc::new(RecordingEffects::new()), SeededRng::from_seed(seed), config)
}

fn req(cid: &str, user: &str, key: &str, query: &str) -> TurnRequest {
    TurnRequest { conversation_id: cid.into(), user: user.into(), idempotency_key: key.into(), query: query.into() }
}

/// Sends a turn, retrying 503s with the same key like a real client; returns the final answer.
async fn drive<S: Store, C: Copilot>(o: &Orch<S, C>, r: &TurnRequest) -> Result<TurnResponse, TurnError> {
    const RETRIES_MAX: u32 = 200;
    for _ in 0..RETRIES_MAX {
        match o.turn(r).await {
            Err(TurnError::Unavailable { .. }) | Err(TurnError::InFlight) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => return other,
        }
    }
    o.turn(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_turns_on_one_conversation_lose_no_field_and_version_counts_commits() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock.clone()));
    let copilot = Arc::new(ScriptedCopilot::new());
    copilot.set_delay_ms(3);
    let events = Arc::new(Events::default());
    let o = Arc::new(orch(store.clone(), copilot, 1, TurnConfig::default()).with_observer(events.clone()));
    let cid = o.create("alice", "profile").await.unwrap();
    let fields = workflow::workflow("profile").unwrap().required;
    assert_eq!(fields.len(), 10);
    let mut tasks = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let (o, cid) = (o.clone(), cid.clone());
        let q = format!("{f} is value-{i}");
        tasks.push(tokio::spawn(async move { drive(&o, &req(&cid, "alice", &format!("k{i}"), &q)).await }));
    }
    let mut acknowledged = BTreeMap::new();
    for t in tasks {
        let resp = t.await.unwrap().expect("every turn eventually succeeds");
        for x in resp.extracted {
            acknowledged.insert(x.field.unwrap(), x.value.unwrap());
        }
    }
    let fin = store.load_now(&cid).unwrap().state;
    assert_eq!(acknowledged.len(), 10);
    for (f, v) in &acknowledged {
        assert_eq!(fin.collected_data.get(f), Some(v), "acknowledged field {f} lost");
    }
    assert_eq!(fin.version as usize, events.commits(), "version must equal the number of successful commits");
    assert_eq!(fin.version, 10);
    assert_eq!(fin.step, Step::Confirming);
}

#[tokio::test(start_paused = true)]
async fn slow_copilot_past_lease_ttl_late_commit_is_rejected_and_no_acknowledged_field_lost() {
    // Worker A holds a 2000 ms lease without extending it and its Copilot takes 3000 ms;
    // worker B takes the expired lease at 2500 ms and commits. A's commit must be refused.
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock.clone()));
    let slow = Arc::new(ScriptedCopilot::new());
    slow.set_delay_ms(3000);
    let fast = Arc::new(ScriptedCopilot::new());
    let cfg = TurnConfig { lease_ttl_ms: 2000, lease_extend_every_ms: 0, ..TurnConfig::default() };
    let events = Arc::new(Events::default());
    let a = Arc::new(orch(store.clone(), slow, 1, cfg.clone()).with_observer(events.clone()));
    let b = orch(store.clone(), fast, 2, cfg).with_observer(events.clone());
    let cid = a.create("alice", "lead").await.unwrap();

    let (a2, cid2) = (a.clone(), cid.clone());
    let late = tokio::spawn(async move { a2.turn(&req(&cid2, "alice", "ka", "email is a@x.io")).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let on_time = b.turn(&req(&cid, "alice", "kb", "phone is 555")).await.expect("B gets the expired lease");
    assert_eq!(on_time.workflow_state.version, 1);
    let late = late.await.unwrap();
    assert_eq!(late, Err(TurnError::Unavailable { reason: Unavailable::LeaseLost, retry_after_s: 1 }));

    let fin = store.load_now(&cid).unwrap();
    assert_eq!(fin.state.collected_data.get("phone").map(String::as_str), Some("555"), "acknowledged field lost");
    assert!(!fin.state.collected_data.contains_key("email"), "a rejected commit wrote state");
    assert_eq!(fin.state.version, 1);
    assert_eq!(fin.writer_fence, 2);
    let rejected: Vec<_> =
        events.0.lock().unwrap().iter().filter(|e| matches!(e, ServerEvent::CommitRejected { fence: 1, .. })).cloned().collect();
    assert_eq!(rejected.len(), 1);

    // A's client retries with the same key: the in-flight marker was released, so it runs anew.
    let retried = a.turn(&req(&cid, "alice", "ka", "email is a@x.io")).await.unwrap();
    assert!(!retried.replayed);
    assert_eq!(retried.workflow_state.collected_data.len(), 2);
    assert_eq!(retried.workflow_state.version, 2);
}

#[tokio::test(start_paused = true)]
async fn slow_copilot_with_lease_extension_keeps_the_lease_and_the_other_worker_waits() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock.clone()));
    let slow = Arc::new(ScriptedCopilot::new());
    slow.set_delay_ms(3000);
    let cfg = TurnConfig { lease_ttl_ms: 2000, lease_extend_every_ms: 600, acquire_deadline_ms: 5000, ..TurnConfig::default() };
    let a = Arc::new(orch(store.clone(), slow, 1, cfg.clone()));
    let b = orch(store.clone(), Arc::new(ScriptedCopilot::new()), 2, cfg);
    let cid = a.create("alice", "lead").await.unwrap();
    let (a2, cid2) = (a.clone(), cid.clone());
    let first = tokio::spawn(async move { a2.turn(&req(&cid2, "alice", "ka", "email is a@x.io")).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = b.turn(&req(&cid, "alice", "kb", "phone is 555")).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.workflow_state.version, 1);
    assert_eq!(second.workflow_state.version, 2);
    assert_eq!(second.workflow_state.collected_data.len(), 2);
}

#[tokio::test]
async fn same_request_twice_calls_copilot_once_and_replays_the_second() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock.clone()));
    let copilot = Arc::new(ScriptedCopilot::new());
    let o = orch(store.clone(), copilot.clone(), 1, TurnConfig::default());
    let cid = o.create("alice", "lead").await.unwrap();
    let r = req(&cid, "alice", "k1", "email is a@x.io");
    let first = o.turn(&r).await.unwrap();
    let second = o.turn(&r).await.unwrap();
    assert_eq!(copilot.calls(), 1);
    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(second.reply, first.reply);
    assert_eq!(second.workflow_state, first.workflow_state);
}

#[tokio::test]
async fn replay_after_the_state_advanced_returns_the_current_state() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock.clone()));
    let o = orch(store.clone(), Arc::new(ScriptedCopilot::new()), 1, TurnConfig::default());
    let cid = o.create("alice", "lead").await.unwrap();
    let r1 = req(&cid, "alice", "k1", "email is a@x.io");
    o.turn(&r1).await.unwrap();
    o.turn(&req(&cid, "alice", "k2", "phone is 555")).await.unwrap();
    let replay = o.turn(&r1).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.workflow_state.version, 2, "replay must show the current state, not the cached one");
    assert_eq!(replay.workflow_state.collected_data.get("phone").map(String::as_str), Some("555"));
    assert_eq!(replay.turn, 1, "the reply itself is the stored one");
}

#[tokio::test]
async fn same_key_with_a_different_body_is_rejected_as_key_reused() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let o = orch(Arc::new(MemStore::new(clock)), Arc::new(ScriptedCopilot::new()), 1, TurnConfig::default());
    let cid = o.create("alice", "lead").await.unwrap();
    o.turn(&req(&cid, "alice", "k1", "email is a@x.io")).await.unwrap();
    assert_eq!(o.turn(&req(&cid, "alice", "k1", "email is b@x.io")).await, Err(TurnError::KeyReused));
}

#[tokio::test]
async fn two_users_same_idempotency_key_get_isolated_answers() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let copilot = Arc::new(ScriptedCopilot::new());
    let o = orch(Arc::new(MemStore::new(clock)), copilot.clone(), 1, TurnConfig::default());
    let ca = o.create("alice", "lead").await.unwrap();
    let cb = o.create("bob", "lead").await.unwrap();
    let ra = o.turn(&req(&ca, "alice", "same-key", "email is alice@x.io")).await.unwrap();
    let rb = o.turn(&req(&cb, "bob", "same-key", "email is bob@x.io")).await.unwrap();
    assert!(!rb.replayed, "bob must not get alice's cached answer");
    assert_eq!(copilot.calls(), 2);
    assert_eq!(ra.workflow_state.collected_data["email"], "alice@x.io");
    assert_eq!(rb.workflow_state.collected_data["email"], "bob@x.io");
    assert_eq!(rb.conversation_id, cb);
}

#[tokio::test]
async fn another_users_conversation_is_not_found_for_read_and_turn() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let copilot = Arc::new(ScriptedCopilot::new());
    let o = orch(Arc::new(MemStore::new(clock)), copilot.clone(), 1, TurnConfig::default());
    let ca = o.create("alice", "lead").await.unwrap();
    let r = req(&ca, "alice", "k1", "email is alice@x.io");
    o.turn(&r).await.unwrap();
    assert_eq!(o.get("bob", &ca).await, Err(TurnError::NotFound));
    // Same key and body as alice's completed turn: still nothing of alice's comes back.
    assert_eq!(o.turn(&req(&ca, "bob", "k1", "email is alice@x.io")).await, Err(TurnError::NotFound));
    assert_eq!(o.turn(&req(&ca, "bob", "k2", "email is bob@x.io")).await, Err(TurnError::NotFound));
    assert_eq!(o.get("alice", "no-such-conversation").await, Err(TurnError::NotFound));
    assert_eq!(copilot.calls(), 1);
    assert_eq!(o.get("alice", &ca).await.unwrap().collected_data["email"], "alice@x.io");
}

#[tokio::test]
async fn low_confidence_never_sets_a_field_and_four_no_signal_turns_end_in_needs_human() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let o = orch(Arc::new(MemStore::new(clock)), Arc::new(ScriptedCopilot::new()), 1, TurnConfig::default());
    let cid = o.create("alice", "lead").await.unwrap();
    let queries = ["maybe email is a@x.io", "hmm", "maybe phone is 1", "what?"];
    let mut last = None;
    for (i, q) in queries.iter().enumerate() {
        let r = o.turn(&req(&cid, "alice", &format!("k{i}"), q)).await.unwrap();
        assert!(r.workflow_state.collected_data.is_empty(), "low confidence set a field: {r:?}");
        if i < 3 {
            assert_eq!(r.workflow_state.step, Step::Gathering);
            assert_eq!(r.workflow_state.no_signal_streak, i as u32 + 1);
        }
        last = Some(r);
    }
    assert_eq!(last.unwrap().workflow_state.step, Step::NeedsHuman);
}

#[tokio::test]
async fn state_is_loaded_from_the_store_before_the_machine_runs() {
    // Two workers; B advances the conversation; A's next Copilot context must show B's data.
    struct Capturing(Mutex<Vec<String>>);
    impl Copilot for Capturing {
        async fn reply(&self, r: &CopilotRequest) -> Result<CopilotReply, CopilotError> {
            self.0.lock().unwrap().push(r.text.clone());
            Ok(ScriptedCopilot::answer(&r.text))
        }
    }
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock.clone()));
    let cap = Arc::new(Capturing(Mutex::new(Vec::new())));
    let a = orch(store.clone(), cap.clone(), 1, TurnConfig::default());
    let b = orch(store.clone(), Arc::new(ScriptedCopilot::new()), 2, TurnConfig::default());
    let cid = a.create("alice", "lead").await.unwrap();
    a.turn(&req(&cid, "alice", "k1", "email is a@x.io")).await.unwrap();
    b.turn(&req(&cid, "alice", "k2", "phone is 555 [x]")).await.unwrap();
    a.turn(&req(&cid, "alice", "k3", "company is ACME")).await.unwrap();
    let seen = cap.0.lock().unwrap().clone();
    let ctx = orchestrator::context::parse(&seen[1]).unwrap();
    assert_eq!(ctx.collected_data.get("phone").map(String::as_str), Some("555 [x]"));
    assert_eq!(ctx.constraints, vec!["company".to_string()]);
    assert_eq!(ctx.query, "company is ACME");
}

/// A store that is down: every call fails like a dropped Redis connection.
struct DownStore;
impl Store for DownStore {
    async fn create(&self, _: &str, _: &ConversationRecord) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn load(&self, _: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn begin(&self, _: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn commit(&self, _: &CommitArgs<'_>) -> Result<CommitOutcome, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn release(&self, _: &str, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn extend(&self, _: &str, _: &str, _: &str, _: u64) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn admit(&self, _: &str, _: &str, _: u64) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn active(&self, _: &str) -> Result<orchestrator::store::ActiveList, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn dismiss(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn cancel(&self, _: &orchestrator::store::CancelArgs<'_>) -> Result<orchestrator::store::CancelOutcome, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn outbox_intend(&self, _: &str, _: u64) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn outbox_claim(&self, _: usize, _: u64) -> Result<Vec<orchestrator::store::OutboxEntry>, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn outbox_done(&self, _: &str) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn outbox_later(&self, _: &str, _: u64) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
}

/// A `MemStore` whose commits misbehave: `apply` says whether a commit reaches the store at
/// all, `lose(args)` whether its answer is then replaced by a timeout.
struct FlakyCommit<F> {
    inner: Arc<MemStore>,
    apply: bool,
    lose: F,
}
impl<F: Fn(&CommitArgs<'_>) -> bool + Send + Sync + 'static> Store for FlakyCommit<F> {
    async fn create(&self, c: &str, r: &ConversationRecord) -> Result<bool, StoreError> {
        self.inner.create(c, r).await
    }
    async fn load(&self, c: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.inner.load(c).await
    }
    async fn begin(&self, a: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        self.inner.begin(a).await
    }
    async fn commit(&self, a: &CommitArgs<'_>) -> Result<CommitOutcome, StoreError> {
        let r = if self.apply { self.inner.commit(a).await } else { Ok(CommitOutcome::Committed) };
        if (self.lose)(a) {
            return Err(StoreError::Unavailable("timeout: no answer".into()));
        }
        r
    }
    async fn release(&self, c: &str, t: &str, k: &str) -> Result<bool, StoreError> {
        self.inner.release(c, t, k).await
    }
    async fn extend(&self, c: &str, t: &str, k: &str, ms: u64) -> Result<bool, StoreError> {
        self.inner.extend(c, t, k, ms).await
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
    async fn cancel(&self, a: &orchestrator::store::CancelArgs<'_>) -> Result<orchestrator::store::CancelOutcome, StoreError> {
        self.inner.cancel(a).await
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

/// A store whose commit fails once the conversation exists: the lease must be released.
fn commit_fails(mem: Arc<MemStore>) -> FlakyCommit<impl Fn(&CommitArgs<'_>) -> bool + Send + Sync + 'static> {
    FlakyCommit { inner: mem, apply: false, lose: |_: &CommitArgs<'_>| true }
}

#[tokio::test]
async fn store_unavailable_is_503_with_retry_after_never_500() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let o = orch(DownStore, Arc::new(ScriptedCopilot::new()), 1, TurnConfig::default());
    let unavailable = TurnError::Unavailable { reason: Unavailable::Store, retry_after_s: 1 };
    assert_eq!(o.create("alice", "lead").await, Err(unavailable.clone()));
    assert_eq!(o.turn(&req("abc", "alice", "k", "email is a@x.io")).await, Err(unavailable.clone()));
    assert_eq!(o.get("alice", "abc").await, Err(unavailable.clone()));
    let (base, _server) = spawn_server(DownStore, Arc::new(ScriptedCopilot::new())).await;
    let (status, headers, _) = http(&base, "POST", "/v1/conversations/abc/turns", Some("demo"), Some("k1"), r#"{"query":"hi"}"#).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));

    // Commit failing after Begin: 503, and the lease and in-flight marker are released so the
    // retry runs at once instead of waiting out the TTL.
    let mem = Arc::new(MemStore::new(clock.clone()));
    let failing = orch(commit_fails(mem.clone()), Arc::new(ScriptedCopilot::new()), 1, TurnConfig::default());
    let cid = failing.create("alice", "lead").await.unwrap();
    assert_eq!(failing.turn(&req(&cid, "alice", "k", "email is a@x.io")).await, Err(unavailable));
    let healthy = orch(mem.clone(), Arc::new(ScriptedCopilot::new()), 2, TurnConfig::default());
    let r = healthy.turn(&req(&cid, "alice", "k", "email is a@x.io")).await.unwrap();
    assert!(!r.replayed);
    assert_eq!(r.workflow_state.version, 1);
}

// ---- HTTP on loopback ------------------------------------------------------------------

async fn spawn_server<S: Store, C: Copilot>(store: S, copilot: Arc<C>) -> (String, tokio::task::JoinHandle<()>) {
    let cfg = TurnConfig { acquire_deadline_ms: 50, ..TurnConfig::default() };
    let o = orch(store, copilot, 7, cfg);
    let tokens = BTreeMap::from([("demo".to_string(), "alice".to_string()), ("other".to_string(), "bob".to_string())]);
    let api = Arc::new(Api { orchestrator: o, tokens });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let h = tokio::spawn(serve(listener, router(api)));
    (base, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_every_status_in_the_design_on_loopback() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let copilot = Arc::new(ScriptedCopilot::new());
    let store = Arc::new(MemStore::new(clock));
    let (base, _server) = spawn_server(store.clone(), copilot.clone()).await;

    assert_eq!(http(&base, "GET", "/healthz", None, None, "").await.0, 200);
    // 401: no token, unknown token.
    assert_eq!(http(&base, "POST", "/v1/conversations", None, None, r#"{"workflow":"lead"}"#).await.0, 401);
    assert_eq!(http(&base, "POST", "/v1/conversations", Some("nope"), None, r#"{"workflow":"lead"}"#).await.0, 401);
    // 400: malformed body, unknown workflow.
    assert_eq!(http(&base, "POST", "/v1/conversations", Some("demo"), None, "{").await.0, 400);
    assert_eq!(http(&base, "POST", "/v1/conversations", Some("demo"), None, r#"{"workflow":"nope"}"#).await.0, 400);
    // 201.
    let (s, _, body) = http(&base, "POST", "/v1/conversations", Some("demo"), None, r#"{"workflow":"lead"}"#).await;
    assert_eq!(s, 201);
    let id = body["id"].as_str().unwrap().to_string();
    let turns = format!("/v1/conversations/{id}/turns");
    // 200, then a replay.
    let (s, _, first) = http(&base, "POST", &turns, Some("demo"), Some("k1"), r#"{"query":"email is a@x.io"}"#).await;
    assert_eq!(s, 200);
    assert_eq!(first["replayed"], false);
    assert_eq!(first["workflowState"]["collectedData"]["email"], "a@x.io");
    let (s, _, again) = http(&base, "POST", &turns, Some("demo"), Some("k1"), r#"{"query":"email is a@x.io"}"#).await;
    assert_eq!((s, again["replayed"].clone()), (200, serde_json::Value::Bool(true)));
    assert_eq!(http(&base, "GET", &format!("/v1/conversations/{id}"), Some("demo"), None, "").await.0, 200);
    // 400: no key, bad key, wrong body shape.
    assert_eq!(http(&base, "POST", &turns, Some("demo"), None, r#"{"query":"x"}"#).await.0, 400);
    assert_eq!(http(&base, "POST", &turns, Some("demo"), Some("bad key!"), r#"{"query":"x"}"#).await.0, 400);
    assert_eq!(http(&base, "POST", &turns, Some("demo"), Some("k9"), r#"{"q":"x"}"#).await.0, 400);
    // 400: a JSON array in the fields' order is not the object (serde's derive would take it).
    assert_eq!(http(&base, "POST", &turns, Some("demo"), Some("k10"), r#"["yes"]"#).await.0, 400);
    assert_eq!(http(&base, "POST", "/v1/conversations", Some("demo"), None, r#"["lead"]"#).await.0, 400);
    // 404: another user's conversation, unknown conversation.
    assert_eq!(http(&base, "GET", &format!("/v1/conversations/{id}"), Some("other"), None, "").await.0, 404);
    assert_eq!(http(&base, "POST", &turns, Some("other"), Some("k1"), r#"{"query":"email is a@x.io"}"#).await.0, 404);
    assert_eq!(http(&base, "POST", "/v1/conversations/feedbeef/turns", Some("demo"), Some("k1"), r#"{"query":"x"}"#).await.0, 404);
    // 422: same key, different body.
    assert_eq!(http(&base, "POST", &turns, Some("demo"), Some("k1"), r#"{"query":"email is b@x.io"}"#).await.0, 422);
    // 413: body over the bound.
    let big = Bytes::from(vec![b'a'; REQUEST_BODY_BYTES_MAX + 1]);
    assert_eq!(http_bytes(&base, "POST", &turns, Some("demo"), Some("k8"), big).await.0, 413);
    // 409 and 503: a slow Copilot; the same key again is in flight, another key finds the
    // lease busy past the acquire deadline (50 ms here).
    copilot.set_delay_ms(1_000);
    let fence_before = store.fence_now(&id);
    let (b2, t2) = (base.clone(), turns.clone());
    let slow = tokio::spawn(async move { http(&b2, "POST", &t2, Some("demo"), Some("k2"), r#"{"query":"phone is 1"}"#).await });
    // Wait (bounded) until the slow turn holds the lease, whatever the machine's load.
    for _ in 0..500 {
        if store.fence_now(&id) > fence_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(store.fence_now(&id), fence_before + 1, "the slow turn never took the lease");
    assert_eq!(http(&base, "POST", &turns, Some("demo"), Some("k2"), r#"{"query":"phone is 1"}"#).await.0, 409);
    let (s, h, _) = http(&base, "POST", &turns, Some("demo"), Some("k3"), r#"{"query":"company is A"}"#).await;
    assert_eq!(s, 503);
    assert!(h.contains_key("retry-after"));
    assert_eq!(slow.await.unwrap().0, 200);
    assert!(!http(&base, "GET", "/healthz", None, None, "").await.1.contains_key("date"), "no Date header");
}

#[tokio::test]
async fn a_succeeded_commit_whose_answer_was_lost_is_submitted_once_on_the_retry() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    // The commit that makes the conversation `succeeded` applies, but its answer is lost, once.
    let lost_once = std::sync::atomic::AtomicBool::new(false);
    let lose =
        move |a: &CommitArgs<'_>| a.record.state.step == Step::Succeeded && !lost_once.swap(true, std::sync::atomic::Ordering::SeqCst);
    let store = FlakyCommit { inner: Arc::new(MemStore::new(clock.clone())), apply: true, lose };
    let o = orch(store, Arc::new(ScriptedCopilot::new()), 1, TurnConfig::default());
    let cid = o.create("alice", "lead").await.unwrap();
    for (i, q) in ["email is a@x.io", "phone is 555", "company is ACME"].iter().enumerate() {
        o.turn(&req(&cid, "alice", &format!("k{i}"), q)).await.unwrap();
    }
    let yes = req(&cid, "alice", "k3", "yes");
    assert!(matches!(o.turn(&yes).await, Err(TurnError::Unavailable { .. })), "the answer of the applied commit is lost");
    assert!(o.effects.accepted().is_empty(), "nothing was submitted by the turn that lost its answer");
    let retry = o.turn(&yes).await.unwrap();
    assert!(retry.replayed && retry.workflow_state.step == Step::Succeeded);
    assert_eq!(o.effects.accepted().len(), 1, "the retry's replay submits the succeeded conversation");
    o.turn(&yes).await.unwrap();
    assert_eq!(o.effects.accepted().len(), 1, "further replays are de-duplicated by the sink");
}

/// Writes one request by hand on a fresh connection (`Connection: close`), as clients that do
/// not use an HTTP library send them.
async fn raw_request(base: &str, path: &str, key: &str, body: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut io = tokio::net::TcpStream::connect(base).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {base}\r\nauthorization: Bearer demo\r\nidempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    io.write_all(req.as_bytes()).await.unwrap();
    io
}

/// The simulation's hang-up users (regressions `calm` seeds 109 and 11): a request whose client
/// shuts down its sending side is still answered, and a turn whose client hangs up before the
/// answer still finishes — it commits and keeps its answer for the retry under the same key,
/// instead of holding the lease and the key's in-flight marker until the lease TTL runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_or_hangs_up_mid_turn_strands_no_lease_and_loses_no_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let copilot = Arc::new(ScriptedCopilot::new());
    let store = Arc::new(MemStore::new(clock));
    let (base, _server) = spawn_server(store.clone(), copilot.clone()).await;
    let (_, _, body) = http(&base, "POST", "/v1/conversations", Some("demo"), None, r#"{"workflow":"lead"}"#).await;
    let turns = format!("/v1/conversations/{}/turns", body["id"].as_str().unwrap());
    copilot.set_delay_ms(200);

    // Half-closed after the request: the answer still comes.
    let mut io = raw_request(&base, &turns, "k1", r#"{"query":"email is a@x.io"}"#).await;
    io.shutdown().await.unwrap();
    let mut answer = Vec::new();
    io.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "a half-closed request got {answer:?}");

    // Hung up while the turn waits on Copilot: the same key, sent again, gets the answer the
    // abandoned request's turn committed (a replay), after at most a 409 while it finishes.
    let io = raw_request(&base, &turns, "k2", r#"{"query":"phone is 555"}"#).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(io);
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..200 {
        let (s, _, b) = http(&base, "POST", &turns, Some("demo"), Some("k2"), r#"{"query":"phone is 555"}"#).await;
        last = (s, b);
        if s != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last.0, 200, "{last:?}");
    assert_eq!(last.1["replayed"], true, "the hung-up turn's answer was lost (or its lease held until the TTL): {last:?}");
    assert_eq!(last.1["workflowState"]["collectedData"]["phone"], "555");
}

/// Regression (embedded seed 6508): the acquire deadline was measured on the store's clock, so
/// a clock that stepped back (or stood still) kept a turn waiting for a busy lease far past the
/// deadline. It is a duration now, on the monotonic timer.
#[tokio::test(start_paused = true)]
async fn the_acquire_deadline_holds_whatever_the_wall_clock_does() {
    let clock = Arc::new(ManualClock::new(10_000_000));
    let store = Arc::new(MemStore::new(clock.clone()));
    let cfg = TurnConfig { acquire_deadline_ms: 300, ..TurnConfig::default() };
    let o = orch(store.clone(), Arc::new(ScriptedCopilot::new()), 1, cfg);
    let cid = o.create("alice", "lead").await.unwrap();
    // Someone holds the lease; the wall clock then stands still, and later steps back an hour.
    let held = BeginArgs { cid: &cid, user: "alice", idem_key: "idem-x", fingerprint: "f", owner_token: "other", lease_ttl_ms: 6_000 };
    assert!(matches!(store.begin(&held).await.unwrap(), BeginOutcome::Acquired { .. }));
    let started = tokio::time::Instant::now();
    let r = req(&cid, "alice", "k1", "email is a@x.io");
    let turn = o.turn(&r);
    let stepping_back = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        clock.set_ms(10_000_000 - 3_600_000);
        std::future::pending::<()>().await
    };
    let outcome = tokio::select! {
        biased;
        r = tokio::time::timeout(Duration::from_secs(60), turn) => r,
        _ = stepping_back => unreachable!(),
    };
    let outcome = outcome.expect("the turn waited past the acquire deadline (60 s and counting)");
    assert!(matches!(outcome, Err(TurnError::Unavailable { reason: Unavailable::LockBusy, .. })), "{outcome:?}");
    assert!(started.elapsed() <= Duration::from_millis(300 + 100), "waited {:?}", started.elapsed());
}

/// The cap on unfinished conversations per user: past it, a create is refused with
/// `TooManyConversations` (HTTP 429) and nothing is created; a conversation that finishes frees
/// its place; a count left behind by a create that never happened is dropped once it is older
/// than the grace, and the cap is per user.
#[tokio::test(start_paused = true)]
async fn a_user_past_the_cap_on_unfinished_conversations_is_refused_until_one_finishes() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock));
    let config = TurnConfig { active_conversations_per_user_max: 2, ..TurnConfig::default() };
    let o = orch(store.clone(), Arc::new(ScriptedCopilot::new()), 7, config);
    let c1 = o.create("alice", "lead").await.unwrap();
    let _c2 = o.create("alice", "lead").await.unwrap();
    let before = store.conversations();
    assert!(matches!(o.create("alice", "lead").await, Err(TurnError::TooManyConversations { max: 2 })));
    assert_eq!(store.conversations(), before, "a refused create made a conversation");
    o.create("bob", "lead").await.expect("the cap is per user");

    let done = o.turn(&req(&c1, "alice", "k1", "cancel")).await.unwrap();
    assert_eq!(done.workflow_state.step, Step::Cancelled);
    let c3 = o.create("alice", "lead").await.expect("a finished conversation frees its place");

    // A count whose conversation was never created (its create failed after the count) holds
    // a place only for the grace period.
    o.turn(&req(&c3, "alice", "k2", "cancel")).await.unwrap();
    assert!(store.admit_now("alice", "never-created", 2));
    assert!(matches!(o.create("alice", "lead").await, Err(TurnError::TooManyConversations { .. })));
    tokio::time::advance(Duration::from_millis(orchestrator::turn::ADMIT_GRACE_MS)).await;
    o.create("alice", "lead").await.expect("the stale count was reconciled away");
}

/// Cancel against a slow Copilot: with a 3 s Copilot call in flight and the lease held, a cancel
/// answers within 100 ms of (virtual) time, the turn in flight never commits and answers that
/// the conversation was cancelled; a second cancel changes nothing; the user's retry of the
/// turn's key finds the conversation cancelled.
#[tokio::test(start_paused = true)]
async fn a_cancel_wins_against_a_turn_waiting_on_a_slow_copilot() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock));
    let copilot = Arc::new(ScriptedCopilot::new());
    let events = Arc::new(Events::default());
    let o = Arc::new(orch(store.clone(), copilot.clone(), 3, TurnConfig::default()).with_observer(events.clone()));
    let cid = o.create("alice", "lead").await.unwrap();
    o.turn(&req(&cid, "alice", "k0", "email is a@x.io")).await.unwrap();
    copilot.set_delay_ms(3_000);
    let slow = tokio::spawn({
        let (o, cid) = (o.clone(), cid.clone());
        async move { o.turn(&req(&cid, "alice", "k1", "phone is 555 0100")).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(o.cancel("bob", &cid).await.unwrap_err(), TurnError::NotFound, "only the owner cancels");
    let t = tokio::time::Instant::now();
    let c = o.cancel("alice", &cid).await.unwrap();
    let took = t.elapsed();
    assert!(took <= Duration::from_millis(100), "the cancel waited {took:?}");
    assert_eq!((c.result, c.workflow_state.step, c.workflow_state.version), (CancelResult::Cancelled, Step::Cancelled, 2));
    assert_eq!(c.workflow_state.collected_data.get("email").map(String::as_str), Some("a@x.io"), "a cancel keeps what was said");
    match slow.await.unwrap() {
        Err(TurnError::Cancelled { state }) => assert_eq!(state.step, Step::Cancelled),
        other => panic!("the turn in flight should learn of the cancel: {other:?}"),
    }
    assert_eq!(events.commits_of(&cid), 1, "the turn in flight committed");
    let final_state = o.get("alice", &cid).await.unwrap();
    assert_eq!((final_state.step, final_state.version, final_state.collected_data.get("phone")), (Step::Cancelled, 2, None));
    let again = o.cancel("alice", &cid).await.unwrap();
    assert_eq!((again.result, again.workflow_state.version), (CancelResult::AlreadyFinished, 2));
    copilot.set_delay_ms(0);
    let retry = o.turn(&req(&cid, "alice", "k1", "phone is 555 0100")).await.unwrap();
    assert_eq!((retry.workflow_state.step, retry.workflow_state.collected_data.get("phone")), (Step::Cancelled, None));
}

/// A cancel of a conversation that already succeeded changes nothing, and its submission stands.
#[tokio::test(start_paused = true)]
async fn a_cancel_after_success_changes_nothing() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let effects = Arc::new(RecordingEffects::new());
    let o = Orchestrator::new(
        Arc::new(MemStore::new(clock)),
        Arc::new(ScriptedCopilot::new()),
        effects.clone(),
        SeededRng::from_seed(4),
        TurnConfig::default(),
    );
    let cid = o.create("alice", "lead").await.unwrap();
    for (i, q) in ["email is a@x.io", "phone is 555", "company is ACME", "yes"].iter().enumerate() {
        o.turn(&req(&cid, "alice", &format!("k{i}"), q)).await.unwrap();
    }
    let c = o.cancel("alice", &cid).await.unwrap();
    assert_eq!((c.result, c.workflow_state.step), (CancelResult::AlreadyFinished, Step::Succeeded));
    assert_eq!(o.get("alice", &cid).await.unwrap(), c.workflow_state);
    assert_eq!(effects.accepted().len(), 1);
}

/// A sink that is down for its first `down` attempts, then de-duplicates like a real one.
struct Flaky {
    down: u64,
    attempts: Mutex<u64>,
    inner: RecordingEffects,
}
impl Effects for Flaky {
    async fn submit(
        &self,
        s: &orchestrator::effects::Submission,
    ) -> Result<orchestrator::effects::SubmitOutcome, orchestrator::effects::EffectsError> {
        let n = {
            let mut a = self.attempts.lock().unwrap();
            *a += 1;
            *a
        };
        if n <= self.down {
            return Err(orchestrator::effects::EffectsError::Status(503));
        }
        self.inner.submit(s).await
    }
}

/// The outbox relay against a sink that is down: the turn that made the conversation succeed
/// answers (its delivery failed), the submission stays pending, and the relay retries it with
/// jittered backoff until the sink takes it, once; then nothing is left to deliver.
#[tokio::test(start_paused = true)]
async fn the_relay_delivers_a_submission_the_sink_refused_once_it_is_back() {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = Arc::new(MemStore::new(clock));
    let sink = Arc::new(Flaky { down: 3, attempts: Mutex::new(0), inner: RecordingEffects::new() });
    let events = Arc::new(Events::default());
    let o =
        Orchestrator::new(store.clone(), Arc::new(ScriptedCopilot::new()), sink.clone(), SeededRng::from_seed(8), TurnConfig::default())
            .with_observer(events.clone());
    let cid = o.create("alice", "lead").await.unwrap();
    for (i, q) in ["email is a@x.io", "phone is 555", "company is ACME", "yes"].iter().enumerate() {
        o.turn(&req(&cid, "alice", &format!("k{i}"), q)).await.unwrap();
    }
    assert_eq!(sink.inner.accepted().len(), 0, "the sink was down");
    let mut passes = 0;
    while sink.inner.accepted().is_empty() {
        passes += 1;
        assert!(passes < 200, "the relay never delivered");
        tokio::time::advance(Duration::from_millis(500)).await;
        o.relay_once().await;
    }
    assert_eq!(*sink.attempts.lock().unwrap(), 4, "three refusals, then one delivery");
    let relayed = events.0.lock().unwrap().iter().filter(|e| matches!(e, ServerEvent::Submitted { relayed: true, .. })).count();
    assert_eq!(relayed, 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(o.relay_once().await, 0, "nothing left to deliver");
    assert_eq!(sink.inner.accepted()[0].data.get("company").map(String::as_str), Some("ACME"));
}
