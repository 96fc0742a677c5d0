//! The history: one log of events stamped with simulated time, written by every host while a
//! run goes on and read after it. Its JSON-lines form is what is written to disk and what the
//! trace hash covers: equal hashes, equal runs. The event type is the suite's own.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// One event at simulated time `t_ms` (flattened into one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<E> {
    pub t_ms: u64,
    #[serde(flatten)]
    pub ev: E,
}

/// Simulated time since the start of the run (0 outside a simulation).
pub fn sim_now_ms() -> u64 {
    turmoil::sim_elapsed().map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The shared log: cheap to clone into every host.
#[derive(Debug)]
pub struct History<E> {
    entries: Arc<Mutex<Vec<Entry<E>>>>,
}

impl<E> Clone for History<E> {
    fn clone(&self) -> Self {
        Self { entries: self.entries.clone() }
    }
}

impl<E> Default for History<E> {
    fn default() -> Self {
        Self { entries: Arc::new(Mutex::new(Vec::new())) }
    }
}

impl<E: Clone> History<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// An event at the current simulated time of the host that records it.
    pub fn push(&self, ev: E) {
        self.push_at(sim_now_ms(), ev);
    }

    /// An event stamped by the caller (the world, between simulation steps, has no host clock).
    pub fn push_at(&self, t_ms: u64, ev: E) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).push(Entry { t_ms, ev });
    }

    pub fn entries(&self) -> Vec<Entry<E>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The trace as JSON lines.
pub fn json_lines<E: Serialize>(entries: &[Entry<E>]) -> String {
    let mut out = String::new();
    for e in entries {
        out.push_str(&serde_json::to_string(e).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// SHA1 of the JSON-lines trace (16 hex digits): equal hashes, equal runs.
/// The lines go straight into the hasher, never into one string.
pub fn trace_hash<E: Serialize>(entries: &[Entry<E>]) -> String {
    let mut h = sha1_smol::Sha1::new();
    let mut line = Vec::with_capacity(512);
    for e in entries {
        line.clear();
        // As `json_lines`: an entry that cannot be serialised hashes as an empty line.
        if serde_json::to_writer(&mut line, e).is_err() {
            line.clear();
        }
        line.push(b'\n');
        h.update(&line);
    }
    h.digest().to_string()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Ev {
        Sent { n: u64 },
    }

    #[test]
    fn the_hash_covers_every_entry_and_its_time() {
        let h = History::new();
        h.push_at(1, Ev::Sent { n: 1 });
        h.push_at(2, Ev::Sent { n: 2 });
        let a = h.entries();
        assert_eq!(json_lines(&a), "{\"t_ms\":1,\"kind\":\"sent\",\"n\":1}\n{\"t_ms\":2,\"kind\":\"sent\",\"n\":2}\n");
        let mut b = a.clone();
        b[1].t_ms = 3;
        assert_ne!(trace_hash(&a), trace_hash(&b));
        let mut c = a.clone();
        c[0].ev = Ev::Sent { n: 9 };
        assert_ne!(trace_hash(&a), trace_hash(&c));
        assert_eq!(trace_hash(&a), trace_hash(&h.entries()));
        // The streamed hash is the SHA1 of the JSON lines.
        assert_eq!(trace_hash(&a), sha1_smol::Sha1::from(json_lines(&a).as_bytes()).digest().to_string()[..16]);
    }
}
