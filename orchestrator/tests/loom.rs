//! Loom models of the in-process lease table and idempotency tracking, driven through
//! `MemStore` exactly as the orchestrator uses it. Tiny on purpose: 2–3 threads, a few
//! operations each. Run with `RUSTFLAGS="--cfg orchsim_loom" cargo test -p orchestrator --test loom --release`.
#![cfg(orchsim_loom)]

use loom::sync::Arc;
use loom::thread;
use orchestrator::store::{keys, BeginArgs, BeginOutcome, CommitArgs, CommitOutcome, ConversationRecord};
use orchestrator::workflow::{workflow, WorkflowState};
use orchestrator::{Clock, ManualClock, MemStore};

const TTL_MS: u64 = 100;

fn setup() -> (Arc<MemStore>, std::sync::Arc<ManualClock>) {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let dyn_clock: std::sync::Arc<dyn Clock> = clock.clone();
    let store = Arc::new(MemStore::with_shards(dyn_clock, 1));
    let rec = ConversationRecord { owner: "u".into(), state: WorkflowState::new(workflow("lead").unwrap()), writer_fence: 0 };
    assert!(store.create_now("c", &rec));
    (store, clock)
}

fn begin(store: &MemStore, token: &str, key: &str) -> BeginOutcome {
    let idem = keys::idem("c", "u", key);
    store.begin_now(&BeginArgs { cid: "c", user: "u", idem_key: &idem, fingerprint: key, owner_token: token, lease_ttl_ms: TTL_MS })
}

fn commit(store: &MemStore, token: &str, key: &str, fence: u64, mut rec: ConversationRecord) -> CommitOutcome {
    let idem = keys::idem("c", "u", key);
    rec.state.version += 1;
    rec.writer_fence = fence;
    store.commit_now(&CommitArgs {
        cid: "c",
        owner_token: token,
        fence,
        record: &rec,
        idem_key: &idem,
        fingerprint: key,
        response: "{}",
        idempotency_ttl_ms: 10_000,
        retain_ms: 0,
        pending: None,
    })
}

#[test]
fn loom_lease_is_mutually_exclusive_while_valid() {
    loom::model(|| {
        let (store, _clock) = setup();
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|t| {
                let s = store.clone();
                thread::spawn(move || matches!(begin(&s, t, t), BeginOutcome::Acquired { .. }))
            })
            .collect();
        let acquired = handles.into_iter().map(|h| h.join().unwrap()).filter(|a| *a).count();
        assert_eq!(acquired, 1, "exactly one holder of a valid lease");
    });
}

#[test]
fn loom_fences_strictly_increase_across_acquisitions() {
    loom::model(|| {
        let (store, _clock) = setup();
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|t| {
                let s = store.clone();
                thread::spawn(move || {
                    let mut fences = Vec::new();
                    for i in 0..2 {
                        let key = format!("{t}{i}");
                        if let BeginOutcome::Acquired { fence, .. } = begin(&s, t, &key) {
                            fences.push(fence);
                            assert!(s.release_now("c", t, &keys::idem("c", "u", &key)));
                        }
                    }
                    fences
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let f = h.join().unwrap();
            assert!(f.windows(2).all(|w| w[0] < w[1]), "fences per thread must increase: {f:?}");
            all.extend(f);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no fence handed out twice");
        assert_eq!(store.fence_now("c"), n as u64, "one fence per acquisition");
    });
}

#[test]
fn loom_release_and_extend_by_non_owner_are_rejected() {
    loom::model(|| {
        let (store, _clock) = setup();
        assert!(matches!(begin(&store, "a", "ka"), BeginOutcome::Acquired { fence: 1, .. }));
        let s = store.clone();
        let intruder = thread::spawn(move || {
            let idem = keys::idem("c", "u", "ka");
            (s.release_now("c", "b", &idem), s.extend_now("c", "b", &idem, TTL_MS))
        });
        let s2 = store.clone();
        let owner = thread::spawn(move || s2.extend_now("c", "a", &keys::idem("c", "u", "ka"), TTL_MS));
        assert_eq!(intruder.join().unwrap(), (false, false));
        assert!(owner.join().unwrap());
        assert!(matches!(begin(&store, "c", "kc"), BeginOutcome::Busy { .. }), "a's lease survived");
    });
}

#[test]
fn loom_commit_under_a_superseded_fence_is_rejected() {
    loom::model(|| {
        let (store, clock) = setup();
        let BeginOutcome::Acquired { fence, record } = begin(&store, "a", "ka") else { panic!("first begin") };
        // a's lease expires (a slow Copilot call); a commits late while b takes the lease,
        // commits and releases it.
        clock.advance_ms(TTL_MS + 1);
        let s = store.clone();
        let late = thread::spawn(move || commit(&s, "a", "ka", fence, record));
        let s2 = store.clone();
        let next = thread::spawn(move || {
            let BeginOutcome::Acquired { fence, record } = begin(&s2, "b", "kb") else { panic!("b must get the expired lease") };
            assert_eq!(fence, 2);
            let loaded = record.state.version;
            (loaded, commit(&s2, "b", "kb", fence, record))
        });
        let a_outcome = late.join().unwrap();
        let (b_loaded, b_outcome) = next.join().unwrap();
        assert_eq!(b_outcome, CommitOutcome::Committed, "the newest fence always commits");
        let commits = [a_outcome, b_outcome].iter().filter(|o| **o == CommitOutcome::Committed).count() as u64;
        let fin = store.load_now("c").unwrap();
        // Fenced single writer: every applied commit bumps the version by one, none is lost.
        assert_eq!(fin.state.version, commits, "a commit was lost or applied under a stale fence");
        assert_eq!(fin.writer_fence, 2);
        if a_outcome == CommitOutcome::Committed {
            assert_eq!(b_loaded, 1, "b loaded state older than a committed write");
        }
    });
}

#[test]
fn loom_expiry_on_the_injected_clock_lets_the_next_acquirer_in() {
    loom::model(|| {
        let (store, clock) = setup();
        assert!(matches!(begin(&store, "a", "ka"), BeginOutcome::Acquired { fence: 1, .. }));
        let c = clock.clone();
        let ticker = thread::spawn(move || c.advance_ms(TTL_MS));
        let s = store.clone();
        let waiter = thread::spawn(move || begin(&s, "b", "kb"));
        ticker.join().unwrap();
        let first_try = waiter.join().unwrap();
        match first_try {
            BeginOutcome::Acquired { fence, .. } => assert_eq!(fence, 2),
            BeginOutcome::Busy { .. } => {
                // Before the tick: busy. After it, the lease has expired and b gets in.
                assert!(matches!(begin(&store, "b", "kb"), BeginOutcome::Acquired { fence: 2, .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
        // a's key is no longer in flight either: its marker expired with the lease.
        assert!(matches!(begin(&store, "a2", "ka"), BeginOutcome::Busy { .. }));
    });
}
