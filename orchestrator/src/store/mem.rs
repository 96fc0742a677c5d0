//! `MemStore`: the embedded store. Conversations are spread over shards by id; each shard is
//! one mutex over its lease table, records and idempotency entries, so Begin and Commit are
//! atomic per conversation exactly as a Redis script is atomic per slot.

use super::*;
use crate::clock::Clock;
use crate::lease::LeaseTable;
use crate::sync::{lock, Mutex};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Shards of the embedded store; more shards, less contention between conversations.
pub const MEM_SHARDS: usize = 64;
/// Expired idempotency entries removed per commit at most (bounded work on the hot path).
pub const IDEM_PURGE_PER_COMMIT_MAX: usize = 8;

#[derive(Debug, Clone)]
enum Idem {
    InFlight { fingerprint: String, owner_token: String, expires_at_ms: u64 },
    Completed { fingerprint: String, response: String, expires_at_ms: u64 },
}

impl Idem {
    fn expires_at_ms(&self) -> u64 {
        match self {
            Idem::InFlight { expires_at_ms, .. } | Idem::Completed { expires_at_ms, .. } => *expires_at_ms,
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    leases: LeaseTable,
    records: BTreeMap<String, ConversationRecord>,
    idem: BTreeMap<String, Idem>,
    /// Completed entries in the order they were written, with their expiry: the purge walks
    /// it from the front, so a long-running server does not keep every answer forever.
    expiries: std::collections::VecDeque<(u64, String)>,
    /// Conversations kept only until a time (finished ones), and the queue the purge walks.
    retain_until: BTreeMap<String, u64>,
    retain_queue: std::collections::VecDeque<(u64, String)>,
    /// Pending submissions, by conversation (written by the commit that makes them pending).
    pending: BTreeMap<String, String>,
}

impl Shard {
    /// Drops up to `IDEM_PURGE_PER_COMMIT_MAX` expired idempotency entries, and as many
    /// conversations past their retention, from the fronts of their queues.
    fn purge(&mut self, now_ms: u64) {
        for _ in 0..IDEM_PURGE_PER_COMMIT_MAX {
            match self.expiries.front() {
                Some((at, _)) if *at <= now_ms => {}
                _ => break,
            }
            let Some((at, key)) = self.expiries.pop_front() else { break };
            // The entry may have been rewritten since; only remove what expired.
            if self.idem.get(&key).is_some_and(|e| e.expires_at_ms() <= now_ms && e.expires_at_ms() == at) {
                self.idem.remove(&key);
            }
        }
        for _ in 0..IDEM_PURGE_PER_COMMIT_MAX {
            match self.retain_queue.front() {
                Some((at, _)) if *at <= now_ms => {}
                _ => return,
            }
            let Some((at, cid)) = self.retain_queue.pop_front() else { return };
            // A later commit may have pushed the time out; only remove what is due.
            if self.retain_until.get(&cid) == Some(&at) {
                self.retain_until.remove(&cid);
                self.records.remove(&cid);
                self.pending.remove(&cid);
                self.leases.forget(&keys::lock(&cid));
            }
        }
    }

    /// A conversation's record, unless it is past its retention (whether or not the purge has
    /// reached it yet).
    fn live(&self, cid: &str, now_ms: u64) -> Option<&ConversationRecord> {
        if self.retain_until.get(cid).is_some_and(|until| *until <= now_ms) {
            return None;
        }
        self.records.get(cid)
    }

    fn live_idem(&mut self, key: &str, now_ms: u64) -> Option<&mut Idem> {
        if self.idem.get(key).is_some_and(|e| e.expires_at_ms() <= now_ms) {
            self.idem.remove(key);
        }
        self.idem.get_mut(key)
    }
}

pub struct MemStore {
    clock: Arc<dyn Clock>,
    shards: Vec<Mutex<Shard>>,
    /// Per user, the conversations counted against their cap and when each was counted.
    active: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// The outbox index: cid → (due at, recorded at).
    outbox: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl MemStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_shards(clock, MEM_SHARDS)
    }

    pub fn with_shards(clock: Arc<dyn Clock>, shards: usize) -> Self {
        assert!(shards > 0, "MemStore needs at least one shard");
        Self {
            clock,
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            active: Mutex::new(BTreeMap::new()),
            outbox: Mutex::new(BTreeMap::new()),
        }
    }

    fn shard(&self, cid: &str) -> &Mutex<Shard> {
        // FNV-1a: stable across runs and platforms, unlike std's RandomState.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in cid.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    pub fn create_now(&self, cid: &str, record: &ConversationRecord) -> bool {
        let mut s = lock(self.shard(cid));
        if s.records.contains_key(cid) {
            return false;
        }
        s.records.insert(cid.to_string(), record.clone());
        true
    }

    pub fn load_now(&self, cid: &str) -> Option<ConversationRecord> {
        let now = self.clock.now_ms();
        let s = lock(self.shard(cid));
        // Past its retention a conversation is gone, whether or not the purge has reached it.
        s.live(cid, now).cloned()
    }

    pub fn begin_now(&self, a: &BeginArgs<'_>) -> BeginOutcome {
        let now = self.clock.now_ms();
        let mut s = lock(self.shard(a.cid));
        let record = match s.live(a.cid, now) {
            Some(r) if r.owner == a.user => r.clone(),
            _ => return BeginOutcome::NotFound,
        };
        match s.live_idem(a.idem_key, now) {
            Some(Idem::InFlight { fingerprint, .. } | Idem::Completed { fingerprint, .. }) if *fingerprint != a.fingerprint => {
                return BeginOutcome::KeyReused
            }
            Some(Idem::Completed { response, .. }) => return BeginOutcome::Replay { response: response.clone(), record },
            Some(Idem::InFlight { .. }) => return BeginOutcome::InFlight,
            None => {}
        }
        let lock_key = keys::lock(a.cid);
        match s.leases.acquire(&lock_key, a.owner_token, now, a.lease_ttl_ms) {
            Err(busy) => BeginOutcome::Busy { retry_in_ms: busy.expires_at_ms.saturating_sub(now) },
            Ok(fence) => {
                s.idem.insert(
                    a.idem_key.to_string(),
                    Idem::InFlight {
                        fingerprint: a.fingerprint.to_string(),
                        owner_token: a.owner_token.to_string(),
                        expires_at_ms: now.saturating_add(a.lease_ttl_ms),
                    },
                );
                BeginOutcome::Acquired { fence, record }
            }
        }
    }

    pub fn commit_now(&self, a: &CommitArgs<'_>) -> CommitOutcome {
        let now = self.clock.now_ms();
        let mut s = lock(self.shard(a.cid));
        let lock_key = keys::lock(a.cid);
        if !s.leases.may_commit(&lock_key, a.owner_token, a.fence, now) {
            return CommitOutcome::Superseded;
        }
        s.records.insert(a.cid.to_string(), a.record.clone());
        let expires_at_ms = now.saturating_add(a.idempotency_ttl_ms);
        s.idem.insert(
            a.idem_key.to_string(),
            Idem::Completed { fingerprint: a.fingerprint.to_string(), response: a.response.to_string(), expires_at_ms },
        );
        s.expiries.push_back((expires_at_ms, a.idem_key.to_string()));
        if let Some(p) = a.pending {
            s.pending.insert(a.cid.to_string(), p.to_string());
        }
        if a.retain_ms > 0 {
            let until = now.saturating_add(a.retain_ms);
            s.retain_until.insert(a.cid.to_string(), until);
            s.retain_queue.push_back((until, a.cid.to_string()));
        }
        s.purge(now);
        s.leases.release(&lock_key, a.owner_token, now);
        CommitOutcome::Committed
    }

    pub fn release_now(&self, cid: &str, owner_token: &str, idem_key: &str) -> bool {
        let now = self.clock.now_ms();
        let mut s = lock(self.shard(cid));
        if matches!(s.idem.get(idem_key), Some(Idem::InFlight { owner_token: t, .. }) if t == owner_token) {
            s.idem.remove(idem_key);
        }
        s.leases.release(&keys::lock(cid), owner_token, now)
    }

    pub fn extend_now(&self, cid: &str, owner_token: &str, idem_key: &str, ttl_ms: u64) -> bool {
        let now = self.clock.now_ms();
        let mut s = lock(self.shard(cid));
        let ok = s.leases.extend(&keys::lock(cid), owner_token, now, ttl_ms);
        if ok {
            if let Some(Idem::InFlight { owner_token: t, expires_at_ms, .. }) = s.idem.get_mut(idem_key) {
                if t == owner_token {
                    *expires_at_ms = now.saturating_add(ttl_ms);
                }
            }
        }
        ok
    }

    pub fn cancel_now(&self, a: &CancelArgs<'_>) -> CancelOutcome {
        let now = self.clock.now_ms();
        let mut s = lock(self.shard(a.cid));
        let current = match s.live(a.cid, now) {
            Some(r) if r.owner == a.user => r.clone(),
            _ => return CancelOutcome::NotFound,
        };
        let lock_key = keys::lock(a.cid);
        let fence = s.leases.fence(&lock_key);
        let seen = serde_json::to_string(&current).unwrap_or_default();
        let Some(w) = a.write.as_ref().filter(|w| w.seen == seen && w.fence == fence) else {
            return CancelOutcome::Changed { record: current, seen, fence };
        };
        let fence = s.leases.take_over(&lock_key);
        // The in-flight marker of whoever held the lease (keys of this conversation are one range).
        let prefix = format!("idem:{{c:{}}}:", a.cid);
        let in_flight: Vec<String> = s
            .idem
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, e)| matches!(e, Idem::InFlight { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for k in in_flight {
            s.idem.remove(&k);
        }
        s.records.insert(a.cid.to_string(), w.record.clone());
        if w.retain_ms > 0 {
            let until = now.saturating_add(w.retain_ms);
            s.retain_until.insert(a.cid.to_string(), until);
            s.retain_queue.push_back((until, a.cid.to_string()));
        }
        s.purge(now);
        CancelOutcome::Cancelled { fence }
    }

    pub fn outbox_intend_now(&self, cid: &str, due_in_ms: u64) {
        let now = self.clock.now_ms();
        lock(&self.outbox).entry(cid.to_string()).or_insert((now.saturating_add(due_in_ms), now));
    }

    pub fn outbox_claim_now(&self, max: usize, claim_ms: u64) -> Vec<OutboxEntry> {
        let now = self.clock.now_ms();
        let claimed: Vec<(String, u64)> = {
            let mut outbox = lock(&self.outbox);
            let due: Vec<String> = outbox.iter().filter(|(_, (at, _))| *at <= now).take(max).map(|(c, _)| c.clone()).collect();
            due.into_iter()
                .filter_map(|c| {
                    let e = outbox.get_mut(&c)?;
                    e.0 = now.saturating_add(claim_ms);
                    Some((c, now.saturating_sub(e.1)))
                })
                .collect()
        };
        claimed
            .into_iter()
            .map(|(cid, age_ms)| OutboxEntry { pending: lock(self.shard(&cid)).pending.get(&cid).cloned(), cid, age_ms })
            .collect()
    }

    /// Entries in the outbox index (tests and the simulation's bookkeeping).
    pub fn outbox_len(&self) -> usize {
        lock(&self.outbox).len()
    }

    pub fn outbox_done_now(&self, cid: &str) {
        lock(self.shard(cid)).pending.remove(cid);
        lock(&self.outbox).remove(cid);
    }

    pub fn outbox_later_now(&self, cid: &str, after_ms: u64) {
        let now = self.clock.now_ms();
        if let Some(e) = lock(&self.outbox).get_mut(cid) {
            e.0 = now.saturating_add(after_ms);
        }
    }

    pub fn admit_now(&self, user: &str, cid: &str, max: u64) -> bool {
        let now = self.clock.now_ms();
        let mut active = lock(&self.active);
        let mine = active.entry(user.to_string()).or_default();
        if mine.contains_key(cid) {
            return true;
        }
        if mine.len() as u64 >= max {
            return false;
        }
        mine.insert(cid.to_string(), now);
        true
    }

    pub fn active_now(&self, user: &str) -> ActiveList {
        let now_ms = self.clock.now_ms();
        let active = lock(&self.active);
        let entries = active.get(user).map(|m| m.iter().map(|(c, at)| (c.clone(), *at)).collect()).unwrap_or_default();
        ActiveList { now_ms, entries }
    }

    pub fn dismiss_now(&self, user: &str, cid: &str) {
        let mut active = lock(&self.active);
        if let Some(mine) = active.get_mut(user) {
            mine.remove(cid);
            if mine.is_empty() {
                active.remove(user);
            }
        }
    }

    /// The current fence of a conversation (tests and models).
    pub fn fence_now(&self, cid: &str) -> u64 {
        lock(self.shard(cid)).leases.fence(&keys::lock(cid))
    }

    /// Idempotency entries held, expired or not (tests).
    pub fn idem_entries(&self) -> usize {
        self.shards.iter().map(|s| lock(s).idem.len()).sum()
    }

    /// Conversations held, expired or not (tests and the soak bench).
    pub fn conversations(&self) -> usize {
        self.shards.iter().map(|s| lock(s).records.len()).sum()
    }
}

impl Store for MemStore {
    async fn create(&self, cid: &str, record: &ConversationRecord) -> Result<bool, StoreError> {
        Ok(self.create_now(cid, record))
    }
    async fn load(&self, cid: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self.load_now(cid))
    }
    async fn begin(&self, args: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        Ok(self.begin_now(args))
    }
    async fn commit(&self, args: &CommitArgs<'_>) -> Result<CommitOutcome, StoreError> {
        Ok(self.commit_now(args))
    }
    async fn release(&self, cid: &str, owner_token: &str, idem_key: &str) -> Result<bool, StoreError> {
        Ok(self.release_now(cid, owner_token, idem_key))
    }
    async fn extend(&self, cid: &str, owner_token: &str, idem_key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        Ok(self.extend_now(cid, owner_token, idem_key, ttl_ms))
    }
    async fn cancel(&self, args: &CancelArgs<'_>) -> Result<CancelOutcome, StoreError> {
        Ok(self.cancel_now(args))
    }
    async fn outbox_intend(&self, cid: &str, due_in_ms: u64) -> Result<(), StoreError> {
        self.outbox_intend_now(cid, due_in_ms);
        Ok(())
    }
    async fn outbox_claim(&self, max: usize, claim_ms: u64) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(self.outbox_claim_now(max, claim_ms))
    }
    async fn outbox_done(&self, cid: &str) -> Result<(), StoreError> {
        self.outbox_done_now(cid);
        Ok(())
    }
    async fn outbox_later(&self, cid: &str, after_ms: u64) -> Result<(), StoreError> {
        self.outbox_later_now(cid, after_ms);
        Ok(())
    }
    async fn admit(&self, user: &str, cid: &str, max: u64) -> Result<bool, StoreError> {
        Ok(self.admit_now(user, cid, max))
    }
    async fn active(&self, user: &str) -> Result<ActiveList, StoreError> {
        Ok(self.active_now(user))
    }
    async fn dismiss(&self, user: &str, cid: &str) -> Result<(), StoreError> {
        self.dismiss_now(user, cid);
        Ok(())
    }
}

#[cfg(all(test, not(orchsim_loom)))]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::workflow::{workflow, WorkflowState};

    #[test]
    fn expired_idempotency_entries_are_purged_as_commits_go_on() {
        let clock = Arc::new(ManualClock::new(0));
        let store = MemStore::with_shards(clock.clone(), 1);
        let rec = ConversationRecord { owner: "u".into(), state: WorkflowState::new(workflow("lead").unwrap()), writer_fence: 0 };
        store.create_now("c", &rec);
        let turn = |key: &str, ttl: u64| {
            let idem = keys::idem("c", "u", key);
            let BeginOutcome::Acquired { fence, record } = store.begin_now(&BeginArgs {
                cid: "c",
                user: "u",
                idem_key: &idem,
                fingerprint: "fp",
                owner_token: key,
                lease_ttl_ms: 100,
            }) else {
                panic!("begin")
            };
            let mut next = record.clone();
            next.state.version += 1;
            store.commit_now(&CommitArgs {
                cid: "c",
                owner_token: key,
                fence,
                record: &next,
                idem_key: &idem,
                fingerprint: "fp",
                response: "{}",
                idempotency_ttl_ms: ttl,
                retain_ms: 0,
                pending: None,
            });
        };
        for i in 0..20 {
            turn(&format!("old{i}"), 1_000);
        }
        assert_eq!(store.idem_entries(), 20);
        clock.advance_ms(1_000);
        for i in 0..3 {
            turn(&format!("new{i}"), 1_000);
        }
        // 3 commits × 8 purged: all 20 expired entries are gone, the 3 fresh ones stay.
        assert_eq!(store.idem_entries(), 3);
    }

    #[test]
    fn finished_conversations_are_purged_after_their_retention_in_bounded_steps() {
        let clock = Arc::new(ManualClock::new(0));
        let store = MemStore::with_shards(clock.clone(), 1);
        let finish = |cid: &str| {
            let rec = ConversationRecord { owner: "u".into(), state: WorkflowState::new(workflow("lead").unwrap()), writer_fence: 0 };
            store.create_now(cid, &rec);
            let idem = keys::idem(cid, "u", "k");
            let args = BeginArgs { cid, user: "u", idem_key: &idem, fingerprint: "fp", owner_token: "t", lease_ttl_ms: 100 };
            let BeginOutcome::Acquired { fence, record } = store.begin_now(&args) else { panic!("begin") };
            let mut next = record.clone();
            next.state.version += 1;
            next.state.step = crate::workflow::Step::Cancelled;
            let commit = CommitArgs {
                cid,
                owner_token: "t",
                fence,
                record: &next,
                idem_key: &idem,
                fingerprint: "fp",
                response: "{}",
                idempotency_ttl_ms: 1_000,
                retain_ms: 1_000,
                pending: None,
            };
            assert_eq!(store.commit_now(&commit), CommitOutcome::Committed);
        };
        for i in 0..20 {
            finish(&format!("old{i}"));
        }
        assert_eq!(store.conversations(), 20);
        clock.advance_ms(1_000);
        assert_eq!(store.load_now("old0"), None, "past its retention a conversation is gone at once");
        for i in 0..3 {
            finish(&format!("new{i}"));
        }
        // 3 commits × 8 purged: the 20 finished ones are gone (fences too), the 3 new ones stay.
        assert_eq!(store.conversations(), 3);
        assert_eq!(store.fence_now("old5"), 0);
    }
}
