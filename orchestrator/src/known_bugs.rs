//! Known pitfalls of this kind of orchestrator, re-created on purpose so the harness can prove
//! it catches each one. Compiled in only with the `known-bugs` cargo feature; without it,
//! [`active`] is `false` for every bug and the hooks in `turn` fold away.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnownBug {
    /// A replay returns the state cached with the response instead of the current state.
    StaleReplay,
    /// Low- and medium-confidence extractions are taken as high.
    ConfidenceIgnored,
    /// A turn with no signal is ignored: the NO_SIGNAL streak never grows.
    UnknownSignalIgnored,
    /// Idempotency keys are neither user- nor conversation-scoped, and the fingerprint
    /// covers the query only.
    IdempotencyKeyNotScopedByUser,
    /// Each worker builds the context and the next state from its own cached copy of the
    /// conversation instead of the state Begin loaded.
    ContextNotLoadedFromStore,
    /// The context prefix is built without its separating spaces.
    ContextPrefixWithoutSpaces,
    /// Submissions carry a fresh key per attempt and replays of the final turn submit again.
    NoEffectsDeduplication,
    /// A commit refused by the fence (the lease lapsed and another turn wrote) is retried
    /// under a fresh lease with the state computed from the old load: a lost update.
    BlindRecommitAfterLeaseLoss,
    /// The lease is trusted without fencing: a lost lease is ignored and the commit skips the
    /// fence check, so a turn whose lease lapsed under a slow step overwrites a newer one.
    NoFencing,
    /// The worker's own clock decides whether its lease still holds: while it says the TTL has
    /// not run out since the lease was taken, the commit skips the fence check. Redis's clock
    /// (or a slow worker clock) disagrees, and a newer writer is overwritten.
    TrustLocalClock,
    /// A busy lease is not waited for: the turn works on the state as loaded and commits
    /// without the fence check.
    NoLock,
    /// After the acquire deadline, instead of a 503, the turn proceeds as `NoLock` does.
    ProceedWhenLockFails,
}

/// The fence a `NoFencing` turn commits with: `RedisStore` then sends the unfenced Commit
/// (only in `known-bugs` builds; elsewhere fence 0 matches nothing and is refused).
pub const UNFENCED: u64 = 0;

impl KnownBug {
    pub const ALL: [KnownBug; 12] = [
        KnownBug::StaleReplay,
        KnownBug::ConfidenceIgnored,
        KnownBug::UnknownSignalIgnored,
        KnownBug::IdempotencyKeyNotScopedByUser,
        KnownBug::ContextNotLoadedFromStore,
        KnownBug::ContextPrefixWithoutSpaces,
        KnownBug::NoEffectsDeduplication,
        KnownBug::BlindRecommitAfterLeaseLoss,
        KnownBug::NoFencing,
        KnownBug::TrustLocalClock,
        KnownBug::NoLock,
        KnownBug::ProceedWhenLockFails,
    ];
}

/// Whether `bug` is switched on in this build and configuration.
#[inline]
pub fn active(configured: Option<KnownBug>, bug: KnownBug) -> bool {
    cfg!(feature = "known-bugs") && configured == Some(bug)
}
