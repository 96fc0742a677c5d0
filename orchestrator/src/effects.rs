//! The side effect that "exactly once" is about: when a conversation succeeds, its collected
//! data is submitted to an `Effects` sink under an idempotency key derived from the
//! conversation, and the sink de-duplicates.

use crate::net::{post_json, Connector, Endpoint, NetError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    pub idempotency_key: String,
    pub conversation_id: String,
    pub user: String,
    pub workflow: String,
    pub data: BTreeMap<String, String>,
}

/// The key for a conversation's one submission: the same for every worker and every retry.
pub fn submission_key(conversation_id: &str) -> String {
    format!("submit:{conversation_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitOutcome {
    Accepted,
    /// The sink had this key already and did nothing.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum EffectsError {
    #[error("effects sink unreachable: {0}")]
    Net(#[from] NetError),
    #[error("effects sink answered {0}")]
    Status(u16),
}

pub trait Effects: Send + Sync + 'static {
    fn submit(&self, s: &Submission) -> impl Future<Output = Result<SubmitOutcome, EffectsError>> + Send;
}

impl<E: Effects> Effects for std::sync::Arc<E> {
    fn submit(&self, s: &Submission) -> impl Future<Output = Result<SubmitOutcome, EffectsError>> + Send {
        (**self).submit(s)
    }
}

/// An in-memory, de-duplicating sink: the embedded default and the tests' recorder.
#[derive(Debug, Default)]
pub struct RecordingEffects {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    accepted: BTreeMap<String, Submission>,
    attempts: u64,
}

impl RecordingEffects {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn accepted(&self) -> Vec<Submission> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).accepted.values().cloned().collect()
    }
    pub fn attempts(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).attempts
    }
}

impl Effects for RecordingEffects {
    async fn submit(&self, s: &Submission) -> Result<SubmitOutcome, EffectsError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.attempts += 1;
        if g.accepted.contains_key(&s.idempotency_key) {
            return Ok(SubmitOutcome::Duplicate);
        }
        g.accepted.insert(s.idempotency_key.clone(), s.clone());
        Ok(SubmitOutcome::Accepted)
    }
}

/// Production: POST the submission as JSON with an `Idempotency-Key` header. The receiver
/// answers 200 for a new key and 208 (Already Reported) for a duplicate.
pub struct WebhookEffects<C: Connector> {
    connector: C,
    endpoint: Endpoint,
    pub request_timeout_ms: u64,
}

impl<C: Connector> WebhookEffects<C> {
    pub fn new(connector: C, url: &str, request_timeout_ms: u64) -> Result<Self, NetError> {
        Ok(Self { connector, endpoint: Endpoint::parse(url)?, request_timeout_ms })
    }
}

impl<C: Connector> Effects for WebhookEffects<C> {
    async fn submit(&self, s: &Submission) -> Result<SubmitOutcome, EffectsError> {
        let body = serde_json::to_vec(s).unwrap_or_default();
        let headers = [("idempotency-key", s.idempotency_key.as_str())];
        let (status, _) = post_json(&self.connector, &self.endpoint, &headers, body, self.request_timeout_ms).await?;
        match status.as_u16() {
            208 => Ok(SubmitOutcome::Duplicate),
            200..=299 => Ok(SubmitOutcome::Accepted),
            other => Err(EffectsError::Status(other)),
        }
    }
}
