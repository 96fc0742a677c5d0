//! The contract this suite tests, restated from the specification (README "API", DESIGN "The
//! orchestrator") and not imported from any orchestrator: the shapes a conforming worker
//! answers with and keeps, the workflows it ships, its bounds. A worker under test is held
//! to these; its own types never reach the checks.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a conversation is (`workflowState.step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Gathering,
    Confirming,
    Succeeded,
    Cancelled,
    NeedsHuman,
}

impl Step {
    pub const ALL: [Step; 5] = [Step::Gathering, Step::Confirming, Step::Succeeded, Step::Cancelled, Step::NeedsHuman];

    /// Succeeded, cancelled and handed to a human are final.
    pub fn is_terminal(self) -> bool {
        matches!(self, Step::Succeeded | Step::Cancelled | Step::NeedsHuman)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Gathering => "gathering",
            Step::Confirming => "confirming",
            Step::Succeeded => "succeeded",
            Step::Cancelled => "cancelled",
            Step::NeedsHuman => "needs_human",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// How sure Copilot is of an extracted field: only `high` may set one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    High,
    Medium,
    Low,
}

/// One event a worker read from a Copilot reply, as it reports it (`kind`: `field`,
/// `confirmed`, `declined`, `no_signal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extracted {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confidence: Option<Confidence>,
}

/// `workflowState` as the API shows it and a worker keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowState {
    pub workflow: String,
    pub step: Step,
    pub collected_data: BTreeMap<String, String>,
    /// Commits this conversation has seen.
    pub version: u64,
    #[serde(default)]
    pub no_signal_streak: u32,
    #[serde(default)]
    pub turns: u32,
}

impl WorkflowState {
    /// A new conversation of `workflow`: gathering, nothing collected, version 0.
    pub fn new(workflow: &str) -> Self {
        Self {
            workflow: workflow.into(),
            step: Step::Gathering,
            collected_data: BTreeMap::new(),
            version: 0,
            no_signal_streak: 0,
            turns: 0,
        }
    }
}

/// A conversation as a worker's storage holds it, in the contract's terms: the owner, the
/// state, and the fence it was written under (0 for a system without fencing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub owner: String,
    pub state: WorkflowState,
    #[serde(default)]
    pub writer_fence: u64,
}

/// "Three in a row are tolerated, the fourth hands the conversation to a human."
pub const NO_SIGNAL_STREAK_MAX: u32 = 3;
/// "A turn limit bounds every conversation": the 40th turn hands it to a human.
pub const TURNS_MAX: u32 = 40;

/// The workflows a conforming orchestrator ships, as the design lists them.
pub fn required_fields(workflow: &str) -> Option<&'static [&'static str]> {
    match workflow {
        "lead" => Some(&["email", "phone", "company"]),
        "payment" => Some(&["payment_method", "amount"]),
        "profile" => Some(&["name", "email", "phone", "company", "title", "country", "city", "street", "zip", "language"]),
        _ => None,
    }
}

/// The key a worker submits a succeeded conversation's effect under (the sink de-duplicates by it).
pub fn submission_key(cid: &str) -> String {
    format!("submit:{cid}")
}

/// What a worker POSTs to the effects sink (`/submit`, with the key also as `Idempotency-Key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    pub idempotency_key: String,
    pub conversation_id: String,
    pub user: String,
    pub workflow: String,
    pub data: BTreeMap<String, String>,
}

/// What a worker POSTs to Copilot (`/v1/reply`): the context prefix and the user's query in `text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotRequest {
    pub conversation_id: String,
    pub user_id: String,
    pub text: String,
}

/// One activity of a Copilot reply (`type`: `message`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: String,
}

/// Copilot's answer: activities, and the extraction as a raw JSON payload (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopilotReply {
    #[serde(default)]
    pub activities: Vec<Activity>,
    #[serde(default)]
    pub extracted_payload: Option<serde_json::Value>,
}
