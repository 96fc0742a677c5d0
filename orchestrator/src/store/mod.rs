//! The `Store` seam: conversation state, the per-conversation lease, and the user-scoped
//! idempotency cache.
//!
//! The trait is shaped for Redis: `begin` and `commit` are each one atomic step (one Lua
//! script, one round trip), `release`/`extend`/`load`/`create` one each. `MemStore` is the
//! embedded default; `RedisStore` (next to it) the real backend.
//!
//! Invariant: a commit applies only under the newest fence; every commit bumps the
//! conversation's version by exactly one.

mod mem;
pub mod redis;

pub use self::redis::{RedisConfig, RedisStore};
pub use mem::MemStore;

use crate::workflow::{WorkflowState, MACHINE_VERSION};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// What the store keeps per conversation (the value of `state:{c:<cid>}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRecord {
    /// The user who created it; nobody else sees it.
    pub owner: String,
    pub state: WorkflowState,
    /// The fence of the lease under which this version was written (0 at creation).
    pub writer_fence: u64,
}

/// Redis key names. All of a conversation's keys share the hash tag `{c:<cid>}` so each
/// script touches one Redis Cluster slot; `MemStore` uses the same names.
pub mod keys {
    use super::MACHINE_VERSION;
    pub const LOCK: &str = "lock";
    pub const FENCE: &str = "fence";
    pub const STATE: &str = "state";

    /// Writes `<kind>:{c:<cid>}`, the key of one of a conversation's records.
    pub fn write_tagged(w: &mut impl std::io::Write, kind: &str, cid: &str) -> std::io::Result<()> {
        w.write_all(kind.as_bytes())?;
        w.write_all(b":{c:")?;
        w.write_all(cid.as_bytes())?;
        w.write_all(b"}")
    }
    fn tagged(kind: &str, cid: &str) -> String {
        format!("{kind}:{{c:{cid}}}")
    }
    pub fn lock(cid: &str) -> String {
        tagged(LOCK, cid)
    }
    pub fn fence(cid: &str) -> String {
        tagged(FENCE, cid)
    }
    pub fn state(cid: &str) -> String {
        tagged(STATE, cid)
    }
    /// The outbox index: a hash `cid → "<due ms>:<recorded ms>"` of submissions that may be
    /// pending (written before the commit that makes them pending), read by the relays. Its
    /// own slot; the pending submission itself is in the conversation's `state` hash.
    pub const OUTBOX: &str = "outbox";
    /// The conversations a user has counted against their cap (a hash `cid → admitted at ms`),
    /// tagged by the user so that its script touches one Redis Cluster slot.
    pub fn active(user: &str) -> String {
        format!("active:{{u:{user}}}")
    }
    /// The idempotency entry: scoped by conversation, user, and machine version.
    pub fn idem(cid: &str, user: &str, key: &str) -> String {
        format!("idem:{{c:{cid}}}:{user}:{MACHINE_VERSION}:{key}")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn written_and_formatted_keys_agree() {
            let mut w = Vec::new();
            super::write_tagged(&mut w, super::LOCK, "abc").unwrap();
            assert_eq!(w, super::lock("abc").into_bytes());
            assert_eq!(super::lock("abc"), "lock:{c:abc}");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginArgs<'a> {
    pub cid: &'a str,
    pub user: &'a str,
    /// Full key from [`keys::idem`].
    pub idem_key: &'a str,
    /// Hash of what the request asks for; the same key with another fingerprint is a 422.
    pub fingerprint: &'a str,
    /// Random per attempt; proves lease ownership on extend, release and commit.
    pub owner_token: &'a str,
    pub lease_ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginOutcome {
    /// We hold the lease under `fence`; `record` is the state as loaded in the same step.
    Acquired { fence: u64, record: ConversationRecord },
    /// The key completed before: its stored response, with the conversation as it is now.
    Replay { response: String, record: ConversationRecord },
    /// The same key is being worked on (until its lease expires).
    InFlight,
    /// The same key came with a different request.
    KeyReused,
    /// Another turn holds the lease; it expires in `retry_in_ms` unless extended.
    Busy { retry_in_ms: u64 },
    /// No such conversation, or not this user's.
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitArgs<'a> {
    pub cid: &'a str,
    pub owner_token: &'a str,
    pub fence: u64,
    /// The new record; its `state.version` must be the loaded version + 1 and its
    /// `writer_fence` our fence.
    pub record: &'a ConversationRecord,
    pub idem_key: &'a str,
    /// The request fingerprint, stored with the response (the in-flight marker may have
    /// expired by now, so it is not read back from there).
    pub fingerprint: &'a str,
    pub response: &'a str,
    pub idempotency_ttl_ms: u64,
    /// Keep the conversation only this long after this commit (set when the record is in a
    /// terminal step); 0 keeps it.
    pub retain_ms: u64,
    /// The submission this commit makes pending (the commit that makes the conversation
    /// `succeeded`), recorded in the same atomic step; after [`Store::outbox_intend`].
    pub pending: Option<&'a str>,
}

/// One submission a relay claimed from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub cid: String,
    /// The pending submission (JSON), or `None` if no commit recorded one (yet).
    pub pending: Option<String>,
    /// Since the entry was recorded, on the store's clock.
    pub age_ms: u64,
}

/// A cancel: one atomic step that takes the conversation over from any turn in flight, if it
/// is as the caller last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelArgs<'a> {
    pub cid: &'a str,
    pub user: &'a str,
    /// What to write, and on what condition; `None` only asks for the conversation as it is.
    pub write: Option<CancelWrite<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelWrite<'a> {
    /// The record as the store last showed it (`CancelOutcome::Changed::seen`, its exact bytes)
    /// and the fence counter then: the write happens only if neither changed since.
    pub seen: &'a str,
    pub fence: u64,
    /// The cancelled record: version + 1, `writer_fence` = `fence` + 1.
    pub record: &'a ConversationRecord,
    /// As `CommitArgs::retain_ms`.
    pub retain_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Written under the new fence `fence`: the lease and the in-flight marker of whoever held
    /// it are gone, and its commit will be refused.
    Cancelled { fence: u64 },
    /// Not written (or not asked to): the conversation as it is now, and the fence counter.
    Changed { record: ConversationRecord, seen: String, fence: u64 },
    /// No such conversation, or not this user's.
    NotFound,
}

/// The conversations a user has counted as active, each with the store's time when it was
/// counted, and the store's time now (so that the age of an entry is read on one clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveList {
    pub now_ms: u64,
    pub entries: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// A later lease was taken: nothing was written.
    Superseded,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store reply not understood: {0}")]
    Protocol(String),
}

pub trait Store: Send + Sync + 'static {
    /// Creates a conversation; false if the id exists.
    fn create(&self, cid: &str, record: &ConversationRecord) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn load(&self, cid: &str) -> impl Future<Output = Result<Option<ConversationRecord>, StoreError>> + Send;
    fn begin(&self, args: &BeginArgs<'_>) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send;
    fn commit(&self, args: &CommitArgs<'_>) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;
    /// Compare-and-delete of the lease, and of the key's in-flight marker if it is ours.
    fn release(&self, cid: &str, owner_token: &str, idem_key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Compare-and-extend of the lease and the in-flight marker.
    fn extend(&self, cid: &str, owner_token: &str, idem_key: &str, ttl_ms: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records in the outbox index that `cid` is about to have a pending submission (before the
    /// commit that records it), so that a relay finds it even if this worker dies right after
    /// that commit. It comes due in `due_in_ms` (the committing worker delivers first).
    fn outbox_intend(&self, cid: &str, due_in_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Claims up to `max` outbox entries that are due, for `claim_ms` (other relays skip them
    /// meanwhile), with their pending submissions.
    fn outbox_claim(&self, max: usize, claim_ms: u64) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;
    /// The submission was acknowledged (or there is none): clears the pending submission, then
    /// the index entry.
    fn outbox_done(&self, cid: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Delivery failed: the entry comes due again in `after_ms`.
    fn outbox_later(&self, cid: &str, after_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Cancels a conversation without waiting for its lease (see [`CancelArgs`]).
    fn cancel(&self, args: &CancelArgs<'_>) -> impl Future<Output = Result<CancelOutcome, StoreError>> + Send;
    /// Counts `cid` among `user`'s active conversations unless `max` are counted already, in one
    /// atomic step; true if it is counted (now or before).
    fn admit(&self, user: &str, cid: &str, max: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// What `admit` has counted for `user`.
    fn active(&self, user: &str) -> impl Future<Output = Result<ActiveList, StoreError>> + Send;
    /// Stops counting `cid` for `user` (nothing if it was not counted).
    fn dismiss(&self, user: &str, cid: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<S: Store> Store for std::sync::Arc<S> {
    fn create(&self, cid: &str, record: &ConversationRecord) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).create(cid, record)
    }
    fn load(&self, cid: &str) -> impl Future<Output = Result<Option<ConversationRecord>, StoreError>> + Send {
        (**self).load(cid)
    }
    fn begin(&self, args: &BeginArgs<'_>) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send {
        (**self).begin(args)
    }
    fn commit(&self, args: &CommitArgs<'_>) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send {
        (**self).commit(args)
    }
    fn release(&self, cid: &str, owner_token: &str, idem_key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).release(cid, owner_token, idem_key)
    }
    fn extend(&self, cid: &str, owner_token: &str, idem_key: &str, ttl_ms: u64) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).extend(cid, owner_token, idem_key, ttl_ms)
    }
    fn cancel(&self, args: &CancelArgs<'_>) -> impl Future<Output = Result<CancelOutcome, StoreError>> + Send {
        (**self).cancel(args)
    }
    fn outbox_intend(&self, cid: &str, due_in_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).outbox_intend(cid, due_in_ms)
    }
    fn outbox_claim(&self, max: usize, claim_ms: u64) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send {
        (**self).outbox_claim(max, claim_ms)
    }
    fn outbox_done(&self, cid: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).outbox_done(cid)
    }
    fn outbox_later(&self, cid: &str, after_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).outbox_later(cid, after_ms)
    }
    fn admit(&self, user: &str, cid: &str, max: u64) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).admit(user, cid, max)
    }
    fn active(&self, user: &str) -> impl Future<Output = Result<ActiveList, StoreError>> + Send {
        (**self).active(user)
    }
    fn dismiss(&self, user: &str, cid: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).dismiss(user, cid)
    }
}
