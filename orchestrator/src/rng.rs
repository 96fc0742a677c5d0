//! The orchestrator's only source of randomness: a ChaCha stream from an injected seed.
//!
//! Owner tokens, conversation ids and backoff jitter all come from here. The production
//! binary seeds it from OS entropy once at start; the simulation seeds it from the run seed.

use rand::{Rng as _, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Mutex;

#[derive(Debug)]
pub struct SeededRng {
    inner: Mutex<ChaCha8Rng>,
}

impl SeededRng {
    pub fn from_seed(seed: u64) -> Self {
        Self { inner: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    pub fn next_u64(&self) -> u64 {
        self.with(|r| r.next_u64())
    }

    /// A value in `[0, bound)`; 0 when `bound` is 0.
    pub fn below(&self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.with(|r| r.random_range(0..bound))
    }

    /// 128 random bits as 32 lowercase hex digits: conversation ids.
    pub fn hex128(&self) -> String {
        let (a, b) = self.with(|r| (r.next_u64(), r.next_u64()));
        format!("{a:016x}{b:016x}")
    }
}
