//! The reference workflow orchestrator for agentic chat apps.
//!
//! Codemap (what lives where):
//! - [`workflow`] — the pure machine: steps, events, the transition table, workflows as data.
//! - [`extract`] — Copilot reply → events; anything odd is `NoSignal`.
//! - [`context`] — the `[WORKFLOW_CONTEXT]` prefix, built and parsed (exact round trip).
//! - [`turn`] — the orchestrate operation (Begin → Copilot → machine → Commit), generic over
//!   the seams below.
//! - [`store`] — the `Store` seam; `MemStore` (embedded default).
//! - [`lease`] — the lease table (TTL, owner token, fencing counter) under `MemStore`.
//! - [`copilot`] — the `Copilot` seam; HTTP client; `ScriptedCopilot`.
//! - [`effects`] — the exactly-once side effect on success; webhook and recorder.
//! - [`http`] — the axum API and a `serve` generic over the listener.
//! - [`net`] — outbound HTTP over a pluggable connector.
//! - [`clock`], [`rng`] — the injected time and randomness.
//! - `sync` — the loom/std shim.
//!
//! Invariant: nothing here depends on turmoil or the harness crates; the simulation reaches
//! this code only through the seams (`Store`, `Copilot`, `Effects`, `Clock`, `Connector`,
//! the listener given to `serve`, the seed given to `SeededRng`).

pub mod clock;
pub mod context;
pub mod copilot;
pub mod effects;
pub mod extract;
pub mod http;
pub mod lease;
pub mod net;
pub mod rng;
pub mod store;
mod sync;
pub mod turn;
pub mod workflow;

pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use copilot::{Copilot, HttpCopilot, ScriptedCopilot};
pub use effects::{Effects, RecordingEffects, WebhookEffects};
pub use rng::SeededRng;
pub use store::{MemStore, Store};
pub use turn::{CancelResponse, CancelResult, Orchestrator, TurnConfig, TurnError, TurnRequest, TurnResponse};
