//! The Copilot seam: the LLM agent the orchestrator asks to interpret each user message.
//!
//! `HttpCopilot` speaks the JSON contract over any [`Connector`]; `ScriptedCopilot` is the
//! deterministic stand-in for the demo and the tests.

use crate::context;
use crate::net::{post_json, Connector, Endpoint, NetError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotRequest {
    pub conversation_id: String,
    pub user_id: String,
    /// Context prefix + the user's query.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotReply {
    #[serde(default)]
    pub activities: Vec<Activity>,
    /// Kept raw: a malformed payload is Copilot's problem and becomes `NoSignal` in `extract`.
    #[serde(default)]
    pub extracted_payload: Option<Value>,
}

impl CopilotReply {
    pub fn text(&self) -> String {
        self.activities.iter().filter(|a| a.kind == "message").map(|a| a.text.as_str()).collect::<Vec<_>>().join(" ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopilotError {
    #[error("copilot unreachable: {0}")]
    Net(#[from] NetError),
    #[error("copilot answered {0}")]
    Status(u16),
    #[error("copilot reply is not the contract's JSON: {0}")]
    BadReply(String),
}

pub trait Copilot: Send + Sync + 'static {
    fn reply(&self, req: &CopilotRequest) -> impl Future<Output = Result<CopilotReply, CopilotError>> + Send;
}

impl<C: Copilot> Copilot for std::sync::Arc<C> {
    fn reply(&self, req: &CopilotRequest) -> impl Future<Output = Result<CopilotReply, CopilotError>> + Send {
        (**self).reply(req)
    }
}

/// The Copilot HTTP client.
pub struct HttpCopilot<C: Connector> {
    connector: C,
    endpoint: Endpoint,
    /// Deadline for one call, connect included.
    pub request_timeout_ms: u64,
}

impl<C: Connector> HttpCopilot<C> {
    pub fn new(connector: C, url: &str, request_timeout_ms: u64) -> Result<Self, NetError> {
        Ok(Self { connector, endpoint: Endpoint::parse(url)?, request_timeout_ms })
    }
}

impl<C: Connector> Copilot for HttpCopilot<C> {
    async fn reply(&self, req: &CopilotRequest) -> Result<CopilotReply, CopilotError> {
        let body = serde_json::to_vec(req).map_err(|e| CopilotError::BadReply(e.to_string()))?;
        let (status, bytes) = post_json(&self.connector, &self.endpoint, &[], body, self.request_timeout_ms).await?;
        if !status.is_success() {
            return Err(CopilotError::Status(status.as_u16()));
        }
        serde_json::from_slice(&bytes).map_err(|e| CopilotError::BadReply(e.to_string()))
    }
}

/// Interprets the phrases of the demo: `<field> is <value>` (high confidence),
/// `maybe <field> is <value>` (low), `yes`/`confirm`, `no`/`cancel`; anything else extracts
/// nothing. Optional fixed latency and a call counter serve the tests.
#[derive(Debug, Default)]
pub struct ScriptedCopilot {
    delay_ms: AtomicU64,
    calls: AtomicU64,
}

impl ScriptedCopilot {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The reply for a text, without latency: also used by the simulation's Copilot host.
    pub fn answer(text: &str) -> CopilotReply {
        let query = match context::parse(text) {
            Ok(ctx) => ctx.query,
            Err(_) => text.to_string(),
        };
        let q = query.trim();
        let lower = q.to_lowercase();
        let payload = if matches!(lower.as_str(), "yes" | "confirm") {
            Some(json!({"intent": "confirm", "confidence": "high"}))
        } else if matches!(lower.as_str(), "no" | "cancel") {
            Some(json!({"intent": "decline", "confidence": "high"}))
        } else {
            let (body, confidence) = match q.get(..6) {
                Some(p) if p.eq_ignore_ascii_case("maybe ") => (&q[6..], "low"),
                _ => (q, "high"),
            };
            body.find(" is ").map(|at| {
                let field = body[..at].trim().to_lowercase().replace(' ', "_");
                let value = body[at + 4..].trim();
                json!({"intent": "provide", "fields": {field: value}, "confidence": confidence})
            })
        };
        let text = match &payload {
            Some(p) => format!("Understood ({}).", p["intent"].as_str().unwrap_or("other")),
            None => "I did not catch that.".to_string(),
        };
        CopilotReply { activities: vec![Activity { kind: "message".into(), text }], extracted_payload: payload }
    }
}

impl Copilot for ScriptedCopilot {
    async fn reply(&self, req: &CopilotRequest) -> Result<CopilotReply, CopilotError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        Ok(Self::answer(&req.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(q: &str) -> Option<Value> {
        ScriptedCopilot::answer(q).extracted_payload
    }

    #[test]
    fn scripted_copilot_understands_the_demo_phrases() {
        assert_eq!(payload("email is a@b.c"), Some(json!({"intent":"provide","fields":{"email":"a@b.c"},"confidence":"high"})));
        assert_eq!(
            payload("Payment method is Visa card"),
            Some(json!({"intent":"provide","fields":{"payment_method":"Visa card"},"confidence":"high"}))
        );
        assert_eq!(payload("maybe phone is 123"), Some(json!({"intent":"provide","fields":{"phone":"123"},"confidence":"low"})));
        assert_eq!(payload("YES"), Some(json!({"intent":"confirm","confidence":"high"})));
        assert_eq!(payload("cancel"), Some(json!({"intent":"decline","confidence":"high"})));
        assert_eq!(payload("hello there"), None);
        assert_eq!(
            payload("[WORKFLOW_CONTEXT] step=gathering constraints=[email] collectedData={} company is ACME"),
            Some(json!({"intent":"provide","fields":{"company":"ACME"},"confidence":"high"}))
        );
        assert_eq!(payload("ü"), None);
    }
}
