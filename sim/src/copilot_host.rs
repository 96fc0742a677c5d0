//! The fake LLM: an HTTP host speaking the Copilot contract. Replies come from the scripted
//! interpretation of the query inside the context prefix (deterministic); latency comes from
//! the seed's distribution, or from an active latency spike in the fault plan.

use crate::faults::FaultPlan;
use crate::history::{sim_now_ms, Ev, History};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use orchestrator::copilot::{CopilotReply, CopilotRequest, ScriptedCopilot};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct CopilotHost {
    pub plan: Arc<FaultPlan>,
    pub history: History,
    /// Normal latency, uniform in `[lo, hi]` ms.
    pub latency_ms: (u64, u64),
    /// Faults end here (the heal).
    pub heal_at_ms: u64,
    pub rng: Mutex<ChaCha8Rng>,
}

async fn reply(State(h): State<Arc<CopilotHost>>, Json(req): Json<CopilotRequest>) -> Json<CopilotReply> {
    let now = sim_now_ms();
    let spike = if now < h.heal_at_ms { h.plan.copilot_spike(now) } else { None };
    let latency_ms = match spike {
        Some(l) => l,
        None => {
            let mut rng = h.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.random_range(h.latency_ms.0..=h.latency_ms.1)
        }
    };
    // Every value in the context must belong to the asking user: a context built from someone
    // else's state (or a stale cache) shows up here, before it can reach any answer.
    match orchestrator::context::parse(&req.text) {
        Ok(ctx) => {
            for (field, value) in &ctx.collected_data {
                let owner = value.split('.').next().unwrap_or("");
                if owner != req.user_id {
                    h.history.push(Ev::CopilotSawForeignData {
                        cid: req.conversation_id.clone(),
                        user: req.user_id.clone(),
                        field: field.clone(),
                        value: value.clone(),
                    });
                }
            }
        }
        Err(e) => h.history.push(Ev::CopilotBadContext {
            cid: req.conversation_id.clone(),
            error: e.to_string(),
            text: req.text.chars().take(120).collect(),
        }),
    }
    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    let answer = ScriptedCopilot::answer(&req.text);
    h.history.push(Ev::CopilotReply {
        cid: req.conversation_id.clone(),
        latency_ms,
        spike: spike.is_some(),
        payload: answer.extracted_payload.clone().unwrap_or_default(),
    });
    Json(answer)
}

pub fn router(host: Arc<CopilotHost>) -> Router {
    Router::new().route("/v1/reply", post(reply)).with_state(host)
}
