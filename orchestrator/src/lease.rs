//! The in-process lease table: per-key holder with TTL, owner token, and fencing counter.
//!
//! A plain data structure with no synchronisation of its own: `MemStore` keeps it inside the
//! same mutex as the conversation's state and idempotency entries, which is what makes
//! Begin and Commit atomic (the in-process analogue of a Redis script on one slot). The loom
//! models in `tests/loom.rs` drive it through `MemStore` from several threads.
//!
//! Invariants: a valid (unexpired) lease has exactly one holder; every acquisition increments
//! the fence, so fences strictly increase per key; only the holder extends or releases; a
//! commit is allowed only under the newest fence.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    token: String,
    expires_at_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lease {
    holder: Option<Holder>,
    fence: u64,
}

/// The lease was held by someone else; it expires at `expires_at_ms` unless extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub expires_at_ms: u64,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<String, Lease>,
}

impl LeaseTable {
    pub fn new() -> Self {
        Self::default()
    }

    fn valid_holder(&self, key: &str, now_ms: u64) -> Option<&Holder> {
        self.leases.get(key)?.holder.as_ref().filter(|h| h.expires_at_ms > now_ms)
    }

    /// Takes the lease if nobody holds a valid one; returns the new fence.
    pub fn acquire(&mut self, key: &str, token: &str, now_ms: u64, ttl_ms: u64) -> Result<u64, Busy> {
        if let Some(h) = self.valid_holder(key, now_ms) {
            return Err(Busy { expires_at_ms: h.expires_at_ms });
        }
        let lease = self.leases.entry(key.to_string()).or_default();
        lease.fence += 1;
        lease.holder = Some(Holder { token: token.to_string(), expires_at_ms: now_ms.saturating_add(ttl_ms) });
        Ok(lease.fence)
    }

    /// Pushes the expiry out, only for the current, unexpired holder.
    pub fn extend(&mut self, key: &str, token: &str, now_ms: u64, ttl_ms: u64) -> bool {
        match self.leases.get_mut(key).and_then(|l| l.holder.as_mut()) {
            Some(h) if h.token == token && h.expires_at_ms > now_ms => {
                h.expires_at_ms = now_ms.saturating_add(ttl_ms);
                true
            }
            _ => false,
        }
    }

    /// Drops the lease, only for its holder (compare-and-delete); returns whether it was still
    /// valid. The fence stays. A holder whose lease has lapsed is dropped too: kept, it would
    /// come back to life if the clock stepped back before its expiry.
    pub fn release(&mut self, key: &str, token: &str, now_ms: u64) -> bool {
        let Some(lease) = self.leases.get_mut(key) else { return false };
        match &lease.holder {
            Some(h) if h.token == token => {
                let valid = h.expires_at_ms > now_ms;
                lease.holder = None;
                valid
            }
            _ => false,
        }
    }

    /// A commit under `fence` may apply: no later lease was taken, and the lease, if still
    /// valid, is ours.
    pub fn may_commit(&self, key: &str, token: &str, fence: u64, now_ms: u64) -> bool {
        let Some(lease) = self.leases.get(key) else { return false };
        if lease.fence != fence {
            return false;
        }
        self.valid_holder(key, now_ms).is_none_or(|h| h.token == token)
    }

    /// Drops everything about `key`, its fence too: only for a conversation that is gone.
    /// Takes the lease away from whoever holds it, without taking it: the fence grows (so the
    /// holder can no longer commit) and nobody holds it. Returns the new fence.
    pub fn take_over(&mut self, key: &str) -> u64 {
        let lease = self.leases.entry(key.to_string()).or_default();
        lease.fence += 1;
        lease.holder = None;
        lease.fence
    }

    pub fn forget(&mut self, key: &str) {
        self.leases.remove(key);
    }

    pub fn fence(&self, key: &str) -> u64 {
        self.leases.get(key).map(|l| l.fence).unwrap_or(0)
    }

    pub fn holder(&self, key: &str, now_ms: u64) -> Option<&str> {
        self.valid_holder(key, now_ms).map(|h| h.token.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_excludes_others_until_expiry_and_fences_grow() {
        let mut t = LeaseTable::new();
        assert_eq!(t.acquire("c", "a", 0, 100), Ok(1));
        assert_eq!(t.acquire("c", "b", 50, 100), Err(Busy { expires_at_ms: 100 }));
        assert!(!t.extend("c", "b", 50, 100), "non-owner extend");
        assert!(!t.release("c", "b", 50), "non-owner release");
        assert!(t.extend("c", "a", 50, 100));
        assert_eq!(t.acquire("c", "b", 149, 100), Err(Busy { expires_at_ms: 150 }));
        assert_eq!(t.acquire("c", "b", 150, 100), Ok(2));
        assert!(!t.may_commit("c", "a", 1, 160), "superseded fence");
        assert!(t.may_commit("c", "b", 2, 160));
        assert!(t.release("c", "b", 160));
        assert_eq!(t.holder("c", 160), None);
        assert!(t.may_commit("c", "b", 2, 160), "expired or released lease, fence still newest");
        assert_eq!(t.acquire("c", "a", 160, 100), Ok(3));
    }

    #[test]
    fn a_take_over_fences_the_holder_out_and_frees_the_lease() {
        let mut t = LeaseTable::new();
        assert_eq!(t.acquire("c", "a", 0, 100), Ok(1));
        assert_eq!(t.take_over("c"), 2);
        assert!(!t.may_commit("c", "a", 1, 10), "the holder's fence is stale");
        assert!(!t.extend("c", "a", 10, 100), "and it holds nothing");
        assert_eq!(t.holder("c", 10), None);
        assert_eq!(t.acquire("c", "b", 10, 100), Ok(3));
    }

    #[test]
    fn expired_holder_cannot_extend_or_release() {
        let mut t = LeaseTable::new();
        t.acquire("c", "a", 0, 10).unwrap();
        assert!(!t.extend("c", "a", 10, 10));
        assert!(!t.release("c", "a", 10));
    }

    /// Regression (embedded seed 6508): a turn committed after its lease had lapsed by a clock
    /// that jumped forward; the holder was kept, and when the clock stepped back the lapsed
    /// lease was valid again, with nobody left to release it: every turn of the conversation
    /// found it busy.
    #[test]
    fn a_released_lapsed_lease_does_not_come_back_when_the_clock_steps_back() {
        let mut t = LeaseTable::new();
        t.acquire("c", "a", 1_000, 100).unwrap();
        assert!(!t.release("c", "a", 5_000), "lapsed by the clock's jump forward");
        assert_eq!(t.holder("c", 1_050), None, "the clock stepped back: the lease must stay gone");
        assert_eq!(t.acquire("c", "b", 1_050, 100), Ok(2));
    }
}
