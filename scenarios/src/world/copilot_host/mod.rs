//! The fake LLM: an HTTP host speaking the Copilot contract, written for the harness. It reads
//! the context prefix with its own reader (`reader`) and the user's message like a model would
//! (`model`: bare values, hedges, guesses, corrections, confirmations only when something is
//! being confirmed); latency comes from the seed's distribution, or from an active latency
//! spike in the fault plan; during a misbehaviour episode some replies go wrong in one of
//! [`MISBEHAVIOURS`] ways, including the ways models and their APIs fail: rate limits with
//! `Retry-After`, an answer later than the orchestrator's deadline, and plausible mistakes made
//! with medium or low confidence (a value put in the wrong field, a yes read as a no and the
//! other way round), which the orchestrator must not act on.

mod model;
mod reader;

pub use reader::{read, Seen};

use crate::contract::{Activity, CopilotReply, CopilotRequest};
use crate::history::{sim_now_ms, Ev, History};
use crate::world::faults::FaultPlan;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct CopilotHost {
    pub plan: Arc<FaultPlan>,
    pub history: History,
    /// Normal latency, uniform in `[lo, hi]` ms.
    pub latency_ms: (u64, u64),
    /// Faults end here (the heal).
    pub heal_at_ms: u64,
    /// The orchestrator's Copilot deadline: a "late" misbehaviour answers after it.
    pub deadline_ms: u64,
    pub rng: Mutex<ChaCha8Rng>,
}

/// The ways a misbehaving reply breaks the contract.
pub const MISBEHAVIOURS: [&str; 12] = [
    "http 500",
    "rate limited",
    "answers after the deadline",
    "plausible mistake",
    "body not json",
    "body cut short",
    "empty reply",
    "confidence misspelt",
    "unknown field",
    "value is an object",
    "unknown intent",
    "payload only in the text",
];

/// A misbehaving reply for `answer`, and the payload it effectively carries (what the contract
/// lets a client extract from it, for the checkers), if any.
fn misbehave(kind: &str, answer: &CopilotReply, seen: &Seen) -> (Response, Option<Value>) {
    let payload = answer.extracted_payload.clone().unwrap_or(Value::Null);
    let with_payload = |p: Value| {
        let mut r = answer.clone();
        r.extracted_payload = Some(p.clone());
        (Json(r).into_response(), Some(p))
    };
    let mut edited = payload.clone();
    match kind {
        "http 500" => ((StatusCode::INTERNAL_SERVER_ERROR, "upstream model error").into_response(), None),
        "rate limited" => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": "rate_limited"}))).into_response();
            r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("2"));
            (r, None)
        }
        // A plausible mistake, made without conviction: the value put in another field still
        // being asked for, with medium confidence, or kept where it was but only "low". Nothing
        // may be stored from either.
        "plausible mistake" if edited["fields"].is_object() => {
            let fields = edited["fields"].as_object().cloned().unwrap_or_default();
            let other = seen.missing.iter().find(|f| !fields.contains_key(*f));
            match (fields.len(), other) {
                (1, Some(other)) => {
                    let value = fields.values().next().cloned().unwrap_or_default();
                    edited["fields"] = json!({ other.as_str(): value });
                    edited["confidence"] = json!("medium");
                }
                _ => edited["confidence"] = json!("low"),
            }
            with_payload(edited)
        }
        // The same, for a yes or a no: read the other way round, and not with conviction.
        "plausible mistake" if matches!(edited["intent"].as_str(), Some("confirm" | "decline")) => {
            let swapped = if edited["intent"] == "confirm" { "decline" } else { "confirm" };
            edited["intent"] = json!(swapped);
            edited["confidence"] = json!(if seen.query.len() % 2 == 0 { "medium" } else { "low" });
            with_payload(edited)
        }
        "body not json" => ((StatusCode::OK, "<html><body>504 Gateway Time-out</body></html>").into_response(), None),
        "body cut short" => {
            let full = serde_json::to_string(answer).unwrap_or_default();
            ((StatusCode::OK, full[..full.len() / 2].to_string()).into_response(), None)
        }
        "empty reply" => (Json(json!({})).into_response(), None),
        "confidence misspelt" if edited.is_object() => {
            edited["confidence"] = json!("HIGH");
            with_payload(edited)
        }
        "unknown field" if edited["fields"].is_object() => {
            edited["fields"]["favourite_colour"] = json!("blue");
            with_payload(edited)
        }
        "value is an object" if edited["fields"].is_object() => {
            if let Some(fields) = edited["fields"].as_object_mut() {
                for v in fields.values_mut() {
                    *v = json!({ "value": v.clone() });
                }
            }
            with_payload(edited)
        }
        "unknown intent" if edited.is_object() => {
            edited["intent"] = json!("provide_info");
            with_payload(edited)
        }
        "payload only in the text" if edited.is_object() => {
            let mut r = answer.clone();
            r.extracted_payload = None;
            r.activities = vec![Activity { kind: "message".into(), text: format!("Sure! {edited}") }];
            (Json(r).into_response(), Some(edited))
        }
        // A reply with nothing to break (no payload) goes out as it is.
        _ => (Json(answer.clone()).into_response(), answer.extracted_payload.clone()),
    }
}

async fn reply(State(h): State<Arc<CopilotHost>>, Json(req): Json<CopilotRequest>) -> Response {
    let now = sim_now_ms();
    let spike = if now < h.heal_at_ms { h.plan.copilot_spike(now) } else { None };
    let misbehaves = if now < h.heal_at_ms { h.plan.copilot_misbehaves(now) } else { None };
    let (mut latency_ms, broken) = {
        let mut rng = h.rng.lock().unwrap_or_else(|p| p.into_inner());
        let latency = match spike {
            Some(l) => l,
            None => rng.random_range(h.latency_ms.0..=h.latency_ms.1),
        };
        let broken =
            misbehaves.filter(|pct| rng.random_range(0..100) < *pct).map(|_| MISBEHAVIOURS[rng.random_range(0..MISBEHAVIOURS.len())]);
        (latency, broken)
    };
    if broken == Some("answers after the deadline") {
        latency_ms = latency_ms.max(h.deadline_ms + 500);
    }
    // Every value in the context must belong to the asking user: a context built from someone
    // else's state (or a stale cache) shows up here, before it can reach any answer.
    let seen = read(&req.text);
    match &seen {
        Ok(ctx) => {
            for (field, value) in &ctx.collected {
                let value = value.as_str().unwrap_or_default();
                let owner = value.split('.').next().unwrap_or("");
                if owner != req.user_id {
                    h.history.push(Ev::CopilotSawForeignData {
                        cid: req.conversation_id.clone(),
                        user: req.user_id.clone(),
                        field: field.clone(),
                        value: value.to_string(),
                    });
                }
            }
        }
        Err(e) => h.history.push(Ev::CopilotBadContext {
            cid: req.conversation_id.clone(),
            error: e.clone(),
            text: req.text.chars().take(120).collect(),
        }),
    }
    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    // A prefix the model cannot follow leaves it with the raw text, as a real model would be.
    let seen =
        seen.unwrap_or_else(|_| Seen { step: String::new(), missing: Vec::new(), collected: Default::default(), query: req.text.clone() });
    let payload = model::interpret(&seen);
    let text = match payload.as_ref().and_then(|p| p["intent"].as_str()) {
        Some("provide") => "Thanks, I have noted that.",
        Some("confirm") => "Great, submitting now.",
        Some("decline") => "Okay, I have cancelled it.",
        _ => "Sorry, could you say that again?",
    };
    let answer = CopilotReply { activities: vec![Activity { kind: "message".into(), text: text.into() }], extracted_payload: payload };
    let (response, payload) = match broken {
        Some(kind) => misbehave(kind, &answer, &seen),
        None => (Json(answer.clone()).into_response(), answer.extracted_payload.clone()),
    };
    h.history.push(Ev::CopilotReply {
        cid: req.conversation_id.clone(),
        latency_ms,
        spike: spike.is_some(),
        misbehaviour: broken.map(String::from),
        payload: payload.unwrap_or_default(),
    });
    response
}

pub fn router(host: Arc<CopilotHost>) -> Router {
    Router::new().route("/v1/reply", post(reply)).with_state(host)
}
