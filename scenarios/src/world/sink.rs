//! The effects sink of the simulation: a host of its own ("sink") that speaks the contract of
//! `WebhookEffects` (POST a submission with an `Idempotency-Key`; 200 for a new key, 208 for a
//! known one), de-duplicates by key, and records each delivery in the history, so the
//! exactly-once checker sees every attempt. During the plan's sink episodes it misbehaves as a
//! real webhook does: down (503 from the balancer in front of it; nothing applied), 5xx
//! (nothing applied), an acknowledgement that comes after the worker gave up, or none at all
//! (the effect applied either way).

use crate::contract::Submission;
use crate::history::{Ev, History};
use crate::world::faults::FaultPlan;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the workers wait for the sink's answer.
pub const SINK_TIMEOUT_MS: u64 = 1_000;
/// How much later than that a slow acknowledgement comes.
const SLOW_ACK_EXTRA_MS: u64 = 500;
/// A lost acknowledgement: the answer is held this long, long after the worker gave up on it.
const LOST_ACK_HOLD_MS: u64 = 60_000;

/// What the sink did with one delivery, when it misbehaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFault {
    Down,
    Error,
    SlowAck,
    LostAck,
}

impl SinkFault {
    pub fn name(self) -> &'static str {
        match self {
            SinkFault::Down => "down",
            SinkFault::Error => "5xx",
            SinkFault::SlowAck => "ack after the deadline",
            SinkFault::LostAck => "ack lost",
        }
    }
}

/// The sink's state: what it accepted, by key.
pub struct SimSink {
    pub history: History,
    accepted: Mutex<BTreeMap<String, Submission>>,
}

impl SimSink {
    pub fn new(history: History) -> Self {
        Self { history, accepted: Mutex::new(BTreeMap::new()) }
    }

    /// Applies a delivery (unless `fault` says it never got there) and records it.
    fn receive(&self, s: &Submission, fault: Option<SinkFault>) -> bool {
        let applies = !matches!(fault, Some(SinkFault::Down | SinkFault::Error));
        let fresh = applies && {
            let mut g = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            !g.contains_key(&s.idempotency_key) && g.insert(s.idempotency_key.clone(), s.clone()).is_none()
        };
        self.history.push(Ev::SinkReceived {
            cid: s.conversation_id.clone(),
            key: s.idempotency_key.clone(),
            accepted: fresh,
            data: serde_json::to_value(&s.data).unwrap_or_default(),
            fault: fault.map(|f| f.name().to_string()),
        });
        fresh
    }
}

/// The sink host: the state, the plan's episodes, and its own random stream.
pub struct SinkHost {
    pub sink: Arc<SimSink>,
    pub plan: Arc<FaultPlan>,
    /// Every fault stops here.
    pub heal_at_ms: u64,
    pub rng: Mutex<ChaCha8Rng>,
}

impl SinkHost {
    fn fault_now(&self) -> Option<SinkFault> {
        let now = crate::history::sim_now_ms();
        if now >= self.heal_at_ms {
            return None;
        }
        if self.plan.sink_down(now) {
            return Some(SinkFault::Down);
        }
        let pct = self.plan.sink_misbehaves(now)?;
        let mut r = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if r.random_range(0..100) >= pct {
            return None;
        }
        Some(match r.random_range(0..3) {
            0 => SinkFault::Error,
            1 => SinkFault::SlowAck,
            _ => SinkFault::LostAck,
        })
    }
}

async fn submit(State(host): State<Arc<SinkHost>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Ok(s) = serde_json::from_slice::<Submission>(&body) else { return StatusCode::BAD_REQUEST };
    if headers.get("idempotency-key").and_then(|v| v.to_str().ok()) != Some(s.idempotency_key.as_str()) {
        return StatusCode::BAD_REQUEST;
    }
    let fault = host.fault_now();
    let fresh = host.sink.receive(&s, fault);
    let answer = if fresh { StatusCode::OK } else { StatusCode::ALREADY_REPORTED };
    match fault {
        None => answer,
        Some(SinkFault::Down) => StatusCode::SERVICE_UNAVAILABLE,
        Some(SinkFault::Error) => StatusCode::INTERNAL_SERVER_ERROR,
        Some(SinkFault::SlowAck) => {
            tokio::time::sleep(Duration::from_millis(SINK_TIMEOUT_MS + SLOW_ACK_EXTRA_MS)).await;
            answer
        }
        Some(SinkFault::LostAck) => {
            // The worker never hears: it has long given up when this goes out.
            tokio::time::sleep(Duration::from_millis(LOST_ACK_HOLD_MS)).await;
            answer
        }
    }
}

pub fn router(host: Arc<SinkHost>) -> Router {
    Router::new().route("/submit", post(submit)).with_state(host)
}
