//! Effects-side pitfall: a submission key made fresh for every attempt.

use super::KnownBug;
use orchestrator::effects::{Effects, EffectsError, Submission, SubmitOutcome};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::Mutex;

pub struct BuggyEffects<E> {
    pub inner: E,
    pub bug: Option<KnownBug>,
    pub rng: Mutex<ChaCha8Rng>,
}

impl<E: Effects> Effects for BuggyEffects<E> {
    async fn submit(&self, s: &Submission) -> Result<SubmitOutcome, EffectsError> {
        if self.bug != Some(KnownBug::NoEffectsDeduplication) {
            return self.inner.submit(s).await;
        }
        let nonce: u64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        let rekeyed = Submission { idempotency_key: format!("{}:{nonce:016x}", s.idempotency_key), ..s.clone() };
        self.inner.submit(&rekeyed).await
    }
}
