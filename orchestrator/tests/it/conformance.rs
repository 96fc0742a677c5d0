//! The store conformance suite: every test is written once against the `Store` trait and run
//! against `MemStore` (virtual clock) and `RedisStore` on a real `redis-server` (real time,
//! short TTLs). A behaviour that differs between the two backends fails here.

use orchestrator::store::{
    keys, BeginArgs, BeginOutcome, CancelArgs, CancelOutcome, CancelWrite, CommitArgs, CommitOutcome, ConversationRecord, RedisConfig,
    RedisStore,
};
use orchestrator::workflow::{workflow, WorkflowState};
use orchestrator::{Clock, ManualClock, MemStore, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Long enough that a loaded machine does not stall past it between two steps of a test.
const TTL_MS: u64 = 1_000;
const IDEM_TTL_MS: u64 = 60_000;

pub trait Fixture {
    type S: Store;
    fn store(&self) -> &Self::S;
    /// Lets `ms` pass on the store's clock.
    async fn pass_ms(&self, ms: u64);
}

struct Mem {
    store: MemStore,
    clock: Arc<ManualClock>,
}

impl Fixture for Mem {
    type S = MemStore;
    fn store(&self) -> &MemStore {
        &self.store
    }
    async fn pass_ms(&self, ms: u64) {
        self.clock.advance_ms(ms);
    }
}

fn mem() -> Mem {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    Mem { store: MemStore::new(dyn_clock), clock }
}

struct Redis {
    store: RedisStore,
    _server: crate::support::TestRedis,
}

impl Fixture for Redis {
    type S = RedisStore;
    fn store(&self) -> &RedisStore {
        &self.store
    }
    async fn pass_ms(&self, ms: u64) {
        // Redis expires on its own clock: real time, plus a margin for scheduling.
        tokio::time::sleep(Duration::from_millis(ms + 30)).await;
    }
}

fn redis() -> Option<Redis> {
    let server = crate::support::TestRedis::get()?;
    let store = RedisStore::open(&server.url(), RedisConfig::default(), 1).unwrap();
    Some(Redis { store, _server: server })
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A conversation id unique in this process (so a shared `REDIS_URL` server is fine).
fn fresh_cid() -> String {
    format!("conf-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

fn record(owner: &str) -> ConversationRecord {
    ConversationRecord { owner: owner.into(), state: WorkflowState::new(workflow("lead").unwrap()), writer_fence: 0 }
}

async fn created<F: Fixture>(f: &F, owner: &str) -> String {
    let cid = fresh_cid();
    assert!(f.store().create(&cid, &record(owner)).await.unwrap());
    cid
}

async fn begin<F: Fixture>(f: &F, cid: &str, user: &str, key: &str, fp: &str, token: &str) -> BeginOutcome {
    let idem = keys::idem(cid, user, key);
    let args = BeginArgs { cid, user, idem_key: &idem, fingerprint: fp, owner_token: token, lease_ttl_ms: TTL_MS };
    f.store().begin(&args).await.unwrap()
}

async fn commit<F: Fixture>(
    f: &F,
    cid: &str,
    user: &str,
    key: &str,
    fp: &str,
    token: &str,
    fence: u64,
    loaded: &ConversationRecord,
    field: &str,
) -> CommitOutcome {
    let idem = keys::idem(cid, user, key);
    let mut next = loaded.clone();
    next.state.version += 1;
    next.state.collected_data.insert(field.into(), format!("v{fence}"));
    next.writer_fence = fence;
    let response = format!("{{\"key\":\"{key}\",\"fence\":{fence}}}");
    let args = CommitArgs {
        cid,
        owner_token: token,
        fence,
        record: &next,
        idem_key: &idem,
        fingerprint: fp,
        response: &response,
        idempotency_ttl_ms: IDEM_TTL_MS,
        retain_ms: 0,
        pending: None,
    };
    f.store().commit(&args).await.unwrap()
}

fn acquired(o: BeginOutcome) -> (u64, ConversationRecord) {
    match o {
        BeginOutcome::Acquired { fence, record } => (fence, record),
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn create_is_once_and_load_round_trips<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    assert!(!f.store().create(&cid, &record("bob")).await.unwrap(), "create must not overwrite");
    assert_eq!(f.store().load(&cid).await.unwrap(), Some(record("alice")));
    assert_eq!(f.store().load("conf-no-such").await.unwrap(), None);
}

async fn begin_commit_fences_grow_and_versions_count_commits<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let mut last_fence = 0;
    for i in 0..3 {
        let key = format!("k{i}");
        let (fence, loaded) = acquired(begin(f, &cid, "alice", &key, "fp", "tok").await);
        assert!(fence > last_fence, "fences strictly increase");
        last_fence = fence;
        assert_eq!(loaded.state.version, i);
        assert_eq!(commit(f, &cid, "alice", &key, "fp", "tok", fence, &loaded, &format!("f{i}")).await, CommitOutcome::Committed);
    }
    let fin = f.store().load(&cid).await.unwrap().unwrap();
    assert_eq!(fin.state.version, 3);
    assert_eq!(fin.writer_fence, last_fence);
    assert_eq!(fin.state.collected_data.len(), 3);
}

async fn completed_key_replays_its_response_with_the_current_state<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (fence, loaded) = acquired(begin(f, &cid, "alice", "k1", "fp1", "t1").await);
    commit(f, &cid, "alice", "k1", "fp1", "t1", fence, &loaded, "email").await;
    let (fence2, loaded2) = acquired(begin(f, &cid, "alice", "k2", "fp2", "t2").await);
    commit(f, &cid, "alice", "k2", "fp2", "t2", fence2, &loaded2, "phone").await;
    match begin(f, &cid, "alice", "k1", "fp1", "t3").await {
        BeginOutcome::Replay { response, record } => {
            assert_eq!(response, format!("{{\"key\":\"k1\",\"fence\":{fence}}}"));
            assert_eq!(record.state.version, 2, "replay carries the current state");
        }
        other => panic!("expected Replay, got {other:?}"),
    }
    // A replay takes no lease: a new key gets in at once.
    acquired(begin(f, &cid, "alice", "k3", "fp3", "t4").await);
}

async fn in_flight_key_is_in_flight_and_other_keys_are_busy<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    acquired(begin(f, &cid, "alice", "k1", "fp", "t1").await);
    assert_eq!(begin(f, &cid, "alice", "k1", "fp", "t2").await, BeginOutcome::InFlight);
    match begin(f, &cid, "alice", "k2", "fp", "t3").await {
        BeginOutcome::Busy { retry_in_ms } => assert!(retry_in_ms > 0 && retry_in_ms <= TTL_MS, "{retry_in_ms}"),
        other => panic!("expected Busy, got {other:?}"),
    }
}

async fn key_reused_with_another_fingerprint_is_rejected<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (fence, loaded) = acquired(begin(f, &cid, "alice", "k1", "fp-a", "t1").await);
    assert_eq!(begin(f, &cid, "alice", "k1", "fp-b", "t2").await, BeginOutcome::KeyReused, "while in flight");
    commit(f, &cid, "alice", "k1", "fp-a", "t1", fence, &loaded, "email").await;
    assert_eq!(begin(f, &cid, "alice", "k1", "fp-b", "t3").await, BeginOutcome::KeyReused, "once completed");
}

async fn commit_under_a_superseded_fence_is_rejected_and_writes_nothing<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (fa, la) = acquired(begin(f, &cid, "alice", "ka", "fp", "ta").await);
    f.pass_ms(TTL_MS).await;
    let (fb, lb) = acquired(begin(f, &cid, "alice", "kb", "fp", "tb").await);
    assert!(fb > fa);
    assert_eq!(commit(f, &cid, "alice", "ka", "fp", "ta", fa, &la, "email").await, CommitOutcome::Superseded);
    assert_eq!(f.store().load(&cid).await.unwrap().unwrap().state.version, 0, "superseded commit wrote");
    assert_eq!(commit(f, &cid, "alice", "kb", "fp", "tb", fb, &lb, "phone").await, CommitOutcome::Committed);
    // Even after b released the lock, a's stale fence stays rejected.
    assert_eq!(commit(f, &cid, "alice", "ka", "fp", "ta", fa, &la, "email").await, CommitOutcome::Superseded);
    let fin = f.store().load(&cid).await.unwrap().unwrap();
    assert_eq!((fin.state.version, fin.writer_fence), (1, fb));
    assert!(!fin.state.collected_data.contains_key("email"));
}

async fn commit_after_own_expiry_applies_when_no_later_lease_was_taken<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (fa, la) = acquired(begin(f, &cid, "alice", "ka", "fp", "ta").await);
    f.pass_ms(TTL_MS).await;
    assert_eq!(commit(f, &cid, "alice", "ka", "fp", "ta", fa, &la, "email").await, CommitOutcome::Committed);
    match begin(f, &cid, "alice", "ka", "fp", "tz").await {
        BeginOutcome::Replay { .. } => {}
        other => panic!("the committed key must replay, got {other:?}"),
    }
}

async fn expiry_lets_the_next_acquirer_in_and_frees_the_key<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (f1, _) = acquired(begin(f, &cid, "alice", "k1", "fp", "t1").await);
    f.pass_ms(TTL_MS).await;
    // The in-flight marker expired with the lease: the same key runs anew, not 409.
    let (f2, _) = acquired(begin(f, &cid, "alice", "k1", "fp", "t2").await);
    assert_eq!(f2, f1 + 1);
}

async fn extend_and_release_only_by_the_owner<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let idem = keys::idem(&cid, "alice", "k1");
    acquired(begin(f, &cid, "alice", "k1", "fp", "owner").await);
    assert!(!f.store().extend(&cid, "intruder", &idem, TTL_MS).await.unwrap());
    assert!(!f.store().release(&cid, "intruder", &idem).await.unwrap());
    f.pass_ms(TTL_MS / 2).await;
    assert!(f.store().extend(&cid, "owner", &idem, TTL_MS).await.unwrap());
    f.pass_ms(TTL_MS * 2 / 3).await;
    // Past the original TTL, but extended: still held, the key still in flight.
    assert!(matches!(begin(f, &cid, "alice", "k2", "fp", "t2").await, BeginOutcome::Busy { .. }));
    assert_eq!(begin(f, &cid, "alice", "k1", "fp", "t3").await, BeginOutcome::InFlight);
    assert!(f.store().release(&cid, "owner", &idem).await.unwrap());
    assert!(!f.store().release(&cid, "owner", &idem).await.unwrap(), "second release is a no-op");
    // Released: the lease is free and the key is no longer in flight.
    acquired(begin(f, &cid, "alice", "k1", "fp", "t4").await);
}

async fn expired_owner_cannot_extend<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let idem = keys::idem(&cid, "alice", "k1");
    acquired(begin(f, &cid, "alice", "k1", "fp", "owner").await);
    f.pass_ms(TTL_MS).await;
    assert!(!f.store().extend(&cid, "owner", &idem, TTL_MS).await.unwrap());
}

async fn users_are_scoped<F: Fixture>(f: &F) {
    let ca = created(f, "alice").await;
    let cb = created(f, "bob").await;
    assert_eq!(begin(f, &ca, "bob", "k1", "fp", "t1").await, BeginOutcome::NotFound, "bob on alice's conversation");
    assert_eq!(begin(f, "conf-missing", "bob", "k1", "fp", "t1").await, BeginOutcome::NotFound);
    let (fa, la) = acquired(begin(f, &ca, "alice", "same", "fp", "t2").await);
    commit(f, &ca, "alice", "same", "fp", "t2", fa, &la, "email").await;
    // Same key, same fingerprint, other user and conversation: a fresh turn, not a replay.
    acquired(begin(f, &cb, "bob", "same", "fp", "t3").await);
    // And bob still cannot replay alice's completed key on her conversation.
    assert_eq!(begin(f, &ca, "bob", "same", "fp", "t4").await, BeginOutcome::NotFound);
}

async fn a_finished_conversation_is_gone_after_its_retention<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (fence, loaded) = acquired(begin(f, &cid, "alice", "k1", "fp1", "t1").await);
    let idem = keys::idem(&cid, "alice", "k1");
    let mut next = loaded.clone();
    next.state.version += 1;
    next.state.step = orchestrator::workflow::Step::Cancelled;
    next.writer_fence = fence;
    let args = CommitArgs {
        cid: &cid,
        owner_token: "t1",
        fence,
        record: &next,
        idem_key: &idem,
        fingerprint: "fp1",
        response: "{}",
        idempotency_ttl_ms: IDEM_TTL_MS,
        retain_ms: TTL_MS,
        pending: None,
    };
    assert_eq!(f.store().commit(&args).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(f.store().load(&cid).await.unwrap(), Some(next), "kept during its retention");
    f.pass_ms(TTL_MS + 1).await;
    assert_eq!(f.store().load(&cid).await.unwrap(), None, "gone after it");
    assert_eq!(begin(f, &cid, "alice", "k2", "fp2", "t2").await, BeginOutcome::NotFound);
}

async fn admission_counts_each_users_unfinished_conversations_up_to_the_cap<F: Fixture>(f: &F) {
    // Users of their own (the Redis server is shared by every test).
    let (alice, bob) = (format!("alice-{}", fresh_cid()), format!("bob-{}", fresh_cid()));
    let s = f.store();
    assert!(s.admit(&alice, "c1", 2).await.unwrap());
    f.pass_ms(5).await;
    assert!(s.admit(&alice, "c2", 2).await.unwrap());
    assert!(!s.admit(&alice, "c3", 2).await.unwrap(), "a third past a cap of 2");
    assert!(s.admit(&alice, "c1", 2).await.unwrap(), "one already counted is admitted again");
    assert!(s.admit(&bob, "c3", 2).await.unwrap(), "the cap is per user");
    let listed = s.active(&alice).await.unwrap();
    let mut cids: Vec<&str> = listed.entries.iter().map(|(c, _)| c.as_str()).collect();
    cids.sort();
    assert_eq!(cids, ["c1", "c2"]);
    let at = |c: &str| listed.entries.iter().find(|(x, _)| x == c).unwrap().1;
    assert!(at("c1") <= at("c2") && at("c2") <= listed.now_ms && listed.now_ms - at("c1") < 60_000, "{listed:?}");
    s.dismiss(&alice, "c1").await.unwrap();
    s.dismiss(&alice, "never-counted").await.unwrap();
    assert!(s.admit(&alice, "c3", 2).await.unwrap(), "a dismissed one frees its place");
    assert!(!s.admit(&alice, "c4", 2).await.unwrap());
    assert_eq!(s.active(&format!("nobody-{}", fresh_cid())).await.unwrap().entries, vec![]);
}

async fn cancel<F: Fixture>(f: &F, cid: &str, user: &str, write: Option<CancelWrite<'_>>) -> CancelOutcome {
    f.store().cancel(&CancelArgs { cid, user, write }).await.unwrap()
}

fn changed(o: CancelOutcome) -> (ConversationRecord, String, u64) {
    match o {
        CancelOutcome::Changed { record, seen, fence } => (record, seen, fence),
        other => panic!("expected Changed, got {other:?}"),
    }
}

fn cancelled_from(r: &ConversationRecord, fence: u64) -> ConversationRecord {
    let mut next = r.clone();
    next.state.step = orchestrator::workflow::Step::Cancelled;
    next.state.version += 1;
    next.writer_fence = fence + 1;
    next
}

/// A cancel while a turn holds the lease (its Copilot call still running): one step takes the
/// conversation over under a new fence; the turn's commit is then refused, and the lease and the
/// key's in-flight marker are gone (the same key begins afresh, on the cancelled state).
async fn a_cancel_takes_the_conversation_over_from_a_turn_in_flight<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (fence, loaded) = acquired(begin(f, &cid, "alice", "k1", "fp1", "t1").await);
    assert_eq!(cancel(f, &cid, "bob", None).await, CancelOutcome::NotFound, "only the owner cancels");
    let (record, seen, at) = changed(cancel(f, &cid, "alice", None).await);
    assert_eq!((&record, at), (&loaded, fence), "asking shows the conversation and the fence counter");
    let next = cancelled_from(&record, at);
    let stale = CancelWrite { seen: &seen, fence: at - 1, record: &next, retain_ms: TTL_MS * 60 };
    assert_eq!(changed(cancel(f, &cid, "alice", Some(stale)).await).2, at, "an older fence is not written over");
    let write = CancelWrite { seen: &seen, fence: at, record: &next, retain_ms: TTL_MS * 60 };
    assert_eq!(cancel(f, &cid, "alice", Some(write)).await, CancelOutcome::Cancelled { fence: at + 1 });
    assert_eq!(commit(f, &cid, "alice", "k1", "fp1", "t1", fence, &loaded, "email").await, CommitOutcome::Superseded);
    assert_eq!(f.store().load(&cid).await.unwrap(), Some(next.clone()), "the turn in flight wrote nothing");
    let (again, rec) = acquired(begin(f, &cid, "alice", "k1", "fp1", "t2").await);
    assert!(again > at + 1, "a lease after the cancel is newer than it: {again}");
    assert_eq!(rec, next);
}

/// A cancel written against a view the store no longer has (a turn committed in between) is
/// refused and shown the conversation as it is now.
async fn a_cancel_on_a_stale_view_is_refused<F: Fixture>(f: &F) {
    let cid = created(f, "alice").await;
    let (fence, loaded) = acquired(begin(f, &cid, "alice", "k1", "fp1", "t1").await);
    let (record, seen, at) = changed(cancel(f, &cid, "alice", None).await);
    assert_eq!(commit(f, &cid, "alice", "k1", "fp1", "t1", fence, &loaded, "email").await, CommitOutcome::Committed);
    let next = cancelled_from(&record, at);
    let write = CancelWrite { seen: &seen, fence: at, record: &next, retain_ms: TTL_MS * 60 };
    let (now, _, now_fence) = changed(cancel(f, &cid, "alice", Some(write)).await);
    assert_eq!((now.state.version, now_fence), (1, fence), "the committed turn stands: {now:?}");
    assert!(now.state.collected_data.contains_key("email"));
}

/// The outbox: a commit records its submission as pending in the same step; a relay claims
/// it (others skip it while the claim holds), and once delivered it is gone. An intent whose
/// commit never came has no pending submission; one put off comes due later.
async fn the_outbox_keeps_a_pending_submission_until_it_is_done<F: Fixture>(f: &F) {
    // The Redis server is shared by every test: look only at this test's conversations.
    let mine = |entries: Vec<orchestrator::store::OutboxEntry>, cid: &str| entries.into_iter().find(|e| e.cid == cid);
    let claim_ms = TTL_MS / 2;
    let cid = created(f, "alice").await;
    let (fence, loaded) = acquired(begin(f, &cid, "alice", "k1", "fp1", "t1").await);
    f.store().outbox_intend(&cid, 0).await.unwrap();
    let idem = keys::idem(&cid, "alice", "k1");
    let mut next = loaded.clone();
    next.state.version += 1;
    next.writer_fence = fence;
    let args = CommitArgs {
        cid: &cid,
        owner_token: "t1",
        fence,
        record: &next,
        idem_key: &idem,
        fingerprint: "fp1",
        response: "{}",
        idempotency_ttl_ms: IDEM_TTL_MS,
        retain_ms: 0,
        pending: Some("{\"submission\":1}"),
    };
    assert_eq!(f.store().commit(&args).await.unwrap(), CommitOutcome::Committed);
    let e = mine(f.store().outbox_claim(10_000, claim_ms).await.unwrap(), &cid).expect("a pending submission is due");
    assert_eq!(e.pending.as_deref(), Some("{\"submission\":1}"));
    assert!(mine(f.store().outbox_claim(10_000, claim_ms).await.unwrap(), &cid).is_none(), "claimed: others skip it");
    f.pass_ms(claim_ms + 1).await;
    assert!(mine(f.store().outbox_claim(10_000, claim_ms).await.unwrap(), &cid).is_some(), "a claim that lapsed lets others take it");
    f.store().outbox_later(&cid, 0).await.unwrap();
    f.pass_ms(1).await;
    assert!(mine(f.store().outbox_claim(10_000, claim_ms).await.unwrap(), &cid).is_some(), "put off by 0 ms: due again");
    f.store().outbox_done(&cid).await.unwrap();
    f.pass_ms(claim_ms + 1).await;
    assert!(mine(f.store().outbox_claim(10_000, claim_ms).await.unwrap(), &cid).is_none(), "done: gone");
    assert_eq!(f.store().load(&cid).await.unwrap(), Some(next), "the record is untouched by the outbox");

    // An intent whose commit never came: due, with nothing pending, and aging.
    let other = created(f, "alice").await;
    f.store().outbox_intend(&other, 0).await.unwrap();
    f.pass_ms(5).await;
    let e = mine(f.store().outbox_claim(10_000, claim_ms).await.unwrap(), &other).expect("an intent is due");
    assert_eq!(e.pending, None);
    assert!(e.age_ms >= 5 && e.age_ms < 60_000, "{e:?}");
    f.store().outbox_done(&other).await.unwrap();
    // One that comes due later is not claimed before.
    let later = created(f, "alice").await;
    f.store().outbox_intend(&later, TTL_MS * 60).await.unwrap();
    assert!(mine(f.store().outbox_claim(10_000, claim_ms).await.unwrap(), &later).is_none(), "not due yet");
    f.store().outbox_done(&later).await.unwrap();
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod mem_store {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::mem()).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(f) = super::redis() else { return };
                    super::$name(&f).await;
                }
            )*
        }
    };
}

conformance!(
    create_is_once_and_load_round_trips,
    begin_commit_fences_grow_and_versions_count_commits,
    completed_key_replays_its_response_with_the_current_state,
    in_flight_key_is_in_flight_and_other_keys_are_busy,
    key_reused_with_another_fingerprint_is_rejected,
    commit_under_a_superseded_fence_is_rejected_and_writes_nothing,
    commit_after_own_expiry_applies_when_no_later_lease_was_taken,
    expiry_lets_the_next_acquirer_in_and_frees_the_key,
    extend_and_release_only_by_the_owner,
    expired_owner_cannot_extend,
    users_are_scoped,
    a_finished_conversation_is_gone_after_its_retention,
    admission_counts_each_users_unfinished_conversations_up_to_the_cap,
    a_cancel_takes_the_conversation_over_from_a_turn_in_flight,
    a_cancel_on_a_stale_view_is_refused,
    the_outbox_keeps_a_pending_submission_until_it_is_done,
);
