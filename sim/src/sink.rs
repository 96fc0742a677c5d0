//! The effects sink of the simulation: de-duplicates submissions by key and records each one
//! in the history, so the exactly-once checker sees every attempt. It is shared in-process by
//! the worker hosts (not yet a network host of its own).

use crate::history::{Ev, History};
use orchestrator::effects::{Effects, EffectsError, Submission, SubmitOutcome};
use std::collections::BTreeMap;
use std::sync::Mutex;

pub struct SimSink {
    pub history: History,
    accepted: Mutex<BTreeMap<String, Submission>>,
}

impl SimSink {
    pub fn new(history: History) -> Self {
        Self { history, accepted: Mutex::new(BTreeMap::new()) }
    }
}

impl Effects for SimSink {
    async fn submit(&self, s: &Submission) -> Result<SubmitOutcome, EffectsError> {
        let fresh = {
            let mut g = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            if g.contains_key(&s.idempotency_key) {
                false
            } else {
                g.insert(s.idempotency_key.clone(), s.clone());
                true
            }
        };
        self.history.push(Ev::SinkReceived {
            cid: s.conversation_id.clone(),
            key: s.idempotency_key.clone(),
            accepted: fresh,
            data: serde_json::to_value(&s.data).unwrap_or_default(),
        });
        Ok(if fresh { SubmitOutcome::Accepted } else { SubmitOutcome::Duplicate })
    }
}
