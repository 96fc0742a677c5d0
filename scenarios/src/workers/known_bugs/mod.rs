//! Known pitfalls of this kind of orchestrator, re-created on the harness side so a test can
//! prove the harness catches each one. Nothing here switches anything inside the orchestrator:
//! each pitfall is built the way a team would write it, by composing the orchestrator's public
//! seams with a decorator — a [`BuggyStore`] (its own unfenced Lua commit that the Redis model
//! runs, a lease it does not wait for or trusts on its own clock, a blind retry, a stale
//! per-worker cache, an unscoped idempotency key), a [`BuggyCopilot`] (confidence rewritten, the
//! context prefix mangled) and a [`BuggyEffects`] (submissions re-keyed per attempt).
//!
//! With no bug selected every decorator passes calls straight through.

mod copilot;
mod effects;
mod store;

pub use copilot::BuggyCopilot;
pub use effects::BuggyEffects;
pub use store::{BugSettings, BuggyStore, UNFENCED_COMMIT};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnownBug {
    /// A replay returns the state stored with the answer at commit time instead of the
    /// current state (the store keeps the record beside the answer and hands it back).
    StaleReplay,
    /// Low- and medium-confidence extractions are taken as high (Copilot's confidence is
    /// overwritten before the orchestrator reads it).
    ConfidenceIgnored,
    /// A turn with no signal is ignored: the store writes the state as loaded (turn count
    /// + 1) instead of the grown NO_SIGNAL streak or the hand-off.
    UnknownSignalIgnored,
    /// One global idempotency cache: entries keyed by the client's key alone, with no
    /// request fingerprint.
    IdempotencyKeyNotScopedByUser,
    /// Each worker builds the context and the next state from its own cached copy of the
    /// conversation instead of the state Begin loaded.
    ContextNotLoadedFromStore,
    /// The context prefix is sent without its separating spaces.
    ContextPrefixWithoutSpaces,
    /// Submissions carry a fresh key per attempt, so the sink cannot de-duplicate them.
    NoEffectsDeduplication,
    /// A commit refused by the fence (the lease lapsed and another turn wrote) is retried
    /// under a fresh lease with the state computed from the old load: a lost update.
    BlindRecommitAfterLeaseLoss,
    /// The lease is trusted without fencing: a lost lease is ignored and the commit is a Lua
    /// script without the fence check, so a turn whose lease lapsed overwrites a newer one.
    NoFencing,
    /// The worker's own clock decides whether its lease still holds: while it says the TTL
    /// has not run out since the lease was taken, the commit skips the fence check.
    TrustLocalClock,
    /// A busy lease is not waited for: the turn works on the state as loaded and commits
    /// without the fence check.
    NoLock,
    /// At the acquire deadline, instead of a 503, the turn proceeds as `NoLock` does.
    ProceedWhenLockFails,
    /// A cancel queues for the lease like a turn: it prepares the cancelled state from what it
    /// loaded, waits until the turn in flight lets go of the lease, then writes what it
    /// prepared (over whatever that turn committed meanwhile).
    CancelWaitsForTheLease,
    /// The submission is sent inside the "transaction", before the commit that makes the
    /// conversation `succeeded` (which may then be refused, or apply later).
    SubmitBeforeCommit,
}

impl KnownBug {
    pub const ALL: [KnownBug; 14] = [
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
        KnownBug::CancelWaitsForTheLease,
        KnownBug::SubmitBeforeCommit,
    ];

    /// The name the CLI and run files use (`stale_replay`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}
