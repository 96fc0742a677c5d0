//! The history: one log of every client invoke and response and every server event (lease,
//! Copilot call, transition, commit, replay, submission), stamped with simulated time.
//! Observers read it after the run; checkers never drive the run.

use crate::contract::{Extracted, Step};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ev {
    /// A client sent a request.
    Invoke {
        req: u64,
        client: String,
        user: String,
        worker: String,
        op: String,
        cid: Option<String>,
        key: Option<String>,
        query: Option<String>,
        duplicate: bool,
        /// The statuses the contract allows for a hostile request (see `client`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<Vec<u16>>,
        /// How the client sent it, when not in one go and waiting for the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manner: Option<Manner>,
        /// What the person meant by `query` (the harness's ground truth; Copilot never sees it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meant: Option<Meant>,
    },
    /// A client got an answer.
    Response {
        req: u64,
        status: u16,
        retry_after: bool,
        body: serde_json::Value,
    },
    /// A client gave up waiting (the request deadline passed, or the connection failed).
    NoResponse {
        req: u64,
        reason: String,
    },
    LeaseTaken {
        worker: String,
        cid: String,
        user: String,
        idem_key: String,
        fence: u64,
        version: u64,
    },
    LeaseLost {
        worker: String,
        cid: String,
        fence: u64,
    },
    CopilotCalled {
        worker: String,
        cid: String,
        fence: u64,
        ok: bool,
    },
    Transition {
        worker: String,
        cid: String,
        user: String,
        fence: u64,
        from: Step,
        to: Step,
        events: Vec<Extracted>,
    },
    Committed {
        worker: String,
        cid: String,
        user: String,
        idem_key: String,
        fence: u64,
        version: u64,
    },
    CommitRejected {
        worker: String,
        cid: String,
        fence: u64,
    },
    /// A turn gave up after taking the lease and handed it back (`released`: the store said so).
    Released {
        worker: String,
        cid: String,
        fence: u64,
        released: bool,
    },
    Replayed {
        worker: String,
        cid: String,
        user: String,
        idem_key: String,
        version: u64,
    },
    Submitted {
        worker: String,
        cid: String,
        key: String,
        duplicate: bool,
        /// Delivered by an outbox relay (not by the turn that committed, or a replay).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relayed: bool,
    },
    /// A worker's cancel took the conversation over (the worker's account; the store's is the
    /// `ModelCommit` with no idempotency key).
    CancelCommitted {
        worker: String,
        cid: String,
        user: String,
        fence: u64,
        version: u64,
    },
    /// The Redis model applied a commit (the serialisation order), read from its write log;
    /// `fence` is the conversation's fence counter at that moment (the newest lease).
    ModelCommit {
        cid: String,
        fence: u64,
        version: u64,
        idem_key: String,
        record: serde_json::Value,
    },
    /// The Copilot host answered (with this latency and this extraction).
    CopilotReply {
        cid: String,
        latency_ms: u64,
        spike: bool,
        /// How this reply broke the contract, during a misbehaviour episode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        misbehaviour: Option<String>,
        /// What the reply lets a client extract (the payload, or the JSON in its text).
        payload: serde_json::Value,
    },
    /// Copilot was asked on behalf of `user` with another user's value in the context.
    CopilotSawForeignData {
        cid: String,
        user: String,
        field: String,
        value: String,
    },
    /// Copilot got a text whose context prefix does not parse.
    CopilotBadContext {
        cid: String,
        error: String,
        text: String,
    },
    /// The world applied a fault to a host (`redis`, `worker-N` or `client-N`).
    HostFault {
        host: String,
        change: HostChange,
    },
    /// A Redis crash lost `lost` changes that had been applied (and perhaps acknowledged).
    RedisLostWrites {
        lost: u64,
        durability: sim::redis_model::Durability,
    },
    /// The Redis host's clock jumped by `delta_ms`; it is now `offset_ms` off simulated time.
    RedisClockJumped {
        delta_ms: i64,
        offset_ms: i64,
    },
    /// The effects sink received a submission.
    SinkReceived {
        cid: String,
        key: String,
        accepted: bool,
        data: serde_json::Value,
        /// How the sink misbehaved with this delivery (`down` and `5xx` applied nothing).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fault: Option<String>,
    },
}

/// What a person meant by a message: known to the harness because it wrote the message, and
/// never shown to the Copilot host, so a checker can tell "stored what the user did not say"
/// from "Copilot misread the user".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "meant", rename_all = "snake_case")]
pub enum Meant {
    /// A value for a field (`None`: whichever field was being asked for); `sure: false` for a
    /// hedge or a guess, which must not be stored.
    Field {
        field: Option<String>,
        value: String,
        sure: bool,
    },
    Confirm,
    Decline,
    /// Nothing to act on: thinking aloud, a question, a "sure" while nothing is being confirmed.
    Nothing,
}

/// How a person's client sent a request, when it was not "all at once, then wait".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "manner", rename_all = "snake_case")]
pub enum Manner {
    /// Sent it, waited up to `after_ms` for the answer, then closed the connection (the tab was
    /// closed, the phone lost signal): no answer is owed, but the turn must not be abandoned.
    HungUp { after_ms: u64 },
    /// Sent it and shut down its sending side (`nc -N`, HTTP/1.0 clients): still owed an answer.
    HalfClosed,
    /// Sent it in pieces over `send_ms` (a slow mobile link): owed an answer, that much later.
    Slow { send_ms: u64 },
}

/// One history entry of this suite.
pub type Entry = sim::history::Entry<Ev>;
/// This suite's history log.
pub type History = sim::history::History<Ev>;
pub use sim::history::{json_lines, sim_now_ms, trace_hash};
pub use sim::world::HostChange;
